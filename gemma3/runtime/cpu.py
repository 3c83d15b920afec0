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
    """Chooses, by measuring, how many threads each decoded token runs on: one, or all. For decoding
    with PyTorch's own operations (the reference model); the engine's one call per token has threads
    that do not wait for each other and needs no choice (engine.decoder).

    A decoded token is a chain of small memory-bound steps, and each parallel step waits for its
    slowest thread. On an idle machine every core's share of the memory reads helps (two threads read
    the weights about 1.8x faster than one here); when the other cores are busy (a Space's shared 2
    vCPUs, a laptop compiling), a thread that is not scheduled holds up every step, and two threads
    decoded up to 50x slower than one (bench/decode.py). So decoding starts on one thread and tries
    the other count on a few tokens: it switches when their median beats the current one's, tries
    again after 16 tokens, then 32, 64, ... up to 512 while the other keeps losing, and at once when
    the current count gets twice as slow as the other was. A try stops at its first token that takes
    three times the current median, so a collapse costs one token. Timing single tokens would not do:
    on a busy machine any token may be preempted, so a try takes the median of five, and more threads
    must win by a quarter (they gain at most 1.8x when they win, and lose 3-50x when they lose).
    `with policy.step():` wraps one decoded token. Prompts keep every thread (they are compute-bound).
    """

    SAMPLES = 5
    MARGIN = 0.75  # more threads must take at most this fraction of one thread's time

    def __init__(self, most: int | None = None):
        most = most or torch.get_num_threads()
        self.options = [1, most] if most > 1 else [1]
        self.times: dict[int, list[float]] = {n: [] for n in self.options}  # the last SAMPLES of each
        self.current = 1
        self.trial: list[float] | None = None  # the times of a try of the other count, while one runs
        self.tokens, self.next_try, self.wait = 0, self.SAMPLES, 16

    @property
    def other(self) -> int:
        return self.options[-1] if self.current == self.options[0] else self.options[0]

    def median(self, n: int) -> float:
        t = sorted(self.times[n])
        return t[len(t) // 2] if t else float("inf")

    def choose(self) -> int:
        if self.trial is None and len(self.options) > 1 and self.tokens >= self.next_try:
            self.trial = []
        return self.other if self.trial is not None else self.current

    @contextmanager
    def step(self):
        n = self.choose()
        t0 = time.perf_counter()
        with threads(n):
            yield
        took = time.perf_counter() - t0
        self.tokens += 1
        self.times[n] = (self.times[n] + [took])[-self.SAMPLES:]
        if self.trial is None:
            if self.times[self.other] and self.median(n) > 2 * self.median(self.other):
                self.next_try = self.tokens  # much slower than the other count was: try it now
            return
        self.trial.append(took)
        bar = (self.MARGIN if self.other > self.current else 1.0) * self.median(self.current)
        if took > 3 * self.median(self.current) or sum(t >= bar for t in self.trial) > self.SAMPLES // 2:
            self._end_trial(won=False)  # a collapse, or a median that can no longer beat the bar
        elif len(self.trial) == self.SAMPLES:
            self._end_trial(won=True)

    def _end_trial(self, won: bool):
        if won:
            self.current, self.wait = self.other, 16
        else:
            self.wait = min(2 * self.wait, 512)
        self.trial, self.next_try = None, self.tokens + self.wait
