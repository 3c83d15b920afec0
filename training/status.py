"""What a run folder says about its run: status.json (written here and nowhere else) and whether it lives.

status.json: {"state": starting|running|stopped|finished|failed, "reason", "step", "max_steps",
"best_val_loss", "pid" (the rank-0 trainer), "world_size", "replicas_identical", "updated"}.
write_status is its one writer: the trainer (rank 0) as it goes, and the run manager for what no
trainer can say (a launch, a launch that failed, a run killed before it wrote its end).

RUN/.lock says whether a process of the run lives. Every process of the run holds a shared flock on
it: the launcher takes one before it starts the trainer, which inherits it (so the run holds it from
its first instant), and every trainer process takes its own (so torchrun's workers, which it starts
in sessions of their own without our descriptors, hold it too). The OS drops a process's locks when
it dies, however it dies: a lock that nobody holds means no process of the run is left, and no
recycled pid can pass for a trainer. Where flock does not exist (Windows) nothing is held and no run
reads as alive.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from gemma3.io.files import atomic_write_text

try:
    import fcntl
except ImportError:  # not POSIX
    fcntl = None

LIVE = ("starting", "running")
FINAL = ("stopped", "finished", "failed")
LOCK = ".lock"


def read_status(run) -> dict:
    """RUN/status.json, or {} when it is missing or unreadable."""
    try:
        data = json.loads((Path(run) / "status.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_status(run, state: str, reason: str | None = None, **fields) -> dict:
    """Set the run's state and reason, and any other fields, over what status.json says; stamped, atomic."""
    status = {**read_status(run), "state": state, "reason": reason, **fields, "updated": time.time()}
    atomic_write_text(Path(run) / "status.json", json.dumps(status, indent=2))
    return status


def hold(run) -> int | None:
    """Hold the run's lock for as long as this process lives or until os.close(the returned descriptor).

    A descriptor passed to a child process (subprocess's pass_fds) holds it in the child too."""
    if fcntl is None:
        return None
    fd = os.open(Path(run) / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_SH)  # waits out the instant an is_alive probe holds it exclusively
    return fd


def is_alive(run) -> bool:
    """Does any process hold the run's lock, that is, is any process of the run still running?"""
    if fcntl is None:
        return False
    try:
        fd = os.open(Path(run) / LOCK, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # held
        return True
    finally:
        os.close(fd)  # also lets go of the probe's own lock
    return False
