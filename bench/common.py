"""What the benchmarks share: what this machine can do at best, measured in the same run; the explain
benchmarks' prompt, timer and models."""

from __future__ import annotations

import statistics
import time

import torch


def matmul_peak(dtype: torch.dtype, device: torch.device | str = "cpu", n: int | None = None,
                reps: int | None = None) -> float:
    """FLOP/s of a large square matmul: the best this machine does in this dtype (on a GPU, 100 products of
    8192 x 8192, a fraction of a second, after 20 that bring its clocks up)."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    n = n or (8192 if cuda else 2048)
    reps = reps or (100 if cuda else 10)
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for _ in range(20 if cuda else 3):
        a @ b
    sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync()
    return 2 * n ** 3 * reps / (time.perf_counter() - t0)


def _timed(fn, device: torch.device, reps: int) -> float:
    """Seconds of one call of fn, the best of `reps` after one warm-up call. On a GPU each of them times 10 calls
    back to back between two synchronisations, so a short kernel is not charged a launch and a sync."""
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    calls = 10 if cuda else 1
    fn()
    sync()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        sync()
        best = min(best, (time.perf_counter() - t0) / calls)
    return best


def _linear_s(m: int, k: int, n: int, dtype: torch.dtype, device: torch.device, reps: int) -> float:
    """Seconds of a linear layer's three products in a training step: [m, k] x [k, n], and its backward's two."""
    a = torch.randn(m, k, dtype=dtype, device=device)
    w = torch.randn(k, n, dtype=dtype, device=device)
    g = torch.randn(m, n, dtype=dtype, device=device)
    return (_timed(lambda: a @ w, device, reps)           # the product
            + _timed(lambda: g @ w.t(), device, reps)     # its gradient for the input
            + _timed(lambda: a.t() @ g, device, reps))    # and for the weight


def step_ceiling(cfg, batch: int, seq: int, dtype: torch.dtype, device: torch.device | str = "cpu",
                 reps: int = 3) -> dict:
    """What no implementation of a training step of `cfg` (a Gemma3Config) at batch x seq beats on this machine:
    the step's matrix products at their own shapes, each timed alone in `dtype` (forward, and the two products of
    its backward), and its attention at the rate of PyTorch's best causal SDPA kernel here (flash on a GPU),
    forward and backward, for the keys it attends (training.trainer.attended_keys). Norms, activations, the
    softmax of the loss and the optimizer are left out: the real step can only be slower.
    Returns {"seconds", "matmul_s", "attention_s", "attention_tflops"}."""
    import torch.nn.functional as F

    from training.trainer import attended_keys

    device = torch.device(device)
    m = batch * seq
    H, KV, D, E = cfg.heads, cfg.kv_heads, cfg.head_dim, cfg.hidden
    shapes = {}  # (k, n) -> how many weights of that shape a token meets
    for k, n in [(E, H * D), (E, KV * D), (E, KV * D), (H * D, E), (E, cfg.ffn), (E, cfg.ffn), (cfg.ffn, E)]:
        shapes[(k, n)] = shapes.get((k, n), 0) + cfg.layers
    shapes[(E, cfg.vocab_size)] = shapes.get((E, cfg.vocab_size), 0) + 1
    matmul_s = sum(count * _linear_s(m, k, n, dtype, device, reps) for (k, n), count in shapes.items())
    q = torch.randn(batch, H, seq, D, dtype=dtype, device=device, requires_grad=True)
    k = torch.randn(batch, KV, seq, D, dtype=dtype, device=device, requires_grad=True)
    v = torch.randn(batch, KV, seq, D, dtype=dtype, device=device, requires_grad=True)
    grad = torch.randn(batch, H, seq, D, dtype=dtype, device=device)

    def attention():
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=KV != H)
        torch.autograd.grad(out, (q, k, v), grad)

    one_layer = 12 * H * D * (seq / 2) * m  # causal: seq / 2 keys a query, forward and backward
    rate = one_layer / _timed(attention, device, reps)
    attention_s = 12 * H * D * attended_keys(cfg, seq) * m / rate
    return {"seconds": matmul_s + attention_s, "matmul_s": matmul_s, "attention_s": attention_s,
            "attention_tflops": rate / 1e12}


def read_time(nbytes: int, passes: int = 5) -> float:
    """Seconds to read `nbytes` of memory once: the best of passes of a sum and of a matrix-vector
    product over an fp32 buffer of that size (both stream it once). A decode step reads every weight
    once, so no decoder runs a step faster than this."""
    buf = torch.ones(nbytes // 4)  # written, so every page is resident
    mat, vec = buf[: buf.numel() // 1024 * 1024].view(-1, 1024), torch.ones(1024)
    best = float("inf")
    for _ in range(passes):
        for read in (buf.sum, lambda: torch.mv(mat, vec)):
            t0 = time.perf_counter()
            read()
            best = min(best, time.perf_counter() - t0)
    return best


# ---- what the explain benchmarks (record.py, gemma3_views.py) share ------------------------------------

STORY = ("Once upon a time, there was a little girl named Lily. She loved to play in the park with her dog, Max. "
         "One day, they found a big red ball under a tree. Lily wanted to share it with her friends. ")
PROMPT = STORY * 20  # about 900 tokens: cut to the last 100 or MAX_TOKENS


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def models():
    """(name, model, tokenizer): the bundled demo model in fp32, the 270m preset (random weights) in fp32 and bf16."""
    import gemma3
    from gemma3.defaults import DEMO_MODEL

    demo, demo_tok = gemma3.load_model(DEMO_MODEL, device="cpu", dtype=torch.float32)
    yield "demo fp32", demo, demo_tok
    torch.manual_seed(0)
    big = gemma3.Gemma3(gemma3.Gemma3Config.from_preset("270m")).eval()
    tok = gemma3.gpt2_tokenizer()
    yield "270m fp32", big, tok
    yield "270m bf16", big.to(torch.bfloat16), tok


def explain_table(measure, what: str, note: str, doc: str):
    """The explain benchmarks' command line and table: `measure(name, model, tok, tokens, repeats)` yields rows
    (model, tokens, what, seconds, x forward, note) for every model of `models()`, at 100 and MAX_TOKENS tokens."""
    import argparse

    import explain

    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: PyTorch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats}\n", flush=True)
    print(f"| model | tokens | {what} | time | x forward | {note} |")
    print("|---|---:|---|---:|---:|---|")
    for name, model, tok in models():
        for tokens in (100, explain.MAX_TOKENS):
            for m, t, w, sec, ratio, n in measure(name, model, tok, tokens, args.repeats):
                print(f"| {m} | {t} | {w} | {sec * 1e3:.0f} ms | {ratio:.2f} | {n} |", flush=True)
