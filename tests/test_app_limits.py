"""What a visitor can make the app do is bounded (issue 21): the time estimate, GGUF exports and uploads need the
permission training needs and are capped; the model picker shows names, never server paths, and answers the
same whether a path exists or not; one visitor's slow load never holds up another's; a busy port is one
sentence. One app for the module (a run "r1" with a best checkpoint in its runs folder), launched for the
tests that need its queue.
"""

import json
import os
import tempfile
import threading
import time
from pathlib import Path

import gradio as gr
import pytest

import app
import gemma3
from conftest import poll, serve
from training import TrainConfig, probe
from webapp import models
from webapp import train as tr
from webapp.inputs import UserError
from webapp.ui import model_bar

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
SPACE = {"SYSTEM": "spaces", "SPACE_ID": "ann/app", "SPACE_AUTHOR_NAME": "ann"}
NOT_THE_OWNER = "only its owner \\(ann\\) or allowed users may train"
ESTIMATE = ("tiny", 10, 4, 1, 32, 2e-3, "cpu", 1, False)   # preset, steps, batch, accum, seq, lr, device, gpus, compile


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("limits")
    (tmp / "runs" / "r1").mkdir(parents=True)
    (tmp / "runs" / "r1" / "config.json").write_text(json.dumps({"preset": "tiny", "max_steps": 3}))
    gemma3.save_model(*models.random_model("tiny", seed=1), tmp / "runs" / "r1" / "best")
    return tmp


@pytest.fixture(scope="module")
def demo(tmp):
    return app.build(runs_dir=tmp / "runs", data_dir=tmp / "data")


@pytest.fixture(scope="module")
def server(demo, tmp):
    yield from serve(demo, tmp / "runs")


def handler(demo, api_name):
    return next(f.fn for f in demo.fns.values() if f.api_name == api_name)


def on_space(monkeypatch):
    for key, value in SPACE.items():
        monkeypatch.setenv(key, value)


def probe_children() -> list[int]:
    """Processes of `python -m training.probe` this test process started."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if ppid == os.getpid() and b"training.probe" in (stat.parent / "cmdline").read_bytes():
                found.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


# ---- item 2: the time estimate ----------------------------------------------------------------------

def test_the_estimate_needs_the_permission_training_needs(demo, monkeypatch):
    """Issue 21 item 2: on a Space an anonymous visitor's estimate is refused before any step runs."""
    on_space(monkeypatch)
    with pytest.raises(gr.Error, match=NOT_THE_OWNER):
        next(handler(demo, "train_estimate")(*ESTIMATE))
    assert probe_children() == []


def test_stop_never_waits_behind_an_estimate_and_the_estimate_answers(server, tmp):
    """Issue 21 item 2: while an estimate runs (grad accumulation 1024: it multiplies the measured time, not
    the work), the owner's Stop answers at once; the estimate then gives its time."""
    from gradio_client import Client

    estimating = Client(server.local_url, verbose=False).submit("tiny", 10, 4, 1024, 32, 2e-3, "cpu", 1, False,
                                                                api_name="/train_estimate")
    poll(probe_children, timeout=30, what="the estimate's process to start")
    t0 = time.monotonic()
    with pytest.raises(Exception, match="No run is training right now"):
        Client(server.local_url, verbose=False).predict("", api_name="/train_stop")
    assert time.monotonic() - t0 < 5, "Stop did not queue behind the estimate"
    words = estimating.result(timeout=120)
    assert words.startswith("About ") and "for 10 steps on this" in words
    assert probe_children() == []


def test_an_estimate_closed_midway_ends_its_process():
    """Issue 21 item 2: a cancelled estimate (Gradio closes the generator) kills its child at once, and the
    wall-time limit ends one that runs too long, in one sentence."""
    cfg = TrainConfig.for_preset("tiny", max_steps=10, batch_size=4, seq_len=32, device="cpu")
    running = probe.estimate_apart(cfg)
    assert isinstance(next(running), probe.Progress) and len(probe_children()) == 1
    running.close()
    assert probe_children() == []
    with pytest.raises(ValueError, match="took longer than 1 s, the estimate's limit"):
        list(probe.estimate_apart(cfg, limit_s=1))
    assert probe_children() == []


def test_an_estimate_too_long_or_too_big_for_this_machine_says_so_without_running(demo, monkeypatch):
    """Issue 21 item 2: sequences beyond the probe's cap and a run whose weights, gradients and optimizer state
    exceed the free memory are refused in one sentence, and no step runs."""
    trainer = demo.trainer
    long = TrainConfig.for_preset("270m", max_steps=10, batch_size=1, seq_len=8192, device="cpu")
    with pytest.raises(ValueError, match="The estimate times sequences of up to 4,096 tokens, not 8,192"):
        next(tr.estimate_words(trainer, long))
    monkeypatch.setattr(probe, "free_memory", lambda device: 2**30)
    big = TrainConfig.for_preset("270m", max_steps=10, batch_size=1, seq_len=256, device="cpu")
    with pytest.raises(ValueError, match=r"^This run cannot train here: its 132M parameters need at least 2\.0 GiB"):
        next(tr.estimate_words(trainer, big))
    assert probe_children() == []


# ---- item 3: GGUF exports and uploads ------------------------------------------------------------------

def test_a_gguf_export_needs_the_permission_and_keeps_only_the_latest_file(demo, monkeypatch):
    """Issue 21 item 3: anonymous visitors of a Space cannot export; exports live in one folder of the app that
    holds the latest file only, a failed export leaves nothing, and the folder goes with the app."""
    trainer = demo.trainer
    with monkeypatch.context() as space:
        on_space(space)
        with pytest.raises(gr.Error, match=NOT_THE_OWNER):
            handler(demo, "train_gguf")("r1", "f32")
    first = tr.export_gguf(trainer, "r1", "f32")
    second = Path(handler(demo, "train_gguf")("r1", "q8_0"))
    assert not first.exists() and list(trainer.exports.iterdir()) == [second]

    def fail(model, tok, out, dtype):
        Path(out).write_bytes(b"GGUF half-written")
        raise OSError("No space left on device")
    monkeypatch.setattr(gemma3, "export_gguf", fail)
    with pytest.raises(OSError):
        tr.export_gguf(trainer, "r1", "f16")
    assert list(trainer.exports.iterdir()) == []
    made = lambda: set(Path(tempfile.gettempdir()).glob("gemma3-gguf-*"))  # noqa: E731
    before = made()
    other = tr.RunDesk(trainer.runs_dir, trainer.data_dir)
    assert made() == before, "an app that exports nothing makes no folder (a killed one would leave it behind)"
    folder = other.exports
    del other
    assert not folder.exists()


def test_uploads_over_the_cap_are_refused_before_they_are_read(demo, tmp_path):
    """Issue 21 item 3: story files over MAX_UPLOAD_MB in all are refused in one sentence, unread."""
    big = tmp_path / "stories.txt"
    with open(big, "wb") as f:
        f.truncate(tr.MAX_UPLOAD_MB * 2**20 + 1)   # sparse: nothing is written
    t0 = time.monotonic()
    with pytest.raises(UserError, match=f"the limit is {tr.MAX_UPLOAD_MB:,} MiB in all"):
        demo.trainer.data_source("files", files=[str(big)])
    assert time.monotonic() - t0 < 1


def test_an_upload_over_the_cap_is_refused_as_it_streams_and_uploads_are_cleaned(tmp, monkeypatch):
    """Issue 22 item 4: Gradio's upload route, set up as app.main sets it up (max_file_size, the Blocks'
    delete_cache), refuses a file over the cap with 413 and deletes the files it stored once they are older
    than the cache's age (here shortened from DELETE_CACHE's hour to a second)."""
    import httpx

    assert app.MAX_FILE_SIZE == f"{tr.MAX_UPLOAD_MB}mb" and app.DELETE_CACHE == (1800, 3600)
    monkeypatch.setattr(app, "DELETE_CACHE", (1, 1))
    demo = app.build(runs_dir=tmp / "runs", data_dir=tmp / "data-uploads")
    for served in serve(demo, tmp / "runs", max_file_size="1kb"):
        url = served.local_url + "gradio_api/upload"
        big = httpx.post(url, files={"files": ("big.txt", b"x" * 2048, "text/plain")}, timeout=30)
        assert big.status_code == 413
        small = httpx.post(url, files={"files": ("stories.txt", b"Tom had a ball.\n", "text/plain")}, timeout=30)
        assert small.status_code == 200
        stored = Path(small.json()[0])
        assert stored.is_file()
        poll(lambda: not stored.exists(), 15, what="Gradio's cache to delete the uploaded file")


# ---- item 9: names, never server paths ------------------------------------------------------------------

def test_the_page_and_the_picker_show_no_server_path(demo, tmp):
    """Issue 21 item 9: /config (the page's every component) and the model bar's answers name models by
    runs/… and assets/…, and Load maps those names back."""
    config = json.dumps(demo.get_config_file(), default=str)
    assert str(models.ROOT) not in config and str(tmp) not in config
    assert '"runs/r1/best"' in config
    with gr.Blocks():
        bar = model_bar.build(demo.cache, demo.trainer.runs_dir)
    info = bar.load("runs/r1/best", lambda *a, **k: None)
    shown = json.dumps(bar.shown(info)[:-1], default=str)   # the last is this session's gr.State: server-side
    assert "runs/r1/best" in shown and str(tmp) not in shown and str(models.ROOT) not in shown


def test_a_visitor_cannot_tell_which_server_paths_exist(demo, monkeypatch):
    """Issue 21 item 9: on a Space, an anonymous visitor's path is refused in the same sentence whether it exists
    or not, before anything on disk is looked at."""
    on_space(monkeypatch)
    with gr.Blocks():
        bar = model_bar.build(demo.cache, demo.trainer.runs_dir)
    said = set()
    for value in ("/etc/passwd", "/etc/no-such-file", "assets/gpt2.tiktoken", "assets/no-such", "../../../etc/passwd",
                  "runs/../../x", str(models.ROOT / "README.md"), str(models.ROOT / "no-such")):
        with pytest.raises(UserError) as refused:
            bar.load(value, lambda *a, **k: None)
        said.add(str(refused.value))
    assert said == {"On this Space, visitors load the models in the list and the checkpoints of its training runs; "
                    "other paths and Hub models are for its owner. Duplicate the Space to load your own."}


# ---- item 4: a visitor's load never blocks another's ------------------------------------------------------

def test_a_slow_load_never_holds_up_another_visitors_load(server):
    """Issue 21 item 4: while one visitor's model takes its time to load, another visitor's load of a model
    already in memory (the demo model) and a cache load of another new model each finish within seconds."""
    from gradio_client import Client

    cache, release, real = server.cache, threading.Event(), server.cache._loader

    def loader(source, token=None):
        if source == "hf:slow/model":
            release.wait(60)
            raise ValueError("hf:slow/model is not a model.")
        return real(source, token)
    cache._loader = loader
    try:
        slow = Client(server.local_url, verbose=False).submit("", "hf:slow/model", api_name="/load_model")
        poll(lambda: "hf:slow/model" in cache._loading, timeout=30, what="the slow load to start")
        t0 = time.monotonic()
        demo_name = models.picker_choices(server.trainer.runs_dir)[0][1]
        md, *_ = Client(server.local_url, verbose=False).submit(demo_name, "", api_name="/load_model").result(
            timeout=10)
        assert cache.default.info.name in md
        assert cache.get("random:tiny").info.random and time.monotonic() - t0 < 10
    finally:
        release.set()
        cache._loader = real
    with pytest.raises(Exception, match="hf:slow/model is not a model"):
        slow.result(timeout=30)


# ---- item 8: a busy port ------------------------------------------------------------------------------

def test_a_busy_port_is_one_sentence_before_anything_loads(capsys):
    """Issue 21 item 8: `python app.py --port N` with N taken exits with 2 and one sentence, no traceback."""
    import socket

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        t0 = time.monotonic()
        with pytest.raises(SystemExit) as ended:
            app.main(["--host", "127.0.0.1", "--port", str(port)])
    err = capsys.readouterr().err
    assert ended.value.code == 2 and time.monotonic() - t0 < 2
    assert err == (f"error: port {port} on 127.0.0.1 is already in use (is the app running already?); stop that "
                   "program or choose another port with --port.\n")
