"""q, k and v weights back to back in one buffer, so a prompt's projections are one matrix product."""

from __future__ import annotations

import torch


def pack_qkv(sd: dict, layers: int, dtype: torch.dtype) -> dict:
    """The state dict with each layer's Wq, Wk, Wv copied (in `dtype`) into one buffer, as views of
    it. The engine then computes a prompt's q, k and v in one matrix product: about 5% off a
    512-token bf16 prefill on a CPU, nothing in fp32, so load_model does it for bf16 on the CPU.
    Names and values are unchanged (the reference model reads each view as its own weight); `.to()`
    another dtype or device gives each weight its own buffer again."""
    sd = dict(sd)
    for i in range(layers):
        names = [f"blocks.{i}.attn.{w}.weight" for w in ("wq", "wk", "wv")]
        parts = [sd[n] for n in names]
        buf = torch.empty(sum(p.shape[0] for p in parts), *parts[0].shape[1:], dtype=dtype)
        for name, part, view in zip(names, parts, buf.split([p.shape[0] for p in parts])):
            sd[name] = view.copy_(part)
    return sd


def stacked(weights) -> torch.Tensor | None:
    """The matrices stacked on their rows as one tensor, without a copy: only when they lie back to
    back in one buffer (pack_qkv); otherwise None."""
    first = weights[0]
    base = first.untyped_storage().data_ptr()
    for a, b in zip(weights, weights[1:]):
        if (b.untyped_storage().data_ptr() != base or b.dtype != a.dtype or b.shape[1:] != a.shape[1:]
                or not b.is_contiguous() or a.data_ptr() + a.numel() * a.element_size() != b.data_ptr()):
            return None
    if not first.is_contiguous():
        return None
    return first.as_strided((sum(w.shape[0] for w in weights), *first.shape[1:]), first.stride())
