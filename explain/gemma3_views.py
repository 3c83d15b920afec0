"""What is special about Gemma 3, each shown live on a recorded prompt: pure functions -> (Figure, text).

Seven topics (TOPICS): multi-query attention and what it saves in the KV cache, the q/k RMSNorm, RoPE's two
bases, sliding against full attention, the GeGLU feed-forward, the norms before and after every sub-layer, and
the embedding scale with the tied head. Each `<topic>_view(...)` returns a plotly Figure and two or three plain
sentences (markdown) with the numbers of the loaded model filled in.

Everything drawn is a stage the model computed (explain.hooks records them with hooks), or is computed from
recorded stages with the model's own pieces: its RoPE modules (`model.rope_local` / `model.rope_global`), its
final norm and its embedding. Where a view recomputes something the model also computed (the attention logits
after the q/k norm, GELU(gate) x up, the logits as similarities), tests/test_gemma3_views.py checks it equals
the recorded stage.
"""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
import torch
import torch.nn.functional as F
from plotly.subplots import make_subplots

from gemma3.model import RoPE, sliding_mask

# The colours: SLIDING / FULL only ever mean a sliding or a full layer; ATTN / FFN a layer's attention and its
# feed-forward part (explain.figures). No panel is taller than MAX_HEIGHT: a 1440 x 1000 screen shows it whole.
from . import phone
from .figures import ATTN, FFN, FULL, INK, SLIDING, TEAL, _f32, _html, _title
from .figures import MAX_HEIGHT as HEIGHT
from .figures import _style as _app_style
from .hooks import Record

GREY = "#6b7280"      # a grey that stays visible on the template's white (figures.GREY is lighter)
ZERO = "#f4b183"      # cells whose recorded attention probability is exactly 0
FFN_UNITS = 48        # feed-forward units shown in the GeGLU heatmaps (evenly spaced)
GATE_BINS = 80        # bars of the gate histogram
NEAR_ZERO = 0.1       # GELU(gate) counts as near zero below this fraction of its RMS in the layer
TOP_LOGITS = 10       # bars in the tied-head panel

TOPICS = {  # key -> the label a reader picks it by
    "mqa": "Multi-query attention",
    "qk_norm": "q/k norm",
    "rope": "RoPE's two bases",
    "sliding": "Sliding vs full",
    "geglu": "GeGLU",
    "norms": "Pre- and post-norms",
    "embedding": "Embedding scale, tied head",
}
USES = {  # which of layer / head each topic reads (the page shows only those controls)
    "mqa": ("layer",), "qk_norm": ("layer", "head"), "rope": (), "sliding": ("layer", "head"),
    "geglu": ("layer",), "norms": (), "embedding": (),
}


# ---- checks and small helpers --------------------------------------------------------------------
def _layer(record: Record, layer) -> int:
    L = record.layers
    if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < L:
        raise ValueError(f"layer must be a whole number from 0 to {L - 1}, not {layer!r}.")
    return layer


def _head(record: Record, head, allow_all: bool = False):
    H = record.config.heads
    if head is None and allow_all:
        return None
    if not isinstance(head, int) or isinstance(head, bool) or not 0 <= head < H:
        also = " (or None for the mean of all heads)" if allow_all else ""
        raise ValueError(f"head must be a whole number from 0 to {H - 1}{also}, not {head!r}.")
    return head


def _kv_head(config, head: int) -> int:
    """The key/value head query head `head` reads (heads are grouped in order, as repeat_interleave does)."""
    return head // (config.heads // config.kv_heads)


def _rope(model, record: Record, layer: int) -> RoPE:
    return model.rope_local if record.layer_types[layer] == "sliding" else model.rope_global


def _rotate(rope: RoPE, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """x [N, D] rotated to `positions` [N] by the model's own RoPE code, in fp32."""
    cos, sin = rope(positions.to(rope.inv_freq.device), torch.float32)
    return RoPE.rotate(x.float().to(cos.device), cos, sin).cpu()


def _rms(x: torch.Tensor) -> torch.Tensor:
    """RMS over the last dimension, fp32."""
    return x.float().pow(2).mean(-1).sqrt()


def _kind(record: Record, layer: int) -> str:
    return "sliding" if record.layer_types[layer] == "sliding" else "full"


def _bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:,.0f} bytes"


def _count(layer_types: list[str], kind: str) -> str:
    n = layer_types.count(kind)
    return f"{n} {kind} layer{'s' if n != 1 else ''}"


def _token(record: Record, pos: int) -> str:
    return record.token_text[record.tokens[pos]]


def _style(fig: go.Figure, title: str, detail: str, height: int = 680, phone_cols: int = 1) -> go.Figure:
    """A short title that says what to look for, with its detail on a second, smaller line (both stay within a
    narrow plot), the height (at most HEIGHT), and the app's Plotly template (explain.figures._style); on a phone
    side-by-side panels stand in `phone_cols` columns (explain.phone.stack)."""
    fig.update_layout(title=_title(title, detail), height=min(height, HEIGHT))
    return phone.stack(_app_style(fig), cols=phone_cols)


def log_ticks(values) -> dict:
    """Axis settings for a log axis over `values`: ticks only at 1, 2 and 5 x 10^k (1 x 10^k alone over more than
    four decades), written plainly. Plotly's own log ticks label every digit of a decade, and they overlap."""
    v = np.asarray([float(x) for x in np.ravel(values) if np.isfinite(x) and x > 0])
    if not len(v):
        return dict(type="log")
    lo, hi = math.floor(math.log10(v.min())), math.ceil(math.log10(v.max()))
    steps = (1,) if hi - lo > 4 else (1, 2, 5)
    ticks = [m * 10.0 ** e for e in range(lo, hi + 1) for m in steps]
    inside = [t for t in ticks if v.min() / 1.5 <= t <= v.max() * 1.5]
    if len(inside) < 2:   # a narrow range: its ends, to two figures
        inside = sorted({float(f"{v.min():.2g}"), float(f"{v.max():.2g}")})
    return dict(type="log", tickmode="array", tickvals=inside, ticktext=[_plain(t) for t in inside])


def _plain(x: float) -> str:
    """0.05, 2, 500, 10k, 1M: a tick label."""
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if x >= size:
            return f"{x / size:g}{unit}"
    return f"{x:g}"


# ---- multi-query attention -----------------------------------------------------------------------
def kv_bytes_per_token(config, kv_heads: int | None = None, dtype_bytes: int = 2) -> int:
    """Bytes one token's keys and values take in the cache, every layer keeping it:
    2 (K and V) x layers x kv_heads x head_dim x bytes per number."""
    kv = config.kv_heads if kv_heads is None else kv_heads
    return 2 * config.layers * kv * config.head_dim * dtype_bytes


def kv_cache_bytes(config, tokens: int, kv_heads: int | None = None, dtype_bytes: int = 2,
                   ring: bool = True) -> int:
    """Bytes of a KV cache holding `tokens` tokens: full layers keep every token, sliding layers (ring=True)
    a ring of the last `window` slots, as gemma3.cache.KVCache allocates them."""
    kv = config.kv_heads if kv_heads is None else kv_heads
    slots = sum(min(tokens, config.window) if t == "sliding" and ring else tokens for t in config.layer_types)
    return 2 * kv * config.head_dim * dtype_bytes * slots


def mqa_view(record: Record, layer: int, dtype_bytes: int | None = None) -> tuple[go.Figure, str]:
    """Every query head's attention in `layer` side by side, and the KV cache this sharing saves."""
    layer = _layer(record, layer)
    cfg = record.config
    H, KV = cfg.heads, cfg.kv_heads
    size = dtype_bytes or record.stage("k", layer).element_size()
    probs = record.stage("attn_probs", layer).float()
    T = probs.shape[-1]
    pos = torch.arange(T)
    visible = sliding_mask(pos, pos, cfg.window if record.layer_types[layer] == "sliding" else None)
    z = _f32(probs.masked_fill(~visible, float("nan")))
    fig = make_subplots(rows=2, cols=H, row_heights=[0.55, 0.45], vertical_spacing=0.17, horizontal_spacing=0.02,
                        specs=[[{}] * H, [{"colspan": H}] + [None] * (H - 1)],
                        subplot_titles=[f"head {h} → K/V {_kv_head(cfg, h)}" for h in range(H)]
                        + ["KV cache size by tokens held"])
    for h in range(H):
        fig.add_trace(go.Heatmap(z=z[h], x=pos.numpy(), y=pos.numpy(), coloraxis="coloraxis", name=f"head {h}",
                                 hovertemplate="query %{y}, key %{x}: %{z:.3f}<extra>head " + str(h) + "</extra>"),
                      row=1, col=h + 1)
        fig.update_yaxes(autorange="reversed", showticklabels=h == 0, row=1, col=h + 1)
        fig.update_xaxes(title_text="key", row=1, col=h + 1)
    fig.update_yaxes(title_text="query", row=1, col=1)
    n = np.unique(np.linspace(1, cfg.context, 200).round().astype(int))
    lines = ((f"this model: {KV} K/V head{'s' if KV > 1 else ''}, sliding rings", KV, True, TEAL, "solid"),
             (f"one K/V per query head ({H}), sliding rings", H, True, GREY, "solid"),
             (f"{KV} K/V head{'s' if KV > 1 else ''}, no rings (every layer keeps all)", KV, False, TEAL, "dot"))
    top = 0.0
    for name, kv, ring, color, dash in lines:
        mb = [kv_cache_bytes(cfg, int(t), kv, size, ring) / 1e6 for t in n]
        top = max(top, *mb)
        fig.add_trace(go.Scatter(x=n, y=mb, mode="lines", name=name, line=dict(color=color, dash=dash),
                                 hovertemplate="%{x} tokens: %{y:.3g} MB<extra></extra>"), row=2, col=1)
    fig.update_xaxes(title_text="tokens in the cache", row=2, col=1)
    # the lines in the lower half or so: the legend's three rows above them, however narrow the plot (a phone)
    fig.update_yaxes(title_text="MB", range=[0, 1.8 * top], row=2, col=1)
    sp = fig.get_subplot(2, 1)
    fig.update_layout(coloraxis=dict(colorscale="Blues", cmin=0, colorbar=dict(
        title=dict(text="attention", side="right"), len=0.45, y=0.78, thickness=12)),
        plot_bgcolor="#f3f4f6",
        legend=dict(x=sp.xaxis.domain[0] + 0.01, y=sp.yaxis.domain[1] - 0.01, yanchor="top",
                    bgcolor="rgba(255,255,255,0.8)"))
    _style(fig, f"{H} query heads sharing {KV} key/value head{'s' if KV > 1 else ''}: different patterns, one cache",
           f"layer {layer} ({_kind(record, layer)}): each head's attention; below, the KV cache it needs", phone_cols=2)
    mine, per_head = kv_bytes_per_token(cfg, KV, size), kv_bytes_per_token(cfg, H, size)
    full_ctx = kv_cache_bytes(cfg, cfg.context, KV, size)
    shared = "the same keys and values" if KV == 1 else f"keys and values shared by {H // KV} heads each"
    text = (f"This model has **{H} query heads sharing {KV} key/value head{'s' if KV > 1 else ''}**: each head "
            f"computes its own pattern over your {T} tokens (top) from {shared}, so the cache keeps {KV} K and {KV} V "
            f"per token and layer instead of {H}. Per token that is 2 x {cfg.layers} layers x {KV} x {cfg.head_dim} x "
            f"{size} bytes = **{_bytes(mine)}**, against {_bytes(per_head)} with one K/V per head: "
            f"**{H // KV}x less**. The {cfg.layer_types.count('sliding')} sliding layers keep only a ring of their "
            f"last {cfg.window} tokens, so a full context of {cfg.context:,} tokens needs {_bytes(full_ctx)} "
            f"instead of {_bytes(mine * cfg.context)} (bottom). Look for heads that differ although they share "
            f"keys and values.")
    return fig, text


# ---- q/k norm ------------------------------------------------------------------------------------
def qk_logits(record: Record, model, layer: int, head: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention logits (q . k x scale, [T, T] fp32) of one head, with RoPE applied by the model's own RoPE to
    q and k as they were BEFORE the q/k RMSNorm, and AFTER it: only the norm differs. Masked keys are NaN."""
    layer, head = _layer(record, layer), _head(record, head)
    cfg = record.config
    kv = _kv_head(cfg, head)
    T = record.seq_len
    pos = torch.arange(T)
    rope, scale = _rope(model, record, layer), model.blocks[layer].attn.scale
    visible = sliding_mask(pos, pos, cfg.window if record.layer_types[layer] == "sliding" else None)
    out = []
    for q_name, k_name in (("q", "k"), ("q_norm", "k_norm")):
        q = _rotate(rope, record.stage(q_name, layer)[:, head], pos)
        k = _rotate(rope, record.stage(k_name, layer)[:, kv], pos)
        out.append(((q @ k.T) * scale).masked_fill(~visible, float("nan")))
    return out[0], out[1]


def qk_bound(model, layer: int) -> float:
    """The largest |logit| the q/k norm allows whatever the input: after an RMSNorm a vector of head_dim D
    has length at most sqrt(D) x max|1 + w|, so |q.k| x scale <= scale x D x max|1 + w_q| x max|1 + w_k|."""
    a = model.blocks[layer].attn
    wq = (1 + a.q_norm.weight.detach().float()).abs().max()
    wk = (1 + a.k_norm.weight.detach().float()).abs().max()
    return float(a.scale * a.head_dim * wq * wk)


def _spread(x: torch.Tensor) -> float:
    x = x[~x.isnan()]
    return float(x.max() - x.min())


def qk_norm_view(record: Record, model, layer: int, head: int) -> tuple[go.Figure, str]:
    """The attention logits of one head without and with the q/k RMSNorm, and the largest per query."""
    raw, normed = qk_logits(record, model, layer, head)
    bound = qk_bound(model, layer)
    T = record.seq_len
    pos = np.arange(T)
    fig = make_subplots(rows=2, cols=2, row_heights=[0.55, 0.45], vertical_spacing=0.17, horizontal_spacing=0.16,
                        specs=[[{}, {}], [{"colspan": 2}, None]],
                        subplot_titles=("without q/k norm", "with q/k norm (the model)",
                                        "largest |logit| of each query"))
    for col, (name, z) in enumerate((("without", raw), ("with", normed)), start=1):
        m = float(np.nanmax(np.abs(_f32(z)))) or 1.0
        sp = fig.get_subplot(1, col)
        fig.add_trace(go.Heatmap(
            z=_f32(z), x=pos, y=pos, colorscale="RdBu", zmid=0, zmin=-m, zmax=m, name=f"logits {name} norm",
            colorbar=dict(x=sp.xaxis.domain[1] + 0.01, len=0.5, y=0.78, thickness=10),
            hovertemplate="query %{y}, key %{x}: %{z:.3g}<extra>" + name + " norm</extra>"), row=1, col=col)
        fig.update_yaxes(autorange="reversed", title_text="query" if col == 1 else None, row=1, col=col)
        fig.update_xaxes(title_text="key", row=1, col=col)
    tops = []
    for name, z, color in (("without q/k norm", raw, GREY), ("with q/k norm", normed, TEAL)):
        tops.append(_f32(torch.nan_to_num(z.abs(), nan=0.0).amax(-1)))
        fig.add_trace(go.Scatter(x=pos, y=tops[-1], mode="lines+markers",
                                 marker=dict(size=4), name=name, line=dict(color=color),
                                 hovertemplate="query %{x}: %{y:.3g}<extra>" + name + "</extra>"), row=2, col=1)
    fig.add_trace(go.Scatter(x=[0, T - 1], y=[bound, bound], mode="lines", name="bound set by the norm weights",
                             line=dict(color=INK, dash="dash"), hoverinfo="skip"), row=2, col=1)
    fig.update_xaxes(title_text="query position", row=2, col=1)
    fig.update_yaxes(title_text="max |logit| (log)", **log_ticks(np.concatenate(tops + [[bound]])), row=2, col=1)
    fig.update_layout(plot_bgcolor="#f3f4f6", legend=dict(orientation="h", x=0, y=-0.12, yanchor="top"))
    _style(fig, "The q/k norm keeps every attention logit under its bound",
           f"layer {layer}, head {head}: q·k × scale without and with the norm, RoPE applied to both by the model's RoPE")
    cfg = record.config
    q_len = float(record.stage("q_norm", layer)[:, head].float().norm(dim=-1).mean())
    q_raw = float(record.stage("q", layer)[:, head].float().norm(dim=-1).mean())
    top_raw, top_normed = float(np.nanmax(np.abs(_f32(raw)))), float(np.nanmax(np.abs(_f32(normed))))
    text = (f"Gemma 3 normalises every query and key head (RMSNorm over its {cfg.head_dim} numbers) before RoPE. "
            f"Without the norm a logit grows with the lengths of q and k, which nothing limits (here the raw "
            f"queries have a mean length of {q_raw:.3g} and the largest |logit| is {top_raw:.3g}; were Wq and Wk "
            f"three times larger, as training can make them, it would be {9 * top_raw:.3g}). With the norm every "
            f"query has the length its norm weights give it ({q_len:.3g} here), whatever the input or Wq, so "
            f"|logit| ({top_normed:.3g} here) can never exceed scale x {cfg.head_dim} x max|1+w_q| x max|1+w_k| = "
            f"**{bound:.3g}** (dashed line, bottom): the logits no longer grow without limit as Wq and Wk grow; how "
            f"peaked a softmax can get is set by the learned norm weights. The two maps (top) each have "
            f"their own colour scale.")
    return fig, text


# ---- RoPE's two bases ----------------------------------------------------------------------------
def rope_pairs(model) -> dict:
    """The model's two RoPEs, pair by pair, read from its own RoPE modules (`inv_freq`, the angle per position,
    base^(-2i/head_dim), divided by the RoPE's scale): {"local", "global": [head_dim / 2] angles per position in
    radians, "local_wavelength", "global_wavelength": 2 pi / angle, the tokens one full turn takes}."""
    out = {}
    for name, rope in (("local", model.rope_local), ("global", model.rope_global)):
        theta = rope.inv_freq.detach().double().cpu()
        out[name], out[f"{name}_wavelength"] = theta, 2 * math.pi / theta
    return out


def window_pair(r: dict, window: int) -> int:
    """The pair whose turn under the local base is nearest the window in length: the one drawn turning."""
    return int(np.abs(np.log(r["local_wavelength"].numpy() / window)).argmin())


def rope_view(record: Record, model) -> tuple[go.Figure, str]:
    """Each dimension pair's wavelength under the local and the global base, with the window and the context
    marked; below, how three pairs turn as the position grows."""
    cfg = record.config
    r = rope_pairs(model)
    half, W, C, T = cfg.head_dim // 2, cfg.window, cfg.context, record.seq_len
    i, p = np.arange(half), window_pair(r, W)
    fig = make_subplots(rows=2, cols=1, row_heights=[0.56, 0.44], vertical_spacing=0.2,
                        subplot_titles=(f"one full turn of each of the {half} pairs, in tokens (log)",
                                        f"pair {p}, cos(position × angle): a turn every "
                                        f"{_tokens(r['local_wavelength'][p])} tokens (sliding), "
                                        f"{_tokens(r['global_wavelength'][p])} (full)"))
    for name, base, color, layers in (("local", cfg.rope_local_base, SLIDING, "sliding"),
                                      ("global", cfg.rope_global_base, FULL, "full")):
        fig.add_trace(go.Scatter(x=i, y=_f32(r[f"{name}_wavelength"]), mode="lines+markers", meta=name,
                                 name=f"base {base:,.0f} ({layers} layers)", line=dict(color=color),
                                 marker=dict(size=5), customdata=_f32(r[name]),
                                 hovertemplate="pair %{x}: %{customdata:.4g} rad per token, a turn every %{y:,.4g} "
                                               "tokens<extra>" + layers + "</extra>"), row=1, col=1)
    for y, label, color in ((W, f"window {W}", SLIDING), (C, f"context {C:,}", FULL)):
        fig.add_trace(go.Scatter(x=[0, half - 1], y=[y, y], mode="lines", line=dict(color=color, dash="dash", width=1),
                                 showlegend=False, hoverinfo="skip"), row=1, col=1)
        fig.add_annotation(x=half - 1, y=math.log10(y), text=label, showarrow=False, xanchor="right",
                           yanchor="bottom", font=dict(size=11, color=color), row=1, col=1)
    waves = np.concatenate([_f32(r["local_wavelength"]), _f32(r["global_wavelength"]), [W, C]])
    fig.update_yaxes(title_text="tokens per turn", **log_ticks(waves), row=1, col=1)
    fig.update_xaxes(title_text=f"pair i (dimensions i and i + {half})", row=1, col=1)
    pos = np.unique(np.linspace(0, C, 800).round())
    for name, color, layers in (("local", SLIDING, "sliding"), ("global", FULL, "full")):
        fig.add_trace(go.Scatter(x=pos, y=np.cos(pos * float(r[name][p])).astype(np.float32), mode="lines",
                                 line=dict(color=color, width=1.5), showlegend=False, meta=f"turn_{name}",
                                 hovertemplate="position %{x}: cos %{y:.2f}<extra>pair " + str(p) + ", " + layers
                                               + " layers</extra>"), row=2, col=1)
    fig.add_vline(x=W, line=dict(color=SLIDING, dash="dash", width=1), row=2, col=1)
    fig.add_vline(x=T - 1, line=dict(color=GREY, dash="dot", width=1), annotation_text=f"your {T} tokens",
                  annotation_position="bottom right", annotation_font=dict(size=11, color=GREY), row=2, col=1)
    fig.update_xaxes(title_text="position (dashed: the window)", range=[0, C], row=2, col=1)
    fig.update_yaxes(title_text="cos", range=[-1.1, 1.1], row=2, col=1)
    fig.update_layout(legend=dict(orientation="h", x=0, y=-0.14, yanchor="top"))
    _style(fig, "Two RoPE bases: fast turns inside the window, slow ones across the context",
           f"head_dim {cfg.head_dim}: pair i turns base^(−2i/{cfg.head_dim}) radians a token")
    return fig, _rope_text(cfg, r, T)


def _tokens(x) -> str:
    """A number of tokens: 6.28, 35,330."""
    x = float(x)
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def _rope_text(cfg, r: dict, T: int) -> str:
    half, W, C = cfg.head_dim // 2, cfg.window, cfg.context
    lw, gw = r["local_wavelength"], r["global_wavelength"]
    p = window_pair(r, W)
    in_window = int((lw <= W).sum())
    beyond = int((gw > C).sum())
    scale = "" if getattr(cfg, "rope_global_scale", 1.0) == 1 else (
        f" (the global angles are also divided by the RoPE scale {cfg.rope_global_scale:g})")
    return (f"RoPE turns each of the {half} pairs of a {cfg.head_dim}-number query or key head by its own angle per "
            f"position, base^(−2i/{cfg.head_dim}) radians, so a query·key score depends on how far apart the two tokens "
            f"are. Gemma 3 uses two bases{scale}. **Sliding layers, base {cfg.rope_local_base:,.0f}:** a full turn "
            f"takes from {_tokens(lw[0])} to {_tokens(lw[-1])} tokens; **{in_window} of {half}** pairs turn at least "
            f"once inside the window of {W}, so nearby positions are told apart finely, and a key past the window is "
            f"never seen anyway. **Full layers, base {cfg.rope_global_base:,.0f}:** from {_tokens(gw[0])} to "
            f"{_tokens(gw[-1])} tokens; **{beyond} of {half}** pairs turn less than once across the whole context of "
            f"{C:,}, so two far-apart positions never look alike. Bottom: pair {p}, whose sliding turn is nearest the "
            f"window, turns **{float(r['local'][p] / r['global'][p]):.3g}× slower** under the full layers' base (your "
            f"prompt ends at position {T - 1}).")


# ---- sliding vs full -----------------------------------------------------------------------------
def layer_pair(layer_types: list[str], layer: int) -> tuple[int, int]:
    """(a sliding layer, a full layer): `layer` itself for its kind, and the nearest layer of the other kind."""
    def nearest(kind):
        found = [i for i, t in enumerate(layer_types) if t == kind]
        if not found:
            raise ValueError(f"This model has no {kind} layer, so there is nothing to compare: every layer is "
                             f"{layer_types[0]}.")
        return min(found, key=lambda i: (abs(i - layer), i))
    return nearest("sliding"), nearest("full")


def _head_probs(record: Record, layer: int, head: int | None) -> torch.Tensor:
    p = record.stage("attn_probs", layer).float()
    return p.mean(0) if head is None else p[head]


def sliding_view(record: Record, layer: int, head: int | None = None) -> tuple[go.Figure, str]:
    """A sliding layer's attention next to a full layer's: the sliding one stops at the window."""
    layer, head = _layer(record, layer), _head(record, head, allow_all=True)
    cfg = record.config
    W, T = cfg.window, record.seq_len
    s, f = layer_pair(record.layer_types, layer)
    who = "mean of all heads" if head is None else f"head {head}"
    pos = torch.arange(T)
    causal = sliding_mask(pos, pos, None)
    fig = make_subplots(rows=2, cols=2, row_heights=[0.58, 0.42], vertical_spacing=0.17, horizontal_spacing=0.05,
                        specs=[[{}, {}], [{"colspan": 2}, None]],
                        subplot_titles=(f"layer {s}: sliding, window {W}", f"layer {f}: full",
                                        f"attention of the last query ({T - 1}) by distance back"))
    probs = {}
    for col, (lay, color) in enumerate(((s, SLIDING), (f, FULL)), start=1):
        p = probs[lay] = _head_probs(record, lay, head)
        fig.add_trace(go.Heatmap(z=_f32(p.masked_fill(~causal, float("nan"))), x=pos.numpy(), y=pos.numpy(),
                                 coloraxis="coloraxis", name=f"layer {lay}",
                                 hovertemplate="query %{y}, key %{x}: %{z:.4f}<extra>layer " + str(lay) + "</extra>"),
                      row=1, col=col)
        zero = np.where(_f32((p == 0) & causal) > 0, 1.0, np.nan).astype(np.float32)  # exactly 0, yet causal
        fig.add_trace(go.Heatmap(z=zero, x=pos.numpy(), y=pos.numpy(), colorscale=[[0, ZERO], [1, ZERO]],
                                 showscale=False, name="exactly 0",
                                 hovertemplate="query %{y}, key %{x}: exactly 0<extra>layer " + str(lay) + "</extra>"),
                      row=1, col=col)
        fig.update_yaxes(autorange="reversed", showticklabels=col == 1, title_text="query" if col == 1 else None,
                         row=1, col=col)
        fig.update_xaxes(title_text="key", row=1, col=col)
        last = p[T - 1].flip(0)  # distance 0 (itself) first
        fig.add_trace(go.Scatter(x=pos.numpy(), y=_f32(last), mode="lines", line=dict(color=color),
                                 name=f"layer {lay} ({record.layer_types[lay]})",
                                 hovertemplate="distance %{x}: %{y:.4f}<extra>layer " + str(lay) + "</extra>"),
                      row=2, col=1)
    if T > W:  # the window's edge on the sliding map: key = query - W + 1
        fig.add_trace(go.Scatter(x=[0, T - W], y=[W - 1, T - 1], mode="lines", showlegend=False, hoverinfo="skip",
                                 line=dict(color=INK, dash="dash", width=1.5)), row=1, col=1)
    fig.add_vline(x=W - 0.5, line=dict(color=GREY, dash="dash"), annotation_text=f"window {W}",
                  annotation_position="top left", annotation_font=dict(size=11, color=GREY), row=2, col=1)
    fig.update_xaxes(title_text="distance back from the last token", row=2, col=1)
    fig.update_yaxes(title_text="attention", row=2, col=1)
    sp = fig.get_subplot(2, 1)
    fig.update_layout(coloraxis=dict(colorscale="Blues", cmin=0, colorbar=dict(
        title=dict(text="attention", side="right"), len=0.5, y=0.78, thickness=12)), plot_bgcolor="#f3f4f6",
        legend=dict(x=sp.xaxis.domain[1] - 0.01, xanchor="right", y=sp.yaxis.domain[1] - 0.01, yanchor="top",
                    bgcolor="rgba(255,255,255,0.8)"))
    _style(fig, f"Sliding layer {s} stops at its window of {W}; full layer {f} reads everything",
           f"{who}, {T} tokens; grey: future keys, orange: probability exactly 0")
    far = pos[None, :] <= pos[:, None] - W   # keys older than the window
    beyond_s = float(probs[s][far].max()) if T > W else 0.0
    share_f = float(probs[f][T - 1, : max(0, T - W)].sum())
    if T > W:
        text = (f"Your prompt has {T} tokens, more than the sliding window of {W}. In sliding layer {s} a query "
                f"never sees a key {W} or more positions back: past the dashed edge the left map is orange, its "
                f"largest probability there exactly **{beyond_s:g}**. Full layer {f} reads the whole prompt: "
                f"its last query puts **{share_f:.1%}** of its attention beyond the window. This model has "
                f"{_count(cfg.layer_types, 'sliding')} and {_count(cfg.layer_types, 'full')}: only the full "
                f"layers read far-back tokens directly; a sliding layer can still pass on what an earlier layer "
                f"read, {W - 1} positions further back per layer.")
    else:
        text = (f"Your prompt has {T} tokens, no more than the sliding window of {W}, so sliding layer {s} and full "
                f"layer {f} both see every earlier token here. **Make the prompt longer than {W} tokens** and the "
                f"sliding layer's attention stops at the window while the full layer's goes on.")
    return fig, text


# ---- GeGLU ---------------------------------------------------------------------------------------
def geglu_parts(record: Record, layer: int) -> dict:
    """The feed-forward of `layer` on the prompt: gate, GELU(gate) (tanh approximation, as the model), up and
    their product (what `down` reads: the recorded "act"), [T, ffn] fp32, and how much of GELU(gate) is near 0."""
    layer = _layer(record, layer)
    gate, up = record.stage("gate", layer), record.stage("up", layer)
    gelu = F.gelu(gate.float(), approximate="tanh")
    product = (F.gelu(gate, approximate="tanh") * up).float()  # in the model's dtype, as FeedForward computes
    rms = float(_rms(gelu.flatten()))
    return {"gate": gate.float(), "gelu": gelu, "up": up.float(), "product": product,
            "negative": float((gate < 0).float().mean()),
            "near_zero": float((gelu.abs() < NEAR_ZERO * rms).float().mean()), "gelu_rms": rms}


def geglu_view(record: Record, layer: int) -> tuple[go.Figure, str]:
    g = geglu_parts(record, layer)
    cfg = record.config
    T = record.seq_len
    units = np.unique(np.linspace(0, cfg.ffn - 1, min(FFN_UNITS, cfg.ffn)).round().astype(int))
    fig = make_subplots(rows=2, cols=3, row_heights=[0.42, 0.58], vertical_spacing=0.17, horizontal_spacing=0.04,
                        specs=[[{"colspan": 3, "secondary_y": True}, None, None], [{}, {}, {}]],
                        subplot_titles=("gate values and GELU (tanh approximation)", "GELU(gate)", "up",
                                        "GELU(gate) × up"))
    gate = _f32(g["gate"]).ravel()
    counts, edges = np.histogram(gate, bins=GATE_BINS)   # counted here: the figure carries 80 bars, not T x ffn values
    fig.add_trace(go.Bar(x=(edges[:-1] + edges[1:]) / 2, y=counts, width=np.diff(edges),
                         name="gate values (all tokens, all units)", marker_color="#9bb8d3",
                         customdata=np.stack([edges[:-1], edges[1:]], -1),
                         hovertemplate="gate %{customdata[0]:.3g} to %{customdata[1]:.3g}: %{y} values<extra></extra>"),
                  row=1, col=1)
    xs = torch.linspace(float(gate.min()), float(gate.max()), 200)
    fig.add_trace(go.Scatter(x=_f32(xs), y=_f32(F.gelu(xs, approximate="tanh")), mode="lines", name="GELU(x)",
                             line=dict(color=INK, width=2.5),
                             hovertemplate="GELU(%{x:.3g}) = %{y:.3g}<extra></extra>"),
                  row=1, col=1, secondary_y=True)   # the curve over the bars
    fig.update_yaxes(title_text="count", row=1, col=1, secondary_y=False)
    fig.update_yaxes(title_text="GELU(gate)", showgrid=False, row=1, col=1, secondary_y=True)
    fig.update_xaxes(title_text="gate value", row=1, col=1)
    for col, key in enumerate(("gelu", "up", "product"), start=1):
        z = _f32(g[key][:, units])
        m = float(np.abs(z).max()) or 1.0
        fig.add_trace(go.Heatmap(z=z, x=units, y=np.arange(T), colorscale="RdBu", zmid=0, zmin=-m, zmax=m,
                                 showscale=False, name=key,
                                 hovertemplate="token %{y}, unit %{x}: %{z:.3g}<extra>" + key + "</extra>"),
                      row=2, col=col)
        fig.update_yaxes(autorange="reversed", showticklabels=col == 1, title_text="token" if col == 1 else None,
                         row=2, col=col)
        fig.update_xaxes(title_text=f"unit ({len(units)} of {cfg.ffn})", row=2, col=col)
    sp = fig.get_subplot(1, 1)
    fig.update_layout(bargap=0.05, legend=dict(x=sp.xaxis.domain[0] + 0.01, y=sp.yaxis.domain[1] - 0.01,
                                               yanchor="top", bgcolor="rgba(255,255,255,0.8)"))
    _style(fig, "GeGLU: the gate switches units off, up only passes where it is open",
           f"layer {layer}, {T} tokens: down(GELU(gate) × up); red < 0 < blue, white: near 0")
    text = (f"Gemma 3's feed-forward widens each token to {cfg.ffn} units twice: a **gate** and an **up** "
            f"projection, multiplied after GELU(gate) (red/blue: sign and size; white: near zero). In layer "
            f"{layer}, **{g['negative']:.0%}** of the gate values are negative: GELU turns those into small "
            f"negative values (never below −0.17), near zero only for gates below about −3. "
            f"**{g['near_zero']:.0%}** come out of GELU within a tenth of its typical size ({g['gelu_rms']:.3g}): "
            f"those units are switched off for that token whatever up says. Look at the product: bright where the "
            f"gate lets up through, faint where it scales up down.")
    return fig, text


# ---- pre- and post-norms -------------------------------------------------------------------------
def norm_sizes(record: Record) -> dict:
    """Mean over tokens of the RMS per layer: each sub-layer's output before ("o", "down") and after its
    post-norm, what it reads after its pre-norm, and the residual entering each layer; lists of length L
    ("residual" has L + 1: the last is the output of the last layer)."""
    L = record.layers
    out = {name: [float(_rms(record.stage(name, i)).mean()) for i in range(L)]
           for name in ("o", "post_attn_norm", "down", "post_ffn_norm", "attn_norm", "ffn_norm")}
    out["residual"] = [float(_rms(record.stage("input", i)).mean()) for i in range(L)] + \
                      [float(_rms(record.stage("output", L - 1)).mean())]
    return out


NORMS = (("attn_norm", "pre-attention"), ("post_attn_norm", "post-attention"), ("ffn_norm", "pre-feed-forward"),
         ("post_ffn_norm", "post-feed-forward"))


def norm_weights(model) -> dict:
    """RMS of each norm's learned scale (1 + w) per layer, {name in NORMS: [L]}: a normalised vector (RMS 1)
    comes out of the norm about this size. Post-norms a model lacks (nn.Identity) are left out."""
    out = {}
    for name, _ in NORMS:
        norms = [getattr(b, name) for b in model.blocks]
        if all(hasattr(n, "weight") for n in norms):
            out[name] = [float((1 + n.weight.detach().float()).pow(2).mean().sqrt()) for n in norms]
    return out


def norms_view(record: Record, model) -> tuple[go.Figure, str]:
    """Per layer: the residual stream, what each half reads after its pre-norm, and what it adds before and
    after its post-norm (a dumbbell per layer); below, the learned scales that set those sizes."""
    n, w = norm_sizes(record), norm_weights(model)
    L = record.layers
    fig = make_subplots(rows=2, cols=1, row_heights=[0.64, 0.36], vertical_spacing=0.14, shared_xaxes=True,
                        subplot_titles=(f"RMS on your {record.seq_len} tokens (mean over tokens, log)",
                                        "the norms' learned scales: RMS of (1 + w)"))
    x = np.arange(L)
    fig.add_trace(go.Scatter(x=np.arange(L + 1) - 0.5, y=n["residual"], mode="lines+markers", meta="residual",
                             name="residual stream (entering each layer, then leaving the last)",
                             line=dict(color=INK, width=2.5), marker=dict(size=6),
                             hovertemplate="RMS %{y:.3g}<extra>residual stream</extra>"), row=1, col=1)
    fig.add_trace(go.Scatter(x=x, y=n["attn_norm"], mode="lines", meta="attn_norm", line=dict(color=GREY, dash="dot"),
                             name="what attention reads (after its pre-norm)",
                             hovertemplate="layer %{x}: RMS %{y:.3g}<extra>after the pre-norm</extra>"), row=1, col=1)
    for key_raw, key, color, dx, what in (("o", "post_attn_norm", ATTN, -0.15, "attention"),
                                          ("down", "post_ffn_norm", FFN, 0.15, "feed-forward")):
        xs = x + dx
        fig.add_trace(go.Scatter(x=np.repeat(xs, 3), y=np.ravel([[a, b, np.nan] for a, b in zip(n[key_raw], n[key])]),
                                 mode="lines", line=dict(color=color, width=2), hoverinfo="skip", showlegend=False),
                      row=1, col=1)
        fig.add_trace(go.Scatter(x=xs, y=n[key_raw], mode="markers", meta=key_raw, name=f"{what}: computed (open)",
                                 marker=dict(size=9, color="white", line=dict(color=color, width=2)),
                                 hovertemplate="layer %{x:.0f}: RMS %{y:.3g}<extra>" + what + " before its post-norm"
                                               "</extra>"), row=1, col=1)
        fig.add_trace(go.Scatter(x=xs, y=n[key], mode="markers", meta=key, name=f"{what}: added, after its post-norm",
                                 marker=dict(size=9, color=color),
                                 hovertemplate="layer %{x:.0f}: RMS %{y:.3g}<extra>" + what + " added</extra>"),
                      row=1, col=1)
    sizes = [v for k in ("residual", "attn_norm", "o", "post_attn_norm", "down", "post_ffn_norm") for v in n[k]]
    fig.update_yaxes(title_text="RMS", **log_ticks(sizes), row=1, col=1)
    for key, label in NORMS:
        if key in w:
            color = ATTN if "attn" in key else FFN
            fig.add_trace(go.Scatter(x=x, y=w[key], mode="lines+markers", meta=f"w_{key}", name=f"{label} norm scale",
                                     line=dict(color=color, dash="solid" if key.startswith("post") else "dot"),
                                     marker=dict(size=5), showlegend=False,
                                     hovertemplate="layer %{x}: %{y:.3g}<extra>" + label + " norm</extra>"),
                          row=2, col=1)
    fig.update_yaxes(title_text="RMS(1 + w)", rangemode="tozero", row=2, col=1)
    for i, t in enumerate(record.layer_types):   # a full layer's column in the full layers' colour
        if t == "full":
            for row in (1, 2):
                fig.add_vrect(x0=i - 0.5, x1=i + 0.5, fillcolor=FULL, opacity=0.08, line_width=0, row=row, col=1)
    fig.update_xaxes(tickmode="array", tickvals=x, ticktext=[f"{i}" for i in x], range=[-0.7, L - 0.3])
    fig.update_xaxes(title_text="layer (pink band: a full layer)", row=2, col=1)
    fig.update_layout(legend=dict(orientation="h", x=0, y=-0.16, yanchor="top"))
    _style(fig, "Pre-norms steady what each half reads; post-norms set what it adds",
           f"{L} layers: the residual grows; what each layer adds is set by its learned norm weight")
    return fig, _norms_text(record, n, w)


def _norms_text(record: Record, n: dict, w: dict) -> str:
    cfg, L = record.config, record.layers
    r = n["residual"]
    before, after = n["o"] + n["down"], n["post_attn_norm"] + n["post_ffn_norm"]
    read = n["attn_norm"] + n["ffn_norm"]
    pre = (f"The residual stream (black) grows from {r[0]:.3g} (the scaled embedding) to {r[-1]:.3g} after layer "
           f"{L - 1}. **Pre-norms**: each half reads it through an RMSNorm, so what attention and the feed-forward "
           f"read stays between {min(read):.3g} and {max(read):.3g} in every layer (grey dots), however large the "
           f"stream has grown. ")
    if cfg.post_norms:
        post = (f"**Post-norms**: what each half computes (open circles) ranges from {min(before):.3g} to "
                f"{max(before):.3g}, a factor {max(before) / min(before):.3g}; after its post-norm (filled) what it "
                f"adds is {min(after):.3g}–{max(after):.3g}, a factor {max(after) / min(after):.3g}, about the RMS of "
                f"the norm's learned scale (1 + w) (bottom: {min(w['post_attn_norm'] + w['post_ffn_norm']):.3g}–"
                f"{max(w['post_attn_norm'] + w['post_ffn_norm']):.3g}). So the size of each addition is learned, "
                f"not an accident of the layer's arithmetic: a layer's part does not grow with the stream, and it is "
                f"large or small only as far as its learned weight makes it.")
    else:
        post = ("This model has no post-norms (each dumbbell's two ends are the same point): each layer adds its raw "
                "output, whatever its size.")
    return pre + post + " The final norm rescales the stream once more before the unembedding."


# ---- embedding scale and tied head ---------------------------------------------------------------
def _head_weight(model) -> torch.Tensor:
    return model.embed.weight if model.head is None else model.head.weight


def embedding_parts(record: Record, model) -> dict:
    """The embedding scale and the tied head on the prompt: RMS of the raw embedding rows and of the scaled
    "embed" stage per token; the last position's logits recomputed as the final state's dot product with every
    row of the unembedding (the embedding when tied); and for the logit lens' first row, each token's embedding
    (through the final norm) dotted with every row: its own score and the best other token's."""
    tokens = torch.tensor(record.tokens)
    E = model.embed.weight.detach()
    raw = E[tokens.to(E.device)].float().cpu()
    W = _head_weight(model).detach()
    with torch.no_grad():
        final = record.stage("final_norm")[-1].to(W.device, W.dtype)
        sims = F.linear(final, W).float().cpu()
        lens = F.linear(model.final_norm(record.stage("embed").to(W.device, W.dtype)), W).float().cpu()
    own = lens.gather(1, tokens[:, None])[:, 0]
    other = lens.scatter(1, tokens[:, None], float("-inf")).max(-1)
    return {"scale": math.sqrt(record.config.hidden), "raw_rms": _rms(raw), "scaled_rms": _rms(record.stage("embed")),
            "similarity": sims, "own": own, "best_other": other.values, "best_other_id": other.indices,
            "lens_top": lens.argmax(-1), "tied": model.head is None}


def embedding_view(record: Record, model) -> tuple[go.Figure, str]:
    e = embedding_parts(record, model)
    cfg, T = record.config, record.seq_len
    labels = [_html(s) for s in record.labels]
    top = e["similarity"].topk(min(TOP_LOGITS, cfg.vocab_size))
    tied = e["tied"]
    head = "embedding" if tied else "output head"
    fig = make_subplots(rows=3, cols=1, vertical_spacing=0.09, row_heights=[0.3, 0.36, 0.34],
                        subplot_titles=(f"RMS of each token's embedding row: raw (light), × √{cfg.hidden} (dark)",
                                        "lens' first row: with its own row (teal), the best other (grey)",
                                        f"next-token logits = final state · {head} row (top {len(top.indices)})"))
    fig.add_trace(go.Bar(x=labels, y=_f32(e["raw_rms"]), name="raw row", marker_color="#99d5cf",
                         hovertemplate="%{x}: %{y:.3g}<extra>raw</extra>"), row=1, col=1)
    fig.add_trace(go.Bar(x=labels, y=_f32(e["scaled_rms"]), name=f"× √{cfg.hidden} = {e['scale']:.3g}",
                         marker_color=TEAL, hovertemplate="%{x}: %{y:.3g}<extra>scaled</extra>"), row=1, col=1)
    fig.update_yaxes(title_text="RMS (log)", **log_ticks(np.concatenate([_f32(e["raw_rms"]), _f32(e["scaled_rms"])])),
                     row=1, col=1)
    fig.add_trace(go.Bar(x=labels, y=_f32(e["own"]), name="with its own row", marker_color=TEAL,
                         hovertemplate="%{x}: %{y:.4g}<extra>own row</extra>"), row=2, col=1)
    fig.add_trace(go.Bar(x=labels, y=_f32(e["best_other"]), name="with the best other row", marker_color=GREY,
                         hovertemplate="%{x}: %{y:.4g}<extra>best other row</extra>"), row=2, col=1)
    fig.update_yaxes(title_text="dot product", row=2, col=1)
    cand = [f"{r + 1}. {_html(record.token_text.get(i) or str(i))}" for r, i in enumerate(top.indices.tolist())]
    fig.add_trace(go.Bar(y=cand, x=_f32(top.values), orientation="h", name="dot product = logit", marker_color=FFN,
                         hovertemplate="%{y}: %{x:.4g}<extra></extra>"), row=3, col=1)
    fig.update_xaxes(title_text="dot product", row=3, col=1)
    fig.update_yaxes(autorange="reversed", type="category", row=3, col=1)
    # the two per-token rows share one axis of token labels, written once under the second
    fig.update_xaxes(type="category", matches="x2", showticklabels=False, row=1, col=1)
    fig.update_xaxes(type="category", tickangle=-60, row=2, col=1)
    fig.update_layout(barmode="group", showlegend=False)
    _style(fig, "The embedding, scaled in and reused out: each token's own row fits it best",
           f"√{cfg.hidden} scale on the way in; {'tied' if tied else 'untied'} head on the way out")
    repeat = int((e["lens_top"] == torch.tensor(record.tokens)).sum())
    raw, scaled = float(e["raw_rms"].mean()), float(e["scaled_rms"].mean())
    first = (f"The logit lens' first row repeats the input for **{repeat} of {T}** tokens: a token's own "
             f"embedding row is the one most similar to itself (middle, teal above grey), because a vector's dot "
             f"product with itself is its squared length while other rows point elsewhere.")
    if not tied:
        first = (f"This model has its own output head (not tied), so the lens' first row need not repeat the input: "
                 f"it does for {repeat} of {T} tokens.")
    text = (f"The embedding rows are small (RMS {raw:.3g} for your tokens); Gemma 3 multiplies them by "
            f"√{cfg.hidden} = {e['scale']:.3g} (RMS {scaled:.3g}) so the tokens start at the size of what the layers "
            f"add. The head is {'**tied**: the same matrix turns' if tied else 'separate: its own matrix turns'} the "
            f"final state into logits, each logit the dot product of the final state with one row (bottom: the "
            f"top {len(top.indices)} for the next token). {first}")
    return fig, text


# ---- one entry point -----------------------------------------------------------------------------
def gemma3_view(topic: str, record: Record, model, layer: int = 0, head: int | None = 0) -> tuple[go.Figure, str]:
    """(figure, text) of one of TOPICS on `record` (recorded from `model`)."""
    if topic not in TOPICS:
        raise ValueError(f"There is no view {topic!r}; choose one of {', '.join(TOPICS)}.")
    if topic == "mqa":
        return mqa_view(record, layer)
    if topic == "qk_norm":
        return qk_norm_view(record, model, layer, 0 if head is None else head)
    if topic == "rope":
        return rope_view(record, model)
    if topic == "sliding":
        return sliding_view(record, layer, head)
    if topic == "geglu":
        return geglu_view(record, layer)
    if topic == "norms":
        return norms_view(record, model)
    return embedding_view(record, model)
