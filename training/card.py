"""Export a run's model with a model card: `python -m training export --run runs/NAME --out DIR`.

The card states what a reader needs to trust or reproduce the model: the data, the command,
steps, tokens, wall time, the final train and validation loss, and samples for fixed prompts.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import torch

import gemma3
from gemma3.io.checkpoints import write_model_files
from gemma3.io.files import atomic_dir_write
from gemma3.errors import no_paths

from .config import TrainConfig
from .trainer import checkpoints

PROMPTS = ["Once upon a time", "Lily found a little red ball", "The dog was sad because",
           "One day, Tom and his mom", "Ben wanted to fly a kite"]


def hub_dataset(meta: dict) -> str | None:
    """The Hub dataset the data was prepared from (meta.json); None for the built-in corpus and local files."""
    source = meta.get("source")
    kind = (meta.get("params") or {}).get("source")
    return source if isinstance(source, str) and source == kind and kind not in ("builtin", "files") else None


def data_source(meta: dict) -> tuple[str, str]:
    """(what the card calls the data, the prepare command's --source), naming no server path and no file: the
    built-in corpus, a Hub dataset's id, or the trainer's own story files (their names are theirs)."""
    params = meta.get("params") or {}
    if params.get("source") == "builtin":
        return "`builtin`", f"builtin --stories {params.get('stories')}"
    if hub := hub_dataset(meta):
        return f"`{hub}`", hub
    if params.get("source") == "files":
        n = len(params.get("files") or [])
        return f"{n} story file{'' if n == 1 else 's'} of the trainer's own (not published)", "YOUR_STORY_FILES"
    return "`?`", "?"


def public_config(run, cfg: dict) -> dict:
    """The run's settings (config.json) as published: its folders by the names the commands use (data/NAME,
    runs/NAME), never where they are on the machine that trained it."""
    public = {**cfg, "data": f"data/{Path(cfg['data']).name}", "out": f"runs/{Path(run).name}"}
    if cfg.get("init_from") and not str(cfg["init_from"]).startswith(("hf:", "random:")):
        public["init_from"] = Path(cfg["init_from"]).name
    return public


def _records(run: Path) -> tuple[list[dict], list[dict]]:
    lines = (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").exists() else []
    records = [json.loads(line) for line in lines if line.strip()]
    return [r for r in records if r["kind"] == "train"], [r for r in records if r["kind"] == "eval"]


def checkpoint_of(run, which: str = "last") -> Path:
    """The folder of the run's last complete step checkpoint, or of best/; FileNotFoundError if none."""
    run = Path(run)
    found = checkpoints(run)
    source = run / "best" if which == "best" else (found[-1] if found else None)
    if source is None or not (source / "model.safetensors").exists():
        raise FileNotFoundError(f"{run} has no {'best model' if which == 'best' else 'checkpoint'} to export.")
    return source


def model_and_card(run, name: str, dtype: str = "bf16", which: str = "last", seed: int = 0, command: str | None = None):
    """(the model in the stored dtype, its tokenizer, the card's Markdown) for the run's chosen checkpoint.

    `command` is the card's last command line (default: the export command that writes `name`)."""
    run = Path(run)
    source = checkpoint_of(run, which)
    model, tok = gemma3.load_model(source, device="cpu", dtype=torch.float32)
    cfg = json.loads((run / "config.json").read_text())
    status = json.loads((run / "status.json").read_text()) if (run / "status.json").exists() else {}
    train, evals = _records(run)
    meta_file = Path(cfg["data"]) / "meta.json"
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    torch_dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    model = model.to(torch_dtype).float()  # samples come from the stored (rounded) weights, as users load them
    samples = [(p, gemma3.generate(model, tok, p, max_new_tokens=120, temperature=0.7, top_k=50, seed=seed))
               for p in PROMPTS]
    stored = model.to(torch_dtype)
    card = _card(name, run, source, cfg, status, train, evals, meta, stored, samples, dtype, seed, command)
    return stored, tok, card


def export(run, out, dtype: str = "bf16", which: str = "last", seed: int = 0) -> Path:
    """Write the run's model (last step checkpoint, or best/) in our format plus README.md, atomically."""
    stored, tok, card = model_and_card(run, Path(out).name, dtype, which, seed)

    def write(tmp: Path):
        write_model_files(stored, tok, tmp)
        (tmp / "README.md").write_text(card)
    return atomic_dir_write(Path(out), write)


def _card(name, run, source, cfg, status, train, evals, meta, model, samples, dtype, seed, command=None) -> str:
    mcfg = model.config
    last_train = train[-1] if train else {}
    last_eval = evals[-1] if evals else {}
    if source.name.startswith("step_"):
        step = int(source.name.split("_")[-1])
    elif evals:  # best/: the weights of the evaluation with the lowest validation loss
        step = min(evals, key=lambda e: e["val_loss"])["step"]
    else:
        step = status.get("step")
    size_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 1e6
    data = public_config(run, cfg)["data"]  # where the files were is the trainer's business, not the reader's
    described, source_flag = data_source(meta)
    prepare_cmd = f"python -m training prepare --source {source_flag} --out {data}"
    train_cmd = (f"python -m training train --data {data} --preset {cfg['preset']} --out runs/{run.name}"
                 + _flags(cfg))
    tokens = next((e["tokens"] for e in evals if e["step"] == step), last_train.get("tokens", 0))
    device = status.get("device") or "a machine it did not record"
    ended = (f"- The run {status['state']} at step {status.get('step')} of {status.get('max_steps')}"
             + (f" ({no_paths(status['reason'])})" if status.get("reason") else "") + "; "
             + (f"these are the weights of step {step}, its lowest validation loss." if source.name == "best"
                else f"these are the weights of step {step}.")) if status.get("state") else None
    lines = [
        f"# {name}: a Gemma 3 in miniature, trained by this project",
        "",
        f"{model.num_params():,} parameters ({mcfg.layers} layers: "
        f"{''.join('F' if t == 'full' else 's' for t in mcfg.layer_types)}, s = sliding window {mcfg.window}, "
        f"F = full; hidden {mcfg.hidden}, {mcfg.heads} query heads / {mcfg.kv_heads} key-value head of "
        f"{mcfg.head_dim}, feed-forward {mcfg.ffn}, RoPE bases {mcfg.rope_local_base:g} / {mcfg.rope_global_base:g}, "
        f"GPT-2 vocabulary, tied head), stored in {dtype} ({size_mb:.1f} MB).",
        "",
        "## How it was made",
        "",
        f"- Data: {described}, {meta.get('train_tokens', 0):,} training tokens in "
        f"{meta.get('train_stories', 0):,} stories, {meta.get('val_tokens', 0):,} validation tokens.",
        "- Commands (reproduce from the repository root; the data step needs no network):",
        "",
        "```bash",
        prepare_cmd,
        train_cmd,
        command or (f"python -m training export --run runs/{run.name} --out {name}"
                    + (" --checkpoint best" if source.name == "best" else "")
                    + (f" --dtype {dtype}" if dtype != "bf16" else "")),
        "```",
        "",
        f"- Training: {step} steps of {cfg['batch_size']} x {cfg['seq_len']} tokens x {cfg['grad_accum']} "
        f"accumulation, {tokens:,} tokens seen, lr {cfg['lr']:g} -> {cfg['min_lr']:g} "
        f"(warm-up {cfg['warmup_steps']}), AdamW ({cfg['beta1']}, {cfg['beta2']}), weight decay "
        f"{cfg['weight_decay']}, clip {cfg['grad_clip']}, seed {cfg['seed']}.",
        f"- Wall time: {last_train.get('elapsed_s', 0) / 60:.1f} minutes of training steps on the machine "
        f"that trained it ({device}), {last_train.get('tokens_per_s', 0):,.0f} tokens/s at the end.",
        f"- Final train loss {last_train.get('loss', float('nan')):.4f}; validation loss "
        f"{last_eval.get('val_loss', float('nan')):.4f} (perplexity {last_eval.get('val_ppl', float('nan')):.2f}, "
        f"{last_eval.get('val_bpb', float('nan')):.3f} bits per byte) at step {last_eval.get('step')}.",
        *([ended] if ended else []),
        "",
        f"## Samples (temperature 0.7, top-k 50, seed {seed}, 120 new tokens)",
        "",
    ]
    for prompt, text in samples:
        lines += [f"**{prompt}**{text}", ""]
    knows = ("only the built-in corpus's few hundred words and its simple plots" if meta.get("source") == "builtin"
             else "only what its training stories hold")
    lines += [f"It knows {knows}: it is a demonstration of the architecture and the trainer, not a general model.", ""]
    return "\n".join(lines)


def _flags(cfg: dict) -> str:
    """The train command's flags for every setting that differs from its preset's default."""
    base = TrainConfig.for_preset(cfg["preset"]).to_dict()
    skip = {"data", "out", "preset", "model", "init_from", "device", "dtype", "peak_tflops", "trackers"}
    flags = [f" --{k.replace('_', '-')} {shlex.quote(str(v))}" for k, v in cfg.items()
             if k in base and k not in skip and v != base[k] and not isinstance(v, bool)]
    flags += [f" --{'' if v else 'no-'}{k.replace('_', '-')}" for k, v in cfg.items()
              if isinstance(v, bool) and k in base and v != base[k]]
    flags += [f" --set {k}={v}" for k, v in (cfg.get("model") or {}).items()]
    return "".join(flags)
