"""gemma3.cpu.keep_freed_memory: a training-step-like loop of big tensors stops page-faulting them in."""

import subprocess
import sys
import textwrap

import pytest

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

