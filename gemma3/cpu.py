"""Process settings that make PyTorch faster on a CPU; our programs (CLI, app, trainer) call them.

glibc hands every allocation above 128 KiB-32 MiB to the kernel with mmap and gives it back on free,
so every activation of a training step or of a long prompt is page-faulted in again, page by page
(about 1 us per 4 KiB page on this project's machine: 20 ms for a 64 MiB tensor before any
arithmetic). Keeping freed memory in the process instead made a 270m fp32 training step on a
2-core CPU about 6% faster (4.3 s against 4.6 s). The price: the process keeps the memory of its
largest step instead of returning it to the system (peak resident 4.76 GB against 4.42 GB in that
run). Importing gemma3 never changes this; a program opts in with `keep_freed_memory()`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from contextlib import contextmanager

import torch

# One decoded token is a chain of small, memory-bound steps. Every parallel step waits for its slowest
# thread, so on a machine whose other cores are busy (a Space's shared 2 vCPUs, a laptop compiling)
# a second thread made decoding 10-100x slower, while on an idle machine it gained little
# (bench/generate.py measures both). Prompts keep every thread: they are compute-bound.
DECODE_THREADS = 1

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_done = False


def keep_freed_memory() -> bool:
    """Ask glibc to serve large allocations from the heap and not to return freed memory to the
    system. Returns True when the settings were applied (Linux with glibc), False elsewhere."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = bool(mallopt(_M_MMAP_THRESHOLD, 1 << 30) and mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1))
    return _done


@contextmanager
def threads(n: int | None):
    """PyTorch's intra-op threads set to `n` inside the block (None: unchanged), restored after.
    With PyTorch's OpenMP backend the setting belongs to the calling thread."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    if n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def decode_threads(model):
    """The threads a decoded token runs on (see DECODE_THREADS)."""
    w = model.embed.weight
    return threads(DECODE_THREADS if w.device.type == "cpu" else None)
