"""Experiment trackers: `python -m training train ... --tracker trackio --tracker tensorboard --tracker wandb`.

Each tracker gets what the run writes to metrics.jsonl, as it writes it: every number of a record under
"<kind>/<name>" ("train/loss", "eval/val_loss", ...) at the record's step, and the evaluation's sample
text where the tracker shows text. metrics.jsonl stays the source of truth (the app draws its curves
from it); a tracker is a copy for the tools people already use.

- trackio: Hugging Face's local-first tracker (`trackio show` opens its dashboard; TRACKIO_DIR says where
  its SQLite files go, TRACKIO_SPACE_ID sends them to a Space's dashboard instead).
- tensorboard: event files in the run folder's tensorboard/ (`tensorboard --logdir runs`).
- wandb: Weights & Biases, its files in the run folder's wandb/ (WANDB_MODE=offline keeps them there).

The trackers live on rank 0 only, are started before the first step (a missing package is one sentence
before any training: see `require`), continue the same tracker run when the run resumes, and are closed
when the run ends, however it ends. A tracker that fails mid-run is reported once and dropped: the run
goes on.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import uuid
from pathlib import Path

PROJECT = "gemma3-tinystories"
PACKAGES = {"trackio": "trackio", "tensorboard": "tensorboard", "wandb": "wandb"}  # tracker -> pip package
TRACKERS = tuple(PACKAGES)
IDS = "trackers.json"  # in the run folder: the tracker runs' ids, so a resumed run continues them


def missing(names) -> list[str]:
    return [n for n in names if importlib.util.find_spec(PACKAGES[n]) is None]


def require(names):
    """ValueError, one sentence saying what to install, if a tracker's package is not installed."""
    lost = missing(names)
    if lost:
        need = "trackers need their packages" if len(lost) > 1 else "tracker needs its package"
        raise ValueError(f"The {' and '.join(lost)} {need}: pip install {' '.join(PACKAGES[n] for n in lost)}.")


def split(record: dict) -> tuple[int, dict, dict]:
    """A metrics.jsonl record as (step, numbers under "<kind>/<name>", texts under "<kind>/<name>")."""
    kind, step = record["kind"], record["step"]
    scalars, texts = {}, {}
    for key, value in record.items():
        if key in ("kind", "step", "time"):
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            scalars[f"{kind}/{key}"] = value
        elif isinstance(value, str):
            texts[f"{kind}/{key}"] = value
    return step, scalars, texts


class TensorBoard:
    def __init__(self, run: Path, config: dict, run_id: str | None, start_step: int):
        from torch.utils.tensorboard import SummaryWriter

        # a resumed run logs again the steps after its checkpoint: hide what the first attempt logged there
        self.writer = SummaryWriter(log_dir=str(run / "tensorboard"), purge_step=start_step + 1 if start_step else None)
        if not start_step:
            self.writer.add_text("config", "```json\n" + json.dumps(config, indent=2) + "\n```", 0)
        self.id = None

    def log(self, step: int, scalars: dict, texts: dict):
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)
        for key, value in texts.items():
            self.writer.add_text(key, value, step)
        self.writer.flush()

    def close(self, ok: bool):
        self.writer.close()


class Trackio:
    def __init__(self, run: Path, config: dict, run_id: str | None, start_step: int):
        import trackio

        self.run = trackio.init(project=PROJECT, name=run_id or run.name, config=config,
                                resume="allow" if run_id else "never", embed=False)
        self.id = self.run.name

    def log(self, step: int, scalars: dict, texts: dict):
        self.run.log(scalars, step=step)  # trackio's charts are numbers; the samples stay in metrics.jsonl

    def close(self, ok: bool):
        self.run.finish()


class WandB:
    def __init__(self, run: Path, config: dict, run_id: str | None, start_step: int):
        import wandb

        self.run = wandb.init(project=PROJECT, name=run.name, id=run_id or uuid.uuid4().hex[:12],
                              resume="allow", dir=str(run), config=config)
        self.id = self.run.id

    def log(self, step: int, scalars: dict, texts: dict):
        self.run.log({**scalars, **texts}, step=step)

    def close(self, ok: bool):
        self.run.finish(exit_code=0 if ok else 1)


ADAPTERS = {"trackio": Trackio, "tensorboard": TensorBoard, "wandb": WandB}


class Trackers:
    """The run's trackers, started together; log() feeds each, close() ends each (both never raise)."""

    def __init__(self, names, run, config: dict, resume: bool = False, start_step: int = 0):
        self.run = Path(run)
        ids = {}
        if resume and (self.run / IDS).is_file():
            try:
                ids = json.loads((self.run / IDS).read_text())
            except ValueError:
                ids = {}
        self.open: dict[str, object] = {}
        try:
            for name in names:
                self.open[name] = ADAPTERS[name](self.run, config, ids.get(name) if resume else None, start_step)
        except Exception as e:
            self.close(ok=False)
            raise ValueError(f"The {name} tracker could not start ({_first_line(e)}).") from None
        if self.open:
            from gemma3.io.files import atomic_write_text
            atomic_write_text(self.run / IDS, json.dumps({n: t.id for n, t in self.open.items() if t.id}))

    def log(self, record: dict):
        step, scalars, texts = split(record)
        for name, tracker in list(self.open.items()):
            try:
                tracker.log(step, scalars, texts)
            except Exception as e:  # the run goes on: metrics.jsonl has every record
                print(f"The {name} tracker failed ({_first_line(e)}) and gets no more metrics; "
                      "metrics.jsonl has them all.", file=sys.stderr, flush=True)
                self._close(name, ok=False)

    def close(self, ok: bool = True):
        for name in list(self.open):
            self._close(name, ok)

    def _close(self, name: str, ok: bool):
        tracker = self.open.pop(name)
        try:
            tracker.close(ok)
        except Exception as e:
            print(f"The {name} tracker did not close cleanly ({_first_line(e)}).", file=sys.stderr, flush=True)


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else e.__class__.__name__
