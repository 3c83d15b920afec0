"""Training throughput: our trainer's step against transformers' Gemma3ForCausalLM, same weights, same run.

    python bench/train.py                       # 270m preset, batch 4 x 256, fp32 and bf16 autocast
    python bench/train.py --no-compile          # skip the torch.compile side (about a minute per dtype)
    python bench/train.py --preset tiny --steps 3
    python bench/train.py --device cuda --batch 32 --seq 512 --dtype bf16   # the GPU figure (270m, 32 x 512)

Every side runs the same step on the same batch: forward, cross-entropy over the vocabulary,
backward, gradient clipping and an AdamW update. The process runs as our trainer runs on a CPU
(gemma3.runtime.cpu.keep_freed_memory, fused AdamW), and so does transformers' side: both get the same
allocator and optimizer, so the ratio is the model code's alone. Each side computes its loss as its
library trains: ours `model(x, targets=y)` (gemma3/loss.py, as the trainer does), transformers' the
cross-entropy of its logits in fp32 (what Gemma3ForCausalLM(labels=...) computes). Sides:
- ours: our Gemma3, eager (the trainer's default);
- ours compiled: the same with torch.compile, as `--compile` in the trainer (compile time printed);
- transformers: Gemma3ForCausalLM, eager, with its default attention implementation.
Sides alternate step by step, so drift on a shared machine hits all of them; each figure is the
median over `--steps` steps. Prints tokens/s, the ratios, MFU against the bf16 matmul peak measured
in the same run (on a GPU the trainer knows, also against its datasheet peak, the usual MFU), the
ceiling no implementation can pass here: the step's matmul FLOPs at the measured matmul peak of the
dtype the matmuls run in, and on a GPU each side's peak memory.
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
from gemma3.runtime.cpu import keep_freed_memory  # noqa: E402
from training.trainer import flops_per_token, peak_flops  # noqa: E402

from common import matmul_peak  # noqa: E402  (bench/common.py)


def make_step(model, loss_of, amp: bool, device: torch.device):
    """One training step; `loss_of(x, y)` is the side's forward and mean cross-entropy."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=1e-4, betas=(0.9, 0.95), fused=True)

    def step(x, y):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = loss_of(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()
    return step


def logits_loss(logits, y):
    """What transformers' Gemma3ForCausalLM(labels=...) computes: cross-entropy of the logits in fp32."""
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="270m")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per side and dtype (after warm-up)")
    ap.add_argument("--dtype", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    ap.add_argument("--no-compile", action="store_true", help="leave out the torch.compile side")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    args = ap.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    from transformers import AutoModelForCausalLM

    print(f"allocator keeps freed memory: {keep_freed_memory()} (for every side)")
    torch.manual_seed(0)
    cfg = gemma3.Gemma3Config.from_preset(args.preset)
    master = gemma3.Gemma3(cfg)
    with torch.no_grad():  # non-zero norm weights, as after training
        for name, p in master.named_parameters():
            if "norm" in name:
                p.normal_(0, 0.1)
    tmp = tempfile.TemporaryDirectory()
    gemma3.export_hf(master, gemma3.gpt2_tokenizer(), tmp.name)

    def fresh():
        """Both models with the same weights, before any step (each dtype starts from here)."""
        ours, ref = gemma3.Gemma3(cfg), AutoModelForCausalLM.from_pretrained(tmp.name, dtype=torch.float32)
        ours.load_state_dict(master.state_dict())
        return ours.to(device).train(), ref.to(device).train()

    ours, ref = fresh()
    x = torch.randint(0, cfg.vocab_size, (args.batch, args.seq), device=device)
    y = torch.randint(0, cfg.vocab_size, (args.batch, args.seq), device=device)
    with torch.no_grad():
        diff = (ours(x) - ref(x).logits).abs().max().item()
    print(f"{args.preset}: {master.num_params() / 1e6:.1f}M parameters, batch {args.batch} x {args.seq}, "
          f"{torch.cuda.get_device_name(device) if cuda else f'{torch.get_num_threads()} threads'}, "
          f"transformers attention: {ref.config._attn_implementation}, "
          f"max logit difference {diff:.1e}")

    tokens = args.batch * args.seq
    flops = flops_per_token(cfg, args.seq) * tokens
    peaks = {"bf16": matmul_peak(torch.bfloat16, device), "fp32": matmul_peak(torch.float32, device)}
    print(f"matmul peak measured: bf16 {peaks['bf16'] / 1e12:.2f} TFLOP/s, fp32 {peaks['fp32'] / 1e12:.2f} TFLOP/s")
    sheet = peak_flops(device, torch.bfloat16, None) if cuda else None
    if sheet and sheet != peaks["bf16"]:
        print(f"datasheet bf16 peak of this GPU: {sheet / 1e12:.0f} TFLOP/s")
    rows = []
    for dtype in args.dtype:
        amp = dtype == "bf16"
        ours, ref = fresh()
        sides = {"ours": make_step(ours, lambda x, y: ours(x, targets=y), amp, device),
                 "transformers": make_step(ref, lambda x, y: logits_loss(ref(x).logits, y), amp, device)}
        if not args.no_compile:
            twin, _ = fresh()
            compiled = torch.compile(twin)
            sides["ours compiled"] = make_step(twin, lambda x, y: compiled(x, targets=y), amp, device)
        losses, first = {}, {}
        for name, step in sides.items():  # warm-up; the compiled side compiles here
            t0 = time.perf_counter()
            losses[name] = step(x, y)
            first[name] = time.perf_counter() - t0
        compile_s = first.get("ours compiled")
        times, memory = {name: [] for name in sides}, {}
        for _ in range(args.steps):
            for name, step in sides.items():  # alternate, so drift on a shared machine hits every side
                if cuda:
                    torch.cuda.synchronize(device)
                    torch.cuda.reset_peak_memory_stats(device)
                t0 = time.perf_counter()
                step(x, y)  # ends with loss.item(): the step has finished
                times[name].append(time.perf_counter() - t0)
                if cuda:
                    memory[name] = torch.cuda.max_memory_allocated(device)
        tps = {name: tokens / statistics.median(t) for name, t in times.items()}
        # The matmuls alone at this machine's peak in the dtype they run in: nothing runs this step faster.
        ceiling = tokens / (flops / peaks[dtype])
        rows.append((dtype, tps, ceiling))
        print(f"{dtype}: " + ", ".join(f"{n} {v:.0f} tok/s" for n, v in tps.items())
              + f"; ours / transformers {tps['ours'] / tps['transformers']:.2f}x"
              + (f", compiled {tps['ours compiled'] / tps['transformers']:.2f}x (compile {compile_s:.0f} s)"
                 if compile_s is not None else "")
              + f"; first losses " + " / ".join(f"{v:.4f}" for v in losses.values()))
        print(f"  ceiling: the matmuls alone at the {dtype} matmul peak run {ceiling:.0f} tok/s, "
              f"{ceiling / tps['transformers']:.2f}x transformers")
        if sheet:
            print("  MFU against the datasheet peak: " + ", ".join(f"{n} {flops / tokens * v / sheet:.1%}"
                                                               for n, v in tps.items()))
        if memory:
            print("  peak GPU memory in a step: " + ", ".join(f"{n} {m / 2 ** 30:.1f} GiB" for n, m in memory.items()))
        del sides, ours, ref

    peak = peaks["bf16"]
    print(f"\n| training step ({args.preset}, {args.batch} x {args.seq}, AdamW) | transformers tok/s | ours tok/s "
          f"| ratio | ours compiled tok/s | ratio | ceiling (matmuls at peak) | MFU ours / compiled / transformers |")
    print("|---|---|---|---|---|---|---|---|")
    for dtype, tps, ceiling in rows:
        name = "fp32" if dtype == "fp32" else "bf16 autocast"
        ref_tps = tps["transformers"]
        comp = tps.get("ours compiled")
        mfu = " / ".join(f"{flops / tokens * tps[n] / peak:.1%}" if n in tps else "-"
                         for n in ("ours", "ours compiled", "transformers"))
        print(f"| {name} | {ref_tps:.0f} | {tps['ours']:.0f} | {tps['ours'] / ref_tps:.2f}x | "
              + (f"{comp:.0f} | {comp / ref_tps:.2f}x" if comp else "- | -")
              + f" | {ceiling / ref_tps:.2f}x | {mfu} |")
    print(f"(MFU against the bf16 matmul peak measured above: {peak / 1e12:.2f} TFLOP/s)")
    tmp.cleanup()


if __name__ == "__main__":
    main()
