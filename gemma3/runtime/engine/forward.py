"""The engine's forward pass: what Gemma3.forward computes with a KV cache, in fewer, faster steps.

The forward pass is written three times: gemma3/model.py, the reference; this file, the same stages
step by step, following the model line by line and handing each part to an operator of kernels.cpp
where one applies (ops.py), the model's PyTorch code where none does; and kernels.cpp's decode_row, a
decoded row (batch 1) in one call: every block, the final norm and the head, on one team of threads
(kernels.cpp says why). The operators and decode_row compute each row's math with the same C++
functions. A prompt takes vectorized passes for the norms (with the residual add), q/k norm + RoPE and
GeGLU, and one matrix product for q, k and v where they are packed (packing.py).

`tap(stage, layer, tensor)`, when given, sees each stage the engine computes on its own, named as
explain.hooks.STAGES names the reference's; a decoded row's come from decode_row's trace (ops.decode_row).
tests/test_engine.py::test_the_engine_walks_every_stage_of_the_reference holds all three together: the
steps on a prompt, decode_row on the next token. The stages fused into another's step have no tap of their
own: q_norm and k_norm (inside q_rope and k_rope), post_attn_norm and post_ffn_norm (inside mid and output),
attn_probs (inside attention's one call), and in decode_row gate and up (inside act).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ...model import RoPE, sliding_mask
from . import ops
from .packing import stacked


def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x W^T. One row (a decoded token) takes the kernel's matrix-vector product, which streams the
    weights at the machine's read rate: PyTorch's one-row product reads bf16 at a quarter of it
    (torch.mv) and fp32 at half of one core's (MKL's sgemv, one thread), the head most of all."""
    if x.numel() == x.shape[-1]:
        y = ops.matvec(weight, x)
        if y is not None:
            return y.view(*x.shape[:-1], weight.shape[0])
    return F.linear(x, weight)


def norm(x, module, residual=None):
    """residual + module(x) (or module(x)); one pass where the kernel applies."""
    if hasattr(module, "weight"):
        y = ops.rms_norm(x, module, residual)
        if y is not None:
            return y
    return module(x) if residual is None else residual + module(x)


def _seen(tap, stage, layer, x):
    if tap is not None:
        tap(stage, layer, x)
    return x


def attention(attn, x, cos, sin, start: int, cache, tap=None, layer=None):
    """Attention.forward of gemma3/model.py with the engine's steps."""
    B, T, _ = x.shape
    ws = (attn.wq.weight, attn.wk.weight, attn.wv.weight)
    fused = stacked(ws) if T > 1 else None
    if fused is not None:
        q, k, v = F.linear(x, fused).split([w.shape[0] for w in ws], dim=-1)
    else:
        q, k, v = (linear(x, w) for w in ws)
    q = _seen(tap, "q", layer, q.view(B, T, attn.heads, attn.head_dim))
    k = _seen(tap, "k", layer, k.view(B, T, attn.kv_heads, attn.head_dim))
    v = _seen(tap, "v", layer, v.reshape(B, T, attn.kv_heads, attn.head_dim)).transpose(1, 2)
    q, k = (_norm_rope(t, n, cos, sin) for t, n in ((q, attn.q_norm), (k, attn.k_norm)))
    if tap is not None:
        tap("q_rope", layer, q.transpose(1, 2))
        tap("k_rope", layer, k.transpose(1, 2))

    past_k, past_v, past_pos = cache.past(start)
    cache.write(k, v, start)
    if len(past_pos):
        k, v = torch.cat((past_k, k), dim=2), torch.cat((past_v, v), dim=2)
    q_pos = torch.arange(start, start + T, device=x.device)
    if len(past_pos) == 0 and (attn.window is None or T <= attn.window):
        mask = None  # plain causal is exact: nothing older than the window
    else:
        mask = sliding_mask(q_pos, torch.cat((past_pos, q_pos)), attn.window)
    out = attn.attend(q, k, v, mask, attn.scale)
    out = _seen(tap, "attn_out", layer, out.transpose(1, 2).reshape(B, T, attn.heads * attn.head_dim))
    return _seen(tap, "o", layer, linear(out, attn.wo.weight))


def _norm_rope(x, norm_module, cos, sin):
    """[B, T, heads, D] -> RoPE(RMSNorm(x)) as [B, heads, T, D]."""
    y = ops.norm_rope(x, norm_module, cos, sin)
    if y is not None:
        return y.transpose(1, 2)
    return RoPE.rotate(norm_module(x).transpose(1, 2), cos, sin)


def feed_forward(ffn, x, tap=None, layer=None):
    g = _seen(tap, "gate", layer, linear(x, ffn.gate.weight))
    u = _seen(tap, "up", layer, linear(x, ffn.up.weight))
    p = ops.geglu(g, u)
    p = _seen(tap, "act", layer, p if p is not None else F.gelu(g, approximate="tanh") * u)
    return _seen(tap, "down", layer, linear(p, ffn.down.weight))


def block_forward(block, x, cos, sin, start: int, cache, tap=None, layer=None):
    """Block.forward with the engine's steps."""
    _seen(tap, "input", layer, x)
    h = _seen(tap, "attn_norm", layer, norm(x, block.attn_norm))
    x = _seen(tap, "mid", layer, norm(attention(block.attn, h, cos, sin, start, cache, tap, layer),
                                      block.post_attn_norm, x))
    h = _seen(tap, "ffn_norm", layer, norm(x, block.ffn_norm))
    return _seen(tap, "output", layer, norm(feed_forward(block.ffn, h, tap, layer), block.post_ffn_norm, x))


@torch.no_grad()
def forward(model, input_ids: torch.Tensor, cache, last_only: bool = False, prepared=None,
            threads: int | None = None, tap=None) -> torch.Tensor:
    """model(input_ids, cache=cache, last_only=last_only), the same logits (to the last bit or two).
    prepared: ops.row_weights(model), when the caller decodes many tokens with one model; threads:
    the threads of a decoded token's one call (default: PyTorch's count); tap: see the module's doc."""
    cfg = model.config
    B, T = input_ids.shape
    start = cache.pos
    if start + T > min(cfg.context, cache.max_len):
        return model(input_ids, cache=cache, last_only=last_only)  # its clear error
    w = model.embed.weight
    x = _seen(tap, "embed", None, F.embedding(input_ids, w) * torch.tensor(math.sqrt(cfg.hidden)).to(w.dtype))
    positions = torch.arange(start, start + T, device=input_ids.device)
    local, glob = model.rope_local(positions, x.dtype), model.rope_global(positions, x.dtype)
    rope = [local if block.sliding else glob for block in model.blocks]
    if B == 1 and T == 1:
        logits = ops.decode_row(model, x, cache, rope, prepared, threads, tap)
        if logits is not None:
            cache.pos += 1
            return _seen(tap, "logits", None, logits.view(1, 1, -1))
    for i, (block, layer_cache, (cos, sin)) in enumerate(zip(model.blocks, cache.layers, rope)):
        x = block_forward(block, x, cos, sin, start, layer_cache, tap, i)
    cache.pos += T
    if last_only:
        x = x[:, -1:]
    x = _seen(tap, "final_norm", None, norm(x, model.final_norm))
    return _seen(tap, "logits", None, linear(x, w if model.head is None else model.head.weight))
