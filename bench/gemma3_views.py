"""Benchmark: each "What is special about Gemma 3" view (explain.gemma3_views), against a plain forward pass.

    python bench/gemma3_views.py [--repeats 3] [--threads N]

For the bundled demo model (fp32) and the 270m preset with random weights (fp32 and bf16), on a prompt cut
to 100 tokens and to explain.MAX_TOKENS: the time of every topic's view (figure and text) drawn from one
recording (explain.record is timed by bench/record.py), each the median of `--repeats` runs, and the size
of the figure's JSON (what Gradio sends). The peer, measured in the same run, is one plain forward pass of
the same model on the same tokens: every time is also printed as a multiple of it, since absolute times on
a shared machine are noise.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import explain  # noqa: E402
from explain import gemma3_views as gv  # noqa: E402
from common import PROMPT, explain_table, median_time  # noqa: E402  (bench/common.py)

def measure(name, model, tok, tokens: int, repeats: int):
    rec = explain.record(model, tok, PROMPT, max_tokens=tokens)
    ids = torch.tensor([rec.tokens])
    with torch.no_grad():
        model(ids)
        forward = median_time(lambda: model(ids), repeats)
    yield name, rec.seq_len, "forward (peer)", forward, 1.0, ""
    layer = rec.layer_types.index("full") if "full" in rec.layer_types else 0
    for topic in gv.TOPICS:
        draw = lambda: gv.gemma3_view(topic, rec, model, layer, 0)  # noqa: E731
        fig, _ = draw()
        t = median_time(draw, repeats)
        yield name, rec.seq_len, topic, t, t / forward, f"{len(fig.to_json()) / 1e3:.0f} kB JSON"


def main():
    explain_table(measure, "view", "figure", __doc__)

if __name__ == "__main__":
    main()
