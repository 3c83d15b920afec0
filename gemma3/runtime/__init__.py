"""The fast paths, applied from outside the reference model. On a CPU: the C++ engine for inference (engine/), the
fused training loss (fused_loss.py, loss.cpp), CPU features and thread control (cpu.py), and the safe build of the
C++ kernels (native.py), which happens on first use, once per machine, with a pure-PyTorch fallback wherever a kernel
cannot run. On a GPU: decoding as CUDA graphs (graphs.py), and for a compiled training step FlexAttention in the
sliding layers (flex.py) and the loss's rows compiled (gpu_loss.py). gemma3/__init__.py installs the inference paths
into the core, training/step.py the training ones; nothing in the core imports this package."""

from ..model import Gemma3


def unwatched(model) -> bool:
    """A Gemma3 that runs the reference's own forward and decode (not a subclass that changes them) and that no
    forward hook watches (the explainer records through hooks): a fast path may compute it instead."""
    if type(model).forward is not Gemma3.forward or type(model).decode is not Gemma3.decode:
        return False
    return not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
