"""python -m training prepare|train|export|push — prepare token files, pretrain on them, share the result.

Without --preset, train picks the one that fits the device (270m on a GPU, tiny on a CPU) and says so.

    python -m training prepare --source builtin --out data/builtin
    python -m training train --data data/builtin --preset tiny --out runs/tiny
    python -m training train --help                              # every setting, with each preset's default
    python -m training train --out runs/tiny --resume            # continue exactly where it stopped
    python -m training export --run runs/tiny --out my-model      # the model + a model card (--force: replace one)
    python -m training push --run runs/tiny --repo me/tiny-stories # the same, as a Hub repository
    python -m training train --data data/builtin --out runs/tiny --tracker trackio --tracker tensorboard
    torchrun --nproc_per_node=4 -m training train --data data/tinystories --preset 270m --out runs/270m
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import typing
from pathlib import Path

from gemma3.errors import prog, sentence

from .config import SETTINGS, TRACKERS, TRAIN_PRESETS, ConfigError, TrainConfig, default_preset
from .data import add_prepare_args, run_prepare


def _number(text: str):
    """A number flag's text as an int or float (TrainConfig says whether it will do), else the text itself."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _preset_defaults(name: str) -> str:
    """What --help says a setting defaults to: the value of each preset, or the one they share."""
    values = {p: getattr(TrainConfig.for_preset(p), name) for p in TRAIN_PRESETS}
    if len(set(map(repr, values.values()))) == 1:
        return f"default {next(iter(values.values()))!r}"
    return "default " + ", ".join(f"{v!r} ({p})" for p, v in values.items())


SHORT = "shortened for a --max-steps below the preset's"  # how TrainConfig.for_preset derives these defaults
NOTES = {"min_lr": "scaled with --lr", "warmup_steps": SHORT, "log_every": SHORT, "eval_every": SHORT,
         "ckpt_every": SHORT, "device": "auto, cuda, cuda:N or cpu", "dtype": "auto (bf16 on a GPU), bf16 or fp32",
         "init_from": "None: random weights", "peak_tflops": "None: a known GPU's datasheet figure, else measured"}


def _add_train_args(p: argparse.ArgumentParser):
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        label = SETTINGS[f.name][0]
        if f.name == "model":
            p.add_argument("--set", dest="model", action="append", metavar="FIELD=VALUE", default=argparse.SUPPRESS,
                           help="override a field of the preset's model config, e.g. --set window=128 (repeatable)")
        elif f.name == "trackers":
            p.add_argument("--tracker", dest="trackers", action="append", metavar="|".join(TRACKERS),
                           default=argparse.SUPPRESS, help="also send the metrics to this experiment tracker (repeatable; "
                           "each needs its package: pip install trackio, tensorboard or wandb)")
        elif f.name == "preset":
            p.add_argument(flag, default=argparse.SUPPRESS, metavar="|".join(TRAIN_PRESETS),
                           help="the model and every default below; default: 270m where a GPU is visible, "
                                "else tiny (1.5 minutes on a quiet 2-core CPU, about 3 beside a busy loop per core); "
                                "demo is the bundled model's size (about half an hour on a shared 2-core CPU)")
        elif kind is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                           help=f"{label}; {_preset_defaults(f.name)}")
        else:
            base = next((t for t in typing.get_args(kind) if t is not type(None)), kind)
            extra = f"; {NOTES[f.name]}" if f.name in NOTES else ""
            p.add_argument(flag, type=_number if base in (int, float) else str, default=argparse.SUPPRESS,
                           help=f"{label}; {_preset_defaults(f.name)}{extra}".replace("%", "%%"))
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint, with its saved settings")


def _parse_model_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set needs FIELD=VALUE, not {item!r}.")
        key, value = item.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig the flags ask for; without --preset, the one that fits the device (said on stdout)."""
    given = {k: v for k, v in vars(args).items() if k not in ("command", "resume", "func")}
    if "model" in given:
        given["model"] = _parse_model_overrides(given["model"])
    out = Path(given.get("out", TrainConfig.out))
    if args.resume:
        try:
            saved = json.loads((out / "config.json").read_text())
        except (FileNotFoundError, NotADirectoryError):
            raise ValueError(f"{out} holds no run to resume (no config.json); "
                             "start a new run without --resume.") from None
        except (OSError, ValueError):
            saved = None
        if not isinstance(saved, dict):
            raise ValueError(f"{out / 'config.json'} is not a readable settings file, so the run cannot be resumed; "
                             "start a new run instead.")
        return TrainConfig.from_dict({**saved, **given})
    if "preset" not in given:
        preset, why = default_preset(given.get("device", "auto"))
        if int(os.environ.get("RANK", "0")) == 0:
            steps = given.get("max_steps") or TrainConfig.for_preset(preset).max_steps
            print(f"No --preset given: training the {preset} preset ({steps:,} steps) because {why}; "
                  f"choose one with --preset {'|'.join(TRAIN_PRESETS)}.", flush=True)
        given["preset"] = preset
    return TrainConfig.for_preset(given.pop("preset"), **given)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog=prog("training", "gemma3-train"), description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    add_prepare_args(sub.add_parser("prepare", help="tokenise a story corpus into train.bin / val.bin"))
    _add_train_args(sub.add_parser("train", help="pretrain (or resume) a model on prepared data",
                                   description="Pretrain (or resume) a model on prepared data. Every default comes "
                                               "from --preset: each flag lists its value per preset."))
    e = sub.add_parser("export", help="write a run's model with a model card (data, command, losses, samples)")
    e.add_argument("--run", required=True, help="run folder")
    e.add_argument("--out", required=True, help="folder to write (our checkpoint format + README.md)")
    e.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16",
                   help="the weights' type in the folder (default: bf16, half the size; a model trained in fp32 "
                        "then writes slightly different stories than its run's checkpoint)")
    e.add_argument("--checkpoint", choices=["last", "best"], default="last",
                   help="the run's last checkpoint or its lowest validation loss (default: last)")
    e.add_argument("--force", action="store_true",
                   help="replace a model already at --out (anything else there is never replaced)")
    u = sub.add_parser("push", help="upload a run's model to the Hugging Face Hub (transformers layout + ours + card)",
                       description="Upload a run's model to the Hugging Face Hub as a repository transformers loads, "
                                   "with our format in gemma3/, the run's metrics, the loss curve and a model card. "
                                   "The token: HF_TOKEN, else the cached `hf auth login`.")
    u.add_argument("--run", required=True, help="run folder")
    u.add_argument("--repo", help="user/name (default: your user name and the run's name)")
    u.add_argument("--public", action="store_true", help="create the repository public (default: private)")
    u.add_argument("--checkpoint", choices=["last", "best"], default="last", help="as for export (default: last)")
    u.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16", help="as for export (default: bf16)")
    u.add_argument("--gguf", choices=["f16", "bf16", "q8_0"], help="also upload a GGUF file of this type (llama.cpp)")
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ConfigError as e:  # one sentence, led by the flag to change
        flag = {"model": "--set", "trackers": "--tracker", None: ""}.get(e.field, f"--{str(e.field).replace('_', '-')}")
        print(f"error: {flag + ': ' if flag else ''}{e}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as e:  # what a user can cause (DataError, PushError, RunRefused): one sentence
        print(f"error: {sentence(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


def cmd_prepare(args) -> int:
    run_prepare(args)
    return 0


def cmd_train(args) -> int:
    cfg = config_from_args(args)
    from gemma3.runtime.cpu import keep_freed_memory

    from .trainer import train
    keep_freed_memory()  # about 10% faster CPU steps (gemma3/runtime/cpu.py)
    return train(cfg, resume=args.resume)


def cmd_export(args) -> int:
    from gemma3.io.files import check_out_dir

    from .card import export
    check_out_dir(args.out, args.force)  # before the model is loaded and its samples written
    print(f"Wrote {export(args.run, args.out, args.dtype, args.checkpoint)}")
    return 0


def cmd_push(args) -> int:
    from .push import push
    url = push(args.run, args.repo, private=not args.public, which=args.checkpoint, dtype=args.dtype, gguf=args.gguf)
    print(f"Pushed {args.run} to {url}")
    return 0


COMMANDS = {"prepare": cmd_prepare, "train": cmd_train, "export": cmd_export, "push": cmd_push}


if __name__ == "__main__":
    sys.exit(main())
