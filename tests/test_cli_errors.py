"""Issue 21 item 8: a bad input to `python -m gemma3` or `python -m training` is one sentence on stderr and a
non-zero exit, never a traceback; a training run that fails as it starts leaves no half-made run folder."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gemma3.__main__ import main as gemma3_main
from training import TrainConfig
from training.__main__ import main as training_main

ROOT = Path(__file__).resolve().parent.parent
DEMO = str(ROOT / "assets" / "demo-model")
FAST = ["--preset", "tiny", "--max-steps", "2", "--batch-size", "1", "--seq-len", "8", "--eval-windows", "1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from training.data import prepare

    out = tmp_path_factory.mktemp("data") / "builtin"
    prepare("builtin", out, builtin_stories=100, progress=False)
    return out


def a_file(tmp: Path) -> Path:
    (tmp / "notes.txt").write_text("keep me")
    return tmp / "notes.txt"


def a_run(tmp: Path, data: Path, state: str) -> Path:
    """A run folder that trained 5 steps and ended `state` (its checkpoint is never read: it is refused first)."""
    run = tmp / "run"
    step = run / "checkpoints" / "step_0000005"
    step.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "trainer.pt"):
        (step / name).write_bytes(b"x")
    (run / "config.json").write_text(json.dumps(TrainConfig.for_preset("tiny", data=str(data), out=str(run),
                                                                       max_steps=5).to_dict()))
    (run / "status.json").write_text(json.dumps({"state": state, "step": 5}))
    (run / "metrics.jsonl").write_text('{"kind": "train", "step": 5, "loss": 7.0}\n')
    return run


def other_files(tmp: Path) -> Path:
    (tmp / "papers").mkdir()
    (tmp / "papers" / "config.json").write_text("{}")
    return tmp / "papers"


# (CLI, its arguments from (tmp_path, data), what the sentence says)
CASES = {
    "device that is not one": ("gemma3", lambda t, d: ["generate", "--model", DEMO, "--device", "banana"],
                               "--device banana is not a device"),
    "GPU that is not there": ("gemma3", lambda t, d: ["info", "--model", DEMO, "--device", "cuda:7"],
                              "no such CUDA GPU is visible"),
    "convert --out under a file": ("gemma3", lambda t, d: ["convert", "--model", DEMO, "--out",
                                                           str(a_file(t) / "model")], "is a file, so nothing"),
    "train --out a file": ("training", lambda t, d: ["train", "--data", str(d), *FAST, "--out", str(a_file(t))],
                           "is a file; choose a folder"),
    "train --out under a file": ("training", lambda t, d: ["train", "--data", str(d), *FAST, "--out",
                                                           str(a_file(t) / "run")], "is a file, so nothing"),
    "train --out a folder of other files": ("training", lambda t, d: ["train", "--data", str(d), *FAST, "--out",
                                                                      str(other_files(t))],
                                            "already holds other files"),
    "train an existing run again": ("training", lambda t, d: ["train", "--data", str(d), *FAST, "--out",
                                                              str(a_run(t, d, "stopped"))],
                                    "already holds a training run; continue it with --resume"),
    "resume a finished run": ("training", lambda t, d: ["train", "--out", str(a_run(t, d, "finished")), "--resume"],
                              "already finished at step 5; resume it with a larger --max-steps"),
    "resume a run that does not exist": ("training", lambda t, d: ["train", "--out", str(t / "run"), "--resume",
                                                                   "--max-steps", "2"],
                                         "holds no run to resume"),
    "missing data folder": ("training", lambda t, d: ["train", "--data", str(t / "nope"), *FAST, "--out",
                                                      str(t / "run")], "holds no prepared data"),
    "empty data folder": ("training", lambda t, d: ["train", "--data", str(t), *FAST, "--out", str(t / "run")],
                          "holds no prepared data"),
    "init from a missing model": ("training", lambda t, d: ["train", "--data", str(d), *FAST, "--init-from",
                                                            str(t / "nope"), "--out", str(t / "run")],
                                  "No checkpoint at"),
    "prepare --out a file": ("training", lambda t, d: ["prepare", "--stories", "10", "--out", str(a_file(t))],
                             "is a file; choose a folder"),
}


def snapshot(tmp: Path) -> dict:
    return {str(p.relative_to(tmp)): None if p.is_dir() else p.read_bytes() for p in sorted(tmp.rglob("*"))}


@pytest.mark.parametrize("case", CASES)
def test_a_bad_input_is_one_sentence_and_touches_nothing(case, data, tmp_path, capsys):
    """Issue 21 item 8: each bad input: exit code 2 (1 for a run that failed as it started), one line on stderr
    saying what is wrong, and the files as they were: no run folder made, nothing at --out changed."""
    cli, make, says = CASES[case]
    argv = make(tmp_path, data)
    before = snapshot(tmp_path)
    capsys.readouterr()
    rc = (gemma3_main if cli == "gemma3" else training_main)(argv)
    err = capsys.readouterr().err
    assert rc in (1, 2), err
    assert says in err and err.count("\n") == 1 and err.startswith(("error: ", "failed: ")), err
    assert snapshot(tmp_path) == before, "a failed start left files behind or changed them"


def test_unreadable_model_file_is_one_sentence(monkeypatch, capsys):
    """Issue 21 item 8: an error of the system (here a file we may not read: simulated, since the tests may run as
    root) is one sentence naming the file."""
    import gemma3.__main__ as cli

    def denied(source, **kwargs):
        raise PermissionError(13, "Permission denied", f"{source}/model.safetensors")

    monkeypatch.setattr(cli, "load_model", denied)
    assert gemma3_main(["info", "--model", DEMO]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"error: Cannot use {DEMO}/model.safetensors: permission denied."


@pytest.mark.parametrize("argv, sentence", [
    (["gemma3", "info", "--model", DEMO, "--device", "banana"],
     "error: --device banana is not a device; use cpu, cuda or cuda:N.\n"),
    (["training", "train", "--out", "README.md"], "error: README.md is a file; choose a folder for --out.\n"),
], ids=["gemma3", "training"])
def test_the_commands_print_no_traceback(argv, sentence):
    """Issue 21 item 8: the real commands, as a user runs them: exit code 2 and only the sentence on stderr."""
    result = subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stderr) == (2, sentence)
