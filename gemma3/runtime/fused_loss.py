"""The training loss's row pass in C++ (loss.cpp): logsumexp minus the target's logit, and the row turned into
its gradient, in one pass per row. gemma3/__init__.py installs `rows_loss_` into gemma3/loss.py
(`use_rows_kernel`), whose PyTorch code runs wherever this declines; the numbers are the same either way."""

from __future__ import annotations

import torch

from . import native


def rows_loss_(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
    """The rows' loss sum, `logits` turned into the gradient, by loss.cpp; None where it does not take these
    rows: CPU fp32 logits and int64 targets, contiguous, and the operator built (once, on first use)."""
    if not (logits.device.type == "cpu" and logits.dtype == torch.float32 and logits.dim() == 2
            and logits.is_contiguous() and targets.dtype == torch.int64 and targets.is_contiguous()
            and native.load("loss.cpp")):
        return None
    return torch.ops.gemma3_loss.softmax_xent_(logits, targets).sum()
