"""Process settings for a CPU: keep_freed_memory (a training-step-like loop of big tensors stops page-faulting them
in), and OpenMP's shorter spin, set before PyTorch loads in the app and the trainer."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

SCRIPT = textwrap.dedent("""
    import resource, sys, torch
    from gemma3.runtime.cpu import keep_freed_memory
    applied = keep_freed_memory() if sys.argv[1] == "keep" else None
    faults = []
    for _ in range(16):  # two 64 MiB activations per "step", freed at its end
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        x = torch.ones(16 << 20)
        y = x * 2
        del x, y
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(applied, sum(faults[8:]))  # the steady state, once the heap has grown to the working set
""")
PAGES = 8 * 2 * (64 << 20) // 4096  # what eight steps fault in when every allocation comes fresh from the kernel


def steady_faults(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True)
    applied, n = out.stdout.split()
    return applied, int(n)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_memory_is_reused_without_page_faults():
    applied, kept = steady_faults("keep")
    if applied != "True":
        pytest.skip("this C library has no mallopt")
    _, default = steady_faults("default")
    assert default > PAGES / 2  # by default every big allocation is faulted in again
    assert kept < PAGES / 3, (kept, default)  # mostly none; the heap may still grow once or twice



def test_decoding_keeps_the_faster_thread_count_and_notices_a_busy_machine(monkeypatch):
    """gemma3.runtime.cpu.DecodeThreads on a simulated clock. Quiet: two threads win. Busy (every token may
    be preempted; two threads usually 3x slower than one and sometimes 50x): it moves to one thread
    within a few tokens, stays there although single tokens say otherwise now and then, and its tries
    of two threads cost little in all. Quiet again: two threads come back."""
    import random

    from gemma3.runtime import cpu

    rng = random.Random(0)
    clock = [0.0]
    quiet = {1: lambda: 1.0, 2: lambda: 0.55}
    busy = {1: lambda: 1.0 if rng.random() < 0.7 else 3.0, 2: lambda: 2.8 if rng.random() < 0.8 else 50.0}
    cost = dict(quiet)
    monkeypatch.setattr(cpu.time, "perf_counter", lambda: clock[0])
    policy, used = cpu.DecodeThreads(most=2), []

    def tokens(n):
        spent = 0.0
        for _ in range(n):
            with policy.step():
                k = torch.get_num_threads()
                used.append(k)
                t = cost[k]()
                clock[0] += t
                spent += t
        return spent

    tokens(100)
    assert used[:10] == [1] * 5 + [2] * 5 and used[10:].count(2) >= 0.85 * 90
    cost.update(busy)
    start = len(used)
    spent = tokens(1000)
    assert used[start:start + 8].count(1) >= 4  # moved to one thread within a few tokens
    assert used[-500:].count(1) >= 0.97 * 500
    one_thread = 1000 * (0.7 * 1.0 + 0.3 * 3.0)  # what always one thread would cost
    assert spent < 1.15 * one_thread
    cost.update(quiet)
    tokens(1200)
    assert used[-100:].count(2) >= 95


ORDER = textwrap.dedent("""
    import os, sys
    first = []
    class Finder:  # notes which of gemma3 and torch a program asks for first
        def find_spec(self, name, path=None, target=None):
            if name in ("torch", "gemma3") and name not in first:
                first.append(name)
    sys.meta_path.insert(0, Finder())
    import importlib
    importlib.import_module(sys.argv[1])
    print(first[0], os.environ.get("GOMP_SPINCOUNT"))
""")


def ordered(program: str, env: dict) -> list[str]:
    return subprocess.run([sys.executable, "-c", ORDER, program], capture_output=True, text=True, check=True,
                          env=env).stdout.split()


def test_the_app_and_the_trainer_shorten_openmps_spin_before_pytorch_loads():
    """bench/spin.py: with a busy loop per core, the tiny preset trained 60 steps in 39 s against 76 s with OpenMP's
    default spin. The setting counts only if it is in the environment before torch loads libgomp."""
    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
    assert ordered("webapp.storage", env) == ["gemma3", "10000"]   # the app's first import
    assert ordered("training.__main__", {**env, "GOMP_SPINCOUNT": "50"}) == ["gemma3", "50"], "a user's value is kept"
