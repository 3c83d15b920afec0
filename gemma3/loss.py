"""The training loss: mean cross-entropy of the head's logits against the next tokens.

`cross_entropy(h, weight, targets)` equals F.cross_entropy((h @ weight.T).float(), targets) (fp32
softmax, as transformers computes it; under autocast the head's matrix products run in the autocast
dtype, as they would in `Gemma3.forward`), but the [tokens, vocab] logits never exist whole: rows are
taken a chunk at a time, and each chunk's gradient (softmax - one-hot, times the head) is computed
while its logits are at hand, in the forward pass. That saves the memory of the logits and their
gradient (a batch of 32 x 512 with the GPT-2 vocabulary: 3.3 GB each in fp32) and, on a CPU, most of
the time PyTorch spends in log-softmax and its backward. Use it when a gradient is wanted; with none
it only computes the loss.

The row pass (`rows_grad`: a chunk's loss and the gradient of its logits) is plain PyTorch here. A faster one
is applied from outside: `use_rows_kernel` installs it (gemma3/__init__.py installs gemma3/runtime/fused_loss.py's
C++ pass for the CPU, which gives the same numbers where it builds and declines where it does not; a compiled
training step on a GPU installs gemma3/runtime/gpu_loss.py's, which never writes the fp32 logits out).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CHUNK_ELEMENTS = 1 << 26  # fp32 logits per chunk: 256 MB
_rows_kernel = None  # f(out, targets) -> (the rows' loss sum, the gradient of out), or None


def use_rows_kernel(kernel):
    """Run `kernel(out, targets)` in place of rows_grad's PyTorch code wherever it returns (loss, gradient), not None;
    returns the kernel it replaces (to put it back)."""
    global _rows_kernel
    before, _rows_kernel = _rows_kernel, kernel
    return before


def cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over rows of CE(h W^T, targets): h [N, d], weight [V, d], targets [N] token ids in [0, V)
    (there is no ignore index; an id outside is an IndexError, as F.cross_entropy's)."""
    if torch.compiler.is_compiling():  # eager inside a compiled model: a loop of large matrix products and a C call
        return torch.compiler.disable(cross_entropy)(h, weight, targets)
    check_targets(targets, weight.shape[0])
    if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
        return HeadCrossEntropy.apply(h, weight, targets)
    total = sum(rows_grad(F.linear(hc, weight), tc)[0] for hc, tc in zip(*chunks(h, weight, targets)))
    return total / h.shape[0]


def check_targets(targets: torch.Tensor, vocab_size: int):
    """On the CPU, where the kernel would write outside a row, an id outside [0, V) is an IndexError; on a GPU
    no host sync is spent on it (gather's own device-side check stops the step)."""
    if targets.device.type == "cpu" and len(targets) and not (0 <= targets.min() and targets.max() < vocab_size):
        bad = targets[(targets < 0) | (targets >= vocab_size)][0].item()
        raise IndexError(f"target token id {bad} is outside the vocabulary [0, {vocab_size})")


def chunks(h, weight, targets):
    rows = max(1, CHUNK_ELEMENTS // weight.shape[0])
    return h.split(rows), targets.split(rows)


def rows_grad(out: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For the head's output `out` [n, V] (in the head's dtype): the sum over rows of logsumexp(row) - row[target],
    in fp32, and its gradient with respect to `out`, softmax(row) - one_hot(target), in out's dtype. The installed
    kernel where it takes these rows."""
    if _rows_kernel is not None and (done := _rows_kernel(out, targets)) is not None:
        return done
    logits = out.float()  # a copy in bf16, out itself in fp32: either way turned into the gradient in place
    lse = torch.logsumexp(logits, dim=-1)
    loss = (lse - logits.gather(1, targets[:, None]).squeeze(1)).sum()
    logits.sub_(lse[:, None]).exp_()
    logits[torch.arange(len(targets), device=logits.device), targets] -= 1
    return loss, logits.to(out.dtype)  # the gradient reaches the head's product in its dtype, as autograd's would


class HeadCrossEntropy(torch.autograd.Function):
    """Loss and gradients in one forward pass over row chunks; the backward only scales them."""

    @staticmethod
    def forward(ctx, h, weight, targets):
        grad_h, grad_w = torch.empty_like(h), None
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        start = 0
        for hc, tc in zip(*chunks(h, weight, targets)):
            loss, g = rows_grad(F.linear(hc, weight), tc)  # the autocast dtype under autocast, as in Gemma3.forward
            total += loss
            grad_h[start:start + len(hc)] = g @ weight
            part = g.t() @ hc
            grad_w = part.float() if grad_w is None else grad_w.add_(part)
            start += len(hc)
        ctx.save_for_backward(grad_h, grad_w)
        ctx.rows, ctx.weight_dtype = h.shape[0], weight.dtype
        return total / h.shape[0]

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_w = ctx.saved_tensors
        scale = grad_loss / ctx.rows
        return (grad_h * scale.to(grad_h.dtype)), (grad_w * scale).to(ctx.weight_dtype), None
