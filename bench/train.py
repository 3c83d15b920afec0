"""Training throughput: the trainer's own step against transformers' Gemma3ForCausalLM, same weights, same run.

    python bench/train.py --device cuda            # 270m, 32 x 2048, bf16 autocast: the GPU figure and its MFU
    python bench/train.py --device cuda --quick    # the same, fewer steps (an estimated 3 minutes on an H100, not yet timed)
    python bench/train.py                          # CPU: 270m, 4 x 256, fp32 and bf16 autocast
    python bench/train.py --device cpu --preset tiny --steps 2    # seconds: does it run?
    python bench/train.py --no-compile             # leave out the compiled side

Sides, each its own step on the same weights:
- ours: the trainer's step itself (training/step.py's TrainStep, fused AdamW, as `python -m training train`
  runs it): forward and the chunked cross-entropy of gemma3/loss.py, backward, clipping, the update, and
  nothing that waits for the host (a non-finite step is skipped on the device);
- ours compiled: the same step with `compile=True`, as `--compile`: the model compiled forward and backward, and
  on a GPU FlexAttention for the sliding layers beyond their window (gemma3/runtime/flex.py) and the loss's row
  pass compiled (gemma3/runtime/gpu_loss.py);
- transformers: Gemma3ForCausalLM, eager, its default attention, the cross-entropy of its fp32 logits (what
  Gemma3ForCausalLM(labels=...) computes), the same clipping and fused AdamW.
Each side warms up (the compiled side, last, compiles: its time is printed) and runs its first block of `--steps`
steps at once, its figure printed (a run cut short by a time limit keeps it); then the other `--rounds` - 1
blocks, one per side in turn. A block is timed from a synchronised start to a synchronised end; the figure is the
median block. On a GPU a side that runs out of memory halves its batch and says so, and its step's peak memory
(activations, gradients, temporaries: beyond the resident weights and AdamW states) is printed.

Printed: tokens/s, the ratio to transformers eager, MFU = flops_per_token x tokens/s / peak (the formula and N are
printed) against the bf16 matmul peak measured in the same run and, on a GPU the trainer knows, its datasheet
peak; and the ceiling: the step's matrix products at their own shapes plus its attention at the
best causal kernel's rate, timed in the same run (bench/common.py step_ceiling), which no implementation passes.
The process runs as the trainer runs on a CPU (gemma3.runtime.cpu.keep_freed_memory), every side alike.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")  # several sides share one GPU
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import gemma3  # noqa: E402
from gemma3.runtime.cpu import keep_freed_memory  # noqa: E402
from training import TrainConfig  # noqa: E402
from training.step import TrainStep, adamw  # noqa: E402
from training.trainer import GPU_PEAK_TFLOPS, attended_keys, flops_per_token, matmul_params  # noqa: E402

from common import matmul_peak, step_ceiling  # noqa: E402  (bench/common.py)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Side:
    """One way of taking a training step: build(batch) makes the model and its step for that batch size."""

    def __init__(self, name: str, build):
        self.name, self.build = name, build
        self.batch = None      # the batch it runs (halved from --batch on out-of-memory)
        self.step = None       # step() takes one step on its batch; read() -> its last loss (waits)
        self.first_s = None    # the warm-up step (compiling, for the compiled side)
        self.first_loss = None
        self.times: list[float] = []
        self.memory = None
        self.error = None


def ours(master, cfg, tcfg, device, amp, seq, compile):
    def build(batch):
        model = gemma3.Gemma3(cfg)
        model.load_state_dict(master.state_dict())
        model.to(device).train()
        step = TrainStep(model, grad_clip=tcfg.grad_clip, amp_dtype=torch.bfloat16 if amp else None,
                         compile=compile, seq_len=seq, device=device)
        opt = adamw(model, tcfg.lr, (tcfg.beta1, tcfg.beta2), tcfg.weight_decay, device)
        x, y = batch_of(cfg, batch, seq, device)
        note = ", ".join(([f"FlexAttention in {step.flex_layers} sliding layers"] if step.flex_layers else [])
                         + (["the loss's rows compiled"] if step.loss_rows is not contextlib.nullcontext else []))
        return (lambda: step(opt, [(x, y)], tcfg.lr)), (lambda: step.read().loss), note
    return build


def transformers_side(path, cfg, tcfg, device, amp, seq):
    def build(batch):
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).train()
        opt = adamw(model, tcfg.lr, (tcfg.beta1, tcfg.beta2), tcfg.weight_decay, device)
        x, y = batch_of(cfg, batch, seq, device)
        last = [None]

        def step():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = model(x).logits
                loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1))  # as labels= computes it
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            last[0] = loss.detach()
        return step, (lambda: last[0].item()), f"attention: {model.config._attn_implementation}"
    return build


def batch_of(cfg, batch, seq, device):
    g = torch.Generator().manual_seed(batch)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq + 1), generator=g)
    return ids[:, :-1].contiguous().to(device), ids[:, 1:].contiguous().to(device)


def is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def free(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def warm_up(side: Side, batch: int, device: torch.device, warm: int):
    """Build the side at `batch` (halving it on out-of-memory, on a GPU), take its warm-up steps."""
    retried = False
    while batch >= 1:
        try:
            step, read, note = side.build(batch)
            t0 = time.perf_counter()
            step()
            side.first_loss = read()
            side.first_s = time.perf_counter() - t0
            for _ in range(warm - 1):
                step()
            read()
            side.batch, side.step, side.read = batch, step, read
            print(f"  {side.name}: batch {batch}{', ' + note if note else ''}; first step {side.first_s:.1f} s, "
                  f"loss {side.first_loss:.4f}", flush=True)
            return
        except Exception as e:  # noqa: BLE001 (a side that cannot run is reported, the others go on)
            oom = device.type == "cuda" and is_oom(e)
            error = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        step = read = None  # out of the except block: the failed step's frames, and their memory, are gone
        free(device)
        if not oom:
            side.error = error
            print(f"  {side.name}: could not run ({error})", flush=True)
            return
        if not retried:  # memory the other sides left cached, perhaps: once more, emptied
            retried = True
            continue
        print(f"  {side.name}: batch {batch} ran out of GPU memory; halving it to {batch // 2}", flush=True)
        batch //= 2
    side.error = "out of GPU memory even at batch 1"


def timed_block(side: Side, steps: int, seq: int, device: torch.device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        resident = torch.cuda.memory_allocated(device)  # every side's weights and optimizer state
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        side.step()
    side.read()  # waits for the last step
    sync(device)
    side.times.append(side.batch * seq * steps / (time.perf_counter() - t0))
    if device.type == "cuda":
        side.memory = torch.cuda.max_memory_allocated(device) - resident  # what its step adds at its peak


def profile_step(side: Side, device: torch.device, top: int = 10):
    """Where one step of the side goes: its GPU kernels (on a CPU, its operators) with the most time, as shares of
    the step's total, so a figure short of its target says what to work on."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    sync(device)
    try:
        with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
            side.step()
            side.read()
            sync(device)
    except Exception as e:  # noqa: BLE001 (a profiler that cannot run here costs its lines, not the figures after)
        print(f"  {side.name}: not profiled ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})")
        return
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)
    total = sum(getattr(e, key) for e in events) or 1
    print(f"  {side.name}: one step, {total / 1e3:.1f} ms of {'GPU kernels' if cuda else 'operators'}; the largest:")
    for e in events[:top]:
        print(f"    {getattr(e, key) / total:6.1%} {getattr(e, key) / 1e3:9.2f} ms  x{e.count:<5} {e.key[:100]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--preset", default="270m")
    ap.add_argument("--batch", type=int, default=None, help="default: 32 on a GPU, 4 on the CPU")
    ap.add_argument("--seq", type=int, default=None, help="default: 2048 on a GPU, 256 on the CPU")
    ap.add_argument("--dtype", nargs="+", default=None, choices=list(DTYPES),
                    help="default: bf16 on a GPU (autocast, fp32 master weights), fp32 and bf16 on the CPU")
    ap.add_argument("--steps", type=int, default=None, help="timed steps a block (default 5, 3 with --quick)")
    ap.add_argument("--rounds", type=int, default=None, help="timed blocks a side (default 3, 2 with --quick)")
    ap.add_argument("--quick", action="store_true", help="fewer steps (an estimated 3 minutes on an H100, not yet timed)")
    ap.add_argument("--no-compile", action="store_true", help="leave out the compiled side")
    ap.add_argument("--no-transformers", action="store_true", help="leave out transformers' side")
    ap.add_argument("--profile", action="store_true", help="after timing, where one step of each side goes")
    args = ap.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    batch = args.batch or (32 if cuda else 4)
    seq = args.seq or (2048 if cuda else 256)
    dtypes = args.dtype or (["bf16"] if cuda else ["fp32", "bf16"])
    steps = args.steps or (3 if args.quick else 5)
    rounds = args.rounds or (2 if args.quick else 3)
    warm = 2

    print(f"allocator keeps freed memory: {keep_freed_memory()} (for every side)")
    torch.manual_seed(0)
    cfg = gemma3.Gemma3Config.from_preset(args.preset)
    tcfg = TrainConfig.for_preset(args.preset)
    master = gemma3.Gemma3(cfg)
    with torch.no_grad():  # non-zero norm weights, as after training
        for name, p in master.named_parameters():
            if "norm" in name:
                p.normal_(0, 0.1)
    tmp = tempfile.TemporaryDirectory()
    if not args.no_transformers:
        gemma3.export_hf(master, gemma3.gpt2_tokenizer(), tmp.name)
    where = (f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}" if cuda
             else f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{args.preset}: {master.num_params() / 1e6:.1f}M parameters, batch {batch} x {seq}, {where}; "
          f"AdamW lr {tcfg.lr:g}, clip {tcfg.grad_clip}; {warm} warm-up steps, then {rounds} blocks of {steps} steps "
          f"a side", flush=True)

    fpt = flops_per_token(cfg, seq)
    n = matmul_params(cfg)
    print(f"MFU = flops_per_token x tokens/s / peak, flops_per_token = 6 N + 12 x heads x head_dim x keys "
          f"= 6 x {n:,} + 12 x {cfg.heads} x {cfg.head_dim} x {attended_keys(cfg, seq):,.0f} = {fpt / 1e9:.4f} GFLOP "
          f"(N: the weights a token is multiplied by, q k v o gate up down in {cfg.layers} layers and the "
          f"{cfg.vocab_size:,} x {cfg.hidden} head; keys: those a query attends, summed over the layers: T/2 "
          f"in full layers, W - W^2/2T in sliding ones beyond their window W = {cfg.window})")
    peaks = {d: matmul_peak(DTYPES[d], device) for d in dict.fromkeys(["bf16", *dtypes])}
    print("matmul peak measured here: " + ", ".join(f"{d} {p / 1e12:.1f} TFLOP/s" for d, p in peaks.items()))
    name = torch.cuda.get_device_name(device) if cuda else ""
    sheet = next((tflops * 1e12 for key, tflops in GPU_PEAK_TFLOPS.items() if key in name), None)
    if sheet:
        print(f"datasheet dense bf16 peak of this GPU: {sheet / 1e12:.0f} TFLOP/s")

    rows = []
    for dtype in dtypes:
        amp = dtype == "bf16"
        print(f"\n{dtype}{' autocast (fp32 master weights)' if amp else ''}:", flush=True)
        # the compiled side last (a cold compile is the slowest part), and each side's first block timed as soon
        # as it is warm, its figure printed: a run cut short by a time limit keeps what it measured
        sides = [Side("ours", ours(master, cfg, tcfg, device, amp, seq, compile=False))]
        if not args.no_transformers:
            sides.append(Side("transformers", transformers_side(tmp.name, cfg, tcfg, device, amp, seq)))
        if not args.no_compile:
            sides.append(Side("ours compiled", ours(master, cfg, tcfg, device, amp, seq, compile=True)))
        for side in sides:
            warm_up(side, batch, device, warm)
            if side.error is None:
                timed_block(side, steps, seq, device)
                print(f"    first block: {side.times[0]:,.0f} tok/s, MFU {fpt * side.times[0] / peaks['bf16']:.1%}",
                      flush=True)
        running = [s for s in sides if s.error is None]
        for _ in range(rounds - 1):  # the other blocks, one per side in turn
            for side in running:
                timed_block(side, steps, seq, device)
        tps = {s.name: statistics.median(s.times) for s in running}
        base = tps.get("transformers")
        for s in sides:
            if s.error:
                print(f"  {s.name}: not measured ({s.error})")
                continue
            ratio = f", {tps[s.name] / base:.2f}x transformers eager" if base else ""
            mfu = f"MFU {fpt * tps[s.name] / peaks['bf16']:.1%} of the measured bf16 peak"
            if sheet:
                mfu += f", {fpt * tps[s.name] / sheet:.1%} of the datasheet's"
            mem = f", its step's peak memory {s.memory / 2 ** 30:.1f} GiB (beyond the weights and AdamW state)" \
                if s.memory else ""
            print(f"  {s.name}: {tps[s.name]:,.0f} tok/s (batch {s.batch}){ratio}; {mfu}{mem}", flush=True)
        for side in running if args.profile else []:
            profile_step(side, device)
        for side in running:  # their steps, and with them their models and memory, go; their figures stay
            side.step = side.read = None
        free(device)
        ceiling = step_ceiling(cfg, batch, seq, DTYPES[dtype], device)
        ceiling_tps = batch * seq / ceiling["seconds"]
        print(f"  ceiling: {ceiling_tps:,.0f} tok/s, MFU {fpt * ceiling_tps / peaks['bf16']:.1%} of the measured peak"
              + (f", {fpt * ceiling_tps / sheet:.1%} of the datasheet's" if sheet else "")
              + f": the step's matrix products at their shapes ({ceiling['matmul_s'] * 1e3:.1f} ms) and its attention "
              f"at {ceiling['attention_tflops']:.3g} TFLOP/s, the causal SDPA kernel's rate here "
              f"({ceiling['attention_s'] * 1e3:.1f} ms), timed alone in {dtype}")
        if tps and ceiling_tps < max(tps.values()):
            print("  (the ceiling came out below a measured step: the machine was busier while it was timed than "
                  "during the steps; run again on an idle machine for a ceiling to compare with)")
        rows.append((dtype, tps, {s.name: s for s in sides}, ceiling_tps))
        del sides, running
        free(device)

    names = ["transformers", "ours", "ours compiled"]
    print(f"\n| training step ({args.preset}, {batch} x {seq}, AdamW), {'GPU' if cuda else 'CPU'} | "
          + " | ".join(f"{n} tok/s" for n in names) + " | ours / transformers | compiled / transformers "
          "| MFU ours / compiled / transformers | ceiling tok/s (MFU) |")
    print("|---|" + "---|" * (len(names) + 4))
    for dtype, tps, sides, ceiling_tps in rows:
        def cell(n, tps=tps, sides=sides):
            if n not in tps:
                return "-"
            return f"{tps[n]:,.0f}" + (f" (batch {sides[n].batch})" if sides[n].batch != batch else "")

        def ratio(n, tps=tps):
            return f"{tps[n] / tps['transformers']:.2f}x" if n in tps and "transformers" in tps else "-"
        mfu = " / ".join(f"{fpt * tps[n] / peaks['bf16']:.1%}" if n in tps else "-"
                         for n in ("ours", "ours compiled", "transformers"))
        print(f"| {'bf16 autocast' if dtype == 'bf16' else dtype} | " + " | ".join(cell(n) for n in names)
              + f" | {ratio('ours')} | {ratio('ours compiled')} | {mfu} | {ceiling_tps:,.0f} "
              f"({fpt * ceiling_tps / peaks['bf16']:.1%}) |")
    print(f"(MFU against the bf16 matmul peak measured above: {peaks['bf16'] / 1e12:.1f} TFLOP/s"
          + (f"; datasheet {sheet / 1e12:.0f} TFLOP/s" if sheet else "") + ")")
    tmp.cleanup()


if __name__ == "__main__":
    main()
