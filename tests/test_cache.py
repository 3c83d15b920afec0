"""The KV cache: decoding with it must give exactly what a full forward pass gives.

A user notices a cache bug as text that goes wrong after the first `window` tokens (the sliding
layers' ring buffer wraps there), as memory that grows while generating, or as a crash instead
of a clear error when the cache is full. The full forward pass is the reference here; it is
itself checked against transformers in test_parity.py. The model is conftest's tiny one:
window 8, sliding and full layers, batch of 2 throughout.
"""

import pytest
import torch
from conftest import TINY_HF, random_ids

W = TINY_HF["sliding_window"]


@torch.no_grad()
def cached_logits(model, ids: torch.Tensor, chunks: list[int], max_len: int | None = None,
                  forward=None) -> torch.Tensor:
    """Logits [B, T, V] for ids fed through one cache in consecutive chunks of the given lengths
    (by `forward(ids, cache)`, default the model's own)."""
    assert sum(chunks) == ids.shape[1]
    cache = model.new_cache(ids.shape[0], max_len or ids.shape[1])
    forward = forward or (lambda x, c: model(x, cache=c))
    out, start = [], 0
    for n in chunks:
        out.append(forward(ids[:, start:start + n], cache))
        start += n
        assert cache.pos == start
    return torch.cat(out, dim=1)


@torch.no_grad()
def full_logits(model, ids: torch.Tensor) -> torch.Tensor:
    return model(ids)


@pytest.mark.parametrize("prefill", [1, 5, W, 13])
def test_decoding_one_token_at_a_time_equals_full_forward(tiny, prefill):
    """Prefill, then decode token by token through several ring wrap-arounds: every position's logits match."""
    total = 4 * W + 3  # 35 positions: the sliding layers' 8-slot ring wraps four times
    ids = random_ids(2, total, seed=prefill)
    chunks = [prefill] + [1] * (total - prefill)
    torch.testing.assert_close(cached_logits(tiny, ids, chunks), full_logits(tiny, ids), atol=1e-5, rtol=0)


@pytest.mark.parametrize("batch, prefill", [(2, 5), (1, 4), (1, W + 3)])
def test_the_engine_decoding_equals_full_forward(tiny, batch, prefill):
    """The engine (gemma3/runtime/engine, where it runs here) decodes through the ring wrap-arounds to the
    full pass's logits; batch 1 takes its one-call block halves, batch 2 its per-step path."""
    from gemma3.runtime import engine

    ids = random_ids(batch, 4 * W + 3, seed=prefill)
    chunks = [prefill] + [1] * (ids.shape[1] - prefill)
    got = cached_logits(tiny, ids, chunks, forward=lambda x, c: engine.forward(tiny, x, c))
    torch.testing.assert_close(got, full_logits(tiny, ids), atol=1e-5, rtol=0)


@pytest.mark.parametrize("use_engine", [False, True])
def test_bf16_decoding_stays_close_to_the_bf16_full_forward(hf_tiny, use_engine):
    """In bf16 a decoded row's products have other shapes than the full forward's (and, on the engine,
    are matrix-vector products): rounding differs, the predictions must not."""
    import gemma3
    from gemma3.runtime import engine

    model, _ = gemma3.load_model(hf_tiny[1], device="cpu", dtype=torch.bfloat16)
    ids = random_ids(1, 3 * W + 5, seed=11)  # batch 1: the decode rows are single vectors
    forward = (lambda x, c: engine.forward(model, x, c)) if use_engine else None
    cached = cached_logits(model, ids, [4] + [1] * (ids.shape[1] - 4), forward=forward).float()
    full = full_logits(model, ids).float()
    assert (cached - full).abs().max() < 0.05 * full.abs().max()
    assert (cached.argmax(-1) == full.argmax(-1)).float().mean() > 0.9


@pytest.mark.parametrize("chunks", [[3, 5, 7, 1, 1, 9, 2], [7, 11, 1, 3, 10], [2, 2, 2, 2, 2, 2, 2, 2, 2, 2]],
                         ids=["3-5-7-1-1-9-2", "7-11-1-3-10", "2x10"])
def test_chunked_prefill_equals_full_forward(tiny, chunks):
    """Feeding a long prompt in chunks (some longer than the window) gives the full pass's logits."""
    ids = random_ids(2, sum(chunks), seed=len(chunks))
    torch.testing.assert_close(cached_logits(tiny, ids, chunks), full_logits(tiny, ids), atol=1e-5, rtol=0)


def test_last_only_matches_last_position(tiny):
    """last_only (what generation uses after a prefill) returns exactly the last position's logits."""
    ids = random_ids(2, 2 * W + 3, seed=11)
    with torch.no_grad():
        cache = tiny.new_cache(2, ids.shape[1])
        last = tiny(ids, cache=cache, last_only=True)
    assert last.shape == (2, 1, tiny.config.vocab_size)
    torch.testing.assert_close(last[:, 0], full_logits(tiny, ids)[:, -1], atol=1e-5, rtol=0)


def test_cache_is_preallocated(tiny):
    """Decoding writes into fixed tensors: sliding layers hold `window` slots, full layers `max_len`."""
    max_len = 5 * W
    cache = tiny.new_cache(2, max_len)
    cfg = tiny.config
    assert len(cache.layers) == cfg.layers
    assert set(cfg.layer_types) == {"sliding", "full"}
    for kind, layer in zip(cfg.layer_types, cache.layers):
        slots = W if kind == "sliding" else max_len
        for t in (layer.k, layer.v):
            assert t.shape == (2, cfg.kv_heads, slots, cfg.head_dim)
    before = [(id(t), t.data_ptr(), t.shape) for layer in cache.layers for t in (layer.k, layer.v)]

    ids = random_ids(2, max_len, seed=12)
    with torch.no_grad():
        tiny(ids[:, :6], cache=cache)
        for i in range(6, max_len):
            tiny(ids[:, i:i + 1], cache=cache)
    after = [(id(t), t.data_ptr(), t.shape) for layer in cache.layers for t in (layer.k, layer.v)]
    assert after == before
    assert cache.pos == max_len


def test_exceeding_the_cache_raises_and_keeps_it_usable(tiny):
    """Going past max_len is a clear ValueError; the cache is left as it was and can still be used."""
    ids = random_ids(2, 12, seed=13)
    cache = tiny.new_cache(2, 12)
    with torch.no_grad():
        first = tiny(ids[:, :10], cache=cache)
        with pytest.raises(ValueError, match="cache"):
            tiny(random_ids(2, 3, seed=14), cache=cache)
        assert cache.pos == 10
        rest = [tiny(ids[:, i:i + 1], cache=cache) for i in (10, 11)]
        with pytest.raises(ValueError, match="cache"):
            tiny(ids[:, :1], cache=cache)
    torch.testing.assert_close(torch.cat([first, *rest], dim=1), full_logits(tiny, ids), atol=1e-5, rtol=0)


# ---- the fixed-shape decode step (Gemma3.decode: what a CUDA graph replays, gemma3/runtime/graphs.py) ----

@torch.no_grad()
def greedy_with_decode(model, prompt: torch.Tensor, new: int, step=None,
                       max_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy tokens [B, new] and the logits [B, new, V] that chose them: the prompt through the model's
    forward, then each token through `step(ids, cache)` (default: model.decode, the fixed-shape step), in a
    cache of max_len (default: just long enough)."""
    step = step or model.decode
    cache = model.new_cache(prompt.shape[0], max_len or prompt.shape[1] + new)
    logits = [model(prompt, cache=cache, last_only=True)]
    tokens = [logits[-1][:, -1].argmax(-1, keepdim=True)]
    for _ in range(new - 1):
        logits.append(step(tokens[-1], cache))
        cache.pos += 1
        tokens.append(logits[-1][:, -1].argmax(-1, keepdim=True))
    return torch.cat(tokens, 1), torch.cat(logits, 1)


def test_a_300_token_greedy_generation_with_the_fixed_shape_step_equals_the_full_forward(tiny):
    """300 tokens past a prompt (the 8-slot ring wraps 37 times; the full layers' cache reads 304 slots, most
    unwritten at first): every decoded token's logits equal the full forward pass's over the whole story,
    which picks the same greedy tokens, for a batch of 2."""
    prompt = random_ids(2, 4, seed=21)
    tokens, logits = greedy_with_decode(tiny, prompt, 300)
    full = full_logits(tiny, torch.cat([prompt, tokens], 1))[:, prompt.shape[1] - 1:-1]
    torch.testing.assert_close(logits, full, atol=1e-5, rtol=0)
    assert torch.equal(full.argmax(-1), tokens)


def test_the_ring_holds_the_last_window_positions_and_masks_the_rest():
    """A sliding layer's ring written one position at a time in place (`put`) holds the last W positions in
    slots p % W, and its mask shows a query exactly the slots written so far; a full layer's, positions 0..p."""
    from gemma3.cache import LayerCache

    ring = LayerCache(1, 1, W, 2, ring=True, device="cpu", dtype=torch.float32)
    full = LayerCache(1, 1, 40, 2, ring=False, device="cpu", dtype=torch.float32)
    prompt = torch.arange(3.).view(1, 1, 3, 1).expand(1, 1, 3, 2)  # a prompt of 3 positions, keys = positions
    for layer in (ring, full):
        layer.write(prompt, torch.zeros(1, 1, 3, 2), 0)
    for p in range(3, 30):
        pos = torch.tensor([p])
        for layer in (ring, full):
            layer.put(torch.full((1, 1, 1, 2), float(p)), torch.zeros(1, 1, 1, 2), pos)
        newest = torch.tensor([p - (p - s) % W for s in range(W)])  # the newest position of each slot
        written = newest >= 0
        assert torch.equal(ring.k[0, 0, written, 0], newest[written].float())
        assert torch.equal(ring.mask(pos)[0], written)
        assert torch.equal(full.k[0, 0, :p + 1, 0], torch.arange(p + 1.))
        assert torch.equal(full.mask(pos)[0], torch.arange(40) <= p)


def test_the_compiled_decode_step_gives_the_eager_tokens(tiny):
    """torch.compile of the fixed-shape step traces as one graph (no break, the cache written in place through
    functionalisation) and decodes the same greedy tokens, with logits equal to eager's. Inductor's code
    itself (13 s to build here) is checked on the GPU, with the graphs: tests/test_cuda.py."""
    prompt = random_ids(1, 5, seed=22)
    eager_tokens, eager_logits = greedy_with_decode(tiny, prompt, 12)
    compiled = torch.compile(tiny.decode, fullgraph=True, backend="aot_eager")
    tokens, logits = greedy_with_decode(tiny, prompt, 12, step=compiled)
    assert torch.equal(tokens, eager_tokens)
    torch.testing.assert_close(logits, eager_logits, atol=1e-5, rtol=1e-5)


def test_generations_of_other_lengths_reuse_the_compiled_step(tiny, monkeypatch):
    """generate_tokens makes its cache in a few lengths (powers of two from 256), the one shape of the step that
    follows the generation's length, so a compiled fixed-shape step (a GPU's compile mode) traces once for
    prompts and lengths that differ, where a minute of compiling for every new prompt length would follow."""
    import gemma3
    from torch._dynamo.testing import CompileCounter

    lengths = []
    new_cache = tiny.new_cache
    monkeypatch.setattr(tiny, "new_cache", lambda batch, max_len: lengths.append(max_len) or new_cache(batch, max_len))
    runs = [(5, 10), (40, 30), (3, 200)]
    for n, new in runs:
        list(gemma3.generate_tokens(tiny, random_ids(1, n, seed=n)[0].tolist(), max_new_tokens=new, temperature=0))
    assert lengths == [256] * 3
    counter = CompileCounter()
    compiled = torch.compile(tiny.decode, fullgraph=True, backend=counter)
    for (n, new), max_len in zip(runs, lengths):
        greedy_with_decode(tiny, random_ids(1, n, seed=n), min(new, 12), step=compiled, max_len=max_len)
    assert counter.frame_count == 1


def test_a_worker_thread_can_run_the_compiled_gpu_step():
    """torch.compile's CUDA graphs keep per-thread state that only the thread importing them first gets (PyTorch
    issue 123177); the web app's tokens come from worker threads, so the compiled decode mode prepares each
    thread's (gemma3/runtime/graphs.py): a fresh thread then finds its graphs' container. The GPU test runs it."""
    import threading

    from torch._inductor import cudagraph_trees as trees

    from gemma3.runtime import graphs

    errors = []

    def worker():
        try:
            graphs.graph_trees_ready()
            trees.get_container(0)
        except Exception as e:  # noqa: BLE001  (reported below)
            errors.append(e)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert not errors, errors
