"""Run management (training/runs.py): background runs the UI can start, watch, stop, resume and find again.

The trainer runs as a real subprocess on the tiny preset; every test kills what it started."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from training import runs
from training.runs import RunError

from conftest import kill_run, poll

ROOT = Path(__file__).resolve().parent.parent
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # a shared 2-core machine: no oversubscription


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from training.data import prepare

    out = tmp_path_factory.mktemp("data") / "builtin"
    prepare("builtin", out, builtin_stories=300, progress=False)
    return out


def config(data, **overrides):
    return {"preset": "tiny", "data": str(data), "batch_size": 4, "seq_len": 32, "max_steps": 100_000,
            "log_every": 1, "ckpt_every": 4, "eval_every": 3, "eval_windows": 4, "sample_tokens": 4,
            "warmup_steps": 2, **overrides}


def new_metrics(run, offset, kind="train"):
    """Poll read_metrics from offset until a record of `kind` arrives; returns (those records, offset)."""
    got = []

    def step():
        nonlocal offset
        records, offset = run.read_metrics(offset)
        got.extend(r for r in records if r["kind"] == kind)
        return got

    poll(step, what=f"{kind} metrics of {run.name} (log: {run.log_tail(5)!r})")
    return got, offset


def dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_start_watch_stop_resume(data, tmp_path):
    runs_dir = tmp_path / "runs"
    run = runs.start(config(data), runs_dir, name="life", env=ENV)
    resumed = None
    try:
        assert run.status()["state"] in ("starting", "running")
        assert json.loads((runs_dir / ".active.lock").read_text())["run"] == "life"
        records, offset = new_metrics(run, 0)
        assert records[0]["step"] == 1 and records[0]["loss"] > 0
        saved = json.loads((run.path / "config.json").read_text())
        assert (saved["batch_size"], saved["seq_len"], saved["max_steps"]) == (4, 32, 100_000)

        with pytest.raises(RunError, match=r"A training run \(life\) is already running; stop it first"):
            runs.start(config(data), runs_dir, env=ENV)
        with pytest.raises(RunError, match="already running"):
            runs.resume("life", runs_dir, env=ENV)

        # a UI restart: nothing but the folder to go on
        again = runs.active(runs_dir)
        assert again is not None and again is not run and again.name == "life" and again.is_alive()
        first = again.read_metrics(0)[0][:2]  # the evaluation at step 0, then step 1
        assert [(r["kind"], r["step"]) for r in first] == [("eval", 0), ("train", 1)]
        [info] = runs.list_runs(runs_dir)
        assert (info.name, info.alive, info.preset) == ("life", True, "tiny")
        assert info.state in ("starting", "running")

        final = runs.stop(again, timeout=30)
        assert final["state"] == "stopped" and not final["alive"], final
        assert not run.is_alive()
        assert runs.active(runs_dir) is None and not (runs_dir / ".active.lock").exists()
        latest = run.latest_checkpoint()
        assert latest is not None and int(latest.name.split("_")[1]) == final["step"] >= 1
        stopped_at = final["step"]
        assert "stopped:" in run.log_tail(3)
        assert runs.stop(run)["state"] == "stopped"  # stopping twice is harmless

        _, offset = run.read_metrics(offset)  # everything logged before the stop
        resumed = runs.resume("life", runs_dir, env=ENV)
        assert resumed.name == "life" and runs.active(runs_dir) == resumed
        after, _ = new_metrics(resumed, offset)
        assert after[0]["step"] == stopped_at + 1
        assert "resumed from" in resumed.log_tail(50)

        final = runs.stop(resumed)
        assert final["state"] == "stopped" and final["step"] > stopped_at
        [info] = runs.list_runs(runs_dir)
        assert info.state == "stopped" and info.latest_checkpoint == resumed.latest_checkpoint()
        assert info.has_best and info.best_val_loss is not None and resumed.best() is not None
    finally:
        kill_run(run)
        if resumed is not None:
            kill_run(resumed)


def test_run_outlives_the_ui_and_a_killed_run_shows_failed(data, tmp_path):
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    lock = runs_dir / ".active.lock"
    lock.write_text(json.dumps({"pid": dead_pid(), "run": "ghost", "started": time.time() - 60}))
    # a UI process starts the run and exits; the stale lock does not block it
    ui = subprocess.run([sys.executable, "-c", "import json, sys; from training import runs; "
                         "print(runs.start(json.loads(sys.argv[1]), sys.argv[2], env=json.loads(sys.argv[3])).name)",
                         json.dumps(config(data)), str(runs_dir), json.dumps(ENV)],
                        cwd=ROOT, env={**os.environ, **ENV}, capture_output=True, text=True, timeout=60)
    try:
        assert ui.returncode == 0, ui.stderr
        name = ui.stdout.strip()
        assert name.startswith("tiny-")
        run = runs.active(runs_dir)  # the next UI: nothing but the folder to go on
        assert run is not None and run.name == name and run.is_alive()
        held = json.loads(lock.read_text())
        assert held["run"] == name and held["pid"] == run.pid
        poll(lambda: run.status()["state"] == "running", what="the run to start")

        os.killpg(run.pid, signal.SIGKILL)
        poll(lambda: not run.is_alive(), what="the killed run to end")
        assert json.loads((run.path / "status.json").read_text())["state"] == "running"  # what the file says
        [info] = runs.list_runs(runs_dir)
        assert (info.name, info.state, info.reason, info.alive) == (name, "failed", "process ended unexpectedly",
                                                                    False)
        assert lock.exists()  # no UI saw the run end...
        assert runs.active(runs_dir) is None and not lock.exists()  # ...so the next look cleans up
    finally:
        for info in runs.list_runs(runs_dir):
            kill_run(runs.Run(info.path))


def test_stop_while_starting_ends_the_run_at_once(data, tmp_path):
    runs_dir = tmp_path / "runs"
    run = runs.start(config(data), runs_dir, name="early", env=ENV)
    try:
        assert run.status()["state"] == "starting"
        t0 = time.monotonic()
        final = runs.stop(run, timeout=30)
        assert time.monotonic() - t0 < 10
        assert (final["state"], final["reason"], final["alive"]) == ("stopped", "stopped before training began", False)
        assert runs.active(runs_dir) is None and not (runs_dir / ".active.lock").exists()
        # nothing to resume from: the run starts again from step 0, and says so
        again = runs.resume(run, runs_dir, env=ENV)
        assert again.launch_info()["at_launch"]["step"] == 0
        records, _ = new_metrics(again, 0)
        assert records[0]["step"] == 1
        assert "has no complete checkpoint, so it starts from step 0" in again.log_tail(50)
        assert runs.stop(again)["state"] == "stopped"
    finally:
        kill_run(run)


def test_user_errors(data, tmp_path):
    runs_dir = tmp_path / "runs"
    for bad in ("../escape", "a/b", ".hidden", "", "x" * 200):
        with pytest.raises(RunError, match="not allowed"):
            runs.start(config(data), runs_dir, name=bad)
    with pytest.raises(RunError, match="no prepared data"):
        runs.start(config(tmp_path / "nowhere"), runs_dir)
    with pytest.raises(ValueError, match="Unknown training setting: learning_rate"):
        runs.start(config(data, learning_rate=1e-3), runs_dir)
    with pytest.raises(ValueError, match="Batch size must be a whole number, not 2.5"):
        runs.start(config(data, batch_size=2.5), runs_dir)
    with pytest.raises(RunError, match="GPUs"):
        runs.start(config(data, gpus=64), runs_dir)
    with pytest.raises(RunError, match="No run named 'nope'"):
        runs.resume("nope", runs_dir)
    assert not (runs_dir / ".active.lock").exists()

    # folders as the trainer leaves them, without a process
    cfg = {**config(data), "out": "x"}
    for name, state, step, ckpt in [("old", "finished", 5, True), ("fresh", "failed", 0, False)]:
        path = runs_dir / name
        (path / "checkpoints" / f"step_{step:07d}").mkdir(parents=True)
        (path / "checkpoints" / f"step_{step:07d}" / "trainer.pt").write_bytes(b"")  # alone: not complete
        if ckpt:
            for f in ("config.json", "model.safetensors"):  # a checkpoint from before complete.json
                (path / "checkpoints" / f"step_{step:07d}" / f).write_bytes(b"")
        (path / "config.json").write_text(json.dumps(cfg))
        (path / "status.json").write_text(json.dumps({"state": state, "reason": "r", "step": step, "max_steps": 5,
                                                      "pid": dead_pid(), "updated": time.time()}))
        time.sleep(0.02)  # distinct creation times
    with pytest.raises(RunError, match="already finished at step 5"):
        runs.resume("old", runs_dir)
    assert runs.get("fresh", runs_dir).latest_checkpoint() is None  # a resume would start from step 0
    assert [i.name for i in runs.list_runs(runs_dir)] == ["fresh", "old"]
    assert runs.get("old", runs_dir).latest_checkpoint().name == "step_0000005"
    assert runs.stop("old", runs_dir=runs_dir)["state"] == "finished"  # nothing to stop


def test_read_metrics_leaves_a_partial_line(tmp_path):
    run = runs.Run(tmp_path / "r")
    run.path.mkdir()
    assert run.read_metrics(0) == ([], 0)
    first = json.dumps({"kind": "train", "step": 1}) + "\n" + json.dumps({"kind": "train", "step": 2}) + "\n"
    (run.path / "metrics.jsonl").write_text(first + '{"kind": "ev')
    records, offset = run.read_metrics(0)
    assert [r["step"] for r in records] == [1, 2] and offset == len(first)
    assert run.read_metrics(offset) == ([], offset)
    with open(run.path / "metrics.jsonl", "a") as f:
        f.write('al", "step": 2}\n')
    records, offset2 = run.read_metrics(offset)
    assert records == [{"kind": "eval", "step": 2}] and offset2 == (run.path / "metrics.jsonl").stat().st_size


def test_log_tail(tmp_path):
    run = runs.Run(tmp_path / "r")
    run.path.mkdir()
    assert run.log_tail(5) == ""
    (run.path / "train.log").write_text("".join(f"line {i}\n" for i in range(100_000)))
    assert run.log_tail(3) == "line 99997\nline 99998\nline 99999"


HOLD = "import sys, time; from training.status import hold; hold(sys.argv[1]); print('held', flush=True); time.sleep(60)"


def test_a_run_lives_while_a_process_holds_its_lock(data, tmp_path):
    """A run lives while any process holds RUN/.lock (as each trainer process does): the claim on the runs
    folder counts only then, a kill -9 frees it, and no pid, recycled or not, can stand in for it."""
    runs_dir = tmp_path / "runs"
    other = runs_dir / "other"
    other.mkdir(parents=True)
    claim, status = runs_dir / ".active.lock", other / "status.json"
    started = time.time()
    status.write_text(json.dumps({"state": "running", "step": 3, "updated": started}))
    claim.write_text(json.dumps({"run": "other", "pid": os.getpid(), "started": started}))  # a live pid, no lock
    assert runs.active(runs_dir) is None and not claim.exists()
    assert runs.Run(other).status()["reason"] == "process ended unexpectedly"

    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(other)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        claim.write_text(json.dumps({"run": "other", "pid": 12345, "started": started}))
        assert runs.active(runs_dir).name == "other" and runs.Run(other).status()["state"] == "running"
        with pytest.raises(RunError, match=r"A training run \(other\) is already running; stop it first"):
            runs.start(config(data), runs_dir)
        assert [p.name for p in runs_dir.iterdir() if not p.name.startswith(".")] == ["other"]  # nothing launched

        # a run that wrote its final status is over, even while its process is still exiting
        status.write_text(json.dumps({"state": "finished", "step": 3, "updated": time.time()}))
        assert runs.active(runs_dir) is None and not claim.exists()
        assert runs.Run(other).status() == {"state": "finished", "step": 3, "updated": json.loads(
            status.read_text())["updated"], "alive": True}

        status.write_text(json.dumps({"state": "running", "step": 3, "updated": started}))
        claim.write_text(json.dumps({"run": "other", "pid": holder.pid, "started": started}))
        assert runs.active(runs_dir).name == "other"
        holder.kill()  # SIGKILL: nothing cleans up but the OS
        holder.wait()
        assert not runs.Run(other).is_alive()
        assert runs.active(runs_dir) is None and not claim.exists()
        assert runs.Run(other).status()["state"] == "failed"
    finally:
        holder.kill()
        holder.wait()


def test_flags_give_the_trainer_the_same_config(data):
    import argparse

    from training.__main__ import _add_train_args, config_from_args

    from training import TrainConfig

    cfg = TrainConfig.for_preset(**config(data, sample_prompt="-- a prompt, with = signs", compile=True, peak_tflops=12,
                                          model={"window": 16, "layer_types": ["sliding"] * 6 + ["full"]}))
    parser = argparse.ArgumentParser()
    _add_train_args(parser)
    parsed = config_from_args(parser.parse_args(runs._flags(cfg)))
    assert parsed.to_dict() == cfg.to_dict()
    assert isinstance(parsed.peak_tflops, float) and parsed.model["window"] == 16


# ---- what the Train tab shows: one sentence, no traceback, no server path ------------------------

def test_messages_show_no_server_path_and_only_characters_that_can_be_sent(tmp_path):
    from webapp.errors import UNICODE, public, show_paths_as, user_error

    show_paths_as(tmp_path / "runs", "runs")
    assert public(f"No run named 'x' in {tmp_path / 'runs'}.") == "No run named 'x' in runs."
    assert public(f"{tmp_path}/runs/a/checkpoints/step_1 is bad") == "runs/a/checkpoints/step_1 is bad"
    assert public(f"{tmp_path}/runs-old/x.bin is gone") == "x.bin is gone"  # not the runs folder: its last part
    assert public("/srv/secret/app/data/train.bin is corrupt.") == "train.bin is corrupt."
    for kept in ("see https://huggingface.co/datasets/a/b", "runs/tiny-1/best", "/etc is outside", "and/or 1/2",
                 "../../etc/passwd"):
        assert public(kept) == kept
    assert public("story\ud800.txt is not UTF-8").encode("utf-8")  # escaped: the answer can be encoded
    assert user_error(UnicodeEncodeError("utf-8", "a\ud800", 1, 2, "surrogates not allowed"), "t").message == UNICODE
    crash = user_error(RuntimeError(f"boom in {tmp_path}/deep/inside/x.py"), "t").message
    assert "Something went wrong" in crash and str(tmp_path) not in crash and "x.py" in crash


def test_a_call_with_missing_or_refused_inputs_gets_a_sentence():
    """Gradio checks the count of values, and files, before any handler runs; what it refuses reaches the
    caller as {"error": null} unless errors.guard_inputs turns it into a sentence."""
    import asyncio

    import gradio as gr

    from webapp.errors import guard_inputs

    with gr.Blocks() as demo:
        a, b, f = gr.Textbox(), gr.Textbox(), gr.File()
        gr.Button().click(lambda x, y: x, [a, b], a, api_name="pair")
        gr.Button().click(lambda x: None, [f], None, api_name="upload", preprocess=False)
    guard_inputs(guard_inputs(demo))  # twice: still one wrapper
    pair, upload = demo.fns.values()
    demo.validate_inputs(pair, ["x", "y"])
    with pytest.raises(gr.Error, match="The call to pair sent 1 value but it takes 2; send every input"):
        demo.validate_inputs(pair, ["x"])
    with pytest.raises(gr.Error, match="The call to upload sent a value its inputs cannot take"):
        asyncio.run(demo.preprocess_data(upload, [{"path": "/etc/passwd"}], None))


def test_the_train_tab_shows_a_failed_run_in_one_sentence(tmp_path):
    from training.status import write_status
    from webapp.train import RunDesk

    trainer = RunDesk(tmp_path / "runs", tmp_path / "data")
    run = tmp_path / "runs" / "broken"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"max_steps": 10}))
    write_status(run, "failed", f"{tmp_path / 'data' / 'builtin' / 'train.bin'} is corrupt: it holds token id "
                 "60,000, beyond the 50,257 ids of the tokenizer; prepare the data again.", step=0, max_steps=10)
    (run / "train.log").write_text('Traceback (most recent call last):\n  File "/srv/app/training/trainer.py", '
                                   'line 3, in fit\nIndexError: index out of range in self\n')
    status = trainer.metrics("broken")["status"]
    assert "failed at step 0: data/builtin/train.bin is corrupt: it holds token id 60,000" in status
    assert "runs/broken/train.log" in status
    assert str(tmp_path) not in status and "Traceback" not in status and "/srv" not in status


def test_an_upload_whose_name_is_not_text_gets_a_sentence(tmp_path):
    from webapp.inputs import UserError
    from webapp.train import RunDesk

    trainer = RunDesk(tmp_path / "runs", tmp_path / "data")
    with pytest.raises(UserError, match="holds characters that are not valid text; rename the file"):
        trainer.data_source("files", files=[str(tmp_path / "st\ud800ry.txt")])
    odd = tmp_path / os.fsdecode(b"caf\xe9.txt")  # a Latin-1 name: a surrogate-escaped str, a valid file
    odd.write_text("One story.\n\nAnother story.\n")
    source, out, _ = trainer.data_source("files", files=[str(odd)])
    assert source == [str(odd)] and out.name.startswith("upload-")
