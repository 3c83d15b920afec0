"""Training throughput: our trainer's step against transformers' Gemma3ForCausalLM, same weights, same run.

    python bench/train.py                       # 270m preset, batch 4 x 256, fp32 and bf16 autocast
    python bench/train.py --preset tiny --steps 3

Both sides run the same step: forward, cross-entropy over the vocabulary, backward, gradient
clipping and an AdamW update, on the same batch. Prints tokens/s, the ratio, and MFU against a
bf16 matmul peak measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import gemma3  # noqa: E402
from training.trainer import flops_per_token  # noqa: E402


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 10) -> float:
    """FLOP/s of a large square matmul: the best this machine does in this dtype."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - t0)


def make_step(model, forward, amp: bool):
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=1e-4, betas=(0.9, 0.95))

    def step(x, y):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            logits = forward(x)
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()
    return step


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="270m")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per side and dtype (after one warm-up)")
    ap.add_argument("--dtype", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = gemma3.Gemma3Config.from_preset(args.preset)
    ours = gemma3.Gemma3(cfg)
    with torch.no_grad():  # non-zero norm weights, as after training
        for name, p in ours.named_parameters():
            if "norm" in name:
                p.normal_(0, 0.1)
    with tempfile.TemporaryDirectory() as tmp:
        gemma3.export_hf(ours, gemma3.gpt2_tokenizer(), tmp)
        ref = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32)
    ref.train()
    ours.train()
    x = torch.randint(0, cfg.vocab_size, (args.batch, args.seq))
    y = torch.randint(0, cfg.vocab_size, (args.batch, args.seq))
    with torch.no_grad():
        diff = (ours(x) - ref(x).logits).abs().max().item()
    print(f"{args.preset}: {ours.num_params() / 1e6:.1f}M parameters, batch {args.batch} x {args.seq}, "
          f"{torch.get_num_threads()} threads, transformers attention: {ref.config._attn_implementation}, "
          f"max logit difference {diff:.1e}")

    tokens = args.batch * args.seq
    flops = flops_per_token(cfg, args.seq) * tokens
    peak = matmul_peak(torch.bfloat16)
    print(f"bf16 matmul peak measured: {peak / 1e12:.2f} TFLOP/s; fp32: {matmul_peak(torch.float32) / 1e12:.2f}")
    rows = []
    for dtype in args.dtype:
        amp = dtype == "bf16"
        # Fresh optimizers per dtype; both models take the same sequence of updates.
        sides = {"ours": make_step(ours, ours, amp), "transformers": make_step(ref, lambda t: ref(t).logits, amp)}
        times = {name: [] for name in sides}
        losses = {name: sides[name](x, y) for name in sides}  # warm-up
        for _ in range(args.steps):
            for name, step in sides.items():  # alternate, so drift on a shared machine hits both
                t0 = time.perf_counter()
                step(x, y)
                times[name].append(time.perf_counter() - t0)
        tps = {name: tokens / statistics.median(t) for name, t in times.items()}
        rows.append((dtype, tps["ours"], tps["transformers"], flops / tokens * tps["ours"] / peak,
                     flops / tokens * tps["transformers"] / peak))
        print(f"{dtype}: ours {tps['ours']:.0f} tok/s, transformers {tps['transformers']:.0f} tok/s, "
              f"ratio {tps['ours'] / tps['transformers']:.2f}x (first losses {losses['ours']:.4f} / "
              f"{losses['transformers']:.4f})")

    print(f"\n| training step ({args.preset}, {args.batch} x {args.seq}, AdamW) | ours tok/s | transformers tok/s "
          f"| ratio | MFU ours | MFU transformers |")
    print("|---|---|---|---|---|---|")
    for dtype, a, b, mfu_a, mfu_b in rows:
        name = "fp32" if dtype == "fp32" else "bf16 autocast"
        print(f"| {name} | {a:.0f} | {b:.0f} | {a / b:.2f}x | {mfu_a:.1%} | {mfu_b:.1%} |")
    print(f"(MFU against the bf16 matmul peak measured above: {peak / 1e12:.2f} TFLOP/s)")


if __name__ == "__main__":
    main()
