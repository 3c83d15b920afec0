"""The owner's Stop and the status polls never wait behind work: the app served with its own queue settings
(app.QUEUE), ten slow jobs of visitors in flight or waiting (Start, Resume, estimates, GGUF exports, stories),
each held by a patched slow function until the test lets it go."""

import threading
import time

import httpx
import pytest

import app
from conftest import kill_runs, poll, wait_ready
from webapp import generation as gen
from webapp import train as tr
from webapp.inputs import UserError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
SETTINGS = ("tiny", 10, 4, 1, 32, 2e-3, "cpu", 1, False)   # Start's and the estimate's form, from the preset on
STORY = ("Once", 5, 0, 0, 1, 1, 0)   # /generate's inputs
JOBS = ([("/train_start", ("builtin", 300, "", None, *SETTINGS))] * 3 + [("/train_resume", ("", None))] * 3
        + [("/train_estimate", SETTINGS)] * 2 + [("/train_gguf", ("", "q8_0")), ("/generate", STORY)])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("slots")
    demo = app.build(runs_dir=tmp / "runs", data_dir=tmp / "data")
    demo.queue(**app.QUEUE).launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=None, quiet=True)
    try:
        wait_ready(demo.local_url)
        yield demo
    finally:
        demo.close()
        kill_runs(tmp / "runs")


def client(server):
    from gradio_client import Client

    return Client(server.local_url, verbose=False)


def in_server(server) -> int:
    """Jobs the server holds: running, or waiting in the queue."""
    return server._queue.get_active_worker_count() + len(server._queue)


@pytest.fixture
def busy(server, monkeypatch):
    """Ten slow jobs of visitors (JOBS), each held until the test ends."""
    release = threading.Event()

    def slow(*args, **kwargs):
        release.wait(60)
        raise UserError("Let go.")

    def slow_stream(*args, **kwargs):
        release.wait(60)
        yield "Let go."

    for owner, name in ((server.trainer, "prepare"), (server.trainer, "resume"), (tr, "export_gguf")):
        monkeypatch.setattr(owner, name, slow)
    monkeypatch.setattr(tr, "estimate_words", slow_stream)
    monkeypatch.setattr(gen, "stream", slow_stream)
    visitor = client(server)
    # the first Start takes Start's slot before the others are sent (sent together, a Resume could reach the slot
    # first and hold it, and no Start would ever be preparing its data: a CI run timed out waiting for that)
    (name, args), *rest = JOBS
    jobs = [visitor.submit(*args, api_name=name)]
    poll(lambda: server.trainer.pending is not None, timeout=20, what="the first Start to reach its data preparation")
    jobs += [visitor.submit(*args, api_name=name) for name, args in rest]
    poll(lambda: in_server(server) == len(JOBS), timeout=20, what="the ten jobs to reach the server")
    yield server
    release.set()
    poll(lambda: in_server(server) == 0, timeout=30, what="the queue to drain")
    for job in jobs:
        job.cancel()


def timed(fn):
    t0 = time.monotonic()
    try:
        return fn(), time.monotonic() - t0
    except Exception as e:   # the answer is a sentence, e.g. "No run is training right now."
        return e, time.monotonic() - t0


def test_stop_and_status_answer_at_once_behind_ten_slow_jobs(busy):
    """Issue 22 item 5: with ten slow jobs in flight or waiting (three Starts and three Resumes in Start's own slot,
    estimates, a GGUF export, a story), the owner's Stop and the status poll answer within a second, through
    the queue as a script (gradio_client) calls them."""
    owner = client(busy)
    answer, took = timed(lambda: owner.submit("", api_name="/train_stop").result(timeout=5))
    assert "No run is training right now" in str(answer) and took < 1, (answer, took)
    answer, took = timed(lambda: owner.submit("", False, api_name="/train_metrics").result(timeout=5))
    assert isinstance(answer, tuple) and took < 1, (answer, took)
    assert in_server(busy) == len(JOBS), "the slow jobs are still there"


def test_the_status_polls_answer_when_visitors_fill_the_queue(busy):
    """Issue 22 item 5: the page polls a run's status outside the queue, so a visitor who fills the queue (64
    waiting jobs) cannot refuse it; an event that is queued cannot be called past the queue (and its limit)."""
    deps = {d.get("api_name"): d for d in busy.config["dependencies"]}
    assert not deps["train_metrics"]["queue"], "the page polls directly"
    url = busy.local_url + "gradio_api/"
    with httpx.Client(timeout=10) as http:
        for i in range(app.QUEUE["max_size"] + 1):   # more stories, until the queue is full
            joined = http.post(url + "queue/join", json={"data": [*STORY, None], "fn_index": deps["generate"]["id"],
                                                         "session_hash": f"flood{i}"})
            if joined.status_code != 200:
                break
        assert joined.status_code == 503 and len(busy._queue) == app.QUEUE["max_size"], "the queue is full"
        def preparing() -> bool:   # every poll answers within a second, whatever the queue holds
            answer, took = timed(lambda: http.post(url + "run/train_metrics",
                                                   json={"data": ["", False], "session_hash": "owner"}, timeout=5))
            assert answer.status_code == 200 and took < 1, (answer.text, took)
            return "Preparing the training data for a new run" in answer.text

        # the held Start is preparing its data, and the monitor says so (issue 23 item 3), not "no runs yet", once
        # its worker has reached that point (being in the server is not yet being there)
        poll(preparing, timeout=10, what="the monitor to say a held Start is preparing its data")
        refused = http.post(url + "run/generate", json={"data": [*STORY, None], "session_hash": "x"})
        assert refused.status_code == 404, "a story goes through the queue and its limit of two at once"
