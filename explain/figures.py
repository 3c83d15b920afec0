"""Pure functions from a Record, a config or a model to a plotly Figure.

Every number drawn comes from the model's own code and weights: the masks from
`gemma3.model.sliding_mask`, the RoPE tables from `gemma3.model.RoPE`, attention, activations and the
logit lens from a recorded forward pass (explain.hooks.record), the parameter counts from
`model.param_groups()`. Figures stay light for the browser: big arrays are float32/uint8 numpy arrays
(plotly sends them base64-encoded).

Token labels read at any prompt length: heatmaps over tokens use category axes, on which Plotly labels every k-th
token with k chosen from the drawn size (every token when they fit; zooming in shows the others), and every hover
names its token and position; the logit lens writes a token into every cell and shows LENS_TOKENS tokens at a time,
with a slider to move along a longer prompt. No figure is taller than MAX_HEIGHT; log axes tick once per decade
or less (log_ticks). SLIDING and FULL colour sliding and full layers, and nothing else.
"""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
import torch
import torch.nn.functional as F
from plotly.subplots import make_subplots

from gemma3.generation import GREEDY_BELOW, check_settings
from gemma3.generation import sampling_probs as drawn_from
from gemma3.model import RoPE, sliding_mask

from . import phone
from .hooks import Record

MASK_CELLS = 256    # mask panels show at most this many positions a side (evenly sampled, each exact)
ROPE_POSITIONS = 128  # positions in the RoPE angle heatmaps
LENS_TOKENS = 20    # the logit lens shows this many tokens at a time, text in every cell; a slider moves the window
LENS_PHONE = 5      # ... and this many on a phone (explain.phone), where 20 columns would write over each other
LENS_CHARS = 8      # a lens cell writes at most this many characters of its token (the hover has all of it) ...
LENS_PHONE_CHARS = 5  # ... and this many on a phone
# the window slider's steps are positions, not layers (its ticks 0-7 once read as the model's 8 layers)
LENS_WINDOW_LABEL = dict(visible=True, prefix="first token shown: position ", font=dict(size=10), offset=4)
NEXT_TOKENS = 20    # bars in next_token_figure by default
MAX_HEIGHT = 700    # no figure is taller (a 1440 x 1000 screen shows it whole, with the page around it)

# One look for every figure, matching the app's theme (gr.themes.Soft, indigo and pink). The font: one in which W, w
# and ω, l, I and 1 never look alike (Verdana and Tahoma give I serifs; DejaVu Sans is Verdana's kin on Linux),
# unlike the theme's Montserrat, whose "Wq" reads "ωq".
FONT = "Verdana, Tahoma, 'DejaVu Sans', 'Segoe UI', system-ui, sans-serif"
INK, MUTED, GRID = "#1f2937", "#6b7280", "#e5e7eb"
SLIDING, FULL = "#4f46e5", "#db2777"   # indigo-600 / pink-600: sliding and full layers, only them
TEAL, GREY = "#0d9488", "#9ca3af"
ATTN, FFN = "#0284c7", "#d97706"       # sky-600 / amber-600: a layer's attention part and its feed-forward part
HIT = "#ea580c"                        # orange-600: the prompt's true next token (logit lens)
_AXIS = dict(gridcolor=GRID, linecolor="#d1d5db", zerolinecolor="#d1d5db", automargin=True,
             title=dict(font=dict(size=12, color=MUTED)), tickfont=dict(size=11))
TEMPLATE = go.layout.Template(layout=dict(
    font=dict(family=FONT, size=12, color=INK), paper_bgcolor="white", plot_bgcolor="white",
    colorway=[ATTN, FFN, TEAL, "#7c3aed", GREY],
    title=dict(x=0.01, xanchor="left", font=dict(size=15, color=INK)),
    xaxis=_AXIS, yaxis=_AXIS, hoverlabel=dict(font=dict(family=FONT, size=12)),
    legend=dict(bgcolor="rgba(255,255,255,0.85)", font=dict(size=11)),
    margin=dict(l=60, r=30, t=100, b=60)))


# ---- helpers -------------------------------------------------------------------------------------
def _style(fig: go.Figure) -> go.Figure:
    """The app's look (TEMPLATE) on a figure; subplot titles in the template's font. Every figure ends here."""
    fig.update_layout(template=TEMPLATE)
    fig.update_annotations(font=dict(family=FONT, size=12, color=INK))
    return fig


def message_figure(text: str) -> go.Figure:
    """A small figure that says `text` in words (shown instead of a blank plot when a figure cannot be drawn)."""
    fig = go.Figure()
    fig.add_annotation(text=_html(text), x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False,
                       font=dict(size=14, color=MUTED))
    fig.update_layout(height=160, margin=dict(l=20, r=20, t=20, b=20), xaxis=dict(visible=False),
                      yaxis=dict(visible=False))
    return _style(fig)


def _title(main: str, detail: str = "") -> dict:
    """A short title and, below it, its detail in smaller grey type (titles stay within a narrow plot)."""
    text = main if not detail else f"{main}<br><span style='font-size:12px;color:{MUTED}'>{detail}</span>"
    return dict(text=text)


def _html(s: str) -> str:
    """Plotly renders labels as pseudo-HTML: a token such as "<br>" must show as text."""
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _f32(x) -> np.ndarray:
    if torch.is_tensor(x):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def _layer_names(layer_types: list[str]) -> list[str]:
    return [f"{i} {t}" for i, t in enumerate(layer_types)]   # "0 sliding", "5 full": the words of every view


def _layer_axis(names: list[str], kinds: list[str | None]) -> dict:
    """A category axis of layer rows whose tick labels wear their layer's colour: SLIDING or FULL (None: INK)."""
    colour = {"sliding": SLIDING, "full": FULL, None: INK}
    return dict(type="category", categoryorder="array", categoryarray=names, tickmode="array", tickvals=names,
                ticktext=[f"<span style='color:{colour[k]}'>{n}</span>" for n, k in zip(names, kinds)])


def log_ticks(low: int, high: int = 0, most: int = 8) -> tuple[list[float], list[str]]:
    """Ticks of a logarithmic probability axis from 10**low to 10**high: one per decade, or one every k decades so
    that at most `most` show (never crowded), always including 10**high; labelled in percent (100%, 10%, 1%, 0.1%,
    ..., then 10⁻⁴% and smaller as powers)."""
    step = max(1, math.ceil((high - low + 1) / most))
    exps = list(range(high, low - 1, -step))[::-1]
    return [10.0 ** e for e in exps], [_percent(10.0 ** e) if e >= -5 else f"10<sup>{e + 2}</sup>%" for e in exps]


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
    initials = config.layers > 12   # the layer pattern's cells too narrow for a word: S and F
    fig = make_subplots(
        rows=2, cols=2, row_heights=[0.64, 0.36], vertical_spacing=0.16, horizontal_spacing=0.1,
        subplot_titles=(f"sliding layers: window {W}{same}", "full layers: causal",
                        "keys each query sees", "layer pattern" + (" (S: sliding, F: full)" if initials else "")))
    colors = {"sliding": SLIDING, "full": FULL}
    for col, (kind, window) in enumerate((("sliding", W), ("full", None)), start=1):
        m = sliding_mask(shown, shown, window).to(torch.uint8).numpy()
        fig.add_trace(go.Heatmap(
            z=m, x=shown.numpy(), y=shown.numpy(), zmin=0, zmax=1, showscale=False, name=f"{kind} mask",
            colorscale=[[0, "#f3f4f6"], [1, colors[kind]]],
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
        # each cell names its kind, in a word where a cell is wide enough (on a phone too), else by its initial
        text=[[("F" if f else "S") if initials else ("full" if f else "sliding") for f in full]],
        texttemplate="%{text}" if config.layers <= 32 else None, textfont=dict(size=10),
        customdata=[[_kind(config, not f) for f in full]],
        hovertemplate="layer %{x}: %{customdata}<extra></extra>"), row=2, col=2)
    fig.update_xaxes(title_text="layer", dtick=1 if config.layers <= 32 else None, row=2, col=2)
    fig.update_yaxes(title_text="attention", showticklabels=False, row=2, col=2)
    n_full = sum(full)
    fig.update_layout(
        title=_title(f"Attention masks for {seq_len} tokens: which keys each query may see",
                     f"built by the model's sliding_mask: {config.layers - n_full} "
                     f"<span style='color:{SLIDING}'>sliding</span> and {n_full} "
                     f"<span style='color:{FULL}'>full</span> layers"
                     + ("" if seq_len > W else f" · the window shows past {W} tokens: raise the length")),
        height=MAX_HEIGHT)
    sp = fig.get_subplot(2, 1)  # legend inside the keys-per-query panel, top left (above both lines: always empty)
    fig.update_layout(legend=dict(x=sp.xaxis.domain[0] + 0.01, xanchor="left", y=sp.yaxis.domain[1] - 0.01,
                                  yanchor="top"))
    return phone.stack(_style(fig))


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
    ropes = {"sliding": RoPE(D, config.rope_local_base),
             "full": RoPE(D, config.rope_global_base, config.rope_global_scale)}
    names = {"sliding": f"sliding layers, base {config.rope_local_base:g}",
             "full": f"full layers, base {config.rope_global_base:g}"
                     + (f", scale {config.rope_global_scale:g}" if config.rope_global_scale != 1 else "")}
    colors = {"sliding": SLIDING, "full": FULL}
    fig = make_subplots(
        rows=2, cols=2, vertical_spacing=0.16, horizontal_spacing=0.12,
        subplot_titles=("rotation frequency per dimension pair", "q·k of a vector with itself, d positions apart",
                        f"rotation angle, {names['sliding']}", f"rotation angle, {names['full']}"))
    pairs = np.arange(D // 2)
    far = max(2, config.context)
    distances = torch.unique(torch.logspace(0, math.log10(far), 400).round().long())
    for kind, rope in ropes.items():
        fig.add_trace(go.Scatter(x=pairs, y=_f32(rope.inv_freq), mode="lines+markers", marker=dict(size=3),
                                 name=f"{kind}, base {rope.base:g}",
                                 legendgroup=kind, line=dict(color=colors[kind]),
                                 hovertemplate="pair %{x}: %{y:.3g} rad/position<extra></extra>"), row=1, col=1)
        fig.add_trace(go.Scatter(x=distances.numpy(), y=_f32(_self_dot(rope, D, distances)), mode="lines",
                                 name=names[kind], legendgroup=kind, showlegend=False, line=dict(color=colors[kind]),
                                 hovertemplate="d = %{x}: %{y:.3f}<extra></extra>"), row=1, col=2)
        cos, sin = rope(torch.arange(positions), torch.float32)
        angle = torch.atan2(sin[:, : D // 2], cos[:, : D // 2]) % (2 * math.pi)
        fig.add_trace(go.Heatmap(z=_f32(angle), x=pairs, y=np.arange(positions), coloraxis="coloraxis",
                                 name=f"{kind} angles",
                                 hovertemplate="position %{y}, pair %{x}: %{z:.2f} rad<extra></extra>"),
                      row=2, col=1 if kind == "sliding" else 2)
    fig.update_xaxes(title_text="dimension pair (i, i + head_dim/2)", row=1, col=1)
    # one tick per power of ten on the log axes (Plotly's default adds 2 and 5 between them, which collide)
    fig.update_yaxes(title_text="radians per position (log)", type="log", dtick=1, exponentformat="power",
                     row=1, col=1)
    fig.update_xaxes(title_text="distance d in positions (log)", type="log", dtick=1, row=1, col=2)
    fig.update_yaxes(title_text="q·k / |q|²", row=1, col=2)
    for col in (1, 2):
        fig.update_xaxes(title_text="dimension pair", row=2, col=col)
        fig.update_yaxes(title_text="position", autorange="reversed", row=2, col=col)
    sp = fig.get_subplot(1, 1)  # legend inside the frequency panel, bottom left (the lines fall from the top left)
    fig.update_layout(
        title=_title("RoPE: how fast each dimension pair turns, for the two bases",
                     f"head_dim {D}; <span style='color:{SLIDING}'>sliding layers base {config.rope_local_base:g}"
                     f"</span>, <span style='color:{FULL}'>full layers base {config.rope_global_base:g}</span> · "
                     "look where the self-similarity falls: nearby for sliding, far away for full"),
        height=MAX_HEIGHT, legend=dict(x=sp.xaxis.domain[0] + 0.01, y=sp.yaxis.domain[0] + 0.01, yanchor="bottom"),
        coloraxis=dict(colorscale="Twilight", cmin=0, cmax=2 * math.pi,
                       colorbar=dict(_colorbar(fig, 2, 2, "angle mod 2π"), tickvals=[0, math.pi, 2 * math.pi],
                                     ticktext=["0", "π", "2π"])))
    return phone.stack(_style(fig))


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
                        horizontal_spacing=0.03, vertical_spacing=0.07 if rows > 1 else 0.1,
                        subplot_titles=[f"head {h}" for h in heads] if head is None else None)
    for n, h in enumerate(heads):
        r, c = divmod(n, cols)
        fig.add_trace(go.Heatmap(z=z[h], x=labels, y=labels, coloraxis="coloraxis", name=f"head {h}",
                                 hovertemplate=hover), row=r + 1, col=c + 1)
    # token axes: Plotly shows every k-th token, k chosen from the drawn size (all of them when they fit, at any
    # screen width); zooming in shows the others; the hover always names the query and the key with their positions
    fig.update_xaxes(type="category", tickangle=-60, tickfont=dict(size=10))
    fig.update_yaxes(type="category", autorange="reversed", tickfont=dict(size=10))
    for c in range(cols):
        fig.update_xaxes(title_text="key (attended to)", row=rows, col=c + 1)
    for r in range(rows):
        fig.update_yaxes(title_text="query (attending)", row=r + 1, col=1)
    who = f"head {head}" if head is not None else f"all {H} heads"
    look = ("look for the previous-token line left of the diagonal and a bright first column (an attention sink)"
            + (f"; keys {cfg.window} or more positions back stay empty" if sliding else ""))
    fig.update_layout(
        title=_title(f"Layer {layer}, {who}: who attends to whom ({'sliding' if sliding else 'full'} attention)",
                     f"{kind} · {look}"),
        title_font_color=SLIDING if sliding else FULL,
        coloraxis=dict(colorscale="Blues", cmin=0, colorbar=dict(title=dict(text="attention", side="right"))),
        height=MAX_HEIGHT if rows > 1 else 620, plot_bgcolor="#f9fafb")
    return phone.stack(_style(fig), min_px=300, max_px=340)   # on a phone the heads stand one above another


# ---- activations ---------------------------------------------------------------------------------
def attention_entropy(record: Record) -> torch.Tensor:
    """Mean over queries of each head's attention entropy in nats, [L, H]."""
    return torch.stack([torch.special.entr(p).sum(-1).mean(-1) for p in record.attn_probs])


def activation_figure(record: Record) -> go.Figure:
    """Residual norm per layer and token; attention vs feed-forward contribution sizes; attention entropy."""
    names = _layer_names(record.layer_types)
    labels = [_html(s) for s in record.labels]
    fig = make_subplots(
        rows=2, cols=2, specs=[[{"colspan": 2}, None], [{}, {}]], row_heights=[0.52, 0.48],
        vertical_spacing=0.22, horizontal_spacing=0.14,
        subplot_titles=("residual stream norm |x| after each layer: it grows layer by layer",
                        "mean size of what each layer adds", "attention entropy: low = focused, high = spread"))
    rows = ["embedding"] + [f"after {n}" for n in names]
    kinds = [None, *record.layer_types]
    fig.add_trace(go.Heatmap(z=_f32(record.residual.norm(dim=-1)), x=labels, y=rows, colorscale="Viridis",
                             name="residual norm", colorbar=_colorbar(fig, 1, 1, "|x|"),
                             hovertemplate="%{y}, token %{x}: |x| = %{z:.4g}<extra></extra>"), row=1, col=1)
    # every k-th token label, k from the drawn width (Plotly's category ticks); the hover names each token
    fig.update_xaxes(title_text="token (position: text)", type="category", tickangle=-60, row=1, col=1)
    fig.update_yaxes(title_text="layer", **_layer_axis(rows, kinds), row=1, col=1)
    for part, t, color in (("attention", record.attn_added, ATTN), ("feed-forward", record.ffn_added, FFN)):
        fig.add_trace(go.Bar(x=names, y=_f32(t.norm(dim=-1).mean(-1)), name=part, marker_color=color,
                             hovertemplate="layer %{x}: %{y:.4g}<extra>" + part + "</extra>"), row=2, col=1)
    fig.update_xaxes(title_text="layer", **_layer_axis(names, record.layer_types), row=2, col=1)
    top = max(float(record.attn_added.norm(dim=-1).mean(-1).max()), float(record.ffn_added.norm(dim=-1).mean(-1).max()))
    fig.update_yaxes(title_text="mean |added vector|", range=[0, 1.35 * top], row=2, col=1)  # room for the legend
    ent = attention_entropy(record)
    fig.add_trace(go.Heatmap(z=_f32(ent), x=[f"head {h}" for h in range(ent.shape[1])], y=names,
                             colorscale="Magma", name="attention entropy", colorbar=_colorbar(fig, 2, 2, "nats"),
                             hovertemplate="layer %{y}, %{x}: %{z:.3f} nats<extra></extra>"), row=2, col=2)
    fig.update_xaxes(title_text="head", type="category", row=2, col=2)
    fig.update_yaxes(title_text="layer", **_layer_axis(names, record.layer_types), row=2, col=2)
    sp = fig.get_subplot(2, 1)
    fig.update_layout(
        title=_title(f"Activations over {record.seq_len} tokens and {record.layers} layers",
                     "how big the residual stream grows, what each layer adds to it, how focused each head is · "
                     f"layer names in <span style='color:{SLIDING}'>indigo: sliding</span>, "
                     f"<span style='color:{FULL}'>pink: full</span>"),
        barmode="group", height=MAX_HEIGHT,
        legend=dict(x=sp.xaxis.domain[0] + 0.01, y=sp.yaxis.domain[1] - 0.01, yanchor="top"))
    return phone.stack(_style(fig))


# ---- next token ----------------------------------------------------------------------------------
def sampling_probs(logits: torch.Tensor, temperature: float, top_k: int | None = None, top_p: float | None = None,
                   repetition_penalty: float = 1.0, seen=None) -> torch.Tensor:
    """The distribution gemma3.generation.next_token samples from; the repetition penalty applies to the token ids
    `seen` (the text so far)."""
    mask = None
    if seen is not None and len(seen):
        mask = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
        mask[torch.as_tensor(list(seen), device=logits.device)] = True
    return drawn_from(logits, temperature, top_k, top_p, repetition_penalty, mask)


SAMPLED = "#059669"   # emerald-600: the token a story drew
NEXT = ATTN           # the bars of next_token_figure (not SLIDING: that colour means sliding layers only)


def text_tail(record: Record, chars: int = 16) -> str:
    """The end of the prompt as a title quotes it: its last tokens, `chars` characters or more (whole tokens, so a
    name cut into tokens reads whole: "named Ell", not "Ell"), spaces as spaces, at most twice `chars`."""
    tail = ""
    for i in reversed(record.tokens):
        tail = record.token_text[i].replace("␣", " ").replace("↵", " ") + tail
        if len(tail.strip()) >= chars:
            break
    return tail.strip()[-2 * chars:]


def next_token_figure(record: Record, temperature: float = 1.0, top_k: int | None = None,
                      n: int = NEXT_TOKENS, *, top_p: float | None = None, repetition_penalty: float = 1.0,
                      sampled: tuple[int, str] | None = None) -> go.Figure:
    """The most likely next tokens after the prompt, with the probabilities sampling would use.

    The probability axis is logarithmic: temperature divides the log-probabilities, so on this scale it visibly
    tilts the bars (flatter when hot, steeper when cold) even where one token dominates; each bar is labelled with
    its probability in percent. Tokens that top-k, top-p or greedy sampling rule out have probability 0 and no bar.
    The repetition penalty applies to the prompt's tokens. `sampled`: the token id a story actually drew here, its bar
    and its axis label in their own colour (added after the others when it is not among them): (token id, its text).
    The model's own distribution (temperature 1, nothing cut) is drawn as ticks only where the settings change it.
    """
    check_settings(1, temperature, top_k, top_p, repetition_penalty)
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= len(record.next_ids):
        raise ValueError(f"n must be a whole number from 1 to {len(record.next_ids)}, not {n!r}.")
    logits = record.logits[-1]
    p = sampling_probs(logits, temperature, top_k, top_p, repetition_penalty, record.tokens)
    base = logits.float().softmax(-1)
    ids, names = record.next_ids[:n], dict(record.token_text)
    if sampled is not None:
        names[sampled[0]] = sampled[1]
        sampled = sampled[0]
        ids = ids if sampled in ids else [*ids, sampled]
        rank = int((base > base[sampled]).sum())
    x = [f"{(rank if i == sampled else r) + 1}. {_html(names[i])}" for r, i in enumerate(ids)]
    shown = _f32(p[ids])
    setting = f"temperature {temperature:g}" + (" (greedy)" if temperature < GREEDY_BELOW else "") \
        + f", top-k {top_k if top_k is not None else 'off'}" \
        + (f", top-p {top_p:g}" if top_p is not None else "") \
        + (f", repetition penalty {repetition_penalty:g}" if repetition_penalty != 1.0 else "")
    fig = go.Figure()
    fig.add_trace(go.Bar(x=x, y=shown, name=setting, marker_color=[SAMPLED if i == sampled else NEXT for i in ids],
                         text=[_percent(v) if v > 0 else "ruled out" for v in shown], textposition="outside",
                         cliponaxis=False, textfont=dict(size=10),
                         customdata=ids, hovertemplate="%{x} (id %{customdata}): p = %{y:.4g}<extra></extra>"))
    if sampled is not None and ids[0] == sampled:   # the legend shows a bar trace in its first bar's colour: blue
        fig.data[0].showlegend = False
        fig.add_trace(go.Bar(x=[None], y=[None], name=setting, marker_color=NEXT, hoverinfo="skip"))
    # the model's own distribution as ticks, where the settings change it (else the ticks would sit on the bars
    # and the legend would name one distribution twice)
    own = temperature == 1.0 and top_k is None and top_p is None and repetition_penalty == 1.0
    if not own:
        fig.add_trace(go.Scatter(x=x, y=_f32(base[ids]), mode="markers", name="the model's own (temperature 1)",
                                 marker=dict(color=INK, size=12, symbol="line-ew-open", line=dict(width=2)),
                                 hovertemplate="%{x}: p = %{y:.4g} at temperature 1<extra></extra>"))
    after = _html(text_tail(record))
    floor = max(float(min(v for v in np.concatenate([shown, _f32(base[ids])]) if v > 0)), 1e-12)
    low, high = math.floor(math.log10(floor)) - 0.3, 0.25   # the probability axis, in decades
    if not own:   # a percentage stands on its bar; where the model's own tick would lie on it, it goes inside
        fig.data[0].update(textposition=label_positions(shown, _f32(base[ids]), (low, high)), insidetextanchor="end")
    detail = f"{setting}: the {n} shown hold {float(p[ids[:n]].sum()):.1%} of the probability"
    ticks = x
    if sampled is not None:   # marked by its colour and its axis label: nothing drawn over the bars' labels
        s = ids.index(sampled)
        detail = (f"the story drew {x[s].split('. ', 1)[1]}, in green (rank {rank + 1}, "
                  f"p = {_percent(float(p[sampled]))} at {setting})")
        ticks = [f"<span style='color:{SAMPLED}'><b>{t}</b></span>" if j == s else t for j, t in enumerate(x)]
    tickvals, ticktext = log_ticks(math.ceil(low), 0)
    fig.update_layout(
        title=_title(f"Next token after “…{after}”", detail),
        xaxis=dict(title="candidate next token (most likely first)", type="category", tickangle=-45,
                   tickmode="array", tickvals=x, ticktext=ticks),
        yaxis=dict(title="probability (log scale)", type="log", range=[low, high], tickvals=tickvals,
                   ticktext=ticktext),
        legend=dict(orientation="h", x=1, xanchor="right", y=1.02, yanchor="bottom"), height=520)
    # on a phone a bar is ~15 px wide: its label and its token stand upright
    return phone.merge(_style(fig), {"xaxis.tickangle": (-90, -45), "xaxis.tickfont.size": (10, None)},
                       traces=[[0, {"textangle": -90, "constraintext": "none", "textfont.size": 9}]],
                       wide=[[0, {"textangle": "auto", "constraintext": "both", "textfont.size": 10}]])


LABEL_SPAN = 0.07   # a bar's percentage label, in fractions of the probability axis' height (about 20 of 300 px)
LABEL_LENGTH = 0.2  # the same label standing upright (on a phone), a bar that holds it inside


def label_positions(bars: np.ndarray, ticks: np.ndarray, axis: tuple[float, float]) -> list[str]:
    """Where each bar's label goes on a log axis spanning 10^low..10^high: "inside" its top where a tick drawn at
    `ticks` lies on the bar's top or just above it (where an outside label stands) and the bar is tall enough to
    hold it, else "outside" (a tick further down inside the bar would lie on an inside label)."""
    low, high = axis
    decades = high - low
    top = np.log10(np.maximum(bars, 1e-30))
    gap = np.log10(np.maximum(ticks, 1e-30)) - top
    return ["inside" if b > 0 and -0.1 * LABEL_SPAN * decades <= g < LABEL_SPAN * decades
            and t - low > LABEL_LENGTH * decades else "outside" for b, g, t in zip(bars, gap, top)]


def _percent(p: float) -> str:
    """0.1234 -> '12%', 0.000123 -> '0.012%': two significant digits, in percent, never in e-notation
    (below 0.001%: '<0.001%')."""
    if 0 < p < 1e-5:
        return "<0.001%"
    return f"{p * 100:.2g}%" if p < 0.1 else f"{p * 100:.0f}%"


# ---- logit lens ----------------------------------------------------------------------------------
@torch.no_grad()
def lens_ranks(model, record: Record) -> dict:
    """For every residual row (embedding, after each layer) and position, through the model's own final norm and
    unembedding: probability and rank (1 = top) of the model's final prediction there, and of the true next token
    (the prompt's next token; NaN at the last position, which has none). Arrays [L + 1, T], float32 numpy.

    One pass over the vocabulary per layer (as the recorded top-1 lens), so it runs when first asked for, not
    while recording, and is kept on the record."""
    if record.lens_ranks is not None:
        return record.lens_ranks
    w = model.embed.weight if model.head is None else model.head.weight
    device = w.device
    final = record.lens_ids[-1].to(device)                         # the model's own prediction at each position
    nxt = torch.tensor(record.tokens[1:] + [record.tokens[-1]], device=device)
    out = {k: np.full(tuple(record.lens_ids.shape), np.nan, dtype=np.float32)
           for k in ("final_p", "final_rank", "true_p", "true_rank")}
    T = record.seq_len
    for row, x in enumerate(record.residual):
        logits = F.linear(model.final_norm(x.to(device=device, dtype=w.dtype)), w).float()
        logp = logits.log_softmax(-1)
        for kind, ids in (("final", final), ("true", nxt)):
            chosen = logits.gather(-1, ids[:, None])
            out[f"{kind}_p"][row] = logp.gather(-1, ids[:, None])[:, 0].exp().cpu().numpy()
            out[f"{kind}_rank"][row] = ((logits > chosen).sum(-1) + 1).cpu().numpy()
    out["true_p"][:, T - 1] = np.nan
    out["true_rank"][:, T - 1] = np.nan
    record.lens_ranks = out
    return out


def _cell(text: str, most: int = LENS_CHARS) -> str:
    """A token as a lens cell writes it: at most `most` characters (the hover shows it whole)."""
    return _html(text if len(text) <= most else text[: most - 1] + "…")


def lens_windows(T: int, n: int = LENS_TOKENS) -> list[int]:
    """The first positions of the lens's token windows: every n tokens, the last window ending at the last token."""
    return [0] if T <= n else sorted({min(k * n, T - n) for k in range(math.ceil(T / n))})


def logit_lens_figure(record: Record, ranks: dict | None = None) -> go.Figure:
    """For each layer and position, the top-1 token of final_norm + unembedding of the residual.

    With `ranks` (lens_ranks(model, record)) the colour is the probability each layer already gives the model's
    final prediction, the hover adds its rank and the true next token's, and cells whose top-1 is the true next
    token are outlined. Without it the colour is the top-1 token's own probability. Every cell writes its token and
    the top row the prompt's true next token; a prompt of more than LENS_TOKENS tokens shows its last LENS_TOKENS
    and a slider above the grid moves this window along the prompt (lens_windows).
    """
    names = ["embedding"] + [f"after {n}" for n in _layer_names(record.layer_types)]
    tt = record.token_text
    T = record.seq_len
    nexts = record.tokens[1:] + [None]
    x = [_html(s) for s in record.labels]
    top_p = _f32(record.lens_probs)
    text = [[_html(tt[i]) for i in row] for row in record.lens_ids.tolist()]
    cells = [[_cell(tt[i]) for i in row] for row in record.lens_ids.tolist()]
    if ranks is not None:
        z, what = ranks["final_p"], "probability of the final prediction"
        final = [_html(tt[i]) for i in record.lens_ids[-1].tolist()]
        true = [_html(tt[n]) if n is not None else "(none: end of the prompt)" for n in nexts]
        custom = np.empty(z.shape + (7,), dtype=object)
        for r in range(z.shape[0]):
            for c in range(T):
                custom[r, c] = (final[c], f"{ranks['final_rank'][r, c]:.0f}", true[c],
                                "–" if c == T - 1 else f"{ranks['true_p'][r, c]:.3g}",
                                "–" if c == T - 1 else f"{ranks['true_rank'][r, c]:.0f}", f"{top_p[r, c]:.3f}",
                                text[r][c])
        hover = ("%{y}, at %{x}<br>top-1 here: %{customdata[6]} (p = %{customdata[5]})<br>final prediction "
                 "%{customdata[0]}: p = %{z:.3g}, rank %{customdata[1]}<br>true next token %{customdata[2]}: "
                 "p = %{customdata[3]}, rank %{customdata[4]}<extra></extra>")
    else:
        z, what = top_p, "probability of the top-1 token"
        custom = np.array(text, dtype=object)[..., None]
        hover = "%{y}, at %{x}<br>predicts %{customdata[0]} with p = %{z:.3f}<extra></extra>"
    fig = go.Figure(go.Heatmap(
        z=z, x=x, y=names, text=cells, customdata=custom, texttemplate="%{text}", textfont=dict(size=10),
        colorscale="YlGnBu", zmin=0, zmax=1, name="logit lens", xgap=1, ygap=1, hovertemplate=hover,
        colorbar=dict(title=dict(text="probability", side="right"), thickness=12)))
    hits = [(c, r) for r, row in enumerate(record.lens_ids.tolist()) for c, i in enumerate(row)
            if c < T - 1 and i == record.tokens[c + 1]]
    # the whole cell outlined (on the category axes cell c spans c - 0.5 to c + 0.5), its text free; set at once
    # (fig.add_shape one at a time takes seconds for a long prompt's hundreds of hits: each re-checks them all)
    fig.update_layout(shapes=[dict(type="rect", x0=c - 0.45, x1=c + 0.45, y0=r - 0.42, y1=r + 0.42, layer="above",
                                   line=dict(color=HIT, width=2), name="top-1 = the true next token")
                              for c, r in hits])
    fig.add_trace(go.Scatter(   # the true next token written above the grid, in the top row
        x=x[:-1], y=["true next token"] * (T - 1), mode="text", text=[_cell(tt[n]) for n in nexts[:-1]],
        customdata=[_html(tt[n]) for n in nexts[:-1]], textfont=dict(size=10, color=HIT), name="true next token",
        showlegend=False, hovertemplate="after %{x} the prompt continues with %{customdata}<extra></extra>"))
    starts = lens_windows(T)
    n = min(T, LENS_TOKENS)
    rows = names + ["true next token"]

    def title(first: int) -> dict:
        shown = f"tokens {first}–{first + n - 1} of {T} (slider above the grid) · " if len(starts) > 1 else ""
        return _title("Logit lens: what each layer would predict next",
                      f"{shown}cell: the layer's top-1 token · colour: {what} · "
                      f"<span style='color:{HIT}'>outlined: it is the true next token (top row)</span>")

    fig.update_layout(
        title=dict(title(starts[-1]), y=1, yref="container", yanchor="top", pad=dict(t=14)),
        xaxis=dict(title="position: input token", type="category", tickangle=-45, showgrid=False,
                   range=[starts[-1] - 0.5, starts[-1] + n - 0.5], fixedrange=len(starts) > 1),
        yaxis=dict(title="residual stream after layer", **_layer_axis(rows, [None, *record.layer_types, None]),
                   showgrid=False),
        height=max(420, min(MAX_HEIGHT, 24 * len(rows) + 250 + (60 if len(starts) > 1 else 0))))
    if len(starts) > 1:   # the window: a slider above the grid, its steps labelled by their first position
        fig.update_layout(margin=dict(t=150), sliders=[dict(
            active=len(starts) - 1, x=0, y=1.0, xanchor="left", yanchor="bottom", len=1.0, pad=dict(t=0, b=12),
            currentvalue=LENS_WINDOW_LABEL, font=dict(size=10), ticklen=4,
            steps=[dict(method="relayout", label=str(s),
                        args=[{"xaxis.range": [s - 0.5, s + n - 0.5], "title.text": title(s)["text"]}])
                   for s in starts])])
    return _lens_on_phone(_style(fig), record, what, starts[-1], n)


def _lens_on_phone(fig: go.Figure, record: Record, what: str, first: int, n: int) -> go.Figure:
    """On a phone the lens shows LENS_PHONE tokens at a time (20 columns of text in ~230 px would overlap), its
    slider moving that window along the prompt."""
    T, tt = record.seq_len, record.token_text
    if T <= LENS_PHONE:
        return fig
    k = LENS_PHONE
    short = [[_cell(tt[i], LENS_PHONE_CHARS) for i in row] for row in record.lens_ids.tolist()]
    nexts = [_cell(tt[i], LENS_PHONE_CHARS) for i in record.tokens[1:]]
    starts = lens_windows(T, k)
    slider = dict(active=len(starts) - 1, x=0, y=1.0, xanchor="left", yanchor="bottom", len=1.0,
                  pad=dict(t=0, b=12), currentvalue=LENS_WINDOW_LABEL, font=dict(size=10), ticklen=4,
                  steps=[dict(method="relayout", label=str(s), args=[{"xaxis.range": [s - 0.5, s + k - 0.5]}])
                         for s in starts])
    title = _title("Logit lens: what each layer would predict next",
                   f"{k} of the {T} tokens at a time: the slider above the grid moves along the prompt · cell: the "
                   f"layer's top-1 token · colour: {what} · <span style='color:{HIT}'>outlined: it is the true next "
                   "token (top row)</span>")["text"]
    ya = fig.layout.yaxis
    cb = fig.data[0].colorbar
    # a thin colorbar (the title names it), rows without "after " and no axis title: the cells get the width; a
    # cell writes LENS_PHONE_CHARS characters
    return phone.merge(fig, {
        "yaxis.ticktext": ([t.replace(">after ", ">") for t in ya.ticktext], list(ya.ticktext)),
        "yaxis.title.text": ("", ya.title.text),
        "sliders": ([slider], [s.to_plotly_json() for s in fig.layout.sliders]),
        "xaxis.range": ([starts[-1] - 0.5, starts[-1] + k - 0.5], [first - 0.5, first + n - 0.5]),
        "xaxis.fixedrange": (True, fig.layout.xaxis.fixedrange),
        "title.text": (title, fig.layout.title.text),
        "margin.t": (150, fig.layout.margin.t),
        "height": (fig.layout.height + (0 if len(lens_windows(T)) > 1 else 60), fig.layout.height)},
        traces=[[0, {"colorbar.thickness": 8, "colorbar.title.text": "", "colorbar.tickfont.size": 9,
                     "textfont.size": 8, "text": [short]}], [1, {"textfont.size": 8, "text": [nexts]}]],
        wide=[[0, {"colorbar.thickness": cb.thickness, "colorbar.title.text": cb.title.text,
                   "colorbar.tickfont.size": None, "textfont.size": 10, "text": [list(map(list, fig.data[0].text))]}],
              [1, {"textfont.size": 10, "text": [list(fig.data[1].text)]}]])


# ---- parameters ----------------------------------------------------------------------------------
MATRICES = (  # (bar label, part of model.param_groups(), colour, parameter name ends with / starts with)
    ("embedding", "embedding", TEAL, "embed."),
    ("Wq (query)", "attention", ATTN, ".attn.wq.weight"),
    ("Wk (key)", "attention", ATTN, ".attn.wk.weight"),
    ("Wv (value)", "attention", ATTN, ".attn.wv.weight"),
    ("Wo (output)", "attention", ATTN, ".attn.wo.weight"),
    ("gate", "feed-forward", FFN, ".gate.weight"),
    ("up", "feed-forward", FFN, ".up.weight"),
    ("down", "feed-forward", FFN, ".down.weight"),
    ("norms", "norms", GREY, "norm"),
    ("head", "head", TEAL, "head."),
)


def parameter_counts(model) -> dict[str, int]:
    """Parameters by matrix (MATRICES' labels), from model.named_parameters(); sums to model.num_params()."""
    counts = dict.fromkeys(label for label, *_ in MATRICES)
    counts = {k: 0 for k in counts}
    for name, p in model.named_parameters():
        for label, _, _, key in MATRICES:
            if (name.startswith(key) if key.endswith(".") else key in name if key == "norm" else name.endswith(key)):
                counts[label] += p.numel()
                break
        else:
            raise ValueError(f"parameter {name} fits no row of MATRICES")
    return counts


def parameter_figure(model) -> go.Figure:
    """Where the parameters live, matrix by matrix, coloured by the part of model.param_groups() they belong to."""
    counts = parameter_counts(model)
    total = model.num_params()
    tied = model.head is None
    parts = {label: part for label, part, *_ in MATRICES}
    colors = [c for _, _, c, _ in MATRICES]

    def text(label, n):
        if label == "head" and tied:
            return "0: tied to the embedding"
        return f"{n / 1e6:.2f}M ({n / total:.1%})" if n >= 1e4 else f"{n:,} ({n / total:.2%})"

    labels = list(counts)
    fig = go.Figure(go.Bar(
        y=labels, x=list(counts.values()), orientation="h", text=[text(k, v) for k, v in counts.items()],
        textposition="outside", cliponaxis=False, marker_color=colors, name="parameters",
        customdata=[parts[k] for k in labels],
        hovertemplate="%{y} (%{customdata}): %{x:,} parameters<extra></extra>"))
    fig.update_layout(
        title=_title(f"Where the {total:,} parameters live ({total / 1e6:.1f}M)",
                     f"every layer's matrices summed · <span style='color:{ATTN}'>attention</span>, "
                     f"<span style='color:{FFN}'>feed-forward</span>, "
                     f"<span style='color:{TEAL}'>embedding and head</span>, norms in grey"),
        xaxis=dict(title="parameters", range=[0, max(counts.values()) * 1.35]),
        yaxis=dict(title="matrix", autorange="reversed", type="category"), height=460, margin=dict(r=40))
    return _style(fig)
