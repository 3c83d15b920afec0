"""TrainConfig: every hyperparameter of a run, with defaults per model preset."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass
class TrainConfig:
    data: str = "data/builtin"        # folder written by `python -m training prepare`
    out: str = "runs/run"             # run folder: checkpoints, metrics.jsonl, status.json
    preset: str = "270m"              # gemma3 model preset
    model: dict = field(default_factory=dict)  # overrides of the preset's Gemma3Config fields
    init_from: str | None = None      # start from these weights (any gemma3.load_model source)

    batch_size: int = 32              # sequences per micro-batch per process
    grad_accum: int = 4               # micro-batches per optimizer step
    seq_len: int = 512
    max_steps: int = 13_000           # optimizer steps
    lr: float = 1e-4
    min_lr: float = 1e-5
    warmup_steps: int = 1000
    weight_decay: float = 0.1         # on matrices only
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 0.5
    seed: int = 1337

    eval_every: int = 500
    eval_windows: int = 200           # fixed validation windows of seq_len tokens
    sample_prompt: str = "Once upon a time"
    sample_tokens: int = 80
    log_every: int = 10
    ckpt_every: int = 1000
    keep_last: int = 2                # step checkpoints kept besides best/
    max_bad_steps: int = 10           # consecutive non-finite steps before the run gives up

    device: str = "auto"              # auto, cuda, cpu
    dtype: str = "auto"               # auto (bf16 autocast on CUDA, fp32 on CPU), bf16, fp32
    compile: bool = False             # torch.compile the model
    peak_tflops: float | None = None  # for MFU; default: known GPU peak, or a matmul measured at start

    def __post_init__(self):
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr ({self.min_lr}) must not exceed lr ({self.lr}).")
        for name in ("batch_size", "grad_accum", "seq_len", "max_steps", "eval_every", "eval_windows",
                     "log_every", "ckpt_every", "keep_last", "max_bad_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}.")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must not be negative, not {self.warmup_steps}.")
        if self.device not in ("auto", "cuda", "cpu") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be auto, cuda or cpu, not {self.device!r}.")
        if self.dtype not in ("auto", "bf16", "fp32"):
            raise ValueError(f"dtype must be auto, bf16 or fp32, not {self.dtype!r}.")

    @classmethod
    def for_preset(cls, preset: str, **overrides) -> "TrainConfig":
        """The preset's defaults (TRAIN_PRESETS) under the explicit overrides."""
        return cls(**{"preset": preset, **TRAIN_PRESETS.get(preset, {}), **overrides})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# The 270m defaults are the reference TinyStories run (TrainConfig's own defaults);
# the small presets train in minutes on a CPU.
TRAIN_PRESETS: dict[str, dict] = {
    "270m": {},
    "tiny": dict(batch_size=16, grad_accum=1, seq_len=64, max_steps=300, lr=2e-3, min_lr=2e-4, warmup_steps=20,
                 grad_clip=1.0, eval_every=50, eval_windows=32, ckpt_every=100, sample_tokens=40, log_every=10),
    "demo": dict(batch_size=16, grad_accum=1, seq_len=128, max_steps=1000, lr=2e-3, min_lr=2e-4, warmup_steps=100,
                 grad_clip=1.0, eval_every=250, eval_windows=64, ckpt_every=250, sample_tokens=80, log_every=10),
}
