"""The Train tab's logic: prepare data, turn the form into a TrainConfig, start/stop/resume runs, read metrics.

Runs are background processes managed by training.runs (one at a time per runs folder), so the UI
never blocks and a restarted UI finds the live run again (training.runs.active). Prepared data goes to
DATA_DIR/<name>: builtin (or builtin-N for N stories), hub-<owner>--<name>, upload-<content hash>.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import torch

from training import runs
from training.config import PRESET_TIMES, TRAIN_PRESETS, TrainConfig
from training.data import HINT, SUFFIXES, DataError, prepare

from . import curves
from .errors import public, show_paths_as
from .inputs import UserError, choice, number, text

SOURCES = (("Built-in stories (offline)", "builtin"), ("Hugging Face dataset", "hub"), ("Uploaded files", "files"))
PRESETS = tuple(TRAIN_PRESETS)          # the form's choices; TrainConfig checks what is sent
DEVICES = ("auto", "cuda", "cpu")
BUILTIN_STORIES = (100, 2_000_000, 50_000)
MAX_FILES = 64
MAX_UPLOAD_MB = 1024     # uploaded story files: each at most this (app.py's launch) and all of them together
MAX_PLOT_POINTS = 1000   # the live plot is thinned to about this many training points
VOCAB = 50257            # the GPT-2 tokenizer's: what a random guess is spread over
# The advice data.prepare gives on the command line (its --source flags), in the app's words: the Training data choices
ADVICE = 'choose "{files}" (your own stories) or "{builtin}" under Training data'.format(
    **{value: label for label, value in SOURCES})
HUB_DATASET = re.compile(r"[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?")

_preparing = threading.Lock()   # one data preparation at a time in this process


def devices_here() -> str:
    """What Device auto trains on here, said under the choice (cuda stays a choice on a CPU-only machine: picked,
    it is refused with a sentence that says so)."""
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n == 0:
        return "this machine: no CUDA GPU, auto trains on the CPU"
    return f"this machine: {n} CUDA GPU{'s' if n > 1 else ''}, auto trains on the GPU"


def preset_defaults(preset: str) -> dict:
    """The form's values for a preset: max steps, batch size, grad accum, sequence length, learning rate."""
    cfg = TrainConfig.for_preset(preset)
    return dict(max_steps=cfg.max_steps, batch_size=cfg.batch_size, grad_accum=cfg.grad_accum, seq_len=cfg.seq_len,
                lr=cfg.lr)


def preset_times() -> str:
    """Markdown under the preset choice: what each preset's default run took, on the 2-core CPU and on a GPU."""
    return "How long each preset's default run takes (README, *Training*):\n\n" + "\n".join(
        f"- **{name}**, {TrainConfig.for_preset(name).max_steps:,} steps · {cpu} · {gpu}"
        for name, (cpu, gpu) in PRESET_TIMES.items())


def _file_path(item) -> Path:
    """A gr.File value (a path, or the {"path": ...} dict an unprocessed upload arrives as)."""
    if isinstance(item, dict):
        item = item.get("path")
    if not isinstance(item, str) or not item:
        raise UserError(f"An uploaded file arrived without a path ({item!r}); upload it again.")
    return Path(item)


def _digest(files: list[Path]) -> str:
    h = hashlib.sha1()
    for f in sorted(files, key=lambda p: p.name):
        h.update(os.fsencode(f.name) + b"\0")
        with open(f, "rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
    return h.hexdigest()[:12]


def eta_words(record: dict) -> str:
    """A logged step's ETA as people say it: a range while few steps are timed or the steps vary widely
    ("ETA 8–20 min"), then "ETA about 12 min"; evaluations, snapshots and checkpoints included (training/pace.py).
    Empty when the record has no ETA (before the second step, or a run from an older version) or nothing is left
    (the last step: its run is finishing, not "about 10 s" away)."""
    eta, low, high = (record.get(k) for k in ("eta_s", "eta_low_s", "eta_high_s"))
    if not isinstance(eta, (int, float)) or eta <= 0:
        return ""
    if isinstance(low, (int, float)) and isinstance(high, (int, float)) and high > 1.3 * max(low, 1):
        unit = _unit(high)
        a, b = _in_unit(low, unit), _in_unit(high, unit)
        if a != b:
            return f"ETA {a}–{b} {unit}"
    unit = _unit(eta)
    return f"ETA about {_in_unit(eta, unit)} {unit}"


def _unit(seconds: float) -> str:
    return "s" if seconds < 90 else "min" if seconds < 90 * 60 else "h"


def _in_unit(seconds: float, unit: str) -> str:
    """seconds in `unit`, rounded to what an estimate can promise: 10 s, 1 min, half an hour."""
    if unit == "s":
        return f"{max(10, round(seconds / 10) * 10):.0f}"
    if unit == "min":
        return f"{max(1, round(seconds / 60)):.0f}"
    return f"{round(seconds / 1800) / 2:g}"


def _elapsed(seconds) -> str:
    if seconds is None:
        return "–"
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h {m:02d}m" if h else f"{m}m {s:02d}s" if m else f"{s}s"


class RunDesk:
    """The app's desk for training runs: start, stop, resume and watch runs in runs_dir, on data prepared under
    data_dir (each run trains in its own process, training.Trainer)."""

    def __init__(self, runs_dir, data_dir):
        self.runs_dir = Path(runs_dir).resolve()
        self.data_dir = Path(data_dir).resolve()
        self._exports: Path | None = None
        show_paths_as(self.runs_dir, self.runs_dir.name)  # what visitors see of paths in messages (errors.public)
        show_paths_as(self.data_dir, self.data_dir.name)
        self.pending: str | None = None   # what a Start does before its run exists (preparing the data), in words

    @property
    def exports(self) -> Path:
        """The folder of the latest GGUF export, nothing else: made at the first export (an app that exports nothing
        leaves no folder behind, even when it is killed) and removed when the app ends."""
        if self._exports is None:
            self._exports = Path(tempfile.mkdtemp(prefix="gemma3-gguf-"))
            weakref.finalize(self, shutil.rmtree, self._exports, ignore_errors=True)
        return self._exports

    # ---- data ----
    def data_source(self, kind, stories=None, hub_id=None, files=None) -> tuple[object, Path, dict]:
        """(what to pass to training.data.prepare, the folder to prepare into, prepare's keyword arguments)."""
        kind = choice(kind, "Data source", [v for _, v in SOURCES])
        if kind == "builtin":
            n = number(stories if stories is not None else BUILTIN_STORIES[2], "Built-in stories",
                       *BUILTIN_STORIES[:2], integer=True)
            name = "builtin" if n == BUILTIN_STORIES[2] else f"builtin-{n}"
            return "builtin", self.data_dir / name, {"builtin_stories": n}
        if kind == "hub":
            dataset = text(hub_id, "The Hugging Face dataset id", max_chars=200,
                           hint="type owner/name, e.g. roneneldan/TinyStories").strip()
            if not HUB_DATASET.fullmatch(dataset) or ".." in dataset:
                raise UserError(f"{dataset!r} is not a Hugging Face dataset id; write owner/name, "
                                "e.g. roneneldan/TinyStories.")
            if Path(dataset).exists():
                raise UserError(f"{dataset} names a local path; to train on your own files, upload them instead.")
            return dataset, self.data_dir / ("hub-" + dataset.replace("/", "--")), {}
        items = files if isinstance(files, (list, tuple)) else [files] if files else []
        if not items:
            raise UserError("No files uploaded: add .txt, .jsonl or .parquet files with stories, "
                            "or choose the built-in stories.")
        if len(items) > MAX_FILES:
            raise UserError(f"{len(items)} files were uploaded; the limit is {MAX_FILES}. Combine them first.")
        paths = [_file_path(i) for i in items]
        for p in paths:
            try:
                os.fsencode(p)
            except UnicodeEncodeError:  # a lone surrogate no file name on this server can hold
                raise UserError(f"The name of the upload {p.name!r} holds characters that are not valid text; "
                                "rename the file and upload it again.") from None
            if p.suffix.lower() not in SUFFIXES:
                raise UserError(f"{p.name} is not a .txt, .jsonl or .parquet file.")
            if not p.is_file():
                raise UserError(f"The upload {p.name} is gone from the server; upload it again.")
        total = sum(p.stat().st_size for p in paths)
        if total > MAX_UPLOAD_MB * 2**20:   # before anything reads them
            raise UserError(f"The uploaded files hold {total / 2**20:,.0f} MiB; the limit is {MAX_UPLOAD_MB:,} MiB "
                            "in all. Upload fewer stories, or prepare them with `python -m training prepare`.")
        return [str(p) for p in paths], self.data_dir / f"upload-{_digest(paths)}", {}

    def ensure_idle(self):
        """A UserError when a run is training already (before spending minutes preparing data for another)."""
        live = runs.active(self.runs_dir)
        if live is not None:
            raise UserError(f"A training run ({live.name}) is already running; stop it first.")

    def prepare(self, kind, stories=None, hub_id=None, files=None) -> tuple[Path, dict]:
        """Tokenise the chosen data into data_dir (a no-op when already prepared); (folder, meta)."""
        source, out, kwargs = self.data_source(kind, stories, hub_id, files)
        if not _preparing.acquire(blocking=False):
            raise UserError("Data is being prepared for another run right now; wait for it to finish, then start.")
        try:
            meta = prepare(source, out, progress=True, **kwargs)
        except DataError as e:   # its advice names command-line flags: here, the form's choices
            raise DataError(str(e).replace(HINT, ADVICE)) from None
        finally:
            _preparing.release()
        return out, meta

    # ---- settings ----
    def config(self, preset, max_steps, batch_size, grad_accum, seq_len, lr, device="auto", gpus=1,
               compile=False) -> tuple[TrainConfig, int]:
        """The form as (TrainConfig, processes) for start(). TrainConfig and runs.processes check every value
        and name the form's fields in their errors; the preset fills the rest, shortening its intervals for
        a short run (TrainConfig.for_preset)."""
        cfg = TrainConfig.for_preset(preset, max_steps=max_steps, batch_size=batch_size, grad_accum=grad_accum,
                                     seq_len=seq_len, lr=lr, device=device,
                                     compile=False if compile is None else compile)
        return cfg, runs.processes(gpus, cfg.device)

    # ---- runs ----
    def start(self, config: tuple[TrainConfig, int], data: Path) -> runs.Run:
        cfg, gpus = config
        return runs.start(dataclasses.replace(cfg, data=str(data)), self.runs_dir, gpus=gpus)

    def launch(self, config: tuple[TrainConfig, int], kind, stories=None, hub_id=None, files=None
               ) -> tuple[runs.Run, Path, dict]:
        """Prepare the data (a no-op when prepared already) and start the run: (run, data folder, its meta).
        Meanwhile the monitor says what is happening (`pending`), not "no runs yet"."""
        self.ensure_idle()
        self.pending = "preparing the training data for a new run …"
        try:
            data, meta = self.prepare(kind, stories, hub_id, files)
            self.pending = "starting the trainer …"
            return self.start(config, data), data, meta
        finally:
            self.pending = None

    def pick(self, name=None) -> runs.Run | None:
        """The run called `name`; without a name the live run, else the newest; None when there is none."""
        if name not in (None, ""):
            if not isinstance(name, str):
                raise UserError(f"A run name must be text, not {type(name).__name__}.")
            return runs.get(name, self.runs_dir)
        live = runs.active(self.runs_dir)
        if live is not None:
            return live
        found = runs.list_runs(self.runs_dir)
        return runs.get(found[0].name, self.runs_dir) if found else None

    def stop(self, name=None) -> dict:
        run = self.pick(name) if name else runs.active(self.runs_dir)
        if run is None:
            raise UserError("No run is training right now.")
        if not run.is_alive():
            raise UserError(f"Run {run.name} is not running (it is {run.status()['state']}).")
        return runs.stop(run, timeout=30)

    def resume(self, name=None, max_steps=None) -> tuple[runs.Run, str]:
        """Resume the run; with the form's Max steps above the run's, to that many steps. Returns the run and what
        the resume changed, in words ("" if nothing)."""
        run = self.pick(name)
        if run is None:
            raise UserError("There is no run to resume; start one first.")
        target = None if max_steps in (None, "") else max_steps  # the form's box; TrainConfig checks it
        planned = run.config().get("max_steps") or 0
        if isinstance(target, (int, float)) and target <= planned:
            target = None  # not an extension: resume to the run's own max_steps
        run = runs.resume(run, self.runs_dir, max_steps=target)
        longer = (f" to {int(target):,} steps (it was to stop at {planned:,}, and Max steps is larger): its learning "
                  "rate now decays over the longer run" if target is not None and planned else "")
        return run, longer

    def checkpoint(self, name=None) -> Path:
        """The checkpoint "Use this checkpoint" loads: the run's best model, else its latest step."""
        run = self.pick(name)
        if run is None:
            raise UserError("There is no run yet; start one, then use its checkpoint.")
        found = run.best() or run.latest_checkpoint()
        if found is None:
            raise UserError(f"Run {run.name} has no checkpoint yet; wait for its first evaluation or checkpoint.")
        return found

    def names(self) -> list[str]:
        return [i.name for i in runs.list_runs(self.runs_dir)]

    def table(self) -> list[list]:
        rows = []
        for i in runs.list_runs(self.runs_dir):
            rows.append([i.name, i.state, f"{i.step}/{i.max_steps or '?'}", i.preset or "",
                         "" if i.best_val_loss is None else round(i.best_val_loss, 4),
                         time.strftime("%Y-%m-%d %H:%M", time.localtime(i.created))])
        return rows

    # ---- watching ----
    def metrics(self, name=None, log_x: bool = False) -> dict:
        """Everything the monitor shows for a run: the figure (loss curves over the lr schedule), status,
        stats (lr, tokens/s, MFU, ETA), the samples of its evaluations, and the run's name."""
        pending = self.pending
        run = self.pick(name)
        if run is None or (pending and not run.is_alive()):
            return dict(name=None, figure=curves.run_figure([], [], None, VOCAB, log_x),
                        status=pending[0].upper() + pending[1:] if pending else
                        "No training runs yet: start one on the left.", stats="",
                        sample=curves.sample_timeline([]), points=0)
        records, _ = run.read_metrics(0)
        train, val = {}, {}
        for r in records:  # a resumed run logs again the steps after its last checkpoint: the later record wins
            if isinstance(r.get("step"), int):
                if r.get("kind") == "train" and isinstance(r.get("loss"), (int, float)):
                    train[r["step"]] = r
                elif r.get("kind") == "eval" and isinstance(r.get("val_loss"), (int, float)):
                    val[r["step"]] = r
        steps = sorted(train)
        if len(steps) > MAX_PLOT_POINTS:
            stride = -(-len(steps) // MAX_PLOT_POINTS)
            steps = steps[::stride] + ([steps[-1]] if (len(steps) - 1) % stride else [])
        try:
            cfg = TrainConfig.from_dict(run.config())
        except (ValueError, TypeError):  # a folder from another version: the curves without the schedule
            cfg = None
        evals = [val[s] for s in sorted(val)]
        figure = curves.run_figure([train[s] for s in steps], evals, cfg, VOCAB, log_x)

        st = run.status()
        best = st.get("best_val_loss")
        status = f"**{run.name}**: {state_words(st, run.latest_checkpoint())}" + (
            f" · best val loss {best:.4f}" if isinstance(best, (int, float)) else "")
        if st.get("state") == "failed" and st.get("reason") != runs.DIED:
            # the reason is one sentence; the log (a traceback, perhaps) stays on the server
            status += f"\n\nThe trainer's output is in {public(run.path / 'train.log')} on the server."
        stats = ""
        if train:
            last = train[max(train)]
            step_s = last.get("step_s")
            eta = eta_words(last) if st.get("alive") else ""
            mfu = ("–" if not isinstance(last.get("mfu"), (int, float)) else
                   f"{last['mfu']:.1%} (model FLOPs utilisation: of the best matmul speed measured on this device)")
            stats = (f"train loss {last['loss']:.4f} · lr {last.get('lr', 0):.2e} · "
                     f"{last.get('tokens_per_s', 0):,.0f} tokens/s"
                     + (f" · {step_s:.2f} s a step" if isinstance(step_s, (int, float)) else "") + f" · MFU {mfu} · "
                     f"elapsed {_elapsed(last.get('elapsed_s'))}"
                     + (f" · {eta}, evaluations included" if eta else ""))
            if val:
                stats += f" · val loss {val[max(val)]['val_loss']:.4f}"
        return dict(name=run.name, figure=figure, status=status, stats=stats, sample=curves.sample_timeline(evals),
                    points=len(steps) + len(evals))

    @staticmethod
    def schedule(preset, max_steps, batch_size, grad_accum, seq_len, lr):
        """The learning-rate schedule the form's settings give (drawn before Start)."""
        return curves.schedule_figure(TrainConfig.for_preset(preset, max_steps=max_steps, batch_size=batch_size,
                                                             grad_accum=grad_accum, seq_len=seq_len, lr=lr))


GGUF_BYTES = {"f32": 4, "f16": 2, "bf16": 2, "q8_0": 34 / 32}   # bytes a weight takes in each GGUF type


def export_gguf(trainer: "RunDesk", name, dtype) -> Path:
    """The run's checkpoint ("Use this checkpoint"'s) as a GGUF file to download, in the trainer's exports folder,
    which keeps only the latest export (Gradio serves its own copy) and is removed when the app ends; a failed
    export leaves nothing behind."""
    import gemma3
    from gemma3.io.gguf import EXPORT_TYPES

    dtype = choice(dtype, "GGUF type", EXPORT_TYPES)
    source = trainer.checkpoint(name)
    model, tok = gemma3.load_model(source, device="cpu", dtype=torch.float32)
    run = trainer.pick(name)
    for old in trainer.exports.iterdir():
        old.unlink()
    need = 2 * model.num_params() * GGUF_BYTES.get(dtype, 4)   # the file and Gradio's copy of it
    if shutil.disk_usage(trainer.exports).free < need:
        raise UserError(f"The server has too little free disk for a {need / 2**30:.1f} GiB GGUF export right now; "
                        "try a smaller type (q8_0) or later.")
    out = trainer.exports / f"{run.name}-{dtype}.gguf"
    try:
        return gemma3.export_gguf(model, tok, out, dtype)
    except BaseException:
        out.unlink(missing_ok=True)
        raise


def push_to_hub(trainer: "RunDesk", name, repo, private: bool, token=None) -> str:
    """Upload the run (training/push.py: best model if it has one) and return the repository's URL."""
    from training.push import PushError, push

    run = trainer.pick(name)
    if run is None:
        raise UserError("There is no run to push; train one first.")
    repo = text(repo, "The repository", allow_empty=True).strip() or None
    try:
        return push(run.path, repo, private=bool(private), which="best" if run.best() else "last", token=token)
    except PushError as e:
        raise UserError(str(e)) from None


def push_plan(trainer: "RunDesk", name, repo, private, account: str | None = None) -> str:
    """What Push to Hub will write, said before the click: which run, to which repository, with whose token
    (`account`: the Hugging Face user signed in, whose own token the push uses; None: this machine's token), and
    whether a new repository is private. Empty when there is no run to push."""
    run = trainer.pick(name)
    if run is None:
        return ""
    repo = (repo.strip() if isinstance(repo, str) else "").replace("`", "") or run.name
    if "/" not in repo:
        repo = f"{account or '<the token’s user>'}/{repo}"
    who = (f"as **{account}** (your Hugging Face sign-in)" if account
           else "with this machine's Hugging Face token (HF_TOKEN, else `hf auth login`)")
    new = "private" if private else "**public**: anyone may download it"
    return f"Push to Hub writes run **{run.name}** to `{repo}` {who}; a new repository is {new}."


def estimate_words(trainer: "RunDesk", cfg: TrainConfig) -> Iterator[str]:
    """What the Train tab shows while a few steps of the run `cfg` are timed here, then how long the run would
    take (training/probe.py: in a child process, bounded in size and time, killed when the request is
    cancelled, as Start cancels it). While a run trains, its own step times answer instead (the probe would
    only slow it down); a run that cannot fit in memory says so."""
    from training.probe import Estimate, estimate_apart

    live = runs.active(trainer.runs_dir)
    if live is not None:
        yield (f"Run {live.name} is training: its own step times give its ETA under the curve, so nothing is "
               "timed apart now.")
        return
    for got in estimate_apart(cfg):
        if isinstance(got, Estimate):
            compiled = " With torch.compile, steps get faster after it compiles." if cfg.compile else ""
            yield got.words(cfg.max_steps) + compiled
        else:
            yield f"Timing a few training steps of this model here … ({got.done} of {got.total} done)"


def no_snapshots(name) -> str:
    """Why "Explore this run" cannot open the run `name` in Explore (None or "": no run is chosen, as on a fresh
    home), in one sentence like Stop's, Resume's and "Use this checkpoint"'s."""
    if not name:
        return "There is no run to explore yet; start one, then explore its snapshots."
    return f"Run {name} has no snapshots yet: they appear from its first step on."


STOPPED_BY_USER = ("stopped by signal SIGTERM", "stopped by signal SIGINT", "stop requested (STOP file)")


def state_words(st: dict, last_checkpoint: Path | None = None) -> str:
    """A run's state as people say it: "running: step 40 of 300", "stopped by you at step 120",
    "finished: all 300 steps", "failed: <the reason>" (status.json's state and reason underneath)."""
    state, reason = st.get("state"), st.get("reason")
    step, total = st.get("step") or 0, st.get("max_steps")
    of = f" of {total:,}" if isinstance(total, int) else ""
    if reason == runs.DIED:  # its processes are gone: a restart of the app or the machine, or a kill
        resume = f"Resume continues it from its last checkpoint, step {int(last_checkpoint.name[5:]):,}" \
            if last_checkpoint else "Resume starts it again from step 0 (it has no checkpoint)"
        return f"interrupted at step {step:,}{of} (its processes ended, e.g. the app restarted); {resume}"
    if state == "running":
        return f"running: step {step:,}{of}"
    if state == "starting":
        return "starting …"
    if state == "stopped":
        who = "by you " if reason in STOPPED_BY_USER else ""
        why = "" if who or not reason else f" ({_one_line(reason)})"
        return f"stopped {who}at step {step:,}{of}{why}; Resume continues it"
    if state == "finished":
        return f"finished: all {step:,} steps" if step == total else f"finished at step {step:,}{of}"
    if state == "failed":
        return f"failed at step {step:,}: {_one_line(reason)}" if reason else f"failed at step {step:,}"
    return str(state or "unknown")


def _one_line(reason) -> str:
    """A run's reason as the monitor shows it: its first line, with no server path (errors.public)."""
    lines = str(reason).strip().splitlines()
    return public(lines[0] if lines else "")
