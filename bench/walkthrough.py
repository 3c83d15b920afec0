"""The architecture walk-through's cost: each panel against the recording it is drawn from.

For each model (the bundled demo model; the 270m preset with random weights) and prompt length, measures in
the same run: the peer, one plain forward of the model on the prompt; explain.record on the same prompt (what
the first view costs once per prompt); and for every stage of the walk-through, building its view
(explain.walkthrough.view: the diagram, the words, the source lines, the figure) and serialising the figure
as the app sends it (Figure.to_json). Prints seconds and ratios to the plain forward, and the figure's size.

    python bench/walkthrough.py [--models demo,270m] [--tokens 100,256] [--layer 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import explain  # noqa: E402
import gemma3  # noqa: E402
from explain import walkthrough as wt  # noqa: E402
from gemma3.defaults import DEMO_MODEL  # noqa: E402

STORY = ("Once upon a time, there was a little girl named Lily. She liked to play in the sun with her dog, Max. "
         "One day, Lily and Max went to the park. They saw a big red ball under a tree. ")


def best(fn, reps: int = 3) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def load(name: str):
    if name == "demo":
        return gemma3.load_model(DEMO_MODEL, device="cpu", dtype=torch.float32)
    model = gemma3.Gemma3(gemma3.Gemma3Config.from_preset(name)).eval()
    return model, gemma3.gpt2_tokenizer()


def prompt_of(tokenizer, tokens: int) -> str:
    ids = tokenizer.encode(STORY * (tokens // 20 + 2))[: tokens - 1]  # BOS makes it `tokens`
    return tokenizer.decode(ids)


def run(name: str, tokens: int, layer: int):
    model, tok = load(name)
    prompt = prompt_of(tok, tokens)
    rec = explain.record(model, tok, prompt)
    ids = torch.tensor([rec.tokens])
    with torch.no_grad():
        forward = best(lambda: model(ids))
    recording = best(lambda: explain.record(model, tok, prompt), reps=2)
    layer = min(layer, rec.layers - 1)
    print(f"\n{name}, {rec.seq_len} tokens: plain forward {forward * 1e3:.0f} ms; record {recording * 1e3:.0f} ms "
          f"= {recording / forward:.1f}x the forward")
    print(f"{'stage':<16}{'view + json ms':>15}{'x forward':>11}{'figure kB':>11}")
    costs = []
    for stage in wt.WALK_STAGES:
        size = [0]

        def draw():
            size[0] = len(wt.view(rec, stage, layer, rec.seq_len - 1).figure.to_json())
        t = best(draw)
        costs.append(t)
        print(f"{stage:<16}{t * 1e3:>15.1f}{t / forward:>11.2f}{size[0] / 1e3:>11.0f}")
    print(f"median panel {statistics.median(costs) * 1e3:.1f} ms = {statistics.median(costs) / forward:.2f}x "
          f"the forward; slowest {max(costs) * 1e3:.1f} ms")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="demo,270m")
    parser.add_argument("--tokens", default="100,256")
    parser.add_argument("--layer", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    for name in args.models.split(","):
        for tokens in (int(t) for t in args.tokens.split(",")):
            run(name, tokens, args.layer)


if __name__ == "__main__":
    main()
