"""The app as a public Hugging Face Space serves it: started with the variables a Space sets, visitors who
are not the owner can neither train nor load arbitrary models, each visitor keeps their own model (one
shared cache with a memory budget), and runs survive a restart in the persistent folder.

The Space is `python app.py` in a subprocess with SYSTEM=spaces, SPACE_ID, the OAUTH_* variables and a
temporary folder standing in for /data ($GEMMA3_PERSISTENT). Nothing reaches the network: signing in is
the session cookie Gradio's OAuth callback would set, signed with the key Gradio derives from the
(test) OAuth secret.
"""

import base64
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import gemma3

from conftest import kill_run, kill_runs, poll
from training import runs
from webapp import generation as gen
from webapp import guard, models, storage
from webapp.inputs import UserError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
ROOT = Path(__file__).resolve().parent.parent
OWNER = "ann"
SECRET = "test-oauth-secret"
TINY = dict(data_source="builtin", stories=300, hub=None, files=None, preset="tiny", max_steps=300, batch_size=4,
            grad_accum=1, seq_len=32, lr=2e-3, device="cpu", gpus=1, compile=False)
NOT_THE_OWNER = r"only its owner \(ann\) or allowed users may train: sign in"


# ---- persistent storage ------------------------------------------------------------------------------

def test_persistent_folder_holds_runs_data_and_the_hub_cache(tmp_path):
    env = {storage.PERSISTENT_ENV: str(tmp_path)}
    assert storage.storage_defaults(env) == {"GEMMA3_RUNS_DIR": str(tmp_path / "runs"),
                                           "GEMMA3_DATA_DIR": str(tmp_path / "data"),
                                           "HF_HOME": str(tmp_path / "huggingface")}
    mine = {**env, "GEMMA3_RUNS_DIR": "/somewhere/runs"}
    assert "GEMMA3_RUNS_DIR" not in storage.storage_defaults(mine), "a folder set explicitly wins"
    assert storage.use_persistent_storage(mine) == tmp_path
    assert mine["GEMMA3_RUNS_DIR"] == "/somewhere/runs" and mine["HF_HOME"] == str(tmp_path / "huggingface")
    assert storage.storage_defaults({storage.PERSISTENT_ENV: "off"}) == {}
    missing = {storage.PERSISTENT_ENV: str(tmp_path / "not-mounted")}
    assert storage.storage_defaults(missing) == {}
    with pytest.warns(UserWarning, match="not a writable folder"):
        assert storage.use_persistent_storage(missing) is None


def test_a_space_uses_its_volume_only_when_mounted(tmp_path, monkeypatch):
    monkeypatch.setattr(storage, "SPACE_VOLUME", str(tmp_path))
    space = {"SYSTEM": "spaces", "SPACE_ID": "ann/app"}
    assert storage.persistent_root(space) == tmp_path
    assert storage.storage_defaults(space)["HF_HOME"] == str(tmp_path / "huggingface")
    assert storage.persistent_root({}) is None, "off a Space, only $GEMMA3_PERSISTENT names a persistent folder"
    monkeypatch.setattr(storage, "SPACE_VOLUME", str(tmp_path / "no-volume"))
    assert storage.persistent_root(space) is None, "no storage attached: the Space's own disk"


def test_runs_and_data_go_to_the_checkout_or_the_users_data_folder_never_site_packages(tmp_path, monkeypatch):
    checkout, installed = tmp_path / "checkout", tmp_path / "site-packages"
    (checkout / "webapp").mkdir(parents=True)
    (checkout / "pyproject.toml").write_text("[project]\n")
    (installed / "webapp").mkdir(parents=True)
    assert storage.home({}, root=checkout) == checkout, "a checkout keeps runs/ and data/ beside app.py"
    monkeypatch.setattr(storage.sys, "platform", "linux")
    user = {"XDG_DATA_HOME": str(tmp_path / "xdg")}
    assert storage.home(user, root=installed) == tmp_path / "xdg" / "gemma3", "installed: the user's data folder"
    monkeypatch.setattr(storage.Path, "home", lambda: tmp_path / "me")
    assert storage.home({}, root=installed) == tmp_path / "me" / ".local" / "share" / "gemma3"
    mine = {storage.HOME_ENV: str(tmp_path / "mine")}
    assert storage.home(mine, root=installed) == tmp_path / "mine"
    assert storage.folders(env=mine) == (str(tmp_path / "mine" / "runs"), str(tmp_path / "mine" / "data"))
    assert storage.folders(tmp_path / "flag", env=mine)[0] == str(tmp_path / "flag" / "runs"), "--home wins over it"
    named = {**mine, "GEMMA3_RUNS_DIR": "/r", "GEMMA3_DATA_DIR": "/d"}
    assert storage.folders(tmp_path / "flag", env=named) == ("/r", "/d"), "named folders (or persistent ones) win"


def test_the_app_applies_them_before_the_hub_library_reads_them(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("GEMMA3_RUNS_DIR", "GEMMA3_DATA_DIR", "HF_HOME",
                                                            "HF_HUB_CACHE")}
    env[storage.PERSISTENT_ENV] = str(tmp_path)
    code = "import app, huggingface_hub.constants as c; print(app.RUNS_DIR, app.DATA_DIR, c.HF_HOME, c.HF_HUB_CACHE)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [str(tmp_path / "runs"), str(tmp_path / "data"), str(tmp_path / "huggingface"),
                                  str(tmp_path / "huggingface" / "hub")]


# ---- the model cache: per-visitor choices, shared models, a memory budget ------------------------------

def fake_loader(sizes: dict):
    """A loader of models with `sizes[source]` bytes of parameters (fp32), counting its calls."""
    def load(source, token=None):
        if source not in sizes:
            raise FileNotFoundError(f"No checkpoint at {source}.")
        load.calls.append(source)
        model = torch.nn.Module()
        model.w = torch.nn.Parameter(torch.zeros(sizes[source] // 4))
        return model, None, info(source)
    load.calls = []
    return load


def info(source: str) -> models.ModelInfo:
    return models.ModelInfo(name=source, source=source, params=0, device="cpu", dtype="float32", details="",
                            layers=1, heads=1, context=8, window=8)


MB = 2**20


def test_cache_shares_models_and_drops_the_least_recently_used_beyond_its_budget():
    load = fake_loader({"a": MB, "b": MB, "c": MB})
    model, _, _ = load("a")
    load.calls.clear()
    cache = models.ModelCache(model, None, info("default"), budget=3 * MB, loader=load)
    b = cache.get("b")
    assert cache.get("b") is b and load.calls == ["b"], "sessions that chose the same source share one model"
    cache.get("c")
    assert cache.sources() == ["default", "b", "c"] and cache.bytes == 3 * MB and cache.evictions == 0
    cache.get("b")                       # b is now the most recently used
    cache.get("a")                       # 4 MB > 3 MB: the least recently used other than the default goes
    assert cache.sources() == ["default", "b", "a"] and cache.evictions == 1
    assert cache.get(None) is cache.default and cache.get("default") is cache.default
    assert cache.get("c") is not None and load.calls == ["b", "c", "a", "c"], "a dropped model is loaded again"


def test_the_default_model_always_stays_and_a_big_model_still_loads():
    load = fake_loader({"big": 8 * MB, "small": MB})
    model, _, _ = load("small")
    cache = models.ModelCache(model, None, info("default"), budget=2 * MB, loader=load)
    big = cache.get("big")
    assert cache.sources() == ["default", "big"], "the model just asked for is kept even beyond the budget"
    cache.get("small")
    assert cache.sources() == ["default", "small"] and big.bytes == 8 * MB
    with pytest.raises(UserError, match="No checkpoint at nowhere"):
        cache.get("nowhere")
    assert cache.sources() == ["default", "small"], "a failed load changes nothing"
    assert models.memory_budget({models.MEMORY_ENV: "512"}) == 512 * MB
    assert models.memory_budget({}) == models.DEFAULT_MEMORY_MB * MB


def test_a_generation_finishes_on_its_model_while_another_is_loaded_and_evicts_it(tmp_path):
    cache = models.ModelCache(*models.load_source("random:demo"), budget=0)
    third_dir = tmp_path / "third"
    gemma3.save_model(*models.random_model("tiny", seed=1), third_dir)
    tiny = cache.get("random:tiny")
    s = gen.settings("Once upon a time", 40, 0.0, 0, 1.0, 1.0, 0)
    alone = list(gen.stream(tiny, s, {}))[-1]
    pieces = gen.stream(tiny, s, {})
    first = next(pieces)
    assert cache.streaming == 1 and tiny.streaming == 1
    with tiny.reading():  # another generation is mid-token on this model: loading does not wait for it
        third = cache.get(str(third_dir))
    assert cache.sources() == ["random:demo", str(third_dir)], "budget 0: the tiny model left the cache"
    rest = list(pieces)
    assert (rest[-1] if rest else first) == alone, "the story finished on its own model, unchanged"
    assert cache.streaming == 0
    other = list(gen.stream(third, s, {}))[-1]
    assert other != alone and third.info.name == "third"


def test_visitors_on_a_space_pick_listed_models_and_runs(tmp_path):
    runs_dir = tmp_path / "runs"
    step = runs_dir / "r1" / "checkpoints" / "step_100"
    step.mkdir(parents=True)
    for listed in ("random:tiny", "hf:G3nadh/gemma3-270m-tinystories", str(step)):
        assert models.check_visitor_choice(listed, runs_dir, anything=False) == listed
    assert models.check_visitor_choice("hf:x/y", runs_dir, anything=False, default="hf:x/y") == "hf:x/y"
    for other in ("hf:someone/model", "random:demo", str(models.ASSETS / "gpt2.tiktoken")):
        with pytest.raises(UserError, match="other paths and Hub models are for its owner"):
            models.check_visitor_choice(other, runs_dir, anything=False)
        assert models.check_visitor_choice(other, runs_dir, anything=True) == other
    space = {"SYSTEM": "spaces", "SPACE_ID": "ann/app", "SPACE_AUTHOR_NAME": "ann", "TRAIN_ALLOWED_USERS": "bob"}
    assert guard.may_load_anything(None, {}) and guard.may_load_anything("Ann", space)
    assert guard.may_load_anything("bob", space) and not guard.may_load_anything(None, space)
    assert not guard.may_load_anything("eve", space)


# ---- the Space, started as Hugging Face starts it ------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def space_env(persistent: Path, port: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in (
        "GEMMA3_RUNS_DIR", "GEMMA3_DATA_DIR", "HF_HOME", "HF_HUB_CACHE", "SPACES_ZERO_GPU", "TRAIN_ALLOWED_USERS",
        "GEMMA3_MODEL")}
    env.update(SYSTEM="spaces", SPACE_ID=f"{OWNER}/gemma3-tinystories", SPACE_AUTHOR_NAME=OWNER,
               SPACE_REPO_NAME="gemma3-tinystories", SPACE_HOST=f"{OWNER}-gemma3-tinystories.hf.space",
               OAUTH_CLIENT_ID="test-client", OAUTH_CLIENT_SECRET=SECRET, OAUTH_SCOPES="openid profile",
               OPENID_PROVIDER_URL="https://huggingface.co", HF_HUB_OFFLINE="1",
               GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port))
    env[storage.PERSISTENT_ENV] = str(persistent)
    return env


class Space:
    """`python app.py` with a Space's variables; url, its log, and the persistent folder."""

    def __init__(self, persistent: Path, log: Path):
        self.persistent, self.log = persistent, log
        port = free_port()
        self.url = f"http://127.0.0.1:{port}/"
        with open(log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=space_env(persistent, port),
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            poll(self.answers, timeout=300, every=0.5, what="the Space to serve")
        except AssertionError:
            self.kill()
            raise AssertionError(f"the Space did not start:\n{self.log_tail()}") from None

    def answers(self) -> bool:
        import httpx

        if self.proc.poll() is not None:
            raise AssertionError(f"the Space exited with {self.proc.returncode}:\n{self.log_tail()}")
        try:
            return httpx.get(self.url + "gradio_api/info", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def kill(self):
        """The container stopping: every process of the app at once (runs are killed by the caller)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def client(self, username: str | None = None):
        from gradio_client import Client

        headers = {"Cookie": f"session={session_cookie(username)}"} if username else None
        return Client(self.url, headers=headers, verbose=False)


def session_cookie(username: str) -> str:
    """The session cookie Gradio's OAuth callback sets after `username` signs in with Hugging Face."""
    import itsdangerous

    key = hashlib.sha256((SECRET + "-v4").encode()).hexdigest()   # gradio.oauth.attach_oauth's session key
    userinfo = {"preferred_username": username, "name": username, "profile": f"https://huggingface.co/{username}",
                "picture": ""}
    oauth = {"access_token": "token", "token_type": "bearer", "scope": "openid profile",
             "expires_at": int(time.time()) + 3600, "userinfo": userinfo}
    data = base64.b64encode(json.dumps({"oauth_info": oauth}).encode())
    return itsdangerous.TimestampSigner(key).sign(data).decode()


@pytest.fixture(scope="module")
def space_dir(tmp_path_factory):
    try:
        import authlib  # noqa: F401
    except ImportError:
        pytest.fail("authlib is missing: a Space with hf_oauth needs gradio[oauth] (pip install -r requirements.txt)")
    path = tmp_path_factory.mktemp("space")
    (path / "data").mkdir()   # the mounted volume
    yield path
    kill_runs(path / "data" / "runs")


@pytest.fixture(scope="module")
def space(space_dir):
    started = Space(space_dir / "data", space_dir / "app.log")
    try:
        yield started
    finally:
        started.kill()


def start(client, **overrides):
    return client.predict(*{**TINY, **overrides}.values(), api_name="/train_start")


def test_the_space_serves_and_visitors_generate(space):
    import httpx

    page = httpx.get(space.url, timeout=30)
    assert page.status_code == 200 and "Gemma 3 TinyStories" in page.text
    text, summary = space.client().predict("Once", 5, 0.0, 0, 1.0, 1.0, 0, api_name="/generate")
    assert text and "5 tokens" in summary and "bundled demo model" in summary


def test_an_anonymous_visitor_cannot_start_stop_or_resume_training(space):
    anon = space.client()
    with pytest.raises(Exception, match=NOT_THE_OWNER):
        start(anon)
    with pytest.raises(Exception, match=NOT_THE_OWNER):
        anon.predict("", api_name="/train_stop")
    with pytest.raises(Exception, match=NOT_THE_OWNER):
        anon.predict("any-run", None, api_name="/train_resume")
    stranger = space.client("eve")
    with pytest.raises(Exception, match="eve may not train on this Space"):
        start(stranger)
    assert runs.list_runs(space.persistent / "runs") == [], "nothing was started"


def test_only_those_who_may_train_upload_files(space):
    """Issue 21 item 3: Gradio's upload route (the Train tab's story files) refuses an anonymous visitor in one
    sentence and stores nothing; the owner's upload is taken."""
    import httpx

    files = {"files": ("stories.txt", b"Tom had a red ball.\n\nLily had a cat.\n", "text/plain")}
    refused = httpx.post(space.url + "gradio_api/upload", files=files, timeout=30)
    assert refused.status_code == 403 and refused.text == guard.UPLOAD_REFUSED
    owner = httpx.post(space.url + "gradio_api/upload", files=files, timeout=30,
                       headers={"Cookie": f"session={session_cookie(OWNER)}"})
    assert owner.status_code == 200 and owner.json()[0].endswith("stories.txt")


def test_visitors_pick_from_the_list_and_the_owner_loads_anything(space):
    anon, owner = space.client(), space.client(OWNER)
    for refused in ("assets/gpt2.tiktoken", "hf:someone/some-model"):
        with pytest.raises(Exception, match="other paths and Hub models are for its owner"):
            anon.predict("", refused, api_name="/load_model")
    md, *_ = anon.predict("random:tiny", "", api_name="/load_model")
    assert "random weights (tiny preset" in md
    text, summary = owner.predict("Once", 3, 0.0, 0, 1.0, 1.0, 0, api_name="/generate")
    assert "bundled demo model" in summary, "the owner's session still has the default model"
    with pytest.raises(Exception, match="stays loaded"):   # past the visitor check: not a model, though
        owner.predict("", "assets/gpt2.tiktoken", api_name="/load_model")
    with pytest.raises(Exception, match="outside the folders"):
        owner.predict("", "/etc", api_name="/load_model")


def test_the_owner_trains_and_a_restart_keeps_the_run_resumable(space, space_dir):
    owner, runs_dir = space.client(OWNER), space.persistent / "runs"
    dd, status, _ = start(owner)
    name = dd["value"]
    run = runs.get(name, runs_dir)
    try:
        assert (space.persistent / "data" / "builtin-300").is_dir(), "prepared data is in the persistent folder"
        poll(lambda: run.is_alive() and run.latest_checkpoint(), timeout=180, what="the run's first checkpoint")
        with pytest.raises(Exception, match=NOT_THE_OWNER):
            space.client().predict(name, api_name="/train_stop")
        status, _ = owner.predict(name, api_name="/train_stop")
        assert status.startswith("stopped") and not run.is_alive()
        dd, status, _ = owner.predict(name, None, api_name="/train_resume")
        assert dd["value"] == name and "resuming" in status
        done = int(run.latest_checkpoint().name.split("_")[1])
        poll(lambda: run.is_alive() and run.latest_checkpoint() and
             int(run.latest_checkpoint().name.split("_")[1]) > done, timeout=180, what="a checkpoint after resuming")

        space.kill()        # the Space restarts: the app and its trainer die at once, /data stays
        kill_run(run)
        assert not run.is_alive()
        latest = run.latest_checkpoint()
        again = Space(space.persistent, space_dir / "app-restarted.log")
        try:
            _, status, _, _ = again.client().predict(name, api_name="/train_metrics")
            assert f"**{name}**" in status and ("interrupted" in status or runs.DIED in status), status
            anon = again.client()
            md, *_ = anon.predict("", f"runs/{name}/checkpoints/{latest.name}", api_name="/load_model")
            assert f"run {name}: {latest.name}" in md, "visitors may load the Space's runs"
            dd, status, _ = again.client(OWNER).predict(name, None, api_name="/train_resume")
            assert "resuming" in status
            poll(lambda: run.is_alive() and run.status()["state"] == "running", timeout=180,
                 what="the resumed run to train")
            assert run.status()["step"] >= int(latest.name.split("_")[1])
            status, _ = again.client(OWNER).predict(name, api_name="/train_stop")
            assert status.startswith("stopped")
        finally:
            again.kill()
    finally:
        kill_run(run)
