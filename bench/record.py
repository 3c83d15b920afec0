"""Benchmark: recording every stage (explain.record) and drawing each figure, against a plain forward pass.

    python bench/record.py [--repeats 3] [--threads N]

For the bundled demo model (fp32) and the 270m preset with random weights (fp32 and bf16), on a prompt
cut to 100 tokens and to explain.MAX_TOKENS: the time of `explain.record` and of every figure function
of explain/figures.py drawn from that record (a figure's own JSON encoding, what Gradio sends, not
included), each the median of `--repeats` runs. The peer, measured in the same run, is one plain
forward pass of the same model on the same tokens (model(ids), no hooks): every time is also printed
as a multiple of it, since absolute times on a shared machine are noise. Memory: the bytes the record's
stages hold (Record.nbytes, each tensor once) and the budget explain.record_bytes states.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import explain  # noqa: E402
from explain.figures import lens_ranks  # noqa: E402
from common import PROMPT, explain_table, median_time  # noqa: E402  (bench/common.py)

def figures(model, rec):
    """(name, thunk) of every figure function of explain/figures.py, on this record."""
    full = rec.layer_types.index("full") if "full" in rec.layer_types else 0
    ranks = lens_ranks(model, rec)  # computed once for the page, then kept with its record
    return [
        ("mask", lambda: explain.mask_figure(model.config, rec.seq_len)),
        ("rope", lambda: explain.rope_figure(model.config)),
        ("attention, 1 head", lambda: explain.attention_figure(rec, full, 0)),
        ("attention, all heads", lambda: explain.attention_figure(rec, full)),
        ("activation", lambda: explain.activation_figure(rec)),
        ("next token", lambda: explain.next_token_figure(rec, 0.7, 40)),
        ("logit lens", lambda: explain.logit_lens_figure(rec, ranks)),  # as the page draws it: outlined hits
        ("parameters", lambda: explain.parameter_figure(model)),
    ]


def measure(name, model, tok, tokens: int, repeats: int) -> list[tuple]:
    """Rows (model, tokens, what, seconds, x forward, note) for one model at one prompt length."""
    record = lambda: explain.record(model, tok, PROMPT, max_tokens=tokens)  # noqa: E731
    rec = record()  # warm-up, and the record the figures are drawn from
    ids = torch.tensor([rec.tokens])
    with torch.no_grad():
        model(ids)
        forward = median_time(lambda: model(ids), repeats)
    t_record = median_time(record, repeats)
    dtype = model.embed.weight.dtype
    budget = explain.record_bytes(model.config, rec.seq_len, dtype)
    memory = f"stages {rec.nbytes / 1e6:.1f} MB (budget {budget / 1e6:.1f} MB)"
    rows = [(name, rec.seq_len, "forward (peer)", forward, 1.0, ""),
            (name, rec.seq_len, "explain.record", t_record, t_record / forward, memory)]
    for what, draw in figures(model, rec):
        draw()
        t = median_time(draw, repeats)
        rows.append((name, rec.seq_len, what + " figure", t, t / forward, ""))
    return rows


def main():
    explain_table(measure, "what", "memory", __doc__)

if __name__ == "__main__":
    main()
