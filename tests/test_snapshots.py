"""Snapshots for watching a model learn: where they are taken, what they hold, the disk budget, and a
training curve that starts at the first step."""

import json
import os
import math
from pathlib import Path

import pytest
import torch

import gemma3
from training import TrainConfig, snapshots, train
from training.data import eval_windows, load_split, prepare
from training.trainer import clean, discard

SMALL = dict(preset="tiny", batch_size=4, seq_len=32, eval_windows=8, sample_tokens=4, log_every=20,
             ckpt_every=100)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "builtin"
    prepare("builtin", out, builtin_stories=2000, progress=False)
    return out


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "run"
    assert train(TrainConfig.for_preset(**SMALL, data=str(data), out=str(run), max_steps=60, eval_every=25)) == 0
    return run


def records(run: Path, kind: str) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == kind]


def test_log_spaced_steps():
    assert [s for s in range(0, 1001) if snapshots.log_spaced(s)] == [0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]


def test_a_run_snapshots_the_log_spaced_and_evaluated_steps(run):
    steps = [snapshots.read(p)["step"] for p in snapshots.snapshots(run)]
    assert steps == [0, 1, 2, 5, 10, 20, 25, 50, 60]
    evals = {r["step"]: r["val_loss"] for r in records(run, "eval")}
    assert sorted(evals) == [0, 25, 50, 60]
    for p in snapshots.snapshots(run):
        info = snapshots.read(p)
        assert info["val_loss"] == evals.get(info["step"])
        assert info["tokens"] == info["step"] * 4 * 32
        assert (info["train_loss"] is None) == (info["step"] == 0)


def test_each_snapshot_loads_and_gives_its_recorded_loss(run, data):
    x, y = eval_windows(load_split(str(data), "val", 50257), 8, 32)
    x, y = x[:4], y[:4]
    losses = []
    for p in snapshots.snapshots(run):
        model, _ = gemma3.load_model(p, device="cpu", dtype=torch.float32)
        with torch.no_grad():
            loss = model(x, targets=y).item()
        assert loss == pytest.approx(snapshots.read(p)["batch_loss"], rel=1e-5), p.name
        losses.append(loss)
    assert losses[-1] < losses[0] - 2, losses  # the model learned between the first and the last
    assert snapshots.folder_bytes(snapshots.snapshots(run)[0]) < 0.6 * 4 * gemma3.Gemma3(
        gemma3.Gemma3Config.from_preset("tiny")).num_params()  # bf16: about half the fp32 weights


def test_the_curve_starts_at_the_initial_loss_and_the_first_steps(run):
    step0 = records(run, "eval")[0]
    assert step0["step"] == 0 and abs(step0["val_loss"] - math.log(50257)) < 0.5
    steps = [r["step"] for r in records(run, "train")]
    assert steps[:10] == list(range(1, 11)) and steps[10:] == [20, 40, 60]


def _fake_snapshot(run: Path, step: int, size: int):
    folder = run / "snapshots" / f"step_{step:07d}"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"\0" * size)
    (folder / snapshots.INFO).write_text(json.dumps({"step": step}))


def test_pruning_keeps_the_budget_least_useful_first(tmp_path):
    for step in (0, 1, 2, 5, 10, 20, 25, 50, 75, 100, 125):
        _fake_snapshot(tmp_path, step, 1000)
    left = lambda: [snapshots.read(p)["step"] for p in snapshots.snapshots(tmp_path)]  # noqa: E731
    one = snapshots.folder_bytes(snapshots.snapshots(tmp_path)[-1])
    snapshots.prune(tmp_path, 9 * one, discard)  # evaluation-only steps go first, oldest first
    assert left() == [0, 1, 2, 5, 10, 20, 50, 100, 125]
    snapshots.prune(tmp_path, 5 * one, discard)  # then the 2s and 5s
    assert left() == [0, 1, 10, 100, 125]
    snapshots.prune(tmp_path, 0, discard)  # step 0 and the newest stay whatever the budget
    assert left() == [0, 125]


def test_a_run_stays_within_its_snapshot_budget(data, tmp_path):
    run = tmp_path / "run"
    size = snapshots.folder_bytes(next(iter(snapshots.snapshots(_one_step(data, tmp_path / "probe")))))
    budget_mb = 4 * size / 2 ** 20
    cfg = TrainConfig.for_preset(**SMALL, data=str(data), out=str(run), max_steps=60, eval_every=25,
                                 snapshot_mb=max(1, math.ceil(budget_mb)))
    assert train(cfg) == 0
    kept = snapshots.snapshots(run)
    assert sum(snapshots.folder_bytes(p) for p in kept) <= cfg.snapshot_mb * 2 ** 20
    assert snapshots.read(kept[0])["step"] == 0 and snapshots.read(kept[-1])["step"] == 60


def _one_step(data, run):
    assert train(TrainConfig.for_preset(**SMALL, data=str(data), out=str(run), max_steps=1, eval_every=100)) == 0
    return run


def test_snapshots_off_and_a_half_written_one_cleaned(data, tmp_path):
    run = tmp_path / "run"
    assert train(TrainConfig.for_preset(**SMALL, data=str(data), out=str(run), max_steps=3, snapshot_mb=0)) == 0
    assert snapshots.snapshots(run) == []
    half = run / "snapshots" / "step_0000007"
    half.mkdir(parents=True)
    (half / "model.safetensors").write_bytes(b"half")  # no snapshot.json: killed while writing
    (run / "snapshots" / ".step_0000008.abc").mkdir()
    assert sorted(clean(run)) == ["snapshots/.step_0000008.abc", "snapshots/step_0000007"]
    assert not any((run / "snapshots").iterdir())


def test_the_model_card_states_the_weights_step_the_device_and_the_exact_command(run, tmp_path):
    from training.card import export

    evals = records(run, "eval")
    best = min(evals, key=lambda e: e["val_loss"])["step"]
    card = (export(run, tmp_path / "model", which="best") / "README.md").read_text()
    assert f"- Training: {best} steps of 4 x 32 tokens" in card
    assert f"({os.cpu_count()}-core CPU)" in card
    command = next(line for line in card.splitlines() if line.startswith("python -m training train"))
    for flag in ("--batch-size 4", "--seq-len 32", "--max-steps 60", "--eval-every 25", "--log-every 20"):
        assert f" {flag} " in command + " ", flag
    assert "--checkpoint best" in card
