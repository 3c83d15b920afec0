"""The Train tab's words and pictures for a run, from its folder (no app needed)."""

import re
from pathlib import Path

import pytest

from training import runs
from webapp.train import state_words


@pytest.mark.parametrize("status, words", [
    (dict(state="stopped", reason="stopped by signal SIGTERM", step=120, max_steps=300),
     "stopped by you at step 120 of 300; Resume continues it"),
    (dict(state="stopped", reason="stop requested (STOP file)", step=5, max_steps=300),
     "stopped by you at step 5 of 300; Resume continues it"),
    (dict(state="running", step=40, max_steps=300), "running: step 40 of 300"),
    (dict(state="starting", step=0, max_steps=300), "starting …"),
    (dict(state="finished", reason="reached 300 steps", step=300, max_steps=300), "finished: all 300 steps"),
    (dict(state="failed", reason="Out of GPU memory with micro-batch 32 x 512: use a smaller --batch-size.",
          step=7, max_steps=300),
     "failed at step 7: Out of GPU memory with micro-batch 32 x 512: use a smaller --batch-size."),
    (dict(state="failed", reason=runs.DIED, step=12, max_steps=300),
     "interrupted at step 12 of 300 (its processes ended, e.g. the app restarted); Resume starts it again "
     "from step 0 (it has no checkpoint)"),
])
def test_a_run_state_reads_as_people_say_it(status, words):
    assert state_words(status) == words


def test_an_interrupted_run_names_its_last_checkpoint():
    st = dict(state="failed", reason=runs.DIED, step=12, max_steps=300)
    assert state_words(st, Path("runs/x/checkpoints/step_0000010")).endswith(
        "Resume continues it from its last checkpoint, step 10")
    assert "step 10" in state_words(st, Path("runs/x/checkpoints/step_0000010"))


def test_the_bundled_model_ships_its_training_curve():
    from webapp.ui.about import demo_training

    fig = demo_training()
    by_name = {t.name: t for t in fig.data}
    assert len(by_name["train"].x) > 20 and by_name["validation"].y[-1] < 0.2  # its card: val loss 0.185
    assert by_name["learning rate"].y[0] < by_name["learning rate"].y[10]  # the warm-up


def test_curves_show_whole_steps_and_the_random_guess():
    from training import TrainConfig
    from training.trainer import lr_at
    from webapp.curves import run_figure, sample_timeline

    train = [{"step": s, "loss": 10.8 - s / 10} for s in (1, 2, 3, 10, 20)]
    evals = [{"step": 0, "val_loss": 10.83, "sample": "Once upon a time <b>x</b> *y*"}]
    fig = run_figure(train, evals, TrainConfig.for_preset("tiny", max_steps=20), 50257)
    assert fig.layout.xaxis2.tickformat == ",d" and "ln 50,257 = 10.82" in fig.layout.annotations[0].text
    assert list(fig.data[1].x) == [0]
    # a run resumed to more steps: the rate drawn is the one its steps used, then the new plan (not the new plan
    # drawn over the old steps as if it had always been so)
    short, long = TrainConfig.for_preset("tiny", max_steps=20), TrainConfig.for_preset("tiny", max_steps=40)
    used = [{"step": s, "loss": 5.0, "lr": lr_at(s - 1, short if s <= 12 else long)} for s in range(2, 24, 2)]
    lr = {t.name: t for t in run_figure(used, [], long, 50257).data}["learning rate"]
    assert [(x, y) for x, y in zip(lr.x, lr.y) if x <= 22] == [(r["step"], r["lr"]) for r in used]
    assert min(lr.x) == 2 and max(lr.x) > 22   # then the plan, on to the right edge
    log = run_figure(train, evals, None, 50257, log_x=True)
    assert list(log.data[1].x) == [] and "step 0 not shown" in log.layout.xaxis2.title.text
    timeline = sample_timeline(evals)
    assert timeline.startswith("**step 0** · val loss 10.83") and "\\<b\\>" in timeline and "\\*y\\*" in timeline


def test_an_estimate_times_real_steps_and_says_when_it_scaled():
    from training import TrainConfig
    from training.probe import estimate

    small = estimate(TrainConfig.for_preset("tiny", max_steps=10, batch_size=4, seq_len=32, device="cpu"))
    assert small.seconds_per_step > 0 and small.total_seconds == 10 * small.seconds_per_step
    assert small.scaled_from is None and "for 10 steps on this" in small.words(10)
    big = estimate(TrainConfig.for_preset("tiny", max_steps=10, batch_size=256, seq_len=64, device="cpu"), steps=1)
    assert big.scaled_from == 64 and "probed at batch 64" in big.words(10)


def test_a_run_downloads_as_gguf_and_a_push_offline_says_so(tmp_path):
    import torch

    import gemma3
    from training import TrainConfig, train
    from training.data import prepare
    from webapp import train as tr
    from webapp.inputs import UserError

    data = tmp_path / "data" / "builtin"
    prepare("builtin", data, builtin_stories=300, progress=False)
    runs_dir = tmp_path / "runs"
    cfg = TrainConfig.for_preset("tiny", data=str(data), out=str(runs_dir / "r"), max_steps=3, batch_size=2,
                                 seq_len=32, eval_windows=2, sample_tokens=2, snapshot_mb=0)
    assert train(cfg) == 0
    trainer = tr.RunDesk(runs_dir, tmp_path / "data")
    path = tr.export_gguf(trainer, "r", "f32")
    assert path.name == "r-f32.gguf"
    ours, _ = gemma3.load_model(trainer.checkpoint("r"), device="cpu", dtype=torch.float32)
    theirs, _ = gemma3.load_model(path, device="cpu", dtype=torch.float32)
    ids = torch.tensor([[1, 2, 3, 4]])
    torch.testing.assert_close(theirs(ids), ours(ids))
    with pytest.raises(UserError, match="HF_HUB_OFFLINE is set, and pushing to the Hugging Face Hub needs the network"):
        tr.push_to_hub(trainer, "r", "someone/r", False)  # the tests run with HF_HUB_OFFLINE=1


def test_the_loss_axis_is_logarithmic_and_both_axes_follow_the_data():
    """After two minutes a run's curve fills the plot: log loss over the data's range, steps up to those done,
    the planned end in the axis title (a dashed line once in view); step 0's quick evaluation says so."""
    import math

    from training import TrainConfig
    from training.trainer import lr_at
    from webapp.curves import run_figure, sample_timeline

    cfg = TrainConfig.for_preset("demo")  # 1,000 steps planned
    train = [{"step": s, "loss": 10.8 - s / 10} for s in range(1, 41)]
    evals = [{"step": 0, "val_loss": 10.86, "quick": True, "windows": 8, "sample": "Once"}]
    fig = run_figure(train, evals, cfg, 50257)
    y = fig.layout.yaxis
    assert y.type == "log" and 10 ** y.range[0] > 5 and 10 ** y.range[0] < 6.8 and 10 ** y.range[1] < 13
    assert all(10 ** y.range[0] <= t <= 10 ** y.range[1] for t in y.tickvals) and len(y.tickvals) >= 3
    assert fig.layout.xaxis2.range[1] < 45, "x runs to the steps done, not to the 1,000 planned"
    assert "40 of 1,000 planned" in fig.layout.xaxis2.title.text
    assert not [t for t in fig.data if t.hovertemplate and "planned end" in t.hovertemplate]
    val = next(t for t in fig.data if t.name == "validation")
    assert val.marker.symbol[0] == "circle-open" and "quick: 8 of 64 windows" in val.customdata[0]
    assert "(quick: 8 windows)" in sample_timeline(evals)
    done = run_figure([{"step": s, "loss": 2.0 / s + 0.5} for s in range(1, 1001, 10)] + [{"step": 1000, "loss": .5}],
                      [], cfg, 50257)
    assert [t for t in done.data if t.hovertemplate and "planned end: step 1,000" in t.hovertemplate], \
        "the dashed end line, once the end is in view"
    assert 10 ** done.layout.yaxis.range[0] < 0.5 and math.isclose(
        10 ** done.layout.yaxis.range[1], math.log(50257) * 1.12, rel_tol=1e-6), "down to the lowest loss"


@pytest.mark.parametrize("record, words", [
    (dict(eta_s=700, eta_low_s=400, eta_high_s=1300), "ETA 7–22 min"),   # few steps timed: a range
    (dict(eta_s=700, eta_low_s=650, eta_high_s=760), "ETA about 12 min"),
    (dict(eta_s=50, eta_low_s=45, eta_high_s=55), "ETA about 50 s"),
    (dict(eta_s=7200), "ETA about 2 h"),                                   # a run logged before the range
    (dict(loss=3.0), ""),
    (dict(eta_s=0.0, eta_low_s=0.0, eta_high_s=0.0), ""),                # the last step: nothing left to wait for
])
def test_the_eta_reads_as_a_range_then_as_about(record, words):
    from webapp.train import eta_words

    assert eta_words(record) == words


def test_while_a_start_prepares_its_data_the_monitor_says_so(tmp_path):
    from webapp.train import RunDesk

    trainer = RunDesk(tmp_path / "runs", tmp_path / "data")
    assert trainer.metrics()["status"].startswith("No training runs yet")
    trainer.pending = "preparing the training data for a new run …"
    assert trainer.metrics()["status"] == "Preparing the training data for a new run …"


def test_every_preset_says_its_measured_time_on_the_cpu_and_on_a_gpu():
    from training.config import TRAIN_PRESETS
    from webapp.train import preset_times

    lines = preset_times().splitlines()[2:]
    assert [line.split("**")[1] for line in lines] == list(TRAIN_PRESETS)
    for line in lines:
        assert "2-core CPU: " in line and re.search(r"\d+(\.\d+)? (s|min|h|days)", line), line
        assert "not measured on a GPU" in line or re.search(r"H200: .*\d+(\.\d+)? (s|min|h)", line), line


def test_an_offline_hub_dataset_advises_the_apps_own_choices_not_command_line_flags(tmp_path):
    """A new user's report: Start on "Hugging Face dataset" offline ended in "(--source builtin)"; in the app the
    advice names the Training data choices (the command line keeps its flags: test_data)."""
    from training.data import DataError
    from webapp.train import RunDesk

    with pytest.raises(DataError) as e:   # the tests run with HF_HUB_OFFLINE=1
        RunDesk(tmp_path / "runs", tmp_path / "data").prepare("hub", hub_id="roneneldan/TinyStories")
    msg = str(e.value)
    assert msg.startswith("Could not load the Hugging Face dataset 'roneneldan/TinyStories' (")
    assert msg.endswith('; choose "Uploaded files" (your own stories) or "Built-in stories (offline)" under '
                        'Training data.'), msg
    assert "--source" not in msg and "\n" not in msg


def test_explore_this_run_says_why_when_there_is_no_run():
    """Stop, Resume and "Use this checkpoint" say in a sentence why they cannot act; so does "Explore this run" (it
    said "Run None has no snapshots yet" on a fresh home)."""
    from webapp.train import no_snapshots

    assert no_snapshots(None) == no_snapshots("") == \
        "There is no run to explore yet; start one, then explore its snapshots."
    assert no_snapshots("tiny-1") == "Run tiny-1 has no snapshots yet: they appear from its first step on."
