"""Pictures of how Gemma 3 works, computed from the loaded model's own code and weights.

    rec = explain.record(model, tokenizer, "Once upon a time")
    explain.attention_figure(rec, layer=5)           # plotly Figure

`hooks` records one forward pass; `figures` turns a record (or a config, or a model) into a Figure.
"""

from .figures import (activation_figure, attention_figure, logit_lens_figure, mask_figure, next_token_figure,
                      parameter_figure, rope_figure)
from .hooks import MAX_TOKENS, Record, record

__all__ = [
    "record", "Record", "MAX_TOKENS", "mask_figure", "rope_figure", "attention_figure", "activation_figure",
    "next_token_figure", "logit_lens_figure", "parameter_figure",
]
