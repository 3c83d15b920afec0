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
import time
from contextlib import contextmanager

import torch

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
    before = torch.get_num_threads()
    if n is None or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class DecodeThreads:
    """Chooses, by measuring, how many threads each decoded token runs on: one, or all.

    A decoded token is a chain of small memory-bound steps, and each parallel step waits for its
    slowest thread. On an idle machine every core's share of the memory reads helps (two threads read
    the weights about 1.8x faster than one here); when the other cores are busy (a Space's shared 2
    vCPUs, a laptop compiling), a thread that is not scheduled holds up every step, and two threads
    decoded 10-100x slower than one. So the first tokens try both and the loop keeps the faster
    (median of two). It tries the other again after 16 tokens, then 32, 64, ... up to 512 while that
    keeps losing, and at once when a token takes twice as long as the other option did: a machine that
    gets busy or quiet mid-story is noticed, and losing tries cost little. `with policy.step():` wraps one decoded token. Prompts keep every thread.
    """

    def __init__(self, most: int | None = None):
        most = most or torch.get_num_threads()
        self.options = [1, most] if most > 1 else [1]
        self.times: dict[int, list[float]] = {n: [] for n in self.options}
        self.current: int | None = None  # chosen once every option has been timed twice
        self.tokens, self.next_try, self.wait = 0, 0, 16

    def median(self, n: int) -> float:
        t = sorted(self.times[n])
        return t[len(t) // 2]

    def choose(self) -> int:
        if self.current is None:
            return next(n for n in self.options if len(self.times[n]) < 2)
        if len(self.options) > 1 and self.tokens >= self.next_try:
            return next(n for n in self.options if n != self.current)
        return self.current

    @contextmanager
    def step(self):
        n = self.choose()
        t0 = time.perf_counter()
        with threads(n):
            yield
        self.times[n] = (self.times[n] + [time.perf_counter() - t0])[-3:]
        self.tokens += 1
        if self.current is None:
            if all(len(t) >= 2 for t in self.times.values()):
                self.current = min(self.options, key=self.median)
                self.next_try = self.tokens + self.wait
        elif n != self.current:  # a try of the other option, against the current's latest token
            if self.times[n][-1] < self.times[self.current][-1]:
                self.current, self.wait = n, 16
            else:
                self.wait = min(2 * self.wait, 512)
            self.next_try = self.tokens + self.wait
        elif len(self.options) > 1 and self.times[n][-1] > 2 * self.median(next(m for m in self.options if m != n)):
            self.next_try = self.tokens  # much slower than the other option was: try it now


def decode_threads(model) -> DecodeThreads | None:
    """The thread policy for decoding with `model`: None off the CPU."""
    return DecodeThreads() if model.embed.weight.device.type == "cpu" else None
