"""Build and load gemma3's C++ kernels as PyTorch operators, safely, once per machine and user.

`load("engine/kernels.cpp")` compiles a source file of gemma3/runtime/ (with torch.utils.cpp_extension,
which registers its TORCH_LIBRARY operators under torch.ops) and returns True, or False where the
kernels cannot run here: not Linux on x86-64, no AVX512-BF16, no compiler, GEMMA3_NO_KERNEL=1, or a
failed build, whose reason is logged once ("gemma3.runtime.native" logger) so nobody wonders why the PyTorch
code runs. A library is built into, and loaded only from, a folder of this user's: GEMMA3_CACHE, else
~/.cache/gemma3, else (not writable) gemma3-<uid> in the temporary folder; each created with mode
0700, and refused when another user owns it or may write to it, so nobody else can plant a library
there. Builds are named by the hash of source and flags: an edit builds anew.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import stat
import sys
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent
# -ffp-contract=off: no fused multiply-adds, so every product and sum rounds where PyTorch's does.
FLAGS = ["-O3", "-mavx512f", "-mavx512bw", "-mavx512bf16", "-ffp-contract=off", "-fopenmp"]
_loaded: dict[str, bool] = {}


class UnsafeFolder(OSError):
    """A build folder another user owns or may write to."""


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return set(next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), []))


def cpu_has_avx512_bf16() -> bool:
    return "avx512_bf16" in _cpu_flags()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX), so bf16 runs faster than fp32."""
    return bool({"avx512_bf16", "amx_bf16"} & _cpu_flags())


def supported() -> bool:
    """Whether this machine can run the kernels at all (before any build)."""
    return (os.environ.get("GEMMA3_NO_KERNEL") != "1" and sys.platform.startswith("linux")
            and platform.machine() == "x86_64" and cpu_has_avx512_bf16())


def private_folder(path: Path) -> Path:
    """`path`, created with mode 0700 if missing; UnsafeFolder if another user owns it or may write to it."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeFolder(f"{path} is not a folder of this user's that only they may write to")
    return path


def build_folders() -> list[Path]:
    home = Path(os.environ.get("GEMMA3_CACHE") or Path.home() / ".cache" / "gemma3")
    return [home, Path(tempfile.gettempdir()) / f"gemma3-{os.getuid()}"]


def _owned(path: Path):
    st = path.lstat()
    if st.st_uid != os.getuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) or not stat.S_ISREG(st.st_mode):
        raise UnsafeFolder(f"{path} is not a file of this user's that only they may write to")


def _build(source: Path, name: str, folder: Path):
    """Load the library in `folder`, building it first if it is not there. Under an OS file lock,
    which frees itself if this process dies: torch's own build lock (a file named "lock") stays
    behind when a build is killed and makes every later build wait forever, so one found while we
    hold ours is stale and removed. A library that exists is loaded directly, without the build
    tool; one that does not load (a build killed while linking) is built again."""
    import fcntl  # imported here: Linux only (supported() checked it), and gemma3 imports on every OS

    lib = folder / f"{name}.so"
    with open(folder / ".build.flock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        if lib.exists() or lib.is_symlink():
            _owned(lib)
            try:
                torch.ops.load_library(str(lib))
                return
            except OSError:
                lib.unlink()
        from torch.utils import cpp_extension  # imported here: it pulls in setuptools

        (folder / "lock").unlink(missing_ok=True)
        print(f"gemma3: building the CPU kernels ({source.name}), about 15 s, once per machine", file=sys.stderr,
              flush=True)
        cpp_extension.load(name=name, sources=[str(source)], build_directory=str(folder), extra_cflags=FLAGS,
                           extra_ldflags=["-fopenmp"], extra_include_paths=[str(HERE)], is_python_module=False,
                           verbose=False)


def _reason(e: Exception) -> str:
    """The compiler's first error line, else the exception's last line."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return next((ln for ln in lines if "error" in ln.lower()), lines[-1] if lines else type(e).__name__)


def load(relative: str) -> bool:
    """Build (once) and load the operators of gemma3/runtime/<relative>; whether they can be used."""
    if relative in _loaded:
        return _loaded[relative]
    _loaded[relative] = False
    if not supported():
        return False
    source = HERE / relative
    digest = hashlib.sha256(source.read_bytes() + (HERE / "simd.h").read_bytes()
                            + " ".join(FLAGS + [torch.__version__]).encode()).hexdigest()[:12]
    name = f"gemma3_{source.stem}_{digest}"
    errors = []
    for base in build_folders():
        try:
            folder = private_folder(private_folder(base) / name)
            _build(source, name, folder)
        except Exception as e:  # not writable, unsafe, no compiler, a compile error: say why, once
            errors.append(f"{base}: {_reason(e)}")
            continue
        _loaded[relative] = True
        return True
    log.warning("gemma3's C++ kernels (%s) could not be built, so PyTorch's operations run instead: %s",
                relative, "; ".join(errors))
    return False
