"""The owner's Hub token and the server stay the owner's (issue 22 items 3, 7 and 8).

A fake Hub, a local HTTP server the downloads are pointed at (huggingface_hub's endpoint, as HF_ENDPOINT
would), serves a public repository and a gated one and records every request's path and Authorization
header, with the owner's token in HF_TOKEN. Pushes go to stand-ins of HfApi.create_repo / upload_folder
that keep what they were given, as in tests/test_push.py."""

import hashlib
import json
import re
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit

import huggingface_hub
import pytest
import torch
from huggingface_hub import HfApi, constants

import gemma3
from training import TrainConfig, push as push_module, train
from training.stories import iter_stories
from webapp import models
from webapp import train as tr
from webapp.inputs import UserError
from webapp.train import RunDesk
from webapp.ui.model_bar import ModelBar

ROOT = Path(__file__).resolve().parent.parent
OWNER_TOKEN = "hf_owner_secret_token"
PUBLIC, GATED = "G3nadh/gemma3-270m-tinystories", "google/gemma-3-270m"   # both in the visitors' model list
COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub(ThreadingHTTPServer):
    """Serves `files` as PUBLIC and as GATED (the gated one only to the owner's token); keeps every request
    as (method, path, Authorization header)."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.requests = files, []
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self.answer(body=False)

    def do_GET(self):
        self.answer(body=True)

    def send(self, status: int, data: bytes, body: bool, **headers):
        self.send_response(status)
        for k, v in {"Content-Length": str(len(data)), **headers}.items():
            self.send_header(k, v)
        self.end_headers()
        if body:
            self.wfile.write(data)

    def answer(self, body: bool):
        hub, auth = self.server, self.headers.get("Authorization")
        hub.requests.append((self.command, self.path, auth))
        path = urlsplit(self.path).path
        api = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(tree|revision)/(main|" + COMMIT + ")", path)
        file = re.fullmatch(r"/([^/]+/[^/]+)/resolve/[^/]+/(.+)", path)
        repo = (api or file).group(1) if api or file else None
        if repo not in (PUBLIC, GATED):
            return self.send(404, b'{"error": "Repository not found"}', body, **{"X-Error-Code": "RepoNotFound"})
        if repo == GATED and auth != f"Bearer {OWNER_TOKEN}":
            return self.send(401, b'{"error": "Access to this model is restricted."}', body,
                             **{"X-Error-Code": "GatedRepo"})
        if api and api.group(2) == "tree":
            listing = [{"type": "file", "path": n, "size": len(d), "oid": hashlib.sha1(d).hexdigest()}
                       for n, d in hub.files.items()]
            return self.send(200, json.dumps(listing).encode(), body, **{"Content-Type": "application/json"})
        if api:
            info = {"id": repo, "sha": COMMIT, "siblings": [{"rfilename": n} for n in hub.files]}
            return self.send(200, json.dumps(info).encode(), body, **{"Content-Type": "application/json"})
        data = hub.files.get(file.group(2))
        if data is None:
            return self.send(404, b'{"error": "Entry not found"}', body, **{"X-Error-Code": "EntryNotFound"})
        self.send(200, data, body, **{"X-Repo-Commit": COMMIT, "ETag": f'"{hashlib.sha1(data).hexdigest()}"'})


@pytest.fixture(scope="module")
def model_files(tmp_path_factory) -> dict[str, bytes]:
    """config.json and model.safetensors of a very small model (GPT-2's vocabulary, hidden size 16)."""
    cfg = gemma3.Gemma3Config(vocab_size=50257, hidden=16, layers=1, heads=1, kv_heads=1, head_dim=16, ffn=32,
                              window=8, context=64, query_pre_attn_scalar=16)
    folder = tmp_path_factory.mktemp("served") / "model"
    gemma3.save_model(gemma3.Gemma3(cfg).to(torch.bfloat16), gemma3.gpt2_tokenizer(), folder)
    return {f.name: f.read_bytes() for f in folder.iterdir()}


@pytest.fixture
def hub(model_files, monkeypatch, tmp_path):
    """The fake Hub, online, with the owner's token in HF_TOKEN and an empty Hugging Face cache."""
    server = FakeHub(model_files)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    monkeypatch.setattr(constants, "ENDPOINT", server.url)   # as HF_ENDPOINT sets both when huggingface_hub loads
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        server.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", OWNER_TOKEN)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    yield server
    server.shutdown()
    server.server_close()


def as_space(monkeypatch):
    """Make this a Space of `owner`, as Hugging Face runs it."""
    for key, value in {"SPACE_ID": "owner/app", "SYSTEM": "spaces", "SPACE_AUTHOR_NAME": "owner"}.items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def space(monkeypatch):
    as_space(monkeypatch)


def model_bar(tmp_path) -> ModelBar:
    """The model bar's logic (what /load_model runs), without its components."""
    runs = tmp_path / "runs"
    runs.mkdir(parents=True)
    cache = models.ModelCache(*models.load_source("random:tiny"))
    return ModelBar(cache, runs, models.allowed_roots(runs), models.PublicNames(runs, cache.default.source),
                    *[None] * 6)


def no_progress(*args, **kwargs):
    pass


def test_an_anonymous_visitor_never_sends_the_owners_token(hub, space, tmp_path):
    """Issue 22 item 3: an anonymous visitor who picks the listed Hub models loads the public one without any
    token, and is told the gated one is not here yet; no request made for them carries the owner's token."""
    bar = model_bar(tmp_path)
    info = bar.load(f"hf:{PUBLIC}", no_progress)
    assert info.source == f"hf:{PUBLIC}" and info.params > 0
    with pytest.raises(UserError, match=f"{GATED} is gated: .* visitors then load it from the cache"):
        bar.load(f"hf:{GATED}", no_progress)
    assert hub.requests and {auth for *_, auth in hub.requests} == {None}, hub.requests


def test_the_owner_fetches_a_gated_model_and_visitors_then_load_it_from_the_cache(hub, space, tmp_path):
    """Issue 22 item 3: the owner's own load downloads the gated model with the owner's token; a visitor's
    later load (a fresh cache of models in memory) takes that copy without any request to the Hub."""
    owner = model_bar(tmp_path)
    signed_in = SimpleNamespace(username="owner")   # the owner's Hugging Face sign-in (gr.OAuthProfile)
    assert owner.load(f"hf:{GATED}", no_progress, signed_in).source == f"hf:{GATED}"
    assert hub.requests and {auth for *_, auth in hub.requests} == {f"Bearer {OWNER_TOKEN}"}
    hub.requests.clear()
    visitor = model_bar(tmp_path / "later")
    assert visitor.load(f"hf:{GATED}", no_progress).source == f"hf:{GATED}"
    assert hub.requests == []


# ---- item 7: a pushed repository names nothing of the server --------------------------------------------

UPLOADED = "alice-private-diary.txt"


@pytest.fixture(scope="module")
def uploaded_run(tmp_path_factory):
    """A run trained, as the Train tab does, on a story file uploaded as alice-private-diary.txt (Gradio keeps an
    upload at /tmp/gradio/<hash>/<its name>)."""
    base = tmp_path_factory.mktemp("server")
    upload = base / "gradio" / "3f2a9c" / UPLOADED
    upload.parent.mkdir(parents=True)
    upload.write_text("\n\n".join(s for s, _ in zip(iter_stories(seed=0), range(60))))
    trainer = RunDesk(base / "runs", base / "data")
    data, _ = trainer.prepare("files", files=[str(upload)])
    out = base / "runs" / "diary"
    cfg = TrainConfig.for_preset("tiny", data=str(data), out=str(out), batch_size=2, seq_len=16, max_steps=2,
                                 eval_every=2, eval_windows=2, ckpt_every=2, log_every=1, sample_tokens=2,
                                 snapshot_mb=0, model=dict(hidden=16, layers=1, heads=1, head_dim=16, ffn=32))
    assert train(cfg) == 0
    return out


@pytest.fixture
def recording_hub(monkeypatch, tmp_path):
    """An online-looking environment with a token, and a Hub that keeps what it is given instead of uploading."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", OWNER_TOKEN)
    monkeypatch.setattr(push_module, "hub_reachable", lambda endpoint=None: True)
    calls = {"uploaded": tmp_path / "uploaded"}

    def create_repo(self, repo_id, **kw):
        calls["create"] = dict(repo_id=repo_id, **kw)
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, **kw):
        shutil.copytree(folder_path, calls["uploaded"])

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


def test_a_pushed_repository_names_no_server_path_and_no_uploaded_file(uploaded_run, recording_hub, monkeypatch):
    """Issue 22 item 7: every file pushed (the model card, run/config.json, run/status.json, ...) names no
    absolute path of the server and not the uploaded file's name; the card says what the data was, and the
    repository is created private unless the push asks for public."""
    failed, cfg_file = uploaded_run / "status.json", uploaded_run / "config.json"   # a reason naming a server path
    failed.write_text(json.dumps({**json.loads(failed.read_text()),
                                  "reason": f"cannot read {json.loads(cfg_file.read_text())['data']}/train.bin"}))
    push_module.push(uploaded_run, "someone/diary")
    folder = recording_hub["uploaded"]
    server = str(uploaded_run.parents[2])   # the folder every server path of this test lies in
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    assert {p.relative_to(folder).as_posix() for p in files} >= {"README.md", "run/config.json", "run/status.json"}
    for f in files:
        data = f.read_bytes()
        for secret in (server, str(Path.cwd()), "alice-private-diary"):
            assert secret.encode() not in data, f"{f.name} names {secret}"
    cfg = json.loads((folder / "run" / "config.json").read_text())
    assert cfg["out"] == "runs/diary" and re.fullmatch(r"data/upload-[0-9a-f]+", cfg["data"])
    card = (folder / "README.md").read_text()
    assert "- Data: 1 story file of the trainer's own (not published)," in card
    assert f"python -m training prepare --source YOUR_STORY_FILES --out {cfg['data']}" in card
    assert recording_hub["create"]["private"] is True

    shutil.rmtree(folder)
    monkeypatch.setattr(push_module, "stage", lambda run, folder, *args, **kwargs: folder)   # only the flag counts
    push_module.push(uploaded_run, "someone/diary-public", private=False)
    assert recording_hub["create"]["private"] is False


# ---- item 8: a push from a Space can work, and says before the click where it writes ----------------------

def test_the_space_sign_in_asks_for_the_scope_a_push_needs():
    """Issue 22 item 8: the Space's sign-in asks for manage-repos (write the user's repositories and create new
    ones: https://huggingface.co/docs/hub/spaces-oauth#scopes); without it the token is read-only and every push
    from the Space is refused."""
    meta = huggingface_hub.metadata_load(ROOT / "README.md")
    assert meta["hf_oauth"] is True and "manage-repos" in meta["hf_oauth_scopes"]


def test_the_train_tab_says_before_the_click_which_account_and_repository_a_push_writes(uploaded_run, monkeypatch):
    """Issue 22 item 8: under Push to Hub the owner reads which repository the push writes, with whose token, and
    that a new one is private (the box starts ticked); an anonymous visitor, who may not push, reads nothing."""
    import gradio as gr

    from webapp.ui import train as ui_train

    trainer = RunDesk(uploaded_run.parent, uploaded_run.parents[1] / "data")
    with gr.Blocks() as demo:
        tab = ui_train.build(trainer)
    assert tab.c["private"].value is True
    plan = next(f.fn for f in demo.fns.values() if f.name == "push_plan")
    as_space(monkeypatch)   # after building: a Space's sign-in button wants its OAuth app

    class Profile:   # what Gradio hands a handler for a visitor signed in with Hugging Face
        username = "owner"
    assert plan("diary", "", True, Profile()) == ("Push to Hub writes run **diary** to `owner/diary` as **owner** "
                                                  "(your Hugging Face sign-in); a new repository is private.")
    assert "to `team/stories` as **owner**" in plan("diary", "team/stories", True, Profile())
    assert plan("diary", "", True, None) == ""
    local = tr.push_plan(trainer, "diary", "stories", False, None)   # off a Space: this machine's token
    assert "to `<the token’s user>/stories` with this machine's Hugging Face token (HF_TOKEN" in local
    assert local.endswith("a new repository is **public**: anyone may download it.")
