"""Attention you can read word to word: the data of two BertViz-style views of one layer, from a recording.

    att = layer_attention(rec, layer=3)       # the layer's probabilities over the prompt's tokens, 3 decimals
    lines(att, head=1)                        # (head, query, key, weight) of every line the lines view draws
    head_map_png(rec, layer=3, head=1)        # the small map of one head for the heads grid (PNG bytes)

The lines view ("head view") puts the tokens in two columns, queries left and keys right, and draws a line
from each query to the keys it attends to, as strong as the weight. The heads grid ("model view" of one layer)
shows every head of the layer as a small attention map. Nothing is re-derived: the weights are the recording's
own `attn_probs` (softmax(q k^T * scale + mask), as the model computed them), rounded to DECIMALS.

To stay small in a page, the lines view shows at most MAX_TOKENS tokens (the prompt's last ones, where the
next token is predicted) and at most MAX_LINES lines (each query's strongest keys); `LayerAttention.note` and
`Lines.note` say in words what was left out. The small maps show every recorded token.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np
import torch

from gemma3.model import sliding_mask

from .hooks import Record

MAX_TOKENS = 128   # tokens the lines view shows, at most (the last ones)
MAX_LINES = 2000   # lines it draws, at most: each query keeps its strongest keys
DECIMALS = 3       # weights are sent rounded to this; a weight that rounds to 0 gets no line
MIN_MAP_PX = 160   # a small map is drawn at least this many pixels a side (whole pixels per token) when it can
# the small maps' colours: a weight w is drawn at sqrt(w) along the colorbrewer Blues (LEVELS shades), so that weak
# attention still shows in a thumbnail; hidden keys stay white, keys outside a sliding window are hatched grey
BLUES = ((247, 251, 255), (222, 235, 247), (198, 219, 239), (158, 202, 225), (107, 174, 214), (66, 146, 198),
         (33, 113, 181), (8, 81, 156), (8, 48, 107))
HIDDEN = (255, 255, 255)
HATCH = ((243, 244, 246), (176, 181, 189))   # background, stripe
# one colour per head, as BertViz does (Tableau 10), distinct from the SLIDING/FULL layer colours' meaning
HEAD_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
               "#17becf")


def head_color(head: int) -> str:
    return HEAD_COLORS[head % len(HEAD_COLORS)]


@dataclass(frozen=True)
class LayerAttention:
    """The attention of one layer over the shown tokens (the recording's last `n`)."""
    layer: int
    kind: str                 # "sliding" or "full"
    window: int | None        # keys a query sees on a sliding layer, itself included; None on a full layer
    tokens: list[str]         # the shown tokens' visible text (explain.hooks.show_token)
    first: int                # position in the recording of the first shown token
    total: int                # tokens recorded
    weights: np.ndarray       # [H, n, n] the recording's probabilities among the shown tokens, DECIMALS rounded

    @property
    def heads(self) -> int:
        return self.weights.shape[0]

    @property
    def n(self) -> int:
        return self.weights.shape[1]

    @property
    def positions(self) -> list[int]:
        return list(range(self.first, self.first + self.n))

    @property
    def window_bites(self) -> bool:
        """Whether the window hides any key of the recorded prompt (it has more tokens than the window)."""
        return self.window is not None and self.total > self.window

    @property
    def note(self) -> str | None:
        if not self.first:
            return None
        return (f"Showing the last {self.n} of the {self.total} tokens recorded; their attention to the "
                f"{self.first} earlier tokens is not drawn (the small maps show every token).")


def check_layer(record: Record, layer) -> int:
    L = record.layers
    if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < L:
        raise ValueError(f"layer must be a whole number from 0 to {L - 1}, not {layer!r}.")
    return layer


def check_head(record: Record, head) -> int | None:
    H = record.attn_probs[0].shape[0]
    if head is not None and (not isinstance(head, int) or isinstance(head, bool) or not 0 <= head < H):
        raise ValueError(f"head must be a whole number from 0 to {H - 1} (or None for all heads), not {head!r}.")
    return head


def layer_attention(record: Record, layer: int, max_tokens: int = MAX_TOKENS) -> LayerAttention:
    """The recording's attention probabilities of `layer` among its last `max_tokens` tokens."""
    layer = check_layer(record, layer)
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"max_tokens must be a whole number of at least 1, not {max_tokens!r}.")
    T = record.seq_len
    first = max(0, T - max_tokens)
    probs = record.attn_probs[layer][:, first:, first:].double().numpy()
    sliding = record.layer_types[layer] == "sliding"
    return LayerAttention(
        layer=layer, kind="sliding" if sliding else "full", window=record.config.window if sliding else None,
        tokens=[record.token_text[i] for i in record.tokens[first:]], first=first, total=T,
        weights=np.round(probs, DECIMALS))


def visible(att: LayerAttention) -> np.ndarray:
    """[n, n] bool: which keys the mask lets each shown query see (causal, and within the window if sliding)."""
    pos = torch.arange(att.first, att.first + att.n)
    return sliding_mask(pos, pos, att.window).numpy()


@dataclass(frozen=True)
class Lines:
    """The lines the lines view draws: rows of (head, query, key, weight), query and key as indices of the shown
    tokens; `per_query`: the most keys a query keeps per head; `left_out`: nonzero weights not drawn."""
    rows: list[tuple[int, int, int, float]]
    per_query: int
    left_out: int

    @property
    def note(self) -> str | None:
        if not self.left_out:
            return None
        return (f"Lines: each token's {self.per_query} strongest keys per head ({self.left_out:,} weaker weights "
                f"are not drawn).")


def lines(att: LayerAttention, head: int | None = None, max_lines: int = MAX_LINES) -> Lines:
    """Every line of the lines view: for `head` (None: every head), from each query to its keys of nonzero
    (rounded) weight, strongest first; when they pass `max_lines`, each query keeps its strongest
    max_lines // (heads x tokens) keys per head (at least 3)."""
    if head is not None and (not isinstance(head, int) or isinstance(head, bool) or not 0 <= head < att.heads):
        raise ValueError(f"head must be a whole number from 0 to {att.heads - 1} (or None), not {head!r}.")
    heads = [head] if head is not None else list(range(att.heads))
    nonzero = int((att.weights[heads] > 0).sum())
    per_query = att.n if nonzero <= max_lines else max(3, max_lines // (len(heads) * att.n))
    rows, left_out = [], 0
    for h in heads:
        for q in range(att.n):
            w = att.weights[h, q]
            keys = [k for k in np.argsort(-w, kind="stable") if w[k] > 0]
            left_out += max(0, len(keys) - per_query)
            rows.extend((h, q, int(k), float(w[k])) for k in keys[:per_query])
    return Lines(rows, min(per_query, att.n), left_out)


# ---- the small maps of the heads grid --------------------------------------------------------------
def map_pixels(tokens: int) -> int:
    """Pixels per token a side of a small map: whole pixels, at least MIN_MAP_PX in all when there are fewer
    tokens."""
    return max(1, -(-MIN_MAP_PX // tokens))


LEVELS = 64   # shades of Blues in a small map's palette


def _blues(x: np.ndarray) -> np.ndarray:
    """Colours along BLUES for x in [0, 1]: [..., 3] float."""
    stops = np.array(BLUES, dtype=np.float64)
    x = np.clip(x, 0, 1) * (len(stops) - 1)
    lo = np.clip(np.floor(x).astype(int), 0, len(stops) - 2)
    return stops[lo] + (stops[lo + 1] - stops[lo]) * (x - lo)[..., None]


def palette() -> np.ndarray:
    """[3 + LEVELS, 3] uint8: white (a later key), the two hatch colours, then the Blues for sqrt(weight) 0..1."""
    shades = _blues(np.linspace(0, 1, LEVELS))
    return np.vstack([np.array([HIDDEN, *HATCH], dtype=np.float64), shades]).round().astype(np.uint8)


def head_map_indices(record: Record, layer: int, head: int) -> np.ndarray:
    """[T s, T s] uint8 indices into palette(): the small map of `head` in `layer`, s = map_pixels(T) pixels a
    token; row i is query i, column j key j. Keys the model saw: Blues at sqrt(weight) (LEVELS shades); later keys:
    white; keys a sliding window hides (earlier than the window): hatched grey."""
    layer, head = check_layer(record, layer), check_head(record, head)
    probs = record.attn_probs[layer][head].double().numpy()
    T = probs.shape[0]
    pos = torch.arange(T)
    sliding = record.layer_types[layer] == "sliding"
    seen = sliding_mask(pos, pos, record.config.window if sliding else None).numpy()
    causal = sliding_mask(pos, pos, None).numpy()
    idx = 3 + np.round(np.sqrt(np.clip(probs, 0, 1)) * (LEVELS - 1)).astype(np.uint8)
    idx[~causal] = 0
    s = map_pixels(T)
    big = np.repeat(np.repeat(idx, s, axis=0), s, axis=1)
    outside = np.repeat(np.repeat(causal & ~seen, s, axis=0), s, axis=1)
    yy, xx = np.indices(outside.shape)
    stripe = (xx + yy) % 6 < 2
    big[outside & ~stripe] = 1
    big[outside & stripe] = 2
    return big


def head_map_rgb(record: Record, layer: int, head: int) -> np.ndarray:
    """[T s, T s, 3] uint8: the small map's pixels (see head_map_indices)."""
    return palette()[head_map_indices(record, layer, head)]


def png(indices: np.ndarray, colours: np.ndarray) -> bytes:
    """An [h, w] uint8 image of indices into `colours` ([n <= 256, 3] uint8) as PNG bytes (8-bit palette)."""
    h, w = indices.shape
    raw = b"".join(b"\x00" + indices[y].tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 3, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"PLTE", colours.astype(np.uint8).tobytes())
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def head_map_png(record: Record, layer: int, head: int) -> bytes:
    return png(head_map_indices(record, layer, head), palette())


def window_edge(tokens: int, window: int) -> str:
    """An SVG path, in token units (x: key, y: query), along the window's lower edge: in row i the keys left of
    i - window + 1 are hidden. Empty when the window hides nothing."""
    if tokens <= window:
        return ""
    steps = [f"M1 {window}"]
    for i in range(window, tokens):
        steps.append(f"V{i + 1}" + (f"H{i - window + 2}" if i + 1 < tokens else ""))
    return "".join(steps)
