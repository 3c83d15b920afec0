"""Attention you can read word to word, in Explore's Attention sub-tab: BertViz's two views of one layer.

The heads grid: every head of the layer as a small map (rows: queries, columns: keys; a sliding layer's keys
outside its window hatched, the window's edge drawn); a click on a map shows that head in the large views (it
sets the sub-tab's Head picker and redraws). The lines view: the tokens in two columns, a line from each query
(left) to the keys it attends to (right), as opaque and as wide as the weight; hovering a token (a tap on a phone)
shows only its lines, with their weights beside the tokens at their other ends. With every head picked, the heads'
lines overlay in one colour each.

Both are gr.HTML drawn on the server from the cached recording (explain.attention_lines holds the data); their
js_on_load only reacts to the pointer: the hover never calls the server.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass

import gradio as gr

from explain import attention_lines as al
from explain.figures import FONT, FULL, SLIDING
from webapp import explore as ex
from webapp.errors import friendly
from webapp.inputs import UserError, number
from webapp.ui import CLICK_EVENT, EXPLORE_EVENT

ROW, TOP = 20, 6          # lines view: pixels a token row, and above the first
GAP = 150                 # pixels between the two token columns (where the lines run), at least
LABEL_CHARS = 14          # a longer token is cut with … (its full text in the tooltip)
INTRO = ("**Word to word.** Left: every head of the layer as a small map (rows: queries, columns: keys); click one "
         "to show that head large. Right: each token (left column) joined to the tokens it attends to (right column), "
         "a stronger line for a larger weight. Hover a token (tap it on a phone) to see only its lines and their "
         "weights; hover a token on the right to see which tokens attend to it.")


@dataclass(eq=False)
class AttentionLines:
    grid: gr.HTML
    lines: gr.HTML

    @property
    def outputs(self) -> list:
        return [self.grid, self.lines]


def head_value(head, heads: int) -> int | None:
    """The Head picker's value ("all", "2", 2) as a head index, None for every head."""
    if head in (None, "", "all", "All heads", -1):
        return None
    if isinstance(head, str):
        try:
            head = int(head.strip())
        except ValueError:
            raise UserError(f"Head must be 'all' or a number from 0 to {heads - 1}, not {head!r}.") from None
    return number(head, "Head", 0, heads - 1, integer=True)


def _esc(s) -> str:
    return html.escape(str(s), quote=True)


def _kind(layer_type: str, window: int | None) -> str:
    if layer_type == "sliding":
        return f'<span class="al-kind" style="color:{SLIDING}">sliding, window {window}</span>'
    return f'<span class="al-kind" style="color:{FULL}">full</span>'


def _window_words(att: al.LayerAttention) -> str:
    if att.window is None:
        return "A full layer: every token may attend to every earlier token."
    if att.window_bites:
        return (f"The hatched cells are keys outside the window of {att.window}: this sliding layer cannot see "
                "them; the line marks the window's edge.")
    return (f"The window of {att.window} keys holds all {att.total} tokens of this prompt, so it hides nothing yet: "
            f"a prompt longer than {att.window} tokens shows it cut.")


# ---- the heads grid --------------------------------------------------------------------------------
def grid_html(rec, layer: int, head: int | None) -> str:
    """Every head of `layer` as a small map, `head` (None: all) marked as the one shown large."""
    att = al.layer_attention(rec, layer, max_tokens=1)   # only its kind, window and token count
    T, heads = rec.seq_len, rec.attn_probs[layer].shape[0]
    edge = al.window_edge(T, att.window) if att.window else ""
    maps = []
    for h in range(heads):
        src = "data:image/png;base64," + base64.b64encode(al.head_map_png(rec, layer, h)).decode()
        overlay = (f'<svg class="al-edge" viewBox="0 0 {T} {T}" preserveAspectRatio="none" aria-hidden="true">'
                   f'<path class="al-window" d="{edge}" stroke="{SLIDING}"/></svg>' if edge else "")
        sel = " al-sel" if head == h else ""
        maps.append(
            f'<button type="button" class="al-map{sel}" data-head="{h}" aria-pressed="{str(head == h).lower()}" '
            f'title="Head {h} of layer {layer}: click to show it large">'
            f'<span class="al-mlabel" style="color:{al.head_color(h)}">head {h}</span>'
            f'<span class="al-mbox"><img src="{src}" alt="attention map of head {h}, layer {layer}">{overlay}</span>'
            f'</button>')
    all_sel = " al-sel" if head is None else ""
    return (f'<div class="al-grid" data-layer="{layer}" data-kind="{att.kind}" data-tokens="{T}">'
            f'<div class="al-title">Layer {layer}: its {heads} heads · {_kind(att.kind, att.window)}'
            f'<button type="button" class="al-all{all_sel}" data-head="all" aria-pressed="{str(head is None).lower()}">'
            f'all heads</button></div>'
            f'<div class="al-maps">{"".join(maps)}</div>'
            f'<p class="al-note">Rows: queries, columns: keys ({T} tokens); darker = more attention (shaded by the '
            f'square root of the weight, so weak attention still shows). {_esc(_window_words(att))}</p></div>')


# ---- the lines view --------------------------------------------------------------------------------
def _label(token: str) -> str:
    return token if len(token) <= LABEL_CHARS else token[:LABEL_CHARS - 1] + "…"


def _tokens(att: al.LayerAttention, side: str, x: float, width: float, anchor: str) -> str:
    out = []
    for i, (pos, tok) in enumerate(zip(att.positions, att.tokens)):
        y = TOP + i * ROW
        tx = x + width - 4 if anchor == "end" else x + 4
        out.append(f'<g class="al-t" data-side="{side}" data-i="{i}"><title>{pos}: {_esc(tok)}</title>'
                   f'<rect x="{x:g}" y="{y}" width="{width:g}" height="{ROW}"/>'
                   f'<text x="{tx:g}" y="{y + ROW - 6}" text-anchor="{anchor}">{_esc(_label(tok))}</text></g>')
    return "".join(out)


def _numbers(att: al.LayerAttention, side: str, x: float, anchor: str) -> str:
    return "".join(f'<text class="al-w" data-side="{side}" data-i="{i}" x="{x:g}" y="{TOP + i * ROW + ROW - 6}" '
                   f'text-anchor="{anchor}"></text>' for i in range(att.n))


def lines_svg(att: al.LayerAttention, drawn: al.Lines, shown: list[int]) -> str:
    """The two token columns and the lines between them; `shown`: the heads drawn."""
    label_w = max(44, round(8.2 * max(len(_label(t)) for t in att.tokens)) + 14)   # wide letters (m, w, ␣) too
    xq = label_w                              # the query column's right edge
    xk = xq + max(GAP, 48 + 28 * len(shown))  # the key column's left edge; the weights are written in between
    width, height = xk + label_w, TOP + att.n * ROW + 6
    groups = {h: [] for h in shown}
    for h, q, k, w in drawn.rows:
        y1, y2 = TOP + q * ROW + ROW // 2, TOP + k * ROW + ROW // 2
        wide = f' stroke-width="{1 + 3 * w:.1f}"' if w >= 0.05 else ""   # the group's 1 below
        groups[h].append(f'<path d="M{xq + 4:g} {y1:g}L{xk - 4:g} {y2:g}" data-q="{q}" data-k="{k}" data-w="{w:.3f}" '
                         f'stroke-opacity="{min(1.0, 0.08 + 0.92 * w ** 0.7):.2f}"{wide}/>')
    links = "".join(f'<g class="al-h" data-h="{h}" stroke="{al.head_color(h)}">{"".join(g)}</g>'
                    for h, g in groups.items())
    return (f'<svg class="al-svg" width="{width:g}" height="{height}" viewBox="0 0 {width:g} {height}" '
            f'role="img" aria-label="attention lines">'
            f'<g class="al-links">{links}</g>'
            f'{_tokens(att, "q", 0, label_w, "end")}{_tokens(att, "k", xk, label_w, "start")}'
            f'{_numbers(att, "q", xq + 6, "start")}{_numbers(att, "k", xk - 6, "end")}</svg>')


def lines_html(rec, layer: int, head: int | None) -> str:
    """The lines view of `head` (None: every head, overlaid in their colours) in `layer`."""
    att = al.layer_attention(rec, layer)
    drawn = al.lines(att, head)
    shown = [head] if head is not None else list(range(att.heads))
    who = f"head {head}" if head is not None else f"all {att.heads} heads"
    legend = "".join(f'<span><i style="background:{al.head_color(h)}"></i>head {h}</span>' for h in shown)
    notes = "".join(f'<p class="al-note al-cut">{_esc(n)}</p>' for n in (att.note, drawn.note) if n)
    return (f'<div class="al-lines" data-layer="{layer}" data-head="{"all" if head is None else head}" '
            f'data-lines="{len(drawn.rows)}">'
            f'<div class="al-title">Layer {layer}, {who} · {_kind(att.kind, att.window)}</div>'
            f'<div class="al-legend">{legend}<span class="al-hint">queries ← → keys</span></div>{notes}'
            f'<div class="al-scroll">{lines_svg(att, drawn, shown)}</div></div>')


def draw(explorer: ex.Explorer, prompt, layer, head, source=None) -> tuple[str, str]:
    """(heads grid, lines view) of the prompt's recording at `layer` and `head` (the pickers' values)."""
    rec = explorer.record(prompt, source)
    layer = number(layer, "Layer", 0, rec.layers - 1, integer=True)
    head = head_value(head, rec.attn_probs[0].shape[0])
    return grid_html(rec, layer, head), lines_html(rec, layer, head)


CSS = """
.al-grid, .al-lines { font-family: __FONT__; font-size: 13px; color: var(--body-text-color); min-width: 0; }
.al-title { display: flex; flex-wrap: wrap; align-items: center; gap: 4px 8px; font-weight: 600; margin: 2px 0 6px; }
.al-kind { font-weight: 600; }
.al-note { margin: 6px 0 0; font-size: 12px; color: var(--body-text-color-subdued); }
.al-all { margin-left: auto; padding: 2px 10px; border-radius: 999px; border: 1px solid var(--border-color-primary);
  background: var(--background-fill-primary); color: var(--body-text-color); font: inherit; font-size: 12px;
  cursor: pointer; }
.al-all.al-sel { border-color: var(--color-accent); background: var(--color-accent-soft); }
.al-maps { display: grid; grid-template-columns: repeat(auto-fit, minmax(96px, 1fr)); gap: 8px; }
.al-map { display: flex; flex-direction: column; gap: 2px; padding: 4px; min-width: 0; max-width: 240px;
  cursor: pointer;
  border: 2px solid var(--border-color-primary); border-radius: 8px; background: var(--background-fill-primary); }
.al-map:hover { border-color: var(--color-accent); }
.al-map.al-sel { border-color: var(--color-accent); box-shadow: 0 0 0 2px var(--color-accent-soft); }
.al-mlabel { font-weight: 600; font-size: 12px; }
.al-mbox { position: relative; display: block; width: 100%; aspect-ratio: 1; }
.al-mbox img { display: block; width: 100%; height: 100%; image-rendering: pixelated; border: 1px solid #e5e7eb; }
.al-edge { position: absolute; inset: 0; width: 100%; height: 100%; pointer-events: none; }
.al-window { fill: none; stroke-width: 2; vector-effect: non-scaling-stroke; }
.al-legend { display: flex; flex-wrap: wrap; gap: 2px 10px; font-size: 12px; color: var(--body-text-color-subdued); }
.al-legend i { display: inline-block; width: 14px; height: 4px; margin-right: 4px; vertical-align: middle; }
.al-hint { margin-left: auto; }
.al-scroll { max-height: 560px; max-width: 100%; overflow: auto; margin-top: 6px; border: 1px solid
  var(--border-color-primary); border-radius: 8px; background: var(--background-fill-primary); }
.al-svg { display: block; }
.al-svg text { fill: var(--body-text-color); font-size: 13px; }
.al-t rect { fill: transparent; cursor: pointer; }
.al-t:hover rect, .al-t.al-on rect { fill: var(--color-accent-soft); }
.al-t.al-on text { font-weight: 700; }
.al-links path { fill: none; stroke-linecap: round; }
.al-focus .al-links path { display: none; }
.al-focus .al-links path.al-on { display: inline; }
.al-focus .al-t:not(.al-on):not(.al-hit) text { fill: var(--body-text-color-subdued); }
.al-svg text.al-w { font-size: 11px; paint-order: stroke; stroke: var(--background-fill-primary); stroke-width: 4px;
  stroke-linejoin: round; pointer-events: none; }
.al-svg text.al-w tspan { font-weight: 600; }
""".replace("__FONT__", FONT)

# Hover (or tap) a token: only its lines stay, and the weights appear beside the tokens at their other end. All
# in the page, from the lines' data-w (the recording's weights): the server is not called.
JS = """
let pinned = null;
const root = () => element.querySelector('.al-lines');
const clear = () => {
  const r = root(); if (!r) return;
  r.classList.remove('al-focus');
  r.querySelectorAll('.al-on, .al-hit').forEach((e) => e.classList.remove('al-on', 'al-hit'));
  r.querySelectorAll('.al-w').forEach((e) => { e.textContent = ''; });
};
const show = (side, i) => {
  clear(); const r = root(); if (!r) return;
  const other = side === 'q' ? 'k' : 'q', ns = 'http://www.w3.org/2000/svg', at = new Map();
  r.classList.add('al-focus');
  r.querySelectorAll(`.al-t[data-side="${side}"][data-i="${i}"]`).forEach((t) => t.classList.add('al-on'));
  r.querySelectorAll(`.al-links path[data-${side}="${i}"]`).forEach((l) => {
    l.classList.add('al-on');
    const j = l.dataset[other];
    if (!at.has(j)) at.set(j, []);
    at.get(j).push([l.parentNode.getAttribute('stroke'), l.dataset.w]);
  });
  for (const [j, ws] of at) {
    r.querySelectorAll(`.al-t[data-side="${other}"][data-i="${j}"]`).forEach((t) => t.classList.add('al-hit'));
    const box = r.querySelector(`.al-w[data-side="${other}"][data-i="${j}"]`);
    if (!box) continue;
    ws.forEach(([color, w], n) => {
      const s = document.createElementNS(ns, 'tspan');
      s.setAttribute('fill', color); s.textContent = (n ? ' ' : '') + w.replace(/^0\\./, '.');
      box.appendChild(s);
    });
  }
};
const token = (e) => e.target.closest && e.target.closest('.al-t');
element.addEventListener('mouseover', (e) => {
  const t = token(e);
  if (t && pinned === null) show(t.dataset.side, t.dataset.i);
});
element.addEventListener('mouseout', (e) => {
  const t = token(e);
  if (t && pinned === null && !t.contains(e.relatedTarget)) clear();
});
element.addEventListener('click', (e) => {
  const t = token(e);
  if (!t) { if (pinned !== null) { pinned = null; clear(); } return; }
  const key = t.dataset.side + t.dataset.i;
  if (pinned === key) { pinned = null; clear(); } else { pinned = key; show(t.dataset.side, t.dataset.i); }
});
if (typeof watch === 'function') watch('value', () => { pinned = null; });
"""

# A click on a small map (or "all heads") becomes the grid's "click" event carrying {head}.
GRID_JS = """
element.addEventListener('click', (e) => {
  const b = e.target.closest && e.target.closest('[data-head]');
  if (b) trigger('click', {head: b.dataset.head});
});
"""

WAITING = '<p class="al-note">Open this view, or press Look inside, to draw the prompt’s attention.</p>'


def build() -> AttentionLines:
    """The two views, side by side (stacked on a phone), in the current block."""
    gr.Markdown(INTRO, elem_classes="guide")
    with gr.Row(equal_height=False, elem_id="attention-words"):
        with gr.Column(scale=1, min_width=320):
            grid = gr.HTML(WAITING, css_template=CSS, js_on_load=GRID_JS, elem_id="attention-grid")
        with gr.Column(scale=1, min_width=320):
            lines = gr.HTML(WAITING, css_template=CSS, js_on_load=JS, elem_id="attention-lines")
    return AttentionLines(grid, lines)


def wire(view: AttentionLines, explorer: ex.Explorer, prompt, layer, head, plot, choice, redraw_on: list,
         draw_plot):
    """Redraw on `redraw_on` (the sub-tab's select, Look inside, the pickers); a click on a small map sets the
    Head picker and redraws both views and `plot` (through `draw_plot(prompt, layer, head, source)`)."""

    @friendly
    def explore_attention_lines(prompt, layer, head, source=None):
        if not ex.prompt_ok(prompt):   # the sub-tab's figure (or Look inside) says why, once
            return gr.skip(), gr.skip()
        return draw(explorer, prompt, layer, head, source)

    @friendly
    def pick_head(prompt, layer, head, source=None, evt: gr.EventData = None):
        data = getattr(evt, "_data", None) or {}
        head = data.get("head", head)
        grid, lines = draw(explorer, prompt, layer, head, source)
        return gr.update(value=str(head)), grid, lines, draw_plot(prompt, layer, str(head), source)

    inputs = [prompt, layer, head, choice]
    gr.on(redraw_on, explore_attention_lines, inputs, view.outputs, api_name="explore_attention_lines", **EXPLORE_EVENT)
    view.grid.click(pick_head, inputs, [head, *view.outputs, plot], api_visibility="private", **CLICK_EVENT)
