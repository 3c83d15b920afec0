"""Issue 21 item 1: a writer replaces only a model folder it wrote; anything else at its output is refused
in one sentence before any work, and nothing there is renamed or deleted."""

import json
import re
from pathlib import Path

import pytest
import torch

import gemma3
from gemma3.__main__ import main as gemma3_main
from training import TrainConfig
from training.__main__ import main as training_main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny model of ours, and a run whose one checkpoint is that model (for `training export`)."""
    torch.manual_seed(0)
    model = gemma3.Gemma3(gemma3.Gemma3Config.from_preset("tiny"))
    folder = tmp_path_factory.mktemp("model") / "tiny"
    gemma3.save_model(model, gemma3.gpt2_tokenizer(), folder)
    return folder


@pytest.fixture(scope="module")
def run_dir(model_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("run") / "run"
    step = run / "checkpoints" / "step_0000001"
    step.mkdir(parents=True)
    for f in model_dir.iterdir():
        (step / f.name).write_bytes(f.read_bytes())
    torch.save({}, step / "trainer.pt")
    cfg = TrainConfig.for_preset("tiny", data=str(run / "no-data"), out=str(run))
    (run / "config.json").write_text(json.dumps(cfg.to_dict()))
    return run


def snapshot(folder: Path) -> dict:
    """Every path under folder's parent with its bytes (folders as None): what a user would see changed."""
    return {str(p.relative_to(folder.parent)): None if p.is_dir() else p.read_bytes()
            for p in sorted(folder.parent.rglob("*"))}


def unrelated(tmp_path) -> Path:
    out = tmp_path / "my-stuff"
    out.mkdir()
    (out / "thesis.tex").write_text("three years of work")
    (out / "config.json").write_text('{"mine": true}')
    (out / "model.safetensors").write_bytes(b"not ours either")
    return out


def a_file(tmp_path) -> Path:
    out = tmp_path / "notes.txt"
    out.write_text("keep me")
    return out


OTHERS = {"unrelated folder": unrelated, "file": a_file}


@pytest.mark.parametrize("force", [[], ["--force"]], ids=["", "force"])
@pytest.mark.parametrize("what", OTHERS)
@pytest.mark.parametrize("command", ["convert native", "convert hf", "convert gguf", "training export"])
def test_an_output_that_holds_something_else_is_refused_and_kept(what, command, force, model_dir, run_dir, tmp_path,
                                                                  capsys):
    """Issue 21 item 1: convert and export, even with --force, leave a folder of other files or a file alone."""
    out = OTHERS[what](tmp_path)
    before = snapshot(out)
    if command == "training export":
        rc = training_main(["export", "--run", str(run_dir), "--out", str(out), *force])
    else:
        rc = gemma3_main(["convert", "--model", str(model_dir), "--out", str(out), "--format", command.split()[1],
                          *force])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert re.search(r"error: .*(holds files that are not a model|is a file|is not a GGUF file).*\n$", err), err
    assert "Loading" not in err, "refused before the model was loaded"
    assert snapshot(out) == before, "nothing renamed, deleted or written"


def test_a_model_folder_is_replaced_only_with_force(model_dir, run_dir, tmp_path, capsys):
    """Issue 21 item 1: an existing model folder is refused without --force and replaced with it."""
    out = tmp_path / "exported"
    gemma3.save_model(gemma3.Gemma3(gemma3.Gemma3Config.from_preset("tiny")), gemma3.gpt2_tokenizer(), out)
    before = snapshot(out)
    assert training_main(["export", "--run", str(run_dir), "--out", str(out)]) == 2
    assert f"error: {out} already holds a model; pass --force to replace it" in capsys.readouterr().err
    assert gemma3_main(["convert", "--model", str(model_dir), "--out", str(out)]) == 2
    assert snapshot(out) == before
    assert training_main(["export", "--run", str(run_dir), "--out", str(out), "--force", "--dtype", "fp32"]) == 0
    assert (out / "README.md").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported"], "no .exported.old or temporary folder left"
    a, _ = gemma3.load_model(out, device="cpu", dtype=torch.float32)
    b, _ = gemma3.load_model(model_dir, device="cpu", dtype=torch.float32)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_save_model_refuses_an_unrelated_folder_and_a_hidden_old_folder_beside_it(model_dir, tmp_path):
    """Issue 21 item 1: the library's writers refuse too, and never touch a `.NAME.old` that is not theirs."""
    model, tok = gemma3.load_model(model_dir, device="cpu", dtype=torch.float32)
    out = unrelated(tmp_path)
    before = snapshot(out)
    with pytest.raises(FileExistsError, match="holds files that are not a model"):
        gemma3.save_model(model, tok, out)
    with pytest.raises(FileExistsError, match="holds files that are not a model"):
        gemma3.export_hf(model, tok, out)
    assert snapshot(out) == before

    ours = tmp_path / "ours"
    gemma3.save_model(model, tok, ours)
    (tmp_path / ".ours.old").mkdir()
    (tmp_path / ".ours.old" / "diary.txt").write_text("private")
    with pytest.raises(FileExistsError, match="is not a model written here"):
        gemma3.save_model(model, tok, ours)
    assert (tmp_path / ".ours.old" / "diary.txt").read_text() == "private"


def test_loading_never_restores_a_hidden_old_folder_that_is_not_a_model(tmp_path):
    """Issue 21 item 1: `.NAME.old` is put back at NAME only when it is a model folder of ours."""
    hidden = tmp_path / ".photos.old"
    hidden.mkdir()
    (hidden / "cat.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(FileNotFoundError, match="No checkpoint at"):
        gemma3.load_model(tmp_path / "photos")
    assert (hidden / "cat.jpg").is_file() and not (tmp_path / "photos").exists()


def test_the_readme_quick_start_never_writes_into_the_bundled_model():
    """Issue 21 item 1: no command in the README writes its --out into assets/ (the bundled demo model)."""
    outs = re.findall(r"--out[ =](\S+)", (ROOT / "README.md").read_text())
    assert outs and not [o for o in outs if o.startswith("assets")], outs
