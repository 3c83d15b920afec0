"""The trainer killed (SIGKILL) in the middle of its writes and at a random moment, resumed each time.

A short version of bench/kills.py (which kills a run 20 times): every kind of kill once, including the
very first checkpoint write (the run must then start again from step 0), a checkpoint being renamed
into place, an old one being pruned, best/ being replaced, and a kill at a random moment."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PLAN = [("write", 1), ("clean", 1), ("prune", 1), ("rename", 2), ("trash", 1), ("best", 1), ("best-old", 1),
        ("status", 3), ("random", 1)]


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_kills", ROOT / "bench" / "kills.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from training.data import prepare

    out = tmp_path_factory.mktemp("data") / "builtin"
    prepare("builtin", out, builtin_stories=300, progress=False)
    return out


def test_killed_runs_resume_to_the_weights_of_an_uninterrupted_run(data, tmp_path):
    kills = load_bench()
    lines = []
    f = kills.kill_test(data, tmp_path, plan=PLAN, steps=30, log=lines.append)
    report = "\n".join(lines)
    assert f["kills"] == len(PLAN), report  # every launch but the last was killed
    targeted = {point for point, _ in PLAN if point != "random"}
    assert targeted <= set(f["by_point"]), f"each kill point was reached:\n{report}"
    assert f["resumed_from_zero"] >= 1, "killed in its first checkpoint write, the run started again from step 0"
    assert f["leftovers_seen"] > 0, "the kills did leave temporary folders behind (else this test tests nothing)"
    assert f["finished"] and f["leftovers_at_end"] == [], report
    assert f["same_weights"] and f["same_losses"], report


def test_a_run_with_only_a_half_deleted_checkpoint_resumes_from_the_one_before(data, tmp_path):
    """What an old trainer killed while pruning left (trainer.pt without model.safetensors) is not counted,
    is removed, and the run resumes from the checkpoint before it; temporary folders go too."""
    from training import TrainConfig, train
    from training.trainer import checkpoints

    run = tmp_path / "run"
    cfg = TrainConfig.for_preset("tiny", data=str(data), out=str(run), batch_size=4, seq_len=32, max_steps=4,
                                 ckpt_every=2, keep_last=5, eval_every=100, eval_windows=4, sample_tokens=2)
    assert train(cfg) == 0
    step2, step4 = run / "checkpoints" / "step_0000002", run / "checkpoints" / "step_0000004"
    (step4 / "model.safetensors").unlink()
    (step4 / "complete.json").unlink()  # as a trainer without completion markers left it
    (run / "checkpoints" / ".step_0000006.abc123").mkdir()
    (run / "checkpoints" / ".step_0000006.abc123" / "model.safetensors").write_bytes(b"half")
    (run / ".best.x1y2z3").mkdir()
    assert checkpoints(run) == [step2]
    cfg.max_steps = 6
    assert train(cfg, resume=True) == 0
    assert [p.name for p in checkpoints(run)] == ["step_0000002", "step_0000004", "step_0000006"]
    assert not [p for p in run.rglob(".*") if p.name != ".lock"], "no temporary file or folder is left"


def test_clean_puts_back_what_a_swap_moved_aside_and_removes_the_rest(tmp_path):
    """A kill between atomic_dir_write's two renames leaves the only copy at .NAME.old: it goes back."""
    import os
    import subprocess
    import sys

    from training.trainer import clean, is_complete

    run = tmp_path / "run"
    ckpts = run / "checkpoints"
    for name in (".step_0000004.old", "step_0000006", ".step_0000008.x1y2", ".step_0000002.deleting.1.2"):
        (ckpts / name).mkdir(parents=True)
        for f in ("config.json", "model.safetensors", "trainer.pt"):
            (ckpts / name / f).write_text(f)
    (ckpts / "step_0000006" / "model.safetensors").unlink()  # half deleted in place (an older trainer)
    (run / ".best.old").mkdir()
    for f in ("config.json", "model.safetensors"):
        (run / ".best.old" / f).write_text(f)
    (run / ".best.a1b2").mkdir()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    (run / f".status.json.tmp{gone}.1").write_text("{")      # its writer is dead
    (run / f".status.json.tmp{os.getpid()}.1").write_text("{")  # its writer lives: left alone
    (run / ".lock").write_text("")
    (run / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n{"st')

    removed = clean(run)
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_0000004"] and is_complete(ckpts / "step_0000004")
    assert (run / "best" / "model.safetensors").is_file()
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == [
        ".lock", f".status.json.tmp{os.getpid()}.1"]
    assert (run / "metrics.jsonl").read_text() == '{"step": 1}\n{"step": 2}\n'
    assert "checkpoints/step_0000006" in removed and "half a line of metrics.jsonl" in removed
    assert clean(run) == []  # nothing left to do
