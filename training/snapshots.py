"""Light model-only snapshots of a run, for watching a model learn.

A step checkpoint exists to resume (model, optimizer, RNG: three times the model's size, only the last
few kept). A snapshot exists to be looked at later: the model alone, in bf16 (half the fp32 weights),
at the steps where learning is worth watching:

    step 0 (the initialisation), then 1, 2, 5, 10, 20, 50, 100, 200, 500, ... (log-spaced: early
    steps change a model most), plus every step the run evaluates.

Each is `runs/NAME/snapshots/step_NNNNNNN/`: our checkpoint format (gemma3.load_model opens it) and
snapshot.json, written last, with the step, the tokens seen, the last training loss, the validation
loss when the run evaluated there, and `batch_loss`: the loss of the snapshot's own (bf16) weights on
the run's first validation batch, in fp32, which anyone can recompute from the folder. Folders are
written atomically (a temporary sibling renamed into place), like checkpoints.

The disk budget (`snapshot_mb`, default 2048 MB per run; 0 turns snapshots off) is kept by pruning
after each write, least useful first: snapshots at evaluation steps before log-spaced ones, and among
log-spaced ones the 2s and 5s before the powers of ten; the oldest first within each kind. Step 0 and
the newest snapshot are never pruned. For the tiny preset (3.5M parameters, 7 MB a snapshot) a whole
run fits; the 270m preset (132.5M parameters, 265 MB a snapshot) keeps about seven.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

from gemma3.io.checkpoints import FORMAT

from gemma3.io.files import atomic_dir_write

INFO = "snapshot.json"  # written last: a folder without it is not a snapshot (yet)
DTYPE = torch.bfloat16


def log_spaced(step: int) -> bool:
    """Step 0, and the steps 1, 2, 5 times a power of ten."""
    if step == 0:
        return True
    if step < 0:
        return False
    power = 10 ** int(math.log10(step))
    return step in (power, 2 * power, 5 * power)


def wanted(step: int, evaluated: bool) -> bool:
    """Does the trainer take a snapshot after `step` steps (evaluated: the run evaluates at this step)?"""
    return log_spaced(step) or evaluated


def snapshots(run) -> list[Path]:
    """The run's complete snapshots, oldest first."""
    folder = Path(run) / "snapshots"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name.startswith("step_") and (p / INFO).is_file())


def read(folder) -> dict:
    """A snapshot's snapshot.json."""
    return json.loads((Path(folder) / INFO).read_text())


def stored_state(model) -> dict:
    """The model's weights as a snapshot stores them: bf16 copies on the CPU."""
    return {k: v.detach().to("cpu", DTYPE, memory_format=torch.contiguous_format, copy=True)
            for k, v in model.state_dict().items()}


def write(run, config, state: dict, tokenizer, info: dict) -> Path:
    """Write snapshot `info["step"]`: the weights `state` (from `stored_state`) of a model with `config`,
    and `info` as snapshot.json."""

    def fill(tmp: Path):
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": FORMAT})
        (tmp / "config.json").write_text(config.to_json())
        tokenizer.save(tmp)
        (tmp / INFO).write_text(json.dumps(info))
    return atomic_dir_write(Path(run) / "snapshots" / f"step_{info['step']:07d}", fill)


def _priority(step: int) -> int:
    """How much a snapshot is worth keeping: 3 step 0, 2 a power of ten, 1 another log-spaced step,
    0 an evaluation step."""
    if step == 0:
        return 3
    if not log_spaced(step):
        return 0
    return 2 if str(step).rstrip("0") == "1" else 1


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in Path(folder).iterdir() if f.is_file())


def prune(run, budget_bytes: int, discard) -> list[Path]:
    """Delete snapshots (with `discard(folder)`) until the rest fit in budget_bytes; returns the deleted.
    Least useful first (see the module's docstring); step 0 and the newest stay whatever the budget."""
    found = snapshots(run)
    sizes = {p: folder_bytes(p) for p in found}
    total = sum(sizes.values())
    step = {p: int(p.name[len("step_"):]) for p in found}
    candidates = sorted(found[:-1], key=lambda p: (_priority(step[p]), step[p]))
    removed = []
    for p in candidates:
        if total <= budget_bytes or _priority(step[p]) == 3:
            break
        discard(p)
        total -= sizes[p]
        removed.append(p)
    return removed
