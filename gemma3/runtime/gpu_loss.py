"""The training loss's row pass on a GPU, compiled: gemma3/loss.py's `rows_grad` in two fused kernels.

gemma3/loss.py computes the cross-entropy a chunk of rows at a time: the head's output for a chunk (bf16 under
autocast), its loss (logsumexp minus the target's logit, in fp32) and its gradient (softmax minus one-hot, back
in the head's dtype). In eager PyTorch on a GPU that pass is about ten kernels, and it writes the chunk out in
fp32 (256 MB) and reads it back several times: about 2 GB of memory traffic per chunk, 49 chunks a step at
32 x 2048 tokens of the GPT-2 vocabulary. Compiled, it is a reduction that reads the head's output once and
one pass that reads it again and writes the gradient in the head's dtype; the fp32 logits are never written
out (about 0.5 GB a chunk in bf16).

`rows_grad` computes what loss.rows_grad computes (the same operations, fused: each value equal to the eager
pass's up to the order of a row's sum and the last bit of exp; tests/test_cuda.py compares them). It takes CUDA
rows; anything else goes to the kernel that was installed before (the CPU's C++ pass). `compiled_rows()` installs
it into gemma3/loss.py for a block (training/step.py does so for a compiled step on a GPU).
"""

from __future__ import annotations

import contextlib
import functools

import torch

from .. import loss


def _rows(out: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logits = out.float()
    lse = torch.logsumexp(logits, dim=-1)
    total = (lse - logits.gather(1, targets[:, None]).squeeze(1)).sum()
    grad = torch.exp(logits - lse[:, None])
    cols = torch.arange(logits.shape[1], device=logits.device)
    return total, torch.where(cols[None, :] == targets[:, None], grad - 1, grad).to(out.dtype)


@functools.cache
def _compiled():
    return torch.compile(_rows, dynamic=False)


def rows_grad(out: torch.Tensor, targets: torch.Tensor, otherwise=None):
    """(The rows' loss sum, the gradient of `out` in its dtype), as loss.rows_grad; CUDA rows only, else
    `otherwise(out, targets)` (None: decline, and gemma3/loss.py runs its own PyTorch pass)."""
    if out.device.type == "cuda" and out.dim() == 2 and out.is_contiguous():
        return _compiled()(out, targets)
    return otherwise(out, targets) if otherwise is not None else None


@contextlib.contextmanager
def compiled_rows():
    """gemma3/loss.py's row pass compiled on a GPU inside the block; the kernel installed before (the facade's C++
    pass for the CPU) serves everything else, and is installed again after."""
    before = loss.use_rows_kernel(None)
    loss.use_rows_kernel(functools.partial(rows_grad, otherwise=before))
    try:
        yield
    finally:
        loss.use_rows_kernel(before)
