"""Gemma3Config: every number that shapes the model, with named presets.

The field names are ours; `from_hf` / `to_hf` translate to and from a transformers
`Gemma3TextConfig` dictionary (config.json of a Hugging Face checkpoint).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field


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
        if not self.layer_types:
            self.layer_types = ["full" if (i + 1) % 6 == 0 else "sliding" for i in range(self.layers)]
        if len(self.layer_types) != self.layers or set(self.layer_types) - {"sliding", "full"}:
            raise ValueError(f"layer_types must list 'sliding' or 'full' for each of the {self.layers} layers.")
        if self.heads % self.kv_heads:
            raise ValueError(f"heads ({self.heads}) must be a multiple of kv_heads ({self.kv_heads}).")

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
        """From a transformers Gemma3TextConfig dict (or a Gemma3Config with a text_config)."""
        hf = hf.get("text_config", hf)
        n = hf["num_hidden_layers"]
        types = hf.get("layer_types")
        if types:
            layer_types = ["full" if t == "full_attention" else "sliding" for t in types]
        else:
            pattern = hf.get("sliding_window_pattern", 6)
            layer_types = ["full" if (i + 1) % pattern == 0 else "sliding" for i in range(n)]
        rope = hf.get("rope_parameters") or {}
        full = rope.get("full_attention") or {}
        local = rope.get("sliding_attention") or {}
        scaling = hf.get("rope_scaling") or full
        kind = scaling.get("rope_type", scaling.get("type", "default"))
        scale = 1.0
        if kind == "linear":
            scale = float(scaling["factor"])
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
            rope_local_base=float(local.get("rope_theta", hf.get("rope_local_base_freq", 10_000.0))),
            rope_global_base=float(full.get("rope_theta", hf.get("rope_theta", 1_000_000.0))),
            rope_global_scale=scale,
            query_pre_attn_scalar=float(hf.get("query_pre_attn_scalar", 256)),
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
    # in about an hour and ship in under 25 MB (stored in bf16). Training sequences of 128 tokens
    # are longer than the window of 64, so the sliding mask is really used.
    "demo": dict(hidden=128, layers=8, heads=4, kv_heads=1, head_dim=32, ffn=512, window=64,
                 query_pre_attn_scalar=32, context=1024),
}
