"""The fast paths, applied from outside the reference model. On a CPU: the C++ engine for inference (engine/), the
fused training loss (fused_loss.py, loss.cpp), CPU features and thread control (cpu.py), and the safe build of the
C++ kernels (native.py), which happens on first use, once per machine, with a pure-PyTorch fallback wherever a kernel
cannot run. On a GPU: decoding as CUDA graphs (graphs.py), and for a compiled training step FlexAttention in the
sliding layers (flex.py) and the loss's rows compiled (gpu_loss.py). gemma3/__init__.py installs the inference paths
into the core, training/step.py the training ones; nothing in the core imports this package."""
