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

from .figures import FULL, INK, SLIDING, _f32, _html, _title
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
    "rope": "RoPE by distance",
    "sliding": "Sliding vs full",
    "geglu": "GeGLU",
    "norms": "Pre- and post-norms",
    "embedding": "Embedding scale, tied head",
}
USES = {  # which of layer / head each topic reads (the page shows only those controls)
    "mqa": ("layer",), "qk_norm": ("layer", "head"), "rope": ("layer", "head"), "sliding": ("layer", "head"),
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


def _style(fig: go.Figure, title: str, detail: str, height: int) -> go.Figure:
    """A short title with its detail on a second, smaller line (both stay within a narrow plot), the height, and
    the app's Plotly template (explain.figures._style)."""
    fig.update_layout(title=_title(title, detail), height=height)
    return _app_style(fig)


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
    fig = make_subplots(rows=2, cols=H, row_heights=[0.5, 0.5], vertical_spacing=0.2, horizontal_spacing=0.02,
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
    lines = ((f"this model: {KV} K/V head{'s' if KV > 1 else ''}, sliding rings", KV, True, SLIDING, "solid"),
             (f"one K/V per query head ({H}), sliding rings", H, True, FULL, "solid"),
             (f"{KV} K/V head{'s' if KV > 1 else ''}, no rings (every layer keeps all)", KV, False, SLIDING, "dot"))
    for name, kv, ring, color, dash in lines:
        mb = [kv_cache_bytes(cfg, int(t), kv, size, ring) / 1e6 for t in n]
        fig.add_trace(go.Scatter(x=n, y=mb, mode="lines", name=name, line=dict(color=color, dash=dash),
                                 hovertemplate="%{x} tokens: %{y:.3g} MB<extra></extra>"), row=2, col=1)
    fig.update_xaxes(title_text="tokens in the cache", row=2, col=1)
    fig.update_yaxes(title_text="MB", rangemode="tozero", row=2, col=1)
    sp = fig.get_subplot(2, 1)
    fig.update_layout(coloraxis=dict(colorscale="Blues", cmin=0, colorbar=dict(
        title=dict(text="attention", side="right"), len=0.4, y=0.8, thickness=12)),
        plot_bgcolor="#f3f4f6",
        legend=dict(x=sp.xaxis.domain[0] + 0.01, y=sp.yaxis.domain[1] - 0.01, yanchor="top",
                    bgcolor="rgba(255,255,255,0.8)"))
    _style(fig, f"{H} query heads sharing {KV} key/value head{'s' if KV > 1 else ''}",
           f"layer {layer} ({_kind(record, layer)}): each head's attention; below, the KV cache it needs", 840)
    mine, per_head = kv_bytes_per_token(cfg, KV, size), kv_bytes_per_token(cfg, H, size)
    full_ctx = kv_cache_bytes(cfg, cfg.context, KV, size)
    text = (f"This model has **{H} query heads sharing {KV} key/value head{'s' if KV > 1 else ''}**: each head "
            f"computes its own pattern over your {T} tokens (top) from the same keys and values, so the cache keeps one K and one V per "
            f"token and layer instead of {H}. Per token that is 2 x {cfg.layers} layers x {KV} x {cfg.head_dim} x "
            f"{size} bytes = **{_bytes(mine)}**, against {_bytes(per_head)} with one K/V per head: "
            f"**{H // KV}x less**. The {cfg.layer_types.count('sliding')} sliding layers keep only a ring of their "
            f"last {cfg.window} tokens, so a full context of {cfg.context:,} tokens needs {_bytes(full_ctx)} "
            f"instead of {_bytes(mine * cfg.context)} (bottom). Look for heads that differ although they read the "
            f"same keys.")
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
    fig = make_subplots(rows=2, cols=2, row_heights=[0.55, 0.45], vertical_spacing=0.2, horizontal_spacing=0.16,
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
    for name, z, color in (("without q/k norm", raw, GREY), ("with q/k norm", normed, SLIDING)):
        fig.add_trace(go.Scatter(x=pos, y=_f32(torch.nan_to_num(z.abs(), nan=0.0).amax(-1)), mode="lines+markers",
                                 marker=dict(size=4), name=name, line=dict(color=color),
                                 hovertemplate="query %{x}: %{y:.3g}<extra>" + name + "</extra>"), row=2, col=1)
    fig.add_trace(go.Scatter(x=[0, T - 1], y=[bound, bound], mode="lines", name="bound set by the norm weights",
                             line=dict(color=FULL, dash="dash"), hoverinfo="skip"), row=2, col=1)
    fig.update_xaxes(title_text="query position", row=2, col=1)
    fig.update_yaxes(title_text="max |logit| (log)", type="log", row=2, col=1)
    fig.update_layout(plot_bgcolor="#f3f4f6", legend=dict(orientation="h", x=0, y=-0.12, yanchor="top"))
    _style(fig, "Attention logits without and with the q/k norm",
           f"layer {layer}, head {head}: q·k × scale, RoPE applied to both by the model's RoPE", 820)
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
            f"**{bound:.3g}** (dashed line, bottom): no softmax saturates by accident. The two maps (top) each have "
            f"their own colour scale.")
    return fig, text


# ---- RoPE by distance ----------------------------------------------------------------------------
def rope_scores(record: Record, model, layer: int, head: int) -> dict:
    """The last token's query (after the q norm) against the key it attends to most, placed d positions apart,
    rotated by the model's local and global RoPE: {"distances", "local", "global", "query", "key",
    "distance" (their real distance), "max_distance"}."""
    layer, head = _layer(record, layer), _head(record, head)
    cfg = record.config
    T = record.seq_len
    query = T - 1
    key = int(record.stage("attn_probs", layer)[head, query].argmax())
    q = record.stage("q_norm", layer)[query, head].float()
    k = record.stage("k_norm", layer)[key, _kv_head(cfg, head)].float()
    far = min(cfg.context - 1, max(4 * cfg.window, 1024))
    d = torch.arange(far + 1)
    scale = model.blocks[layer].attn.scale
    out = {"distances": d, "query": query, "key": key, "distance": query - key, "max_distance": far}
    for name, rope in (("local", model.rope_local), ("global", model.rope_global)):
        k_rot = _rotate(rope, k[None], torch.tensor([key]))[0]
        q_rot = _rotate(rope, q.expand(len(d), -1), key + d)
        out[name] = q_rot @ k_rot * scale
    return out


def rope_view(record: Record, model, layer: int, head: int) -> tuple[go.Figure, str]:
    s = rope_scores(record, model, layer, head)
    cfg = record.config
    W = cfg.window
    d = s["distances"].numpy()
    fig = go.Figure()
    inside = d < W
    fig.add_trace(go.Scatter(x=d[inside], y=_f32(s["local"][inside]), mode="lines", line=dict(color=SLIDING),
                             name=f"local base {cfg.rope_local_base:g} (sliding layers)",
                             hovertemplate="d = %{x}: %{y:.3g}<extra>local</extra>"))
    fig.add_trace(go.Scatter(x=d[~inside], y=_f32(s["local"][~inside]), mode="lines",
                             line=dict(color=SLIDING, width=1, dash="dot"), opacity=0.5,
                             name="local beyond the window (never used)",
                             hovertemplate="d = %{x}: %{y:.3g}<extra>local, unused</extra>"))
    fig.add_trace(go.Scatter(x=d, y=_f32(s["global"]), mode="lines", line=dict(color=FULL),
                             name=f"global base {cfg.rope_global_base:g} (full layers)",
                             hovertemplate="d = %{x}: %{y:.3g}<extra>global</extra>"))
    kind = _kind(record, layer)
    real = s["distance"]
    mine = s["local" if kind == "sliding" else "global"][real]
    fig.add_trace(go.Scatter(x=[real], y=[float(mine)], mode="markers", name=f"in your prompt (layer {layer})",
                             marker=dict(size=12, color="black", symbol="x"),
                             hovertemplate="real distance %{x}: %{y:.3g}<extra></extra>"))
    fig.add_vline(x=W, line=dict(color=GREY, dash="dash"), annotation_text=f"window {W}",
                  annotation_position="top right", annotation_font=dict(size=11, color=GREY))
    fig.update_layout(xaxis=dict(title="distance d between query and key (positions)"),
                      yaxis=dict(title="score q·k × scale"),
                      legend=dict(orientation="h", x=0, y=-0.25, yanchor="top"))
    q_tok, k_tok = _html(_token(record, s["query"])), _html(_token(record, s["key"]))
    _style(fig, "One query and one key, d positions apart",
           f"layer {layer}, head {head}: their score under the local and the global RoPE base", 580)
    near = slice(0, min(W, len(d)))
    lo_l, hi_l = float(s["local"][near].min()), float(s["local"][near].max())
    lo_g, hi_g = float(s["global"][near].min()), float(s["global"][near].max())
    text = (f"The query of the last token “{q_tok}” and the key of “{k_tok}”, the token it attends to most in layer "
            f"{layer} (head {head}), really {real} positions apart (x). RoPE turns both by their positions, so their "
            f"score depends only on the distance d. Within the window of {W}, the local base "
            f"{cfg.rope_local_base:g} moves the score between {lo_l:.3g} and {hi_l:.3g}, the global base "
            f"{cfg.rope_global_base:g} only between {lo_g:.3g} and {hi_g:.3g}: the sliding layers' fast-turning "
            f"RoPE tells near positions apart, the full layers' slow one keeps far tokens recognisable up to "
            f"their context of {cfg.context:,}.")
    return fig, text


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
    fig = make_subplots(rows=2, cols=2, row_heights=[0.58, 0.42], vertical_spacing=0.2, horizontal_spacing=0.05,
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
                                 line=dict(color=FULL, dash="dash", width=1.5)), row=1, col=1)
    fig.add_vline(x=W - 0.5, line=dict(color=GREY, dash="dash"), annotation_text=f"window {W}",
                  annotation_position="top left", annotation_font=dict(size=11, color=GREY), row=2, col=1)
    fig.update_xaxes(title_text="distance back from the last token", row=2, col=1)
    fig.update_yaxes(title_text="attention", row=2, col=1)
    sp = fig.get_subplot(2, 1)
    fig.update_layout(coloraxis=dict(colorscale="Blues", cmin=0, colorbar=dict(
        title=dict(text="attention", side="right"), len=0.5, y=0.78, thickness=12)), plot_bgcolor="#f3f4f6",
        legend=dict(x=sp.xaxis.domain[1] - 0.01, xanchor="right", y=sp.yaxis.domain[1] - 0.01, yanchor="top",
                    bgcolor="rgba(255,255,255,0.8)"))
    _style(fig, f"Sliding layer {s} against full layer {f}",
           f"{who}, {T} tokens; grey: future keys, orange: probability exactly 0", 840)
    far = pos[None, :] <= pos[:, None] - W   # keys older than the window
    beyond_s = float(probs[s][far].max()) if T > W else 0.0
    share_f = float(probs[f][T - 1, : max(0, T - W)].sum())
    if T > W:
        text = (f"Your prompt has {T} tokens, more than the sliding window of {W}. In sliding layer {s} a query "
                f"never sees a key {W} or more positions back: past the dashed edge the left map is orange, its "
                f"largest probability there exactly **{beyond_s:g}**. Full layer {f} reads the whole prompt: "
                f"its last query puts **{share_f:.1%}** of its attention beyond the window. Gemma 3 has "
                f"{_count(cfg.layer_types, 'sliding')} and {_count(cfg.layer_types, 'full')}: "
                f"only the full layers carry information from far back.")
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
    fig = make_subplots(rows=2, cols=3, row_heights=[0.4, 0.6], vertical_spacing=0.2, horizontal_spacing=0.04,
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
                             line=dict(color=FULL, width=2.5),
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
    _style(fig, "GeGLU: down(GELU(gate) × up)", f"layer {layer}, {T} tokens; red < 0 < blue, white: near 0", 820)
    text = (f"Gemma 3's feed-forward widens each token to {cfg.ffn} units twice: a **gate** and an **up** "
            f"projection, multiplied after GELU(gate) (red/blue: sign and size; white: near zero). In layer "
            f"{layer}, **{g['negative']:.0%}** of the gate values are negative, where GELU lets through at most "
            f"17% of them (its minimum is −0.17), and **{g['near_zero']:.0%}** come out of GELU within a tenth of its "
            f"typical size ({g['gelu_rms']:.3g}): those units are switched off for that token whatever up says. Look "
            f"at the product: bright only where the gate lets up through.")
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


def norms_view(record: Record) -> tuple[go.Figure, str]:
    n = norm_sizes(record)
    cfg = record.config
    L = record.layers
    x = list(range(L))
    fig = go.Figure()
    series = (("residual stream entering the layer", "residual", INK, "solid", L),
              ("attention output before its post-norm (o)", "o", SLIDING, "dot", L),
              ("attention added, after the post-norm", "post_attn_norm", SLIDING, "solid", L),
              ("feed-forward output before its post-norm (down)", "down", FULL, "dot", L),
              ("feed-forward added, after the post-norm", "post_ffn_norm", FULL, "solid", L),
              ("what attention reads, after its pre-norm", "attn_norm", GREY, "dashdot", L))
    for name, key, color, dash, m in series:
        fig.add_trace(go.Scatter(x=x[:m], y=n[key][:m], mode="lines+markers", name=name,
                                 line=dict(color=color, dash=dash), marker=dict(size=6),
                                 hovertemplate="layer %{x}: RMS %{y:.3g}<extra>" + key + "</extra>"))
    fig.update_layout(xaxis=dict(title="layer", dtick=1 if L <= 32 else None),
                      yaxis=dict(title="RMS (mean over tokens, log)", type="log"),
                      legend=dict(orientation="h", x=0, y=-0.2, yanchor="top"))
    _style(fig, "Sizes before and after each post-norm", f"RMS through {L} layers, mean over {record.seq_len} tokens",
           620)
    before = n["o"] + n["down"]
    after = n["post_attn_norm"] + n["post_ffn_norm"]
    r = n["residual"]
    if cfg.post_norms:
        what = (f"Each sub-layer's raw output varies from {min(before):.3g} to {max(before):.3g} in RMS across "
                f"layers (dotted, a factor {max(before) / min(before):.3g}); its **post-norm** rescales it to "
                f"{min(after):.3g}–{max(after):.3g} (solid, a factor {max(after) / min(after):.3g}), set by the norm's "
                f"weights alone. That is why in the Activations view every layer adds about the same amount.")
    else:
        what = ("This model has no post-norms (before and after are the same lines): each layer adds its raw "
                "output, whatever its size.")
    text = (f"Gemma 3 normalises twice around every sub-layer: a **pre-norm** on what it reads (dash-dot: RMS "
            f"about {float(np.mean(n['attn_norm'])):.3g} in every layer, however large the residual) and a "
            f"**post-norm** on what it adds. {what} The residual stream (black) goes from {r[0]:.3g} (the scaled "
            f"embedding) to {r[-1]:.3g} after layer {L - 1}; the final norm rescales it once more before the "
            f"unembedding.")
    return fig, text


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
    cfg = record.config
    T = record.seq_len
    labels = [_html(s) for s in record.labels]
    top = e["similarity"].topk(min(TOP_LOGITS, cfg.vocab_size))
    tied = e["tied"]
    head = "embedding" if tied else "output head"
    fig = make_subplots(rows=3, cols=1, vertical_spacing=0.13, row_heights=[0.32, 0.3, 0.38],
                        subplot_titles=(f"RMS of each token's embedding row: raw (light), × √{cfg.hidden} (dark)",
                                        f"next-token logits = final state · {head} row (top {len(top.indices)})",
                                        "lens' first row: with its own row (blue), the best other (grey)"))
    fig.add_trace(go.Bar(x=labels, y=_f32(e["raw_rms"]), name="raw row", marker_color="#9bb8d3",
                         hovertemplate="%{x}: %{y:.3g}<extra>raw</extra>"), row=1, col=1)
    fig.add_trace(go.Bar(x=labels, y=_f32(e["scaled_rms"]), name=f"× √{cfg.hidden} = {e['scale']:.3g}",
                         marker_color=SLIDING, hovertemplate="%{x}: %{y:.3g}<extra>scaled</extra>"), row=1, col=1)
    fig.update_yaxes(title_text="RMS (log)", type="log", row=1, col=1)
    cand = [f"{r + 1}. {_html(record.token_text.get(i) or str(i))}" for r, i in enumerate(top.indices.tolist())]
    fig.add_trace(go.Bar(x=cand, y=_f32(top.values), name="dot product = logit", marker_color=FULL,
                         hovertemplate="%{x}: %{y:.4g}<extra></extra>"), row=2, col=1)
    fig.update_yaxes(title_text="dot product", row=2, col=1)
    fig.add_trace(go.Bar(x=labels, y=_f32(e["own"]), name="with its own row", marker_color=SLIDING,
                         hovertemplate="%{x}: %{y:.4g}<extra>own row</extra>"), row=3, col=1)
    fig.add_trace(go.Bar(x=labels, y=_f32(e["best_other"]), name="with the best other row", marker_color=GREY,
                         hovertemplate="%{x}: %{y:.4g}<extra>best other row</extra>"), row=3, col=1)
    fig.update_yaxes(title_text="dot product", row=3, col=1)
    for row in (1, 2, 3):
        fig.update_xaxes(type="category", tickangle=-60, row=row, col=1)
    fig.update_layout(barmode="group", showlegend=False)
    _style(fig, "The embedding, scaled in and reused out",
           f"√{cfg.hidden} scale on the way in; {'tied' if tied else 'untied'} head on the way out", 1040)
    repeat = int((e["lens_top"] == torch.tensor(record.tokens)).sum())
    raw, scaled = float(e["raw_rms"].mean()), float(e["scaled_rms"].mean())
    first = (f"The logit lens' first row repeats the input for **{repeat} of {T}** tokens: a token's own "
             f"embedding row is the one most similar to itself (bottom, blue above grey), because a vector's dot "
             f"product with itself is its squared length while other rows point elsewhere.")
    if not tied:
        first = (f"This model has its own output head (not tied), so the lens' first row need not repeat the input: "
                 f"it does for {repeat} of {T} tokens.")
    text = (f"The embedding rows are small (RMS {raw:.3g} for your tokens); Gemma 3 multiplies them by "
            f"√{cfg.hidden} = {e['scale']:.3g} (RMS {scaled:.3g}) so the tokens start at the size of what the layers "
            f"add. The head is {'**tied**: the same matrix turns' if tied else 'separate: its own matrix turns'} the "
            f"final state into logits, each logit the dot product of the final state with one row (middle: the "
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
        return rope_view(record, model, layer, 0 if head is None else head)
    if topic == "sliding":
        return sliding_view(record, layer, head)
    if topic == "geglu":
        return geglu_view(record, layer)
    if topic == "norms":
        return norms_view(record)
    return embedding_view(record, model)
