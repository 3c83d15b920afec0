"""The training loss's row pass on a GPU, compiled: gemma3/loss.py's `rows_loss_` in two fused kernels.

gemma3/loss.py computes the cross-entropy a chunk of rows at a time, and for each chunk turns its fp32 logits into
their gradient in place (`rows_loss_`: logsumexp minus the target's logit, then softmax minus one-hot). In eager
PyTorch on a GPU that pass is about ten kernels, each reading or writing the whole chunk (256 MB of fp32 logits):
logsumexp alone reads it three times and writes two temporaries. Compiled, it is a reduction that reads the chunk
and one pass that reads it again and writes the gradient over it. At 32 x 2048 tokens of the GPT-2 vocabulary a
step has 49 such chunks, so this is tens of milliseconds a step on an H100.

`rows_loss_` is the same function as loss.rows_loss_ (the same operations, compiled: each value equal to the
eager pass's up to the order of the row's sum and the last bit of exp; tests/test_cuda.py compares them). It takes
CUDA fp32 logits; anything else goes to the kernel that was installed before (the CPU's C++ pass). `compiled_rows()`
installs it into gemma3/loss.py for a block (training/step.py does so for a compiled step on a GPU).
"""

from __future__ import annotations

import contextlib
import functools

import torch

from .. import loss


def _rows(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    lse = torch.logsumexp(logits, dim=-1)
    total = (lse - logits.gather(1, targets[:, None]).squeeze(1)).sum()
    grad = torch.exp(logits - lse[:, None])
    cols = torch.arange(logits.shape[1], device=logits.device)
    logits.copy_(torch.where(cols[None, :] == targets[:, None], grad - 1, grad))
    return total


@functools.cache
def _compiled():
    return torch.compile(_rows, dynamic=False)


def rows_loss_(logits: torch.Tensor, targets: torch.Tensor, otherwise=None) -> torch.Tensor | None:
    """The rows' loss sum, `logits` turned into the gradient (as loss.rows_loss_); CUDA fp32 logits only, else
    `otherwise(logits, targets)` (None: decline, and gemma3/loss.py runs its own PyTorch pass)."""
    if logits.device.type == "cuda" and logits.dtype == torch.float32 and logits.dim() == 2 and logits.is_contiguous():
        return _compiled()(logits, targets)
    return otherwise(logits, targets) if otherwise is not None else None


@contextlib.contextmanager
def compiled_rows():
    """gemma3/loss.py's row pass compiled on a GPU inside the block; the kernel installed before (the facade's C++
    pass for the CPU) serves everything else, and is installed again after."""
    before = loss._rows_kernel
    loss.use_rows_kernel(functools.partial(rows_loss_, otherwise=before))
    try:
        yield
    finally:
        loss.use_rows_kernel(before)
