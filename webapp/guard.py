"""Who may start training, and ZeroGPU.

Locally (no SPACE_ID) anyone at the keyboard may train. On a Hugging Face Space, only the Space's
owner signed in with Hugging Face (OAuth; the README front matter needs `hf_oauth: true`) or a user
named in the TRAIN_ALLOWED_USERS secret (comma-separated) may start, resume or stop a run; everyone
else watches. The check runs inside the handlers, so a hidden button is not the only protection.
On a ZeroGPU Space a GPU is lent for the length of one call: generation runs inside `spaces.GPU`,
and training, which needs a GPU for hours, is refused with an explanation.
"""

from __future__ import annotations

import os

from .inputs import UserError

ZERO_GPU_TRAINING = ("Training needs a dedicated GPU: on this ZeroGPU Space a GPU is lent only for the length of "
                     "one request. Duplicate the Space onto GPU hardware (or run the app locally) to train.")


def on_space(env=None) -> bool:
    return bool((env if env is not None else os.environ).get("SPACE_ID"))


def zero_gpu(env=None) -> bool:
    value = (env if env is not None else os.environ).get("SPACES_ZERO_GPU", "")
    return value.strip().lower() not in ("", "0", "false", "no")


def owner(env=None) -> str | None:
    env = env if env is not None else os.environ
    return env.get("SPACE_AUTHOR_NAME") or (env.get("SPACE_ID", "").split("/")[0] or None)


def allowed_users(env=None) -> set[str]:
    env = env if env is not None else os.environ
    raw = env.get("TRAIN_ALLOWED_USERS", "")
    return {u.strip().lower() for u in raw.replace(";", ",").replace(" ", ",").split(",") if u.strip()}


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
    if username.lower() == (who or "").lower() or username.lower() in allowed_users(env):
        return True, f"Signed in as {username}: you may start and stop training runs on this Space."
    return False, (f"{username} may not train on this Space (only {who} and the users in TRAIN_ALLOWED_USERS); "
                   "duplicate the Space to train your own model.")


def check_training(username: str | None, env=None):
    allowed, why = training_permission(username, env)
    if not allowed:
        raise UserError(why)


def gpu(fn, duration: int = 120):
    """fn wrapped in spaces.GPU on a ZeroGPU Space (when the `spaces` package is there), else fn itself."""
    if not zero_gpu():
        return fn
    try:
        import spaces
    except ImportError:
        return fn
    return spaces.GPU(duration=duration)(fn)
