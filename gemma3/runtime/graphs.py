"""Decoding on a GPU: each new token is one replay of a CUDA graph.

Eager PyTorch decodes a small model on a GPU at the speed it launches kernels, not at the speed the GPU
reads the weights: a token of the bundled demo model is hundreds of small kernels, and it decoded 99.5
tokens/s on an H200, slower than a 2-core CPU. Gemma3.decode (gemma3/model.py) keeps every shape fixed
and every value on the device, its position included, so one call is captured once per generation and
replayed for every token: the host launches one graph per token, and only the sampled token id comes back
to it (the sampling runs on the device, gemma3/generation.py). The prompt runs as it always does (its
shape is its own).

Modes (`GEMMA3_GPU_DECODE`, or `decoder(model, mode=...)`):
- "graph" (the default): the eager step captured with torch.cuda.CUDAGraph; ready in a fraction of a second;
- "compile": torch.compile(mode="reduce-overhead") of the step, which also fuses its small kernels and
  captures the result as a graph, after a compile of about a minute the first time;
- "eager": the fixed-shape step without a graph (what the graphs replay, for comparison).
bench/decode.py --device cuda measures each against transformers and the GPU's memory bandwidth.
"""

from __future__ import annotations

import collections
import os
import threading
from contextlib import nullcontext

import torch

from . import unwatched

MODES = ("graph", "compile", "eager")
_capturing = threading.Lock()  # PyTorch captures one graph at a time in a process: two visitors' first tokens wait


def applies(model) -> bool:
    """Whether this decoding runs the model: an unwatched Gemma3 (gemma3/runtime/__init__.py) on a CUDA device."""
    return model.embed.weight.device.type == "cuda" and unwatched(model)


def empty_cache():
    """torch.cuda.empty_cache, never while another thread captures a graph (the allocator asserts that no capture
    is under way when it frees its cached blocks)."""
    with _capturing:
        torch.cuda.empty_cache()


class Step:
    """One decoded token of one cache as a CUDA graph: the token goes into a fixed input, the graph replays,
    the logits come out of a fixed output. Captured at the cache's next position with the real token, so
    the warm-up runs that come before the capture write exactly what the step itself writes."""

    def __init__(self, model, cache, ids: torch.Tensor):
        self.device = model.embed.weight.device
        with _capturing, torch.cuda.device(self.device):  # streams and the graph on the model's GPU, not the current
            self._capture(model, cache, ids)

    def _capture(self, model, cache, ids: torch.Tensor):
        self.ids = ids.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up off the main stream, as capture requires
            for _ in range(2):
                model.decode(self.ids, cache)
        self.graph = torch.cuda.CUDAGraph()
        # capture_begin/end rather than torch.cuda.graph, which first waits for the whole device and empties the
        # allocator's cache (another visitor's, a training run's) at every capture, so once per generation.
        # thread_local: another visitor's generation may use the GPU from its own thread meanwhile
        with torch.cuda.stream(stream):
            self.graph.capture_begin(capture_error_mode="thread_local")
            try:
                self.logits = model.decode(self.ids, cache)
            except BaseException:
                try:
                    self.graph.capture_end()
                except Exception:
                    pass  # the capture is broken already; the error that broke it is the one to raise
                raise
            self.graph.capture_end()
        torch.cuda.current_stream().wait_stream(stream)

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        with torch.cuda.device(self.device):
            self.ids.copy_(ids)
            self.graph.replay()
            return self.logits.clone()  # the next replay overwrites the fixed output


def compiled_step(model):
    """torch.compile(model.decode, mode="reduce-overhead"), once per model (kept on it: gone with it)."""
    if "_compiled_decode" not in model.__dict__:
        model.__dict__["_compiled_decode"] = torch.compile(model.decode, mode="reduce-overhead", fullgraph=True)
    return model.__dict__["_compiled_decode"]


def graph_trees_ready():
    """torch.compile's CUDA graphs keep their state per thread, set up only in the thread that imported them first
    (PyTorch issue 123177, open in 2.11): a web server's worker thread would fail an assertion at its first compiled
    token. Such a thread gets its own state here (its own graphs, recorded at its first tokens)."""
    from torch._inductor import cudagraph_trees as trees

    if not hasattr(trees.local, "tree_manager_containers") and not torch._C._is_key_in_tls("tree_manager_containers"):
        trees.local.tree_manager_containers = {}
        trees.local.tree_manager_locks = collections.defaultdict(threading.Lock)


def decoder(model, use_engine: bool = True, mode: str | None = None):
    """The forward generation calls, as f(ids, cache, last_only) with `with f.step():` (see
    gemma3.generation.reference_decoder): a prompt runs the model's forward; a decoded token (one per row)
    runs the fixed-shape step in `mode` (default: $GEMMA3_GPU_DECODE, else "graph")."""
    mode = mode or os.environ.get("GEMMA3_GPU_DECODE", "graph")
    if mode not in MODES:
        raise ValueError(f"GEMMA3_GPU_DECODE must be one of {', '.join(MODES)}, not {mode!r}.")
    steps: dict[int, tuple] = {}  # id(cache) -> (cache, its step): the graph writes the cache, so it keeps it

    def prepare(cache, ids):
        if mode == "graph":
            return Step(model, cache, ids)
        if mode == "compile":  # the cache keeps its addresses: the compiled graph may write it in place
            for t in [cache.position] + [t for layer in cache.layers for t in (layer.k, layer.v, layer.index)]:
                torch._dynamo.mark_static_address(t)
            step = compiled_step(model)

            def run(ids):
                graph_trees_ready()  # a generation's tokens may each come from another worker thread
                return step(ids, cache).clone()  # the next replay overwrites the graph's output
            return run
        return lambda ids: model.decode(ids, cache)

    def f(ids, cache, last_only=False):
        if ids.shape[1] != 1 or cache.pos >= cache.max_len or not use_engine:
            return model(ids, cache=cache, last_only=last_only)  # a prompt, or the model's own clear error
        if id(cache) not in steps:
            steps.clear()  # an earlier generation's cache and graph are done with
            steps[id(cache)] = cache, prepare(cache, ids)
        logits = steps[id(cache)][1](ids)
        cache.pos += 1
        return logits

    f.step = nullcontext
    return f


def describe() -> str:
    step = {"graph": "a CUDA graph replayed for each decoded token",
            "compile": "a compiled CUDA graph (torch.compile, reduce-overhead) replayed for each decoded token",
            "eager": "the fixed-shape decode step, eager"}.get(os.environ.get("GEMMA3_GPU_DECODE", "graph"), "?")
    return f"{step} (gemma3/runtime/graphs.py); the prompt on the reference model's PyTorch"
