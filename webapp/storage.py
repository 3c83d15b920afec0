"""Where the app keeps its files: training runs, prepared data and the Hugging Face cache.

Runs and data go, first match wins: to --runs-dir / --data-dir or $GEMMA3_RUNS_DIR / $GEMMA3_DATA_DIR; into a
persistent folder ($GEMMA3_PERSISTENT, else /data on a Hugging Face Space when storage is mounted: a Space's own
disk is wiped on every restart), which also holds the Hub cache; into --home or $GEMMA3_HOME; into the checkout
the app runs from (runs/ and data/ beside app.py); and, when the app is installed (`pip install .`, then
`gemma3-app`), into this user's data folder, never into site-packages. `use_persistent_storage` runs in app.py
before anything reads those settings (the Hub library reads HF_HOME once, at import).
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

from .guard import OFF, on_space

ROOT = Path(__file__).resolve().parent.parent   # the folder app.py is in: a checkout, or site-packages
PERSISTENT_ENV = "GEMMA3_PERSISTENT"   # a folder that survives restarts; "off" for none
SPACE_VOLUME = "/data"                 # where Hugging Face mounts a Space's persistent storage
HOME_ENV = "GEMMA3_HOME"               # the folder of runs/ and data/ (or --home)


def home(env=None, root: Path = ROOT) -> Path:
    """Where runs/ and data/ go when nothing names them: $GEMMA3_HOME; the checkout (`root` holds pyproject.toml);
    else this user's data folder: $XDG_DATA_HOME/gemma3 or ~/.local/share/gemma3, %LOCALAPPDATA%\\gemma3 on
    Windows, ~/Library/Application Support/gemma3 on macOS."""
    env = env if env is not None else os.environ
    if env.get(HOME_ENV):
        return Path(env[HOME_ENV]).expanduser()
    if (root / "pyproject.toml").is_file():
        return root
    if sys.platform == "win32" and env.get("LOCALAPPDATA"):
        return Path(env["LOCALAPPDATA"]) / "gemma3"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "gemma3"
    return Path(env.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "gemma3"


def folders(home_dir=None, env=None) -> tuple[str, str]:
    """(runs folder, data folder): $GEMMA3_RUNS_DIR / $GEMMA3_DATA_DIR (set by use_persistent_storage when there is
    persistent storage), else runs/ and data/ in `home_dir` (--home), else in home()."""
    env = env if env is not None else os.environ
    base = Path(home_dir).expanduser() if home_dir else home(env)
    return env.get("GEMMA3_RUNS_DIR") or str(base / "runs"), env.get("GEMMA3_DATA_DIR") or str(base / "data")


def _writable_dir(path: Path) -> bool:
    return path.is_dir() and os.access(path, os.W_OK | os.X_OK)


def persistent_root(env=None) -> Path | None:
    """The folder that survives restarts: $GEMMA3_PERSISTENT if set (any machine; "off" for none), else /data on
    a Space when it is mounted and writable; None when there is none."""
    env = env if env is not None else os.environ
    value = env.get(PERSISTENT_ENV)
    if value is not None:
        if value.strip().lower() in OFF:
            return None
        path = Path(value).expanduser()
    elif on_space(env):
        path = Path(SPACE_VOLUME)
    else:
        return None
    return path.resolve() if _writable_dir(path) else None


def storage_defaults(env=None) -> dict[str, str]:
    """Where runs, prepared data and the Hugging Face cache go when persistent storage is there and they are
    not set: {"GEMMA3_RUNS_DIR": ROOT/runs, "GEMMA3_DATA_DIR": ROOT/data, "HF_HOME": ROOT/huggingface}, minus
    the ones `env` sets already; {} without persistent storage."""
    env = env if env is not None else os.environ
    root = persistent_root(env)
    if root is None:
        return {}
    wanted = {"GEMMA3_RUNS_DIR": root / "runs", "GEMMA3_DATA_DIR": root / "data", "HF_HOME": root / "huggingface"}
    return {k: str(v) for k, v in wanted.items() if not env.get(k)}


def use_persistent_storage(env=None) -> Path | None:
    """Apply storage_defaults to `env` (os.environ by default) and return the persistent folder, if any.

    Call it before huggingface_hub is imported (it reads HF_HOME once, at import)."""
    env = env if env is not None else os.environ
    for key, value in storage_defaults(env).items():
        env[key] = value
    root = persistent_root(env)
    wanted = env.get(PERSISTENT_ENV)
    if root is None and wanted is not None and wanted.strip().lower() not in OFF:
        warnings.warn(f"${PERSISTENT_ENV} is {wanted}, which is not a writable folder: runs, prepared data and the "
                      "Hugging Face cache stay in their usual places.", stacklevel=2)
    return root
