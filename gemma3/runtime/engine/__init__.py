"""The engine: Gemma 3's inference made fast on a CPU, applied from outside the reference model.

gemma3/model.py is the plain PyTorch reference that learners read and the explainer records. For
generation, `forward(model, ids, cache)` computes the same logits from the same modules and weights
with C++ operators (kernels.cpp, built once per machine by gemma3/runtime/native.py) where the CPU has
AVX512-BF16: a decoded token is one call (every block, the final norm, the head) instead of
hundreds of small PyTorch operations, a prompt's element-wise work is one vectorized pass each, and load_model packs q/k/v for
bf16 (packing.py). `decoder(model)` says which forward generation should use (gemma3/__init__.py installs
it into gemma3/generation.py). Training and the
explainer never use the engine; a model with forward hooks (someone is watching it) runs the
reference. bench/generate.py measures what the engine earns against the reference, against the
reference under torch.compile, and against transformers.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from .. import cpu, unwatched
from . import ops
from .forward import forward
from .ops import available
from .packing import pack_qkv, stacked


def applies(model) -> bool:
    """Whether the engine can run this model here: an unwatched Gemma3 (gemma3/runtime/__init__.py) on the CPU
    in fp32 or bf16, and the kernels built."""
    if not unwatched(model):
        return False
    w = model.embed.weight
    if w.device.type != "cpu" or w.dtype not in (torch.float32, torch.bfloat16):
        return False
    return available()


def decoder(model, use_engine: bool = True, threads: int | None = None):
    """The forward generation should call, as f(ids, cache, last_only): the engine's where it
    applies, else the model's own. `with f.step():` wraps each decoded token, forward and sampling,
    and sets its threads: where one engine call decodes the token, PyTorch's small operations around
    it (embedding, sampling) run on one thread and the call itself on `threads` (default: PyTorch's
    count), threads that never wait for each other to be scheduled (kernels.cpp); elsewhere the
    token runs on one thread or all, by measurement (cpu.DecodeThreads)."""
    prepared = None
    if use_engine and applies(model):
        prepared = ops.row_weights(model) or False  # once per generation (False: no one-call path)
        threads = threads or torch.get_num_threads()

        def f(ids, cache, last_only=False):
            return forward(model, ids, cache, last_only, prepared, threads)
    else:
        def f(ids, cache, last_only=False):
            return model(ids, cache=cache, last_only=last_only)

    if prepared:  # a decoded token is one engine call
        f.step = lambda: cpu.threads(1)
    elif model.embed.weight.device.type == "cpu":
        f.step = cpu.DecodeThreads(threads).step
    else:
        f.step = nullcontext
    return f


def describe(model) -> str:
    """Which code runs inference, in words (for `python -m gemma3 info` and the app)."""
    return ("the engine's C++ kernels (gemma3/runtime/engine)" if applies(model)
            else "the reference model's PyTorch operations")


__all__ = ["forward", "available", "applies", "decoder", "describe", "pack_qkv", "stacked"]
