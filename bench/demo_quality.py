"""Does the bundled model keep its hero's name? 50 stories, counted.

    python bench/demo_quality.py                         # the bundled demo model
    python bench/demo_quality.py --model runs/demo/best  # and any other checkpoint, side by side
    python bench/demo_quality.py --prompt "Lily found a little red ball"   # other prompts (repeatable)

Five fixed prompts, ten fixed seeds each, temperature 0.7, up to 200 new tokens (a story ends at its
end-of-text token). In each story (prompt and continuation) it counts the distinct character names of
the built-in corpus's cast (training/stories.py: the girls', boys' and animals' names). A story that
keeps its hero and one friend names at most two. Prints, per model, the median count, the share of
stories with at most two names (target: median at most 2, and at least 80%), one example story, and how
often a name the prompt gives (three of the prompts name their hero) comes back in the continuation.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import gemma3  # noqa: E402
from gemma3.defaults import DEMO_MODEL  # noqa: E402
from training.stories import ANIMALS, BOYS, GIRLS  # noqa: E402

PROMPTS = ("Once upon a time", "One day, a little girl named Lily", "Tom and his dog Spot",
           "There was a little bird", "Once upon a time, there was a boy named Ben. He")
SEEDS = range(10)
NAMES = sorted({*GIRLS, *BOYS, *(n for names, _ in ANIMALS.values() for n in names)})
NAME = re.compile(r"\b(" + "|".join(NAMES) + r")\b")


def names_in(story: str) -> set[str]:
    return set(NAME.findall(story))


def measure(source: str, max_new_tokens: int, prompts=PROMPTS) -> dict:
    model, tok = gemma3.load_model(source, device="cpu")
    counts, stories, kept = [], [], []
    for prompt in prompts:
        for seed in SEEDS:
            more = gemma3.generate(model, tok, prompt, max_new_tokens=max_new_tokens, temperature=0.7, seed=seed)
            counts.append(len(names_in(prompt + more)))
            stories.append(prompt + more)
            if given := names_in(prompt):
                kept.append(bool(given & names_in(more)))
    return {"counts": counts, "median": statistics.median(counts),
            "at_most_two": sum(c <= 2 for c in counts) / len(counts), "example": stories[0],
            "kept": sum(kept) / len(kept) if kept else float("nan"), "named": len(kept)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", default=[], help="another checkpoint to measure (repeatable)")
    ap.add_argument("--max-new-tokens", type=int, default=200)
    ap.add_argument("--prompt", action="append", default=None, help="measure these prompts instead (repeatable)")
    args = ap.parse_args()
    sources = [str(DEMO_MODEL), *args.model]
    rows = []
    for source in sources:
        r = measure(source, args.max_new_tokens, tuple(args.prompt or PROMPTS))
        rows.append((source, r))
        print(f"{source}: names per story {r['counts']}\n  example: {r['example'][:300]!r}", flush=True)
    print("\n| model | stories | median names per story | stories with at most 2 names | target "
          "| the prompt's name comes back |")
    print("|---|---|---|---|---|---|")
    for source, r in rows:
        met = r["median"] <= 2 and r["at_most_two"] >= 0.8
        print(f"| {source} | {len(r['counts'])} | {r['median']:g} | {r['at_most_two']:.0%} | "
              f"{'met' if met else 'not met'} | {r['kept']:.0%} of {r['named']} |")


if __name__ == "__main__":
    main()
