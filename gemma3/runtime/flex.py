"""Sliding-window attention with FlexAttention, for training on a GPU.

A sliding layer of the reference model (gemma3/model.py) attends through SDPA with a boolean [T, T] mask once a
sequence is longer than its window: SDPA then computes every query against every key and masks most of them out
(at 2048 tokens and a window of 512, nearly four fifths of the causal half). FlexAttention with a block mask
skips the blocks that lie wholly outside the window and computes the rest in one fused kernel, forward and
backward. `use_flex(model, length)` swaps it in as the sliding layers' `Attention.attend` (the model says a
caller may swap in a function that computes the same), `use_sdpa(model)` puts the core's back, and
`with attending(flex_attends(model, length)):` does it for a block only (training/step.py: the training step
attends with it, evaluation and generation keep SDPA).

It computes what the core's `attend` computes with the sliding mask: query i sees key j where j <= i and
i - j < window, softmax in fp32 (tests/test_cuda.py holds the two together, forward and gradients). It takes only
the calls it can: a sequence of exactly `length` queries over itself with a mask (a training step, or a prompt
from an empty cache: the mask is then the sliding mask, whatever the first position); every other call (a
shorter sequence, decoding with a cache, full layers) goes to the core's SDPA. FlexAttention's fast kernel is
a compiled one: use it where the model is compiled (or on a GPU, where `flex_attention` is compiled here on its
own); PyTorch has no FlexAttention backward on the CPU.
"""

from __future__ import annotations

import contextlib
import functools

import torch

from .. import model as core


@functools.cache
def _flex():
    """flex_attention, compiled (inlined where a compiled model calls it); made on first use, as the import and
    the compiler cost seconds that a model never trained on a GPU should not pay."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def sliding_block_mask(window: int, length: int, device):
    """The block mask of a causal window: query i sees key j where 0 <= i - j < window."""
    from torch.nn.attention.flex_attention import create_block_mask

    def inside(b, h, q, k):
        return (k <= q) & (q - k < window)

    return create_block_mask(inside, None, None, length, length, device=device)


def sliding_attend(window: int, length: int, device):
    """An `Attention.attend` for a sliding layer of `window`: FlexAttention for a sequence of `length` over itself,
    the core's SDPA for everything else."""
    block_mask = sliding_block_mask(window, length, device)
    flex, where = _flex(), torch.device(device).type

    def attend(q, k, v, mask, scale):
        if mask is None or q.shape[2] != length or k.shape[2] != length or q.device.type != where:
            return core.attend(q, k, v, mask, scale)
        if torch.is_autocast_enabled(q.device.type):  # as SDPA does under autocast: all three in its dtype
            dtype = torch.get_autocast_dtype(q.device.type)
            q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
        return flex(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=k.shape[1] != q.shape[1])

    attend.flex = True
    return attend


def flex_attends(model, length: int) -> dict:
    """{Attention module: its FlexAttention attend} for the sliding layers of `model` at sequences of `length`;
    empty where `length` fits the window (no mask is needed there: SDPA runs plain causal attention)."""
    cfg = model.config
    if length <= cfg.window:
        return {}
    device = model.embed.weight.device
    made = {}  # one block mask per window (every sliding layer has the config's)
    out = {}
    for block in model.blocks:
        attn = block.attn
        if attn.window is not None:
            if attn.window not in made:
                made[attn.window] = sliding_attend(attn.window, length, device)
            out[attn] = made[attn.window]
    return out


@contextlib.contextmanager
def attending(attends: dict):
    """Those layers attend with the given functions inside the block, and as before after it."""
    before = {attn: attn.attend for attn in attends}
    try:
        for attn, fn in attends.items():
            attn.attend = fn
        yield
    finally:
        for attn, fn in before.items():
            attn.attend = fn


def use_flex(model, length: int) -> int:
    """FlexAttention for the sliding layers of `model` at sequences of `length`, from now on (longer than the
    window; shorter ones need no mask). Returns how many layers took it; `use_sdpa` undoes it."""
    attends = flex_attends(model, length)
    for attn, fn in attends.items():
        attn.attend = fn
    return len(attends)


def use_sdpa(model):
    """Every layer back on the core's attention."""
    for block in model.blocks:
        block.attn.attend = core.attend


def uses_flex(model) -> bool:
    return any(getattr(block.attn.attend, "flex", False) for block in model.blocks)
