"""How long will a run take here? A probe of a few real training steps of its model on this device.

`estimate(cfg)` builds the run's model, takes one warm-up step and then `steps` timed steps (forward,
loss, backward, clipping, fused AdamW: what the trainer does) on random tokens of the run's batch shape,
and scales to the run's max_steps. A batch too large to probe quickly (more than PROBE_TOKENS tokens a
micro-batch) is probed at a smaller batch and scaled by the tokens, which step time follows closely
once a batch fills the machine; the answer says when it did. Evaluations, samples and checkpoints come
on top (a few percent with the presets' intervals).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

import gemma3

from .config import TrainConfig

PROBE_TOKENS = 4096  # largest micro-batch probed as it is


@dataclass
class Estimate:
    seconds_per_step: float
    total_seconds: float
    device: str
    scaled_from: int | None  # the micro-batch actually probed, when smaller than the run's

    def words(self, max_steps: int) -> str:
        scaled = (f" (probed at batch {self.scaled_from} and scaled by the tokens)" if self.scaled_from else "")
        return (f"About {_duration(self.total_seconds)} for {max_steps:,} steps on this {self.device}: "
                f"{self.seconds_per_step:.2f} s a step, measured just now{scaled}; evaluations and checkpoints "
                "add a little.")


def estimate(cfg: TrainConfig, steps: int = 2) -> Estimate:
    from .trainer import device_name

    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if cfg.device == "auto" else cfg.device))
    model = gemma3.Gemma3(gemma3.Gemma3Config.from_preset(cfg.preset, **cfg.model)).to(device).train()
    batch = cfg.batch_size
    probed = max(1, min(batch, PROBE_TOKENS // cfg.seq_len))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, fused=device.type in ("cuda", "cpu"))
    amp = cfg.dtype == "bf16" or (cfg.dtype == "auto" and device.type == "cuda")
    x = torch.randint(0, model.config.vocab_size, (probed, cfg.seq_len), device=device)

    def step():
        for _ in range(cfg.grad_accum):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = model(x, targets=x) / cfg.grad_accum
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    step()  # warm-up: allocations, kernel choices
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    per_step = statistics.median(times) * batch / probed
    return Estimate(per_step, per_step * cfg.max_steps, device_name(device), probed if probed < batch else None)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} seconds"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} minutes"
    return f"{seconds / 3600:.1f} hours"
