"""Who may do the owner's actions wherever the app is reachable, not only on a Space (issue 22 items 1 and 2).

Trust everyone only on loopback with no share link; an exposed app (--share, --host 0.0.0.0 or any other
non-loopback host) refuses training, exports, pushes, uploads and arbitrary loads unless the visitor signed in with
GEMMA3_PASSWORD; "on a Space" is decided as Gradio decides it (SYSTEM=spaces and SPACE_ID), and off a real Space the
Hugging Face sign-in, which Gradio mocks as the owner of HF_TOKEN, grants nothing. The apps here are built in this
process and served on loopback; the exposure is the state app.py records at launch (guard.set_exposure).
"""

import contextlib
import hashlib
import time
from types import SimpleNamespace

import gradio as gr
import httpx
import pytest

import app
from conftest import poll, serve
from training import push as hub_push
from webapp import guard, models

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
REFUSED = "set GEMMA3_PASSWORD"          # the setting the refusal names (guard.EXPOSED_REFUSED)
LOCAL = {}
EXPOSED = {guard.EXPOSED_ENV: "1"}
PASSWORD = {**EXPOSED, guard.PASSWORD_ENV: "s3cret"}
SPACE = {"SYSTEM": "spaces", "SPACE_ID": "ann/app", "SPACE_AUTHOR_NAME": "ann", "TRAIN_ALLOWED_USERS": "bob",
         **EXPOSED}
SPACE_ID_ONLY = {"SPACE_ID": "ann/app", "SPACE_AUTHOR_NAME": "ann", **EXPOSED}   # no SYSTEM=spaces: not a Space
SETTINGS = ("builtin", 300, None, None, "tiny", 2000, 4, 1, 32, 2e-3, "cpu", 1, False)   # the Train form


def profile(name):
    return gr.OAuthProfile({"preferred_username": name, "name": name, "profile": "", "picture": ""})


def password_request(name):
    return SimpleNamespace(username=name)   # what gr.Request carries after Gradio's password login


# ---- the permission, for every setting -----------------------------------------------------------------

@pytest.mark.parametrize("env, request_, profile_, allowed", [
    (LOCAL, None, None, True),                            # loopback, no share link: whoever opens the page
    (EXPOSED, None, None, False),                         # reachable, no login configured: nobody
    (EXPOSED, None, profile("ann"), False),               # ... and a Hugging Face sign-in off a Space is Gradio's mock
    (PASSWORD, None, None, False),
    (PASSWORD, password_request("owner"), None, True),    # signed in with GEMMA3_USER (default owner) + the password
    (PASSWORD, password_request("eve"), None, False),
    ({**PASSWORD, guard.USER_ENV: "ann"}, password_request("ann"), None, True),
    ({**PASSWORD, guard.USER_ENV: "ann"}, password_request("owner"), None, False),
    (SPACE, None, None, False),                           # a real Space: anonymous visitors watch
    (SPACE, None, profile("Ann"), True),                  # its owner, signed in with Hugging Face
    (SPACE, None, profile("bob"), True),                  # TRAIN_ALLOWED_USERS
    (SPACE, None, profile("eve"), False),
    ({**SPACE, **PASSWORD}, password_request("owner"), profile("eve"), True),   # a Space with a password: the login
    ({**SPACE, **PASSWORD}, None, profile("ann"), False),
    (SPACE_ID_ONLY, None, profile("ann"), False),         # SPACE_ID without SYSTEM: the mocked owner is nobody
    ({"SPACE_ID": "ann/app", "SPACE_AUTHOR_NAME": "ann"}, None, None, True),   # ... and on loopback a local app
])
def test_who_may_do_the_owners_actions(env, request_, profile_, allowed):
    """Issue 22 items 1 and 2: training, estimates, exports, pushes, uploads and arbitrary loads share one
    permission; an exposed app without a password refuses them in one sentence naming GEMMA3_PASSWORD."""
    user = guard.login(request_, profile_, env)
    ok, why = guard.training_permission(user, env)
    assert ok is allowed and guard.may_load_anything(user, env) is allowed
    if not allowed and env in (EXPOSED, SPACE_ID_ONLY):
        assert why == guard.EXPOSED_REFUSED and why.count(". ") == 0 and REFUSED in why
    signed_in = {"userinfo": {"preferred_username": profile_.username}} if profile_ else None   # Gradio's session
    scope = {"type": "http", "path": "/gradio_api/upload", "session": {"oauth_info": signed_in}}
    assert (guard.upload_refusal(scope, env) is None) is (allowed or guard.PASSWORD_ENV in env)


@pytest.mark.parametrize("host, share, reachable", [
    ("127.0.0.1", False, False), ("localhost", False, False), ("::1", False, False), ("127.0.0.2", False, False),
    ("127.0.0.1", True, True), ("0.0.0.0", False, True), ("::", False, True), ("192.168.1.20", False, True),
    ("myserver.lan", False, True), ("", False, True),
])
def test_the_app_records_how_it_is_reachable(host, share, reachable):
    """Issue 22 item 1: only loopback with no share link counts as local; GEMMA3_EXPOSED=1 set by hand (a proxy in
    front) stays whatever the host."""
    env = {}
    assert guard.set_exposure(host, share, env) is reachable and guard.exposed(env) is reachable
    assert guard.set_exposure("127.0.0.1", False, {guard.EXPOSED_ENV: "1"})


def test_space_is_decided_as_gradio_decides_it(monkeypatch):
    """Issue 22 item 2: SPACE_ID without SYSTEM=spaces is no Space, for us as for Gradio's OAuth (which then mocks
    the login): a Hugging Face profile there names nobody."""
    from gradio.utils import get_space

    for env in ({"SPACE_ID": "ann/app"}, {"SYSTEM": "spaces"}, {"SYSTEM": "spaces", "SPACE_ID": "ann/app"}):
        monkeypatch.delenv("SYSTEM", raising=False)
        monkeypatch.delenv("SPACE_ID", raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        assert guard.on_space(env) is (get_space() is not None)
    assert guard.login(None, profile("ann"), SPACE_ID_ONLY) is None
    assert guard.login(None, profile("ann"), SPACE) == "ann"


def test_the_start_line_says_who_may_do_what():
    """Issue 22 item 1: the console says which mode the app runs in and the setting that changes it."""
    lines = {name: guard.mode(env) for name, env in
             dict(local=LOCAL, exposed=EXPOSED, password=PASSWORD, space=SPACE, fake=SPACE_ID_ONLY).items()}
    assert lines["local"].startswith("Local") and lines["exposed"].startswith("Reachable from other machines")
    assert lines["fake"] == lines["exposed"] and "GEMMA3_PASSWORD" in lines["exposed"]
    assert lines["password"].startswith("Login required") and lines["space"].startswith("Hugging Face Space ann/app")


# ---- an exposed app, served ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("exposed")
    (tmp / "runs" / "r1").mkdir(parents=True)
    (tmp / "runs" / "r1" / "config.json").write_text('{"preset": "tiny", "max_steps": 3}')
    return tmp


def build(folders):
    return app.build(*models.random_model("tiny"), "test model", runs_dir=folders / "runs",
                     data_dir=folders / "data")


@contextlib.contextmanager
def launched_as(host: str, **env):
    """The settings of `HF_TOKEN=... python app.py --host HOST` (with `env`), as app.main records them."""
    with pytest.MonkeyPatch.context() as mp:
        for key in ("SYSTEM", "SPACE_ID", guard.PASSWORD_ENV, guard.USER_ENV, "SPACES_ZERO_GPU"):
            mp.delenv(key, raising=False)
        for key, value in {"HF_TOKEN": "hf_the_owners_token", guard.EXPOSED_ENV: "0", **env}.items():
            mp.setenv(key, value)
        guard.set_exposure(host, share=False)
        yield


def started(folders, host: str, **env):
    """The app started with those settings, served until the module ends."""
    with launched_as(host, **env):
        yield from serve(build(folders), folders / "runs", app_kwargs={"middleware": guard.middleware()})


@pytest.fixture(scope="module")
def exposed(folders):
    """Started with --host 0.0.0.0 and no password."""
    yield from started(folders, "0.0.0.0")


@pytest.fixture(scope="module")
def space_id_only(folders):
    """Started with --host 0.0.0.0, SPACE_ID and SPACE_AUTHOR_NAME but no SYSTEM=spaces: not a Space."""
    yield from started(folders, "0.0.0.0", SPACE_ID="ann/app", SPACE_AUTHOR_NAME="ann")


@pytest.fixture
def pushes(monkeypatch):
    """Every push that got as far as the Hub library (training.push.push), recorded instead of sent."""
    calls = []
    monkeypatch.setattr(hub_push, "push", lambda *a, **k: calls.append((a, k)) or "https://huggingface.co/x")
    return calls


def client(server, **kwargs):
    from gradio_client import Client

    return Client(server.local_url, verbose=False, **kwargs)


def test_an_exposed_app_refuses_the_owners_actions_without_a_login(exposed, pushes):
    """Issue 22 item 1: reachable from other machines with no password set, an anonymous visitor's training,
    estimate, GGUF export, push (before anything reaches the Hub), typed load and upload are each refused in the
    sentence naming GEMMA3_PASSWORD; generating and picking a listed model stay open."""
    anon = client(exposed)
    calls = {"/train_start": SETTINGS, "/train_stop": ("r1",), "/train_resume": ("r1", None),
             "/train_estimate": SETTINGS[4:], "/train_gguf": ("r1", "f32"),
             "/train_push": ("r1", "someone/important-model", False),
             "/load_model": ("", "assets/gpt2.tiktoken")}
    for api_name, args in calls.items():
        with pytest.raises(Exception, match=REFUSED):
            anon.predict(*args, api_name=api_name)
    assert pushes == [], "the push was refused before the Hub was contacted"
    upload = httpx.post(exposed.local_url + "gradio_api/upload", timeout=30,
                        files={"files": ("stories.txt", b"Tom had a ball.\n\nLily had a cat.\n", "text/plain")})
    assert upload.status_code == 403 and REFUSED in upload.text
    md, *_ = anon.predict("random:tiny", "", api_name="/load_model")
    assert "random weights (tiny preset" in md, "a listed model loads"
    text, summary = anon.predict("Once", 3, 0.0, 0, 1.0, 1.0, 0, api_name="/generate")
    assert text and "3 tokens" in summary


def session_cookie(username: str) -> str:
    """The session cookie Gradio's mocked /login/callback would set for `username` (no OAuth secret off a Space)."""
    import base64
    import json

    import itsdangerous

    key = hashlib.sha256(b"-v4").hexdigest()
    info = {"access_token": "mock-oauth-token-for-local-dev", "token_type": "bearer", "scope": "openid profile",
            "expires_at": int(time.time()) + 3600, "userinfo": {"preferred_username": username, "name": username}}
    return itsdangerous.TimestampSigner(key).sign(base64.b64encode(json.dumps({"oauth_info": info}).encode())).decode()


def test_space_id_without_system_is_no_space_and_a_mocked_login_is_never_trusted(space_id_only, pushes):
    """Issue 22 item 2: with SPACE_ID but no SYSTEM=spaces the app is no Space: no sign-in button, so Gradio mocks
    no login route; a session claiming the owner's Hugging Face name, or the owner's profile handed to a handler,
    grants nothing."""
    assert not space_id_only.expects_oauth
    login = httpx.get(space_id_only.local_url + "login/huggingface", timeout=30, follow_redirects=False)
    assert login.status_code == 404, "Gradio mocks no Hugging Face sign-in here"
    mocked = client(space_id_only, headers={"Cookie": f"session={session_cookie('ann')}"})
    with pytest.raises(Exception, match=REFUSED):
        mocked.predict("r1", "someone/important-model", False, api_name="/train_push")
    push = next(f.fn for f in space_id_only.fns.values() if f.api_name == "train_push")
    with pytest.raises(gr.Error, match=REFUSED):
        push("r1", "someone/important-model", False, profile=profile("ann"))
    assert pushes == []


@pytest.fixture(scope="module")
def with_password(folders):
    """Started with --host 0.0.0.0 and GEMMA3_PASSWORD: Gradio's login in front of everything."""
    with launched_as("0.0.0.0", **{guard.PASSWORD_ENV: "s3cret"}):
        demo = build(folders)
        demo.queue().launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=None, quiet=True,
                            auth=guard.password_login())
        try:
            poll(lambda: httpx.get(demo.local_url + "config", timeout=2).status_code == 401, what="the login page")
            yield demo
        finally:
            demo.close()


def test_the_password_login_is_the_owner(with_password, pushes):
    """Issue 22 item 1: with GEMMA3_PASSWORD set, nobody gets in without it, and whoever signs in as GEMMA3_USER
    (default owner) may do the owner's actions: their push goes through to the Hub library."""
    assert httpx.get(with_password.local_url + "config", timeout=30).status_code == 401
    owner = client(with_password, auth=("owner", "s3cret"))
    assert owner.predict("r1", "someone/mine", True, api_name="/train_push") == "Pushed: [https://huggingface.co/x]" \
        "(https://huggingface.co/x)"
    assert len(pushes) == 1 and pushes[0][0][1] == "someone/mine"
