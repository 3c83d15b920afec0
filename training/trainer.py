"""The training loop: one process, or one per GPU under torchrun (DDP).

A run folder holds everything about a run:
    config.json        the TrainConfig
    metrics.jsonl      one line per logged step ({"kind": "train", ...}) and per eval ({"kind": "eval", ...})
    status.json        {"state": starting|running|stopped|finished|failed, "reason": ..., "step": ...}
    checkpoints/step_NNNNNNN/   model (our format, loadable by gemma3.load_model) + trainer.pt
                       + complete.json (written last: the files and their sizes)
    best/              the model with the lowest validation loss so far
    snapshots/step_NNNNNNN/   light bf16 model-only snapshots for watching the run learn (snapshots.py)
    STOP               created by anyone who wants the run to save and stop
    trackers.json, tensorboard/, wandb/   with --tracker: the experiment trackers' ids and files (trackers.py)
    .lock              held by every process of the run while it lives (status.py); says which trainer holds
                       the run folder itself: one trainer at a time (claim)
Only rank 0 writes. A run resumed from its last checkpoint logs exactly the losses it would
have logged without the interruption (the data is a pure function of the step).

A kill at any moment leaves a run that resumes: a checkpoint is written in a temporary folder and
renamed into place (atomic_dir_write), an old one is renamed out of the set before it is deleted
(discard), only complete checkpoints count (checkpoints), and what an interrupted write or deletion
left behind (.step_N.*, .best.*, half a metrics line) is removed when a run starts and when it ends
(clean). A run killed before its first complete checkpoint resumes from step 0.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import signal
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

import gemma3
from gemma3.io.checkpoints import write_model_files
from gemma3.io.files import atomic_dir_write, atomic_write_text, check_no_file_above

from . import snapshots, trackers
from .config import TrainConfig
from .data import Batches, eval_windows, load_split, read_meta
from .pace import Pace
from .status import LOCK, fcntl, hold, read_status, write_status
from .step import TrainStep, adamw

# Dense bf16 tensor-core peaks (TFLOP/s) for MFU; other devices are measured at start.
GPU_PEAK_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.0, "A100": 312.0,
                   "L40S": 362.0, "A10G": 125.0, "L4": 121.0, "RTX 4090": 165.0, "RTX 3090": 71.0, "T4": 65.0}


DENSE_LOG_STEPS = 10  # every one of the first steps is logged, so a curve shows from the first seconds
QUICK_WINDOWS = 8     # step 0's evaluation: this many validation windows, so its loss and sample show within
                      # seconds of the start (the full evaluation, eval_windows, comes at the eval interval)


class StopRun(Exception):
    """The run must end now with the given state ("failed" or "stopped") and reason."""

    def __init__(self, state: str, reason: str):
        super().__init__(reason)
        self.state, self.reason = state, reason


# ---- small helpers -------------------------------------------------------------------------------

def text_bytes(tokenizer, ids: list[int]) -> int:
    """UTF-8 bytes the ids stand for, counting an end-of-text separator as one byte (as prepare does)."""
    eot = tokenizer.eot_id
    return len(tokenizer.decode_bytes([i for i in ids if i != eot])) + sum(i == eot for i in ids)


def device_name(device: torch.device) -> str:
    """The device in words, as a model card states it: "NVIDIA H200", "2-core CPU"."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{os.cpu_count()}-core CPU" if device.type == "cpu" else device.type


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to lr, then cosine decay to min_lr at max_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * min(1.0, progress))) * (cfg.lr - cfg.min_lr)


def matmul_params(mcfg: gemma3.Gemma3Config) -> int:
    """N of MFU's 6N: the weights a token is multiplied by: q, k, v, o, gate, up and down in every layer, and the
    head (the embedding's matrix when tied: its lookup multiplies nothing); not the norms' vectors."""
    per_layer = mcfg.hidden * (2 * mcfg.heads + 2 * mcfg.kv_heads) * mcfg.head_dim + 3 * mcfg.hidden * mcfg.ffn
    return mcfg.layers * per_layer + mcfg.vocab_size * mcfg.hidden


def attended_keys(mcfg: gemma3.Gemma3Config, seq_len: int) -> float:
    """Keys a query attends, on average over a sequence, summed over the layers: T/2 in a full layer (causal),
    and in a sliding layer of window W as many up to T = W, then W - W^2 / 2T (the first W queries see their
    prefix, every later one W keys)."""
    T, W = seq_len, mcfg.window
    sliding = T / 2 if T <= W else W - W * W / (2 * T)
    return sum(sliding if t == "sliding" else T / 2 for t in mcfg.layer_types)


def flops_per_token(mcfg: gemma3.Gemma3Config, seq_len: int) -> float:
    """Training FLOPs per token, for MFU: 6N (a multiply-add per weight, forward, and twice that backward) plus
    attention's two products, q k^T and p v, 2 x head_dim FLOPs per key each, forward and twice backward:
    12 x heads x head_dim x the keys attended (attended_keys)."""
    return 6 * matmul_params(mcfg) + 12 * mcfg.heads * mcfg.head_dim * attended_keys(mcfg, seq_len)


def peak_flops(device: torch.device, dtype: torch.dtype, given_tflops: float | None) -> float:
    if given_tflops:
        return given_tflops * 1e12
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, tflops in GPU_PEAK_TFLOPS.items():
            if key in name:
                return tflops * 1e12
    # otherwise measure a square matmul, the best case here: the fastest of 20 (on a shared machine a mean counts
    # whatever else ran meanwhile, and MFU then passes 100%)
    n = 1024 if device.type == "cuda" else 512
    own = torch.Generator(device).manual_seed(0)  # not the run's RNG
    a = torch.randn(n, n, device=device, generator=own).to(dtype)
    for _ in range(3):
        a @ a
    best = float("inf")
    for _ in range(20):
        t0 = time.perf_counter()
        a @ a
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def rng_state() -> dict:
    """Torch's generators (the data itself is a pure function of the step, numpy/random are unused)."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict):
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


COMPLETE = "complete.json"                                  # a step checkpoint's last file
LEGACY_FILES = ("config.json", "model.safetensors", "trainer.pt")  # checkpoints written before complete.json
TEMP_FILE = re.compile(r"\..+\.tmp(\d+)\.\d+")               # atomic_write_text's temporary files


def is_complete(folder: Path) -> bool:
    """Does the step checkpoint `folder` hold every file it was written with, at its full size?

    complete.json, written last, lists them; a checkpoint from before it existed counts when its three
    files are there (its folder was renamed into place whole; only a deletion could have broken it)."""
    folder = Path(folder)
    try:
        files = json.loads((folder / COMPLETE).read_text())["files"]
    except FileNotFoundError:
        return folder.is_dir() and all((folder / f).is_file() for f in LEGACY_FILES)
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if not isinstance(files, dict) or not files:
        return False
    try:
        return all(isinstance(name, str) and "/" not in name and name not in ("", ".", "..")
                   and (folder / name).stat().st_size == size for name, size in files.items())
    except OSError:
        return False


def checkpoints(run: Path) -> list[Path]:
    """Complete step checkpoints of a run, oldest first (a folder being written or deleted is not one)."""
    folder = Path(run) / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name.startswith("step_") and is_complete(p))


def discard(folder: Path):
    """Delete a folder so that it never exists half-deleted under its own name: rename it out of the set
    (atomic), then delete it. A kill in between leaves a dot-folder that clean() removes."""
    folder = Path(folder)
    trash = folder.with_name(f".{folder.name}.deleting.{os.getpid()}.{time.monotonic_ns()}")
    try:
        os.rename(folder, trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # someone else's process: alive
        return False
    return False


def clean(run: Path) -> list[str]:
    """Remove what interrupted writes and deletions left in a run folder; returns what it removed.

    - checkpoints/.step_N.*: a checkpoint being written (atomic_dir_write's temporary folder), being
      deleted (discard), or the previous copy of one being replaced (.step_N.old: put back if its
      checkpoint is missing, as atomic_dir_write would have);
    - checkpoints/step_N that are not complete (left by versions that deleted in place);
    - the same in snapshots/ (a snapshot is complete once its snapshot.json is written);
    - .best.*: best/ being written, or its previous copy (.best.old: put back if best/ is missing);
    - .NAME.tmpPID.TID files of atomic_write_text whose process is gone;
    - a last metrics.jsonl line without its newline (the next record would be glued to it).
    Call it while no process of the run writes (when a run starts or ends)."""
    run = Path(run)
    removed = []
    for kind, complete in (("checkpoints", is_complete), ("snapshots", lambda p: (p / snapshots.INFO).is_file())):
        folder = run / kind
        for p in sorted(folder.iterdir()) if folder.is_dir() else []:
            if p.name.startswith(".step_") and p.name.endswith(".old") and p.is_dir():
                original = p.with_name(p.name[1:-len(".old")])
                if not original.exists() and complete(p):
                    with contextlib.suppress(OSError):
                        os.rename(p, original)
                        continue
            if p.name.startswith("."):  # out of the set already: delete in place
                removed.append(f"{kind}/{p.name}")
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
            elif p.name.startswith("step_") and p.is_dir() and not complete(p):
                removed.append(f"{kind}/{p.name}")
                discard(p)
    best, old_best = run / "best", run / ".best.old"
    if old_best.is_dir() and not best.exists() and (old_best / "model.safetensors").is_file() \
            and (old_best / "config.json").is_file():
        with contextlib.suppress(OSError):
            os.rename(old_best, best)
    for p in sorted(run.iterdir()) if run.is_dir() else []:
        temp = TEMP_FILE.fullmatch(p.name)
        if p.name.startswith(".best.") and p.is_dir():
            removed.append(p.name)
            shutil.rmtree(p, ignore_errors=True)
        elif temp and p.is_file() and _process_gone(int(temp.group(1))):
            removed.append(p.name)
            p.unlink(missing_ok=True)
    if _drop_partial_line(run / "metrics.jsonl"):
        removed.append("half a line of metrics.jsonl")
    return removed


def _drop_partial_line(path: Path) -> bool:
    """Cut a last line that lacks its newline (a kill mid-append); True if there was one."""
    try:
        with open(path, "rb+") as f:
            end = f.seek(0, os.SEEK_END)
            pos = end
            while pos > 0:
                step = min(pos, 1 << 16)
                f.seek(pos - step)
                block = f.read(step)
                if pos == end and block.endswith(b"\n"):
                    return False
                cut = block.rfind(b"\n")
                if cut >= 0:
                    f.truncate(pos - step + cut + 1)
                    return True
                pos -= step
            if end:
                f.truncate(0)
            return end > 0
    except FileNotFoundError:
        return False


# ---- one trainer per run folder ------------------------------------------------------------------

LAUNCH_FILES = {"config.json", "status.json", "launch.json", "train.log"}  # what runs.start writes before the trainer
RUN_FILES = {"status.json", "metrics.jsonl", "checkpoints", "best", "snapshots"}  # a run has begun here


class RunRefused(ValueError):
    """This trainer may not train into the run folder now; nothing in it was touched."""


def claim(run: Path, resume: bool, max_steps: int):
    """Take the run folder for this trainer (rank 0) for as long as it lives, or refuse in one sentence
    (RunRefused, nothing touched): a file at or above it, a folder another trainer holds, one that holds
    a run (unless resume, or it is a run the run manager prepared and launched) or other files, a
    finished run resumed without more steps.

    Returns (the lock's descriptor, `undo`): undo removes what a start made in a folder that held nothing
    (None for one that held a run), so that a failed start leaves no half-made run folder. The lock is an
    exclusive flock on the folder itself, dropped by the OS when the process dies however it dies; RUN/.lock
    names its holder (pid, start) for the next trainer's refusal."""
    check_no_file_above(run)
    if os.path.lexists(run) and not run.is_dir():
        raise RunRefused(f"{run} is a file; choose a folder for --out.")
    existed = run.exists()
    run.mkdir(parents=True, exist_ok=True)
    fd = _lock(run)
    try:
        before = {p.name for p in run.iterdir()}
        held, state = before - {LOCK}, read_status(run).get("state")
        launched = held <= LAUNCH_FILES and "launch.json" in held and state == "starting"
        if held and not resume and not launched:
            if held & RUN_FILES:
                raise RunRefused(f"{run} already holds a training run; continue it with --resume, "
                                 "or choose a new --out.")
            raise RunRefused(f"{run} already holds other files; choose a new or empty folder for --out.")
        found = checkpoints(run)
        done = int(found[-1].name.split("_")[1]) if found else 0
        if resume and state == "finished" and max_steps <= done:
            raise RunRefused(f"Run {run.name} already finished at step {done}; resume it with a larger --max-steps "
                             "to train it further.")
        with open(run / LOCK, "a") as f:  # the lock file itself stays: other processes hold flocks on it
            f.truncate(0)
            f.write(json.dumps({"pid": os.getpid(), "started": time.time()}))
    except BaseException:
        if fd is not None:
            os.close(fd)
        raise

    def undo():
        if not existed:
            shutil.rmtree(run, ignore_errors=True)
            return
        for p in run.iterdir():
            if p.name in before:
                continue
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
    return fd, None if held else undo


def _lock(run: Path) -> int | None:
    """An exclusive flock on the run folder, or RunRefused naming the trainer that holds it."""
    if fcntl is None:
        return None
    fd = os.open(run, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        try:
            info = json.loads((run / LOCK).read_text())
            started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["started"]))
            who = f"process {int(info['pid'])} (started {started})"
        except (OSError, ValueError, KeyError, TypeError, OverflowError):
            who = "another process"
        raise RunRefused(f"{run} is being trained by {who}; wait for it to end, or stop it first "
                         f"(create {run / 'STOP'}).") from None
    return fd


# ---- the trainer ---------------------------------------------------------------------------------

class Trainer:
    def __init__(self, cfg: TrainConfig, resume: bool = False):
        self.cfg = cfg
        self.run = Path(cfg.out)
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.main = self.rank == 0
        self.device = self._pick_device()
        self.stop_requested: str | None = None
        self.trackers = None
        trackers.require(cfg.trackers)  # a missing package: one sentence before anything else

        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        if self.main:
            self.run.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.run / "config.json", json.dumps(cfg.to_dict(), indent=2))
            removed = clean(self.run)  # what a killed process left behind
            if removed:
                self.log(f"removed what an interrupted run left: {', '.join(removed)}")
        if self.world > 1:
            dist.barrier()  # no rank looks at the checkpoints while rank 0 cleans them

        meta = read_meta(cfg.data)
        self.tokenizer = gemma3.gpt2_tokenizer()
        if meta.get("tokenizer", "gpt2") != "gpt2":
            raise StopRun("failed", f"{cfg.data} was tokenised with {meta['tokenizer']}, not gpt2.")
        vocab = self.tokenizer.vocab_size  # load_split refuses a file holding ids beyond it (a corrupt file)
        self.train_batches = Batches(load_split(cfg.data, "train", vocab), cfg.batch_size, cfg.seq_len, cfg.seed,
                                     self.rank, self.world)
        self.val_x, self.val_y = eval_windows(load_split(cfg.data, "val", vocab), cfg.eval_windows, cfg.seq_len)
        self.val_bytes = [text_bytes(self.tokenizer, row.tolist()) for row in self.val_y]  # per window
        self.last_loss: float | None = None

        torch.manual_seed(cfg.seed)
        if cfg.init_from:
            self.model, _ = gemma3.load_model(cfg.init_from, device="cpu", dtype=torch.float32)
            self.model.train()
        else:
            self.model = gemma3.Gemma3(gemma3.Gemma3Config.from_preset(cfg.preset, **cfg.model))
        if self.model.config.vocab_size < self.tokenizer.vocab_size:
            raise StopRun("failed", f"The model's vocabulary ({self.model.config.vocab_size}) is smaller than "
                                    f"the data's tokenizer ({self.tokenizer.vocab_size}).")
        self.model.to(self.device)
        self.optimizer = None  # made by fit after step 0's evaluation (make_optimizer), or now to resume into
        self.peak = None       # the device's peak FLOP/s for MFU (measure_peak)

        self.step, self.tokens, self.elapsed, self.skipped = 0, 0, 0.0, 0
        self.pace = Pace()  # the ETA: smoothed step time and the pauses to come (pace.py)
        self.best_val = float("inf")
        if resume:
            self._load_latest()

        self.amp_dtype = self._amp_dtype()
        # the step (training/step.py): compiled with --compile, under DDP with several ranks; queued on the device
        self.stepper = TrainStep(self.model, grad_accum=cfg.grad_accum, grad_clip=cfg.grad_clip,
                                 amp_dtype=self.amp_dtype, compile=cfg.compile, seq_len=cfg.seq_len,
                                 world=self.world, device=self.device)
        self.fwd_model = self.stepper.fwd
        self.pending, self.pending_from = 0, 0  # steps taken since the device was last read (_settle), the first
        self.tally_seen = 0       # skipped steps the stepper's tally had counted at that reading
        self.tokens_per_step = cfg.batch_size * cfg.seq_len * cfg.grad_accum * self.world
        self.flops_per_step = flops_per_token(self.model.config, cfg.seq_len) * self.tokens_per_step
        if self.main and cfg.trackers:  # last: nothing after it can fail and leave a tracker open
            self.trackers = trackers.Trackers(cfg.trackers, self.run, cfg.to_dict(), resume, self.step)
        self.status("starting")

    # ---- setup ----
    def _pick_device(self) -> torch.device:
        want = self.cfg.device
        if want == "auto":
            want = "cuda" if torch.cuda.is_available() else "cpu"
        if want.startswith("cuda"):
            if not torch.cuda.is_available():
                raise StopRun("failed", "CUDA was asked for but no GPU is visible; use --device cpu.")
            if want == "cuda":
                want = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
            visible = torch.cuda.device_count()
            if torch.device(want).index >= visible:
                raise StopRun("failed", f"{want} was asked for but {visible} GPU{'s are' if visible > 1 else ' is'} "
                                        f"visible (cuda:0 to cuda:{visible - 1}).")
            torch.cuda.set_device(torch.device(want))
        return torch.device(want)

    def _amp_dtype(self):
        dtype = self.cfg.dtype
        if dtype == "auto":
            dtype = "bf16" if self.device.type == "cuda" else "fp32"
        return torch.bfloat16 if dtype == "bf16" else None

    def make_optimizer(self):
        """AdamW over the model (weight decay on matrices only), and the device's peak for MFU.

        Not in __init__ for a new run: torch.optim's first use imports torch._dynamo (seconds on a busy CPU),
        which would hold back step 0's loss and sample; nothing it does touches the model or the RNG."""
        if self.optimizer is not None:
            return
        cfg = self.cfg
        self.optimizer = adamw(self.model, cfg.lr, (cfg.beta1, cfg.beta2), cfg.weight_decay, self.device)
        self.measure_peak()

    def measure_peak(self):
        """The device's peak for MFU: the best a square matmul gave, when the optimizer is made and again at each
        evaluation (tens of ms on a CPU), so a rate measured while the machine was busy is not kept."""
        peak = peak_flops(self.device, self._amp_dtype() or torch.float32, self.cfg.peak_tflops) * self.world
        self.peak = max(self.peak or 0.0, peak)

    def _load_latest(self):
        found = checkpoints(self.run)
        if not found:  # e.g. killed while writing its first checkpoint: nothing was lost but the steps
            self.log(f"Nothing to resume: {self.run.name} has no complete checkpoint, so it starts from step 0.")
            return
        latest = found[-1]
        state = torch.load(latest / "trainer.pt", map_location="cpu", weights_only=True)
        model, _ = gemma3.load_model(latest, device=self.device, dtype=torch.float32)
        self.model.load_state_dict(model.state_dict())
        self.make_optimizer()
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.tokens, self.elapsed = state["step"], state["tokens"], state["elapsed"]
        self.skipped, self.best_val = state["skipped"], state["best_val"]
        set_rng_state(state["rng"])
        self.log(f"resumed from {latest} at step {self.step}")

    # ---- output (rank 0 only) ----
    def log(self, text: str):
        if self.main:
            print(text, flush=True)

    def metrics(self, record: dict):
        if self.main:
            with open(self.run / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            if self.trackers is not None:
                self.trackers.log(record)

    def status(self, state: str, reason: str | None = None):
        if self.main:
            write_status(self.run, state, reason, step=getattr(self, "step", 0), max_steps=self.cfg.max_steps,
                         best_val_loss=None if getattr(self, "best_val", math.inf) == math.inf else self.best_val,
                         pid=os.getpid(), world_size=self.world, device=device_name(self.device),
                         replicas_identical=getattr(self, "replicas_identical", None))

    def save(self):
        """A step checkpoint (atomic), then prune to the last `keep_last`."""
        self._settle()  # the skipped count it records
        if not self.main:
            return
        t0 = time.perf_counter()
        state = {"optimizer": self.optimizer.state_dict(), "step": self.step, "tokens": self.tokens,
                 "elapsed": self.elapsed, "skipped": self.skipped, "best_val": self.best_val, "rng": rng_state(),
                 "train_config": self.cfg.to_dict()}

        def write(tmp: Path):
            write_model_files(self.model, self.tokenizer, tmp)
            torch.save(state, tmp / "trainer.pt")
            files = {p.name: p.stat().st_size for p in tmp.iterdir()}
            (tmp / COMPLETE).write_text(json.dumps({"step": self.step, "files": files}))  # last: see is_complete

        path = atomic_dir_write(self.run / "checkpoints" / f"step_{self.step:07d}", write)
        for old in checkpoints(self.run)[:-self.cfg.keep_last]:
            discard(old)
        self.pace.pause("save", time.perf_counter() - t0)
        self.log(f"saved {path}")

    # ---- the loop ----
    def train_step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step (training/step.py), queued on the device: returns (mean loss over all ranks, gradient
        norm before clipping) as device tensors, without waiting for them; a non-finite step skips its update on
        the device. `_settle` reads them and applies the rules about skipped steps."""
        cfg = self.cfg
        batches = (self.train_batches.get(self.step, micro) for micro in range(cfg.grad_accum))
        return self.stepper(self.optimizer, batches, lr_at(self.step, cfg))

    def _settle(self) -> tuple[float, float] | None:
        """Read the device after the steps taken since the last reading (the one wait for it): the last step's
        loss and gradient norm, and the skipped steps, logged and counted; fail the run once max_bad_steps in a
        row were non-finite. Returns (loss, grad norm) of the last step, None if no step was taken since."""
        if not self.pending:
            return None
        n, self.pending = self.pending, 0
        r = self.stepper.read()
        self.last_loss = r.loss
        new, self.tally_seen = r.skipped - self.tally_seen, r.skipped
        if new:
            self.skipped += new
            first, last = self.pending_from, self.pending_from + n - 1  # the steps' indices, from 0
            if n == 1:
                self.log(f"step {last}: loss {r.loss} / grad norm {r.grad_norm} not finite, update skipped")
            else:
                self.log(f"steps {first}..{last}: {new} update{'s' if new > 1 else ''} skipped (a non-finite loss "
                         f"or gradient); step {last}: loss {r.loss} / grad norm {r.grad_norm}")
        if r.most_in_a_row >= self.cfg.max_bad_steps:
            raise StopRun("failed", f"{r.most_in_a_row} steps in a row had a non-finite loss or gradient; "
                                    "lower the learning rate or check the data.")
        return r.loss, r.grad_norm

    def _autocast(self):
        return self.stepper.autocast()

    @torch.no_grad()
    def evaluate(self, windows: int | None = None) -> dict:
        """Validation loss over the first `windows` validation windows (default: all, eval_windows), then a sample."""
        self.model.eval()
        t0 = time.perf_counter()
        n = len(self.val_x) if windows is None else max(1, min(windows, len(self.val_x)))
        total, count = 0.0, 0
        batch = self.cfg.batch_size
        for i in range(0, n, batch):
            x = self.val_x[i:min(i + batch, n)].to(self.device)
            y = self.val_y[i:min(i + batch, n)].to(self.device)
            with self._autocast():
                total += self.model(x, targets=y).item() * y.numel()
            count += y.numel()
        loss = total / count
        loss_s = time.perf_counter() - t0
        sample = gemma3.generate(self.model, self.tokenizer, self.cfg.sample_prompt,
                                 max_new_tokens=self.cfg.sample_tokens, temperature=0.7, top_k=50, seed=0)
        self.model.train()
        self.pace.evaluation(n, loss_s, time.perf_counter() - t0 - loss_s)
        return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50)),
                "val_bpb": total / math.log(2) / sum(self.val_bytes[:n]), "windows": n,
                **({"quick": True} if n < len(self.val_x) else {}), "sample": self.cfg.sample_prompt + sample}

    def _eval_and_keep_best(self, quick: bool = False) -> dict | None:
        """Evaluate (quick: on QUICK_WINDOWS windows, marked as such in its record) and keep the best model.

        Step 0's quick loss counts for best/ like any other: the untrained model's, which every later one beats."""
        result = None
        if self.main:
            result = self.evaluate(QUICK_WINDOWS if quick else None)
            self.metrics({"kind": "eval", "step": self.step, "tokens": self.tokens, **result, "time": time.time()})
            note = f" (quick: {result['windows']} windows)" if result.get("quick") else ""
            self.log(f"eval step {self.step}{note}: val loss {result['val_loss']:.4f}, ppl {result['val_ppl']:.2f}, "
                     f"bpb {result['val_bpb']:.3f} | {result['sample'][:200]!r}")
            if result["val_loss"] < self.best_val:
                self.best_val = result["val_loss"]
                gemma3.save_model(self.model, self.tokenizer, self.run / "best")
        if self.world > 1:
            dist.barrier()
        return result

    @torch.no_grad()
    def snapshot(self, evaluation: dict | None):
        """Snapshot the model at this step (training/snapshots.py), then prune to the budget."""
        if not self.main or not self.cfg.snapshot_mb:
            return
        t0 = time.perf_counter()
        state = snapshots.stored_state(self.model)
        x, y = self.val_x[:self.cfg.batch_size].to(self.device), self.val_y[:self.cfg.batch_size].to(self.device)
        weights = {k: v.to(self.device, torch.float32) for k, v in state.items()}
        batch_loss = torch.func.functional_call(self.model, weights, (x,), {"targets": y}).item()
        del weights
        snapshots.write(self.run, self.model.config, state, self.tokenizer, {
            "step": self.step, "tokens": self.tokens, "train_loss": self.last_loss,
            "val_loss": evaluation["val_loss"] if evaluation else None, "batch_loss": batch_loss,
            "elapsed_s": self.elapsed, "time": time.time()})
        snapshots.prune(self.run, self.cfg.snapshot_mb * 2 ** 20, discard)
        self.pace.pause("snapshot", time.perf_counter() - t0)

    def _stop_now(self) -> bool:
        flag = torch.tensor(float(self.stop_requested is not None or (self.run / "STOP").exists()))
        if self.world > 1:
            flag = flag.to(self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def fit(self):
        cfg = self.cfg
        self.model.train()
        self.status("running")
        self.log(f"training {self.model.num_params() / 1e6:.1f}M parameters on {self.device} x{self.world}, "
                 f"{self.tokens_per_step} tokens/step, steps {self.step}..{cfg.max_steps}")
        if self.step == 0:  # the curve starts at the initial loss (quick), and the snapshots at the initialisation
            evaluation = self._eval_and_keep_best(quick=True)
            self.make_optimizer()
            self.snapshot(evaluation)
        self.make_optimizer()
        window_s, window_steps = 0.0, 0  # the steps' own time since the last log: evaluations, snapshots and saves
        first = True                     # between them are not training (the pace counts them apart)
        timed_s, timed_steps = 0.0, 0  # the steps since the last reading, for the pace
        while self.step < cfg.max_steps:
            t0 = time.perf_counter()
            if not self.pending:
                self.pending_from = self.step
            self.train_step()  # queued: on a GPU the host runs ahead until the next reading
            self.pending += 1
            done = self.step + 1
            logged = done <= DENSE_LOG_STEPS or done % cfg.log_every == 0 or done == cfg.max_steps
            evaluated = done % cfg.eval_every == 0 or done == cfg.max_steps
            shot = snapshots.wanted(done, evaluated)
            saved = done % cfg.ckpt_every == 0 or done == cfg.max_steps
            read = first or logged or evaluated or shot or saved
            if read:  # a process's first step is read too: it pays for allocations, first kernels, compiling
                loss, grad_norm = self._settle()
            dt = time.perf_counter() - t0
            self.step = done
            self.tokens += self.tokens_per_step
            self.elapsed += dt
            window_s, window_steps = window_s + dt, window_steps + 1
            timed_s, timed_steps = timed_s + dt, timed_steps + 1
            if read:
                if not first:  # each step since the last reading at their mean (a GPU's steps overlap on the host)
                    for _ in range(timed_steps):
                        self.pace.step(timed_s / timed_steps)
                timed_s, timed_steps = 0.0, 0
            first = False
            if logged:
                tps = window_steps * self.tokens_per_step / window_s
                eta = self.pace.eta(cfg, self.step)
                self.metrics({"kind": "train", "step": self.step, "tokens": self.tokens, "loss": loss,
                              "lr": lr_at(self.step - 1, cfg), "grad_norm": grad_norm, "tokens_per_s": tps,
                              "mfu": self.flops_per_step / self.tokens_per_step * tps / self.peak,
                              "elapsed_s": self.elapsed, "step_s": window_s / window_steps,  # tps's steps
                              **({"eta_s": eta[0], "eta_low_s": eta[1], "eta_high_s": eta[2]} if eta else {}),
                              "skipped": self.skipped, "time": time.time()})
                self.log(f"step {self.step}/{cfg.max_steps} | loss {loss:.4f} | lr {lr_at(self.step - 1, cfg):.2e} "
                         f"| grad norm {grad_norm:.2f} | {tps:,.0f} tok/s")
                self.status("running")
                window_s, window_steps = 0.0, 0
            evaluation = self._eval_and_keep_best() if evaluated else None
            if evaluated:
                self.measure_peak()
            if shot:
                self.snapshot(evaluation)
            if saved:
                self.save()
            # several ranks agree on a stop at the steps they read (a collective waits for the device)
            if self.step < cfg.max_steps and (self.world == 1 or read) and self._stop_now():
                if self.step % cfg.ckpt_every:
                    self.save()
                if self.main:
                    (self.run / "STOP").unlink(missing_ok=True)  # consumed: a resume must not stop at once
                raise StopRun("stopped", self.stop_requested or "stop requested (STOP file)")
        if self.world > 1:
            self.check_replicas()
        self.status("finished", f"reached {cfg.max_steps} steps")
        best = self.run / "best"
        self.log(f"finished: {cfg.max_steps} steps in {self.elapsed:.0f} s of training" + (
            f"; the best val loss, {self.best_val:.4f}, is the model in {best}.\n"
            f"Write with it: python -m gemma3 generate --model {best}\n"
            f"Export it with a model card: python -m training export --run {self.run} --checkpoint best --out DIR"
            if math.isfinite(self.best_val) and best.is_dir() else "."))

    def check_replicas(self):
        """DDP keeps one model on every rank; say so in status.json, or fail loudly if they drifted."""
        flat = torch.cat([p.detach().float().reshape(-1) for p in self.model.parameters()])
        gathered = [torch.empty_like(flat) for _ in range(self.world)]
        dist.all_gather(gathered, flat)
        self.replicas_identical = all(torch.equal(gathered[0], g) for g in gathered[1:])
        del gathered, flat
        # gloo's worker thread drops the all_gather's tensors after the call returns, and needs the GIL
        # for it: were the process group torn down at exit meanwhile (its destructor joins that thread
        # while holding the GIL), the process would hang. A barrier runs on the same thread, after it.
        dist.barrier()
        if not self.replicas_identical:
            raise StopRun("failed", "The model replicas on the different ranks have drifted apart.")


def train(cfg: TrainConfig, resume: bool = False) -> int:
    """Run training to the end (or a stop); returns a process exit code and leaves status.json.

    A run folder this trainer may not use now is refused before anything is touched (claim raises
    RunRefused); a run that fails as it starts in a folder that held nothing leaves nothing behind."""
    rank0 = int(os.environ.get("RANK", "0")) == 0
    exclusive, undo = claim(Path(cfg.out), resume, cfg.max_steps) if rank0 else (None, None)
    trainer = None
    ended = "failed"  # how the run ended, for the trackers
    previous = {}
    early_stop = None

    def request_stop(signum, frame):
        nonlocal early_stop
        early_stop = f"stopped by signal {signal.Signals(signum).name}"
        if trainer is not None:
            trainer.stop_requested = early_stop

    def finish(state: str, reason: str):  # status.json's last word on this run
        if trainer is not None:
            trainer.status(state, reason)
        elif undo is not None:
            undo()  # a start that failed in a folder that held nothing: no half-made run folder
        else:
            _write_failure(cfg, state, reason)

    for sig in (signal.SIGTERM, signal.SIGINT):
        previous[sig] = signal.signal(sig, request_stop)
    lock = None
    try:
        Path(cfg.out).mkdir(parents=True, exist_ok=True)  # by rank 0's claim already
        lock = hold(cfg.out)  # the run is alive while any of its processes holds this (status.py)
        trainer = Trainer(cfg, resume)
        trainer.stop_requested = early_stop  # a signal during start-up still counts
        trainer.fit()
        ended = "finished"
        return 0
    except StopRun as e:
        ended = e.state
        finish(e.state, e.reason)
        if rank0:
            print(f"{e.state}: {e.reason}", file=sys.stdout if e.state == "stopped" else sys.stderr, flush=True)
        return 0 if e.state == "stopped" else 1
    except torch.cuda.OutOfMemoryError:
        reason = (f"Out of GPU memory with micro-batch {cfg.batch_size} x {cfg.seq_len}: use a smaller --batch-size "
                  f"with a larger --grad-accum (same tokens per step), or a shorter --seq-len.")
        finish("failed", reason)
        print(f"failed: {reason}", file=sys.stderr, flush=True)
        return 1
    except (ValueError, OSError) as e:  # bad data or settings, a full disk, ...
        finish("failed", str(e))
        print(f"failed: {e}", file=sys.stderr, flush=True)
        return 1
    except BaseException as e:
        finish("failed", f"{e.__class__.__name__}: {e}")
        raise
    finally:
        if trainer is not None and trainer.trackers is not None:
            trainer.trackers.close(ok=ended != "failed")
        if rank0:
            try:
                clean(Path(cfg.out))  # temporary folders of writes this process (or a killed one) began
            except OSError:
                pass
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if dist.is_initialized():
            dist.destroy_process_group()
        for fd in (lock, exclusive):
            if fd is not None:
                os.close(fd)


def _write_failure(cfg: TrainConfig, state: str, reason: str):
    """The end of a run whose Trainer never came to be (the step and best loss stay as they were)."""
    if int(os.environ.get("RANK", "0")) == 0:
        step = read_status(cfg.out).get("step", 0)
        write_status(cfg.out, state, reason, step=step, max_steps=cfg.max_steps, pid=os.getpid())
