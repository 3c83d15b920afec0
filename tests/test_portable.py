"""gemma3 imports and writes stories where its fast paths cannot run: no `fcntl` (as on Windows) and no C++
build, with the PyTorch code in their place giving the same tokens; importing it never loads the compiler."""

import os
import subprocess
import sys
from pathlib import Path

import gemma3

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "assets" / "demo-model"
PROMPT, TOKENS = "Once upon a time, a little dog", 24

# Run in a fresh interpreter: fcntl and torch's C++ build tool are missing there, and the kernel cache is an empty
# folder, so the kernels cannot be built (nor an earlier build loaded) and PyTorch's operations run instead.
CHILD = f"""
import sys
sys.modules["fcntl"] = None
sys.modules["torch.utils.cpp_extension"] = None
import torch
import gemma3
from gemma3.runtime import native
model, tok = gemma3.load_model({str(DEMO)!r}, device="cpu", dtype=torch.float32)
text = gemma3.generate(model, tok, {PROMPT!r}, max_new_tokens={TOKENS}, temperature=0.0)
print(repr(text))
print("kernels", native.load("engine/kernels.cpp"))
"""


def test_gemma3_generates_without_fcntl_or_a_kernel_build(tmp_path):
    env = {**os.environ, "GEMMA3_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    text, kernels = done.stdout.strip().splitlines()[-2:]
    assert kernels == "kernels False"
    import torch

    model, tok = gemma3.load_model(DEMO, device="cpu", dtype=torch.float32)
    expected = gemma3.generate(model, tok, PROMPT, max_new_tokens=TOKENS, temperature=0.0)
    assert text == repr(expected) and len(expected) > 40, "the same greedy story as with the fast paths"


def test_importing_gemma3_loads_neither_the_compiler_nor_a_kernel():
    code = ("import sys, gemma3; print([m for m in ('torch._dynamo', 'torch.utils.cpp_extension') if m in sys.modules],"
            " hasattr(gemma3.runtime.native, 'fcntl'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[] False", "import gemma3 stays light: torch.compile and the C++ build load on first use"
