"""State-dict layouts: our parameter names, transformers' Gemma 3 names and the seed projects', converted
into ours on load (the layout detected from the key names); the config a seed checkpoint's shapes imply;
and the check that a config's every size matches the tensors present before anything is built.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..config import Gemma3Config
from .files import inside, model_root, read_json, regular_file

# ---- key layouts ------------------------------------------------------------------------------
# Each layout: regex rules mapping its key names to ours (applied to the key with any prefix removed).

_BLOCK_HF = {
    r"self_attn\.q_proj": "attn.wq", r"self_attn\.k_proj": "attn.wk", r"self_attn\.v_proj": "attn.wv",
    r"self_attn\.o_proj": "attn.wo", r"self_attn\.q_norm": "attn.q_norm", r"self_attn\.k_norm": "attn.k_norm",
    r"mlp\.gate_proj": "ffn.gate", r"mlp\.up_proj": "ffn.up", r"mlp\.down_proj": "ffn.down",
    r"input_layernorm": "attn_norm", r"post_attention_layernorm": "post_attn_norm",
    r"pre_feedforward_layernorm": "ffn_norm", r"post_feedforward_layernorm": "post_ffn_norm",
}
_BLOCK_RASBT = {
    r"att\.W_query": "attn.wq", r"att\.W_key": "attn.wk", r"att\.W_value": "attn.wv", r"att\.out_proj": "attn.wo",
    r"att\.q_norm": "attn.q_norm", r"att\.k_norm": "attn.k_norm",
    r"ff\.fc1": "ffn.gate", r"ff\.fc2": "ffn.up", r"ff\.fc3": "ffn.down",
    r"input_layernorm": "attn_norm", r"post_attention_layernorm": "post_attn_norm",
    r"pre_feedforward_layernorm": "ffn_norm", r"post_feedforward_layernorm": "post_ffn_norm",
}
_BLOCK_G3NADH = {
    r"attention\.q_proj": "attn.wq", r"attention\.k_proj": "attn.wk", r"attention\.v_proj": "attn.wv",
    r"attention\.o_proj": "attn.wo", r"attention\.q_norm": "attn.q_norm", r"attention\.k_norm": "attn.k_norm",
    r"ffn\.gate_proj": "ffn.gate", r"ffn\.up_proj": "ffn.up", r"ffn\.down_proj": "ffn.down",
    r"attn_norm": "attn_norm", r"ffn_norm": "ffn_norm",
}

LAYOUTS = {
    "native": dict(
        marker="blocks.0.attn.wq.weight", blocks=r"blocks\.(\d+)\.", block_rules={},
        top={r"embed\.weight": "embed.weight", r"final_norm\.weight": "final_norm.weight",
             r"head\.weight": "head.weight"},
        describe="this project's own names (embed, blocks.N.attn.wq, ...)"),
    "hf": dict(
        marker="model.layers.0.self_attn.q_proj.weight", blocks=r"model\.layers\.(\d+)\.",
        block_rules=_BLOCK_HF,
        top={r"model\.embed_tokens\.weight": "embed.weight", r"model\.norm\.weight": "final_norm.weight",
             r"lm_head\.weight": "head.weight"},
        describe="Hugging Face transformers Gemma 3 (model.layers.N.self_attn.q_proj, ...)"),
    "rasbt": dict(
        marker="blocks.0.att.W_query.weight", blocks=r"blocks\.(\d+)\.", block_rules=_BLOCK_RASBT,
        top={r"tok_emb\.weight": "embed.weight", r"final_norm\.scale": "final_norm.weight",
             r"out_head\.weight": "head.weight"},
        describe="rasbt / di37 (tok_emb, blocks.N.att.W_query, blocks.N.ff.fc1, out_head)"),
    "g3nadh": dict(
        marker="layers.0.attention.q_proj.weight", blocks=r"layers\.(\d+)\.", block_rules=_BLOCK_G3NADH,
        top={r"embed_tokens\.weight": "embed.weight", r"final_norm\.weight": "final_norm.weight",
             r"output_proj\.weight": "head.weight"},
        describe="G3nadh (embed_tokens, layers.N.attention.q_proj, layers.N.ffn.gate_proj, output_proj)"),
}

_PREFIXES = ("_orig_mod.", "module.", "language_model.")


def strip_prefixes(sd: dict) -> dict:
    out = {}
    for key, value in sd.items():
        changed = True
        while changed:
            changed = False
            for p in _PREFIXES:
                if key.startswith(p):
                    key, changed = key[len(p):], True
        out[key] = value
    return out


def detect_layout(sd: dict) -> str:
    """Name of the layout whose marker key is present, or a ValueError naming the known layouts."""
    for name, layout in LAYOUTS.items():
        if layout["marker"] in sd:
            return name
    known = "; ".join(f"{n}: {l['describe']}" for n, l in LAYOUTS.items())
    sample = ", ".join(list(sd)[:4])
    raise ValueError(f"Unrecognised checkpoint layout (first keys: {sample}); known layouts are {known}.")


def to_native(sd: dict, layout: str) -> dict:
    """Rename every key of a state dict in `layout` to our names; unknown keys are an error."""
    spec = LAYOUTS[layout]
    block_re = re.compile(spec["blocks"])
    out, unknown = {}, []
    for key, value in sd.items():
        new = None
        for pattern, repl in spec["top"].items():
            if re.fullmatch(pattern, key):
                new = repl
        m = block_re.match(key)
        if new is None and m:
            rest = key[m.end():]
            if layout == "native":
                new = key
            for pattern, repl in spec["block_rules"].items():
                mm = re.fullmatch(pattern + r"\.(weight|scale)", rest)
                if mm:
                    new = f"blocks.{m.group(1)}.{repl}.weight"
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    unknown = [k for k in unknown if not k.endswith(("rotary_emb.inv_freq", ".mask", "embed_scale"))]
    if unknown:
        raise ValueError(f"Checkpoint in the {layout} layout has keys this model does not know: "
                         f"{', '.join(unknown[:5])}.")
    return out


def from_native(sd: dict) -> dict:
    """Our names -> transformers Gemma3ForCausalLM names (for export_hf)."""
    inverse = {v: k for k, v in _BLOCK_HF.items()}
    out = {}
    for key, value in sd.items():
        m = re.match(r"blocks\.(\d+)\.(.+)\.weight$", key)
        if m:
            hf = inverse[m.group(2)].replace("\\", "")
            out[f"model.layers.{m.group(1)}.{hf}.weight"] = value
        else:
            out[{"embed.weight": "model.embed_tokens.weight", "final_norm.weight": "model.norm.weight",
                 "head.weight": "lm_head.weight"}[key]] = value
    return out


def config_from_shapes(sd: dict, **overrides) -> Gemma3Config:
    """Infer a Gemma3Config from a native-named state dict (seed checkpoints carry no config)."""
    for key in ("embed.weight", "blocks.0.attn.q_norm.weight", "blocks.0.attn.wq.weight",
                "blocks.0.attn.wk.weight", "blocks.0.ffn.gate.weight"):
        if key not in sd or sd[key].dim() != (1 if "norm" in key else 2):
            raise ValueError(f"The checkpoint has no {'matrix' if 'norm' not in key else 'vector'} {key}; "
                             "it is not a complete Gemma 3 model.")
    layers = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k)))
    vocab, hidden = sd["embed.weight"].shape
    head_dim = max(sd["blocks.0.attn.q_norm.weight"].shape[0], 1)  # an empty one is refused by the shape check
    fields = dict(
        vocab_size=vocab, hidden=hidden, layers=layers, head_dim=head_dim,
        heads=sd["blocks.0.attn.wq.weight"].shape[0] // head_dim,
        kv_heads=sd["blocks.0.attn.wk.weight"].shape[0] // head_dim,
        ffn=sd["blocks.0.ffn.gate.weight"].shape[0],
        tied_head="head.weight" not in sd,
        post_norms="blocks.0.post_attn_norm.weight" in sd,
    )
    fields.update(overrides)
    return Gemma3Config(**fields)


def expected_shapes(cfg: Gemma3Config) -> dict[str, tuple[int, ...]]:
    """The name and shape of every weight a model of `cfg` has (what Gemma3(cfg) would hold), without building it."""
    H, q, kv = cfg.hidden, cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    block = {"attn.wq": (q, H), "attn.wk": (kv, H), "attn.wv": (kv, H), "attn.wo": (H, q),
             "attn.q_norm": (cfg.head_dim,), "attn.k_norm": (cfg.head_dim,), "ffn.gate": (cfg.ffn, H),
             "ffn.up": (cfg.ffn, H), "ffn.down": (H, cfg.ffn), "attn_norm": (H,), "ffn_norm": (H,)}
    if cfg.post_norms:
        block |= {"post_attn_norm": (H,), "post_ffn_norm": (H,)}
    shapes = {"embed.weight": (cfg.vocab_size, H), "final_norm.weight": (H,)}
    if not cfg.tied_head:
        shapes["head.weight"] = (cfg.vocab_size, H)
    for i in range(cfg.layers):
        shapes |= {f"blocks.{i}.{name}.weight": shape for name, shape in block.items()}
    return shapes


def check_shapes(cfg: Gemma3Config, shapes: dict) -> None:
    """Refuse, in one sentence, weights (name -> shape) that are not exactly those of a model of `cfg`:
    every size a config claims is checked against the tensors present before anything is built."""
    want = expected_shapes(cfg)
    missing, extra = sorted(set(want) - set(shapes)), sorted(set(shapes) - set(want))
    if missing or extra:
        raise ValueError(f"Checkpoint does not match its config ({cfg.layers} layers, vocabulary {cfg.vocab_size:,}): "
                         f"missing {', '.join(missing[:3]) or 'nothing'}, unexpected {', '.join(extra[:3]) or 'nothing'}.")
    for name, shape in want.items():
        if tuple(shapes[name]) != shape:
            raise ValueError(f"Checkpoint does not match its config: {name} has shape {tuple(shapes[name])}, "
                             f"the config asks for {shape}.")


# Config files the seed projects publish beside their weights (rasbt-style names) -> our fields.
_SEED_CONFIG_KEYS = {"context_length": "context", "sliding_window": "window", "rope_base": "rope_global_base",
                     "rope_local_base": "rope_local_base", "query_pre_attn_scalar": "query_pre_attn_scalar"}


def seed_overrides(folder: Path, layout: str, root: Path | None = None) -> dict:
    """Settings the weights' shapes cannot tell, from a config.json / model_config.json beside them."""
    defaults = {"g3nadh": {"window": 513}}.get(layout, {})
    root = model_root(folder) if root is None else root
    for name in ("model_config.json", "config.json"):
        f = inside(root, folder, name)  # before any look at the target: a link outside is refused, found or not
        if not regular_file(f, name):
            continue
        try:
            raw = read_json(f, name)
        except ValueError:
            continue
        if not isinstance(raw, dict):
            continue
        found = {ours: raw[theirs] for theirs, ours in _SEED_CONFIG_KEYS.items() if raw.get(theirs) is not None}
        if "window" in found and layout == "g3nadh":
            found["window"] += 1  # G3nadh's mask lets a query see sliding_window + 1 keys
        types = raw.get("layer_types")
        if isinstance(types, list) and all(t in ("sliding_attention", "full_attention") for t in types):
            found["layer_types"] = [t.split("_")[0] for t in types]
        return {**defaults, **found}
    return defaults


def interleaved_to_half_split(sd: dict, cfg: Gemma3Config) -> dict:
    """Exact conversion of RoPE on interleaved pairs (2i, 2i+1) to half-split pairs (i, i + D/2).

    Permuting the output rows of Wq and Wk within each head (even dims first, then odd) and the
    q/k norm weights the same way turns one rotation into the other; q.k is unchanged because
    both sides are permuted alike.
    """
    D = cfg.head_dim
    perm = torch.cat((torch.arange(0, D, 2), torch.arange(1, D, 2)))
    out = dict(sd)
    for i in range(cfg.layers):
        for name, heads in (("wq", cfg.heads), ("wk", cfg.kv_heads)):
            key = f"blocks.{i}.attn.{name}.weight"
            w = sd[key].view(heads, D, -1)
            out[key] = w[:, perm].reshape(heads * D, -1)
        for name in ("q_norm", "k_norm"):
            key = f"blocks.{i}.attn.{name}.weight"
            out[key] = sd[key][perm]
    return out
