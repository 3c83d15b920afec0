"""Run management for the UI: start, watch, stop and resume training runs as background processes.

    run = runs.start({"preset": "tiny", "data": "data/builtin", "max_steps": 300})   # -> Run
    records, offset = run.read_metrics(offset)       # poll: only the complete new lines
    runs.stop(run)                                   # STOP file + SIGTERM, SIGKILL after a timeout
    runs.resume(run.name)                            # continue from the last checkpoint
    runs.active()                                    # the running Run, found again after a UI restart
    runs.list_runs()                                 # RunInfo of every run folder, newest first

A run is `python -m training train ...` (or torchrun with one process per GPU) in its own session,
so the UI's signals never reach it and it outlives a UI restart; its output goes to RUN/train.log.
Besides what the trainer writes (see trainer.py), a run folder holds launch.json: the launcher's pid
(leader of the run's process group), the command, when the run was created and last launched.

Whether a run lives is whether any of its processes holds RUN/.lock (status.py): a lock the OS drops
when they die, however they die, so there is no pid bookkeeping to go stale. One run at a time per
runs folder: RUNS/.active.lock ({"run", "pid", "started"}) names the run launched last, and is stale
(and removed by the next look) once that run is not alive or has written its final status. Launches
and looks happen under an flock on RUNS/.runs.mutex, so two UIs cannot both launch.
The run's state is its status.json, except that a run whose status says starting/running but whose
processes are gone is reported as failed ("process ended unexpectedly").
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from gemma3.io.files import atomic_write_text
from gemma3.tokenizer import gpt2_tokenizer

from . import status as run_status
from .config import TrainConfig, default_preset
from .data import load_split
from .status import FINAL, LIVE, read_status, write_status
from .trainer import checkpoints, clean

CLAIM = ".active.lock"
MUTEX = ".runs.mutex"
DIED = "process ended unexpectedly"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
PACKAGE_PARENT = Path(__file__).resolve().parent.parent  # cwd of the trainer, so `-m training` is this package


class RunError(RuntimeError):
    """Something a user asked for cannot be done; the message says what and what to do instead."""


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_json(path: Path, obj: dict):
    atomic_write_text(path, json.dumps(obj, indent=2))


# ---- runs ----------------------------------------------------------------------------------------

class Run:
    """A run folder; every method reads the folder afresh, so any number of these may point at one run."""

    def __init__(self, path, runs_dir=None):
        self.path = Path(path).resolve()
        self.name = self.path.name
        self.runs_dir = Path(runs_dir).resolve() if runs_dir is not None else self.path.parent

    def __repr__(self):
        return f"Run({str(self.path)!r})"

    def __eq__(self, other):
        return isinstance(other, Run) and other.path == self.path

    def __hash__(self):
        return hash(self.path)

    # ---- what the folder says ----
    def launch_info(self) -> dict:
        return _read_json(self.path / "launch.json") or {}

    @property
    def pid(self) -> int | None:
        """The launcher's pid (the trainer, or torchrun), leader of the run's process group."""
        return self.launch_info().get("pid")

    def config(self) -> dict:
        return _read_json(self.path / "config.json") or {}

    def is_alive(self) -> bool:
        """Is a process of this run (launcher, trainer, torchrun worker) still running?"""
        return run_status.is_alive(self.path)

    def status(self) -> dict:
        """status.json, plus "alive"; a live state whose processes are gone reads as failed."""
        alive = self.is_alive()  # before reading: a trainer writes its final status before it exits
        st = read_status(self.path)
        if not st:
            st = {"state": "starting", "reason": None} if alive else \
                 {"state": "failed", "reason": "the run never started (it has no status.json)"}
            st.update(step=0, max_steps=self.config().get("max_steps"))
        st = _progress_at_launch(st, self.launch_info())
        if st.get("state") in LIVE and not alive:
            st = {**st, "state": "failed", "reason": DIED}
        return {**st, "alive": alive}

    @property
    def state(self) -> str:
        return self.status()["state"]

    def read_metrics(self, offset: int = 0) -> tuple[list[dict], int]:
        """The records of metrics.jsonl from byte `offset` on, and the offset to pass next time.

        A last line still being written (no newline yet) is left for the next call. Records are
        appended across resumes: steps logged after the last checkpoint of an interrupted run
        appear again after its resume, with the same values."""
        try:
            with open(self.path / "metrics.jsonl", "rb") as f:
                size = f.seek(0, os.SEEK_END)
                if offset > size:
                    offset = 0  # the file was replaced
                f.seek(offset)
                data = f.read()
        except FileNotFoundError:
            return [], offset
        end = data.rfind(b"\n") + 1
        records = []
        for line in data[:end].splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
        return records, offset + end

    def log_tail(self, n_lines: int = 40) -> str:
        """The last n_lines of train.log (trainer output, errors and tracebacks included)."""
        try:
            with open(self.path / "train.log", "rb") as f:
                end = f.seek(0, os.SEEK_END)
                pos, data = end, b""
                while pos > 0 and data.count(b"\n") <= n_lines:
                    step = min(pos, 1 << 16)
                    pos -= step
                    f.seek(pos)
                    data = f.read(step) + data
        except FileNotFoundError:
            return ""
        lines = data.decode("utf-8", errors="replace").splitlines()
        return "\n".join(lines[-n_lines:]) if n_lines > 0 else ""

    def checkpoints(self) -> list[Path]:
        """Complete step checkpoints, oldest first."""
        return checkpoints(self.path)

    def latest_checkpoint(self) -> Path | None:
        found = self.checkpoints()
        return found[-1] if found else None

    def best(self) -> Path | None:
        """The model with the lowest validation loss so far (a gemma3.load_model folder), if any."""
        best = self.path / "best"
        return best if (best / "model.safetensors").exists() else None

    # ---- control ----
    def wait(self, timeout: float | None = None, poll: float = 0.2) -> dict:
        """Wait until no process of the run is left (or timeout); returns the status."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.is_alive() and (deadline is None or time.monotonic() < deadline):
            time.sleep(poll)
        return self.status()

    def stop(self, timeout: float = 30) -> dict:
        return stop(self, timeout)


def _progress_at_launch(st: dict, launch: dict) -> dict:
    """A starting trainer reports step 0 until it has loaded its checkpoint: show the progress it resumes."""
    at = launch.get("at_launch") or {}
    if st.get("state") != "starting" or not at:
        return st
    best = st.get("best_val_loss")
    return {**st, "step": max(st.get("step") or 0, at.get("step") or 0),
            "best_val_loss": at.get("best_val_loss") if best is None else best}


@dataclass(frozen=True)
class RunInfo:
    name: str
    path: Path
    state: str                      # starting | running | stopped | finished | failed
    reason: str | None
    step: int
    max_steps: int | None
    best_val_loss: float | None
    created: float                  # epoch seconds of the first launch
    latest_checkpoint: Path | None
    has_best: bool
    alive: bool
    preset: str | None


def get(name: str, runs_dir="runs") -> Run:
    """The run called `name` in runs_dir."""
    runs_dir = Path(runs_dir).resolve()
    _check_name(name, runs_dir)
    path = runs_dir / name
    if not path.is_dir():
        raise RunError(f"No run named {name!r} in {runs_dir}.")
    return Run(path, runs_dir)


def list_runs(runs_dir="runs") -> list[RunInfo]:
    """Every run folder in runs_dir, newest first."""
    runs_dir = Path(runs_dir).resolve()
    if not runs_dir.is_dir():
        return []
    infos = []
    for path in runs_dir.iterdir():
        if path.name.startswith(".") or not path.is_dir() or not any(
                (path / f).exists() for f in ("launch.json", "status.json", "config.json")):
            continue
        run = Run(path, runs_dir)
        st, cfg, launch = run.status(), run.config(), run.launch_info()
        created = launch.get("created")
        if created is None:
            created = min((p.stat().st_mtime for p in (path / "config.json", path / "status.json") if p.exists()),
                          default=path.stat().st_mtime)
        infos.append(RunInfo(
            name=run.name, path=run.path, state=st.get("state"), reason=st.get("reason"), step=st.get("step") or 0,
            max_steps=st.get("max_steps", cfg.get("max_steps")), best_val_loss=st.get("best_val_loss"),
            created=created, latest_checkpoint=run.latest_checkpoint(), has_best=run.best() is not None,
            alive=st["alive"], preset=cfg.get("preset")))
    return sorted(infos, key=lambda i: (i.created, i.name), reverse=True)


def active(runs_dir="runs") -> Run | None:
    """The run launched last in runs_dir, if it is still running (a stale claim is removed)."""
    runs_dir = Path(runs_dir).resolve()
    if not runs_dir.is_dir():
        return None
    with _mutex(runs_dir):
        name = _claimed(runs_dir)
    return Run(runs_dir / name, runs_dir) if name else None


# ---- one run at a time ---------------------------------------------------------------------------

@contextmanager
def _mutex(runs_dir: Path):
    """Serialise launches and looks at the claim across threads and processes (released if we die)."""
    fd = os.open(runs_dir / MUTEX, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if run_status.fcntl is not None:
            run_status.fcntl.flock(fd, run_status.fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # also releases the flock


def _claimed(runs_dir: Path) -> str | None:
    """The run named by the claim if it is still running; a stale (or unreadable) claim is removed.
    Callers hold the mutex."""
    path = runs_dir / CLAIM
    if not path.exists():
        return None
    claim = _read_json(path) or {}
    name, started = claim.get("run"), claim.get("started")
    if isinstance(name, str) and NAME.fullmatch(name) and isinstance(started, (int, float)) \
            and run_status.is_alive(runs_dir / name):
        st = read_status(runs_dir / name)
        if not (st.get("state") in FINAL and (st.get("updated") or 0) >= started):  # else only exiting
            return name
    path.unlink(missing_ok=True)
    return None


def _busy(name: str, holder: str) -> RunError:
    if holder == name:
        return RunError(f"Run {name} is already running; stop it first.")
    return RunError(f"A training run ({holder}) is already running; stop it first.")


# ---- starting ------------------------------------------------------------------------------------

def _check_name(name, runs_dir: Path):
    if not isinstance(name, str) or not NAME.fullmatch(name) or (runs_dir / name).resolve().parent != runs_dir:
        raise RunError(f"Run name {name!r} is not allowed: use letters, digits, '.', '_' and '-', starting with "
                       f"a letter or digit, so that the run stays inside {runs_dir}.")


def _auto_name(preset: str, runs_dir: Path) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{preset}-{time.strftime('%Y%m%d-%H%M%S')}").lstrip("._-")[:90]
    base = base or "run"
    name, n = base, 1
    while (runs_dir / name).exists():
        n += 1
        name = f"{base}-{n}"
    return name


def processes(gpus, device: str = "auto") -> int:
    """How many trainer processes a launch on `gpus` GPUs (None: 1) starts; RunError if they are not there."""
    if gpus is None:
        gpus = 1
    if isinstance(gpus, float) and gpus.is_integer():
        gpus = int(gpus)
    if not isinstance(gpus, int) or isinstance(gpus, bool) or gpus < 1:
        raise RunError(f"The number of GPUs must be a whole number of at least 1, not {gpus!r}.")
    if gpus > 1 and device not in ("auto", "cuda"):
        raise RunError(f"Training on {gpus} GPUs needs device auto or cuda, not {device}.")
    if gpus > 1 or device.startswith("cuda"):
        import torch
        visible = torch.cuda.device_count()
        if visible < gpus:
            where = "no CUDA GPU is" if visible == 0 else f"only {visible} GPU{'s are' if visible > 1 else ' is'}"
            fix = "choose device auto or cpu" if visible == 0 else f"ask for at most {visible}"
            raise RunError(f"{gpus} GPU{'s were' if gpus > 1 else ' was'} asked for but {where} visible on this "
                           f"machine; {fix}.")
    return gpus


def _flags(cfg: TrainConfig) -> list[str]:
    """Every field as an explicit flag (--name=value, so values starting with '-' survive argparse)."""
    args = []
    for f in dataclasses.fields(TrainConfig):
        value, flag = getattr(cfg, f.name), "--" + f.name.replace("_", "-")
        if f.name == "model":
            args += [f"--set={key}={json.dumps(v)}" for key, v in value.items()]
        elif value is None:
            continue  # None is every optional field's default
        elif f.name == "trackers":
            args += [f"--tracker={name}" for name in value]
        elif isinstance(value, bool):
            args.append(flag if value else f"--no-{flag[2:]}")
        else:
            args.append(f"{flag}={value}")
    return args


def _launch(run: Path, runs_dir: Path, args: list[str], nproc: int, env: dict | None, reason: str | None,
            **progress) -> Run:
    """Start the trainer for `run` in its own session, holding the run's lock from the first instant, and
    claim the runs folder for it. The caller holds the mutex and has checked that no run is active."""
    if run_status.fcntl is None:
        raise RunError("Background runs need flock (Linux or macOS); run `python -m training train` in a "
                       "terminal instead.")
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "training", "train", *args]
    else:
        cmd = [sys.executable, "-m", "training", "train", *args]
    child_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    child_env["PYTHONPATH"] = os.pathsep.join([str(PACKAGE_PARENT), *filter(None, [child_env.get("PYTHONPATH")])])
    (run / "STOP").unlink(missing_ok=True)  # a stop request of the previous launch
    write_status(run, "starting", reason, pid=None, **progress)
    lock = run_status.hold(run)
    try:
        with open(run / "train.log", "ab") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(cmd)}\n".encode())
            log.flush()
            proc = subprocess.Popen(cmd, cwd=PACKAGE_PARENT, env=child_env, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True, pass_fds=(lock,))
    except OSError as e:
        write_status(run, "failed", f"could not launch: {e}")
        raise RunError(f"Could not launch the trainer: {e}.") from None
    finally:
        os.close(lock)  # the trainer holds it now
    threading.Thread(target=proc.wait, daemon=True, name=f"reap-{run.name}").start()
    started, host, previous = time.time(), socket.gethostname(), _read_json(run / "launch.json") or {}
    _write_json(run / "launch.json", {"pid": proc.pid, "nproc": nproc, "command": cmd, "host": host,
                                      "created": previous.get("created", started), "started": started,
                                      "launches": previous.get("launches", 0) + 1, "at_launch": progress})
    _write_json(runs_dir / CLAIM, {"run": run.name, "pid": proc.pid, "started": started, "host": host})
    return Run(run, runs_dir)


def _check_data(data: Path):
    """A DataError now, rather than a run that fails as it starts: meta.json must read, and the token
    files must have their sizes and hold no id beyond the tokenizer's (one pass over each file)."""
    for split in ("train", "val"):
        load_split(data, split, gpt2_tokenizer().vocab_size)


def start(config: dict | TrainConfig, runs_dir="runs", name: str | None = None, *, gpus: int | None = None,
          env: dict | None = None) -> Run:
    """Create runs_dir/NAME and train there in the background; returns at once (the run is "starting").

    config: a TrainConfig, or a dict of its fields (the preset's defaults fill the rest; no preset: the
    one that fits the device, config.default_preset) that may also hold "gpus" (or "nproc"): more than
    one launches torchrun with one process per GPU. Bad settings raise config.ConfigError (a ValueError).
    name: default `<preset>-<YYYYmmdd-HHMMSS>`. env: extra environment variables for the trainer."""
    if isinstance(config, dict):
        given = dict(config)
        for key in ("gpus", "nproc"):
            value = given.pop(key, None)
            gpus = gpus if gpus is not None or value is None else value
        preset = given.pop("preset") if "preset" in given else default_preset(given.get("device", "auto"))[0]
        config = TrainConfig.for_preset(preset, **given)
    elif not isinstance(config, TrainConfig):
        raise RunError(f"A run needs a dict of settings or a TrainConfig, not {type(config).__name__}.")
    nproc = processes(gpus, config.device)
    data = Path(config.data).resolve()
    if not (data / "meta.json").is_file():
        raise RunError(f"{config.data} holds no prepared data (no meta.json); prepare it first with "
                       f"`python -m training prepare --out {config.data}`.")
    _check_data(data)
    init_from = config.init_from
    if init_from and Path(init_from).exists():
        init_from = str(Path(init_from).resolve())
    runs_dir = Path(runs_dir).resolve()
    if name is not None:
        _check_name(name, runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    with _mutex(runs_dir):
        name = name or _auto_name(config.preset, runs_dir)
        if (runs_dir / name).exists():
            raise RunError(f"A run named {name} already exists in {runs_dir}; pick another name or resume it.")
        holder = _claimed(runs_dir)
        if holder is not None:
            raise _busy(name, holder)
        run = runs_dir / name
        run.mkdir()
        config = dataclasses.replace(config, out=str(run), data=str(data), init_from=init_from)
        _write_json(run / "config.json", config.to_dict())
        return _launch(run, runs_dir, _flags(config), nproc, env, None, step=0, max_steps=config.max_steps,
                       best_val_loss=None)


def _as_run(run_or_name, runs_dir) -> Run:
    if isinstance(run_or_name, Run):
        return run_or_name
    if isinstance(run_or_name, Path):
        if not run_or_name.is_dir():
            raise RunError(f"No run folder at {run_or_name}.")
        return Run(run_or_name)
    return get(run_or_name, runs_dir)


def resume(run_or_name, runs_dir="runs", *, max_steps: int | None = None, gpus: int | None = None,
           env: dict | None = None) -> Run:
    """Continue a stopped or failed run from its last complete checkpoint (`python -m training train --resume`);
    a run killed before its first complete checkpoint starts again from step 0.

    max_steps: a new total, to train a finished run further. gpus: default, as the run was launched."""
    run = _as_run(run_or_name, runs_dir)
    saved = run.config()
    if not saved:
        raise RunError(f"Run {run.name} has no config.json, so it cannot be resumed; start a new run instead.")
    cfg = TrainConfig.from_dict({**saved, **({} if max_steps is None else {"max_steps": max_steps})})
    before = run.launch_info().get("nproc") or 1
    if gpus is None and before > 1:
        import torch
        visible = torch.cuda.device_count()
        if visible < before:
            raise RunError(f"Run {run.name} was trained on {before} GPUs but {visible} "
                           f"{'is' if visible == 1 else 'are'} visible; resume it with gpus={max(visible, 1)} "
                           "(each step then holds fewer sequences).")
    nproc = processes(gpus if gpus is not None else before, cfg.device)
    _check_data(Path(cfg.data))
    with _mutex(run.runs_dir):
        holder = _claimed(run.runs_dir) or (run.name if run.is_alive() else None)  # or started from a shell
        if holder is not None:
            raise _busy(run.name, holder)
        st = run.status()
        latest = run.latest_checkpoint()
        done = int(latest.name.split("_")[-1]) if latest else 0
        if st["state"] == "finished" and (max_steps is None or cfg.max_steps <= done):
            raise RunError(f"Run {run.name} already finished at step {st.get('step')}; start a new run, "
                           f"or resume with a larger max_steps to train it further.")
        if latest is None:  # killed before its first complete checkpoint: nothing is lost but the steps
            reason = "no complete checkpoint: starting again from step 0"
        elif cfg.max_steps <= done:
            raise RunError(f"max_steps ({cfg.max_steps}) must exceed the step of the last checkpoint ({done}).")
        else:
            reason = f"resuming from {latest.name}"
        args = [f"--out={run.path}", "--resume"] + ([f"--max-steps={cfg.max_steps}"] if max_steps else [])
        return _launch(run.path, run.runs_dir, args, nproc, env, reason, step=done,
                       max_steps=cfg.max_steps, best_val_loss=st.get("best_val_loss"))


# ---- stopping ------------------------------------------------------------------------------------

def _ours(pid) -> bool:
    """Is pid a live trainer process (its command runs `training`; only existence where there is no /proc)?"""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    if Path("/proc/self").is_dir():
        try:
            return b"training" in Path(f"/proc/{pid}/cmdline").read_bytes()  # empty for a zombie
        except OSError:
            return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _descendants(pid: int) -> list[int]:
    """Children, grandchildren... of pid (Linux; torchrun puts its workers in sessions of their own)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
            parents.setdefault(int(stat[stat.rindex(")") + 2:].split()[1]), []).append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _pids(run: Run, launcher: bool = True) -> list[int]:
    """The run's live processes: launcher, (torchrun) its workers, and the rank-0 trainer.

    launcher=False leaves torchrun out when its workers are known: they stop on their own and
    torchrun then exits cleanly, where a signal to torchrun itself tears the workers down."""
    launch, pids = run.launch_info(), []
    pid = launch.get("pid")
    if _ours(pid):
        workers = [p for p in _descendants(pid) if _ours(p)] if (launch.get("nproc") or 1) > 1 else []
        pids += ([pid] if launcher or not workers else []) + workers
    rank0 = read_status(run.path).get("pid")
    return pids + ([rank0] if rank0 not in pids and _ours(rank0) else [])


def _signal(pid: int, sig: int):
    """Send sig to pid's process group when pid leads one (our launches do), else to pid alone."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _kill(run: Run):
    for pid in _pids(run):
        _signal(pid, signal.SIGKILL)
    run.wait(timeout=10, poll=0.05)
    if not run.is_alive():
        clean(run.path)  # what the killed trainer left half-written (a resume would too)


def stop(run, timeout: float = 30, runs_dir="runs") -> dict:
    """Ask the run to save a checkpoint and stop (STOP file + SIGTERM); SIGKILL after `timeout` seconds.

    A run still starting up has trained nothing since its last checkpoint, so it is ended at once
    (SIGTERM would reach each torchrun rank at a different point of its start-up, and hang them).
    Returns the final status; stopping a run that is not running just returns its status."""
    run = _as_run(run, runs_dir)
    starting = read_status(run.path).get("state") == "starting"
    reason = "stopped before training began" if starting else "stopped by signal"
    if run.is_alive():
        if starting:
            _kill(run)
        else:
            (run.path / "STOP").touch()
            for pid in _pids(run, launcher=False):
                _signal(pid, signal.SIGTERM)
            if run.wait(timeout, poll=0.1)["alive"]:
                reason = f"killed after not stopping within {timeout:g} s"
                _kill(run)
    st = read_status(run.path)
    if st.get("state") in LIVE and not run.is_alive():  # the trainer could not say it ended
        at = _progress_at_launch(st, run.launch_info())
        write_status(run.path, "stopped", reason, step=at.get("step"), best_val_loss=at.get("best_val_loss"))
    if run.runs_dir.is_dir():
        with _mutex(run.runs_dir):
            _claimed(run.runs_dir)  # removes the claim now that the run is over
    return run.status()
