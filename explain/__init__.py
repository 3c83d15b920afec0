"""Pictures of how Gemma 3 works, computed from the loaded model's own code and weights.

    rec = explain.record(model, tokenizer, "Once upon a time")
    rec.stage("q_rope", layer=5)                     # [T, heads, head_dim]: q after RoPE in layer 5
    explain.attention_figure(rec, layer=5)           # plotly Figure

`hooks` records one forward pass, every stage of it (explain.STAGES, explain.MODEL_STAGES); `figures`
turns a record (or a config, or a model) into a Figure.
"""

from .figures import (activation_figure, attention_figure, logit_lens_figure, mask_figure, next_token_figure,
                      parameter_figure, rope_figure)
from .hooks import MAX_TOKENS, MODEL_STAGES, STAGES, Record, record, record_bytes

__all__ = [
    "record", "Record", "STAGES", "MODEL_STAGES", "record_bytes", "MAX_TOKENS", "mask_figure", "rope_figure",
    "attention_figure", "activation_figure", "next_token_figure", "logit_lens_figure", "parameter_figure",
]
