"""Who may do the owner's actions, and ZeroGPU.

The owner's actions: start, resume or stop a run, time one (the estimate), export a GGUF or push it, upload
files (UploadGuard), and load a model from an arbitrary path or Hub id. Everyone else generates, explores,
watches the runs and picks from the listed models. Who is the owner depends on where the app runs:

- GEMMA3_PASSWORD set (anywhere): Gradio asks for GEMMA3_USER (default "owner") and that password before it
  shows anything (app.py passes `password_login()` to launch's `auth`), and whoever signs in is the owner.
- On a Hugging Face Space (decided as Gradio decides it: SYSTEM=spaces and SPACE_ID): the Space's owner signed in
  with Hugging Face (OAuth; the README front matter has `hf_oauth: true`, and requirements.txt installs
  `gradio[oauth]`) and the users named in the TRAIN_ALLOWED_USERS secret (comma-separated).
- Elsewhere: everyone while the app listens on loopback with no share link; nobody when other machines can reach
  it (--share, any other --host, or GEMMA3_EXPOSED=1 behind a proxy: app.py calls `set_exposure` at launch).
  Off a real Space Gradio mocks the Hugging Face sign-in as the owner of HF_TOKEN, so it never counts there.

The checks run inside the handlers (`login` -> `check_training`, `may_load_anything`), so a hidden button is not
the only protection. On a ZeroGPU Space a GPU is lent for the length of one call: generation runs inside
`spaces.GPU`, and training, which needs a GPU for hours, is refused with an explanation.
"""

from __future__ import annotations

import ipaddress
import os

from .inputs import UserError

ZERO_GPU_TRAINING = ("Training needs a dedicated GPU: on this ZeroGPU Space a GPU is lent only for the length of "
                     "one request. Duplicate the Space onto GPU hardware (or run the app locally) to train.")
PASSWORD_ENV, USER_ENV, DEFAULT_USER = "GEMMA3_PASSWORD", "GEMMA3_USER", "owner"   # the login off a Space
OFF = ("", "0", "off", "false", "no", "none")
EXPOSED_ENV = "GEMMA3_EXPOSED"         # "1": other machines reach the app (set_exposure, or by hand behind a proxy)
EXPOSED_REFUSED = ("This app is reachable from other machines (--share, or a --host other than 127.0.0.1), so only "
                   "a signed-in owner may train, export, push, upload or load models outside the list: set "
                   f"{PASSWORD_ENV} (and {USER_ENV}, default {DEFAULT_USER}) and restart it.")
SIGN_IN = ("Training, exports, pushes, uploads and models outside the list are for the user who signs in with "
           f"{PASSWORD_ENV}.")


def on_space(env=None) -> bool:
    """On a Hugging Face Space, decided as Gradio decides it (gradio.utils.get_space): SYSTEM=spaces and SPACE_ID."""
    env = env if env is not None else os.environ
    return env.get("SYSTEM") == "spaces" and bool(env.get("SPACE_ID"))


def loopback(host: str) -> bool:
    """Does listening on `host` keep the app on this machine (localhost, 127.0.0.0/8, ::1)?"""
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:   # a name other than localhost, or "": it may be reachable
        return False


def exposed(env=None) -> bool:
    """Can other machines reach the app? $GEMMA3_EXPOSED, which app.py sets at launch (set_exposure)."""
    return (env if env is not None else os.environ).get(EXPOSED_ENV, "").strip().lower() not in OFF


def set_exposure(host: str, share: bool, env=None) -> bool:
    """Record in `env` (os.environ by default) whether the app is reachable from other machines: a share link or
    a host other than loopback; a GEMMA3_EXPOSED=1 set by hand (a proxy in front) stays. Returns it."""
    env = env if env is not None else os.environ
    reachable = bool(share) or not loopback(host) or exposed(env)
    env[EXPOSED_ENV] = "1" if reachable else "0"
    return reachable


def password_login(env=None) -> tuple[str, str] | None:
    """(GEMMA3_USER or "owner", GEMMA3_PASSWORD) for Gradio's `auth` when a password is set, else None."""
    env = env if env is not None else os.environ
    password = env.get(PASSWORD_ENV, "")
    return ((env.get(USER_ENV) or "").strip() or DEFAULT_USER, password) if password else None


def login(request=None, profile=None, env=None) -> str | None:
    """Who this request is signed in as, for trusted(): with GEMMA3_PASSWORD set, Gradio's password login
    (gr.Request.username); else on a real Space, the Hugging Face sign-in (gr.OAuthProfile); else nobody. Off a
    Space Gradio mocks the Hugging Face sign-in as the owner of HF_TOKEN, so a profile there proves nothing."""
    if password_login(env):
        return getattr(request, "username", None) or None
    if on_space(env):
        return getattr(profile, "username", None) or None
    return None


def owner_only(env=None) -> str:
    """The sentence for a visitor refused an owner's action off a Space, or on a Space with a password."""
    return SIGN_IN if password_login(env) else EXPOSED_REFUSED


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
    """May this visitor (signed in as `username`, from login()) do the owner's actions? With GEMMA3_PASSWORD: the
    password's user; on a Space: its owner and allowed users; elsewhere everyone unless the app is exposed."""
    signed_in = password_login(env)
    if signed_in:
        return username == signed_in[0]
    if on_space(env):
        name = (username or "").lower()
        return bool(name) and (name == (owner(env) or "").lower() or name in allowed_users(env))
    return not exposed(env)


def may_load_anything(username: str | None, env=None) -> bool:
    """May this visitor load a model from any allowed path or Hub id, not only the listed ones and the runs?"""
    return trusted(username, env)


def training_permission(username: str | None, env=None) -> tuple[bool, str]:
    """(allowed, a sentence for the Train tab)."""
    if zero_gpu(env):
        return False, ZERO_GPU_TRAINING
    if trusted(username, env):
        if username is None:
            return True, "Runs train on this machine in the background; closing the page does not stop them."
        where = " on this Space" if on_space(env) else ""
        return True, f"Signed in as {username}: you may start and stop training runs{where}."
    if password_login(env) or not on_space(env):
        return False, owner_only(env)
    who = owner(env)
    if username is None:
        return False, (f"On this Space only its owner ({who}) or allowed users may train: sign in with Hugging Face, "
                       "or duplicate the Space to train your own model. You can watch the runs here.")
    return False, (f"{username} may not train on this Space (only {who} and the users in TRAIN_ALLOWED_USERS); "
                   "duplicate the Space to train your own model.")


def mode(env=None) -> str:
    """One line for the console at start: who may do the owner's actions here, and the setting that changes it."""
    env = env if env is not None else os.environ
    signed_in = password_login(env)
    if signed_in:
        return (f"Login required ({PASSWORD_ENV}): whoever signs in as {signed_in[0]} may train, push and load any "
                "model; nobody else gets in.")
    if on_space(env):
        return (f"Hugging Face Space {env['SPACE_ID']}: visitors generate and explore; {owner(env)} and "
                "TRAIN_ALLOWED_USERS, signed in with Hugging Face, also train, push and load any model.")
    if exposed(env):
        return ("Reachable from other machines without a login: visitors generate, explore and pick listed models; "
                f"training, pushes, uploads and other models are refused until {PASSWORD_ENV} is set.")
    return ("Local (loopback, no share link): whoever opens the page may train, push and load any allowed model; "
            f"--share or another --host needs {PASSWORD_ENV}.")


def check_training(username: str | None, env=None):
    allowed, why = training_permission(username, env)
    if not allowed:
        raise UserError(why)


UPLOAD_REFUSED = ("On this Space only its owner or allowed users may upload files (they are training data); sign "
                  "in with Hugging Face, or duplicate the Space.")


def upload_refusal(scope, env=None) -> str | None:
    """Why this request may not upload files (one sentence), or None when it may: the visitors who may train.
    With GEMMA3_PASSWORD set, Gradio's own login check (behind this middleware) lets only the signed-in owner
    reach the route; on a Space the sign-in is read from Gradio's session cookie (its OAuth SessionMiddleware runs
    outside this one); elsewhere nobody is signed in."""
    signed_in = password_login(env)
    if signed_in:
        user = signed_in[0]
    else:
        user = session_user(scope) if on_space(env) else None
    allowed, why = training_permission(user, env)
    if allowed:
        return None
    return UPLOAD_REFUSED if on_space(env) and not signed_in else why


class UploadGuard:
    """ASGI middleware: Gradio's upload route (whose only user here is the Train tab's story files) answers only
    visitors who may train (upload_refusal); everyone else gets 403 and one sentence before a byte is stored.
    app.py passes it to launch(app_kwargs=...)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].rstrip("/").endswith("/upload"):
            refused = upload_refusal(scope)
            if refused:
                from starlette.responses import PlainTextResponse

                await PlainTextResponse(refused, status_code=403)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def middleware() -> list:
    """UploadGuard as launch(app_kwargs={"middleware": ...}) takes it."""
    from starlette.middleware import Middleware

    return [Middleware(UploadGuard)]


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
