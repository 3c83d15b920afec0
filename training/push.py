"""Push a run's model to the Hugging Face Hub: `python -m training push --run runs/NAME [--repo user/name]`.

The repository is one transformers loads (config.json, model.safetensors, GPT-2's tokenizer files), with
our own format beside it in gemma3/ (what gemma3.load_model reads fastest), the run's config and metrics
in run/, the loss curve as loss_curve.png, and a model card (README.md) whose YAML header the Hub reads
(license, datasets, tags) above training/card.py's text: the data, the commands, steps, tokens, wall
time, losses and samples. A GGUF file (llama.cpp, LM Studio, Ollama) joins them when asked for
(`gemma3.export_gguf`).

A new repository is private unless the push asks for public. What is pushed names no path of the machine that
trained it and no uploaded file's name: run/config.json names its folders data/NAME and runs/NAME, and the card
calls local story files what they are, not by their names (training/card.py: public_config, data_source).

Nothing is done before the two things a push cannot go without are known to be there: the network
(HF_HUB_OFFLINE unset, the Hub reachable) and a token (the signed-in visitor's OAuth token the app
passes, else HF_TOKEN or the cached `hf auth login`). Each missing one is one sentence, at once.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import gemma3
from gemma3.io.checkpoints import write_model_files
from gemma3.io.hub import hub_reachable
from gemma3.errors import no_paths

from .card import _records, checkpoint_of, hub_dataset, model_and_card, public_config

LICENSE = "mit"  # the project's licence (README.md's header); the weights are the run's own
TAGS = ["gemma3", "tinystories", "text-generation"]
GGUF_TYPES = ("f16", "bf16", "q8_0")


class PushError(ValueError):
    """A push that cannot be done, in one sentence saying what to do."""


def _offline() -> bool:
    from huggingface_hub import constants
    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def hub_token(token=None) -> str:
    """The token to push with: the one given (a string, or the app's gr.OAuthToken), else HF_TOKEN or the
    cached login; PushError, before any work, when offline or when there is none."""
    if _offline():
        raise PushError("HF_HUB_OFFLINE is set, and pushing to the Hugging Face Hub needs the network; "
                        "unset HF_HUB_OFFLINE and push again.")
    token = getattr(token, "token", token)  # gr.OAuthToken holds the string in .token
    if not token:
        from huggingface_hub import get_token
        token = get_token()
    if not token:
        raise PushError("Pushing to the Hugging Face Hub needs a token with write access: run `hf auth login` "
                        "or set HF_TOKEN (on the Space: sign in with Hugging Face).")
    return token


def loss_curve(run, path) -> Path:
    """The run's loss curve (train loss per logged step, validation loss per evaluation) as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    train, evals = _records(Path(run))
    fig = Figure(figsize=(7, 4), dpi=110)
    ax = fig.add_subplot()
    if train:
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], color="#4c72b0", lw=1.2, label="train loss")
    if evals:
        ax.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "o-", color="#dd8452", ms=4,
                label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats per token)")
    ax.set_title(f"{Path(run).name}: loss")
    ax.grid(alpha=0.3)
    losses = [r["loss"] for r in train] + [r["val_loss"] for r in evals]
    if losses:
        ax.legend()
    if losses and min(losses) > 0 and max(losses) / min(losses) > 3:  # a long run: its tail is readable in log
        from matplotlib.ticker import NullFormatter, ScalarFormatter
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
    fig.tight_layout()
    fig.savefig(path, format="png")
    return Path(path)


def _front_matter(run: Path) -> str:
    """The card's YAML header: what the Hub shows and searches by."""
    cfg = json.loads((run / "config.json").read_text())
    meta_file = Path(cfg["data"]) / "meta.json"
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    hub_data = hub_dataset(meta)  # a Hub dataset id, not the built-in corpus or local files
    lines = ["---", f"license: {LICENSE}", "library_name: transformers", "pipeline_tag: text-generation",
             "language:", "- en", "tags:", *[f"- {t}" for t in TAGS]]
    if hub_data:
        lines += ["datasets:", f"- {hub_data}"]
    return "\n".join(lines + ["---", ""])


def _usage(repo_id: str, gguf_file: str | None) -> list[str]:
    lines = ["## Use it", "", "With transformers:", "", "```python",
             "from transformers import AutoModelForCausalLM, AutoTokenizer",
             f'tok = AutoTokenizer.from_pretrained("{repo_id}")',
             f'model = AutoModelForCausalLM.from_pretrained("{repo_id}")',
             'ids = tok("Once upon a time", return_tensors="pt").input_ids',
             "print(tok.decode(model.generate(ids, max_new_tokens=80, do_sample=True, temperature=0.7)[0]))",
             "```", "", "With this project (the model in gemma3/ is the same weights in its own format):", "",
             "```bash", f'python -m gemma3 generate --model hf:{repo_id} --prompt "Once upon a time"', "```", ""]
    if gguf_file:
        lines += ["With llama.cpp:", "", "```bash",
                  f'llama-cli -hf {repo_id}:{gguf_file} -p "Once upon a time" -n 120', "```", ""]
    return lines


def stage(run, folder, repo_id: str, *, which: str = "last", dtype: str = "bf16", gguf: str | None = None,
          seed: int = 0) -> Path:
    """Write into `folder` (existing, empty) every file the repository will hold; returns the folder."""
    run, folder = Path(run), Path(folder)
    name = repo_id.split("/")[-1]
    command = (f"python -m training push --run runs/{run.name} --repo {repo_id}"
               + (" --checkpoint best" if which == "best" else "") + (f" --dtype {dtype}" if dtype != "bf16" else "")
               + (f" --gguf {gguf}" if gguf else ""))
    model, tok, card = model_and_card(run, name, dtype, which, seed, command=command)
    gemma3.export_hf(model, tok, folder / ".hf")  # atomic_dir_write wants a folder of its own
    for f in (folder / ".hf").iterdir():
        f.rename(folder / f.name)
    (folder / ".hf").rmdir()
    (folder / "gemma3").mkdir()
    write_model_files(model, tok, folder / "gemma3")
    (folder / "run").mkdir()  # the run's files, naming no path of this machine (nor an uploaded file's name)
    (folder / "run" / "config.json").write_text(
        json.dumps(public_config(run, json.loads((run / "config.json").read_text())), indent=2))
    if (run / "metrics.jsonl").exists():
        shutil.copyfile(run / "metrics.jsonl", folder / "run" / "metrics.jsonl")
    if (run / "status.json").exists():
        status = json.loads((run / "status.json").read_text())
        reason = status.get("reason")
        status = {**status, "reason": no_paths(reason) if isinstance(reason, str) else reason}
        (folder / "run" / "status.json").write_text(json.dumps(status, indent=2))
    loss_curve(run, folder / "loss_curve.png")
    gguf_file = None
    if gguf:
        gguf_file = f"{name}-{gguf}.gguf"
        gemma3.export_gguf(model, tok, folder / gguf_file, dtype=gguf)
    head, _, rest = card.partition("\n## How it was made")
    card = (_front_matter(run) + head + "\n![Train and validation loss](loss_curve.png)\n\n"
            + "\n".join(_usage(repo_id, gguf_file)) + "\n## How it was made" + rest)
    (folder / "README.md").write_text(card)
    return folder


def push(run, repo_id: str | None = None, *, private: bool = True, which: str = "last", dtype: str = "bf16",
         gguf: str | None = None, token=None, seed: int = 0) -> str:
    """Upload the run's chosen checkpoint as a Hub model repository; returns its URL.

    repo_id: "user/name" (default: the token's user and the run's name; a bare name gets the user);
    private: a new repository is private unless this is False (an existing one keeps its visibility);
    token: the signed-in visitor's OAuth token (a string or gr.OAuthToken), else HF_TOKEN or the cached login."""
    from huggingface_hub import HfApi, constants

    run = Path(run)
    if gguf is not None and gguf not in GGUF_TYPES:
        raise PushError(f"The GGUF type must be one of {', '.join(GGUF_TYPES)}, not {gguf!r}.")
    if dtype not in ("bf16", "fp32"):
        raise PushError(f"The precision must be bf16 or fp32, not {dtype!r}.")
    token = hub_token(token)
    if not hub_reachable(constants.ENDPOINT):
        raise PushError("The Hugging Face Hub cannot be reached from here; push again with a network.")
    if not (run / "config.json").is_file():  # messages name the run, never a server path
        raise PushError(f"{run.name} is not a training run folder (it has no config.json).")
    try:
        checkpoint_of(run, which)
    except FileNotFoundError:
        raise PushError(f"The run {run.name} has no {'best model' if which == 'best' else 'checkpoint'} "
                        "to push yet.") from None
    api = HfApi(endpoint=constants.ENDPOINT, token=token)
    try:
        if not repo_id or "/" not in repo_id:
            repo_id = f"{api.whoami()['name']}/{repo_id or run.name}"
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")  # a refusal: before the work
        with tempfile.TemporaryDirectory(prefix="gemma3-push-") as tmp:
            stage(run, tmp, repo_id, which=which, dtype=dtype, gguf=gguf, seed=seed)
            api.upload_folder(repo_id=repo_id, folder_path=tmp, repo_type="model",
                              commit_message=f"Upload {run.name} ({which} checkpoint) from gemma3-tinystories")
    except PushError:
        raise
    except Exception as e:  # the Hub refused (a read-only token, a name taken by someone else) or the network broke
        from huggingface_hub.errors import HfHubHTTPError
        what = str(e).strip().splitlines()[0][:200] if str(e).strip() else e.__class__.__name__
        if isinstance(e, HfHubHTTPError) and getattr(e.response, "status_code", None) in (401, 403):
            raise PushError(f"The Hub refused the token for {repo_id} ({what}); use a token with write access "
                            "to that namespace.") from None
        raise PushError(f"Could not push to {repo_id} on the Hugging Face Hub ({what}).") from None
    return str(getattr(url, "url", None) or f"{constants.ENDPOINT}/{repo_id}")

