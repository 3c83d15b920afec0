"""gemma3.cpu.keep_freed_memory: a training-step-like loop of big tensors stops page-faulting them in."""

import subprocess
import sys
import textwrap

import pytest
import torch

SCRIPT = textwrap.dedent("""
    import resource, sys, torch
    from gemma3.cpu import keep_freed_memory
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
    """gemma3.cpu.DecodeThreads, on a simulated clock: two threads win on a quiet machine; once the
    other core gets busy (two threads 50x slower) it moves to one thread within a few tokens, and its
    later tries of two threads get rarer and cost little in all."""
    from gemma3 import cpu

    clock, cost = [0.0], {1: 1.0, 2: 0.55}
    monkeypatch.setattr(cpu.time, "perf_counter", lambda: clock[0])
    policy, used = cpu.DecodeThreads(most=2), []

    def tokens(n):
        for _ in range(n):
            with policy.step():
                k = torch.get_num_threads()
                used.append(k)
                clock[0] += cost[k]

    tokens(100)
    assert sorted(used[:4]) == [1, 1, 2, 2] and used[4:].count(2) >= 0.9 * 96
    cost[2] = 50.0  # the machine gets busy
    start, before = len(used), clock[0]
    tokens(1000)
    busy = used[start:]
    assert 1 not in busy[:1] or busy.index(1) <= 3  # switched within a few tokens
    assert busy[-500:].count(2) <= 3  # tries with two threads: rare
    assert clock[0] - before < 1.3 * 1000 * cost[1]  # and together cheap
    cost[2] = 0.55  # quiet again: two threads come back
    tokens(1200)
    assert used[-100:].count(2) >= 95
