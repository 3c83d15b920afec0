"""The app, launched for real and driven through its named API endpoints the way a browser or a script would.

Training writes into a temporary runs/ and data/ (build's runs_dir / data_dir), never into the repository.
"""

import json
import threading
import time

import pytest

import app
from conftest import kill_runs, poll, serve
from training import runs
from webapp import generation as gen
from webapp import models

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
PROMPT = "Once upon a time, a little girl named Lily"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("app")
    yield from serve(app.build(runs_dir=tmp / "runs", data_dir=tmp / "data"), tmp / "runs")


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server.local_url, verbose=False)


def generate(client, prompt="Once", max_new_tokens=5, temperature=0.0, top_k=0, top_p=1.0, rep=1.0, seed=0):
    return client.predict(prompt, max_new_tokens, temperature, top_k, top_p, rep, seed, api_name="/generate")


def plotly(result) -> dict:
    assert result["type"] == "plotly"
    return json.loads(result["plot"])


# ---- Generate ------------------------------------------------------------------------------------

def test_generate_streams_pieces(client):
    job = client.submit("Once upon a time", 40, 0.0, 0, 1.0, 1.0, 0, api_name="/generate")
    seen, first_at = [], None
    while not job.done():
        outputs = job.outputs()
        if len(outputs) > len(seen):
            seen = list(outputs)
            if first_at is None and seen[0][0]:
                first_at = time.monotonic()
        time.sleep(0.005)
    done_at = time.monotonic()
    outputs = job.outputs()
    text, info = gen.continuation_text(outputs[-1][0]), outputs[-1][1]
    assert len(outputs) > 2, "text should arrive in several pieces, not at the end"
    assert first_at is not None and first_at < done_at, "a piece should arrive before the end"
    assert gen.story_text(outputs[-1][0]).startswith("Once upon a time" + text), "the story shows the prompt first"
    partial = [gen.continuation_text(t) for t, _ in outputs[:-1]]
    assert all(text.startswith(p) for p in partial) and len(partial[0]) < len(text), "each piece extends the last"
    assert len(text) > 20 and "40 tokens" in info and "tokens/s" in info


def test_cancel_stops_generation_and_frees_its_cache(client, server):
    job = client.submit("Once upon a time", 1000, 0.8, 0, 1.0, 1.0, 1, api_name="/generate")
    poll = time.monotonic() + 30
    while not job.outputs() and time.monotonic() < poll:
        time.sleep(0.01)
    assert job.outputs() and server.cache.streaming == 1, "a generation is in flight"
    job.cancel()
    deadline = time.monotonic() + 10
    while server.cache.streaming and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.cache.streaming == 0, "cancelling closes the generator (its finally frees the KV cache)"
    text = job.outputs()[-1][0]
    assert "tokens/s" not in job.outputs()[-1][1], "a cancelled generation never reaches its summary"
    assert generate(client, "Once", 3)[0], "and the server keeps serving"


def test_same_seed_same_story_and_random_seeds_differ(client):
    a, info = generate(client, "Lily found", 12, 0.9, 40, 0.95, 1.1, 7)
    b, _ = generate(client, "Lily found", 12, 0.9, 40, 0.95, 1.1, 7)
    assert a == b and a and "seed 7" in info
    # The bundled model is confident: at temperature 1 two 12-token stories can agree by chance,
    # so the random draws sample hot and long enough that equal stories mean an equal seed.
    c, info_c = generate(client, "Lily found", 24, 2.0, 0, 1.0, 1.0, -1)
    d, info_d = generate(client, "Lily found", 24, 2.0, 0, 1.0, 1.0, -1)
    used = int(info_c.split("seed ")[1].split(" ")[0])
    assert used != int(info_d.split("seed ")[1].split(" ")[0]) and c != d, "seed -1 draws a new seed every time"
    assert generate(client, "Lily found", 24, 2.0, 0, 1.0, 1.0, used)[0] == c, "the seed shown reproduces the story"
    _, greedy = generate(client, "Lily found", 3, 0.0, 0, 1.0, 1.0, -1)
    assert "· greedy ·" in greedy and "seed" not in greedy, "temperature 0 draws nothing: no seed is named"


def test_bad_setting_is_a_clear_error_and_server_keeps_serving(client):
    with pytest.raises(Exception, match="Max new tokens must be between 1 and 1,000, not 0"):
        generate(client, "Once", 0)
    text, _ = generate(client, "Once", 5)
    assert text


@pytest.mark.parametrize("args, message", [
    (("",), "prompt is empty"),
    (("   \n",), "prompt is empty"),
    (("x" * 200_000,), "200,000 characters long; the limit is 10,000"),
    ((None,), "prompt is empty"),
    ((["Once"],), "prompt must be text"),
    (("Once", 5000), "Max new tokens must be between 1 and 1,000"),
    (("Once", 2.5), "Max new tokens must be a whole number"),
    (("Once", "ten"), "Max new tokens must be a whole number, not 'ten'"),
    (("Once", 5, -0.1), "Temperature must be between 0 and 2"),
    (("Once", 5, "hot"), "Temperature must be a number"),
    (("Once", 5, 0.7, -3), "Top-k must be between 0 and 500"),
    (("Once", 5, 0.7, 0, 0.0), "Top-p must be between 0.05 and 1"),
    (("Once", 5, 0.7, 0, 1.0, 0.0), "Repetition penalty must be between 0.5 and 2"),
    (("Once", 5, 0.7, 0, 1.0, 1.0, 2**40), "Seed must be between -1 and"),
    (("Once", 5, 0.7, 0, 1.0, 1.0, 99999999999999999999.0), r"Seed must be between -1 and 2,147,483,647, not 1e\+20\."),
    (("Once", 5, 0.7, 0, 1.0, 1.0, True), "Seed must be a whole number"),
])
def test_bad_generate_inputs_get_one_clear_sentence(client, args, message):
    full = list(args) + [5, 0.0, 0, 1.0, 1.0, 0][len(args) - 1:]
    with pytest.raises(Exception, match=message):
        client.predict(*full, api_name="/generate")


# ---- Explore -------------------------------------------------------------------------------------

def test_architecture_figures_need_no_prompt(client, server):
    info = server.cache.default.info   # this client has not chosen another model
    mask = plotly(client.predict(32, api_name="/explore_mask"))
    assert f"window {info.window}" in json.dumps(mask["layout"]) and "32 tokens" in mask["layout"]["title"]["text"]
    rope = plotly(client.predict(api_name="/explore_rope"))
    assert any(t["type"] == "heatmap" for t in rope["data"])
    params = plotly(client.predict(api_name="/explore_parameters"))
    bars = params["data"][0]
    assert "embedding" in bars["y"] and "Wq (query)" in bars["y"] and f"{info.params:,}" in params["layout"]["title"]["text"]


def test_prompt_figures_share_one_recording(client, server):
    info = server.cache.default.info   # this client has not chosen another model
    before = server.explorer.recordings
    all_heads = plotly(client.predict(PROMPT, 0, "all", api_name="/explore_attention"))
    one_head = plotly(client.predict(PROMPT, info.layers - 1, "1", api_name="/explore_attention"))
    assert len([t for t in all_heads["data"] if t["type"] == "heatmap"]) == info.heads
    assert len(one_head["data"]) == 1 and f"Layer {info.layers - 1}, head 1" in one_head["layout"]["title"]["text"]
    act = plotly(client.predict(PROMPT, api_name="/explore_activations"))
    cold = plotly(client.predict(PROMPT, 0.0, 0, api_name="/explore_next_token"))
    warm = plotly(client.predict(PROMPT, 2.0, 5, api_name="/explore_next_token"))
    lens = plotly(client.predict(PROMPT, api_name="/explore_logit_lens"))
    assert server.explorer.recordings == before + 1, "switching layer, head or temperature must not re-run the model"
    assert act["data"] and lens["data"][0]["type"] == "heatmap"
    assert "greedy" in cold["layout"]["title"]["text"] and "top-k 5" in warm["layout"]["title"]["text"]
    client.predict(PROMPT + " and", api_name="/explore_logit_lens")
    assert server.explorer.recordings == before + 2, "a new prompt is recorded again"


@pytest.mark.parametrize("endpoint, args, message", [
    ("/explore_attention", ("", 0, "all"), "Explore prompt is empty"),
    ("/explore_attention", (PROMPT, 99, "all"), "Layer must be between 0 and"),
    ("/explore_attention", (PROMPT, 0, "7"), "Head must be between 0 and"),
    ("/explore_attention", (PROMPT, 0, "first"), "Head must be 'all' or a number"),
    ("/explore_next_token", (PROMPT, 3.0, 0), "Temperature must be between 0 and 2"),
    ("/explore_logit_lens", ("y" * 50_000,), "limit is 10,000"),
    ("/explore_mask", (0,), "Sequence length must be between 1 and"),
    ("/explore_mask", ("long",), "Sequence length must be a whole number"),
])
def test_bad_explore_inputs_get_one_clear_sentence(client, endpoint, args, message):
    with pytest.raises(Exception, match=message):
        client.predict(*args, api_name=endpoint)


# ---- the model bar -------------------------------------------------------------------------------

@pytest.mark.parametrize("path, message", [
    ("/etc", "outside the folders models may be loaded from"),
    ("../../../etc/passwd", "outside the folders models may be loaded from"),
    ("assets/no-such-model", "No checkpoint at assets/no-such-model"),
    ("runs/no-such-run/best", "No checkpoint at runs/no-such-run/best"),
    ("hf:not a repo", "is not a Hub model id"),
    ("google/gemma-3-270m", "for the model on the Hugging Face Hub, write hf:google/gemma-3-270m"),
    ("gemma-3-270m", "write hf:google/gemma-3-270m"),
    ("hf:nobody-here/no-such-model", "not in the local Hugging Face cache.* Check the name.s spelling too"),
    ("assets/gpt2.tiktoken", "stays loaded"),
    ("random:270m", "Random weights are offered for the presets tiny, demo"),
])
def test_bad_model_sources_keep_the_current_model(client, server, path, message):
    model = generate(client)[1].split(" · ")[-1]       # the summary ends with this session's model
    loaded = server.cache.sources()
    with pytest.raises(Exception, match=message):
        client.predict("", path, api_name="/load_model")
    assert server.cache.sources() == loaded, "nothing was loaded or dropped"
    text, summary = generate(client)
    assert text and summary.endswith(model), "the session keeps its model"


def test_picker_lists_the_known_hub_models_and_random_weights(server):
    values = [v for _, v in models.picker_choices(server.trainer.runs_dir)]
    assert {"hf:G3nadh/gemma3-270m-tinystories", "hf:disham993/gemma3-270m-tiny-stories",
            "hf:google/gemma-3-270m", "random:tiny"} <= set(values)
    assert ("assets/demo-model" in values) == models.DEMO_MODEL.is_dir()   # names, never server paths (issue 21)
    gated = [label for label, v in models.picker_choices(server.trainer.runs_dir) if v == "hf:google/gemma-3-270m"]
    assert "HF_TOKEN" in gated[0]


def test_sessions_on_different_models_generate_at_once_while_a_third_loads(server):
    """Two API sessions generate at the same time, each on the model it chose, and each gets exactly the text
    its model writes alone; a third session loading another model meanwhile changes neither."""
    import gemma3
    from gradio_client import Client

    third = server.trainer.runs_dir / "copy" / "checkpoints" / "step_1"   # a checkpoint no session has loaded
    gemma3.save_model(*models.random_model("tiny", seed=3), third)
    a, b, c = (Client(server.local_url, verbose=False) for _ in range(3))
    md, *_ = b.predict("random:demo", "", api_name="/load_model")
    assert "random weights (demo preset" in md
    args = ("Once upon a time", 1000, 0.0, 0, 1.0, 1.0, 0)
    alone_a = a.predict(*args, api_name="/generate")
    alone_b = b.predict(*args, api_name="/generate")
    default = server.cache.default.info.name
    assert default in alone_a[1] and "random weights (demo preset" in alone_b[1] and alone_a[0] != alone_b[0]

    loads = server.cache.loads
    ja, jb = a.submit(*args, api_name="/generate"), b.submit(*args, api_name="/generate")
    poll(lambda: server.cache.streaming == 2, timeout=30, every=0.005, what="both generations to stream at once")
    md, *_ = c.predict("", "runs/copy/checkpoints/step_1", api_name="/load_model")
    assert "run copy: step_1" in md and server.cache.loads == loads + 1, "the third session loaded its model"
    assert server.cache.streaming >= 1, "while the others were still generating"
    assert ja.result()[0] == alone_a[0] and jb.result()[0] == alone_b[0], "each got its own model's text, undisturbed"
    text_c, summary_c = c.predict(*args, api_name="/generate")
    assert "run copy: step_1" in summary_c and text_c not in (alone_a[0], alone_b[0])
    assert generate(a)[1].endswith(default) and generate(b)[1].endswith("untrained: expect noise)")


def long_streams(server, client, n=2):
    """n long generations (random weights of the demo preset, 1000 tokens) in one session, all streaming."""
    client.predict("random:demo", "", api_name="/load_model")
    jobs = [client.submit("Once upon a time", 1000, 1.0, 0, 1.0, 1.0, i, api_name="/generate") for i in range(n)]
    poll(lambda: all(j.outputs() for j in jobs), timeout=30, what="every generation to stream")
    return jobs


def finished(server, job, timeout=60) -> bool:
    """Wait until `job` ends, or until nothing streams any more (it was cancelled too); did it reach its summary?"""
    poll(lambda: job.done() or server.cache.streaming == 0, timeout=timeout, what="the generation to end")
    if not job.done():
        time.sleep(1)   # a story that has just ended sends its summary a moment after its generator closes
    return job.done() and "tokens/s" in job.outputs()[-1][1]


def test_cancelling_a_stream_leaves_other_sessions_streaming(server):
    from gradio_client import Client

    a, b = Client(server.local_url, verbose=False), Client(server.local_url, verbose=False)
    (ja,), (jb,) = long_streams(server, a, 1), long_streams(server, b, 1)
    assert server.cache.streaming == 2
    ja.cancel()
    assert finished(server, jb), "the other session's story reaches its summary"
    assert "tokens/s" not in ja.outputs()[-1][1]


@pytest.mark.xfail(strict=True, reason="Gradio's /cancel cancels every stream of a session and endpoint, not the "
                   "one event (gradio-app/gradio#10342; README, The API). An XPASS means Gradio fixed it: update "
                   "the README and drop this mark.")
def test_cancelling_one_of_two_streams_in_one_session_keeps_the_other(server):
    from gradio_client import Client

    first, second = long_streams(server, Client(server.local_url, verbose=False), 2)
    first.cancel()
    assert finished(server, second)


def test_load_model_changes_only_this_sessions_model(client, server):
    from gradio_client import Client

    other = Client(server.local_url, verbose=False)
    md, details, *_ = other.predict("random:tiny", "", api_name="/load_model")
    assert "random weights (tiny preset" in md and "7 layers" in details
    assert "random:tiny" in server.cache.sources()
    text, info = generate(other, "Once", 3)
    assert text and "random weights (tiny preset" in info
    assert "random weights" not in generate(client, "Once", 3)[1], "another session's load changes nothing here"
    mask = plotly(other.predict(32, api_name="/explore_mask"))
    assert "window 8" in json.dumps(mask["layout"]), "Explore draws this session's model (tiny: window 8)"
    assert f"window {server.cache.default.info.window}" in json.dumps(
        plotly(client.predict(32, api_name="/explore_mask"))["layout"])


def test_the_model_asked_for_last_is_the_one_a_session_keeps(client, server, monkeypatch):
    """A session asks for a model that loads slowly, then, before it is ready, for another: the page keeps the
    one asked for last, though the slow one finishes after it; the slow load says why it changed nothing."""
    import gemma3
    from gradio_client import Client

    for name, seed in (("slow", 4), ("quick", 5)):
        checkpoint = server.trainer.runs_dir / name / "checkpoints" / "step_1"
        gemma3.save_model(*models.random_model("tiny", seed=seed), checkpoint)
    entered, gate, loader = threading.Event(), threading.Event(), server.cache._loader

    def slow_loader(source, token):
        if "slow" in source:
            entered.set()
            gate.wait(60)
        return loader(source, token)

    monkeypatch.setattr(server.cache, "_loader", slow_loader)
    session = Client(server.local_url, verbose=False)
    first = session.submit("", "runs/slow/checkpoints/step_1", api_name="/load_model")
    assert entered.wait(30), "the slow load started"
    assert "run quick: step_1" in session.predict("", "runs/quick/checkpoints/step_1", api_name="/load_model")[0]
    gate.set()
    with pytest.raises(Exception, match="you asked for another model meanwhile"):
        first.result()
    assert "run quick: step_1" in generate(session)[1], "the session generates with the model it asked for last"
    assert "run slow" not in generate(client)[1]


# ---- Train ---------------------------------------------------------------------------------------

TINY = dict(data_source="builtin", stories=300, hub=None, files=None, preset="tiny", max_steps=100, batch_size=4,
            grad_accum=1, seq_len=32, lr=2e-3, device="cpu", gpus=1, compile=False)


def start(client, **overrides):
    s = {**TINY, **overrides}
    return client.predict(*s.values(), api_name="/train_start")


def curve_points(figure) -> list[tuple[int, float, str]]:
    """(step, loss, "train" / "val") of every point of the monitor's loss curves."""
    data = json.loads(figure["plot"])["data"]
    kinds = {"train": "train", "validation": "val"}
    return [(x, y, kinds[t["name"]]) for t in data if t.get("name") in kinds for x, y in zip(t["x"], t["y"])]


def poll_metrics(client, name, until, timeout=90):
    """Poll /train_metrics until until(points, status); points: (step, loss, curve) of the loss curves."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        figure, status, stats, sample = client.predict(name, False, api_name="/train_metrics")
        rows = curve_points(figure)
        if until(rows, status):
            return rows, status, stats, sample
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for metrics of {name}: {status!r}")


def test_train_start_metrics_stop_and_use(client, server):
    runs_dir = server.trainer.runs_dir
    dd, status, table = start(client)
    name = dd["value"]
    try:
        assert name.startswith("tiny-") and name in status and table["data"][0][0] == name
        with pytest.raises(Exception, match="already running; stop it first"):
            start(client)

        rows, status, stats, _ = poll_metrics(client, name, lambda r, s: any(c == "train" for _, _, c in r))
        first = len(rows)
        rows, status, stats, sample = poll_metrics(
            client, name, lambda r, s: len(r) > first and sum(c == "val" for _, _, c in r) >= 2)
        assert "running" in status and "tokens/s" in stats and "MFU" in stats and "ETA" in stats
        assert sample.startswith("**step 0** · val loss") and sample.count("Once upon a time") >= 2, \
            "the samples of the evaluations so far, from step 0 on"
        assert all(isinstance(step, int) and loss > 0 for step, loss, _ in rows)
        assert [s for s, _, c in rows if c == "train"][:3] == [1, 2, 3], "every one of the first steps"
        assert rows[[c for *_, c in rows].index("val")][0] == 0, "an evaluation at step 0"

        _, status, _, _ = client.predict("", api_name="/train_metrics")
        assert status.startswith(f"**{name}**: running"), "without a name the monitor shows the live run"
        restarted = app.build(runs_dir=runs_dir, data_dir=server.trainer.data_dir)  # a UI started again
        assert restarted.trainer.pick(None).name == name, "a restarted UI finds the live run again"

        status, table = client.predict(name, api_name="/train_stop")
        assert status.startswith("stopped")
        stopped_at = runs.get(name, runs_dir).status()
        assert stopped_at["state"] == "stopped" and not stopped_at["alive"]
        with pytest.raises(Exception, match="is not running"):
            client.predict(name, api_name="/train_stop")

        listed = dict(models.picker_choices(runs_dir))
        assert f"Run {name}: best, val loss {stopped_at['best_val_loss']:.3f}" in listed
        assert any(label.startswith(f"Run {name}: latest (step_") for label in listed), "the picker lists the run"

        md, *_ = client.predict(name, api_name="/train_use_checkpoint")
        assert f"run {name}" in md and str(runs_dir) not in md, "the checkpoint is in this session's model bar"
        assert f"run {name}" in generate(client)[1], "and its stories come from it"

        dd, status, _ = client.predict(name, None, api_name="/train_resume")
        assert dd["value"] == name and "resuming" in status
        poll_metrics(client, name, lambda r, s: "running" in s and max(st for st, _, _ in r) > stopped_at["step"])
        status, _ = client.predict(name, api_name="/train_stop")
        assert status.startswith("stopped")
    finally:
        kill_runs(runs_dir)


def test_uploaded_files_reach_data_preparation(client, tmp_path):
    from gradio_client import handle_file

    one = tmp_path / "one_story.txt"
    one.write_text("Tom had a red ball. He liked to play with it every day.\n")
    with pytest.raises(Exception, match="one_story.txt contains 1 stories; at least 2 are needed"):
        start(client, data_source="files", files=[handle_file(str(one))])
    csv = tmp_path / "stories.csv"
    csv.write_text("text\nOnce upon a time\n")
    with pytest.raises(Exception, match="stories.csv is not a .txt, .jsonl or .parquet file"):
        start(client, data_source="files", files=[handle_file(str(csv))])


def test_training_on_a_space_needs_the_owner(client, server, monkeypatch):
    monkeypatch.setenv("SYSTEM", "spaces")   # a Space as Gradio decides it (issue 22 item 2)
    monkeypatch.setenv("SPACE_ID", "someone/gemma3-tinystories")
    monkeypatch.setenv("SPACE_AUTHOR_NAME", "someone")
    with pytest.raises(Exception, match="only its owner \\(someone\\) or allowed users may train: sign in"):
        start(client)
    with pytest.raises(Exception, match="only its owner"):
        client.predict("", api_name="/train_stop")
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    with pytest.raises(Exception, match="Training needs a dedicated GPU"):
        start(client)
    assert not runs.list_runs(server.trainer.runs_dir) or runs.active(server.trainer.runs_dir) is None


SPACE = {"SYSTEM": "spaces", "SPACE_ID": "ann/app"}   # a Space as Gradio decides it (issue 22 item 2)


@pytest.mark.parametrize("env, user, allowed", [
    ({}, None, True),                                                         # locally: anyone at the keyboard
    ({**SPACE, "SPACE_AUTHOR_NAME": "ann"}, None, False),       # a Space: signed-out visitors watch
    ({**SPACE, "SPACE_AUTHOR_NAME": "ann"}, "Ann", True),       # the owner
    ({**SPACE, "SPACE_AUTHOR_NAME": "ann"}, "bob", False),
    ({**SPACE, "TRAIN_ALLOWED_USERS": "carl, bob"}, "bob", True),  # the allow-list secret
    ({**SPACE, "SPACES_ZERO_GPU": "1"}, "ann", False),         # ZeroGPU: never
])
def test_who_may_train(env, user, allowed):
    from webapp import guard

    ok, why = guard.training_permission(user, env)
    assert ok is allowed and why.endswith(".")


def test_generation_is_wrapped_for_zero_gpu_only_when_spaces_is_there(monkeypatch):
    from webapp import guard

    def fn():
        return 1

    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    assert guard.gpu(fn) is fn  # the `spaces` package is not installed here: the import is guarded


@pytest.mark.parametrize("overrides, message", [
    (dict(preset="huge"), "Preset must be one of tiny, demo, 270m"),
    (dict(max_steps=0), "Max steps must be between 1 and"),
    (dict(batch_size=-4), "Batch size must be between 1 and"),
    (dict(seq_len=100_000), "Sequence length must be between 8 and 512"),
    (dict(lr="fast"), "Learning rate must be a number"),
    (dict(device="tpu"), "Device must be one of auto, cuda, cpu"),
    (dict(device="cuda", gpus=2), "2 GPUs were asked for"),
    (dict(compile="yes"), "torch.compile is on or off"),
    (dict(stories=10), "Built-in stories must be between 100 and"),
    (dict(data_source="ftp"), "Data source must be one of builtin, hub, files"),
    (dict(data_source="files"), "No files uploaded"),
    (dict(data_source="hub", hub=""), "dataset id is empty"),
    (dict(data_source="hub", hub="../../etc"), "is not a Hugging Face dataset id"),
    (dict(data_source="hub", hub="nobody/no-such-dataset"), "Could not load the Hugging Face dataset"),
])
def test_bad_training_inputs_get_one_clear_sentence(client, server, overrides, message):
    with pytest.raises(Exception, match=message):
        start(client, **overrides)
    assert not runs.list_runs(server.trainer.runs_dir) or runs.active(server.trainer.runs_dir) is None


@pytest.mark.parametrize("endpoint, args, message", [
    ("/train_metrics", ("../../etc",), "is not allowed"),
    ("/train_stop", ("no-such-run",), "No run named 'no-such-run'"),
    ("/train_resume", ("no-such-run", 10), "No run named 'no-such-run'"),
    ("/train_use_checkpoint", ("no-such-run",), "No run named 'no-such-run'"),
])
def test_bad_run_names_get_one_clear_sentence(client, endpoint, args, message):
    with pytest.raises(Exception, match=message):
        client.predict(*args, api_name=endpoint)


def test_server_still_serves_after_all_that(client):
    text, info = generate(client, "One day", 8)
    assert text and "8 tokens" in info


def test_story_tokens_carry_the_models_probabilities():
    """gemma3.stream's stats give the ids; each piece's probability is the model's own (a forward of its own),
    the pieces join to the story, and a story that fills the context is still scored."""
    import torch

    import gemma3
    cache = models.ModelCache(*models.load_source("random:tiny"))
    loaded = cache.get(None)
    model, tok = loaded.model, loaded.tokenizer
    for n in (8, model.config.context):   # the second runs into the context's end
        stats: dict = {}
        text = gemma3.generate(model, tok, "Once upon a time", n, 1.0, seed=3, stats=stats)
        pieces = gen.token_pieces(loaded, stats)
        assert "".join(t for t, _ in pieces) == text and len(stats["new_ids"]) == stats["new_tokens"]
        ids, new = stats["ids"], stats["new_ids"]
        with torch.no_grad():
            probs = model(torch.tensor([ids + new[:1]]))[0, len(ids) - 1].softmax(-1)
        if len(tok.decode(new[:1]).rstrip("\ufffd")) > 0:
            assert pieces[0][1] == pytest.approx(float(probs[new[0]]), rel=1e-4)
    shown = gen.story_html("Once <b>", text, pieces)
    assert gen.story_text(shown) == "Once <b>" + text and gen.continuation_text(shown) == text
    assert gen.text_before({"prompt": "Once", "pieces": ["a", "b"]}, 1) == "Oncea"
    with pytest.raises(ValueError, match="not part of the last story"):
        gen.text_before({"prompt": "Once", "pieces": ["a"]}, 5)


def test_the_readme_names_every_public_endpoint(server, client):
    """The README's endpoint table lists every endpoint a client can call, and only those."""
    import re

    from conftest import ROOT

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = [line.split("|")[1] for line in readme.splitlines() if line.startswith("| `/")]
    documented = {name for cell in table for name in re.findall(r"`/(\w+)`", cell)}
    public = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert documented == {e.lstrip("/") for e in public}
