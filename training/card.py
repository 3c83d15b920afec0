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
from gemma3.checkpoints import atomic_dir_write, write_model_files

from .config import TrainConfig
from .trainer import checkpoints

PROMPTS = ["Once upon a time", "Lily found a little red ball", "The dog was sad because",
           "One day, Tom and his mom", "Ben wanted to fly a kite"]


def _records(run: Path) -> tuple[list[dict], list[dict]]:
    lines = (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").exists() else []
    records = [json.loads(line) for line in lines if line.strip()]
    return [r for r in records if r["kind"] == "train"], [r for r in records if r["kind"] == "eval"]


def export(run, out, dtype: str = "bf16", which: str = "last", seed: int = 0) -> Path:
    """Write the run's model (last step checkpoint, or best/) in our format plus README.md, atomically."""
    run = Path(run)
    found = checkpoints(run)
    source = run / "best" if which == "best" else (found[-1] if found else None)
    if source is None or not (source / "model.safetensors").exists():
        raise FileNotFoundError(f"{run} has no {'best model' if which == 'best' else 'checkpoint'} to export.")
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
    card = _card(Path(out).name, run, source, cfg, status, train, evals, meta, stored, samples, dtype, seed)

    def write(tmp: Path):
        write_model_files(stored, tok, tmp)
        (tmp / "README.md").write_text(card)
    return atomic_dir_write(Path(out), write)


def _card(name, run, source, cfg, status, train, evals, meta, model, samples, dtype, seed) -> str:
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
    stories = f" --stories {meta['params']['stories']}" if meta.get("source") == "builtin" else ""
    data = f"data/{Path(cfg['data']).name}"  # where the files were is the trainer's business, not the reader's
    prepare_cmd = f"python -m training prepare --source {meta.get('source', '?')}{stories} --out {data}"
    train_cmd = (f"python -m training train --data {data} --preset {cfg['preset']} --out runs/{run.name}"
                 + _flags(cfg))
    tokens = next((e["tokens"] for e in evals if e["step"] == step), last_train.get("tokens", 0))
    device = status.get("device") or "a machine it did not record"
    ended = (f"- The run {status['state']} at step {status.get('step')} of {status.get('max_steps')}"
             + (f" ({status['reason']})" if status.get("reason") else "") + "; "
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
        f"- Data: `{meta.get('source', '?')}`, {meta.get('train_tokens', 0):,} training tokens in "
        f"{meta.get('train_stories', 0):,} stories, {meta.get('val_tokens', 0):,} validation tokens.",
        "- Commands (reproduce from the repository root; the data step needs no network):",
        "",
        "```bash",
        prepare_cmd,
        train_cmd,
        f"python -m training export --run runs/{run.name} --out {name}"
        + (" --checkpoint best" if source.name == "best" else "") + (f" --dtype {dtype}" if dtype != "bf16" else ""),
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
    lines += ["It knows only the built-in corpus's few hundred words and its simple plots: it is a demonstration "
              "of the architecture and the trainer, not a general model.", ""]
    return "\n".join(lines)


def _flags(cfg: dict) -> str:
    """The train command's flags for every setting that differs from its preset's default."""
    base = TrainConfig.for_preset(cfg["preset"]).to_dict()
    skip = {"data", "out", "preset", "model", "init_from", "device", "dtype", "peak_tflops"}
    flags = [f" --{k.replace('_', '-')} {shlex.quote(str(v))}" for k, v in cfg.items()
             if k in base and k not in skip and v != base[k] and not isinstance(v, bool)]
    flags += [f" --{'' if v else 'no-'}{k.replace('_', '-')}" for k, v in cfg.items()
              if isinstance(v, bool) and k in base and v != base[k]]
    flags += [f" --set {k}={v}" for k, v in (cfg.get("model") or {}).items()]
    return "".join(flags)
