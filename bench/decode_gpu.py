"""Decode speed on a GPU, batch 1: every way we decode, transformers' best, and the memory-bandwidth bound.

    python bench/decode.py --device cuda            # the 270m preset and the bundled demo model, bf16
    python bench/decode.py --device cuda --quick    # the 270m only, fewer tokens (part of bench/gpu_check.sh)

A decoded token must read every weight once (the head included) and the cache it attends to, so no
decoder runs faster than bytes / bandwidth: the bound, with the bandwidth measured in the same run (the
best of a few full reads of a 2 GiB buffer). Each side generates the same prompt greedily; its rate is
the decoded tokens per second, after a warm-up that also compiles and captures,
with the GPU synchronised: (N - 2) / (time of N tokens - time of 2), so the prompt and the one-time work of a
generation (a graph's capture, a static cache's setup) cancel out. Sides:
- ours, reference: gemma3/model.py's forward with the cache (gathers the ring, concatenates, a fresh mask
  and new shapes every token: what the GPU ran before the fixed-shape step);
- ours, fixed-shape eager / CUDA graph / compiled: Gemma3.decode eager, replayed as a CUDA graph (the
  default on a GPU), and under torch.compile(mode="reduce-overhead") (gemma3/runtime/graphs.py);
- a candidate, not what generation runs: the CUDA graph with every RMSNorm as F.rms_norm (fused_norms), with
  its kernel count beside the default's;
- transformers: Gemma3ForCausalLM.generate, eager with its dynamic cache, and with its static cache and
  torch.compile(mode="reduce-overhead") of its forward, which generate applies by itself on a GPU.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import tempfile
import time

import torch
import torch.nn.functional as F

import gemma3
from gemma3.defaults import DEMO_MODEL

SHEET_BANDWIDTH = {"H100 PCIe": 2.0e12, "H100": 3.35e12, "H200": 4.8e12, "A100": 2.0e12, "L4": 0.3e12}  # bytes/s


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def read_bandwidth(device, gib: float = 2.0) -> float:
    """Bytes per second of a full read of a large buffer (a sum), best of five."""
    buf = torch.ones(int(gib * 2 ** 30) // 2, dtype=torch.bfloat16, device=device)
    best = float("inf")
    for _ in range(6):
        sync()
        t0 = time.perf_counter()
        buf.sum()
        sync()
        best = min(best, time.perf_counter() - t0)
    return buf.numel() * buf.element_size() / best


def replay_time_per_kernel(device, n: int = 2000) -> float:
    """Seconds a replayed CUDA graph spends per small kernel (n adds on a 640-element vector, back to back):
    the least any kernel of a decode step costs, however little it reads."""
    x = torch.zeros(640, device=device)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        x.add_(1)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(n):
            x.add_(1)
    best = float("inf")
    for _ in range(5):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        graph.replay()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best / n


def kernels_per_token(model, device) -> int:
    """GPU kernels (and copies) one eager fixed-shape decode step launches, counted by the profiler."""
    from torch.profiler import ProfilerActivity, profile

    cache = model.new_cache(1, 64)
    ids = torch.zeros(1, 1, dtype=torch.long, device=device)
    with torch.inference_mode():
        model(torch.zeros(1, 8, dtype=torch.long, device=device), cache=cache)
        model.decode(ids, cache)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            model.decode(ids, cache)
            torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


def bytes_per_token(model, context: int) -> int:
    """What one decoded token reads: every weight once (the tied embedding as the head) and, per layer,
    the keys and values it attends to at `context` positions."""
    cfg = model.config
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    kv = sum(min(context, cfg.window) if t == "sliding" else context for t in cfg.layer_types)
    return weights + 2 * kv * cfg.kv_heads * cfg.head_dim * model.embed.weight.element_size()


def timed(generate, tokens: int) -> float:
    """Tokens per second of `generate(n, budget)` between its first and its last new token (see the module's doc).
    Every call asks for `tokens` new tokens and stops after n: the same cache shapes, so nothing compiles anew."""
    def once(n):
        sync()
        t0 = time.perf_counter()
        generate(n, tokens)
        sync()
        return time.perf_counter() - t0

    once(tokens)  # warm-up: compiles, captures, fills the allocator
    # 2 tokens: the prompt and one decoded token, so a generation's one-time work (a graph's capture) cancels out
    return (tokens - 2) / max(1e-9, min(once(tokens) for _ in range(2)) - min(once(2) for _ in range(2)))


@contextlib.contextmanager
def fused_norms():
    """A candidate measured beside the default: every RMSNorm as F.rms_norm (the same arithmetic, bit for bit on a
    CPU; on a GPU one fused kernel where the written-out norm launches ten, which are two thirds of an eager
    step's kernels), to see what fewer launches give a replayed graph."""
    from gemma3.model import RMSNorm

    def forward(self, x):
        return F.rms_norm(x.float(), (x.shape[-1],), 1.0 + self.weight.float(), self.eps).to(x.dtype)

    original, RMSNorm.forward = RMSNorm.forward, forward
    try:
        yield
    finally:
        RMSNorm.forward = original


def ours(model, ids, mode: str | None, sampling: dict | None = None, fused: bool = False):
    """generate(n, budget) through gemma3.generate_tokens with decode mode `mode` (None: the reference forward)."""
    def generate(n, budget):
        os.environ["GEMMA3_GPU_DECODE"] = mode or "graph"  # read as each generation starts
        settings = sampling or dict(temperature=0)
        with fused_norms() if fused else contextlib.nullcontext():
            tokens = gemma3.generate_tokens(model, ids, max_new_tokens=budget, use_engine=mode is not None, **settings)
            for _ in itertools.islice(tokens, n):
                pass
            tokens.close()
    return generate


def theirs(hf, ids, static: bool):
    """generate(n, budget) through transformers' generate; with its static cache, which on a GPU it compiles by itself
    (torch.compile(mode="reduce-overhead") of its forward: its generation_config.compile_config's default)."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    prompt = torch.tensor([ids], device=hf.device)
    kwargs = dict(do_sample=False, use_cache=True, pad_token_id=0)
    if static:
        kwargs["cache_implementation"] = "static"

    class After(StoppingCriteria):
        def __init__(self, n):
            self.length = prompt.shape[1] + n

        def __call__(self, input_ids, scores, **_):
            return torch.full((input_ids.shape[0],), input_ids.shape[1] >= self.length, device=input_ids.device)

    def generate(n, budget):  # its cache sized for the budget, n tokens made
        hf.generate(prompt, max_new_tokens=budget, min_new_tokens=n, stopping_criteria=StoppingCriteriaList([After(n)]),
                    **kwargs)
    return generate


def best(rates: dict) -> tuple[float | None, float | None]:
    """Our best rate as generation ships it (greedy, no candidate) and transformers' best; None where none ran."""
    ours = [v for k, v in rates.items() if k.startswith("ours") and "sampling" not in k and "candidate" not in k]
    theirs = [v for k, v in rates.items() if k.startswith("transformers")]
    return max(ours, default=None), max(theirs, default=None)


def run_model(name: str, model, tokens: int, bound: float, compile_sides: bool, device) -> dict:
    from transformers import AutoModelForCausalLM

    ids = gemma3.gpt2_tokenizer().encode("Once upon a time, there was a little girl named Lily. She loved to")
    # what the targets compare first (our default, transformers' two ways, our compiled step: a minute of compiling
    # each), then the slower eager sides: a part cut short by its time limit has printed the figures that matter
    hf_eager = hf_static = None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            gemma3.export_hf(model.float(), gemma3.gpt2_tokenizer(), tmp)
            hf_eager = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.bfloat16).to(device).eval()
            hf_static = (AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.bfloat16).to(device).eval()
                         if compile_sides else None)
        except Exception as e:  # noqa: BLE001 (our sides still run)
            print(f"  {name}: transformers' sides left out ({type(e).__name__}: {str(e).splitlines()[0][:200]})")
        model.to(torch.bfloat16)
    sides = {"ours, CUDA graph": ours(model, ids, "graph")}
    if hf_eager is not None:
        sides["transformers, eager"] = theirs(hf_eager, ids, static=False)
    if hf_static is not None:
        sides["transformers, static cache, compiled"] = theirs(hf_static, ids, static=True)
    if compile_sides:
        sides["ours, compiled (reduce-overhead)"] = ours(model, ids, "compile")
    sides.update({"ours, CUDA graph, norms as F.rms_norm (a candidate)": ours(model, ids, "graph", fused=True),
                  "ours, fixed-shape eager": ours(model, ids, "eager"),
                  "ours, CUDA graph, sampling (T 0.8, top-k 40)": ours(model, ids, "graph",
                                                                       dict(temperature=0.8, top_k=40, seed=0)),
                  "ours, reference (cache gathered, cat)": ours(model, ids, None)})
    rates, shown = {}, None
    for side, generate in sides.items():
        t0 = time.perf_counter()
        try:
            rates[side] = timed(generate, tokens)
        except Exception as e:  # a side that fails here is reported, and the others still run
            print(f"  {name}: {side} failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}", flush=True)
            continue
        print(f"  {name}: {side:48s} {rates[side]:8.0f} tok/s   ({time.perf_counter() - t0:.0f} s with warm-up)",
              flush=True)
        ours_best, theirs_best = best(rates)
        if ours_best and theirs_best and (ours_best, theirs_best) != shown:  # the targets as they stand, in case
            shown = ours_best, theirs_best                                   # a time limit cuts the run short
            print(f"  {name}: so far ours best / transformers best {ours_best / theirs_best:.2f}x, "
                  f"ours best / bound {ours_best / bound:.0%}", flush=True)
    if compile_sides:  # a compiled side that silently ran without its CUDA graphs would show the wrong figure
        from torch._dynamo.utils import counters
        print(f"  {name}: CUDA graphs skipped by torch.compile: {dict(counters['inductor']).get('cudagraph_skips', 0)}",
              flush=True)
    return rates


def main(quick: bool = False, device: str = "cuda"):
    """The table; on a CPU (`--device cpu`) only a check that the bench runs (CUDA graphs need a GPU)."""
    device = torch.device(device)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (a dry run: no graphs)"
    bw = read_bandwidth(device)
    sheet = next((v for k, v in SHEET_BANDWIDTH.items() if k in gpu), None)
    print(f"{gpu}: read bandwidth measured {bw / 1e12:.2f} TB/s"
          + (f" (datasheet {sheet / 1e12:.2f} TB/s)" if sheet else ""), flush=True)
    tokens = 100 if quick else 500
    if device.type != "cuda":
        tokens = 8
    torch.manual_seed(0)
    big = gemma3.Gemma3(gemma3.Gemma3Config.from_preset("270m" if device.type == "cuda" else "demo"))
    with torch.no_grad():  # non-zero norm weights, as after training
        for n, p in big.named_parameters():
            if "norm" in n:
                p.normal_(0, 0.1)
    models = {"270m" if device.type == "cuda" else "demo preset (dry run)": big.to(device, torch.bfloat16).eval()}
    if not quick:
        models["demo"] = gemma3.load_model(DEMO_MODEL, device=device, dtype=torch.bfloat16)[0]
    cuda = device.type == "cuda"
    per_kernel = replay_time_per_kernel(device) if cuda else float("nan")
    if cuda:
        print(f"a replayed CUDA graph: {per_kernel * 1e6:.2f} us per small kernel", flush=True)
    rows = []
    for name, model in models.items():
        per_token = bytes_per_token(model, 20 + tokens // 2)
        bound = bw / per_token
        print(f"  {name}: a token reads {per_token / 1e6:.0f} MB: {per_token / bw * 1e3:.3f} ms, at most {bound:.0f} "
              "tok/s at the measured bandwidth", flush=True)
        if cuda:
            for fused in (False, True):
                try:
                    with fused_norms() if fused else contextlib.nullcontext():
                        kernels = kernels_per_token(model, device)
                except Exception as e:  # noqa: BLE001 (a profiler that cannot run here costs this line only)
                    print(f"  {name}: kernels not counted ({type(e).__name__}: {str(e).splitlines()[0][:200]})")
                    kernels = 0
                if kernels:
                    which = " with F.rms_norm" if fused else ""
                    print(f"  {name}: an eager fixed-shape step{which} launches {kernels} "
                          f"kernels: as a graph at least {kernels * per_kernel * 1e3:.2f} ms a token, "
                          f"{1 / (kernels * per_kernel):.0f} tok/s at most", flush=True)
        rates = run_model(name, model, tokens, bound, compile_sides=cuda, device=device)
        ours_best, theirs_best = best(rates)
        rows.append((name, rates, bound, per_token, ours_best, theirs_best))
    print(f"\n| model (bf16, batch 1, {tokens} tokens) | " + " | ".join(rows[0][1]) + " | bound (bytes / bandwidth) "
          "| ours best / transformers best | ours best / bound |")
    print("|---" * (len(rows[0][1]) + 4) + "|")
    for name, rates, bound, per_token, ours_best, theirs_best in rows:
        print(f"| {name} ({per_token / 1e6:.0f} MB a token) | " + " | ".join(f"{v:.0f}" for v in rates.values())
              + f" | {bound:.0f} | " + (f"{ours_best / theirs_best:.2f}x" if ours_best and theirs_best else "-")
              + " | " + (f"{ours_best / bound:.0%}" if ours_best else "-") + " |")
    print(f"(tokens/s on {gpu}; bound at the measured {bw / 1e12:.2f} TB/s; targets: >= 2x transformers' best, "
          ">= 50% of the bound)")
