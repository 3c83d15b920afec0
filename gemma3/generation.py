"""Cached generation: one prefill, then one token at a time through a preallocated KVCache.

`generate_tokens` yields token ids; `stream` turns them into text pieces that are always whole
UTF-8 characters and never show a stop string; `generate` joins the pieces.

The forward passes run through a decoder: the model's own forward here (`reference_decoder`); a faster one
is applied from outside with `use_decoder` (gemma3/__init__.py installs the engine's, gemma3/runtime/engine).
"""

from __future__ import annotations

import math
import numbers
import time
import warnings
from contextlib import nullcontext
from typing import Iterator

import torch

GREEDY_BELOW = 1e-5  # a temperature below this (0 included) picks the most likely token: dividing by it could overflow


def reference_decoder(model, use_engine: bool = True):
    """The forward generate_tokens calls, as f(ids, cache, last_only): the model's own; `with f.step():` wraps
    each decoded token (forward and sampling), here doing nothing."""
    def f(ids, cache, last_only=False):
        return model(ids, cache=cache, last_only=last_only)

    f.step = nullcontext
    return f


_decoder = reference_decoder


def use_decoder(make):
    """Make generate_tokens's forward with `make(model, use_engine)` from now on; it takes reference_decoder's
    form (f(ids, cache, last_only) with f.step()), and runs the model's own forward when use_engine is False."""
    global _decoder
    _decoder = make


def _finite(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def check_settings(max_new_tokens, temperature, top_k, top_p, repetition_penalty):
    """Raise ValueError with one clear sentence for settings that cannot be sampled with."""
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a whole number of at least 1, not {max_new_tokens!r}.")
    if not _finite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be 0 or a positive number (below {GREEDY_BELOW:g} it is greedy), "
                         f"not {temperature!r}.")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be a whole number of at least 1 (or None for no limit), not {top_k!r}.")
    if top_p is not None and not (_finite(top_p) and 0 < top_p <= 1):
        raise ValueError(f"top_p must be in (0, 1] (or None for no limit), not {top_p!r}.")
    if not _finite(repetition_penalty) or repetition_penalty <= 0:
        raise ValueError(f"repetition_penalty must be a positive number (1.0 = off), not {repetition_penalty!r}.")


def penalise(logits: torch.Tensor, repetition_penalty: float, seen: torch.Tensor | None) -> torch.Tensor:
    """fp32 logits with the repetition penalty applied where `seen` (a bool mask like logits) is true."""
    logits = logits.float()
    if repetition_penalty != 1.0 and seen is not None:
        penalised = torch.where(logits > 0, logits / repetition_penalty, logits * repetition_penalty)
        big = torch.finfo(logits.dtype).max  # an extreme penalty saturates there instead of reaching infinity
        logits = torch.where(seen, penalised.clamp(-big, big), logits)
    return logits


def sampling_probs(logits: torch.Tensor, temperature: float, top_k=None, top_p=None, repetition_penalty=1.0,
                   seen: torch.Tensor | None = None) -> torch.Tensor:
    """The distribution next_token draws from, for logits [..., V] (Hugging Face's semantics, but for ties): below
    GREEDY_BELOW all of it on the most likely token; top-k keeps exactly k tokens and top-p the fewest that reach p,
    tokens of equal logits (common in bf16) ranked by id as argmax ranks them, so top-k 1 is greedy (Hugging Face
    keeps every token tied with the k-th). No setting that check_settings passes makes it NaN."""
    logits = penalise(logits, repetition_penalty, seen)
    if temperature < GREEDY_BELOW:
        return torch.zeros_like(logits).scatter(-1, logits.argmax(-1, keepdim=True), 1.0)
    logits = logits - logits.amax(dim=-1, keepdim=True)  # the largest logit is 0, so no quotient overflows
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        tied = logits == kth   # of the tokens tied with the k-th, the lowest ids fill the k places
        keep = (logits > kth) | (tied & (tied.cumsum(-1) <= top_k - (logits > kth).sum(-1, keepdim=True)))
        logits = logits.masked_fill(~keep, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True, stable=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # drop a token when the tokens ranked above it already reach top_p (the first always stays)
        drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits.softmax(dim=-1)


def next_token(logits: torch.Tensor, temperature: float, top_k=None, top_p=None, repetition_penalty=1.0,
               seen: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick the next token for each row of logits [B, V] from sampling_probs (greedy: the argmax itself)."""
    if temperature < GREEDY_BELOW:
        return penalise(logits, repetition_penalty, seen).argmax(dim=-1)
    probs = sampling_probs(logits, temperature, top_k, top_p, repetition_penalty, seen)
    return draw(probs, generator)


def draw(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One index per row of probs [B, V], index i with probability probs[i]: the largest probs / q, each q drawn
    from the exponential distribution. This is how torch.multinomial draws one sample (the same draws for the same
    generator), without its checks of probs, which wait for the GPU twice a token."""
    q = torch.empty_like(probs).exponential_(1, generator=generator)
    return (probs / q).argmax(dim=-1)


def fit_prompt(ids: list[int], max_new_tokens: int, context: int) -> tuple[list[int], str | None]:
    """Cut a prompt that leaves no room in the context, keeping its last tokens; say so."""
    if len(ids) + max_new_tokens <= context:
        return ids, None
    keep = max(context - max_new_tokens, context // 2)
    if keep >= len(ids):
        return ids, None
    notice = (f"The prompt has {len(ids)} tokens, more than fit in the model's context of {context} "
              f"with {max_new_tokens} new tokens; only its last {keep} tokens were used.")
    return ids[-keep:], notice


def cache_length(needed: int, context: int) -> int:
    """The cache's length for a generation that needs `needed` positions: the power of two at or above it, 256 at
    least, the context at most. The fixed-shape decode step on a GPU attends over every slot of a full layer's
    cache, so the cache's length is a shape of its CUDA graph or compiled step (gemma3/runtime/graphs.py): with
    lengths in a few sizes, a compiled step compiles a few times in a process, not once per prompt length."""
    return min(max(256, 1 << (needed - 1).bit_length()), context)


@torch.inference_mode()
def generate_tokens(model, ids: list[int], max_new_tokens: int = 200, temperature: float = 0.7,
                    top_k=None, top_p=None, repetition_penalty: float = 1.0, seed=None,
                    stop_ids=(), stats: dict | None = None, use_engine: bool = True) -> Iterator[int]:
    """Yield new token ids after the prompt `ids` until a stop id, max_new_tokens or the context end.

    The forward passes run on the installed decoder (use_decoder: the engine where it applies, the same
    logits, faster on a CPU), else on the model itself; `use_engine=False` always runs the reference model."""
    check_settings(max_new_tokens, temperature, top_k, top_p, repetition_penalty)
    if not ids:
        raise ValueError("The prompt is empty after tokenisation; give at least one token.")
    stats = stats if stats is not None else {}
    device = model.embed.weight.device
    context = model.config.context
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    cache = model.new_cache(1, cache_length(len(ids) + max_new_tokens, context))
    seen = torch.zeros(1, model.config.vocab_size, dtype=torch.bool, device=device)
    seen[0, ids] = True
    stats.update(prompt_tokens=len(ids), new_tokens=0, stop_reason="length")
    forward = _decoder(model, use_engine)
    t0 = time.perf_counter()
    logits = forward(torch.tensor([ids], device=device), cache, last_only=True)[:, -1]
    if not torch.isfinite(logits).all():
        raise ValueError("The model's output is not a number (NaN or infinity): its weights are broken; "
                         "load another model or checkpoint.")
    token = next_token(logits, temperature, top_k, top_p, repetition_penalty, seen, generator)
    tok = int(token)
    stats["prefill_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    try:  # the timings are filled however the generation ends, a caller's close() included (a stop string)
        for i in range(max_new_tokens):
            if i:
                tok = int(token)
            if tok in stop_ids:
                stats["stop_reason"] = "end of text"
                break
            stats["new_tokens"] = i + 1
            yield tok
            if i + 1 == max_new_tokens:
                break
            if cache.pos >= cache.max_len:
                stats["stop_reason"] = "length" if cache.max_len < context else "context"
                break
            seen[0, tok] = True
            with forward.step():  # e.g. the token's threads (the engine's decoder)
                logits = forward(token.view(1, 1), cache)[:, -1]
                token = next_token(logits, temperature, top_k, top_p, repetition_penalty, seen, generator)
    finally:
        stats["decode_s"] = time.perf_counter() - t0
        # the first new token comes from the prefill; the decode time covers the forwards of the others
        decoded = stats["new_tokens"] - 1
        stats["tokens_per_s"] = decoded / stats["decode_s"] if decoded > 0 and stats["decode_s"] > 0 else 0.0


def stream(model, tokenizer, prompt: str, max_new_tokens: int = 200, temperature: float = 0.7, top_k=None,
           top_p=None, repetition_penalty: float = 1.0, seed=None, stop: list[str] | None = None,
           stats: dict | None = None) -> Iterator[str]:
    """Yield the generated text in pieces, each made of whole characters.

    A character whose bytes span several tokens is held back until complete (decoded text
    ending in U+FFFD; one left incomplete at the end is dropped), and text that could be the start of a stop string is held back until
    it is clear it is not one. `stats` (a dict, optional) receives counts, timings and notices, and the token ids:
    "ids" (the prompt as run, BOS included) and "new_ids" (every new token so far).
    """
    check_settings(max_new_tokens, temperature, top_k, top_p, repetition_penalty)
    if not isinstance(prompt, str):
        raise ValueError("The prompt must be text.")
    stop = [s for s in (stop or []) if s]
    ids = tokenizer.encode(prompt)
    if tokenizer.bos_id is not None:
        ids = [tokenizer.bos_id] + ids
    elif not ids:
        ids = [tokenizer.eot_id]  # GPT-2 style: a story starts after an end-of-text token
    ids, notice = fit_prompt(ids, max_new_tokens, model.config.context)
    stats = stats if stats is not None else {}
    stats["notice"] = notice
    if notice:
        warnings.warn(notice, stacklevel=2)

    new: list[int] = []
    stats.update(ids=ids, new_ids=new)  # the prompt's ids as run, and the new ids (filled as they come)
    emitted = ""
    tokens = generate_tokens(model, ids, max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed,
                             tokenizer.stop_ids, stats)
    for tok in tokens:
        new.append(tok)
        text = tokenizer.decode(new).rstrip("\ufffd")  # an incomplete character waits for its bytes
        cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
        if cut >= 0:
            stats["stop_reason"] = "stop string"
            if cut > len(emitted):
                yield text[len(emitted):cut]
            tokens.close()
            return
        safe = len(text) - _partial_stop(text, stop)
        if safe > len(emitted):
            yield text[len(emitted):safe]
            emitted = text[:safe]
    text = tokenizer.decode(new).rstrip("\ufffd")
    if len(text) > len(emitted):
        yield text[len(emitted):]


def _partial_stop(text: str, stop: list[str]) -> int:
    """Length of the longest end of `text` that is the beginning of a stop string."""
    longest = 0
    for s in stop:
        for n in range(min(len(s) - 1, len(text)), longest, -1):
            if text.endswith(s[:n]):
                longest = n
                break
    return longest


def generate(model, tokenizer, prompt: str, max_new_tokens: int = 200, temperature: float = 0.7, top_k=None,
             top_p=None, repetition_penalty: float = 1.0, seed=None, stop: list[str] | None = None,
             stats: dict | None = None) -> str:
    """The generated continuation of `prompt` (without the prompt)."""
    return "".join(stream(model, tokenizer, prompt, max_new_tokens, temperature, top_k, top_p,
                          repetition_penalty, seed, stop, stats))
