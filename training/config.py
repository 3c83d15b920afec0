"""TrainConfig: every hyperparameter of a run, with defaults per preset, checked in one place.

Building a TrainConfig checks every value (`check`, from __post_init__): a value that cannot be used
raises ConfigError, one sentence that names the setting as the Train tab labels it, says what is
wrong and what would do. Whole floats are taken for int settings (a UI's number box sends 4.0), ints
for float settings; nothing else is converted. The CLI, the run manager and the UI all build their
TrainConfig here, so none of them checks a setting itself.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field

from gemma3 import Gemma3Config


class ConfigError(ValueError):
    """A training setting that cannot be used; `field` names it (None: not one setting)."""

    def __init__(self, field: str | None, message: str):
        super().__init__(message)
        self.field = field


@dataclass
class TrainConfig:
    data: str = "data/builtin"        # folder written by `python -m training prepare`
    out: str = "runs/run"             # run folder: checkpoints, metrics.jsonl, status.json
    preset: str = "270m"              # model and training preset (TRAIN_PRESETS)
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
    snapshot_mb: int = 2048           # disk budget of the run's snapshots (training/snapshots.py); 0: none
    max_bad_steps: int = 10           # consecutive non-finite steps before the run gives up

    device: str = "auto"              # auto, cuda, cuda:N, cpu
    dtype: str = "auto"               # auto (bf16 autocast on CUDA, fp32 on CPU), bf16, fp32
    compile: bool = False             # torch.compile the model
    peak_tflops: float | None = None  # for MFU; default: known GPU peak, or a matmul measured at start
    trackers: list = field(default_factory=list)  # experiment trackers fed with metrics.jsonl's records

    def __post_init__(self):
        check(self)

    @classmethod
    def for_preset(cls, preset: str, **overrides) -> "TrainConfig":
        """The preset's defaults (TRAIN_PRESETS) under the explicit overrides.

        Two defaults follow the overrides: min_lr keeps the preset's ratio to lr when only lr is given,
        and with a max_steps below the preset's, the warm-up and the logging, evaluation and checkpoint
        intervals shrink (a tenth, a twentieth, a fifth, a quarter of the run), so a short run still
        warms up, draws a validation curve and leaves checkpoints behind."""
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ConfigError(None, f"Unknown training setting{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}; "
                                    "`python -m training train --help` lists them.")
        base = {**_defaults(), **(TRAIN_PRESETS.get(preset, {}) if isinstance(preset, str) else {})}
        lr, steps = overrides.get("lr"), overrides.get("max_steps")
        if "min_lr" not in overrides and _is_number(lr) and lr != base["lr"]:
            base["min_lr"] = lr * base["min_lr"] / base["lr"]
        if _is_number(steps) and 1 <= steps < base["max_steps"]:
            steps = int(steps)
            base.update(warmup_steps=min(base["warmup_steps"], steps // 10),
                        log_every=max(1, min(base["log_every"], steps // 20)),
                        eval_every=max(1, min(base["eval_every"], steps // 5)),
                        ckpt_every=max(1, min(base["ckpt_every"], steps // 4)))
        return cls(**{**base, "preset": preset, **overrides})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# Smallest first. The 270m defaults are the reference TinyStories run (TrainConfig's own defaults);
# the small presets train in minutes on a 2-core CPU (PRESET_TIMES: what each took).
TRAIN_PRESETS: dict[str, dict] = {
    "tiny": dict(batch_size=16, grad_accum=1, seq_len=64, max_steps=300, lr=2e-3, min_lr=2e-4, warmup_steps=20,
                 grad_clip=1.0, eval_every=50, eval_windows=32, ckpt_every=100, sample_tokens=40, log_every=10),
    "demo": dict(batch_size=16, grad_accum=1, seq_len=128, max_steps=1000, lr=2e-3, min_lr=2e-4, warmup_steps=100,
                 grad_clip=1.0, eval_every=250, eval_windows=64, ckpt_every=250, sample_tokens=80, log_every=10),
    "270m": {},
}


# What each preset's default run took on this project's 2-core CPU (measured with the trainer; "shared": while
# other work ran on it), and on a GPU where a rate was measured (derived: the run's tokens / measured tokens/s).
# README, "Training", gives the figures' sources and the commands that reproduce them.
PRESET_TIMES: dict[str, tuple[str, str]] = {
    "tiny": ("2-core CPU: 1.5 min quiet, 3 min beside a busy loop per core", "not measured on a GPU"),
    "demo": ("2-core CPU: 12 min quiet", "H200: about 5 s of steps (derived)"),
    "270m": ("2-core CPU: about 38 days (a probe of its steps, extrapolated)",
             "H200: 2.3 h, 1.2 h compiled (derived)"),
}


def default_preset(device="auto") -> tuple[str, str]:
    """The preset for a run that names none, and why: the 270m run on a GPU, the minutes-long tiny one on a CPU."""
    import torch

    if isinstance(device, str) and device.startswith("cuda"):
        return "270m", f"the device is {device}"
    if device == "cpu":
        return "tiny", "the device is the CPU"
    if torch.cuda.is_available():
        return "270m", f"a GPU is visible ({torch.cuda.get_device_name(0)})"
    return "tiny", "no GPU is visible"


# ---- the checks ----------------------------------------------------------------------------------

class _Open(float):
    """An exclusive bound: the value must lie strictly beyond it."""


CONTEXT = "context"  # seq_len's upper bound: the model's context length

# Each setting's label (as the Train tab says it) and, for numbers, the range it must lie in.
SETTINGS: dict[str, tuple] = {
    "data": ("Data folder",),
    "out": ("Run folder",),
    "preset": ("Preset",),
    "model": ("Model overrides",),
    "init_from": ("Initial weights",),
    "batch_size": ("Batch size", 1, 4096),
    "grad_accum": ("Gradient accumulation", 1, 1024),
    "seq_len": ("Sequence length", 8, CONTEXT),
    "max_steps": ("Max steps", 1, 1_000_000),
    "lr": ("Learning rate", _Open(0), 1.0),
    "min_lr": ("Minimum learning rate", 0, None),
    "warmup_steps": ("Warm-up steps", 0, None),
    "weight_decay": ("Weight decay", 0, None),
    "beta1": ("Adam beta1", 0, _Open(1)),
    "beta2": ("Adam beta2", 0, _Open(1)),
    "grad_clip": ("Gradient clipping norm", _Open(0), None),
    "seed": ("Seed", 0, None),
    "eval_every": ("Evaluation interval (steps)", 1, None),
    "eval_windows": ("Validation windows", 1, None),
    "sample_prompt": ("Sample prompt",),
    "sample_tokens": ("Sample length (tokens)", 0, None),
    "log_every": ("Logging interval (steps)", 1, None),
    "ckpt_every": ("Checkpoint interval (steps)", 1, None),
    "keep_last": ("Checkpoints kept", 1, None),
    "snapshot_mb": ("Snapshot budget (MB)", 0, None),
    "max_bad_steps": ("Non-finite steps allowed in a row", 1, None),
    "device": ("Device",),
    "dtype": ("Precision",),
    "compile": ("torch.compile",),
    "peak_tflops": ("Peak TFLOP/s", _Open(0), None),
    "trackers": ("Experiment trackers",),
}
DEVICES = ("auto", "cuda", "cpu")
TRACKERS = ("trackio", "tensorboard", "wandb")  # training/trackers.py's adapters
DTYPES = ("auto", "bf16", "fp32")


def check(cfg: TrainConfig):
    """Check (and convert whole floats to int, ints to float) every setting of cfg in place; ConfigError if bad."""
    if not isinstance(cfg.preset, str) or cfg.preset not in TRAIN_PRESETS:
        raise ConfigError("preset", f"Preset must be one of {', '.join(TRAIN_PRESETS)}, not {value_words(cfg.preset)}.")
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        setattr(cfg, f.name, _typed(f.name, getattr(cfg, f.name), hints[f.name]))
    for name in ("data", "out", "init_from"):
        value = getattr(cfg, name)
        if value is not None and (not value.strip() or "\x00" in value):
            raise ConfigError(name, f"{SETTINGS[name][0]} must be a path, not {value_words(value)}.")
    if cfg.device not in DEVICES and not (cfg.device.startswith("cuda:") and cfg.device[5:].isdigit()):
        raise ConfigError("device", f"Device must be one of {', '.join(DEVICES)} or cuda:N, not {value_words(cfg.device)}.")
    unknown = [t for t in cfg.trackers if t not in TRACKERS]
    if unknown:
        raise ConfigError("trackers", f"Experiment trackers must be among {', '.join(TRACKERS)}, "
                                      f"not {value_words(unknown[0])}.")
    cfg.trackers = list(dict.fromkeys(cfg.trackers))  # each once, in the order given
    if cfg.dtype not in DTYPES:
        raise ConfigError("dtype", f"Precision must be one of {', '.join(DTYPES)}, not {value_words(cfg.dtype)}.")
    context, model_name = None, f"the {cfg.preset} model"
    if cfg.init_from is None:
        unknown = sorted(set(cfg.model) - {f.name for f in dataclasses.fields(Gemma3Config)})
        if unknown:
            raise ConfigError("model", f"Unknown model setting{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}; "
                                       "use fields of gemma3.Gemma3Config.")
        try:
            context = Gemma3Config.from_preset(cfg.preset, **cfg.model).context
        except (ValueError, TypeError) as e:
            raise ConfigError("model", f"The model overrides do not make a model: {e}") from None
        model_name += " as overridden" if cfg.model else ""
    for name, (label, *bounds) in SETTINGS.items():
        value = getattr(cfg, name)
        if bounds and value is not None:
            lo, hi = bounds
            if hi == CONTEXT:
                hi = context
            if (lo is not None and (value <= lo if isinstance(lo, _Open) else value < lo)) or \
                    (hi is not None and (value >= hi if isinstance(hi, _Open) else value > hi)):
                where = f" ({model_name}'s context)" if bounds[1] == CONTEXT and hi is not None else ""
                raise ConfigError(name, f"{label} must be {_range(lo, hi)}{where}, not {number_words(value)}.")
    if cfg.min_lr > cfg.lr:
        raise ConfigError("min_lr", f"Minimum learning rate (min_lr {number_words(cfg.min_lr)}) must not exceed the learning "
                                    f"rate (lr {number_words(cfg.lr)}); lower min_lr or leave it to the preset.")


def _typed(name: str, value, kind):
    """value as the type `kind` declares, else ConfigError."""
    label = SETTINGS[name][0]
    if value is None and type(None) in typing.get_args(kind):
        return None
    base = next((t for t in typing.get_args(kind) if t is not type(None)), kind)
    if base is bool:
        if not isinstance(value, bool):
            raise ConfigError(name, f"{label} is on or off: send true or false, not {value_words(value)}.")
        return value
    if base in (int, float):
        whole = base is int
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(name, f"{label} must be {'a whole number' if whole else 'a number'}, not {value_words(value)}.")
        if not math.isfinite(value):
            raise ConfigError(name, f"{label} must be a finite number, not {value}.")
        if whole and not float(value).is_integer():
            raise ConfigError(name, f"{label} must be a whole number, not {number_words(value)}.")
        return int(value) if whole else float(value)
    if base is str and not isinstance(value, str):
        raise ConfigError(name, f"{label} must be text, not {value_words(value)}.")
    if base is list:
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(name, f"{label} must be a list of names, not {value_words(value)}.")
        return list(value)
    if base is dict and not isinstance(value, dict):
        raise ConfigError(name, f"{label} must be a mapping of setting names to values, not {value_words(value)}.")
    return value


def _defaults() -> dict:
    return {f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            for f in dataclasses.fields(TrainConfig)}


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def _range(lo, hi) -> str:
    if lo is not None and hi is not None and not isinstance(lo, _Open) and not isinstance(hi, _Open):
        return f"between {number_words(lo)} and {number_words(hi)}"
    parts = []
    if lo is not None:
        parts.append(f"{'more than' if isinstance(lo, _Open) else 'at least'} {number_words(lo)}")
    if hi is not None:
        parts.append(f"{'less than' if isinstance(hi, _Open) else 'at most'} {number_words(hi)}")
    return " and ".join(parts)


def number_words(x) -> str:
    """A number as the checks write it in their messages: 1,024, 0.002."""
    x = float(x) if isinstance(x, _Open) else x
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e15:
        x = int(x)
    return f"{x:,}" if isinstance(x, int) else f"{x:g}"


def value_words(value) -> str:
    """A value a user sent, as the checks quote it (cut at 60 characters)."""
    r = repr(value)
    return r if len(r) <= 60 else r[:57] + "..."
