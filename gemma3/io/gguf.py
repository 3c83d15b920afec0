"""GGUF, both ways: read Gemma 3 files of llama.cpp / Ollama / LM Studio, and write ours for them.

A GGUF file holds the config as `gemma3.*` metadata keys, the tokenizer as `tokenizer.ggml.*` keys and
the weights under llama.cpp's tensor names (token_embd, blk.N.attn_q, ...), each in its own type:
F32, F16, BF16, Q8_0 or a k-quant (Q4_K, Q5_K, Q6_K, as in a Q4_K_M file), dequantised here with the
`gguf` package's reference code. llama.cpp's converter stores every Gemma RMSNorm weight with the 1
already added (it multiplies by the stored weight); ours computes x * (1 + w), so 1 comes off on the
way in and goes back on the way out. In fp32, 1 + (stored - 1) is the stored number exactly (for
stored values in [0.5, 2], as norm weights are), so the model multiplies by what llama.cpp multiplies by.

What llama.cpp does not read from a gemma3 file is fixed in its code, and taken the same way here: the
sliding layers' RoPE base 10000, every 6th layer full (global attention), the attention scale 1/sqrt(head_dim)
(1/sqrt(hidden/heads) for the 62-layer 27B). Its sliding window is ours: a query sees `sliding_window`
keys, itself included (llama.cpp masks p1 - p0 >= n_swa). An export that llama.cpp would read differently
(another layer pattern, local RoPE base or attention scale) is refused with one sentence.
"""

from __future__ import annotations

import numbers
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..config import LIMITS, Gemma3Config
from .files import regular_file
from .layouts import check_shapes
from .tokenizer_files import gpt2_vocab, tokenizer_from_gguf_meta

ARCH = "gemma3"
_TOP = {"embed.weight": "token_embd.weight", "final_norm.weight": "output_norm.weight",
        "head.weight": "output.weight"}
_BLOCK = {"attn.wq": "attn_q", "attn.wk": "attn_k", "attn.wv": "attn_v", "attn.wo": "attn_output",
          "attn.q_norm": "attn_q_norm", "attn.k_norm": "attn_k_norm", "ffn.gate": "ffn_gate",
          "ffn.up": "ffn_up", "ffn.down": "ffn_down", "attn_norm": "attn_norm",
          "post_attn_norm": "post_attention_norm", "ffn_norm": "ffn_norm", "post_ffn_norm": "post_ffw_norm"}
_LOCAL_BASE = 10_000.0  # llama.cpp's rope_freq_base_train_swa for gemma3
_PATTERN = 6            # llama.cpp's set_swa_pattern(6) for gemma3
EXPORT_TYPES = ("f32", "f16", "bf16", "q8_0")
# The types a model file's weights may be stored in: floating point, and llama.cpp's quantised types (Q8_1 and
# Q8_K are for intermediate values only; integer and F64 tensors hold no model weights).
TENSOR_TYPES = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
                "Q6_K", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M", "IQ4_NL", "IQ4_XS",
                "TQ1_0", "TQ2_0", "MXFP4")


def gguf_name(ours: str) -> str:
    """Our parameter name -> llama.cpp's tensor name (blocks.3.attn.wq.weight -> blk.3.attn_q.weight)."""
    if ours in _TOP:
        return _TOP[ours]
    _, i, rest = ours.split(".", 2)
    return f"blk.{i}.{_BLOCK[rest.removesuffix('.weight')]}.weight"


def _our_name(name: str) -> str | None:
    inverse = {v: k for k, v in _TOP.items()}
    if name in inverse:
        return inverse[name]
    parts = name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[1].isdigit() and parts[3] == "weight":
        ours = {v: k for k, v in _BLOCK.items()}.get(parts[2])
        if ours:
            return f"blocks.{parts[1]}.{ours}.weight"
    return None


# ---- reading ----------------------------------------------------------------------------------------

class _File:
    """A GGUF file's metadata and tensor table, parsed straight from the bytes (the gguf package's GGUFReader
    takes seconds per 100k-token vocabulary); tensor data stays in the memory-mapped file until read.

    Every count, length and extent the file claims is checked against the bytes left in it and against
    LIMITS before anything of that size is made: a header cannot make the reader allocate more than a
    small multiple of the file's own size."""

    _SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
                12: "<d"}
    _ARRAYS = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?", 10: "<u8",
               11: "<i8", 12: "<f8"}
    _MAX_DIMS = 4  # GGML_MAX_DIMS

    def __init__(self, path: Path):
        import mmap
        import struct


        self.struct = struct
        if not regular_file(path, path.name):
            raise FileNotFoundError(f"{path.name} is missing.")
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF":
                raise ValueError(f"{path.name} is not a GGUF file.")
            self.buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self.pos = 4
        version = self._take("<I")
        if version not in (2, 3):
            raise ValueError(f"{path.name} is GGUF version {version}; versions 2 and 3 are supported.")
        n_tensors, n_kv = self._take("<Q"), self._take("<Q")
        if n_tensors > LIMITS["tensors"]:
            raise ValueError(f"{path.name} lists {n_tensors:,} tensors, more than the {LIMITS['tensors']:,} "
                             "a model file may hold.")
        self._room(n_kv, 13, "metadata entries")  # each: a key (8 + its bytes), a type (4), a value (1 or more)
        self._room(n_tensors, 24, "tensors")  # each: a name (8 + its bytes), dims count, type, offset
        self.values = 0
        self.meta = {}
        for _ in range(n_kv):
            key = self._str()
            self.meta[key] = self._value(self._take("<I"))
        infos = []
        for _ in range(n_tensors):
            name = self._str()
            n_dims = self._take("<I")
            if not 1 <= n_dims <= self._MAX_DIMS:
                raise ValueError(f"tensor {name} has {n_dims} dimensions")
            dims = [self._take("<Q") for _ in range(n_dims)]
            infos.append((name, dims, self._take("<I"), self._take("<Q")))
        align = self.meta.get("general.alignment", 32)
        if type(align) is not int or not 1 <= align <= 65_536 or align & (align - 1):
            raise ValueError("its general.alignment is not a power of two up to 65536")
        start = -(-self.pos // align) * align
        self.tensors = [(name, dims, kind, start + offset) for name, dims, kind, offset in infos]
        for name, dims, kind, offset in self.tensors:
            self._extent(name, dims, kind, offset)

    def _take(self, fmt):
        value = self.struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += self.struct.calcsize(fmt)
        return value

    def _room(self, n: int, size: int, what: str):
        """Refuse a claim of n items of at least `size` bytes each that the rest of the file cannot hold."""
        if n * size > len(self.buf) - self.pos:
            raise ValueError(f"it claims {n:,} {what}, more than the file holds")

    def _count(self, n: int):
        """Count n metadata values against the limit for the whole file."""
        self.values += n
        if self.values > LIMITS["gguf_metadata_values"]:
            raise ValueError(f"its metadata holds more than {LIMITS['gguf_metadata_values']:,} values")

    def _str(self) -> str:
        n = self._take("<Q")
        if n > LIMITS["gguf_string_bytes"]:
            raise ValueError(f"it holds a string of {n:,} bytes, more than {LIMITS['gguf_string_bytes']:,}")
        self._room(n, 1, "bytes of a string")
        text = self.buf[self.pos:self.pos + n].decode("utf-8", errors="replace")
        self.pos += n
        return text

    def _value(self, kind):
        self._count(1)
        if kind in self._SCALARS:
            return self._take(self._SCALARS[kind])
        if kind == 8:
            return self._str()
        if kind != 9:
            raise ValueError(f"it holds a metadata value of the unknown type {kind}")
        item, n = self._take("<I"), self._take("<Q")
        self._count(n)
        if item in self._ARRAYS:
            dt = np.dtype(self._ARRAYS[item])
            self._room(n, dt.itemsize, "array values")
            values = np.frombuffer(self.buf, dt, n, self.pos)
            self.pos += n * dt.itemsize
            return values.tolist()
        if item != 8:  # arrays of arrays: llama.cpp writes none
            raise ValueError(f"it holds an array of the unsupported type {item}")
        self._room(n, 8, "strings")  # each: 8 bytes of length at least
        return [self._str() for _ in range(n)]

    def _extent(self, name, dims, kind, offset):
        """Refuse a tensor of a type that is not a floating-point or quantised number, or whose data runs
        past the end of the file."""
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

        try:
            qtype = GGMLQuantizationType(kind)
        except ValueError:
            raise ValueError(f"tensor {name} has the unknown type {kind}") from None
        if qtype.name not in TENSOR_TYPES:
            raise ValueError(f"tensor {name} is stored as {qtype.name}, not as one of the floating-point or "
                             "quantised types of a model file")
        block, size = GGML_QUANT_SIZES[qtype]
        if min(dims) < 1 or dims[0] % block:
            raise ValueError(f"tensor {name} has the impossible shape {list(reversed(dims))}")
        n = dims[0] // block * size
        for d in dims[1:]:
            n *= d
        if offset + n > len(self.buf):
            raise ValueError(f"tensor {name} runs past the end of the file")

    def data(self, dims, kind, offset) -> np.ndarray:
        """The raw bytes of one tensor as gguf's dequantize takes them: rows of bytes, in numpy's order
        (its type and extent were checked when the table was read)."""
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

        block, size = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
        shape = list(reversed(dims))
        row = shape[-1] // block * size
        n = int(np.prod(shape[:-1], dtype=np.int64)) * row
        return np.frombuffer(self.buf, np.uint8, n, offset).reshape(*shape[:-1], row)


def _open(path: Path) -> _File:
    try:
        import gguf  # noqa: F401  (its dequantisation code reads the tensors)
    except ImportError:
        raise ValueError("Reading GGUF files needs the gguf package: pip install gguf.") from None
    try:
        return _File(path)
    except ValueError as e:
        if str(e).startswith(path.name):
            raise
        raise ValueError(f"{path.name} could not be read as a GGUF file ({e}); re-download or re-export it.") from None
    except Exception as e:
        raise ValueError(f"{path.name} could not be read as a GGUF file ({e.__class__.__name__}); "
                         "re-download or re-export it.") from None


def _check_arch(meta: dict, name: str):
    arch = meta.get("general.architecture")
    if arch != ARCH:
        raise ValueError(f"{name} is a GGUF of the {arch!r} architecture; only Gemma 3 (gemma3) GGUF files "
                         "load here.")


def _f32(x) -> float:
    """A float32 metadata value as the decimal it was written from (1e-06, not 9.99999997e-07)."""
    return float(np.format_float_positional(np.float32(x), unique=True, trim="0"))


def config_from_meta(meta: dict, vocab_size: int, tied: bool) -> Gemma3Config:
    """A Gemma3Config from a gemma3 GGUF's metadata, read the way llama.cpp reads it; a key missing or of
    the wrong type, or a value no model can have, is one ValueError sentence."""
    p = ARCH + "."

    def get(key, default=None, whole=True):
        value = meta.get(p + key, default)
        if value is None:
            raise ValueError(f"The GGUF file has no {p + key} key; it is not a complete Gemma 3 GGUF.")
        if isinstance(value, list):
            raise ValueError(f"The GGUF gives {p + key} per layer, which Gemma 3 does not have.")
        if isinstance(value, bool) or not isinstance(value, numbers.Integral if whole else numbers.Real):
            raise ValueError(f"The GGUF file's {p + key} is not a {'whole number' if whole else 'number'}.")
        return int(value) if whole else value

    if meta.get(p + "final_logit_softcapping") or meta.get(p + "attn_logit_softcapping"):
        raise ValueError("This GGUF asks for logit soft-capping, which Gemma 3 does not have; it is not "
                         "a Gemma 3 model this package can run.")
    layers, hidden, heads = get("block_count"), get("embedding_length"), get("attention.head_count")
    per_head = hidden // max(heads, 1)  # heads < 1 is refused by the config's own check
    head_dim = get("attention.key_length", per_head)
    window = get("attention.sliding_window", 0)
    pattern = meta.get(p + "attention.sliding_window_pattern", _PATTERN)
    if not window:
        types = ["full"] * min(layers, LIMITS["layers"] + 1)  # more layers than the limit: refused below
    elif isinstance(pattern, list):  # llama.cpp's per-layer form: True = sliding
        types = ["sliding" if s else "full" for s in pattern]
    elif type(pattern) is int and pattern >= 1:
        types = ["full" if (i + 1) % pattern == 0 else "sliding" for i in range(min(layers, LIMITS["layers"] + 1))]
    else:
        raise ValueError(f"The GGUF file's {p}attention.sliding_window_pattern is not a whole number of at least 1.")
    kind = meta.get(p + "rope.scaling.type", "none")
    if kind not in ("none", "linear"):
        raise ValueError(f"RoPE scaling {kind!r} in the GGUF file is not supported (only none and linear).")
    context = get("context_length")
    return Gemma3Config(
        vocab_size=vocab_size, hidden=hidden, layers=layers, heads=heads, kv_heads=get("attention.head_count_kv"),
        head_dim=head_dim, ffn=get("feed_forward_length"), window=window or context,
        rope_local_base=_f32(get("rope.freq_base_swa", _LOCAL_BASE, whole=False)),
        rope_global_base=_f32(get("rope.freq_base", 10_000.0, whole=False)),
        rope_global_scale=_f32(get("rope.scaling.factor", 1.0, whole=False)) if kind == "linear" else 1.0,
        query_pre_attn_scalar=float(per_head if layers == 62 else head_dim),
        context=context,
        norm_eps=_f32(get("attention.layer_norm_rms_epsilon", 1e-6, whole=False)),
        tied_head=tied, layer_types=types)


def _to_torch(name: str, data: np.ndarray, kind: int) -> torch.Tensor:
    """One GGUF tensor as a torch tensor of its logical shape: F16 as float16, BF16 as bfloat16 (both exact),
    everything else (F32, Q8_0, k-quants ...) dequantised to float32."""
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import dequantize

    kind = Q(kind)
    try:
        values = dequantize(data, kind)
    except NotImplementedError:
        raise ValueError(f"Tensor {name} is stored as {kind.name}, which the gguf package cannot "
                         "dequantise; use an F16, BF16, Q8_0 or K-quant file.") from None
    values = torch.from_numpy(np.array(values, dtype=np.float32))  # a copy: the file is mapped read-only
    return values.to({Q.F16: torch.float16, Q.BF16: torch.bfloat16}.get(kind, torch.float32))


def read_gguf(path) -> tuple[Gemma3Config, dict, dict]:
    """(config, our state dict, metadata) from a Gemma 3 GGUF file; the config and every tensor's name, type
    and shape are checked against each other before any tensor is read."""
    path = Path(path)
    f = _open(path)
    _check_arch(f.meta, path.name)
    table, unknown = {}, []
    for name, dims, kind, offset in f.tensors:
        ours = _our_name(name)
        if ours is None:
            unknown.append(name)
        elif ours in table:
            raise ValueError(f"The GGUF file lists the tensor {name} twice; re-download or re-export it.")
        else:
            table[ours] = (name, dims, kind, offset)
    if unknown:
        raise ValueError(f"The GGUF file has tensors a Gemma 3 text model does not have: {', '.join(unknown[:5])}.")
    if "embed.weight" not in table:
        raise ValueError("The GGUF file has no token_embd.weight tensor.")
    cfg = config_from_meta(f.meta, table["embed.weight"][1][-1], tied="head.weight" not in table)
    check_shapes(cfg, {ours: tuple(reversed(dims)) for ours, (_, dims, _, _) in table.items()})
    sd = {}
    for ours, (name, dims, kind, offset) in table.items():
        w = _to_torch(name, f.data(dims, kind, offset), kind)
        if ours.endswith("norm.weight"):
            w = w.float() - 1.0  # llama.cpp stores 1 + w
        sd[ours] = w
    return cfg, sd, f.meta


def gguf_tokenizer(path):
    """The tokenizer a GGUF file's metadata describes, behind our tokenizer interface, holding only the
    tokens that have a row in the file's embedding (token_embd)."""
    path = Path(path)
    f = _open(path)
    _check_arch(f.meta, path.name)
    rows = next((dims[-1] for name, dims, _, _ in f.tensors if name == "token_embd.weight"), None)
    return tokenizer_from_gguf_meta(f.meta, name=path.stem, rows=rows)


# ---- writing ----------------------------------------------------------------------------------------

def _tokenizer_meta(writer, tokenizer, vocab_size: int):
    """The GPT-2 BPE tokenizer as llama.cpp reads it (tokenizer.ggml.model = gpt2)."""
    from gguf import TokenType

    if getattr(tokenizer, "name", None) != "gpt2":
        raise ValueError("GGUF export writes the GPT-2 tokenizer of this project's models; a model with another "
                         "tokenizer (e.g. Gemma's own) is best taken from its original GGUF release.")
    tokens, merges = gpt2_vocab()
    if vocab_size < len(tokens):
        raise ValueError(f"The model has {vocab_size} token rows, fewer than GPT-2's {len(tokens)}.")
    types = [TokenType.NORMAL] * (len(tokens) - 1) + [TokenType.CONTROL]
    pads = [f"[PAD{i}]" for i in range(len(tokens), vocab_size)]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens + pads)
    writer.add_token_types(types + [TokenType.UNUSED] * len(pads))
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokenizer.eot_id)
    writer.add_eos_token_id(tokenizer.eot_id)
    writer.add_eot_token_id(tokenizer.eot_id)  # Ollama's gemma3 runner otherwise stops on id 106 (Gemma's)
    writer.add_add_bos_token(False)  # our models read plain text; a story ends at <|endoftext|>
    writer.add_add_eos_token(False)


def _check_exportable(cfg: Gemma3Config):
    """Refuse (one sentence) what llama.cpp would read back differently from what the model computes."""
    gemma = ["full" if (i + 1) % _PATTERN == 0 else "sliding" for i in range(cfg.layers)]
    problems = []
    if not cfg.post_norms:
        problems.append("it has no post-norms")
    if cfg.layer_types != gemma:
        problems.append("its layers are not in Gemma's pattern (every 6th global)")
    if cfg.rope_local_base != _LOCAL_BASE:
        problems.append(f"its sliding layers' RoPE base is {cfg.rope_local_base:g}, not 10000")
    if cfg.query_pre_attn_scalar != (cfg.hidden // cfg.heads if cfg.layers == 62 else cfg.head_dim):
        problems.append("its query_pre_attn_scalar is not its head_dim")
    if problems:
        raise ValueError("This model cannot be written as a gemma3 GGUF that llama.cpp reads the same: "
                         + "; ".join(problems) + ".")


def _tensor_data(name: str, w: torch.Tensor, kind: str):
    """(numpy data, raw type) for one tensor: 1-D tensors (norms) in F32 as llama.cpp keeps them,
    matrices in the chosen type (Q8_0 needs rows of a multiple of 32, else F16)."""
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import quantize

    w = w.detach().to("cpu", torch.float32)
    if name.endswith("norm.weight"):
        return (w + 1.0).numpy(), Q.F32
    if kind == "f32" or w.dim() == 1:
        return w.numpy(), Q.F32
    if kind == "q8_0" and w.shape[-1] % 32 == 0:
        return quantize(w.numpy(), Q.Q8_0), Q.Q8_0
    if kind == "bf16":
        return quantize(w.numpy(), Q.BF16), Q.BF16
    return w.numpy().astype(np.float16), Q.F16


def export_gguf(model, tokenizer, path, dtype: str = "f16"):
    """A gemma3 GGUF that llama.cpp (and Ollama, LM Studio, transformers) runs; written atomically."""
    import gguf

    if dtype not in EXPORT_TYPES:
        raise ValueError(f"Unknown GGUF type {dtype!r}; choose one of {', '.join(EXPORT_TYPES)}.")
    cfg = model.config
    _check_exportable(cfg)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        w = gguf.GGUFWriter(tmp, ARCH)
        w.add_name(path.stem)
        w.add_file_type({"f32": 0, "f16": 1, "q8_0": 7, "bf16": 32}[dtype])  # llama_ftype
        w.add_context_length(cfg.context)
        w.add_embedding_length(cfg.hidden)
        w.add_block_count(cfg.layers)
        w.add_feed_forward_length(cfg.ffn)
        w.add_head_count(cfg.heads)
        w.add_head_count_kv(cfg.kv_heads)
        w.add_key_length(cfg.head_dim)
        w.add_value_length(cfg.head_dim)
        w.add_layer_norm_rms_eps(cfg.norm_eps)
        w.add_sliding_window(cfg.window)
        w.add_rope_freq_base(cfg.rope_global_base)
        # Ollama's own gemma3 runner reads its RoPE bases from these keys (llama.cpp ignores them)
        w.add_float32(f"{ARCH}.rope.global.freq_base", cfg.rope_global_base)
        w.add_float32(f"{ARCH}.rope.local.freq_base", cfg.rope_local_base)
        if cfg.rope_global_scale != 1.0:
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(cfg.rope_global_scale)
        _tokenizer_meta(w, tokenizer, cfg.vocab_size)
        for name, tensor in model.state_dict().items():
            data, qtype = _tensor_data(name, tensor, dtype)
            w.add_tensor(gguf_name(name), data, raw_dtype=qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
