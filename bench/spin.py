"""The trainer on a busy CPU: how long PyTorch's OpenMP threads spin, waiting for work, before they sleep.

    python bench/spin.py                  # the tiny preset, 60 steps, quiet and with a busy loop per core (about 5 min)
    python bench/spin.py --steps 30 --repeats 2

GNU OpenMP (PyTorch's CPU threads on Linux) spins 300,000 rounds before a waiting thread sleeps. Where the other cores
are busy, a spinning thread holds a core that the thread doing the work needs. Importing gemma3 sets GOMP_SPINCOUNT
to 10,000 unless it is set (gemma3/__init__.py). Each run is `python -m training train --preset tiny` in a new
process, with OpenMP's default (GOMP_SPINCOUNT=300000), with ours (nothing set: the import sets it), and on one
thread; quiet and with a "spin" hog (bench/decode.py: a Python busy loop per core). Printed: the trainer's own
seconds of training ("N steps in S s of training"), the median of --repeats runs, and the final validation loss
(the numbers do not depend on the setting).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.decode import Hog

SETTINGS = {"OpenMP's default spin": {"GOMP_SPINCOUNT": "300000"}, "ours (10,000)": {},
            "one thread": {"OMP_NUM_THREADS": "1"}}


def train_seconds(data: Path, out: Path, steps: int, extra: dict) -> tuple[float, str]:
    """(seconds of training, best val loss) of one tiny run in a new process with `extra` in its environment."""
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_NUM_THREADS")}
    env.update(extra, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "training", "train", "--preset", "tiny", "--data", str(data), "--out", str(out),
           f"--max-steps={steps}", "--eval-every=1000", "--ckpt-every=1000", "--sample-tokens=1"]
    text = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    m = re.search(r"(\d+) steps in ([\d.]+) s of training; the best val loss, ([\d.]+)", text)
    return float(m[2]), m[3]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args(argv)
    from training.data import prepare

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        prepare("builtin", data, builtin_stories=300, progress=False)
        print(f"tiny preset, {args.steps} steps, {os.cpu_count()} cores; seconds of training "
              f"(median of {args.repeats}):\n\n| setting | quiet | a busy loop per core |\n|---|---|---|")
        for name, extra in SETTINGS.items():
            cells = []
            for busy in (False, True):
                with Hog("spin") if busy else contextlib.nullcontext():
                    runs = [train_seconds(data, Path(tmp) / f"run{len(cells)}{i}{name[:3]}", args.steps, extra)
                            for i in range(args.repeats)]
                cells.append(f"{statistics.median(s for s, _ in runs):.0f} s (val loss {runs[-1][1]})")
            print(f"| {name} | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    main()
