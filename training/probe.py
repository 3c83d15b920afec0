"""How long will a run take here? A probe of a few real training steps of its model on this device.

`estimate(cfg)` builds the run's model, takes one warm-up step, then times `steps` micro-batches (forward,
loss, backward: what the trainer does) on random tokens of the run's shape and one optimizer step
(clipping, fused AdamW), and scales to the run: step = grad_accum x micro-batch + optimizer step. It is
bounded whatever the settings: a micro-batch of more than PROBE_TOKENS tokens is probed at a smaller
batch and scaled by the tokens (step time follows them closely once a batch fills the machine; the
answer says when it did), sequences longer than PROBE_TOKENS are refused, and grad_accum multiplies the
measured time, not the work. Evaluations, samples and checkpoints come on top (a few percent with the
presets' intervals).

`estimate_apart(cfg)` is the app's way: it first refuses a run whose weights, gradients and optimizer state
cannot fit in the memory free here, then runs `estimate` in a child process (`python -m training.probe`)
that it kills after LIMIT_S seconds or as soon as the caller closes it (a cancelled request), so the
app's own memory never grows and nothing outlives the request.
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

import gemma3

from .config import TrainConfig

PROBE_TOKENS = 4096      # largest micro-batch probed as it is, and the longest sequence probed at all
LIMIT_S = 120            # wall time of one estimate in its child process, start-up included
STATE_BYTES = 16         # bytes a parameter takes in training: fp32 weight, gradient, AdamW's two moments
PACKAGE_ROOT = Path(__file__).resolve().parent.parent   # where `python -m training.probe` finds the packages


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


def device_of(cfg: TrainConfig) -> torch.device:
    return torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                        ("cpu" if cfg.device == "auto" else cfg.device))


def check_probe(cfg: TrainConfig):
    """A ValueError (one sentence) when the settings are beyond what the estimate times."""
    if cfg.seq_len > PROBE_TOKENS:
        raise ValueError(f"The estimate times sequences of up to {PROBE_TOKENS:,} tokens, not {cfg.seq_len:,}; "
                         "start a short run instead and read its tokens/s.")


def estimate(cfg: TrainConfig, steps: int = 2, on_step: Callable[[int, int], None] | None = None) -> Estimate:
    """Time the run `cfg` here; on_step(done, steps + 1) after the warm-up and after each timed micro-batch."""
    from .trainer import device_name

    check_probe(cfg)
    device = device_of(cfg)
    model = gemma3.Gemma3(gemma3.Gemma3Config.from_preset(cfg.preset, **cfg.model)).to(device).train()
    probed = max(1, min(cfg.batch_size, PROBE_TOKENS // cfg.seq_len))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, fused=device.type in ("cuda", "cpu"))
    amp = cfg.dtype == "bf16" or (cfg.dtype == "auto" and device.type == "cuda")
    x = torch.randint(0, model.config.vocab_size, (probed, cfg.seq_len), device=device)

    def micro_batch():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = model(x, targets=x) / cfg.grad_accum
        loss.backward()

    def update():
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)

    def timed(fn) -> float:
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0

    done = lambda i: on_step and on_step(i, steps + 1)  # noqa: E731
    timed(micro_batch), timed(update)  # warm-up: allocations, kernel choices
    done(1)
    micro = []
    for i in range(steps):
        micro.append(timed(micro_batch))
        done(i + 2)
    per_step = statistics.median(micro) * cfg.batch_size / probed * cfg.grad_accum + timed(update)
    scaled_from = probed if probed < cfg.batch_size else None
    return Estimate(per_step, per_step * cfg.max_steps, device_name(device), scaled_from)


# ---- the app's way: refused when it cannot fit, in a child process, bounded in time ------------------

def free_memory(device: torch.device) -> int | None:
    """Bytes free for a new process here: the GPU's free memory, or the system's available memory under this
    container's limit (cgroup v2); None when it cannot be read."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    free = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    try:
        cgroup = Path("/sys/fs/cgroup")
        limit = (cgroup / "memory.max").read_text().strip()
        if limit != "max" and free is not None:
            free = min(free, int(limit) - int((cgroup / "memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return free


def check_fits(cfg: TrainConfig, free: int | None):
    """A ValueError when the run's weights, gradients and AdamW state alone exceed `free` bytes."""
    if free is None:
        return
    with torch.device("meta"):   # counts the parameters without allocating them
        params = gemma3.Gemma3(gemma3.Gemma3Config.from_preset(cfg.preset, **cfg.model)).num_params()
    needed = params * STATE_BYTES
    if needed > free:
        raise ValueError(f"This run cannot train here: its {params / 1e6:.0f}M parameters need at least "
                         f"{needed / 2**30:.1f} GiB for weights, gradients and optimizer state, and "
                         f"{max(free, 0) / 2**30:.1f} GiB is free on this machine.")


@dataclass
class Progress:
    done: int    # steps timed so far (the warm-up counts)
    total: int


def estimate_apart(cfg: TrainConfig, steps: int = 2, limit_s: float = LIMIT_S,
                   free: int | None = None) -> Iterator[Progress | Estimate]:
    """`estimate(cfg)` in a child process: yields Progress about every half second and after each step, then
    the Estimate. Closing the iterator, or LIMIT_S seconds, kills the child. ValueError (one sentence) for
    settings it refuses: too long a sequence, too big for the memory free here (`free`, default: measured)."""
    check_probe(cfg)
    check_fits(cfg, free_memory(device_of(cfg)) if free is None else free)
    proc = subprocess.Popen([sys.executable, "-m", "training.probe", str(steps)], cwd=PACKAGE_ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines: queue.Queue = queue.Queue()

    def read():   # the child's lines, then None when it closes its output
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    try:
        proc.stdin.write(json.dumps(cfg.to_dict()))
        proc.stdin.close()
        deadline, progress, said = time.monotonic() + limit_s, Progress(0, steps + 1), []
        while True:
            if time.monotonic() > deadline:
                raise ValueError(f"Timing {steps + 1} steps of these settings took longer than {limit_s:.0f} s, the "
                                 "estimate's limit: the run would be very slow here; try a smaller batch or "
                                 "sequence length, or a GPU.")
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                yield progress
                continue
            if line is None:   # the child ended without a result
                proc.wait()
                raise _failure(proc.returncode, said)
            kind, _, rest = line.rstrip("\n").partition(" ")
            if kind == "step":
                progress = Progress(*map(int, rest.split()))
                yield progress
            elif kind == "result":
                yield Estimate(**json.loads(rest))
                return
            elif kind == "error":
                raise ValueError(rest)
            else:
                said = (said + [line])[-20:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _failure(returncode: int, said: list[str]) -> Exception:
    if returncode == -signal.SIGKILL:   # the kernel's out-of-memory killer, most likely
        return ValueError("The estimate ran out of memory: these settings would not train on this machine; try a "
                          "smaller batch or sequence length.")
    return RuntimeError(f"the estimate's process ended with code {returncode}: {''.join(said)[-500:]}")


def main(argv=None):
    """`python -m training.probe [STEPS]`: a TrainConfig as JSON on stdin; "step DONE TOTAL" lines, then
    "result {Estimate}" or "error <one sentence>" on stdout."""
    try:   # if memory runs out, the kernel ends this process, not the app that started it
        Path("/proc/self/oom_score_adj").write_text("1000")
    except OSError:
        pass
    steps = int((argv or sys.argv[1:] or ["2"])[0])
    try:
        cfg = TrainConfig.from_dict(json.loads(sys.stdin.read()))
        result = estimate(cfg, steps, lambda i, n: print(f"step {i} {n}", flush=True))
    except torch.OutOfMemoryError:
        print("error The estimate ran out of GPU memory: these settings would not train on this GPU; try a smaller "
              "batch or sequence length.", flush=True)
        return 1
    except ValueError as e:
        print(f"error {str(e).splitlines()[0] if str(e) else e.__class__.__name__}", flush=True)
        return 1
    print("result " + json.dumps(dataclasses.asdict(result)), flush=True)
    return 0


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} seconds"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} minutes"
    return f"{seconds / 3600:.1f} hours"


if __name__ == "__main__":
    sys.exit(main())
