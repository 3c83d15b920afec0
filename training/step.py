"""The trainer's optimizer step, on its own so that bench/train.py times the step the trainer takes.

    step = TrainStep(model, grad_accum=4, grad_clip=0.5, amp_dtype=torch.bfloat16, compile=True, seq_len=512)
    optimizer = adamw(model, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    loss, grad_norm = step(optimizer, [(x, y), ...], lr)   # tensors on the device; nothing waited for them
    reading = step.read()                                   # waits: floats, and the skipped-step tally

A step: every micro-batch forward with `model(x, targets=y)` (the loss of gemma3/loss.py, whose logits never
exist whole) and backward, under bf16 autocast where asked (fp32 master weights), the loss averaged over
micro-batches (and ranks under DDP), the gradients clipped, and a fused AdamW update.

Nothing in it waits for the host. The loss and the gradient norm stay on the device, and a step whose loss or
gradient is not finite skips its update on the device too: fused AdamW reads a `found_inf` flag (as the AMP
gradient scaler sets it) and leaves the weights, its moments and its step count as they were, where the
trainer used to read both numbers every step and skip the call. A tally on the device counts the skipped steps,
those in a row now, and the most in a row since the last reading; the trainer reads it (`read`, one transfer)
where it logs, evaluates, snapshots or saves, and applies its rules there. On a CPU the numbers are the same
as the old step's, bit for bit.

`compile=True` compiles the model, forward and backward (torch.compile; the loss's chunked pass stays out of the
graph, gemma3/loss.py keeps it eager), and on a GPU, for the step: the sliding layers attend with FlexAttention
(gemma3/runtime/flex.py: blocks outside the window are skipped, not masked), and the loss's row pass (softmax
minus one-hot over each chunk of logits) runs compiled (gemma3/runtime/gpu_loss.py); evaluation and generation
keep the core's SDPA and row pass. Clipping and the fused update are a handful of multi-tensor kernels and stay
eager.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.distributed as dist

from gemma3.runtime import flex, gpu_loss


def adamw(model: torch.nn.Module, lr: float, betas: tuple[float, float], weight_decay: float,
          device: torch.device | None = None) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only; fused (one kernel for every parameter) on CUDA and the CPU,
    where it takes a 270m step's update from 370 ms to 90 ms."""
    device = device or next(model.parameters()).device
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                             lr=lr, betas=betas, fused=device.type in ("cuda", "cpu"))


@dataclass
class Reading:
    """What the host learns when it reads the device: the last step's numbers and the skipped-step tally."""
    loss: float            # the last step's loss (mean over its micro-batches and ranks)
    grad_norm: float       # the last step's gradient norm before clipping
    skipped: int           # steps skipped since this TrainStep was made
    in_a_row: int          # non-finite steps in a row, up to the last one
    most_in_a_row: int     # the longest run of them in a row since the previous reading, with the run that
                           # reading ended in (so a run is judged whole, however the readings cut it)


class TrainStep:
    def __init__(self, model: torch.nn.Module, *, grad_accum: int = 1, grad_clip: float = 1.0,
                 amp_dtype: torch.dtype | None = None, compile: bool = False, seq_len: int | None = None,
                 world: int = 1, device: torch.device | None = None):
        self.model = model
        self.device = device or next(model.parameters()).device
        self.grad_accum, self.grad_clip, self.amp_dtype, self.world = grad_accum, grad_clip, amp_dtype, world
        # During the step only, compiled on a GPU: FlexAttention for the sliding layers beyond the window, and the
        # loss's row pass compiled (gemma3/runtime/gpu_loss.py)
        self.attends, self.loss_rows = {}, contextlib.nullcontext
        if compile and self.device.type == "cuda":
            self.attends = flex.flex_attends(model, seq_len) if seq_len else {}
            self.loss_rows = gpu_loss.compiled_rows
        self.fwd = torch.compile(model) if compile else model
        if world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.fwd = torch.nn.parallel.DistributedDataParallel(self.fwd, device_ids=ids)
        self.skipped, self.in_a_row, self.most_in_a_row = (torch.zeros((), dtype=torch.int32, device=self.device)
                                                           for _ in range(3))
        self.last: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def flex_layers(self) -> int:
        """How many layers attend with FlexAttention during the step."""
        return len(self.attends)

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def __call__(self, optimizer: torch.optim.Optimizer, batches, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step over the micro-batches `batches` ((x, y) pairs, grad_accum of them, on any device);
        returns (loss, gradient norm before clipping), 0-d tensors on the device, without waiting for them."""
        for group in optimizer.param_groups:
            group["lr"] = lr
        total = torch.zeros((), device=self.device)
        with flex.attending(self.attends), self.loss_rows():
            for micro, (x, y) in enumerate(batches):
                x, y = self._to_device(x), self._to_device(y)
                last = micro == self.grad_accum - 1
                sync = contextlib.nullcontext() if (self.world == 1 or last) else self.fwd.no_sync()
                with sync, self.autocast():
                    loss = self.fwd(x, targets=y) / self.grad_accum  # never holds the whole logits (gemma3/loss.py)
                    loss.backward()
                total += loss.detach()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        if self.world > 1:
            dist.all_reduce(total, op=dist.ReduceOp.AVG)
        bad = ~(torch.isfinite(total) & torch.isfinite(grad_norm))
        if all(group.get("fused") for group in optimizer.param_groups):
            optimizer.found_inf = bad.float()  # fused AdamW skips the whole update where this is 1, on the device
            try:
                optimizer.step()
            finally:
                optimizer.found_inf = None
        elif not bad.item():  # another optimizer has no such flag: the host decides, as it always did
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        bad = bad.to(torch.int32)
        self.skipped += bad
        self.in_a_row.add_(1).mul_(bad)
        torch.maximum(self.most_in_a_row, self.in_a_row, out=self.most_in_a_row)
        self.last = (total, grad_norm)
        return total, grad_norm

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        if t.device.type == "cpu" and self.device.type == "cuda" and not t.is_pinned():
            t = t.pin_memory()  # a copy from pageable memory can wait for the device; from pinned memory it never does
        return t.to(self.device, non_blocking=True)  # itself where it is there already

    def read(self) -> Reading:
        """The last step's loss and gradient norm, and the tally: one transfer, which waits for the device.
        Starts the next "most in a row" at the current run of non-finite steps."""
        loss, norm = self.last if self.last is not None else (torch.full((), float("nan"), device=self.device),) * 2
        values = torch.stack([loss.float(), norm.float(), self.skipped.float(), self.in_a_row.float(),
                              self.most_in_a_row.float()]).tolist()
        self.most_in_a_row.copy_(self.in_a_row)
        return Reading(values[0], values[1], int(values[2]), int(values[3]), int(values[4]))
