"""Experiment trackers: each gets exactly the numbers metrics.jsonl gets, read back with the tracker's own
local storage (trackio's SQLite file, TensorBoard's event files, W&B's offline run file), across a resume;
a missing package or a bad name is one sentence before training; trackers are closed however a run ends."""

import importlib.util
import json
import os
import sqlite3
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from training import TrainConfig, train
from training import trackers as trackers_module
from training import trainer as train_module
from training.data import prepare

ROOT = Path(__file__).resolve().parent.parent
SMALL = dict(preset="tiny", batch_size=4, seq_len=32, eval_every=3, eval_windows=4, ckpt_every=3, log_every=1,
             sample_tokens=4, snapshot_mb=0)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "builtin"
    prepare("builtin", out, builtin_stories=1000, progress=False)
    return out


def expected(run: Path) -> dict:
    """{(tag, step): value} for every number metrics.jsonl holds."""
    out = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        for key, value in r.items():
            if key not in ("kind", "step", "time") and isinstance(value, (int, float)):
                out[(f"{r['kind']}/{key}", r["step"])] = value
    return out


# ---- each tracker's own storage, read back ------------------------------------------------------

def read_trackio(run: Path, home: Path) -> tuple[dict, set]:
    with sqlite3.connect(home / "gemma3-tinystories.db") as db:
        rows = db.execute("SELECT run_id, run_name, step, metrics FROM metrics").fetchall()
    got = {}
    for run_id, name, step, metrics in rows:
        assert name == run.name
        for key, value in json.loads(metrics).items():
            assert (key, step) not in got, f"{key} logged twice at step {step}"
            got[(key, step)] = value
    return got, {r[0] for r in rows}


def read_tensorboard(run: Path, home: Path) -> tuple[dict, set]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    got = {}
    for tag in events.Tags()["scalars"]:
        for e in events.Scalars(tag):
            assert (tag, e.step) not in got, f"{tag} logged twice at step {e.step}"
            got[(tag, e.step)] = e.value
    samples = events.Tags()["tensors"]
    assert "eval/sample/text_summary" in samples  # the samples arrive as text
    return got, {"one"}


def _wandb_records(path: Path) -> list[bytes]:
    """The records of a W&B run file: LevelDB's log format (32 KiB blocks of chunks with 7-byte headers,
    kinds full/first/middle/last) after a 7-byte ':W&B' file header."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, records, pending = 7, [], b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:  # zero padding to the end of the block
            pos += left
            continue
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            records.append(pending)
            pending = b""
    return records


def read_wandb(run: Path, home: Path) -> tuple[dict, set]:
    from wandb.proto import wandb_internal_pb2

    got, ids, exits = {}, set(), []
    for file in sorted((run / "wandb").glob("offline-run-*/run-*.wandb")):
        for data in _wandb_records(file):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(data)
            kind = record.WhichOneof("record_type")
            if kind == "run":
                ids.add(record.run.run_id)
                assert record.run.display_name == run.name and record.run.project == "gemma3-tinystories"
            elif kind == "exit":
                exits.append(record.exit.exit_code)
            elif kind == "history":
                items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
                for key, value in items.items():
                    if not key.startswith("_") and not isinstance(value, str):
                        got[(key, items["_step"])] = value
    assert exits and set(exits) == {0}
    return got, ids


READERS = {"trackio": read_trackio, "tensorboard": read_tensorboard, "wandb": read_wandb}


def _cli(data, run, home, trackers, *extra):
    env = {**os.environ, "TRACKIO_DIR": str(home), "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in SMALL.items()]
    cmd = [sys.executable, "-m", "training", "train", "--data", str(data), "--out", str(run),
           *[f"--tracker={t}" for t in trackers], *flags, *extra]
    done = subprocess.run(cmd, env=env, cwd=home.parent, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def test_every_tracker_gets_every_number_metrics_jsonl_gets_across_a_resume(data, tmp_path):
    """One run sending to every installed tracker at once, then resumed: each tracker holds one run with every
    number of metrics.jsonl."""
    installed = [t for t in READERS if importlib.util.find_spec(trackers_module.PACKAGES[t]) is not None]
    if not installed:
        pytest.skip("no tracker is installed (pip install '.[trackers]')")
    run, home = tmp_path / "runs" / "story-run", tmp_path / "tracker-home"
    _cli(data, run, home, installed, "--max-steps=3")
    _cli(data, run, home, installed, "--max-steps=6", "--resume")  # continues each tracker's run
    want = expected(run)
    assert {step for _, step in want} == set(range(7))
    for tracker in installed:
        got, runs = READERS[tracker](run, home)
        assert len(runs) == 1, (tracker, runs)  # one tracker run, resumed, not two
        assert set(got) == set(want), tracker
        for key, value in want.items():
            assert got[key] == pytest.approx(value, rel=1e-6), (tracker, key)  # TensorBoard keeps float32


def test_a_missing_package_is_one_sentence_before_training(data, tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(trackers_module.importlib.util, "find_spec",
                        lambda name, *a: None if name == "wandb" else real(name, *a))  # as if not installed
    cfg = TrainConfig.for_preset(**SMALL, data=str(data), out=str(tmp_path / "run"), max_steps=3,
                                 trackers=["tensorboard", "wandb"])
    assert train(cfg) == 1
    err = capsys.readouterr().err  # a failure is said on stderr
    assert err.strip() == "failed: The wandb tracker needs its package: pip install wandb."
    assert not (tmp_path / "run").exists()  # a start that failed in a new folder leaves nothing (issue 21 item 8)


def test_a_bad_tracker_name_is_one_sentence_and_the_app_passes_trackers_on(data, capsys):
    import argparse

    from training import runs
    from training.__main__ import _add_train_args, config_from_args, main

    assert main(["train", "--data", str(data), "--tracker", "mlflow"]) == 2
    assert capsys.readouterr().err == ("error: --tracker: Experiment trackers must be among trackio, tensorboard, "
                                       "wandb, not 'mlflow'.\n")
    cfg = TrainConfig.for_preset(**SMALL, data=str(data), trackers=["wandb", "tensorboard", "wandb"])
    assert cfg.trackers == ["wandb", "tensorboard"]
    parser = argparse.ArgumentParser()
    _add_train_args(parser)
    assert config_from_args(parser.parse_args(runs._flags(cfg))).to_dict() == cfg.to_dict()


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard is not installed")
@pytest.mark.parametrize("ending", ["finished", "stopped", "failed"])
def test_trackers_are_closed_however_the_run_ends(ending, data, tmp_path, monkeypatch):
    closed = []
    real_close = trackers_module.TensorBoard.close
    monkeypatch.setattr(trackers_module.TensorBoard, "close",
                        lambda self, ok: closed.append(ok) or real_close(self, ok))
    step = train_module.Trainer.train_step

    def train_step(self):
        if self.step == 2 and ending == "failed":
            raise OSError("No space left on device")
        if self.step == 2 and ending == "stopped":
            self.stop_requested = "stopped by signal SIGTERM"
        return step(self)
    monkeypatch.setattr(train_module.Trainer, "train_step", train_step)
    cfg = TrainConfig.for_preset(**SMALL, data=str(data), out=str(tmp_path / "run"), max_steps=6,
                                 trackers=["tensorboard"])
    train(cfg)
    assert json.loads((tmp_path / "run" / "status.json").read_text())["state"] == ending
    assert closed == [ending != "failed"]


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard is not installed")
def test_a_tracker_that_breaks_mid_run_is_dropped_and_the_run_goes_on(data, tmp_path, monkeypatch, capsys):
    def broken(self, step, scalars, texts):
        if step >= 2:
            raise ConnectionError("the tracker's server went away")
    monkeypatch.setattr(trackers_module.TensorBoard, "log", broken)
    cfg = TrainConfig.for_preset(**SMALL, data=str(data), out=str(tmp_path / "run"), max_steps=6,
                                 trackers=["tensorboard"])
    assert train(cfg) == 0
    err = capsys.readouterr().err
    assert err.count("The tensorboard tracker failed (the tracker's server went away) and gets no more metrics") == 1
    assert {step for _, step in expected(tmp_path / "run")} == set(range(7))  # metrics.jsonl has them all
