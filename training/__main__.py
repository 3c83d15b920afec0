"""python -m training prepare|train — prepare token files, then pretrain on them.

    python -m training prepare --source builtin --out data/builtin
    python -m training train --data data/builtin --preset tiny --out runs/tiny
    python -m training train --out runs/tiny --resume            # continue exactly where it stopped
    python -m training export --run runs/tiny --out my-model      # the model + a model card
    torchrun --nproc_per_node=4 -m training train --data data/tinystories --preset 270m --out runs/270m
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from pathlib import Path

from .config import TrainConfig
from .data import add_prepare_args, run_prepare


def _add_train_args(p: argparse.ArgumentParser):
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        if f.name == "model":
            p.add_argument("--set", dest="model", action="append", metavar="FIELD=VALUE", default=argparse.SUPPRESS,
                           help="override a field of the preset's model config, e.g. --set window=128 (repeatable)")
        elif kind is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS)
        else:
            base = next((t for t in typing.get_args(kind) if t is not type(None)), kind)
            p.add_argument(flag, type=base if base in (int, float, str) else str, default=argparse.SUPPRESS,
                           help=f"default: preset's, else {f.default!r}" if f.default is not dataclasses.MISSING else None)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")


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
    given = {k: v for k, v in vars(args).items() if k not in ("command", "resume", "func")}
    if "model" in given:
        given["model"] = _parse_model_overrides(given["model"])
    saved = Path(given.get("out", TrainConfig.out)) / "config.json"
    if args.resume and saved.exists():
        return TrainConfig.from_dict({**json.loads(saved.read_text()), **given})
    return TrainConfig.for_preset(given.pop("preset", TrainConfig.preset), **given)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    add_prepare_args(sub.add_parser("prepare", help="tokenise a story corpus into train.bin / val.bin"))
    _add_train_args(sub.add_parser("train", help="pretrain (or resume) a model on prepared data"))
    e = sub.add_parser("export", help="write a run's model with a model card (data, command, losses, samples)")
    e.add_argument("--run", required=True, help="run folder")
    e.add_argument("--out", required=True, help="folder to write (our checkpoint format + README.md)")
    e.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    e.add_argument("--checkpoint", choices=["last", "best"], default="last")
    args = parser.parse_args(argv)
    if args.command == "export":
        from .card import export
        try:
            print(f"Wrote {export(args.run, args.out, args.dtype, args.checkpoint)}")
        except (ValueError, FileNotFoundError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0
    if args.command == "prepare":
        try:
            run_prepare(args)
        except (ValueError, FileNotFoundError, ConnectionError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
    from gemma3.cpu import keep_freed_memory

    from .trainer import train
    keep_freed_memory()  # about 10% faster CPU steps (gemma3/cpu.py)
    try:
        cfg = config_from_args(args)
    except (ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return train(cfg, resume=args.resume)


if __name__ == "__main__":
    sys.exit(main())
