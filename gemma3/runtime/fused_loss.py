"""The training loss's row pass in C++ (loss.cpp): logsumexp minus the target's logit, and the row turned into
its gradient, in one pass per row. gemma3/__init__.py installs `rows_grad` into gemma3/loss.py
(`use_rows_kernel`), whose PyTorch code runs wherever this declines; the numbers are the same either way."""

from __future__ import annotations

import torch

from . import native


def rows_grad(out: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """loss.rows_grad by loss.cpp (the rows' loss sum, and the gradient of `out` in its dtype, computed in an fp32
    copy of bf16 rows or in fp32 rows themselves); None where it does not take these rows: CPU rows of fp32 or bf16
    and int64 targets, contiguous, and the operator built (once, on first use)."""
    if not (out.device.type == "cpu" and out.dtype in (torch.float32, torch.bfloat16) and out.dim() == 2
            and out.is_contiguous() and targets.dtype == torch.int64 and targets.is_contiguous()
            and native.load("loss.cpp")):
        return None
    logits = out.float()
    return torch.ops.gemma3_loss.softmax_xent_(logits, targets).sum(), logits.to(out.dtype)
