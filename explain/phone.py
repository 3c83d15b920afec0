"""How a figure lays itself out on a phone: the updates the page script (webapp.ui.page) applies under 640 px.

A figure carries them in `layout.meta`: {"phone": {"layout": {key: value}, "traces": [[index, {key: value}]]},
"wide": the same keys with the figure's own values}. The page applies "phone" when the figure is narrower than
640 px and "wide" when it is wide again (Plotly.relayout, Plotly.restyle). `stack` makes them for a figure of
side-by-side subplots: on a phone its panels stand one above another (or `cols` a row), as wide as the screen,
each with its subplot title, colorbar and legend moved along with it, the figure taller to hold them.
"""

from __future__ import annotations

import textwrap

import plotly.graph_objects as go

GAP_PX = 46        # between two stacked rows, before room for the upper panel's tick labels and axis title
TICKS_PX = 56      # room for a row's x tick labels (token labels stand at an angle)
TITLE_PX = 22      # room for a row's x axis title
MIN_PX, MAX_PX = 190, 320   # a stacked panel's height
TITLE_CHARS = 44   # a longer subplot title wraps onto lines of at most this many characters (~320 px at 12 px)


def _suffix(name: str) -> str:
    return name[5:]   # "xaxis2" -> "2"


def _panels(fig: go.Figure) -> list[dict]:
    """Every subplot: its axes' layout names, their domains, whether a trace draws on it."""
    used = {(t.xaxis or "x", t.yaxis or "y") for t in fig.data if hasattr(t, "xaxis")}
    out = []
    for key in fig.layout:
        if not key.startswith("xaxis"):
            continue
        xa = fig.layout[key]
        y = xa.anchor if xa.anchor and xa.anchor != "free" else "y"
        ykey = "yaxis" + y[1:]
        ya = fig.layout[ykey]
        x0, x1 = xa.domain or (0, 1)
        y0, y1 = ya.domain or (0, 1)
        out.append(dict(x=key, y=ykey, box=(x0, x1, y0, y1), used=("x" + _suffix(key), y) in used,
                        ticks=xa.showticklabels is not False or bool(xa.matches),   # shared: shown on a phone
                        title=bool(xa.title and xa.title.text)))
    return out


def _wrap(text: str) -> str:
    """Break `text` at spaces into lines of at most TITLE_CHARS characters (no tag is split: titles are plain)."""
    return "<br>".join(textwrap.wrap(text, TITLE_CHARS, break_long_words=False, break_on_hyphens=False))


def _near(panels: list[dict], x: float, y: float) -> dict:
    """The panel nearest the paper point (x, y) (inside it: that panel)."""
    def dist(p):
        x0, x1, y0, y1 = p["box"]
        return max(x0 - x, 0, x - x1) + max(y0 - y, 0, y - y1)
    return min(panels, key=dist)


def _move(v: float, lo: float, hi: float, nlo: float, nhi: float, px: float, npx: float) -> float:
    """v on the old span [lo, hi] (old plot px per unit: px) to the new span, keeping pixel offsets outside it."""
    if v < lo:
        return nlo - (lo - v) * px / npx
    if v > hi:
        return nhi + (v - hi) * px / npx
    return nlo + (v - lo) / (hi - lo) * (nhi - nlo) if hi > lo else nlo


def stack(fig: go.Figure, cols: int = 1, min_px: int = MIN_PX, max_px: int = MAX_PX) -> go.Figure:
    """Give `fig` (made by make_subplots) the phone layout described in the module's docstring; returns it."""
    panels = [p for p in _panels(fig) if p["used"]]
    if len(panels) < 2 or all(p["box"][1] - p["box"][0] > 0.7 for p in panels):
        return fig   # one panel, or panels one above another already
    height = fig.layout.height or 450
    m = fig.layout.margin
    t, b = (m.t if m.t is not None else 100), (m.b if m.b is not None else 60)
    area = max(1, height - t - b)
    # reading order, in rows of `cols` (a panel as wide as the figure has a row to itself)
    panels.sort(key=lambda p: (-round(p["box"][3], 3), p["box"][0]))
    rows, row = [], []
    for p in panels:
        wide = p["box"][1] - p["box"][0] > 0.7
        if row and (wide or len(row) == cols):
            rows.append(row)
            row = []
        row.append(p)
        if wide:
            rows.append(row)
            row = []
    if row:
        rows.append(row)
    heights = [max(min_px, min(max_px, max((p["box"][3] - p["box"][2]) * area for p in r))) for r in rows]
    gaps = [GAP_PX + TICKS_PX * any(p["ticks"] for p in r) + TITLE_PX * any(p["title"] for p in r) for r in rows[:-1]]
    new_area = sum(heights) + sum(gaps)
    lay, wide = {"height": round(new_area + t + b)}, {"height": height}
    top = new_area
    for r, h, gap in zip(rows, heights, gaps + [0]):
        n = len(r) if len(r) > 1 else 1
        for i, p in enumerate(r):
            x0 = i / n + (0.04 if i else 0)
            x1 = (i + 1) / n - (0.04 if i + 1 < n else 0)
            p["new"] = (x0, x1, (top - h) / new_area, top / new_area)
        top -= h + gap
    placed = {p["x"] for p in panels}
    for p in _panels(fig):
        if p["x"] not in placed:
            lay[f"{p['x']}.visible"], wide[f"{p['x']}.visible"] = False, fig.layout[p["x"]].visible
            lay[f"{p['y']}.visible"], wide[f"{p['y']}.visible"] = False, fig.layout[p["y"]].visible
    for p in panels:
        lay[f"{p['x']}.domain"], wide[f"{p['x']}.domain"] = list(p["new"][:2]), list(p["box"][:2])
        lay[f"{p['y']}.domain"], wide[f"{p['y']}.domain"] = list(p["new"][2:]), list(p["box"][2:])
        for ax in (p["x"], p["y"]):   # shared axes: every stacked panel labels its own ticks
            if fig.layout[ax].showticklabels is False and fig.layout[ax].matches:
                lay[f"{ax}.showticklabels"], wide[f"{ax}.showticklabels"] = True, False

    def place(x: float, y: float) -> tuple[float, float]:
        p = _near(panels, x, y)
        x0, x1, y0, y1 = p["box"]
        n0, n1, m0, m1 = p["new"]
        return _move(x, x0, x1, n0, n1, 1, 1), _move(y, y0, y1, m0, m1, area, new_area)

    def scale(p_len: float, x: float, y: float) -> float:
        p = _near(panels, x, y)
        return p_len * (p["new"][3] - p["new"][2]) / max(1e-6, p["box"][3] - p["box"][2])

    for i, a in enumerate(fig.layout.annotations):
        if (a.xref or "paper") == "paper" and (a.yref or "paper") == "paper" and a.x is not None and a.y is not None:
            nx, ny = place(a.x, a.y)
            if a.text and len(a.text) > TITLE_CHARS and "<" not in a.text:   # a subplot title within the screen
                lay[f"annotations[{i}].text"], wide[f"annotations[{i}].text"] = _wrap(a.text), a.text
            lay[f"annotations[{i}].x"], lay[f"annotations[{i}].y"] = nx, ny
            wide[f"annotations[{i}].x"], wide[f"annotations[{i}].y"] = a.x, a.y
    lg = fig.layout.legend
    if lg.x is not None and lg.y is not None and (lg.yref or "paper") == "paper":
        (lay["legend.x"], lay["legend.y"]), wide["legend.x"], wide["legend.y"] = place(lg.x, lg.y), lg.x, lg.y
    first = panels[0]["new"]
    for key in fig.layout:   # colour axes' bars: beside their panel; one placed by Plotly (a shared one): the first
        if not key.startswith("coloraxis"):
            continue
        cb = fig.layout[key].colorbar
        if cb.y is not None:
            _colorbar(cb, f"{key}.colorbar.", lay, wide, place, scale)
        else:
            for k, v in (("y", first[3]), ("yanchor", "top"), ("len", first[3] - first[2]), ("thickness", 12)):
                lay[f"{key}.colorbar.{k}"], wide[f"{key}.colorbar.{k}"] = v, getattr(cb, k)
    phone, back = [], []
    for i, tr in enumerate(fig.data):
        cb = getattr(tr, "colorbar", None)
        if cb is None or cb.y is None or getattr(tr, "showscale", None) is False or getattr(tr, "coloraxis", None):
            continue
        one, before = {}, {}
        _colorbar(cb, "colorbar.", one, before, place, scale)
        phone.append([i, one])
        back.append([i, before])
    return merge(fig, {k: (v, wide[k]) for k, v in lay.items()}, phone, back)


def _colorbar(cb, prefix: str, lay: dict, wide: dict, place, scale) -> None:
    x = cb.x if cb.x is not None else 1.02
    nx, ny = place(x, cb.y)
    lay[prefix + "x"], lay[prefix + "y"] = nx, ny
    wide[prefix + "x"], wide[prefix + "y"] = cb.x, cb.y
    if cb.len is not None and (cb.lenmode or "fraction") == "fraction":
        lay[prefix + "len"], wide[prefix + "len"] = scale(cb.len, x, cb.y), cb.len


def merge(fig: go.Figure, layout: dict | None = None, traces: list | None = None, wide: list | None = None
          ) -> go.Figure:
    """Add phone-only updates to `fig`'s meta: layout {key: (phone value, wide value)}; trace updates
    [[index, {key: phone value}]] and, in `wide`, the same with the wide values."""
    meta = dict(fig.layout.meta or {})
    phone = meta.setdefault("phone", {"layout": {}, "traces": []})
    back = meta.setdefault("wide", {"layout": {}, "traces": []})
    for k, (p, w) in (layout or {}).items():
        phone["layout"][k], back["layout"][k] = p, w
    phone["traces"] += traces or []
    back["traces"] += wide or []
    fig.update_layout(meta=meta)
    return fig
