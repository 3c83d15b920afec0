"""Gemma3Config: every number that shapes the model, with named presets.

The field names are ours; `from_hf` / `to_hf` translate to and from a transformers
`Gemma3TextConfig` dictionary (config.json of a Hugging Face checkpoint).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field

# The largest sizes a model file may claim; every loader checks a file's claims against these before it
# builds or allocates anything (SECURITY.md cites them). Gemma 3 27B, the largest Gemma 3, has 62 layers,
# hidden 5376, 32 heads, head_dim 128, ffn 21504, a vocabulary of 262144 and a context of 131072.
LIMITS = {
    "layers": 256,
    "hidden": 65_536,
    "heads": 1_024,
    "head_dim": 1_024,
    "ffn": 262_144,
    "vocab_size": 2_097_152,
    "context": 1_048_576,
    "window": 1_048_576,
    "tensors": 10_000,                    # tensors in one weights file (Gemma 3 27B: 808)
    "json_bytes": 16 * 2**20,             # config.json, model.safetensors.index.json, a seed's config
    "tokenizer_bytes": 64 * 2**20,        # tokenizer.json (Gemma 3's: 33 MB)
    "safetensors_header_bytes": 16 * 2**20,
    "gguf_metadata_values": 4_194_304,    # values in all of a GGUF's metadata (Gemma 3: about 790,000)
    "gguf_string_bytes": 1_048_576,       # one GGUF metadata string or tensor name
    "token_chars": 1_024,                 # one tokenizer entry
    "vocab_chars": 8_388_608,             # all tokenizer entries together
    "vocab_merges": 2_097_152,            # merges rebuilt from a SentencePiece vocabulary in a GGUF
}
_SIZES = ("vocab_size", "hidden", "layers", "heads", "kv_heads", "head_dim", "ffn", "window", "context")
_NUMBERS = ("rope_local_base", "rope_global_base", "rope_global_scale", "query_pre_attn_scalar")


@dataclass
class Gemma3Config:
    vocab_size: int = 50257
    hidden: int = 640
    layers: int = 18
    heads: int = 4
    kv_heads: int = 1
    head_dim: int = 256
    ffn: int = 2048
    window: int = 512                # sliding layers: a query sees the last `window` keys, itself included
    rope_local_base: float = 10_000.0
    rope_global_base: float = 1_000_000.0
    rope_global_scale: float = 1.0   # linear RoPE scaling on full layers (1.0 = none; larger Gemma 3 use 8)
    query_pre_attn_scalar: float = 256.0
    context: int = 32768
    norm_eps: float = 1e-6
    tied_head: bool = True
    post_norms: bool = True          # False: blocks with only the two pre-norms (G3nadh layout)
    layer_types: list[str] = field(default_factory=list)  # "sliding" / "full"; empty = Gemma pattern

    def __post_init__(self):
        self._check()
        if not self.layer_types:
            self.layer_types = ["full" if (i + 1) % 6 == 0 else "sliding" for i in range(self.layers)]
        if len(self.layer_types) != self.layers or set(self.layer_types) - {"sliding", "full"}:
            raise ValueError(f"layer_types must list 'sliding' or 'full' for each of the {self.layers} layers.")
        if self.heads % self.kv_heads:
            raise ValueError(f"heads ({self.heads}) must be a multiple of kv_heads ({self.kv_heads}).")

    def _check(self):
        """Refuse, in one sentence, a config no model can be built from: sizes that are not whole numbers from
        1 to their limit, bases and scales that are not finite positive numbers, an odd head_dim (RoPE turns
        pairs), a norm epsilon that is not a finite number >= 0."""
        for name in _SIZES:
            _check_size(name, getattr(self, name))
        if self.head_dim % 2:
            raise ValueError(f"The model config's head_dim must be even (RoPE rotates pairs), not {self.head_dim}.")
        for name in _NUMBERS:
            value = getattr(self, name)
            if not _real(value) or not value > 0 or not math.isfinite(value):
                raise ValueError(f"The model config's {name} must be a finite positive number, not {_show(value)}.")
        if not _real(self.norm_eps) or not 0 <= self.norm_eps < 1:
            raise ValueError(f"The model config's norm_eps must be a number from 0 to below 1, not {_show(self.norm_eps)}.")
        for name in ("tied_head", "post_norms"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"The model config's {name} must be true or false, not {_show(getattr(self, name))}.")
        if not isinstance(self.layer_types, list):
            raise ValueError(f"The model config's layer_types must be a list, not {_show(self.layer_types)}.")

    # ---- presets -------------------------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str, **overrides) -> "Gemma3Config":
        if name not in PRESETS:
            raise ValueError(f"Unknown preset {name!r}; known presets: {', '.join(PRESETS)}.")
        return cls(**{**PRESETS[name], **overrides})

    # ---- (de)serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Gemma3Config":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"Unknown config fields: {', '.join(sorted(unknown))}.")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps({"format": "gemma3-tinystories", **self.to_dict()}, indent=2)

    @classmethod
    def from_hf(cls, hf: dict) -> "Gemma3Config":
        """From a transformers Gemma3TextConfig dict (or a Gemma3Config with a text_config); a key missing or
        a value of the wrong type is one ValueError sentence."""
        try:
            return cls._from_hf(hf)
        except KeyError as e:
            raise ValueError(f"config.json has no {_show(e.args[0])} entry; it is not a complete Gemma 3 "
                             "config.") from None
        except (TypeError, AttributeError):
            raise ValueError("config.json holds a value of the wrong type for a Gemma 3 config; re-save or "
                             "re-download the model.") from None

    @classmethod
    def _from_hf(cls, hf: dict) -> "Gemma3Config":
        hf = hf.get("text_config", hf)
        n = hf["num_hidden_layers"]
        _check_size("layers", n)  # before a list of n layer types is made
        types = hf.get("layer_types")
        if types:
            layer_types = ["full" if t == "full_attention" else "sliding" for t in types]
        else:
            pattern = hf.get("sliding_window_pattern", 6)
            if type(pattern) is not int or pattern < 1:
                raise ValueError(f"config.json's sliding_window_pattern must be a whole number of at least 1, "
                                 f"not {_show(pattern)}.")
            layer_types = ["full" if (i + 1) % pattern == 0 else "sliding" for i in range(n)]
        rope = hf.get("rope_parameters") or {}
        full = rope.get("full_attention") or {}
        local = rope.get("sliding_attention") or {}
        scaling = hf.get("rope_scaling") or full
        kind = scaling.get("rope_type", scaling.get("type", "default"))
        scale = 1.0
        if kind == "linear":
            scale = _float(scaling["factor"])
        elif kind != "default":
            raise ValueError(f"RoPE type {scaling.get('rope_type')!r} is not supported (only default and linear).")
        if hf.get("final_logit_softcapping") or hf.get("attn_logit_softcapping"):
            raise ValueError("Logit soft-capping (Gemma 2) is not part of Gemma 3 and is not supported.")
        return cls(
            vocab_size=hf["vocab_size"],
            hidden=hf["hidden_size"],
            layers=n,
            heads=hf["num_attention_heads"],
            kv_heads=hf["num_key_value_heads"],
            head_dim=hf.get("head_dim", 256),
            ffn=hf["intermediate_size"],
            window=hf.get("sliding_window", 4096),
            rope_local_base=_float(local.get("rope_theta", hf.get("rope_local_base_freq", 10_000.0))),
            rope_global_base=_float(full.get("rope_theta", hf.get("rope_theta", 1_000_000.0))),
            rope_global_scale=scale,
            query_pre_attn_scalar=_float(hf.get("query_pre_attn_scalar", 256)),
            context=hf.get("max_position_embeddings", 32768),
            norm_eps=hf.get("rms_norm_eps", 1e-6),
            tied_head=hf.get("tie_word_embeddings", True),
            layer_types=layer_types,
        )

    def to_hf(self) -> dict:
        """A transformers Gemma3TextConfig dict (config.json) describing this model."""
        if not self.post_norms:
            raise ValueError("A model without post-norms has no transformers equivalent; convert it natively.")
        full = {"rope_type": "default", "rope_theta": self.rope_global_base}
        if self.rope_global_scale != 1.0:
            full = {"rope_type": "linear", "factor": self.rope_global_scale, "rope_theta": self.rope_global_base}
        return {
            "architectures": ["Gemma3ForCausalLM"],
            "model_type": "gemma3_text",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden,
            "intermediate_size": self.ffn,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "head_dim": self.head_dim,
            "hidden_activation": "gelu_pytorch_tanh",
            "max_position_embeddings": self.context,
            "rms_norm_eps": self.norm_eps,
            "tie_word_embeddings": self.tied_head,
            "rope_parameters": {
                "full_attention": full,
                "sliding_attention": {"rope_type": "default", "rope_theta": self.rope_local_base},
            },
            "query_pre_attn_scalar": _int_if_whole(self.query_pre_attn_scalar),  # transformers wants an int
            "sliding_window": self.window,
            "layer_types": [t + "_attention" for t in self.layer_types],
            "attention_bias": False,
            "attention_dropout": 0.0,
            "final_logit_softcapping": None,
            "attn_logit_softcapping": None,
            "pad_token_id": None,
            "bos_token_id": None,
            "eos_token_id": None,
            "torch_dtype": "float32",
        }


def _check_size(name: str, value):
    top = LIMITS.get(name, LIMITS["heads"])  # kv_heads: as heads
    if type(value) is not int or not 1 <= value <= top:
        raise ValueError(f"The model config's {name} must be a whole number from 1 to {top:,}, not {_show(value)}.")


def _real(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _float(x):
    """A number as a float; anything else as it is, for the check to name."""
    return float(x) if _real(x) else x


def _show(value) -> str:
    """A value for an error sentence: short, on one line."""
    text = repr(value)
    return text if len(text) <= 40 and "\n" not in text else f"a {type(value).__name__}"


def _int_if_whole(x: float):
    return int(x) if float(x).is_integer() else x


PRESETS: dict[str, dict] = {
    # The 270M design with the GPT-2 vocabulary: 132M parameters with the tied head.
    "270m": dict(),
    # Tests: the same design at toy width. 7 layers give both kinds in the Gemma pattern (5 sliding,
    # 1 full, 1 sliding); head_dim 32 is not hidden/heads (16), as 256 is not 640/4 in the 270m;
    # a window of 8 makes the sliding mask bite on short inputs.
    "tiny": dict(hidden=64, layers=7, heads=4, kv_heads=1, head_dim=32, ffn=128, window=8,
                 query_pre_attn_scalar=32, context=512),
    # The bundled demo model: the same design in miniature, small enough to train on a 2-core CPU
    # in about an hour and ship in under 25 MB (stored in bf16). Training sequences (128 tokens in the
    # training preset, 256 for the bundled model) are longer than the window of 64, so the sliding mask is used.
    "demo": dict(hidden=128, layers=8, heads=4, kv_heads=1, head_dim=32, ffn=512, window=64,
                 query_pre_attn_scalar=32, context=1024),
}
