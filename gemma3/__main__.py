"""python -m gemma3 generate|info|convert — the model package from the terminal."""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from . import describe
from .defaults import default_model
from .errors import prog, sentence
from .generation import check_settings, stream
from .io.checkpoints import export_hf, load_model, save_model
from .io.files import check_no_file_above, check_out_dir, is_gguf
from .io.gguf import export_gguf
from .runtime.cpu import keep_freed_memory
from .runtime.engine import ops as kernels

DTYPES = {"auto": None, "fp32": torch.float32, "bf16": torch.bfloat16}
AUTO_DTYPE = ("auto (the default): bf16 on CUDA; on a CPU, bf16 for a checkpoint stored in bf16 where the CPU computes in "
              "bf16 natively (AVX512-BF16 or AMX), else fp32")
GGUF_TYPES = {"auto": "f16", "fp32": "f32", "f32": "f32", "f16": "f16", "bf16": "bf16", "q8_0": "q8_0"}


def _device(text: str | None) -> torch.device | None:
    """--device as a torch.device, or a ValueError sentence when it names none, or a GPU that is not there."""
    if text is None:
        return None
    try:
        device = torch.device(text)
    except RuntimeError:
        raise ValueError(f"--device {text} is not a device; use cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and (device.index or 0) >= (torch.cuda.device_count() if torch.cuda.is_available() else 0):
        raise ValueError(f"--device {text}: no such CUDA GPU is visible here; use --device cpu.")
    return device


def _load(args):
    device = _device(args.device)
    print(f"Loading {args.model} ...", file=sys.stderr, flush=True)
    return load_model(args.model, device=device, dtype=DTYPES[args.dtype])


def cmd_generate(args):
    args.top_k = args.top_k or None   # 0 = off
    check_settings(args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.repetition_penalty)
    model, tok = _load(args)
    if model.embed.weight.device.type == "cpu":
        kernels.available()   # their first build (and its notice) comes before the story, not in its middle
    stats: dict = {}
    print(args.prompt, end="", flush=True)
    for piece in stream(model, tok, args.prompt, args.max_new_tokens, args.temperature, args.top_k, args.top_p,
                        args.repetition_penalty, args.seed, args.stop, stats):
        print(piece, end="", flush=True)
    print()
    if stats.get("notice"):
        print(stats["notice"], file=sys.stderr)
    print(f"[{stats['new_tokens']} tokens, {stats['tokens_per_s']:.1f} tokens/s, "
          f"prefill {stats.get('prefill_s', 0) * 1000:.0f} ms, stopped on {stats['stop_reason']}]", file=sys.stderr)


def cmd_info(args):
    model, tok = _load(args)
    print(describe(model, tok))


def check_gguf_out(path, force: bool):
    """Refuse, before any work, a GGUF file to write whose writing would lose something: a folder or a
    file other than a GGUF at it, a file above it, or (unless force) any GGUF file."""
    if not os.path.lexists(check_no_file_above(path)):
        return
    if os.path.islink(path) or not os.path.isfile(path) or not is_gguf(path):
        raise FileExistsError(f"{path} already exists and is not a GGUF file; choose another --out "
                              "(nothing was changed).")
    if not force:
        raise FileExistsError(f"{path} already holds a GGUF model; pass --force to replace it, "
                              "or choose another --out.")


def cmd_convert(args):
    """--dtype is the dtype the model loads in for native/hf, and the GGUF's tensor type for gguf."""
    if args.format == "gguf":
        kind = GGUF_TYPES[args.dtype]
        args.dtype = "fp32"  # load exactly, then write each tensor in the chosen type
        check_gguf_out(args.out, args.force)
    elif args.dtype not in DTYPES:
        raise ValueError(f"--dtype {args.dtype} is a GGUF type; for --format {args.format} choose "
                         f"{', '.join(DTYPES)}.")
    else:
        check_out_dir(args.out, args.force)
    model, tok = _load(args)
    t0 = time.perf_counter()
    if args.format == "gguf":
        out = export_gguf(model, tok, args.out, kind)
        args.format = f"GGUF ({kind})"
    else:
        out = (save_model if args.format == "native" else export_hf)(model, tok, args.out)
    print(f"Wrote {args.format} checkpoint to {out} in {time.perf_counter() - t0:.1f} s.")


def main(argv=None):
    parser = argparse.ArgumentParser(prog=prog("gemma3", "gemma3"), description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    model = default_model()

    def add(name, help_, dtypes=tuple(DTYPES), dtype_help=AUTO_DTYPE):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--model", default=model, required=model is None,
                       help="a checkpoint folder, a .pt/.bin/.safetensors/.gguf file, hf:owner/name, or "
                            "hf:owner/name/file.gguf (default: $GEMMA3_MODEL, else the bundled demo model)")
        p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
        p.add_argument("--dtype", choices=dtypes, default="auto", help=dtype_help)
        return p

    g = add("generate", "stream a continuation of a prompt")
    g.add_argument("--prompt", default="Once upon a time", help="the text to continue (default: %(default)s)")
    g.add_argument("--max-new-tokens", type=int, default=200, help="the most tokens to write (default: %(default)s)")
    g.add_argument("--temperature", type=float, default=0.7, help="0 = greedy (default: %(default)s)")
    g.add_argument("--top-k", type=int, default=None,
                   help="sample from the k most likely tokens (0 = off, as in the app; default: off)")
    g.add_argument("--top-p", type=float, default=None, help="sample from the smallest set of tokens whose "
                   "probabilities reach p (1 = off; default: off)")
    g.add_argument("--repetition-penalty", type=float, default=1.0, help="1 = off (the default)")
    g.add_argument("--seed", type=int, default=None, help="the same seed, settings and model: the same story "
                   "(default: a new one each time)")
    g.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    g.set_defaults(func=cmd_generate)

    add("info", "print the config and where the parameters are").set_defaults(func=cmd_info)

    c = add("convert", "write a checkpoint in our format, Hugging Face format or GGUF (llama.cpp, Ollama, LM Studio)",
            dtypes=tuple(dict.fromkeys([*DTYPES, *GGUF_TYPES])),
            dtype_help="native/hf: the dtype to load and save in (auto, fp32, bf16); gguf: the tensor type "
                       "(f32, f16, bf16, q8_0; auto = f16)")
    c.add_argument("--out", required=True, help="a folder (native, hf) or a .gguf file (gguf)")
    c.add_argument("--format", choices=["native", "hf", "gguf"], default="native")
    c.add_argument("--force", action="store_true",
                   help="replace a model already at --out (anything else there is never replaced)")
    c.set_defaults(func=cmd_convert)

    args = parser.parse_args(argv)
    keep_freed_memory()
    try:
        args.func(args)
    except (ValueError, OSError) as e:  # what a user can cause (ConnectionError is an OSError): one sentence
        print(f"error: {sentence(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
