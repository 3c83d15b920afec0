"""Generation for the app: the settings' ranges and checks, and a stream that yields every few tokens."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

import gemma3

from .inputs import number, text

# (low, high, default): the sliders use these ranges, and values sent through the API are held to them
MAX_NEW_TOKENS = (1, 1000, 200)
TEMPERATURE = (0.0, 2.0, 0.7)
TOP_K = (0, 500, 0)           # 0 = off
TOP_P = (0.05, 1.0, 1.0)      # 1 = off
REPETITION_PENALTY = (0.5, 2.0, 1.0)
SEED_MAX = 2**31 - 1          # -1 = random
EVERY_TOKENS = 4              # yield after this many new pieces ...
EVERY_SECONDS = 0.25          # ... or this long, whichever comes first


@dataclass(frozen=True)
class Settings:
    prompt: str
    max_new_tokens: int
    temperature: float
    top_k: int | None
    top_p: float | None
    repetition_penalty: float
    seed: int | None


def settings(prompt, max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed) -> Settings:
    """Check what the Generate tab (or an API client) sent; every problem is one UserError sentence."""
    prompt = text(prompt)
    n = number(max_new_tokens, "Max new tokens", *MAX_NEW_TOKENS[:2], integer=True)
    t = number(temperature, "Temperature", *TEMPERATURE[:2])
    k = number(top_k if top_k is not None else 0, "Top-k", *TOP_K[:2], integer=True)
    p = number(top_p if top_p is not None else 1.0, "Top-p", *TOP_P[:2])
    r = number(repetition_penalty, "Repetition penalty", *REPETITION_PENALTY[:2])
    s = number(seed if seed not in (None, "") else -1, "Seed", -1, SEED_MAX, integer=True)
    return Settings(prompt, n, t, k or None, p if p < 1 else None, r, None if s < 0 else s)


def stream(loaded, s: Settings, stats: dict):
    """Yield the text so far every few tokens (and at the end, if it grew since); fills `stats` as gemma3.stream does.

    `loaded`: the session's webapp.models.LoadedModel. Its read lock is held only while a token is computed, so
    recording a prompt for Explore on the same model waits at most one step; loading another model takes no
    lock at all. Closing this generator (Stop) closes gemma3's, which frees the KV cache at once.
    """
    model, tokenizer, info = loaded.model, loaded.tokenizer, loaded.info
    seed = s.seed if s.seed is not None else secrets.randbelow(SEED_MAX + 1)  # "random" differs on every call
    stats.update(model=info.name, seed=seed)
    pieces = gemma3.stream(model, tokenizer, s.prompt, s.max_new_tokens, s.temperature, s.top_k, s.top_p,
                           s.repetition_penalty, seed, stats=stats)
    out, pending, last = "", 0, time.monotonic()
    with loaded.stream_slot():
        try:
            while True:
                with loaded.reading():
                    piece = next(pieces, None)
                if piece is None:
                    break
                out += piece
                pending += 1
                if pending >= EVERY_TOKENS or time.monotonic() - last >= EVERY_SECONDS:
                    yield out
                    pending, last = 0, time.monotonic()
        finally:
            pieces.close()
    if pending:
        yield out


def summary(stats: dict) -> str:
    """'123 tokens, 45.6 tokens/s, prefill 12 ms · stopped on end of text · seed 42 · model' plus any notice."""
    n = stats.get("new_tokens", 0)
    line = (f"{n} token{'s' if n != 1 else ''}, {stats.get('tokens_per_s', 0.0):.1f} tokens/s, "
            f"prefill {stats.get('prefill_s', 0.0) * 1000:.0f} ms · stopped on {stats.get('stop_reason', 'length')}"
            f" · seed {stats.get('seed')} · {stats.get('model', '')}")
    if stats.get("notice"):
        line += f"  \n{stats['notice']}"
    return line
