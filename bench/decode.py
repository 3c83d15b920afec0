"""Decode speed, every way this project can decode, on a quiet machine and on a busy one.

    python bench/generate.py --only decode       # this table, on the CPU
    python bench/decode.py --device cuda         # on a GPU: bench/decode_gpu.py (CUDA graphs, transformers, bound)

For each model (the bundled demo model, the 270m preset with random weights) and dtype (fp32, bf16),
batch 1, greedy, the decode rate (tokens per second from the first decoded token to the last) of:
- transformers: Gemma3ForCausalLM.generate on the same weights (export_hf), the peer;
- reference: gemma3/model.py, eager, one cached forward per token;
- compiled: the same forward under torch.compile (dynamic shapes, inductor's default CPU mode), the
  answer gpt-fast gives to per-operation overhead: it fuses the many small operations of a step;
- engine: gemma3/runtime/engine (the C++ operators), the same loop;
- CLI: gemma3.generate_tokens from the main thread, as `python -m gemma3 generate` runs;
- app: the same from a worker thread, as the app's generation runs.
The reference and engine columns run one bench loop (forward, greedy choice, stamp) with the threads
of generate_tokens (engine.decoder's step: the reference on one thread or all, by measurement; the
engine's one call per token on PyTorch's thread count, the operations around it on one); the
compiled one runs that loop on all threads (a compiled graph guards on the thread count: switching
recompiles); "engine, 1 thread" runs the engine's call on one thread, to show what the other
threads add. Transformers runs with PyTorch's default threads, as its users run it.
Everything is measured three times: on a quiet machine, with a "spin" hog (one process per core
spinning a bounded Python busy loop) and with a "torch" hog (another PyTorch program running matrix
products on every core, as a training run or another Space visitor's prompt would); both stop by
themselves.
A measurement stops after `tokens` tokens or `seconds` seconds, whichever comes first.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import gemma3  # noqa: E402
from gemma3.generation import next_token  # noqa: E402
from gemma3.runtime import engine  # noqa: E402
from gemma3.runtime.cpu import threads  # noqa: E402

CONDITIONS = [None, "spin", "torch"]  # quiet, a Python busy loop per core, another PyTorch program
SIDES = ["transformers", "reference", "compiled", "engine", "engine, 1 thread", "CLI", "app"]


def spin(seconds: float, parent: int, started):
    end = time.monotonic() + seconds
    x = 0
    started.set()
    while time.monotonic() < end and os.getppid() == parent:  # also stop when the bench is gone
        x += 1


def matmuls(seconds: float, parent: int, started):
    """Another PyTorch program on every core (a training run, another visitor's prompt)."""
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    a = torch.randn(512, 512)
    end = time.monotonic() + seconds
    started.set()
    while time.monotonic() < end and os.getppid() == parent:
        a = (a @ a).tanh_()


class Hog:
    """Busy processes that stop by themselves after at most `seconds`, or when the bench ends: "spin" is one Python busy loop
    per core; "torch" is one process running matrix products on every core with PyTorch's threads."""

    def __init__(self, kind: str = "spin", seconds: float = 600):
        self.kind, self.seconds = kind, seconds
        self.procs = []

    def __enter__(self):
        ctx = mp.get_context("spawn")
        count, target = (len(os.sched_getaffinity(0)), spin) if self.kind == "spin" else (1, matmuls)
        started = [ctx.Event() for _ in range(count)]
        self.procs = [ctx.Process(target=target, args=(self.seconds, os.getpid(), e), daemon=True) for e in started]
        for p in self.procs:
            p.start()
        for e in started:  # measure once they are busy, not while they import
            e.wait(120)
        time.sleep(0.5)
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.join()


def rate(times: list[float]) -> float:
    """Tokens per second between the first and the last token: what a reader watching the story sees,
    stalls included (on a busy machine the median gap hides every token that waited for the CPU)."""
    return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 0.0


class Pinned:
    """A thread policy that always uses `n` threads."""

    def __init__(self, n):
        self.n = n

    def step(self):
        return threads(self.n)


def loop(model, forward, ids, tokens, seconds, pinned: int | None = None) -> float:
    """Greedy decoding with `forward(ids, cache, last_only)` (an engine.decoder, or pinned to `pinned`
    threads): the rate of the decoded tokens."""
    cache = model.new_cache(1, len(ids) + tokens + 1)
    policy = Pinned(pinned) if pinned else forward
    times = []
    with torch.inference_mode():
        tok = next_token(forward(torch.tensor([ids]), cache, True)[:, -1], 0)
        end = time.perf_counter() + seconds
        for _ in range(tokens):
            times.append(time.perf_counter())
            if times[-1] > end:
                break
            with policy.step():  # forward and greedy choice, as generate_tokens runs a token
                tok = next_token(forward(tok.view(1, 1), cache)[:, -1], 0)
    return rate(times)


def cli(model, ids, tokens, seconds) -> float:
    times, end = [], time.perf_counter() + seconds
    for _ in gemma3.generate_tokens(model, ids, max_new_tokens=tokens, temperature=0):
        times.append(time.perf_counter())
        if times[-1] > end:
            break
    return rate(times)


def app(model, ids, tokens, seconds) -> float:
    out = []
    worker = threading.Thread(target=lambda: out.append(cli(model, ids, tokens, seconds)))
    worker.start()
    worker.join()
    return out[0]


def transformers_rate(hf, ids, tokens, seconds) -> float:
    from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

    times, end = [], time.perf_counter() + seconds

    class Stamp(LogitsProcessor):
        def __call__(self, input_ids, scores):
            times.append(time.perf_counter())
            return scores

    class Deadline(StoppingCriteria):
        def __call__(self, input_ids, scores, **kw):
            return time.perf_counter() > end

    hf.generate(torch.tensor([ids]), max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, use_cache=True,
                logits_processor=LogitsProcessorList([Stamp()]), stopping_criteria=StoppingCriteriaList([Deadline()]))
    return rate(times)


def runners(model, hf):
    """name -> f(ids, tokens, seconds) for every side; the compiled one is compiled on first call."""
    reference = engine.decoder(model, use_engine=False)
    compiled = torch.compile(reference, dynamic=True)
    fast, one = engine.decoder(model), engine.decoder(model, threads=1)
    return {
        "transformers": lambda ids, n, s: transformers_rate(hf, ids, n, s),
        "reference": lambda ids, n, s: loop(model, reference, ids, n, s),
        # pinned: a compiled graph guards on the thread count, so the policy's switches would recompile it
        "compiled": lambda ids, n, s: loop(model, compiled, ids, n, s, pinned=len(os.sched_getaffinity(0))),
        "engine": lambda ids, n, s: loop(model, fast, ids, n, s),
        "engine, 1 thread": lambda ids, n, s: loop(model, one, ids, n, s),
        "CLI": lambda ids, n, s: cli(model, ids, n, s),
        "app": lambda ids, n, s: app(model, ids, n, s),
    }


def measure(models: dict, dtypes: dict, ids, tokens: int = 64, seconds: float = 8.0, repeats: int = 3,
            sides=SIDES) -> dict:
    """{(model, dtype, busy, side): tokens/s} (median of `repeats` runs), printing as it goes.
    `models`: name -> (our folder, transformers folder)."""
    from transformers import AutoModelForCausalLM

    results = {}
    for mname, (ours_dir, hf_dir) in models.items():
        for dname, dtype in dtypes.items():
            model = gemma3.load_model(ours_dir, device="cpu", dtype=dtype)[0]
            hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=dtype).eval()
            run = {side: f for side, f in runners(model, hf).items() if side in sides}
            t0 = time.perf_counter()
            for f in run.values():  # warm up; compiles the compiled side
                f(ids, 4, 600)
            print(f"  {mname} {dname}: warmed up (compile included) in {time.perf_counter() - t0:.0f} s", flush=True)
            for busy in CONDITIONS:
                with Hog(busy) if busy else _Quiet():
                    for side, f in run.items():
                        v = statistics.median(f(ids, tokens, seconds) for _ in range(repeats))
                        results[(mname, dname, busy, side)] = v
                        print(f"  {mname:5s} {dname} {busy or 'quiet':5s} {side:20s} {v:7.1f} tokens/s", flush=True)
            del model, hf, run
            torch._dynamo.reset()
    return results


class _Quiet:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def table(results: dict, models, dtypes, sides=SIDES) -> str:
    """The README's decode table: tokens/s per side (quiet / spin hog / torch hog) and the ratios that matter."""
    compare = "compiled" in sides
    lines = ["| model, dtype | " + " | ".join(sides) + (" | engine / compiled" if compare else "")
             + " | CLI busy / quiet | app busy / quiet |",
             "|---" * (len(sides) + 3 + compare) + "|"]
    for m in models:
        for d in dtypes:
            q = lambda side, busy=None: results[(m, d, busy, side)]  # noqa: E731
            cell = lambda side: " / ".join(f"{q(side, c):.0f}" for c in CONDITIONS)  # noqa: E731
            worst = lambda side: min(q(side, c) for c in CONDITIONS[1:]) / q(side)  # noqa: E731
            lines.append(f"| {m} {d} | " + " | ".join(cell(s) for s in sides)
                         + (f" | {q('engine') / q('compiled'):.2f}x" if compare else "")
                         + f" | {worst('CLI'):.2f} | {worst('app'):.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (the GPU table); cpu: a dry run of it")
    ap.add_argument("--quick", action="store_true", help="the 270m only, 100 tokens (bench/gpu_check.sh)")
    args = ap.parse_args()
    import decode_gpu

    decode_gpu.main(args.quick, args.device)
