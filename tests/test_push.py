"""Push to the Hub: the repository a push would upload loads in transformers with our logits, its card
carries the run's facts, and a push that cannot happen says why in one sentence before doing anything.

Only the network call itself goes untested: HfApi.create_repo / upload_folder are replaced by stand-ins
that capture what they were given (the folder is copied before the push deletes it)."""

import json
import shutil
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub import HfApi, constants

import gemma3
from training import TrainConfig, train
from training import push as push_module
from training.__main__ import main as cli
from training.card import checkpoint_of
from training.data import prepare
from training.push import PushError, push

PROMPT_IDS = [7454, 2402, 257, 640, 11, 612, 373, 257, 1310, 3290, 3706, 406, 813, 13]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    data = tmp_path_factory.mktemp("data") / "builtin"
    prepare("builtin", data, builtin_stories=1000, progress=False)
    out = tmp_path_factory.mktemp("runs") / "tiny-stories"
    cfg = TrainConfig.for_preset("tiny", data=str(data), out=str(out), batch_size=4, seq_len=32, max_steps=6,
                                 eval_every=3, eval_windows=4, ckpt_every=3, log_every=1, sample_tokens=4,
                                 snapshot_mb=0)
    assert train(cfg) == 0
    return out


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """An online-looking environment with a token, and a Hub that records instead of uploading."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.setattr(push_module, "hub_reachable", lambda endpoint=None: True)
    calls = {"uploaded": tmp_path / "uploaded"}

    def create_repo(self, repo_id, **kw):
        calls["create"] = dict(repo_id=repo_id, token=self.token, **kw)
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, **kw):
        calls["upload"] = dict(repo_id=repo_id, token=self.token, **kw)
        shutil.copytree(folder_path, calls["uploaded"])

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    monkeypatch.setattr(HfApi, "whoami", lambda self, *a, **k: {"name": "someone"})
    return calls


def _our_logits(folder) -> torch.Tensor:
    model, _ = gemma3.load_model(folder, device="cpu", dtype=torch.float32)
    with torch.no_grad():
        return model(torch.tensor([PROMPT_IDS]))[0]


def test_the_pushed_repository_loads_in_transformers_with_our_logits(run, hub):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    url = push(run, "someone/tiny-stories", dtype="fp32", private=True)
    assert url == "https://huggingface.co/someone/tiny-stories"
    assert hub["create"]["repo_id"] == hub["upload"]["repo_id"] == "someone/tiny-stories"
    assert hub["create"]["private"] is True and hub["upload"]["token"] == "hf_test_token"
    folder = hub["uploaded"]

    expected = _our_logits(checkpoint_of(run, "last"))
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = hf(torch.tensor([PROMPT_IDS])).logits[0]
    torch.testing.assert_close(theirs, expected, atol=1e-4, rtol=1e-4)
    for ours in (folder, folder / "gemma3"):  # our loader reads both layouts of the repository
        torch.testing.assert_close(_our_logits(ours), expected, atol=1e-4, rtol=1e-4)

    tok = AutoTokenizer.from_pretrained(folder)
    text = "Once upon a time, Lily's dog   ran to the park!\n\n\"Wow,\" said Tom. 42 naïve cafés 🙂"
    assert tok.encode(text, add_special_tokens=False) == gemma3.gpt2_tokenizer().encode(text)
    assert tok.eos_token_id == 50256 == hf.config.eos_token_id
    cfg = json.loads((run / "config.json").read_text())
    assert json.loads((folder / "run" / "config.json").read_text()) == {**cfg, "data": "data/builtin",
                                                                          "out": "runs/tiny-stories"}
    assert (folder / "run" / "metrics.jsonl").read_text() == (run / "metrics.jsonl").read_text()


def test_the_card_carries_the_run_and_the_hub_reads_its_header(run, hub, capsys):
    import matplotlib.image

    assert cli(["push", "--run", str(run), "--repo", "tiny-stories", "--checkpoint", "best"]) == 0
    assert capsys.readouterr().out == f"Pushed {run} to https://huggingface.co/someone/tiny-stories\n"
    assert hub["upload"]["repo_id"] == "someone/tiny-stories"  # a bare name goes to the token's user
    folder = hub["uploaded"]
    meta = huggingface_hub.metadata_load(folder / "README.md")
    assert meta["license"] == "mit" and meta["pipeline_tag"] == "text-generation"
    assert {"gemma3", "tinystories", "text-generation"} <= set(meta["tags"])
    assert "datasets" not in meta  # the built-in corpus is no Hub dataset

    card = (folder / "README.md").read_text()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["kind"] == "eval"]
    last = [r for r in records if r["kind"] == "train"][-1]
    best = min(evals, key=lambda e: e["val_loss"])
    for fact in (f"- Training: {best['step']} steps of 4 x 32 tokens", f"{best['tokens']:,} tokens seen",
                 f"{last['elapsed_s'] / 60:.1f} minutes", f"Final train loss {last['loss']:.4f}",
                 f"validation loss {evals[-1]['val_loss']:.4f}",
                 "python -m training push --run runs/tiny-stories --repo someone/tiny-stories --checkpoint best",
                 "**Once upon a time**", 'AutoModelForCausalLM.from_pretrained("someone/tiny-stories")',
                 "![Train and validation loss](loss_curve.png)"):
        assert fact in card, fact
    image = matplotlib.image.imread(folder / "loss_curve.png")
    assert image.shape[0] > 200 and image.shape[1] > 400 and image[..., :3].std() > 0.05  # drawn, not blank


def test_a_hub_dataset_is_named_in_the_header(run, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    meta = json.loads((Path(json.loads((run / "config.json").read_text())["data"]) / "meta.json").read_text())
    meta.update(source="roneneldan/TinyStories", params={**meta["params"], "source": "roneneldan/TinyStories"})
    (data / "meta.json").write_text(json.dumps(meta))
    copy = tmp_path / "run"
    copy.mkdir()
    (copy / "config.json").write_text(json.dumps({**json.loads((run / "config.json").read_text()), "data": str(data)}))
    (copy / "README.md").write_text(push_module._front_matter(copy))
    assert huggingface_hub.metadata_load(copy / "README.md")["datasets"] == ["roneneldan/TinyStories"]


def _no_work(monkeypatch):
    def fail(*a, **k):
        raise AssertionError("the push did work before saying it cannot push")
    monkeypatch.setattr(push_module, "stage", fail)
    monkeypatch.setattr(push_module, "model_and_card", fail)


def test_offline_or_without_a_token_says_so_before_any_work(run, hub, monkeypatch, tmp_path, capsys):
    _no_work(monkeypatch)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PushError, match="HF_HUB_OFFLINE is set"):
        push(run, "someone/x")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(push_module, "hub_reachable", lambda endpoint=None: False)
    with pytest.raises(PushError, match="^The Hugging Face Hub cannot be reached from here; push again with a network"):
        push(run, "someone/x")
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    assert cli(["push", "--run", str(run), "--repo", "someone/x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs a token with write access" in err and "Traceback" not in err
    assert "create" not in hub and "upload" not in hub


def test_the_signed_in_visitors_token_is_used(run, hub, monkeypatch, tmp_path):
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))

    class OAuthToken:  # what gradio hands a signed-in visitor's handler
        token = "hf_oauth_visitor"
    push(run, "visitor/tiny", token=OAuthToken())
    assert hub["create"]["token"] == hub["upload"]["token"] == "hf_oauth_visitor"


def test_what_cannot_be_pushed_gets_one_sentence(run, hub, monkeypatch, tmp_path):
    with pytest.raises(PushError, match=f"^{tmp_path.name} is not a training run folder"):
        push(tmp_path, "someone/x")
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(run / "config.json", empty)
    with pytest.raises(PushError, match="^The run empty has no checkpoint to push yet.$"):
        push(empty, "someone/x")
    with pytest.raises(PushError, match="^The run empty has no best model to push yet.$"):
        push(empty, "someone/x", which="best")
    _no_work(monkeypatch)

    from huggingface_hub.errors import HfHubHTTPError

    class Refused:  # the response, as far as huggingface_hub reads it
        status_code, headers, request = 403, {}, None

    def refuse(self, repo_id, **kw):
        raise HfHubHTTPError("403 Forbidden: you cannot write to someone-else", response=Refused())
    monkeypatch.setattr(HfApi, "create_repo", refuse)  # refused before the model is even loaded
    with pytest.raises(PushError, match=r"^The Hub refused the token for someone-else/x \(403 Forbidden"):
        push(run, "someone-else/x")


def test_a_gguf_file_joins_the_repository(run, hub):
    """The pushed GGUF reads back to the checkpoint's logits (f16 rounding aside). Our reader checks it here:
    transformers reads every gemma3 GGUF with query_pre_attn_scalar 256, which the tiny preset (head_dim 32)
    is not; tests/test_gguf.py checks our export against transformers on a model where that holds."""
    push(run, "someone/tiny-stories", gguf="f16", dtype="fp32")
    folder = hub["uploaded"]
    assert (folder / "tiny-stories-f16.gguf").is_file()
    model, _ = gemma3.load_model(folder / "tiny-stories-f16.gguf", device="cpu", dtype=torch.float32)
    with torch.no_grad():
        theirs = model(torch.tensor([PROMPT_IDS]))[0]
    torch.testing.assert_close(theirs, _our_logits(checkpoint_of(run, "last")), atol=0.05, rtol=0.05)
