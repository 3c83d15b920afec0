"""The trainer: it learns, resumes exactly, survives interrupted writes, and agrees with itself under DDP."""

import json
import math
import os
import re
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch

import gemma3
from training import TRAIN_PRESETS, TrainConfig, train
from training import trainer as train_module
from training.data import prepare

ROOT = Path(__file__).resolve().parent.parent
SMALL = dict(preset="tiny", batch_size=4, seq_len=32, eval_windows=8, sample_tokens=8, log_every=1)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "builtin"
    prepare("builtin", out, builtin_stories=2000, progress=False)
    return out


def records(run: Path, kind: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def status(run: Path) -> dict:
    return json.loads((run / "status.json").read_text())


def test_tiny_model_learns_and_its_checkpoint_generates(data, tmp_path):
    run = tmp_path / "run"
    cfg = TrainConfig.for_preset("tiny", data=str(data), out=str(run), batch_size=8, seq_len=32, max_steps=100,
                                 eval_every=50, eval_windows=16, ckpt_every=50, log_every=5, sample_tokens=10)
    assert train(cfg) == 0
    losses = [r["loss"] for r in records(run, "train")]
    assert losses[0] > 10 and sum(losses[-3:]) / 3 < 0.6 * losses[0], losses
    evals = records(run, "eval")
    assert [e["step"] for e in evals] == [0, 50, 100]  # step 0: the curve starts at the initial loss
    assert evals[0]["quick"] and evals[0]["windows"] == train_module.QUICK_WINDOWS, "step 0: quick, said so"
    assert [e.get("quick", False) for e in evals[1:]] == [False, False] and evals[1]["windows"] == 16
    assert evals[0]["sample"].startswith("Once upon a time"), "the first sample comes with step 0's loss"
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] and evals[-1]["val_bpb"] > 0
    assert evals[-1]["sample"].startswith("Once upon a time")
    last = records(run, "train")[-1]
    for key in ("tokens", "lr", "grad_norm", "tokens_per_s", "mfu", "elapsed_s", "eta_s", "step_s"):
        assert last[key] >= 0, key
    middle = records(run, "train")[len(losses) // 2]
    assert middle["eta_low_s"] <= middle["eta_s"] <= middle["eta_high_s"] and middle["eta_s"] > 0
    assert status(run)["state"] == "finished"
    model, tok = gemma3.load_model(run / "checkpoints" / "step_0000100")
    assert gemma3.generate(model, tok, "Once upon a time", max_new_tokens=10, temperature=0)
    assert (run / "best" / "model.safetensors").exists()


def test_the_logged_speed_is_the_steps_own_not_the_evaluations_and_snapshots_between_them(data, tmp_path, monkeypatch):
    """tokens/s, the step time beside it and MFU at a log are the training steps' since the last log: an evaluation,
    a snapshot or a checkpoint between them (each made to last 1000 s here, on the trainer's clock) does not show as
    a fall in speed, and the step time times tokens/s is a step's tokens. MFU's peak is measured again at each
    evaluation and the best kept: a first measurement made while the machine was busy (here 1000x too low) is
    corrected there, where MFU would otherwise stay above 100%."""
    peaks = iter([1e9] + [1e12] * 10)
    monkeypatch.setattr(train_module, "peak_flops", lambda *args: next(peaks))
    real, skew = time.perf_counter, [0.0]
    shim = types.SimpleNamespace(**{name: getattr(time, name) for name in dir(time) if not name.startswith("_")})
    shim.perf_counter = lambda: real() + skew[0]
    monkeypatch.setattr(train_module, "time", shim)
    for pause in ("_eval_and_keep_best", "snapshot", "save"):
        original = getattr(train_module.Trainer, pause)

        def slow(self, *args, _original=original, **kwargs):
            skew[0] += 1000.0
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(train_module.Trainer, pause, slow)
    run = tmp_path / "run"
    assert train(TrainConfig.for_preset(**dict(SMALL, data=str(data), out=str(run), max_steps=8, eval_every=3,
                                               ckpt_every=4))) == 0
    assert skew[0] >= 8000  # every one of the 8 steps was followed by at least one pause
    logged = records(run, "train")
    assert [r["step"] for r in logged] == list(range(1, 9))
    step_tokens = SMALL["batch_size"] * SMALL["seq_len"]
    for r in logged:
        assert r["tokens_per_s"] > step_tokens / 100, r  # no 1000 s pause in any
        assert r["step_s"] * r["tokens_per_s"] == pytest.approx(step_tokens)
    assert min(r["mfu"] for r in logged[:3]) > 500 * max(r["mfu"] for r in logged[3:])  # the first evaluation: step 3


def _stop_at(step: int, monkeypatch):
    """Make the trainer see a stop request right after `step` (as a STOP file or SIGTERM would)."""
    original = train_module.Trainer._stop_now

    def stop_now(self):
        return self.step == step or original(self)

    monkeypatch.setattr(train_module.Trainer, "_stop_now", stop_now)


def test_resume_logs_exactly_the_losses_of_an_uninterrupted_run(data, tmp_path, monkeypatch):
    common = dict(SMALL, data=str(data), max_steps=12, eval_every=100, ckpt_every=100)
    straight = tmp_path / "straight"
    assert train(TrainConfig.for_preset(**{**common, "out": str(straight)})) == 0

    interrupted = tmp_path / "interrupted"
    cfg = TrainConfig.for_preset(**{**common, "out": str(interrupted)})
    with monkeypatch.context() as m:
        _stop_at(5, m)
        assert train(cfg) == 0
    assert status(interrupted)["state"] == "stopped"
    assert train(cfg, resume=True) == 0
    assert status(interrupted)["state"] == "finished"

    want = {r["step"]: r["loss"] for r in records(straight, "train")}
    got = {r["step"]: r["loss"] for r in records(interrupted, "train")}
    assert sorted(got) == list(range(1, 13))
    assert got == want  # bit for bit, after the resume too
    a, _ = gemma3.load_model(straight / "checkpoints" / "step_0000012")
    b, _ = gemma3.load_model(interrupted / "checkpoints" / "step_0000012")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name


def test_interrupted_checkpoint_write_keeps_the_previous_one(data, tmp_path, monkeypatch):
    run = tmp_path / "run"
    cfg = TrainConfig.for_preset(**dict(SMALL, data=str(data), out=str(run), max_steps=4, eval_every=100,
                                        ckpt_every=2, keep_last=1))
    real_save = torch.save

    def dies_midway(obj, f, *args, **kwargs):
        if "step_0000004" in str(f):
            Path(f).write_bytes(b"half a file")
            raise OSError("disk full")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", dies_midway)
    assert train(cfg) == 1
    assert "disk full" in status(run)["reason"] and status(run)["state"] == "failed"
    kept = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert kept == ["step_0000002"]  # no half-written step_0000004, no temporary folder
    model, _ = gemma3.load_model(run / "checkpoints" / "step_0000002")
    monkeypatch.setattr(torch, "save", real_save)
    cfg.max_steps = 4
    assert train(cfg, resume=True) == 0  # and the run resumes from it
    assert status(run)["state"] == "finished"


def test_resume_without_a_complete_checkpoint_starts_from_step_0(data, tmp_path, capsys):
    run = tmp_path / "run"
    cfg = TrainConfig.for_preset(**dict(SMALL, data=str(data), out=str(run), max_steps=3, eval_every=100,
                                        ckpt_every=100))
    assert train(cfg, resume=True) == 0  # e.g. killed while it wrote its first checkpoint
    assert "Nothing to resume: run has no complete checkpoint, so it starts from step 0." in capsys.readouterr().out
    assert status(run)["state"] == "finished" and [r["step"] for r in records(run, "train")] == [1, 2, 3]


def test_token_ids_beyond_the_vocabulary_fail_the_run_in_one_sentence(tmp_path, capsys):
    import numpy as np

    data = tmp_path / "data"
    prepare("builtin", data, builtin_stories=100, progress=False)
    ids = np.fromfile(data / "train.bin", dtype=np.uint16)
    ids[3] = 65_535
    ids.tofile(data / "train.bin")
    run = tmp_path / "run"
    assert train(TrainConfig.for_preset(**dict(SMALL, data=str(data), out=str(run), max_steps=2))) == 1
    assert capsys.readouterr().err == (f"failed: {data / 'train.bin'} is corrupt: it holds token id 65,535, beyond "
                                       "the 50,257 ids of the tokenizer; prepare the data again.\n")
    assert not run.exists()  # a failed start leaves no half-made run folder


def test_non_finite_losses_skip_updates_then_fail_clearly(data, tmp_path, monkeypatch):
    run = tmp_path / "run"
    cfg = TrainConfig.for_preset(**dict(SMALL, data=str(data), out=str(run), max_steps=20, max_bad_steps=3,
                                        eval_every=100, ckpt_every=100))
    real_ce = gemma3.model.cross_entropy
    monkeypatch.setattr(gemma3.model, "cross_entropy", lambda *a: real_ce(*a) * float("nan"))
    assert train(cfg) == 1
    st = status(run)
    assert st["state"] == "failed" and "non-finite" in st["reason"] and st["step"] == 2


def test_a_non_finite_step_is_skipped_on_the_device_as_the_host_skipped_it(monkeypatch):
    """The step never waits for the host: a step whose loss is not finite leaves the weights and AdamW's moments and
    step count exactly as they were (fused AdamW's found_inf), as skipping the update on the host did, even before
    AdamW's first update; the tally on the device counts the skipped steps and those in a row."""
    from training.step import TrainStep, adamw

    cfg = gemma3.Gemma3Config.from_preset("tiny")
    g = torch.Generator().manual_seed(1)
    good = [[(ids[:, :-1], ids[:, 1:])] for ids in (torch.randint(0, cfg.vocab_size, (2, 17), generator=g)
                                                    for _ in range(3))]

    def fresh():
        torch.manual_seed(0)
        model = gemma3.Gemma3(cfg)
        return model, TrainStep(model, grad_clip=1.0), adamw(model, 1e-3, (0.9, 0.95), 0.1)

    real_ce = gemma3.model.cross_entropy

    def bad_step(step, opt):
        with monkeypatch.context() as m:
            m.setattr(gemma3.model, "cross_entropy", lambda *a: real_ce(*a) * float("nan"))
            return step(opt, good[0], 1e-3)

    skipping, step, opt = fresh()    # bad, good, bad, bad, good, good
    reference, ref_step, ref_opt = fresh()  # the good ones alone: what skipping on the host left
    bad_step(step, opt)
    r = step.read()
    assert math.isnan(r.loss) and (r.skipped, r.in_a_row, r.most_in_a_row) == (1, 1, 1)
    assert all(p.grad is None for p in skipping.parameters())
    losses = []
    for i, batch in enumerate(good):
        losses.append(step(opt, batch, 1e-3)[0].item())
        assert losses[-1] == ref_step(ref_opt, batch, 1e-3)[0].item()
        if i == 0:
            bad_step(step, opt)
            bad_step(step, opt)
            r = step.read()
            assert (r.skipped, r.in_a_row, r.most_in_a_row) == (3, 2, 2)
    r = step.read()
    assert (r.skipped, r.in_a_row, r.most_in_a_row) == (3, 0, 2) and r.loss == losses[-1]  # a run read goes on counting
    assert step.read().most_in_a_row == 0
    for (name, p), q in zip(skipping.named_parameters(), reference.parameters()):
        assert torch.equal(p, q), name
    for p, q in zip(skipping.parameters(), reference.parameters()):
        a, b = opt.state[p], ref_opt.state[q]
        assert all(torch.equal(a[k], b[k]) for k in ("step", "exp_avg", "exp_avg_sq")) and a["step"].item() == 3


def test_skipped_steps_are_read_where_the_trainer_logs_and_fail_the_run_there(data, tmp_path, monkeypatch, capsys):
    """Past the densely logged first steps the trainer reads the device only at its logged (and evaluated, saved)
    steps: the skipped steps between are counted and logged there, and max_bad_steps in a row fail the run at
    that reading."""
    bad = set()
    real_ce, real_step = gemma3.model.cross_entropy, train_module.Trainer.train_step
    at = {}
    monkeypatch.setattr(gemma3.model, "cross_entropy",
                        lambda *a: real_ce(*a) * (float("nan") if at.get("step") in bad else 1.0))
    monkeypatch.setattr(train_module.Trainer, "train_step", lambda self: at.update(step=self.step) or real_step(self))
    common = dict(SMALL, data=str(data), max_steps=15, log_every=5, max_bad_steps=3, eval_every=100, ckpt_every=100,
                  snapshot_mb=0)

    bad |= {11, 12}  # two in a row: skipped, counted at step 15's reading, the run goes on
    run = tmp_path / "two"
    assert train(TrainConfig.for_preset(**common, out=str(run))) == 0
    assert {r["step"]: r["skipped"] for r in records(run, "train")} == {**{s: 0 for s in range(1, 11)}, 15: 2}
    assert "steps 10..14: 2 updates skipped (a non-finite loss or gradient)" in capsys.readouterr().out
    assert status(run)["state"] == "finished"

    bad |= {13}  # three in a row: the run fails at that reading
    run = tmp_path / "three"
    assert train(TrainConfig.for_preset(**common, out=str(run))) == 1
    st = status(run)
    assert st["state"] == "failed" and st["reason"].startswith("3 steps in a row had a non-finite loss") \
        and st["step"] == 14
    assert [r["step"] for r in records(run, "train")] == list(range(1, 11))


def test_flex_attention_for_the_sliding_layers_computes_what_the_sliding_mask_does(monkeypatch):
    """gemma3/runtime/flex.py's block mask lets through exactly what the core's sliding mask does (the forward,
    on the CPU, with FlexAttention's eager kernel: the CPU has no FlexAttention backward; tests/test_cuda.py checks
    the compiled kernel and the gradients on a GPU), and calls of another length go to SDPA."""
    from torch.nn.attention.flex_attention import flex_attention

    from gemma3.runtime import flex

    monkeypatch.setattr(flex, "_flex", lambda: flex_attention)
    cfg = gemma3.Gemma3Config.from_preset("tiny")
    torch.manual_seed(0)
    model = gemma3.Gemma3(cfg).eval()
    ids = torch.randint(0, cfg.vocab_size, (2, 5 * cfg.window + 4))
    x, y = ids[:, :-1], ids[:, 1:]
    with torch.no_grad():
        want, want_loss, want_short = model(x), model(x, targets=y), model(x[:, :5])
        attends = flex.flex_attends(model, x.shape[1])
        assert len(attends) == cfg.layer_types.count("sliding")
        with flex.attending(attends):
            assert flex.uses_flex(model)
            torch.testing.assert_close(model(x), want, atol=1e-5, rtol=0)
            torch.testing.assert_close(model(x, targets=y), want_loss, atol=1e-6, rtol=0)
            assert torch.equal(model(x[:, :5]), want_short)  # not the length it was made for: SDPA
    assert not flex.uses_flex(model)


def test_min_lr_above_lr_is_refused():
    with pytest.raises(ValueError, match="min_lr"):
        TrainConfig(lr=1e-4, min_lr=1e-3)


def test_cli_reports_missing_data_in_one_sentence(tmp_path):
    result = subprocess.run([sys.executable, "-m", "training", "train", "--data", str(tmp_path / "nope"),
                             "--preset", "tiny", "--out", str(tmp_path / "run")],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "prepare" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()  # a failed start leaves no half-made run folder


def test_ddp_on_two_cpu_processes_matches_one_process(data, tmp_path):
    """torchrun on gloo: ranks end identical, and the losses equal one process with the same global batch."""
    common = ["--data", str(data), "--preset", "tiny", "--seq-len", "32", "--max-steps", "6", "--log-every", "1",
              "--eval-every", "100", "--ckpt-every", "100", "--eval-windows", "8", "--sample-tokens", "4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                    "-m", "training", "train", *common, "--batch-size", "4", "--out", str(ddp)],
                   cwd=ROOT, env=env, check=True, capture_output=True, timeout=300)
    subprocess.run([sys.executable, "-m", "training", "train", *common, "--batch-size", "8", "--out", str(single)],
                   cwd=ROOT, env=env, check=True, capture_output=True, timeout=300)
    st = status(ddp)
    assert st["state"] == "finished" and st["world_size"] == 2 and st["replicas_identical"] is True
    a = [r["loss"] for r in records(ddp, "train")]
    b = [r["loss"] for r in records(single, "train")]
    assert len(a) == len(b) == 6
    assert a == pytest.approx(b, rel=1e-4)
    m1, _ = gemma3.load_model(ddp / "checkpoints" / "step_0000006")
    m2, _ = gemma3.load_model(single / "checkpoints" / "step_0000006")
    for (name, p), q in zip(m1.state_dict().items(), m2.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-4, msg=name)


@pytest.mark.parametrize("length", [8, 23], ids=["inside-window-is_causal", "beyond-window-mask"])
def test_training_gradients_match_transformers(length):
    """Both attention paths (is_causal inside the window, an explicit mask beyond it) train exactly like
    transformers' eager Gemma 3: same loss, same gradient for every parameter."""
    from conftest import build_hf_tiny, random_ids
    from gemma3.io.layouts import to_native

    ref = build_hf_tiny(seed=3).train()
    ours = gemma3.Gemma3(gemma3.Gemma3Config.from_hf(ref.config.to_dict())).train()
    ref_sd = {k: v for k, v in ref.state_dict().items() if k != "lm_head.weight"}
    ours.load_state_dict(to_native(ref_sd, "hf"))
    ids = random_ids(2, length + 1, seed=5)
    x, y = ids[:, :-1], ids[:, 1:]
    loss_ref = torch.nn.functional.cross_entropy(ref(x).logits.flatten(0, 1), y.flatten())
    loss_ours = torch.nn.functional.cross_entropy(ours(x).flatten(0, 1), y.flatten())
    loss_ref.backward()
    loss_ours.backward()
    torch.testing.assert_close(loss_ours, loss_ref, rtol=1e-6, atol=1e-6)
    grads_ref = to_native({k: p.grad for k, p in ref.named_parameters() if p.grad is not None}, "hf")
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, grads_ref[name], rtol=1e-4, atol=2e-5)


# ---- settings: checked once, in TrainConfig ------------------------------------------------------

BAD_SETTINGS = [
    (dict(max_steps=0), "max_steps", "Max steps must be between 1 and 1,000,000, not 0."),
    (dict(batch_size=2.5), "batch_size", "Batch size must be a whole number, not 2.5."),
    (dict(seq_len=4096), "seq_len", "Sequence length must be between 8 and 512 (the tiny model's context), not 4,096."),
    (dict(lr="fast"), "lr", "Learning rate must be a number, not 'fast'."),
    (dict(lr=0.1, min_lr=0.2), "min_lr", "Minimum learning rate (min_lr 0.2) must not exceed the learning rate (lr 0.1)"),
    (dict(device="tpu"), "device", "Device must be one of auto, cuda, cpu or cuda:N, not 'tpu'."),
    (dict(compile="yes"), "compile", "torch.compile is on or off: send true or false, not 'yes'."),
    (dict(beta2=1), "beta2", "Adam beta2 must be at least 0 and less than 1, not 1."),
    (dict(model={"widht": 3}), "model", "Unknown model setting: widht; use fields of gemma3.Gemma3Config."),
    (dict(preset="huge"), "preset", "Preset must be one of tiny, demo, 270m, not 'huge'."),
]


@pytest.mark.parametrize("bad, field, sentence", BAD_SETTINGS, ids=[f for _, f, _ in BAD_SETTINGS])
def test_a_bad_setting_gets_the_same_sentence_everywhere(bad, field, sentence, tmp_path, capsys):
    """TrainConfig is the one place settings are checked: the run manager, the Train tab and the CLI
    all pass its sentence on (the CLI leads it with the flag to change)."""
    from training import runs
    from training.__main__ import main
    from training.config import ConfigError
    from webapp.train import RunDesk

    settings = {"preset": "tiny", **bad}
    with pytest.raises(ConfigError, match=re.escape(sentence)) as err:
        TrainConfig.for_preset(**settings)
    assert err.value.field == field
    with pytest.raises(ValueError, match=re.escape(sentence)):
        runs.start({**settings, "data": str(tmp_path)}, tmp_path / "runs")
    if field in ("preset", "max_steps", "batch_size", "seq_len", "lr", "device", "compile"):  # the form's fields
        form = dict(preset="tiny", max_steps=100, batch_size=4, grad_accum=1, seq_len=32, lr=2e-3, device="cpu",
                    gpus=1, compile=False)
        with pytest.raises(ValueError, match=re.escape(sentence)):
            RunDesk(tmp_path / "runs", tmp_path / "data").config(**{**form, **bad})
    if field not in ("model", "compile"):  # not flags that can carry a bad value
        flags = [f"--{k.replace('_', '-')}={v}" for k, v in settings.items()]
        assert main(["train", f"--out={tmp_path / 'run'}", *flags]) == 2
        flag = f"--{field.replace('_', '-')}"
        assert f"error: {flag}: {sentence}" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "run").exists()


def test_presets_fill_the_defaults_and_follow_the_overrides():
    assert TrainConfig.for_preset("tiny") == TrainConfig(preset="tiny", **TRAIN_PRESETS["tiny"])
    assert TrainConfig.for_preset("tiny", max_steps=300) == TrainConfig.for_preset("tiny")  # the preset's own length
    short = TrainConfig.for_preset("270m", max_steps=100, lr=1e-3, batch_size=4.0)  # a UI's number box sends 4.0
    assert (short.warmup_steps, short.log_every, short.eval_every, short.ckpt_every) == (10, 5, 20, 25)
    assert short.min_lr == pytest.approx(1e-4) and short.batch_size == 4 and isinstance(short.batch_size, int)
    assert TrainConfig.for_preset("270m", max_steps=100, eval_every=7, min_lr=0.0).eval_every == 7  # what is given wins
    with pytest.raises(ValueError, match="Unknown training setting: learning_rate"):
        TrainConfig.for_preset("tiny", learning_rate=1e-3)


def test_without_a_preset_the_cli_picks_the_one_that_fits_the_device(tmp_path, monkeypatch):
    from training.config import default_preset

    assert default_preset("cpu") == ("tiny", "the device is the CPU")
    assert default_preset("cuda")[0] == "270m"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_preset("auto") == ("tiny", "no GPU is visible")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "NVIDIA H200")
    assert default_preset("auto") == ("270m", "a GPU is visible (NVIDIA H200)")

    run = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "training", "train", "--data", str(tmp_path / "nope"),
                             "--device", "cpu", "--out", str(run), "--max-steps", "40"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.stdout.splitlines()[0] == ("No --preset given: training the tiny preset (40 steps) because the "
                                             "device is the CPU; choose one with --preset tiny|demo|270m.")
    assert not run.exists()  # the data is missing: a failed start leaves no half-made run folder


def test_help_shows_each_presets_defaults(capsys):
    from training.__main__ import main

    with pytest.raises(SystemExit) as done:
        main(["train", "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "Max steps; default 300 (tiny), 1000 (demo), 13000 (270m)" in text
    assert "Weight decay; default 0.1" in text
    assert "default: 270m where a GPU is visible, else tiny" in text


def test_status_has_one_writer_that_keeps_what_it_is_not_told(tmp_path):
    from training.status import read_status, write_status

    assert read_status(tmp_path) == {}
    write_status(tmp_path, "running", step=5, best_val_loss=2.5, pid=1)
    before = read_status(tmp_path)
    after = write_status(tmp_path, "stopped", "stopped by signal")
    assert after == read_status(tmp_path)
    assert (after["state"], after["reason"], after["step"], after["best_val_loss"]) == ("stopped", "stopped by signal",
                                                                                       5, 2.5)
    assert after["updated"] >= before["updated"] and list(tmp_path.iterdir()) == [tmp_path / "status.json"]


def test_the_eta_is_smoothed_counts_the_pauses_to_come_and_narrows_as_steps_are_timed():
    from training.pace import Pace

    cfg = TrainConfig.for_preset("tiny", max_steps=100, eval_every=50, ckpt_every=50, eval_windows=32, snapshot_mb=0)
    pace = Pace()
    assert pace.eta(cfg, 0) is None, "nothing to say before a step is timed"
    for _ in range(3):
        pace.step(1.0)
    eta, low, high = pace.eta(cfg, 3)
    assert eta == pytest.approx(97) and high / low > 2, "few steps timed: a wide range"
    for _ in range(60):
        pace.step(1.0)
    before = pace.eta(cfg, 63)
    pace.step(10.0)  # one step ten times as slow, as on a busy machine
    after = pace.eta(cfg, 64)
    assert after[0] < before[0] * 1.5, "one slow step moves the ETA a little, not tenfold"
    assert before[2] / before[1] < high / low, "the range narrows as steps are timed"
    assert after[2] / after[1] > before[2] / before[1], "and widens when the steps vary"
    pace.evaluation(windows=8, loss_s=4.0, fixed_s=1.0)  # a quick evaluation: 0.5 s a window, 1 s of sample
    pace.pause("save", 2.0)
    steps_only = 36 * pace.step_s
    assert pace.eta(cfg, 64)[0] == pytest.approx(steps_only + 1 * (0.5 * 32 + 1.0) + 1 * 2.0), \
        "the evaluation at step 100 (scaled to its 32 windows) and the last checkpoint are counted"
