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
import socket
import stat
import struct
import tempfile
import threading
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from . import engine, native
from .config import LIMITS, Gemma3Config
from .model import Gemma3
from .tokenizer import _is_gguf, load_tokenizer

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
            raw = _read_json(f, name)
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


# ---- reading files ----------------------------------------------------------------------------
# The app serves strangers, and a model folder is theirs to fill (a Hub repository lands in the cache,
# an allowed folder): an index may name any path, any file may be a link. So every file a loader opens
# is first resolved, links followed, and must lie inside the folder being loaded; a path that leaves it
# is refused with one sentence that reads the same whether its target exists or not, before anything
# out there is opened. The folder (or single weights file) the caller names is taken where its own links
# lead: naming it is the caller's choice, which the app checks against its allowed folders first.

INDEX = "model.safetensors.index.json"


def model_root(folder) -> Path:
    """The folder a model's files must resolve inside: `folder` itself with its links followed, or, for a
    snapshot in the Hugging Face cache (whose files are links to ../../blobs/), that repository's cache folder."""
    folder = Path(os.path.realpath(folder))
    if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
        return folder.parent.parent
    return folder


def inside(root: Path, folder, name: str, what: str | None = None) -> Path:
    """folder/name with every link followed, which must lie inside `root`; else one ValueError sentence.

    `name` may be anything an index or a folder listing holds (absolute, `../..`, a link, a link to a
    folder); the refusal names only `what` (default `name`), never the target, and is decided from
    the path alone, so it reads the same whether the outside target exists, is unreadable or is missing.
    """
    try:
        real = Path(os.path.realpath(Path(folder) / name))
        ok = real != root and real.is_relative_to(root)
    except (OSError, ValueError):  # e.g. a NUL byte in a name from an index
        ok = False
    if not ok:
        raise ValueError(f"{what or name} points outside the model folder; a model folder must hold its own "
                         "files, not links or paths to files elsewhere.")
    return real


def regular_file(path, name: str, limit: int | None = None) -> bool:
    """Whether `path` (links followed) is a regular file; False when nothing is there. Anything else in its
    place (a FIFO, a device, a socket, a folder) is refused with one sentence before it is opened: opening a
    FIFO blocks forever. With `limit`, a file of more bytes is refused too."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):  # missing, a broken link, a NUL byte in the name
        return False
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{name} is not a regular file; a model folder must hold plain files only.")
    if limit is not None and st.st_size > limit:
        raise ValueError(f"{name} holds {st.st_size:,} bytes, more than the {limit:,} such a file may have.")
    return True


def _read_json(path: Path, name: str):
    regular_file(path, name, LIMITS["json_bytes"])
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        raise ValueError(f"{name} in the model folder is not readable JSON; re-save or re-download the model.") from None


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
        raw = _read_json(index, INDEX)
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


def resolve_source(source: str | os.PathLike, token: str | bool | None = None) -> Path:
    """A local path, or `hf:owner/name` downloaded (or found in the cache) with huggingface_hub.

    token: what the Hub requests carry: None, the environment's (HF_TOKEN or the cached login); a token; or
    False, none at all (an app's visitor: a copy already in the cache, else a public repository)."""
    text = str(source)
    if text.startswith("hf:"):
        return _download(text[3:], token)
    path = Path(text).expanduser()
    interrupted = path.with_name(f".{path.name}.old")
    if not path.exists() and is_model_folder(interrupted):
        os.rename(interrupted, path)  # a save stopped between its two renames: restore the previous one
    if not path.exists():
        raise FileNotFoundError(f"No checkpoint at {path}: give a folder, a weights file, or hf:owner/name.")
    return path


HUB_PROBE_SECONDS = 1.5  # a TCP connect to the Hub takes well under 0.5 s on any working network


def hub_reachable(endpoint: str | None = None, timeout: float = HUB_PROBE_SECONDS) -> bool:
    """Whether a TCP connection to the Hugging Face Hub (or to the proxy the environment names for it)
    opens within `timeout` seconds.

    One short probe before any download: without a network huggingface_hub and datasets retry for
    24-36 s before giving up. The name lookup and the connect run in a helper thread, because
    getaddrinfo ignores socket timeouts (an unreachable DNS server would hold us for its own).
    """
    import urllib.request
    from urllib.parse import urlsplit

    if endpoint is None:
        from huggingface_hub import constants
        endpoint = constants.ENDPOINT
    try:
        url = urlsplit(endpoint)
        host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
        proxies = urllib.request.getproxies()
        proxy = proxies.get(url.scheme) or proxies.get("all")
        if host and proxy and not urllib.request.proxy_bypass_environment(host, proxies):
            p = urlsplit(proxy if "://" in proxy else "http://" + proxy)
            host, port = p.hostname, p.port or (443 if p.scheme == "https" else 80)
    except ValueError:  # a malformed endpoint or proxy setting
        return False
    if not host:
        return False
    opened = []

    def connect():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            opened.append(True)
        except (OSError, ValueError):
            pass

    probe = threading.Thread(target=connect, name="hub-probe", daemon=True)
    probe.start()
    probe.join(timeout)
    return bool(opened)


def _hub_offline() -> bool:
    from huggingface_hub import constants
    env = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    return bool(constants.HF_HUB_OFFLINE) or env


def _download(repo_id: str, token: str | bool | None = None) -> Path:
    """A Hub repository's snapshot folder, or one GGUF file of it: `owner/name/file.gguf` names the file;
    a repository of GGUF files only (no transformers weights) gives its one file, or a sentence listing them."""
    from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download
    filename = None
    if repo_id.count("/") > 1 and repo_id.endswith(".gguf"):
        owner, name, filename = repo_id.split("/", 2)
        repo_id = f"{owner}/{name}"
        if ".." in filename.split("/"):
            raise ValueError(f"{filename} is not a file name inside the repository.")
    offline = _hub_offline()
    endpoint = constants.ENDPOINT  # read now, and passed on: HfApi's default endpoint is fixed at import
    patterns = ["*.json", "*.safetensors", "*.model", "*.txt"]

    def cached():
        if filename:
            return Path(hf_hub_download(repo_id, filename, local_files_only=True))
        return Path(snapshot_download(repo_id, local_files_only=True))

    what = f"{repo_id}/{filename}" if filename else repo_id
    if token is False:  # nobody's credentials: the copy in the cache first, else what anyone may download
        try:
            return cached()
        except Exception:
            pass
    if not offline and not hub_reachable(endpoint):
        try:  # no network: a copy already in the cache still loads, at once
            return cached()
        except Exception:
            raise ConnectionError(f"{what} is not in the local Hugging Face cache and the Hugging Face Hub "
                                  "cannot be reached from here; download it once with a network.") from None
    try:
        if offline:
            return cached()
        if filename:
            return Path(hf_hub_download(repo_id, filename, etag_timeout=10, endpoint=endpoint, token=token))
        files = HfApi(endpoint=endpoint).list_repo_files(repo_id, token=token)
        weights = [f for f in files if f.endswith(WEIGHT_SUFFIXES)]
        ggufs = [f for f in files if f.endswith(".gguf")]
        if ggufs and not weights:
            if len(ggufs) > 1:
                raise _Choose(f"{repo_id} holds several GGUF files ({', '.join(ggufs)}); pick one as "
                              f"hf:{repo_id}/<file>, e.g. hf:{repo_id}/{ggufs[0]}.")
            return Path(hf_hub_download(repo_id, ggufs[0], etag_timeout=10, endpoint=endpoint, token=token))
        if not any(f.endswith(".safetensors") for f in weights):
            patterns += weights[:1] if len(weights) == 1 else [f for f in weights if "pytorch_model" in f]
        return Path(snapshot_download(repo_id, allow_patterns=patterns, etag_timeout=10, endpoint=endpoint,
                                      token=token))
    except _Choose as e:
        raise ValueError(str(e)) from None
    except Exception as e:
        if offline:
            raise ConnectionError(f"{what} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
                                  "download it once with a network.") from None
        raise ConnectionError(f"Could not download {what} from the Hugging Face Hub "
                              f"({e.__class__.__name__}: {str(e).splitlines()[0][:200]}).") from None


class _Choose(Exception):
    """A repository holds several files and the user must name one."""


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
    if path.is_file() and _is_gguf(path):  # the config and tokenizer are in the file's metadata
        from .gguf import read_gguf

        cfg, sd, _ = read_gguf(path)
        return cfg, sd, Path(given)  # the name it was given: a Hub cache file's real name is a hash
    # a weights file named directly is the caller's choice, wherever its links lead; its sidecars are
    # read from the folder it was named in (a Hub cache snapshot's file is a link into blobs/)
    folder = path if path.is_dir() else Path(os.path.realpath(given.parent))
    root = model_root(folder)
    # the config.json beside the weights describes them, whether the folder or one of its files is named
    config_file = inside(root, folder, "config.json")
    present = regular_file(config_file, "config.json")
    hf_config = _read_json(config_file, "config.json") if present else None
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
    sd = _strip_prefixes(sd)
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
        sd = engine.pack_qkv(sd, cfg.layers, dtype)
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


# Every file our writers put in a model folder: save_model, export_hf, and training's step checkpoints,
# best/, snapshots and export. A folder holding config.json, model.safetensors and none but these is
# one of ours, which a writer may replace; a writer that adds a file must name it here.
MODEL_FILES = frozenset({
    "config.json", "model.safetensors", "generation_config.json", "README.md", "tokenizer.json",
    "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt", "tokenizer.model",
    "added_tokens.json", "chat_template.jinja", "trainer.pt", "complete.json", "snapshot.json"})


def is_model_folder(path, partial: bool = False) -> bool:
    """Is `path` a model folder one of our writers wrote: a real folder (not a link) of regular files, all
    named in MODEL_FILES, config.json and model.safetensors among them (partial: or a half-deleted one)?"""
    try:
        if os.path.islink(path) or not os.path.isdir(path):
            return False
        entries = list(os.scandir(path))
    except OSError:
        return False
    names = {e.name for e in entries}
    return names <= MODEL_FILES and (partial or {"config.json", "model.safetensors"} <= names) \
        and all(e.is_file(follow_symlinks=False) for e in entries)


def check_no_file_above(path) -> Path:
    """`path` as a Path, or a NotADirectoryError sentence when a file stands where one of its folders would."""
    path = Path(path)
    above = next((p for p in path.parents if os.path.lexists(p)), None)
    if above is not None and not above.is_dir():
        raise NotADirectoryError(f"{above} is a file, so nothing can be made at {path}; choose another path.")
    return path


def check_out_dir(out_dir, force: bool = True) -> Path:
    """Refuse, in one sentence and before any work, a folder to write a model into whose writing would
    lose something: a file at it or above it, a folder holding anything but a model of ours, or (unless
    force) any model at all. Nothing or an empty folder is fine. Returns out_dir as a Path."""
    out_dir = check_no_file_above(out_dir)
    if not os.path.lexists(out_dir) or (out_dir.is_dir() and not out_dir.is_symlink() and not any(out_dir.iterdir())):
        return out_dir
    if not is_model_folder(out_dir):
        what = "is a link" if out_dir.is_symlink() else "is a file" if not out_dir.is_dir() else \
            "already holds files that are not a model written here"
        raise FileExistsError(f"{out_dir} {what}; choose a new or empty folder (nothing was changed).")
    if not force:
        raise FileExistsError(f"{out_dir} already holds a model; pass --force to replace it, or choose another folder.")
    return out_dir


def atomic_dir_write(out_dir: Path, write):
    """Write into a temporary sibling folder, then swap it in, so a crash never leaves half a checkpoint.

    Only a model folder of ours (is_model_folder) or an empty one is replaced: anything else at out_dir
    is refused before `write` runs (check_out_dir), and so is a `.NAME.old` beside it that is not ours."""
    out_dir = check_out_dir(out_dir)
    old = out_dir.with_name(f".{out_dir.name}.old")  # the previous copy while the new one moves in
    if os.path.lexists(out_dir) and os.path.lexists(old) and not is_model_folder(old, partial=True):
        raise FileExistsError(f"{old} is in the way of replacing {out_dir.name} and is not a model written here; "
                              "move it away.")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        write(tmp)
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        replaced = out_dir.exists()
        if replaced:
            shutil.rmtree(old, ignore_errors=True)  # a leftover of an interrupted swap
            os.rename(out_dir, old)
        try:
            os.rename(tmp, out_dir)
        except BaseException:
            if replaced:
                os.rename(old, out_dir)  # put the previous checkpoint back
            raise
        if replaced:
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
        tokenizer.save_for_transformers(tmp, cfg.context)
    return atomic_dir_write(Path(out_dir), write)
