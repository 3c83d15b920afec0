"""Loading and saving weights: our format, Hugging Face Gemma 3 folders, and the seed projects' state dicts.

Our format is a folder with `config.json` (Gemma3Config plus a "format" marker) and
`model.safetensors` (our parameter names). Everything else is converted into it on load,
the layout detected from the key names.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from . import engine, native
from .config import Gemma3Config
from .model import Gemma3
from .tokenizer import load_tokenizer

FORMAT = "gemma3-tinystories"
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


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


def _strip_prefixes(sd: dict) -> dict:
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
    layers = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k)))
    vocab, hidden = sd["embed.weight"].shape
    head_dim = sd["blocks.0.attn.q_norm.weight"].shape[0]
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


# Config files the seed projects publish beside their weights (rasbt-style names) -> our fields.
_SEED_CONFIG_KEYS = {"context_length": "context", "sliding_window": "window", "rope_base": "rope_global_base",
                     "rope_local_base": "rope_local_base", "query_pre_attn_scalar": "query_pre_attn_scalar"}


def seed_overrides(folder: Path, layout: str) -> dict:
    """Settings the weights' shapes cannot tell, from a config.json / model_config.json beside them."""
    defaults = {"g3nadh": {"window": 513}}.get(layout, {})
    for name in ("model_config.json", "config.json"):
        f = folder / name
        if not f.exists():
            continue
        try:
            raw = json.loads(f.read_text())
        except (OSError, ValueError):
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


# ---- reading files ----------------------------------------------------------------------------

def _read_weights(path: Path) -> dict:
    if path.suffix == ".safetensors":
        return load_file(str(path))
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # pickles with code in them are refused here, never executed
        raise ValueError(f"{path.name} could not be read as a plain PyTorch state dict ({e.__class__.__name__}); "
                         "only tensors and plain containers are accepted.") from None
    for key in ("model_state_dict", "state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path.name} does not hold a state dict of tensors.")
    return obj


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / s for s in shards]
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).exists():
            return [folder / name]
    files = sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES and not p.name.startswith("optim"))
    if len(files) > 1:
        raise ValueError(f"{folder} holds several weight files ({', '.join(p.name for p in files)}); "
                         "name the one to load.")
    return files


def resolve_source(source: str | os.PathLike) -> Path:
    """A local path, or `hf:owner/name` downloaded (or found in the cache) with huggingface_hub."""
    text = str(source)
    if text.startswith("hf:"):
        return _download(text[3:])
    path = Path(text).expanduser()
    interrupted = path.with_name(f".{path.name}.old")
    if not path.exists() and interrupted.is_dir():
        os.rename(interrupted, path)  # a save stopped between its two renames: restore the previous one
    if not path.exists():
        raise FileNotFoundError(f"No checkpoint at {path}: give a folder, a weights file, or hf:owner/name.")
    return path


def _download(repo_id: str) -> Path:
    from huggingface_hub import list_repo_files, snapshot_download
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    patterns = ["*.json", "*.safetensors", "*.model", "*.txt"]
    try:
        if offline:
            return Path(snapshot_download(repo_id, local_files_only=True))
        files = list_repo_files(repo_id)
        weights = [f for f in files if f.endswith(WEIGHT_SUFFIXES)]
        if not any(f.endswith(".safetensors") for f in weights):
            patterns += weights[:1] if len(weights) == 1 else [f for f in weights if "pytorch_model" in f]
        return Path(snapshot_download(repo_id, allow_patterns=patterns, etag_timeout=10))
    except Exception as e:
        if offline:
            raise ConnectionError(f"{repo_id} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
                                  "download it once with a network.") from None
        raise ConnectionError(f"Could not download {repo_id} from the Hugging Face Hub "
                              f"({e.__class__.__name__}: {str(e).splitlines()[0][:200]}).") from None


# ---- public API ----------------------------------------------------------------------------------

def load_state(source) -> tuple[Gemma3Config, dict, Path]:
    """Config and native-named state dict (any stored dtype) from any supported source."""
    path = resolve_source(source)
    folder = path if path.is_dir() else path.parent
    hf_config = None
    if path.is_dir():
        config_file = path / "config.json"
        if config_file.exists():
            raw = json.loads(config_file.read_text())
            if raw.get("format") == FORMAT:
                raw.pop("format")
                sd = load_file(str(path / "model.safetensors"))
                return Gemma3Config.from_dict(raw), sd, folder
            hf_config = raw
        files = _weight_files(path)
        if not files:
            raise FileNotFoundError(f"{path} holds no weights file ({', '.join(WEIGHT_SUFFIXES)}).")
    else:
        files = [path]
    sd = {}
    for f in files:
        sd.update(_read_weights(f))
    sd = _strip_prefixes(sd)
    layout = detect_layout(sd)
    sd = to_native(sd, layout)
    if layout == "hf":
        if hf_config is None:
            raise ValueError(f"{folder} has Hugging Face weights but no config.json beside them.")
        cfg = Gemma3Config.from_hf(hf_config)
        if not cfg.tied_head and "head.weight" not in sd:
            raise ValueError("config.json says the head is untied but the weights have no lm_head.")
        if cfg.tied_head:
            sd.pop("head.weight", None)
    else:
        cfg = config_from_shapes(sd, **seed_overrides(folder, layout))
        if layout == "g3nadh":
            sd = interleaved_to_half_split(sd, cfg)
    return cfg, sd, folder


def stored_dtype(sd: dict) -> torch.dtype:
    """The floating-point dtype most of a state dict's numbers are stored in."""
    sizes: dict = {}
    for t in sd.values():
        if t.is_floating_point():
            sizes[t.dtype] = sizes.get(t.dtype, 0) + t.numel()
    return max(sizes, key=sizes.get) if sizes else torch.float32


def default_dtype(device, stored: torch.dtype) -> torch.dtype:
    """bf16 on CUDA; on a CPU, bf16 where the checkpoint is stored in bf16 and the CPU computes in bf16
    natively (AVX512-BF16 or AMX: decoding gemma-3-270m ran 4.5x faster than fp32 here), else fp32."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16
    if device.type == "cpu" and stored == torch.bfloat16 and native.cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


def load_model(source, device=None, dtype=None):
    """(model, tokenizer) from a folder, a weights file or `hf:owner/name`; eval mode.

    device: default CUDA when available, else CPU. dtype: default `default_dtype` (bf16 on CUDA, and
    on a CPU with native bf16 arithmetic for a checkpoint stored in bf16; else fp32).
    """
    cfg, sd, folder = load_state(source)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if isinstance(dtype, str):
        dtype = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                 "bf16": torch.bfloat16}[dtype]
    dtype = dtype or default_dtype(device, stored_dtype(sd))
    with torch.device("meta"):
        model = Gemma3(cfg)
    missing = set(model.state_dict()) - set(sd)
    extra = set(sd) - set(model.state_dict())
    if missing or extra:
        raise ValueError(f"Checkpoint does not match its config: missing {sorted(missing)[:4]}, "
                         f"unexpected {sorted(extra)[:4]}.")
    if dtype == torch.bfloat16 and device.type == "cpu":
        sd = engine.pack_qkv(sd, cfg.layers, dtype)
    model.load_state_dict({k: v.to(dtype) for k, v in sd.items()}, assign=True)
    model.rope_local = type(model.rope_local)(cfg.head_dim, cfg.rope_local_base)
    model.rope_global = type(model.rope_global)(cfg.head_dim, cfg.rope_global_base, cfg.rope_global_scale)
    model = model.to(device).eval()
    tokenizer = load_tokenizer(folder)
    if tokenizer.vocab_size > cfg.vocab_size:
        raise ValueError(f"The tokenizer has {tokenizer.vocab_size} tokens but the model only {cfg.vocab_size}.")
    return model, tokenizer


def atomic_dir_write(out_dir: Path, write):
    """Write into a temporary sibling folder, then swap it in, so a crash never leaves half a checkpoint."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        write(tmp)
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        old = None
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.rename(out_dir, old)
        try:
            os.rename(tmp, out_dir)
        except BaseException:
            if old is not None:
                os.rename(old, out_dir)  # put the previous checkpoint back
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def atomic_write_text(path: Path, text: str):
    """Write a small text file so that readers see the old or the new content, never half of it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.{threading.get_ident()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _cpu_state(model) -> dict:
    """Each tensor copied to the CPU in its own memory: safetensors refuses tensors that share a
    buffer, as packed q/k/v weights do (pack_qkv)."""
    return {k: v.detach().to("cpu", memory_format=torch.contiguous_format, copy=True)
            for k, v in model.state_dict().items()}


def write_model_files(model, tokenizer, folder: Path):
    """Our format into an existing folder: config.json + model.safetensors (+ tokenizer.json if not GPT-2)."""
    save_file(_cpu_state(model), str(folder / "model.safetensors"), metadata={"format": FORMAT})
    (folder / "config.json").write_text(model.config.to_json())
    tokenizer.save(folder)


def save_model(model, tokenizer, path):
    """Our format, written atomically: a crash never leaves half a checkpoint at `path`."""
    return atomic_dir_write(Path(path), lambda tmp: write_model_files(model, tokenizer, tmp))


def export_hf(model, tokenizer, out_dir):
    """A folder that transformers' AutoModelForCausalLM.from_pretrained loads with the same logits."""
    cfg = model.config
    hf_cfg = cfg.to_hf()
    hf_cfg["torch_dtype"] = str(model.embed.weight.dtype).replace("torch.", "")
    if tokenizer.eot_id is not None:
        hf_cfg["eos_token_id"] = tokenizer.eot_id
        hf_cfg["bos_token_id"] = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eot_id

    def write(tmp: Path):
        save_file(from_native(_cpu_state(model)), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(hf_cfg, indent=2))
        (tmp / "generation_config.json").write_text(json.dumps(
            {"eos_token_id": hf_cfg["eos_token_id"], "bos_token_id": hf_cfg["bos_token_id"]}, indent=2))
        tokenizer.save(tmp)
    return atomic_dir_write(Path(out_dir), write)
