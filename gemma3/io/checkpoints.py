"""Loading and saving weights: our format, Hugging Face Gemma 3 folders, and the seed projects' state dicts.

Our format is a folder with `config.json` (Gemma3Config plus a "format" marker) and
`model.safetensors` (our parameter names). Everything else is converted into it on load,
the layout detected from the key names.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..config import LIMITS, Gemma3Config
from ..model import Gemma3
from ..runtime.engine.packing import pack_qkv
from ..runtime import native
from ..tokenizer import gpt2_tokenizer
from .files import atomic_dir_write, inside, is_gguf, model_root, read_json, regular_file
from .gguf import gguf_tokenizer, read_gguf
from .hub import WEIGHT_SUFFIXES, resolve_source
from .layouts import (check_shapes, config_from_shapes, detect_layout, from_native, interleaved_to_half_split,
                      seed_overrides, strip_prefixes, to_native)
from .tokenizer_files import HFTokenizer, save_for_transformers

FORMAT = "gemma3-tinystories"
INDEX = "model.safetensors.index.json"


def _check_safetensors_header(path: Path, name: str):
    """Refuse a safetensors file whose header claims more bytes or tensors than the limits, before the
    safetensors library reads it (it checks the rest: every tensor's offsets against the file)."""
    size = os.stat(path).st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if not 2 <= n <= min(size - 8, LIMITS["safetensors_header_bytes"]):
            raise ValueError(f"{name} does not start with a safetensors header of at most "
                             f"{LIMITS['safetensors_header_bytes']:,} bytes; re-save or re-download the model.")
        header = f.read(n)
    try:
        tensors = json.loads(header)
    except (ValueError, RecursionError):
        tensors = None  # not JSON: the library's own refusal names it
    count = len(set(tensors) - {"__metadata__"}) if isinstance(tensors, dict) else 0
    if count > LIMITS["tensors"]:
        raise ValueError(f"{name} lists {count:,} tensors, more than the {LIMITS['tensors']:,} a model file may hold.")


def _read_weights(path: Path, name: str | None = None) -> dict:
    """A state dict from one file; `name` is the file's name in its folder (a cached Hub file's real name is a hash)."""
    name = name or path.name
    if not regular_file(path, name):
        raise FileNotFoundError(f"{name} is missing from the model folder; re-save or re-download the model.")
    if name.endswith(".safetensors"):
        _check_safetensors_header(path, name)
        try:
            return load_file(str(path))
        except Exception as e:
            raise ValueError(f"{name} could not be read as a safetensors file ({e.__class__.__name__}); "
                             "re-save or re-download the model.") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # pickles with code in them are refused here, never executed
        raise ValueError(f"{name} could not be read as a plain PyTorch state dict ({e.__class__.__name__}); "
                         "only tensors and plain containers are accepted.") from None
    for key in ("model_state_dict", "state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{name} does not hold a state dict of tensors.")
    return obj


def _weight_files(folder: Path, root: Path | None = None) -> list[tuple[Path, str]]:
    """(resolved path, name) of each weights file a folder holds, every one checked to lie inside `root`
    before any is looked at."""
    root = model_root(folder) if root is None else root
    index = inside(root, folder, INDEX)
    if regular_file(index, INDEX):
        raw = read_json(index, INDEX)
        weight_map = raw.get("weight_map") if isinstance(raw, dict) else None
        if not isinstance(weight_map, dict) or not weight_map or not all(
                isinstance(s, str) and s for s in weight_map.values()):
            raise ValueError(f"{INDEX} has no weight_map of tensor names to shard files; "
                             "re-save or re-download the model.")
        shards = sorted(set(weight_map.values()))
        files = [(inside(root, folder, s, f"A shard listed in {INDEX}"), Path(s).name) for s in shards]
        missing = [name for real, name in files if not regular_file(real, name)]
        if missing:
            raise FileNotFoundError(f"{INDEX} lists shards the folder does not hold ({', '.join(missing[:3])}); "
                                    "re-save or re-download the model.")
        return files
    for name in ("model.safetensors", "pytorch_model.bin"):
        real = inside(root, folder, name)
        if regular_file(real, name):
            return [(real, name)]
    names = sorted(p.name for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES and not p.name.startswith("optim"))
    if len(names) > 1:
        raise ValueError(f"{folder} holds several weight files ({', '.join(names)}); name the one to load.")
    return [(inside(root, folder, n), n) for n in names]


def _gguf_in(folder: Path) -> tuple[Path, Path] | None:
    """(named path, resolved path) of the one GGUF file a folder without config.json holds, checked to lie
    inside it; None when it holds none; several are a ValueError naming them."""
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".gguf"))
    if len(names) > 1:
        raise ValueError(f"The folder holds several GGUF files ({', '.join(names)}); name the one to load.")
    return (folder / names[0], inside(model_root(folder), folder, names[0])) if names else None


# ---- public API ----------------------------------------------------------------------------------

def load_state(source) -> tuple[Gemma3Config, dict, Path]:
    """Config and native-named state dict (any stored dtype) from any supported source.

    Every file read beyond the one named (config, index, shards, sidecars) resolves inside the model
    folder, links followed, or the load is refused: see `inside`.
    """
    given = resolve_source(source)
    path = Path(os.path.realpath(given))
    if path.is_dir() and not os.path.lexists(path / "config.json") and (found := _gguf_in(path)):
        given, path = found
    if path.is_file() and is_gguf(path):  # the config and tokenizer are in the file's metadata
        cfg, sd, _ = read_gguf(path)
        return cfg, sd, Path(given)  # the name it was given: a Hub cache file's real name is a hash
    # a weights file named directly is the caller's choice, wherever its links lead; its sidecars are
    # read from the folder it was named in (a Hub cache snapshot's file is a link into blobs/)
    folder = path if path.is_dir() else Path(os.path.realpath(given.parent))
    root = model_root(folder)
    # the config.json beside the weights describes them, whether the folder or one of its files is named
    config_file = inside(root, folder, "config.json")
    present = regular_file(config_file, "config.json")
    hf_config = read_json(config_file, "config.json") if present else None
    if present and not isinstance(hf_config, dict):
        raise ValueError("config.json in the model folder is not a JSON object; re-save or re-download the model.")
    ours = hf_config is not None and hf_config.get("format") == FORMAT
    if ours:  # checked before any weights are read
        cfg = Gemma3Config.from_dict({k: v for k, v in hf_config.items() if k != "format"})
    if not path.is_dir():
        files = [(path, Path(given).name)]
    elif ours:
        files = [(inside(root, folder, "model.safetensors"), "model.safetensors")]
    else:
        files = _weight_files(folder, root)
        if not files:
            raise FileNotFoundError(f"{path} holds no weights file ({', '.join(WEIGHT_SUFFIXES)}).")
    sd = {}
    for f, name in files:
        sd.update(_read_weights(f, name))
    sd = strip_prefixes(sd)
    layout = detect_layout(sd)
    sd = to_native(sd, layout)
    if not ours and layout == "hf":
        if hf_config is None:
            raise ValueError(f"{folder} has Hugging Face weights but no config.json beside them.")
        cfg = Gemma3Config.from_hf(hf_config)
        if not cfg.tied_head and "head.weight" not in sd:
            raise ValueError("config.json says the head is untied but the weights have no lm_head.")
        if cfg.tied_head:
            sd.pop("head.weight", None)
    elif not ours:
        cfg = config_from_shapes(sd, **seed_overrides(folder, layout, root))
    check_shapes(cfg, {k: v.shape for k, v in sd.items()})
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
    with torch.device("meta"):  # load_state checked every weight's name and shape against the config
        model = Gemma3(cfg)
    if dtype == torch.bfloat16 and device.type == "cpu":
        sd = pack_qkv(sd, cfg.layers, dtype)
    model.load_state_dict({k: v.to(dtype) for k, v in sd.items()}, assign=True)
    model.rope_local = type(model.rope_local)(cfg.head_dim, cfg.rope_local_base)
    model.rope_global = type(model.rope_global)(cfg.head_dim, cfg.rope_global_base, cfg.rope_global_scale)
    model = model.to(device).eval()
    tokenizer = load_tokenizer(folder)
    if tokenizer.vocab_size > cfg.vocab_size:
        if not hasattr(tokenizer, "limit"):  # the bundled GPT-2, for a folder without a tokenizer of its own
            raise ValueError(f"The tokenizer has {tokenizer.vocab_size} tokens but the model only {cfg.vocab_size}.")
        tokenizer.limit(cfg.vocab_size)  # Gemma lists more tokens than embedding rows: only ids with a row
    return model, tokenizer


def load_tokenizer(folder=None):
    """HFTokenizer if folder holds tokenizer.json, else the bundled GPT-2 tokenizer; a GGUF file's own.

    Like every file of a model folder, tokenizer.json must resolve (links followed) inside the folder
    (inside a Hub cache snapshot: inside its repository's cache folder); else one ValueError sentence.
    """
    if folder is None:
        return gpt2_tokenizer()
    if is_gguf(folder):  # a GGUF file carries its tokenizer in its metadata
        return gguf_tokenizer(folder)
    folder = Path(os.path.realpath(folder))
    path = inside(model_root(folder), folder, "tokenizer.json")
    if regular_file(path, "tokenizer.json", LIMITS["tokenizer_bytes"]):
        tok = HFTokenizer(path)
        tok.name = folder.name or tok.name  # the folder's name, not that of the file a link leads to
        return tok
    return gpt2_tokenizer()


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
    """A folder that transformers' AutoModelForCausalLM.from_pretrained loads with the same logits, and
    AutoTokenizer.from_pretrained with the same tokens."""
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
        save_for_transformers(tokenizer, tmp, cfg.context)
    return atomic_dir_write(Path(out_dir), write)
