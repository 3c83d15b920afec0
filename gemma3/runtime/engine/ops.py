"""The engine's operators (kernels.cpp) as Python calls that say when they apply.

The per-stage operators (matvec, rms_norm, norm_rope, geglu) serve forward.py's step path; decode_row
computes a whole decoded row with the same C++ functions for each row's math, and can write its stages out
(its trace, ROW_STAGES). Each C++ operator is registered with PyTorch as gemma3_engine::NAME, with a fake
(shape-only) implementation here, so torch.compile traces them as opaque calls instead of breaking on them.
A call returns None where its operator does not apply (no kernels here, a gradient wanted, not CPU, not
fp32/bf16, a layout it does not take): the caller then runs the PyTorch code.
"""

from __future__ import annotations

import math

import torch

from .. import native

SOURCE = "engine/kernels.cpp"
DTYPES = (torch.float32, torch.bfloat16)
_ready: bool | None = None


def available() -> bool:
    """Whether the kernels run here (built once per machine and user, about 15 s; see gemma3/runtime/native.py). Under
    torch.compile a constant: whether they were loaded before compiling (no file read to trace)."""
    global _ready
    if torch.compiler.is_compiling():
        return bool(_ready)
    if _ready is None:
        _ready = native.load(SOURCE)
        if _ready:
            _register_fakes()
    return _ready


def usable(*tensors: torch.Tensor) -> bool:
    """CPU tensors of one dtype we have kernels for, no gradient wanted, and the kernels built."""
    dtype = tensors[0].dtype
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    return dtype in DTYPES and all(t.device.type == "cpu" and t.dtype == dtype for t in tensors) and available()


def _register_fakes():
    """Output shapes for torch.compile's tracing (the operators never run on fake tensors)."""
    lib = "gemma3_engine::"
    torch.library.register_fake(lib + "matvec")(lambda W, x: W.new_empty(W.shape[0]))
    torch.library.register_fake(lib + "rms_norm")(lambda x, weight, residual, eps: torch.empty_like(x))
    torch.library.register_fake(lib + "norm_rope")(lambda x, weight, cos, sin, eps: x.new_empty(x.shape))
    torch.library.register_fake(lib + "geglu")(lambda gate, up: torch.empty_like(gate))
    torch.library.register_fake(lib + "decode_row")(
        lambda x, weights, caches, rope, slots, lengths, scales, final_norm, head, eps, threads, trace=None:
        head.new_empty(head.shape[0]))


def matvec(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor | None:
    """weight [rows, cols] @ x [cols], or None."""
    if x.numel() != weight.shape[1] or not usable(weight, x) or not weight.is_contiguous():
        return None
    return torch.ops.gemma3_engine.matvec(weight, x.reshape(-1))


def rms_norm(x: torch.Tensor, norm, residual: torch.Tensor | None = None) -> torch.Tensor | None:
    """`residual + norm(x)` (or `norm(x)`) of a gemma3 RMSNorm module, in one pass, or None."""
    extra = () if residual is None else (residual,)
    if not usable(x, norm.weight, *extra) or not x.is_contiguous() or (residual is not None and not residual.is_contiguous()):
        return None
    return torch.ops.gemma3_engine.rms_norm(x, norm.weight, residual, norm.eps)


def norm_rope(x: torch.Tensor, norm, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor | None:
    """Per-head RMSNorm then RoPE of q or k [B, T, heads, D] -> [B, T, heads, D] dense, or None.
    x may be a slice of a wider row (a fused q/k/v product)."""
    B, T, _, D = x.shape
    if (D > 1024 or x.stride(3) != 1 or x.stride(2) != D or (B > 1 and x.stride(0) != T * x.stride(1))
            or not usable(x, norm.weight, cos, sin)):
        return None
    return torch.ops.gemma3_engine.norm_rope(x, norm.weight, cos, sin, norm.eps)


def geglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor | None:
    if not usable(gate, up) or not gate.is_contiguous() or not up.is_contiguous():
        return None
    return torch.ops.gemma3_engine.geglu(gate, up)


def row_weights(model) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor] | None:
    """What decode_row reads of a model, checked once: (13 weights a layer, final norm, head), or None
    where the operator does not apply. Building and checking it took about 160 us, a sixth of a
    demo-model token, so generation does it once (engine.decoder), not per token."""
    weights = []
    for block in model.blocks:
        a, f = block.attn, block.ffn
        if not hasattr(block.post_attn_norm, "weight"):
            return None
        weights += [block.attn_norm.weight, a.wq.weight, a.wk.weight, a.wv.weight, a.q_norm.weight, a.k_norm.weight,
                    a.wo.weight, block.post_attn_norm.weight, block.ffn_norm.weight, f.gate.weight, f.up.weight,
                    f.down.weight, block.post_ffn_norm.weight]
    head = model.embed.weight if model.head is None else model.head.weight
    tensors = [*weights, model.final_norm.weight, head]
    with torch.no_grad():  # whether gradients are wanted is asked of each call, not here
        if not usable(*tensors) or not all(t.is_contiguous() for t in tensors):
            return None
    return weights, model.final_norm.weight, head


# The stages decode_row can write out (its trace), a layer's in the order kernels.cpp's plan lays them out, then
# final_norm. Of explain.hooks.STAGES it has no gate and up (one step computes act from their rows) and none of
# the five the engine fuses (forward.py); k_rope is the key it writes to the cache, a layer's input the
# previous layer's output.
ROW_STAGES = ("attn_norm", "q", "k", "v", "q_rope", "attn_out", "o", "mid", "ffn_norm", "act", "down", "output")


def _row_shapes(attn, d: int, f: int) -> list[tuple[int, ...]]:
    heads, kv, hd = attn.heads, attn.kv_heads, attn.head_dim
    return [(d,), (heads, hd), (kv, hd), (kv, hd), (heads, hd), (heads * hd,), (d,), (d,), (d,), (f,), (d,), (d,)]


def decode_row(model, x: torch.Tensor, cache, cos_sin, prepared=None, threads: int | None = None,
               tap=None) -> torch.Tensor | None:
    """The logits [vocab] of one decoded row x [1, 1, hidden] (the scaled embedding) at position
    cache.pos: every block, each writing its key and value to its LayerCache, then the final norm and
    the head, in one call; or None. cos_sin: the (cos, sin) of the row's position for each layer;
    prepared: row_weights(model), when the caller has it (False: it found the operator does not
    apply); threads: how many threads compute it (default: PyTorch's intra-op count); tap: given,
    the call also writes its stages to a trace, and tap(stage, layer, tensor) sees each (ROW_STAGES,
    and a layer's input and k_rope, then final_norm) as forward.py shows a row's: [1, 1, ...]."""
    prepared = row_weights(model) if prepared is None else prepared
    if not prepared or x.numel() != x.shape[-1] or not usable(x, prepared[2]) or not x.is_contiguous():
        return None
    weights, final_norm, head = prepared
    caches, rope, slots, lengths, scales = [], [], [], [], []
    pos = cache.pos
    for block, lc, (cos, sin) in zip(model.blocks, cache.layers, cos_sin):
        if lc.k.shape[0] != 1 or lc.k.dtype != x.dtype:
            return None
        caches += [lc.k, lc.v]
        rope += [cos, sin]
        slots.append(pos % lc.slots if lc.ring else pos)
        lengths.append(min(pos + 1, lc.slots))
        scales.append(block.attn.scale)
    shapes = None if tap is None else _row_shapes(model.blocks[0].attn, x.numel(), weights[9].shape[0])
    trace = None if tap is None else x.new_empty(len(model.blocks) * sum(map(math.prod, shapes)) + x.numel())
    logits = torch.ops.gemma3_engine.decode_row(x, weights, caches, rope, slots, lengths, scales, final_norm, head,
                                                model.config.norm_eps, threads or torch.get_num_threads(), trace)
    if tap is not None:
        _show(tap, trace, shapes, x, cache.layers, slots)
    return logits


def _show(tap, trace, shapes, x, layers, slots):
    """tap each stage of decode_row's trace (and a layer's input, its key in the cache) as a [1, 1, ...] view"""
    d = x.numel()
    parts = iter(trace.split([math.prod(s) for s in shapes] * len(layers) + [d]))
    row = x.view(1, 1, d)
    for i, (lc, slot) in enumerate(zip(layers, slots)):
        tap("input", i, row)
        for stage, shape in zip(ROW_STAGES, shapes):
            row = next(parts).view(1, 1, *shape)  # the last: the layer's output, the next one's input
            tap(stage, i, row)
            if stage == "q_rope":
                tap("k_rope", i, lc.k[:, :, slot].unsqueeze(1))
    tap("final_norm", None, next(parts).view(1, 1, d))


def covered_chunks() -> int:
    """How many chunks of decode_row's steps, since the kernels loaded, a thread computed for another
    that held one too long (most likely because the OS had stopped it): 0 without the kernels."""
    return torch.ops.gemma3_engine.covered_chunks() if available() else 0
