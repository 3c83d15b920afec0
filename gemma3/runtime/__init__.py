"""The fast paths, applied from outside the reference model: the C++ engine for inference (engine/), the fused
training loss (fused_loss.py, loss.cpp), CPU features and thread control (cpu.py), and the safe build of the C++
kernels (native.py), which happens on first use, once per machine, with a pure-PyTorch fallback wherever a kernel
cannot run. gemma3/__init__.py installs them into the core; nothing in the core imports this package."""
