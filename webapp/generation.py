"""Generation for the app: the settings' ranges and checks, a stream that yields every few tokens, and the story
as the page shows it (the prompt, then the continuation; once done, each new token coloured by its probability)."""

from __future__ import annotations

import html
import math
import re
import secrets
import time
from dataclasses import dataclass, replace

import torch

import gemma3

from .inputs import number, text

# (low, high, default): the sliders use these ranges, and values sent through the API are held to them
MAX_NEW_TOKENS = (1, 1000, 200)
TEMPERATURE = (0.0, 2.0, 0.7)
TOP_K = (0, 500, 0)           # 0 = off
TOP_P = (0.05, 1.0, 1.0)      # 1 = off
REPETITION_PENALTY = (0.5, 2.0, 1.0)
SEED_MAX = 2**31 - 1          # -1 = random
PROMPT_SHOWN = 600            # characters of a long prompt the story shows (its end)
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


def with_seed(s: Settings) -> Settings:
    """`s` with its seed drawn where it asks for a random one ("random" differs on every call), so that the page
    can name the seed of a story it stops; a greedy story (temperature 0) draws nothing, so it has none."""
    if s.temperature < gemma3.generation.GREEDY_BELOW:
        return replace(s, seed=None)
    return s if s.seed is not None else replace(s, seed=secrets.randbelow(SEED_MAX + 1))


def stream(loaded, s: Settings, stats: dict):
    """Yield "" at once (the story has begun: its prompt can show before the prefill ends), then the text so far
    every few tokens (and at the end, if it grew since); fills `stats` as gemma3.stream does.

    `loaded`: the session's webapp.models.LoadedModel. Its read lock is held only while a token is computed, so
    recording a prompt for Explore on the same model waits at most one step; loading another model takes no
    lock at all. Closing this generator (Stop) closes gemma3's, which frees the KV cache at once.
    """
    model, tokenizer, info = loaded.model, loaded.tokenizer, loaded.info
    s = with_seed(s)
    stats.update(model=info.name, seed=s.seed)
    pieces = gemma3.stream(model, tokenizer, s.prompt, s.max_new_tokens, s.temperature, s.top_k, s.top_p,
                           s.repetition_penalty, s.seed, stats=stats)
    out, pending, last = "", 0, time.monotonic()
    with loaded.stream_slot():
        try:
            yield out
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
            f" · {'greedy' if stats.get('seed') is None else 'seed ' + str(stats['seed'])} · {stats.get('model', '')}")
    if stats.get("notice"):
        line += f"  \n{stats['notice']}"
    return line


# ---- the story as the page shows it --------------------------------------------------------------
EMPTY_STORY = '<div class="story-view story-empty">Your story appears here: the prompt, then what the model writes.</div>'


@torch.inference_mode()
def token_pieces(loaded, stats: dict, with_ids: bool = False) -> list[tuple]:
    """(text, probability) of every new token of the generation `stats` describes (gemma3.stream's ids), from
    one forward pass over prompt + story on the model itself: the probability the model gave that token at
    temperature 1, before any sampling setting. Tokens that only together make whole characters are one piece
    (their probabilities multiplied); the pieces join to the continuation exactly. With `with_ids`, each piece is
    (text, probability, the id of its first token)."""
    ids, new = list(stats.get("ids") or []), list(stats.get("new_ids") or [])
    if not new:
        return []
    model, tokenizer = loaded.model, loaded.tokenizer
    # the last new token is never fed back (it may sit one past the context): predicting it needs no more
    run = torch.tensor([(ids + new)[:-1]], device=model.embed.weight.device)
    with loaded.reading():
        logits = model(run)[0, len(ids) - 1:].float()
    probs = logits.softmax(-1).gather(-1, torch.tensor(new, device=logits.device)[:, None])[:, 0].tolist()
    pieces, start, before = [], 0, ""
    for i in range(len(new)):
        text = tokenizer.decode(new[: i + 1])
        if text.endswith("\ufffd") and i + 1 < len(new):
            continue   # an incomplete character: its bytes continue in the next token
        text = text.rstrip("\ufffd")
        piece = (text[len(before):], math.prod(probs[start: i + 1]))
        pieces.append((*piece, new[start]) if with_ids else piece)
        before, start = text, i + 1
    return pieces


def probability_color(p: float) -> str:
    """A light background from red (the model found the token unlikely) through yellow to green (likely)."""
    return f"hsl({120 * min(max(p, 0.0), 1.0):.0f}, 85%, 82%)"


def story_html(prompt: str, continuation: str, pieces: list[tuple[str, float]] | None = None) -> str:
    """The prompt (bold; a long one by its last PROMPT_SHOWN characters, so the story starts near the top), then
    the continuation: plain while it streams; with `pieces`, one clickable span per token, coloured by its
    probability (hover shows it)."""
    head = f'<span class="story-prompt">{html.escape(prompt)}</span>'
    if len(prompt) > PROMPT_SHOWN:
        tail = prompt[-PROMPT_SHOWN:]
        tail = tail[tail.find(" ") + 1:] if " " in tail[:40] else tail   # from a word's start
        head = (f'<span class="story-prompt" title="the prompt\'s first {len(prompt) - len(tail):,} characters are '
                f'not shown">…{html.escape(tail)}</span>')
    if pieces is None:
        body = html.escape(continuation)
    else:
        body = "".join(f'<span class="tok" data-i="{i}" style="background:{probability_color(p)}" '
                       f'title="p = {p:.1%} (at temperature 1, before any setting): click to look inside at this '
                       f'point">{html.escape(t)}</span>'
                       for i, (t, p, *_) in enumerate(pieces))
    legend = ('<div class="story-legend">Each new token is coloured by the probability the model gave it '
              '(temperature 1): <span style="background:hsl(0,85%,82%)">unlikely</span> '
              '<span style="background:hsl(60,85%,82%)">so-so</span> '
              '<span style="background:hsl(120,85%,82%)">likely</span>. Click a token to look inside the model at '
              'that point.</div>') if pieces else ""
    return f'<div class="story-view">{head}<span class="story-new">{body}</span></div>{legend}'


def story_text(shown: str) -> str:
    """The plain text of story_html's output: prompt and continuation (what a reader sees, without the legend)."""
    view = re.sub(r'<div class="story-legend">.*?</div>', "", shown or "", flags=re.S)
    return html.unescape(re.sub(r"<[^>]+>", "", view))


def continuation_text(shown: str) -> str:
    """The continuation alone, from story_html's output."""
    m = re.search(r'<span class="story-new">(.*)</span></div>', shown or "", flags=re.S)
    return html.unescape(re.sub(r"<[^>]+>", "", m.group(1))) if m else ""


def text_before(story: dict, index) -> str:
    """The prompt and the continuation up to (not including) piece `index` of `story` ({"prompt", "pieces"}):
    the text after which the model chose that token."""
    pieces = story.get("pieces") or []
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(pieces):
        raise ValueError("That token is not part of the last story; generate one and click one of its tokens.")
    return story["prompt"] + "".join(pieces[:index])


def story_state(s: Settings, pieces: list[tuple], info=None) -> dict:
    """What a click on a finished story's token needs (`pieces`: token_pieces(..., with_ids=True)): the text, the
    pieces, the id each piece starts with, the sampling settings it was drawn with and the model that wrote it
    (`info`, a webapp.models.ModelInfo: its source and name)."""
    return {"prompt": s.prompt, "pieces": [t for t, *_ in pieces], "ids": [i for *_, i in pieces],
            "sampling": [s.temperature, s.top_k or 0, s.top_p or 1.0, s.repetition_penalty],
            "source": getattr(info, "source", None), "model": getattr(info, "name", None)}


def clicked_token(story: dict, index) -> tuple[str, dict, list]:
    """(text before it, {"prompt", "id"} of the token drawn there, the story's [temperature, top-k, top-p,
    repetition penalty]) for a click on piece `index` of a story_state."""
    before = text_before(story, index)
    return before, {"prompt": before, "id": story["ids"][index]}, story["sampling"]
