"""How long the rest of a run will take: a smoothed step time, plus the pauses still to come.

A run's wall time is its training steps and its pauses: evaluations (with their sample and best/),
snapshots and checkpoints. The trainer tells `Pace` how long each step and each pause took; `eta`
counts the steps and pauses left from the run's config and prices them at their smoothed durations.

Smoothing: a step's time is the running mean of the steps timed so far, then (from SMOOTH_STEPS
steps on) an exponential moving average over about that many steps, so one slow step on a busy
machine moves the ETA a little, and a machine that got slower for good moves it within a minute.
The first step of a process is not timed (allocations, first kernels). A pause is priced at its last
duration (a quick step-0 evaluation scaled to the full evaluation's windows until one was timed).

Uncertainty: `eta` returns (seconds, low, high). The relative spread is the step times' coefficient
of variation plus 1/sqrt(steps timed), bounded to [5%, 100%]: wide while few steps are timed,
narrowing as they accumulate; the Train tab says a range while it is wide and "about" once narrow.
"""

from __future__ import annotations

import math

from . import snapshots
from .config import TrainConfig

SMOOTH_STEPS = 20


class Pace:
    def __init__(self):
        self.step_s: float | None = None   # smoothed seconds a step
        self.var = 0.0                     # exponentially weighted variance of a step's seconds
        self.timed = 0                     # steps timed
        self.pauses: dict[str, float] = {}  # kind -> seconds of the last one (eval: per validation window)
        self.eval_fixed_s = 0.0            # an evaluation's part that does not scale with its windows (the sample)

    def step(self, seconds: float):
        self.timed += 1
        if self.step_s is None:
            self.step_s = seconds
            return
        alpha = max(1 / self.timed, 1 / SMOOTH_STEPS)
        delta = seconds - self.step_s
        self.step_s += alpha * delta
        self.var = (1 - alpha) * (self.var + alpha * delta * delta)

    def pause(self, kind: str, seconds: float):
        """A snapshot ("snapshot") or checkpoint ("save") took `seconds`."""
        self.pauses[kind] = seconds

    def evaluation(self, windows: int, loss_s: float, fixed_s: float):
        """An evaluation over `windows` windows took loss_s for its loss and fixed_s for the rest (sample, best/)."""
        self.pauses["eval"] = loss_s / max(1, windows)
        self.eval_fixed_s = fixed_s

    def eta(self, cfg: TrainConfig, step: int) -> tuple[float, float, float] | None:
        """(seconds left, low, high) after `step` steps of the run cfg; None until a step was timed."""
        if self.step_s is None:
            return None
        left = range(step + 1, cfg.max_steps + 1)
        evals = sum(1 for s in left if s % cfg.eval_every == 0 or s == cfg.max_steps)
        saves = sum(1 for s in left if s % cfg.ckpt_every == 0 or s == cfg.max_steps)
        shots = sum(1 for s in left if snapshots.wanted(s, s % cfg.eval_every == 0 or s == cfg.max_steps)) \
            if cfg.snapshot_mb else 0   # every evaluation's step too
        eval_s = self.pauses.get("eval", 0.0) * cfg.eval_windows + self.eval_fixed_s
        seconds = (len(left) * self.step_s + evals * eval_s + saves * self.pauses.get("save", 0.0)
                   + shots * self.pauses.get("snapshot", 0.0))
        cv = math.sqrt(self.var) / self.step_s if self.step_s > 0 else 0.0
        spread = min(1.0, max(0.05, cv + 1 / math.sqrt(self.timed)))
        return seconds, seconds / (1 + spread), seconds * (1 + spread)
