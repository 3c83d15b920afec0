"""The Space: who may train and load any model, ZeroGPU, and where a Space keeps its files.

Locally (no SPACE_ID) anyone at the keyboard may train and load any allowed path. On a Hugging Face
Space, only the Space's owner signed in with Hugging Face (OAuth; the README front matter has
`hf_oauth: true`, and requirements.txt installs `gradio[oauth]`) or a user named in the
TRAIN_ALLOWED_USERS secret (comma-separated) may start, resume or stop a run, time one (the estimate), export
or push it, upload files (UploadGuard), or load a model from an arbitrary path or Hub id; everyone else
watches the runs and picks from the listed models. The checks
run inside the handlers, so a hidden button is not the only protection.
On a ZeroGPU Space a GPU is lent for the length of one call: generation runs inside `spaces.GPU`,
and training, which needs a GPU for hours, is refused with an explanation.

A Space's own disk is wiped on every restart. When persistent storage is mounted ($GEMMA3_PERSISTENT,
else /data on a Space), runs, prepared data and the Hugging Face cache default to folders inside it
(`use_persistent_storage`, called by app.py before anything reads those settings).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from .inputs import UserError

ZERO_GPU_TRAINING = ("Training needs a dedicated GPU: on this ZeroGPU Space a GPU is lent only for the length of "
                     "one request. Duplicate the Space onto GPU hardware (or run the app locally) to train.")
PERSISTENT_ENV = "GEMMA3_PERSISTENT"   # a folder that survives restarts; "off" for none
SPACE_VOLUME = "/data"                 # where Hugging Face mounts a Space's persistent storage
OFF = ("", "0", "off", "false", "no", "none")


def on_space(env=None) -> bool:
    return bool((env if env is not None else os.environ).get("SPACE_ID"))


def zero_gpu(env=None) -> bool:
    value = (env if env is not None else os.environ).get("SPACES_ZERO_GPU", "")
    return value.strip().lower() not in OFF


def owner(env=None) -> str | None:
    env = env if env is not None else os.environ
    return env.get("SPACE_AUTHOR_NAME") or (env.get("SPACE_ID", "").split("/")[0] or None)


def allowed_users(env=None) -> set[str]:
    env = env if env is not None else os.environ
    raw = env.get("TRAIN_ALLOWED_USERS", "")
    return {u.strip().lower() for u in raw.replace(";", ",").replace(" ", ",").split(",") if u.strip()}


def trusted(username: str | None, env=None) -> bool:
    """Is this visitor the Space's owner or an allowed user (always true off a Space)?"""
    if not on_space(env):
        return True
    if username is None:
        return False
    return username.lower() == (owner(env) or "").lower() or username.lower() in allowed_users(env)


def may_load_anything(username: str | None, env=None) -> bool:
    """May this visitor load a model from any allowed path or Hub id, not only the listed ones and the runs?"""
    return trusted(username, env)


def training_permission(username: str | None, env=None) -> tuple[bool, str]:
    """(allowed, a sentence for the Train tab)."""
    if zero_gpu(env):
        return False, ZERO_GPU_TRAINING
    if not on_space(env):
        return True, "Runs train on this machine in the background; closing the page does not stop them."
    who = owner(env)
    if username is None:
        return False, (f"On this Space only its owner ({who}) or allowed users may train: sign in with Hugging Face, "
                       "or duplicate the Space to train your own model. You can watch the runs here.")
    if trusted(username, env):
        return True, f"Signed in as {username}: you may start and stop training runs on this Space."
    return False, (f"{username} may not train on this Space (only {who} and the users in TRAIN_ALLOWED_USERS); "
                   "duplicate the Space to train your own model.")


def check_training(username: str | None, env=None):
    allowed, why = training_permission(username, env)
    if not allowed:
        raise UserError(why)


UPLOAD_REFUSED = ("On this Space only its owner or allowed users may upload files (they are training data); sign "
                  "in with Hugging Face, or duplicate the Space.")


class UploadGuard:
    """ASGI middleware: on a Space, Gradio's upload route (whose only user here is the Train tab's story files)
    answers only visitors who may train; everyone else gets 403 and one sentence before a byte is stored.
    Their sign-in is read from Gradio's session cookie (the OAuth SessionMiddleware runs outside this one).
    app.py passes it to launch(app_kwargs=...)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].rstrip("/").endswith("/upload") and on_space():
            if not training_permission(session_user(scope))[0]:
                from starlette.responses import PlainTextResponse

                await PlainTextResponse(UPLOAD_REFUSED, status_code=403)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def session_user(scope) -> str | None:
    """The Hugging Face username signed in on this request (Gradio's OAuth session), if any and not expired."""
    import time

    info = (scope.get("session") or {}).get("oauth_info") if "session" in scope else None
    if not isinstance(info, dict) or (info.get("expires_at") or float("inf")) < time.time():
        return None
    name = (info.get("userinfo") or {}).get("preferred_username")
    return name if isinstance(name, str) else None


def gpu(fn, duration: int = 120):
    """fn wrapped in spaces.GPU on a ZeroGPU Space (when the `spaces` package is there), else fn itself."""
    if not zero_gpu():
        return fn
    try:
        import spaces
    except ImportError:
        return fn
    return spaces.GPU(duration=duration)(fn)


# ---- persistent storage ------------------------------------------------------------------------------

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
