"""Pure functions from a Record, a config or a model to a plotly Figure.

Every number drawn comes from the model's own code and weights: the masks from
`gemma3.model.sliding_mask`, the RoPE tables from `gemma3.model.RoPE`, attention, activations and the
logit lens from a recorded forward pass (explain.hooks.record), the parameter counts from
`model.param_groups()`. Figures stay light for the browser: big arrays are float32/uint8 numpy arrays
(plotly sends them base64-encoded), and per-cell text is written only into small grids.
"""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from gemma3.generate import check_settings
from gemma3.model import RoPE, sliding_mask

from .hooks import Record

MASK_CELLS = 256    # mask panels show at most this many positions a side (evenly sampled, each exact)
ROPE_POSITIONS = 128  # positions in the RoPE angle heatmaps
TEXT_CELLS = 600    # the logit lens writes tokens into the cells only up to this many cells (hover always)
NEXT_TOKENS = 20    # bars in next_token_figure by default


# ---- helpers -------------------------------------------------------------------------------------
def _html(s: str) -> str:
    """Plotly renders labels as pseudo-HTML: a token such as "<br>" must show as text."""
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _f32(x) -> np.ndarray:
    if torch.is_tensor(x):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def _layer_names(layer_types: list[str]) -> list[str]:
    return [f"{i} {'local' if t == 'sliding' else 'global'}" for i, t in enumerate(layer_types)]


def _colorbar(fig: go.Figure, row: int, col: int, title: str, **extra) -> dict:
    """A colorbar standing just right of subplot (row, col), as tall as it."""
    sp = fig.get_subplot(row, col)
    (_, x1), (y0, y1) = sp.xaxis.domain, sp.yaxis.domain
    return dict(title=dict(text=title, side="right"), x=x1 + 0.005, xanchor="left", y=(y0 + y1) / 2,
                yanchor="middle", len=y1 - y0, thickness=12, **extra)


def _kind(config, sliding: bool) -> str:
    if sliding:
        return f"sliding: the last {config.window} keys, RoPE base {config.rope_local_base:g}"
    return f"full: every earlier key, RoPE base {config.rope_global_base:g}"


def keys_per_query(queries: torch.Tensor, seq_len: int, window: int | None) -> torch.Tensor:
    """How many of the seq_len keys each query position may see, counted on the model's own mask."""
    return sliding_mask(queries, torch.arange(seq_len), window).sum(-1)


# ---- mask ----------------------------------------------------------------------------------------
def mask_figure(config, seq_len: int) -> go.Figure:
    """The sliding and the full mask side by side, keys seen per query, and the layer pattern strip."""
    if not isinstance(seq_len, int) or isinstance(seq_len, bool) or not 1 <= seq_len <= config.context:
        raise ValueError(f"seq_len must be a whole number from 1 to the model's context of {config.context}, "
                         f"not {seq_len!r}.")
    W = config.window
    step = math.ceil(seq_len / MASK_CELLS)
    shown = torch.arange(0, seq_len, step)
    sampled = f" (sampled every {step} positions)" if step > 1 else ""
    same = " = full mask at this length" if seq_len <= W else ""
    fig = make_subplots(
        rows=2, cols=2, row_heights=[0.64, 0.36], vertical_spacing=0.16, horizontal_spacing=0.1,
        subplot_titles=(f"sliding layers: window {W}{same}", "full layers: causal",
                        "keys each query sees", "layer pattern"))
    colors = {"sliding": "#2a78b5", "full": "#d9622b"}
    for col, (kind, window) in enumerate((("sliding", W), ("full", None)), start=1):
        m = sliding_mask(shown, shown, window).to(torch.uint8).numpy()
        fig.add_trace(go.Heatmap(
            z=m, x=shown.numpy(), y=shown.numpy(), zmin=0, zmax=1, showscale=False, name=f"{kind} mask",
            colorscale=[[0, "#f2f2f2"], [1, colors[kind]]],
            hovertemplate="query %{y}, key %{x}: %{z} (1 = visible)<extra></extra>"), row=1, col=col)
        fig.update_xaxes(title_text=f"key position{sampled}", row=1, col=col)
        fig.update_yaxes(title_text="query position", autorange="reversed", row=1, col=col)
        counts = keys_per_query(shown, seq_len, window).to(torch.int32).numpy()
        label = f"sliding layers (window {W})" if window is not None else "full layers"
        fig.add_trace(go.Scatter(x=shown.numpy(), y=counts, mode="lines", name=label, line=dict(color=colors[kind]),
                                 hovertemplate="query %{x}: %{y} keys<extra>" + kind + "</extra>"), row=2, col=1)
    fig.update_xaxes(title_text=f"query position{sampled}", row=2, col=1)
    fig.update_yaxes(title_text="keys visible", rangemode="tozero", row=2, col=1)

    full = [t == "full" for t in config.layer_types]
    fig.add_trace(go.Heatmap(
        z=[[int(f) for f in full]], x=list(range(config.layers)), y=["layer"], zmin=0, zmax=1, showscale=False,
        colorscale=[[0, colors["sliding"]], [1, colors["full"]]], xgap=2, name="layer pattern",
        text=[["global" if f else "local" for f in full]], texttemplate="%{text}" if config.layers <= 32 else None,
        customdata=[[_kind(config, not f) for f in full]],
        hovertemplate="layer %{x}: %{customdata}<extra></extra>"), row=2, col=2)
    fig.update_xaxes(title_text="layer", dtick=1 if config.layers <= 32 else None, row=2, col=2)
    fig.update_yaxes(title_text="attention", showticklabels=False, row=2, col=2)
    n_full = sum(full)
    fig.update_layout(
        title=f"Attention masks for {seq_len} tokens, built by the model's sliding_mask: "
              f"{config.layers - n_full} sliding and {n_full} full layers",
        height=720)
    sp = fig.get_subplot(2, 1)  # legend inside the keys-per-query panel, bottom right (always empty there)
    fig.update_layout(legend=dict(x=sp.xaxis.domain[1] - 0.01, xanchor="right", y=sp.yaxis.domain[0] + 0.01,
                                  yanchor="bottom", bgcolor="rgba(255,255,255,0.7)"))
    return fig


# ---- RoPE ----------------------------------------------------------------------------------------
def _self_dot(rope: RoPE, head_dim: int, distances: torch.Tensor) -> torch.Tensor:
    """q.k / |q|^2 for q = k = the ones vector, k rotated d positions further than q (model's RoPE code)."""
    v = torch.ones(head_dim)
    cos0, sin0 = rope(torch.zeros(1, dtype=torch.long), torch.float32)
    q = RoPE.rotate(v[None], cos0, sin0)[0]
    cos, sin = rope(distances, torch.float32)
    k = RoPE.rotate(v.expand(len(distances), -1), cos, sin)
    return (k @ q) / (v @ v)


def rope_figure(config, positions: int = ROPE_POSITIONS) -> go.Figure:
    """RoPE frequencies per dimension pair for both bases, rotation angles, and self-similarity by distance."""
    D = config.head_dim
    ropes = {"local": RoPE(D, config.rope_local_base),
             "global": RoPE(D, config.rope_global_base, config.rope_global_scale)}
    names = {"local": f"local (sliding), base {config.rope_local_base:g}",
             "global": f"global (full), base {config.rope_global_base:g}"
                       + (f", scale {config.rope_global_scale:g}" if config.rope_global_scale != 1 else "")}
    colors = {"local": "#2a78b5", "global": "#d9622b"}
    fig = make_subplots(
        rows=2, cols=2, vertical_spacing=0.16, horizontal_spacing=0.12,
        subplot_titles=("rotation frequency per dimension pair", "q·k of a vector with itself, d positions apart",
                        f"rotation angle, {names['local']}", f"rotation angle, {names['global']}"))
    pairs = np.arange(D // 2)
    far = max(2, config.context)
    distances = torch.unique(torch.logspace(0, math.log10(far), 400).round().long())
    for kind, rope in ropes.items():
        fig.add_trace(go.Scatter(x=pairs, y=_f32(rope.inv_freq), mode="lines+markers", marker=dict(size=3),
                                 name=names[kind], legendgroup=kind, line=dict(color=colors[kind]),
                                 hovertemplate="pair %{x}: %{y:.3g} rad/position<extra></extra>"), row=1, col=1)
        fig.add_trace(go.Scatter(x=distances.numpy(), y=_f32(_self_dot(rope, D, distances)), mode="lines",
                                 name=names[kind], legendgroup=kind, showlegend=False, line=dict(color=colors[kind]),
                                 hovertemplate="d = %{x}: %{y:.3f}<extra></extra>"), row=1, col=2)
        cos, sin = rope(torch.arange(positions), torch.float32)
        angle = torch.atan2(sin[:, : D // 2], cos[:, : D // 2]) % (2 * math.pi)
        fig.add_trace(go.Heatmap(z=_f32(angle), x=pairs, y=np.arange(positions), coloraxis="coloraxis",
                                 name=f"{kind} angles",
                                 hovertemplate="position %{y}, pair %{x}: %{z:.2f} rad<extra></extra>"),
                      row=2, col=1 if kind == "local" else 2)
    fig.update_xaxes(title_text="dimension pair (i, i + head_dim/2)", row=1, col=1)
    fig.update_yaxes(title_text="radians per position (log)", type="log", row=1, col=1)
    fig.update_xaxes(title_text="distance d in positions (log)", type="log", row=1, col=2)
    fig.update_yaxes(title_text="q·k / |q|²", row=1, col=2)
    for col in (1, 2):
        fig.update_xaxes(title_text="dimension pair", row=2, col=col)
        fig.update_yaxes(title_text="position", autorange="reversed", row=2, col=col)
    sp = fig.get_subplot(1, 1)  # legend inside the frequency panel, bottom left (always empty there)
    fig.update_layout(
        title=f"RoPE as the model builds it: head_dim {D}, bases {config.rope_local_base:g} (local) and "
              f"{config.rope_global_base:g} (global)",
        height=760, legend=dict(x=sp.xaxis.domain[0] + 0.01, y=sp.yaxis.domain[0] + 0.01, yanchor="bottom",
                                bgcolor="rgba(255,255,255,0.7)"),
        coloraxis=dict(colorscale="Twilight", cmin=0, cmax=2 * math.pi,
                       colorbar=dict(_colorbar(fig, 2, 2, "angle mod 2π"), tickvals=[0, math.pi, 2 * math.pi],
                                     ticktext=["0", "π", "2π"])))
    return fig


# ---- attention -----------------------------------------------------------------------------------
def attention_figure(record: Record, layer: int, head: int | None = None) -> go.Figure:
    """Attention over the prompt's tokens for one head, or (head=None) every head of the layer as a grid.

    Cells the mask hides are left empty (NaN), so the sliding window shows as the edge of the band.
    """
    L = record.layers
    if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < L:
        raise ValueError(f"layer must be a whole number from 0 to {L - 1}, not {layer!r}.")
    probs = record.attn_probs[layer]
    H, T = probs.shape[0], probs.shape[-1]
    if head is not None and (not isinstance(head, int) or isinstance(head, bool) or not 0 <= head < H):
        raise ValueError(f"head must be a whole number from 0 to {H - 1} (or None for all heads), not {head!r}.")
    cfg = record.config
    sliding = record.layer_types[layer] == "sliding"
    pos = torch.arange(T)
    visible = sliding_mask(pos, pos, cfg.window if sliding else None)
    z = _f32(probs.masked_fill(~visible, float("nan")))
    labels = [_html(s) for s in record.labels]
    hover = "query %{y}<br>key %{x}<br>attention %{z:.3f}<extra></extra>"
    kind = _kind(cfg, sliding)
    heads = [head] if head is not None else list(range(H))
    cols = math.ceil(math.sqrt(len(heads)))
    rows = math.ceil(len(heads) / cols)
    fig = make_subplots(rows=rows, cols=cols, shared_xaxes=True, shared_yaxes=True,
                        horizontal_spacing=0.03, vertical_spacing=0.06 if rows > 1 else 0.1,
                        subplot_titles=[f"head {h}" for h in heads] if head is None else None)
    for n, h in enumerate(heads):
        r, c = divmod(n, cols)
        fig.add_trace(go.Heatmap(z=z[h], x=labels, y=labels, coloraxis="coloraxis", name=f"head {h}",
                                 hovertemplate=hover), row=r + 1, col=c + 1)
    fig.update_xaxes(type="category", tickangle=-60)
    fig.update_yaxes(type="category", autorange="reversed")
    for c in range(cols):
        fig.update_xaxes(title_text="key (attended to)", row=rows, col=c + 1)
    for r in range(rows):
        fig.update_yaxes(title_text="query (attending)", row=r + 1, col=1)
    who = f"head {head}" if head is not None else f"all {H} heads"
    fig.update_layout(
        title=f"Layer {layer}, {who} — {kind}",
        coloraxis=dict(colorscale="Blues", cmin=0, colorbar=dict(title=dict(text="attention", side="right"))),
        height=max(480, 340 * rows + 140), plot_bgcolor="#fafafa")
    return fig


# ---- activations ---------------------------------------------------------------------------------
def attention_entropy(record: Record) -> torch.Tensor:
    """Mean over queries of each head's attention entropy in nats, [L, H]."""
    return torch.stack([torch.special.entr(p).sum(-1).mean(-1) for p in record.attn_probs])


def activation_figure(record: Record) -> go.Figure:
    """Residual norm per layer and token; attention vs feed-forward contribution sizes; attention entropy."""
    names = _layer_names(record.layer_types)
    labels = [_html(s) for s in record.labels]
    fig = make_subplots(
        rows=2, cols=2, specs=[[{"colspan": 2}, None], [{}, {}]], row_heights=[0.55, 0.45],
        vertical_spacing=0.2, horizontal_spacing=0.14,
        subplot_titles=("residual stream norm |x| after each layer", "mean size of what each layer adds",
                        "attention entropy (nats, mean over queries)"))
    rows = ["embedding"] + [f"after {n}" for n in names]
    fig.add_trace(go.Heatmap(z=_f32(record.residual.norm(dim=-1)), x=labels, y=rows, colorscale="Viridis",
                             name="residual norm", colorbar=_colorbar(fig, 1, 1, "|x|"),
                             hovertemplate="%{y}, token %{x}: |x| = %{z:.4g}<extra></extra>"), row=1, col=1)
    fig.update_xaxes(title_text="token", type="category", tickangle=-60, row=1, col=1)
    fig.update_yaxes(title_text="layer", type="category", row=1, col=1)
    for part, t, color in (("attention", record.attn_added, "#2a78b5"), ("feed-forward", record.ffn_added, "#d9622b")):
        fig.add_trace(go.Bar(x=names, y=_f32(t.norm(dim=-1).mean(-1)), name=part, marker_color=color,
                             hovertemplate="layer %{x}: %{y:.4g}<extra>" + part + "</extra>"), row=2, col=1)
    fig.update_xaxes(title_text="layer", type="category", row=2, col=1)
    fig.update_yaxes(title_text="mean |added vector|", row=2, col=1)
    ent = attention_entropy(record)
    fig.add_trace(go.Heatmap(z=_f32(ent), x=[f"head {h}" for h in range(ent.shape[1])], y=names,
                             colorscale="Magma", name="attention entropy", colorbar=_colorbar(fig, 2, 2, "nats"),
                             hovertemplate="layer %{y}, %{x}: %{z:.3f} nats<extra></extra>"), row=2, col=2)
    fig.update_xaxes(title_text="head", type="category", row=2, col=2)
    fig.update_yaxes(title_text="layer", type="category", row=2, col=2)
    sp = fig.get_subplot(2, 1)
    fig.update_layout(
        title=f"Activations over {record.seq_len} tokens and {record.layers} layers",
        barmode="group", height=820,
        legend=dict(x=sp.xaxis.domain[0] + 0.01, y=sp.yaxis.domain[1] - 0.01, yanchor="top",
                    bgcolor="rgba(255,255,255,0.7)"))
    return fig


# ---- next token ----------------------------------------------------------------------------------
def sampling_probs(logits: torch.Tensor, temperature: float, top_k: int | None = None) -> torch.Tensor:
    """The distribution gemma3.generate.next_token samples from (no repetition penalty, no top-p)."""
    logits = logits.float()
    if temperature == 0:
        return torch.zeros_like(logits).scatter(-1, logits.argmax(-1, keepdim=True), 1.0)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return logits.softmax(dim=-1)


def next_token_figure(record: Record, temperature: float = 1.0, top_k: int | None = None,
                      n: int = NEXT_TOKENS) -> go.Figure:
    """The most likely next tokens after the prompt, with the probabilities sampling would use."""
    check_settings(1, temperature, top_k, None, 1.0)
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= len(record.next_ids):
        raise ValueError(f"n must be a whole number from 1 to {len(record.next_ids)}, not {n!r}.")
    logits = record.logits[-1]
    p = sampling_probs(logits, temperature, top_k)
    base = logits.float().softmax(-1)
    ids = record.next_ids[:n]
    x = [f"{r + 1}. {_html(record.token_text[i])}" for r, i in enumerate(ids)]
    setting = f"temperature {temperature:g}" + (" (greedy)" if temperature == 0 else "") \
        + f", top-k {top_k if top_k is not None else 'off'}"
    fig = go.Figure()
    fig.add_trace(go.Bar(x=x, y=_f32(p[ids]), name=setting, marker_color="#2a78b5",
                         customdata=ids, hovertemplate="%{x} (id %{customdata}): p = %{y:.4f}<extra></extra>"))
    fig.add_trace(go.Scatter(x=x, y=_f32(base[ids]), mode="markers", name="temperature 1, no top-k",
                             marker=dict(color="#d9622b", size=9, symbol="line-ew-open", line=dict(width=3)),
                             hovertemplate="%{x}: p = %{y:.4f} at temperature 1<extra></extra>"))
    after = _html(record.token_text[record.tokens[-1]])
    fig.update_layout(
        title=f"Next token after “…{after}”: {setting} — the {n} shown hold {float(p[ids].sum()):.1%}",
        xaxis=dict(title="candidate next token (most likely first)", type="category", tickangle=-45),
        yaxis=dict(title="probability", range=[0, 1]),
        legend=dict(orientation="h", x=1, xanchor="right", y=1.0, yanchor="bottom"), height=460)
    return fig


# ---- logit lens ----------------------------------------------------------------------------------
def logit_lens_figure(record: Record) -> go.Figure:
    """For each layer and position, the top-1 token of final_norm + unembedding of the residual, and its probability."""
    names = ["embedding"] + [f"after {n}" for n in _layer_names(record.layer_types)]
    text = [[_html(record.token_text[i]) for i in row] for row in record.lens_ids.tolist()]
    small = record.lens_ids.numel() <= TEXT_CELLS
    fig = go.Figure(go.Heatmap(
        z=_f32(record.lens_probs), x=[_html(s) for s in record.labels], y=names, text=text,
        texttemplate="%{text}" if small else None, textfont=dict(size=10), colorscale="YlGnBu",
        zmin=0, zmax=1, name="logit lens", colorbar=dict(title=dict(text="probability", side="right")),
        hovertemplate="%{y}, at %{x}<br>predicts %{text} with p = %{z:.3f}<extra></extra>"))
    fig.update_layout(
        title="Logit lens: the next token each layer's residual predicts through the final norm and unembedding"
              + ("" if small else " (hover for the tokens)"),
        xaxis=dict(title="position: input token", type="category", tickangle=-60),
        yaxis=dict(title="residual stream after layer", type="category"),
        height=max(420, 26 * len(names) + 200))
    return fig


# ---- parameters ----------------------------------------------------------------------------------
def parameter_figure(model) -> go.Figure:
    """Where the parameters live, from model.param_groups() (the breakdown `python -m gemma3 info` prints)."""
    groups = model.param_groups()
    total = model.num_params()
    tied = model.head is None

    def text(part, n):
        if part == "head" and tied:
            return "tied to the embedding"
        return f"{n / 1e6:.2f}M ({n / total:.1%})"

    fig = go.Figure(go.Bar(x=list(groups), y=list(groups.values()), text=[text(k, v) for k, v in groups.items()],
                           textposition="outside", marker_color="#2a78b5", name="parameters",
                           hovertemplate="%{x}: %{y:,} parameters<extra></extra>"))
    fig.update_layout(title=f"Where the {total:,} parameters live ({total / 1e6:.1f}M)",
                      xaxis=dict(title="part of the model"), yaxis=dict(title="parameters"), height=420)
    return fig
