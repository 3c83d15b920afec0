"""Gemma 3 from scratch: the model, its KV cache, sampling, the GPT-2 tokenizer and checkpoints.

Three layers (ARCHITECTURE.md): the core (config, model, cache, tokenizer, generation, loss) in plain PyTorch;
gemma3/io (checkpoints, GGUF, the Hub); gemma3/runtime (the C++ engine and fused loss). This file is the
public API, and where the runtime's fast paths are applied to the core, from outside it.
"""

import os

# PyTorch's CPU threads (GNU OpenMP) spin 300,000 rounds waiting for work before they sleep. Where the other cores
# are busy (a Space's 2 shared vCPUs, the app beside its own trainer) a spinning thread takes the core the working
# one needs: with both cores of a 2-core machine busy, the tiny preset's 60 steps trained in 76 s, in 39 s with
# 10,000 rounds; idle, 14 s either way (bench/spin.py, README). OpenMP reads it once, when PyTorch loads: it applies
# where gemma3 is imported before torch (our programs and the trainers they start), and a value already set is kept.
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

from . import generation, loss
from .config import PRESETS, Gemma3Config
from .generation import generate, generate_tokens, stream
from .io.checkpoints import export_hf, load_model, load_tokenizer, save_model
from .io.gguf import export_gguf
from .io.tokenizer_files import HFTokenizer
from .model import Gemma3
from .runtime import engine, fused_loss, graphs
from .tokenizer import GPT2Tokenizer, gpt2_tokenizer


def _decoder(model, use_engine: bool = True):
    """Generation's forward: CUDA graphs on a GPU, the C++ engine on a CPU, each where it applies (same logits)."""
    return graphs.decoder(model) if use_engine and graphs.applies(model) else engine.decoder(model, use_engine)


generation.use_decoder(_decoder)
loss.use_rows_kernel(fused_loss.rows_grad)  # the training loss's rows in C++ where it builds (same numbers)


def describe(model, tokenizer) -> str:
    """The config and a parameter breakdown, as `python -m gemma3 info` prints them."""
    cfg = model.config
    w = model.embed.weight
    kinds = "".join("F" if t == "full" else "s" for t in cfg.layer_types)
    lines = [
        f"Gemma 3: {cfg.layers} layers ({kinds}: s = sliding window {cfg.window}, F = full), hidden {cfg.hidden}, "
        f"{cfg.heads} query heads / {cfg.kv_heads} key-value head(s) of {cfg.head_dim}, feed-forward {cfg.ffn}",
        f"vocabulary {cfg.vocab_size} ({tokenizer.name}), context {cfg.context}, RoPE bases "
        f"{cfg.rope_local_base:g} sliding / {cfg.rope_global_base:g} full, head "
        f"{'tied' if cfg.tied_head else 'untied'}, {'four' if cfg.post_norms else 'two'} norms per block "
        "plus q/k norms",
        f"device {w.device}, dtype {str(w.dtype).replace('torch.', '')}, inference runs "
        + (graphs.describe() if graphs.applies(model) else engine.describe(model)),
        "",
        f"{'part':<14}{'parameters':>14}{'share':>8}",
    ]
    total = model.num_params()
    for part, n in model.param_groups().items():
        lines.append(f"{part:<14}{n:>14,}{n / total:>8.1%}")
    lines.append(f"{'total':<14}{total:>14,}")
    return "\n".join(lines)


__all__ = [
    "Gemma3", "Gemma3Config", "PRESETS", "load_model", "save_model", "export_hf", "export_gguf",
    "generate", "stream", "generate_tokens", "GPT2Tokenizer", "HFTokenizer", "gpt2_tokenizer", "load_tokenizer",
    "describe",
]
