"""Benchmark: our cached generation against transformers' Gemma3ForCausalLM, same weights, same run.

    python bench/generate.py [--dtype fp32 bf16] [--new-tokens 200] [--prompt-tokens 20]
                             [--prefill-tokens 512] [--repeats 5] [--threads N] [--no-memory]

Both models are the 270m preset with the same random weights (norm weights small and random so
nothing is degenerate): ours is loaded with `gemma3.load_model` from our format, as the CLI and the
app load it; transformers' with `from_pretrained` from what `gemma3.export_hf` wrote.
Every figure is a ratio against a peer measured in the same run, alternating which side goes first
and taking the median of `--repeats` runs, because absolute times on a shared machine are noise.

What is measured, and how it is made fair:
- Decode (batch 1, greedy, `--prompt-tokens` prompt, `--new-tokens` new tokens, no early stop):
  the time between consecutive new tokens, which is one cached forward + argmax + loop bookkeeping
  on both sides. Ours: `gemma3.generate_tokens(..., temperature=0)`, stamped at every yielded token.
  Transformers: `generate(..., min_new_tokens=N, do_sample=False, use_cache=True)` with a
  LogitsProcessor that stamps every step (the first stamp comes right after the prefill forward).
  A run's rate is 1 / the median gap, which shrugs off short bursts of other load; the mean rate
  (for ours the `tokens_per_s` of generate_tokens' stats) is printed too.
- Decode table (bench/decode.py, first): every way we decode - the reference model eager, the same
  under torch.compile, the engine, the CLI path and the app path - and transformers, on the demo
  model and the 270m preset, fp32 and bf16, on a quiet machine and with a CPU hog on every core.
- Roofline: one matrix-vector product of an [in] vector with every weight matrix a decode step reads
  (per layer q, k, v, o, gate, up, down, then the embedding as the output head), same dtype, in the
  model's order, with each kernel this machine offers (F.linear, torch.mv, and in bf16 our
  engine's where it builds); the fastest is the roofline. That is the time a token cannot
  beat with these kernels here; we print the fraction of it each decoder reaches (roofline time /
  decode time per token).
- Prefill (`--prefill-tokens` prompt): time to first token, end to end as a user sees it - ours:
  `next(generate_tokens(..., temperature=0))`; transformers: `generate(max_new_tokens=1)` (which runs
  one forward with logits_to_keep=1 and a fresh DynamicCache). Also the bare forward, which leaves
  out generate's bookkeeping: ours `model(ids, cache=new_cache, last_only=True)`, transformers'
  `model(ids, use_cache=True, logits_to_keep=1)`.
- Ceilings: how fast any implementation could go here. Decode: a step reads every weight once, so
  it cannot beat the time this machine takes to read that many bytes (`common.read_time`). Prefill:
  its matmul FLOPs at the matmul peak measured for the dtype. Each is printed as the largest ratio
  over transformers it would allow.
- The process runs as our programs run (`gemma3.runtime.cpu.keep_freed_memory`), for both sides alike.
  `GEMMA3_NO_KERNEL=1 python bench/generate.py` measures the reference model instead of the engine.
- Memory: each side runs alone in a subprocess (same imports in both); we print the resident set
  after loading the model and a 2-token warm-up (which pages in every weight), and the peak added
  while generating (`--prefill-tokens` prompt, then `--new-tokens` tokens), via /proc/self/status
  VmRSS / VmHWM, with the peak reset after the warm-up through /proc/self/clear_refs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import gemma3  # noqa: E402
from gemma3.runtime import engine  # noqa: E402
from gemma3.runtime.engine import ops  # noqa: E402

from gemma3.runtime.cpu import keep_freed_memory  # noqa: E402

from common import matmul_peak, read_time  # noqa: E402  (bench/common.py)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
TARGETS = {"decode": 2.0, "prefill": 1.5, "roofline": 0.70}


# ---- the two models ----------------------------------------------------------------------------
def build_models(tmp: Path, seed: int = 0):
    """Our fp32 model with random weights, and a transformers checkpoint folder holding the same."""
    torch.manual_seed(seed)
    model = gemma3.Gemma3(gemma3.Gemma3Config.from_preset("270m")).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.normal_(0.0, 0.1)
    hf_dir = tmp / "hf"
    gemma3.export_hf(model, gemma3.gpt2_tokenizer(), hf_dir)
    return model, hf_dir


def ours_in(folder, dtype):
    return gemma3.load_model(folder, device="cpu", dtype=dtype)[0]


def hf_in(hf_dir, dtype):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(hf_dir, dtype=dtype).eval()


def decode_matrices(model) -> list[torch.Tensor]:
    mats = []
    for b in model.blocks:
        a, f = b.attn, b.ffn
        mats += [a.wq.weight, a.wk.weight, a.wv.weight, a.wo.weight, f.gate.weight, f.up.weight, f.down.weight]
    mats.append(model.embed.weight if model.head is None else model.head.weight)
    return mats


# ---- timed runs ---------------------------------------------------------------------------------
def ours_decode(model, ids, n):
    """(median-gap rate, mean rate from generate_tokens' stats, tokens)."""
    stats, tokens, times = {}, [], []
    for tok in gemma3.generate_tokens(model, ids, max_new_tokens=n, temperature=0, stats=stats):
        times.append(time.perf_counter())
        tokens.append(tok)
    assert len(tokens) == n, stats
    return 1 / gap(times), stats["tokens_per_s"], tokens


def gap(times):
    return statistics.median(b - a for a, b in zip(times, times[1:]))


def hf_decode(hf, ids, n):
    from transformers import LogitsProcessor, LogitsProcessorList

    class Stamp(LogitsProcessor):
        def __init__(self):
            self.times = []

        def __call__(self, input_ids, scores):
            self.times.append(time.perf_counter())
            return scores

    stamp = Stamp()
    out = hf.generate(torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False, use_cache=True,
                      logits_processor=LogitsProcessorList([stamp]))
    tokens = out[0, len(ids):].tolist()
    assert len(tokens) == n and len(stamp.times) == n
    return 1 / gap(stamp.times), (n - 1) / (stamp.times[-1] - stamp.times[0]), tokens


def ours_ttft(model, ids):
    t0 = time.perf_counter()
    gen = gemma3.generate_tokens(model, ids, max_new_tokens=1, temperature=0)
    next(gen)
    t = time.perf_counter() - t0
    gen.close()
    return t


def hf_ttft(hf, ids):
    t0 = time.perf_counter()
    hf.generate(torch.tensor([ids]), max_new_tokens=1, do_sample=False, use_cache=True)
    return time.perf_counter() - t0


def ours_forward(model, ids):
    t0 = time.perf_counter()
    x = torch.tensor([ids])
    engine.decoder(model)(x, model.new_cache(1, len(ids) + 1), last_only=True)[:, -1].argmax(-1)
    return time.perf_counter() - t0


def hf_forward(hf, ids):
    t0 = time.perf_counter()
    hf(torch.tensor([ids]), use_cache=True, logits_to_keep=1).logits[:, -1].argmax(-1)
    return time.perf_counter() - t0


def prefill_flops(cfg: gemma3.Gemma3Config, T: int) -> float:
    """FLOPs of a T-token prefill: every layer's matmuls on T rows, causal attention (scores and values,
    a window's worth of keys at most on sliding layers), and the head on the last row only."""
    per_layer = cfg.hidden * (2 * cfg.heads + 2 * cfg.kv_heads) * cfg.head_dim + 3 * cfg.hidden * cfg.ffn
    keys = sum(sum(min(i + 1, cfg.window) if kind == "sliding" else i + 1 for i in range(T))
               for kind in cfg.layer_types)
    return 2 * T * cfg.layers * per_layer + 4 * cfg.heads * cfg.head_dim * keys + 2 * cfg.vocab_size * cfg.hidden


def kernels(dtype) -> dict:
    """The matrix-vector kernels this machine offers for a decoded token in this dtype."""
    ks = {"F.linear": lambda w, x: F.linear(x[None], w), "torch.mv": torch.mv}
    if ops.available():
        ks["engine matvec"] = ops.matvec
    return ks


def roofline(mats, kernel, passes: int = 5) -> float:
    """Seconds per token (median of passes) for one matrix-vector product with every weight a decode
    step reads, in the model's order, with `kernel(w, x)`."""
    xs = {w.shape[1]: torch.randn(w.shape[1], dtype=w.dtype) for w in mats}
    times = []
    for _ in range(passes):
        t0 = time.perf_counter()
        for w in mats:
            kernel(w, xs[w.shape[1]])
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def alternate(repeats, ours, theirs):
    """Medians of ours() and theirs() over `repeats` runs each, alternating which goes first."""
    a, b = [], []
    for r in range(repeats):
        if r % 2 == 0:
            a.append(ours())
            b.append(theirs())
        else:
            b.append(theirs())
            a.append(ours())
    return statistics.median(a), statistics.median(b)


# ---- memory, each side alone in a subprocess ----------------------------------------------------
def proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def memory_worker(side, dtype_name, source, prompt_tokens, new_tokens, threads):
    torch.set_num_threads(threads)
    keep_freed_memory()
    import transformers  # noqa: F401  (both sides pay the same imports)
    base = proc_status_kib("VmRSS")
    dtype = DTYPES[dtype_name]
    if side == "ours":
        model, _ = gemma3.load_model(source, device="cpu", dtype=dtype)
    else:
        model = hf_in(source, dtype)
    ids = torch.randint(0, model.config.vocab_size - 1, (prompt_tokens,), generator=torch.Generator().manual_seed(1))
    ids = ids.tolist()
    with torch.inference_mode():  # a short warm-up pages in every weight (safetensors maps files lazily)
        (ours_decode if side == "ours" else hf_decode)(model, ids[:8], 2)
    loaded = proc_status_kib("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        reset = True
    except OSError:
        reset = False
    with torch.inference_mode():
        if side == "ours":
            ours_decode(model, ids, new_tokens)
        else:
            hf_decode(model, ids, new_tokens)
    peak = proc_status_kib("VmHWM")
    print(json.dumps(dict(base=base, loaded=loaded, peak=peak, reset=reset)))


def measure_memory(side, dtype_name, source, prompt_tokens, new_tokens, threads):
    cmd = [sys.executable, __file__, "--_memory-worker", side, dtype_name, str(source),
           str(prompt_tokens), str(new_tokens), str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def decode_table(args, tmp: Path, hf_dir: Path, prompt: list[int]):
    """Every decoder, quiet and with a CPU hog, on the demo model and the 270m preset (bench/decode.py)."""
    import decode
    from gemma3.defaults import DEMO_MODEL

    demo, _ = gemma3.load_model(DEMO_MODEL, device="cpu", dtype=torch.float32)
    gemma3.export_hf(demo, gemma3.gpt2_tokenizer(), tmp / "demo-hf")
    models = {"demo": (DEMO_MODEL, tmp / "demo-hf"), "270m": (tmp / "ours", hf_dir)}
    dtypes = {name: DTYPES[name] for name in args.dtype}
    print(f"\n== decode: every decoder, {args.decode_tokens} tokens a run, quiet and busy "
          f"(one busy process per core) ==", flush=True)
    sides = args.sides or decode.SIDES
    results = decode.measure(models, dtypes, prompt, tokens=args.decode_tokens, repeats=args.repeats, sides=sides)
    print("\ntokens/s, quiet / spin hog / torch hog:\n" + decode.table(results, models, dtypes, sides) + "\n",
          flush=True)


# ---- main ---------------------------------------------------------------------------------------
def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dtype", nargs="+", default=["fp32", "bf16"], choices=list(DTYPES))
    p.add_argument("--new-tokens", type=int, default=200)
    p.add_argument("--prompt-tokens", type=int, default=20)
    p.add_argument("--prefill-tokens", type=int, default=512)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--no-memory", action="store_true", help="skip the subprocess memory measurement")
    p.add_argument("--only", choices=["decode", "transformers"],
                   help="decode: only the table of every decoder, quiet and busy (bench/decode.py); "
                        "transformers: only the comparison with transformers (prefill, roofline, memory)")
    p.add_argument("--decode-tokens", type=int, default=64, help="tokens per measurement in the decode table")
    p.add_argument("--sides", nargs="+", help="only these columns of the decode table (default: all)")
    p.add_argument("--_memory-worker", nargs=6, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._memory_worker:
        side, dtype_name, source, pt, nt, th = args._memory_worker
        return memory_worker(side, dtype_name, source, int(pt), int(nt), int(th))

    import transformers
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {args.threads} threads, "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    tmp_ctx = tempfile.TemporaryDirectory()
    tmp = Path(tmp_ctx.name)
    master, hf_dir = build_models(tmp)
    gemma3.save_model(master, gemma3.gpt2_tokenizer(), tmp / "ours")
    gen = torch.Generator().manual_seed(1)
    V = master.config.vocab_size - 1  # keep clear of the end-of-text id
    prompt = torch.randint(0, V, (args.prompt_tokens,), generator=gen).tolist()
    long_prompt = torch.randint(0, V, (args.prefill_tokens,), generator=gen).tolist()

    if args.only != "transformers":
        decode_table(args, tmp, hf_dir, prompt)
    if args.only == "decode":
        return tmp_ctx.cleanup()
    rows, roof_rows, mem_rows = {}, {}, []
    for name in args.dtype:
        dtype = DTYPES[name]
        ours, hf = ours_in(tmp / "ours", dtype), hf_in(hf_dir, dtype)
        print(f"\n== {name} ==  transformers attention implementation: {hf.config._attn_implementation}")
        with torch.inference_mode():
            x = torch.tensor([prompt])
            a, b = ours(x).float(), hf(x).logits.float()
            err = (a - b).abs().max().item()
            tol = (1e-3 if dtype == torch.float32 else 5e-2) * b.abs().max().item()
            print(f"logits agree: max |ours - transformers| = {err:.2e} (scale {b.abs().max().item():.2f})"
                  + ("" if err <= tol else "  <-- MISMATCH"))

            # warm up each once
            ours_decode(ours, prompt, 8), hf_decode(hf, prompt, 8)
            ours_ttft(ours, long_prompt), hf_ttft(hf, long_prompt)
            mats = decode_matrices(ours)
            ks = kernels(dtype)
            for k in ks.values():
                roofline(mats, k, 1)

            # decode, with the rooflines measured in between
            rates, means, toks = {"ours": [], "hf": []}, {"ours": [], "hf": []}, {}
            roofs = {name: [] for name in ks}
            for r in range(args.repeats):
                for side in (["ours", "hf"] if r % 2 == 0 else ["hf", "ours"]):
                    run = ours_decode if side == "ours" else hf_decode
                    rate, mean, toks[side] = run(ours if side == "ours" else hf, prompt, args.new_tokens)
                    rates[side].append(rate)
                    means[side].append(mean)
                    for k, kernel in ks.items():
                        roofs[k].append(roofline(mats, kernel))
            same = next((i for i, (u, v) in enumerate(zip(toks["ours"], toks["hf"])) if u != v), args.new_tokens)
            o, h = statistics.median(rates["ours"]), statistics.median(rates["hf"])
            roofs = {k: statistics.median(v) for k, v in roofs.items()}
            best = min(roofs, key=roofs.get)
            roof = roofs[best]
            print(f"decode tokens/s (1 / median gap)  ours {o:.1f}  transformers {h:.1f}  ratio {o / h:.2f}   "
                  f"(runs: ours {', '.join(f'{v:.1f}' for v in rates['ours'])}; "
                  f"transformers {', '.join(f'{v:.1f}' for v in rates['hf'])})")
            mo, mh = statistics.median(means["ours"]), statistics.median(means["hf"])
            print(f"decode tokens/s (mean over the run)  ours {mo:.1f} (generate_tokens stats)  "
                  f"transformers {mh:.1f}  ratio {mo / mh:.2f}")
            print(f"greedy tokens identical for the first {same} of {args.new_tokens}"
                  + ("" if same == args.new_tokens else " (random weights give near-ties; expected in bf16)"))
            print("matrix-vector products alone, per token: "
                  + ", ".join(f"{k} {1e3 * t:.1f} ms" for k, t in roofs.items()))
            print(f"roofline (the fastest, {best}): {1e3 * roof:.1f} ms/token ({1 / roof:.1f} tokens/s); "
                  f"ours reaches {o * roof:.0%}, transformers {h * roof:.0%}")
            # The memory ceiling: a step reads every weight once; reading that many bytes takes this long.
            nbytes = sum(w.numel() * w.element_size() for w in mats)
            read = read_time(nbytes)
            print(f"memory ceiling: a token reads {nbytes / 1e6:.0f} MB of weights; this machine reads that in "
                  f"{1e3 * read:.1f} ms ({nbytes / read / 1e9:.1f} GB/s), so no decoder passes {1 / read:.1f} tokens/s "
                  f"= {1 / read / h:.2f}x transformers")
            rows[f"decode {name}"] = ("tokens/s", o, h, o / h, TARGETS["decode"], 1 / read / h)
            roof_rows[name] = (best, 1 / roof, o * roof, h * roof)

            # prefill: time to first token
            to, th = alternate(args.repeats, lambda: ours_ttft(ours, long_prompt),
                                       lambda: hf_ttft(hf, long_prompt))
            fo, fh = alternate(args.repeats, lambda: ours_forward(ours, long_prompt),
                                     lambda: hf_forward(hf, long_prompt))
            print(f"prefill {args.prefill_tokens} tokens, time to first token  ours {1e3 * to:.0f} ms  "
                  f"transformers generate(max_new_tokens=1) {1e3 * th:.0f} ms  speed-up {th / to:.2f}x")
            print(f"prefill bare forward (last logits only)  ours {1e3 * fo:.0f} ms  transformers {1e3 * fh:.0f} ms  "
                  f"speed-up {fh / fo:.2f}x")
            floor = prefill_flops(master.config, len(long_prompt)) / matmul_peak(dtype)
            print(f"compute ceiling: the prefill's matmuls at this machine's {name} matmul peak take {1e3 * floor:.0f} ms, "
                  f"so no implementation is more than {th / floor:.2f}x transformers")
            rows[f"prefill {name}"] = ("ms to first token", 1e3 * to, 1e3 * th, th / to, TARGETS["prefill"], th / floor)
        del ours, hf

        if not args.no_memory:
            for side, src in (("ours", tmp / "ours"), ("transformers", hf_dir)):
                m = measure_memory("ours" if side == "ours" else "hf", name, src, args.prefill_tokens,
                                   args.new_tokens, args.threads)
                mem_rows.append((name, side, m))
                print(f"memory {side:12s} model resident {(m['loaded'] - m['base']) / 1024:6.0f} MiB, "
                      f"added while generating {(m['peak'] - m['loaded']) / 1024:6.0f} MiB "
                      f"(peak RSS {m['peak'] / 1024:.0f} MiB)" + ("" if m["reset"] else " [peak not reset]"))

    import resource
    print(f"\nthis process: peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB; "
          f"load average now {os.getloadavg()[0]:.2f}")
    print("\n| benchmark (270m, batch 1, CPU) | ours | transformers | speed ratio (ours / transformers) | target "
          "| ceiling on this machine |")
    print("|---|---|---|---|---|---|")
    for key, (unit, o, h, ratio, target, ceiling) in rows.items():
        kind = key.split()[0]
        if kind == "decode":
            label = f"{key}: tokens/s, {args.prompt_tokens}-token prompt, {args.new_tokens} new"
            cells = f"{o:.1f} | {h:.1f} | {ratio:.2f}x | >= {target:.1f}x | {ceiling:.2f}x (memory reads)"
        else:
            label = f"{key}: ms to first token, {args.prefill_tokens}-token prompt"
            cells = f"{o:.0f} | {h:.0f} | {ratio:.2f}x | >= {target:.1f}x | {ceiling:.2f}x (matmuls at peak)"
        print(f"| {label} | {cells} |")
    print("\n| decode vs roofline (the fastest matrix-vector kernel here, products only) | kernel "
          "| roofline tokens/s | ours | transformers | target |")
    print("|---|---|---|---|---|---|")
    for name, (kernel, rt, fo, fh) in roof_rows.items():
        print(f"| {name} | {kernel} | {rt:.1f} | {fo:.0%} | {fh:.0%} | >= {TARGETS['roofline']:.0%} |")
    if mem_rows:
        print("\n| memory (own process each) | model resident MiB | added while generating MiB |")
        print("|---|---|---|")
        for name, side, m in mem_rows:
            print(f"| {side} {name} | {(m['loaded'] - m['base']) / 1024:.0f} | {(m['peak'] - m['loaded']) / 1024:.0f} |")
    tmp_ctx.cleanup()


if __name__ == "__main__":
    main()
