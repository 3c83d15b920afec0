"""Run management for the UI: start, watch, stop and resume training runs as background processes.

    run = runs.start({"preset": "tiny", "data": "data/builtin", "max_steps": 300})   # -> Run
    records, offset = run.read_metrics(offset)       # poll: only the complete new lines
    runs.stop(run)                                   # STOP file + SIGTERM, SIGKILL after a timeout
    runs.resume(run.name)                            # continue from the last checkpoint
    runs.active()                                    # the running Run, found again after a UI restart
    runs.list_runs()                                 # RunInfo of every run folder, newest first

A run is `python -m training train ...` (or torchrun with one process per GPU) in its own session,
so the UI's signals never reach it and it outlives a UI restart; its output goes to RUN/train.log.
Besides what the trainer writes (see trainer.py), a run folder holds launch.json: the launcher's pid,
the command, when the run was created and last launched.

One run at a time per runs folder: RUNS/.active.lock ({"pid", "pid_start", "run", "started"}) is
created with O_CREAT | O_EXCL before a launch. A process is identified by its pid and its start time
in clock ticks since boot (pid_start), so a recycled pid is not taken for the trainer. A lock whose
process is gone, or whose run wrote a final status
after the lock was taken, is stale and is removed by the next start/resume/active/stop. Every read
and change of the lock happens under an flock on RUNS/.runs.mutex, so two UIs cannot both launch.
The run's state is its status.json, except that a run whose status says starting/running but whose
process is gone is reported as failed ("process ended unexpectedly").
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
import typing
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from gemma3.checkpoints import atomic_write_text

from .config import TrainConfig

try:
    import fcntl
except ImportError:  # not POSIX: the O_EXCL lock file alone guards against a second run
    fcntl = None

LOCK = ".active.lock"
MUTEX = ".runs.mutex"
LIVE = ("starting", "running")
FINAL = ("stopped", "finished", "failed")
DIED = "process ended unexpectedly"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
PACKAGE_PARENT = Path(__file__).resolve().parent.parent  # cwd of the trainer, so `-m training` is this package


class RunError(RuntimeError):
    """Something a user asked for cannot be done; the message says what and what to do instead."""


# ---- small helpers -------------------------------------------------------------------------------

def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_json(path: Path, obj: dict):
    atomic_write_text(path, json.dumps(obj, indent=2))


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state first), or None where there is no /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()


def _start_ticks(pid: int) -> int | None:
    """When the process started, in clock ticks since boot: with the pid, an identity no clock step can fool."""
    fields = _proc_stat(pid)
    return int(fields[19]) if fields else None


def _alive(pid, start_ticks: int | None = None, started_by: float | None = None) -> bool:
    """Is `pid` a live (not zombie) training process, the one that started at `start_ticks` (exact) or no
    later than `started_by` (epoch seconds, give or take a minute)?

    These checks keep a recycled pid (after a container restart, say) from passing for a trainer;
    where /proc is missing only existence is checked."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    if not Path("/proc/self/stat").exists():
        return True
    fields = _proc_stat(pid)
    try:
        if not fields or fields[0] in ("Z", "X") or b"training" not in Path(f"/proc/{pid}/cmdline").read_bytes():
            return False
        if start_ticks is not None:
            return int(fields[19]) == start_ticks
        if started_by is not None:
            uptime = float(Path("/proc/uptime").read_text().split()[0])
            started = time.time() - uptime + int(fields[19]) / os.sysconf("SC_CLK_TCK")
            return started <= started_by + 60.0
    except (OSError, ValueError, IndexError):
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


def _signal(pid: int, sig: int):
    """Send sig to pid's process group when pid leads one (our launches do), else to pid alone."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


@contextmanager
def _mutex(runs_dir: Path):
    """Serialise lock-file changes across threads and processes (released by the OS if we die)."""
    fd = os.open(runs_dir / MUTEX, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # also releases the flock


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
        """Is a process of this run (launcher or rank-0 trainer) still running?"""
        launch, raw = self.launch_info(), _read_json(self.path / "status.json") or {}
        if _alive(launch.get("pid"), launch.get("pid_start"), launch.get("started")):
            return True
        # the rank-0 trainer under torchrun (its launcher may be gone), or a run started from a shell
        return raw.get("pid") != launch.get("pid") and _alive(raw.get("pid"), None, raw.get("updated"))

    def status(self) -> dict:
        """status.json, plus "alive"; a live state whose process is gone reads as failed."""
        alive = self.is_alive()  # before reading: a trainer writes its final status before it exits
        st = _read_json(self.path / "status.json")
        if st is None:
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
        folder = self.path / "checkpoints"
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.iterdir() if p.name.startswith("step_") and (p / "trainer.pt").exists())

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
    """The run holding the lock, if its process is alive (a stale lock is removed)."""
    runs_dir = Path(runs_dir).resolve()
    if not runs_dir.is_dir():
        return None
    with _mutex(runs_dir):
        held = _held_lock(runs_dir)
    return Run(runs_dir / held["run"], runs_dir) if held else None


# ---- the lock (callers hold the mutex) -----------------------------------------------------------

def _lock_is_live(runs_dir: Path, lock: dict) -> bool:
    name, started = lock.get("run"), lock.get("started")
    if not isinstance(name, str) or not NAME.fullmatch(name) or not isinstance(started, (int, float)):
        return False
    status = _read_json(runs_dir / name / "status.json") or {}
    if status.get("state") in FINAL and (status.get("updated") or 0) >= started:
        return False  # the run has ended; its process is only exiting
    return _alive(lock.get("pid"), lock.get("pid_start"), started)


def _held_lock(runs_dir: Path) -> dict | None:
    """The lock if a live run holds it; a stale (or unreadable) lock is removed."""
    path = runs_dir / LOCK
    if not path.exists():
        return None
    lock = _read_json(path)
    if lock is not None and _lock_is_live(runs_dir, lock):
        return lock
    path.unlink(missing_ok=True)
    return None


def _busy(name: str, holder) -> RunError:
    if holder == name:
        return RunError(f"Run {name} is already running; stop it first.")
    return RunError(f"A training run ({holder or 'another run'}) is already running; stop it first.")


def _acquire(runs_dir: Path, name: str):
    held = _held_lock(runs_dir)
    if held is not None:
        raise _busy(name, held.get("run"))
    try:  # our pid until the trainer's is known; should this process die, the lock is stale
        fd = os.open(runs_dir / LOCK, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise _busy(name, (_read_json(runs_dir / LOCK) or {}).get("run")) from None
    with os.fdopen(fd, "w") as f:
        json.dump({"pid": os.getpid(), "pid_start": _start_ticks(os.getpid()), "run": name, "started": time.time(),
                   "launching": True}, f)
        f.flush()
        os.fsync(f.fileno())


def _release(runs_dir: Path, name: str, pid: int | None = None):
    """Remove the lock if it is this run's (and this launch's, when pid is given)."""
    lock = _read_json(runs_dir / LOCK)
    if lock is not None and lock.get("run") == name and (pid is None or lock.get("pid") == pid):
        (runs_dir / LOCK).unlink(missing_ok=True)


def _watch(proc: subprocess.Popen, runs_dir: Path, name: str):
    """Reap the trainer when it exits and release its lock (if this UI is still there to see it)."""
    proc.wait()
    try:
        with _mutex(runs_dir):
            _release(runs_dir, name, proc.pid)
    except OSError:
        pass  # the runs folder is gone


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


def _coerce(name: str, value):
    """`value` as the type TrainConfig declares for `name` (a UI's number box gives 4.0 for 4), else RunError."""
    kind = typing.get_type_hints(TrainConfig)[name]
    optional = type(None) in typing.get_args(kind)
    base = next((t for t in typing.get_args(kind) if t is not type(None)), kind)
    if value is None and optional:
        return None
    if base is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    elif base is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, base) or (base in (int, float) and isinstance(value, bool)):
        raise RunError(f"Training setting {name} must be {getattr(base, '__name__', base)}, not {value!r}.")
    return value


def _resolve(config, gpus) -> tuple[TrainConfig, int]:
    """(TrainConfig, processes) from what the UI passed; every problem is a RunError."""
    if isinstance(config, TrainConfig):
        cfg = config
    elif isinstance(config, dict):
        given = dict(config)
        for key in ("gpus", "nproc"):
            value = given.pop(key, None)
            gpus = gpus if gpus is not None or value is None else value
        unknown = set(given) - {f.name for f in dataclasses.fields(TrainConfig)}
        if unknown:
            raise RunError(f"Unknown training setting(s): {', '.join(sorted(unknown))}.")
        given = {key: _coerce(key, value) for key, value in given.items()}
        try:
            cfg = TrainConfig.for_preset(given.pop("preset", TrainConfig.preset), **given)
        except (ValueError, TypeError) as e:
            raise RunError(str(e)) from None
    else:
        raise RunError(f"A run needs a dict of settings or a TrainConfig, not {type(config).__name__}.")
    try:  # __post_init__'s checks again, on the coerced values
        cfg = dataclasses.replace(cfg, **{f.name: _coerce(f.name, getattr(cfg, f.name))
                                          for f in dataclasses.fields(TrainConfig)})
    except ValueError as e:
        raise RunError(str(e)) from None
    if cfg.init_from is None:
        from gemma3 import Gemma3Config
        unknown = set(cfg.model) - {f.name for f in dataclasses.fields(Gemma3Config)}
        if unknown:
            raise RunError(f"Unknown model setting(s): {', '.join(sorted(unknown))}.")
        try:
            Gemma3Config.from_preset(cfg.preset, **cfg.model)
        except (ValueError, TypeError) as e:
            raise RunError(str(e)) from None
    return cfg, _processes(gpus, cfg.device)


def _processes(gpus, device: str) -> int:
    if gpus is None:
        return 1
    if isinstance(gpus, float) and gpus.is_integer():
        gpus = int(gpus)
    if not isinstance(gpus, int) or isinstance(gpus, bool) or gpus < 1:
        raise RunError(f"The number of GPUs must be a whole number of at least 1, not {gpus!r}.")
    if gpus == 1:
        return 1
    if device not in ("auto", "cuda"):
        raise RunError(f"Training on {gpus} GPUs needs device auto or cuda, not {device}.")
    import torch
    visible = torch.cuda.device_count()
    if visible < gpus:
        raise RunError(f"{gpus} GPUs were asked for but {visible} {'is' if visible == 1 else 'are'} visible; "
                       f"ask for at most {max(visible, 1)}.")
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
        elif isinstance(value, bool):
            args.append(flag if value else f"--no-{flag[2:]}")
        else:
            args.append(f"{flag}={value}")
    return args


def _launch(run: Path, runs_dir: Path, args: list[str], nproc: int, env: dict | None, status: dict) -> Run:
    """Launch the trainer for `run` (the lock is ours and the mutex held); on failure release the lock."""
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "training", "train", *args]
    else:
        cmd = [sys.executable, "-m", "training", "train", *args]
    child_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    child_env["PYTHONPATH"] = os.pathsep.join([str(PACKAGE_PARENT), *filter(None, [child_env.get("PYTHONPATH")])])
    try:
        (run / "STOP").unlink(missing_ok=True)  # a stop request of the previous launch
        _write_json(run / "status.json", {**status, "updated": time.time()})
        with open(run / "train.log", "ab") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(cmd)}\n".encode())
            log.flush()
            proc = subprocess.Popen(cmd, cwd=PACKAGE_PARENT, env=child_env, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
    except OSError as e:
        _release(runs_dir, run.name)
        try:
            _write_json(run / "status.json", {**status, "state": "failed", "reason": f"could not launch: {e}",
                                              "updated": time.time()})
        except OSError:
            pass
        raise RunError(f"Could not launch the trainer: {e}.") from None
    started, ticks, host = time.time(), _start_ticks(proc.pid), socket.gethostname()
    previous = _read_json(run / "launch.json") or {}
    _write_json(run / "launch.json", {"pid": proc.pid, "pid_start": ticks, "nproc": nproc, "command": cmd,
                                      "host": host, "created": previous.get("created", started),
                                      "started": started, "launches": previous.get("launches", 0) + 1,
                                      "at_launch": {k: status.get(k) for k in ("step", "best_val_loss")}})
    _write_json(runs_dir / LOCK, {"pid": proc.pid, "pid_start": ticks, "run": run.name, "started": started,
                                  "host": host})
    threading.Thread(target=_watch, args=(proc, runs_dir, run.name), daemon=True,
                     name=f"watch-{run.name}").start()
    return Run(run, runs_dir)


def start(config: dict | TrainConfig, runs_dir="runs", name: str | None = None, *, gpus: int | None = None,
          env: dict | None = None) -> Run:
    """Create runs_dir/NAME and train there in the background; returns at once (the run is "starting").

    config: a TrainConfig, or a dict of its fields (a preset's defaults fill the rest) that may also
    hold "gpus" (or "nproc"): more than one launches torchrun with one process per GPU.
    name: default `<preset>-<YYYYmmdd-HHMMSS>`. env: extra environment variables for the trainer."""
    cfg, nproc = _resolve(config, gpus)
    data = Path(cfg.data).resolve()
    if not (data / "meta.json").is_file():
        raise RunError(f"{cfg.data} holds no prepared data (no meta.json); prepare it first with "
                       f"`python -m training prepare --out {cfg.data}`.")
    init_from = cfg.init_from
    if init_from and Path(init_from).exists():
        init_from = str(Path(init_from).resolve())
    runs_dir = Path(runs_dir).resolve()
    if name is not None:
        _check_name(name, runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    with _mutex(runs_dir):
        name = name or _auto_name(cfg.preset, runs_dir)
        if (runs_dir / name).exists():
            raise RunError(f"A run named {name} already exists in {runs_dir}; pick another name or resume it.")
        _acquire(runs_dir, name)
        try:
            run = runs_dir / name
            run.mkdir()
            cfg = dataclasses.replace(cfg, out=str(run), data=str(data), init_from=init_from)
            _write_json(run / "config.json", cfg.to_dict())
            return _launch(run, runs_dir, _flags(cfg), nproc, env,
                           {"state": "starting", "reason": None, "step": 0, "max_steps": cfg.max_steps,
                            "best_val_loss": None, "pid": None})
        except BaseException:
            _release(runs_dir, name)
            raise


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
    """Continue a stopped or failed run from its last checkpoint (`python -m training train --resume`).

    max_steps: a new total, to train a finished run further. gpus: default, as the run was launched."""
    run = _as_run(run_or_name, runs_dir)
    cfg = run.config()
    if not cfg:
        raise RunError(f"Run {run.name} has no config.json, so it cannot be resumed; start a new run instead.")
    if max_steps is not None and (not isinstance(max_steps, int) or isinstance(max_steps, bool) or max_steps < 1):
        raise RunError(f"max_steps must be a whole number of at least 1, not {max_steps!r}.")
    before = run.launch_info().get("nproc") or 1
    if gpus is None and before > 1:
        import torch
        visible = torch.cuda.device_count()
        if visible < before:
            raise RunError(f"Run {run.name} was trained on {before} GPUs but {visible} "
                           f"{'is' if visible == 1 else 'are'} visible; resume it with gpus={max(visible, 1)} "
                           "(each step then holds fewer sequences).")
    nproc = _processes(gpus if gpus is not None else before, cfg.get("device", "auto"))
    with _mutex(run.runs_dir):
        held = _held_lock(run.runs_dir)
        if held is not None:
            raise _busy(run.name, held.get("run"))
        if run.is_alive():  # launched from a shell: alive without the lock
            raise _busy(run.name, run.name)
        st = run.status()
        latest = run.latest_checkpoint()
        done = int(latest.name.split("_")[-1]) if latest else 0
        if st["state"] == "finished" and (max_steps is None or max_steps <= done):
            raise RunError(f"Run {run.name} already finished at step {st.get('step')}; start a new run, "
                           f"or resume with a larger max_steps to train it further.")
        if latest is None:
            raise RunError(f"Nothing to resume: run {run.name} has no checkpoint yet; start a new run instead.")
        if max_steps is not None and max_steps <= done:
            raise RunError(f"max_steps ({max_steps}) must exceed the step of the last checkpoint ({done}).")
        _acquire(run.runs_dir, run.name)
        try:
            args = [f"--out={run.path}", "--resume"] + ([f"--max-steps={max_steps}"] if max_steps else [])
            return _launch(run.path, run.runs_dir, args, nproc, env,
                           {"state": "starting", "reason": f"resuming from {latest.name}", "step": done,
                            "max_steps": max_steps or cfg.get("max_steps"),
                            "best_val_loss": st.get("best_val_loss"), "pid": None})
        except BaseException:
            _release(run.runs_dir, run.name)
            raise


# ---- stopping ------------------------------------------------------------------------------------

def _pids(run: Run, launcher: bool = True) -> list[int]:
    """The run's live processes: launcher, rank-0 trainer, and (torchrun) the other workers.

    launcher=False leaves torchrun out when its workers are known: they stop on their own and
    torchrun then exits cleanly, where a signal to torchrun itself tears the workers down."""
    launch, raw = run.launch_info(), _read_json(run.path / "status.json") or {}
    pids = []
    if _alive(launch.get("pid"), launch.get("pid_start"), launch.get("started")):
        workers = _descendants(launch["pid"]) if launch.get("nproc", 1) > 1 and Path("/proc").is_dir() else []
        pids += ([launch["pid"]] if launcher or not workers else []) + workers
    if raw.get("pid") not in pids and _alive(raw.get("pid"), None, raw.get("updated")):
        pids.append(raw["pid"])
    return pids


def _kill(run: Run):
    for pid in _pids(run):
        _signal(pid, signal.SIGKILL)
    run.wait(timeout=10, poll=0.05)


def stop(run, timeout: float = 30, runs_dir="runs") -> dict:
    """Ask the run to save a checkpoint and stop (STOP file + SIGTERM); SIGKILL after `timeout` seconds.

    A run still starting up has trained nothing since its last checkpoint, so it is ended at once
    (SIGTERM would reach each torchrun rank at a different point of its start-up, and hang them).
    Returns the final status; stopping a run that is not running just returns its status."""
    run = _as_run(run, runs_dir)
    killed = None
    if run.is_alive():
        if (_read_json(run.path / "status.json") or {}).get("state") == "starting":
            _kill(run)
        else:
            (run.path / "STOP").touch()
            for pid in _pids(run, launcher=False):
                _signal(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while run.is_alive() and time.monotonic() < deadline:
                time.sleep(0.1)
            if run.is_alive():
                killed = f"killed after not stopping within {timeout:g} s"
                _kill(run)
    raw = _read_json(run.path / "status.json") or {}
    if raw.get("state") in LIVE and not run.is_alive():
        reason = killed or ("stopped before training began" if raw.get("state") == "starting" else "stopped by signal")
        _write_json(run.path / "status.json", {**_progress_at_launch(raw, run.launch_info()), "state": "stopped",
                                               "reason": reason, "updated": time.time()})
    if run.runs_dir.is_dir():
        with _mutex(run.runs_dir):
            _held_lock(run.runs_dir)  # removes the lock now that the process is gone
    return run.status()
