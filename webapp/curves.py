"""The Train tab's pictures: a run's loss curves over its learning-rate schedule, and the schedule alone
for the settings in the form (before Start).

The loss starts where a random guess over the vocabulary does, ln(vocabulary) nats (10.82 for GPT-2's
50,257 tokens), drawn as a dashed line: the run's step-0 evaluation sits on it, and everything below
it is learning. Steps are whole numbers on the x axis; on a log axis step 0 cannot be drawn and is left
out (the axis title says so).
"""

from __future__ import annotations

import math

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from explain.figures import TEMPLATE
from training.config import TrainConfig
from training.trainer import lr_at

COLORS = {"train": "#4f46e5", "val": "#db2777", "lr": "#0f766e", "guess": "#9ca3af"}
SCHEDULE_POINTS = 400  # points drawn of a schedule (each exact, evenly spaced steps)


def schedule(cfg: TrainConfig) -> tuple[list[int], list[float]]:
    """(steps, lr) of the run's schedule (trainer.lr_at: the lr of the update that ends at step s + 1)."""
    n = cfg.max_steps
    stride = max(1, n // SCHEDULE_POINTS)
    steps = sorted(set(range(0, n, stride)) | {min(cfg.warmup_steps, n - 1), n - 1})
    return [s + 1 for s in steps], [lr_at(s, cfg) for s in steps]


def _axes(fig: go.Figure, log_x: bool, rows: int):
    title = "step (log scale: step 0 not shown)" if log_x else "step"
    for row in range(1, rows + 1):
        fig.update_xaxes(type="log" if log_x else "linear", tickformat=",d" if not log_x else None,
                         rangemode="tozero" if not log_x else None, row=row, col=1)
    fig.update_xaxes(title_text=title, row=rows, col=1)


def run_figure(train: list[dict], evals: list[dict], cfg: TrainConfig | None, vocab: int,
               log_x: bool = False) -> go.Figure:
    """Loss (train line, validation points, the random-guess line) above the learning rate (the schedule,
    and the run's position on it)."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.72, 0.28], vertical_spacing=0.06)
    keep = (lambda s: s > 0) if log_x else (lambda s: True)
    t = [r for r in train if keep(r["step"])]
    v = [r for r in evals if keep(r["step"])]
    fig.add_trace(go.Scatter(x=[r["step"] for r in t], y=[r["loss"] for r in t], name="train", mode="lines+markers",
                             marker=dict(size=4), line=dict(color=COLORS["train"]),
                             hovertemplate="step %{x:,d}: train loss %{y:.3f}<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Scatter(x=[r["step"] for r in v], y=[r["val_loss"] for r in v], name="validation",
                             mode="lines+markers", marker=dict(size=8), line=dict(color=COLORS["val"]),
                             hovertemplate="step %{x:,d}: validation loss %{y:.3f}<extra></extra>"), row=1, col=1)
    guess = math.log(vocab)
    fig.add_hline(y=guess, line=dict(color=COLORS["guess"], dash="dash", width=1), row=1, col=1,
                  annotation_text=f"random guess: ln {vocab:,} = {guess:.2f}", annotation_position="top right",
                  annotation_font_color="#6b7280")
    fig.update_yaxes(title_text="loss (nats)", tickformat=".1f", rangemode="tozero", row=1, col=1)
    if cfg is not None:
        xs, ys = schedule(cfg)
        fig.add_trace(go.Scatter(x=xs, y=ys, name="learning rate", mode="lines", line=dict(color=COLORS["lr"]),
                                 hovertemplate="step %{x:,d}: lr %{y:.2e}<extra></extra>"), row=2, col=1)
        if train:
            now = train[-1]["step"]
            fig.add_trace(go.Scatter(x=[now], y=[lr_at(now - 1, cfg)], mode="markers", name="now",
                                     marker=dict(color=COLORS["lr"], size=10, symbol="diamond"),
                                     hovertemplate="step %{x:,d} (now): lr %{y:.2e}<extra></extra>"), row=2, col=1)
    fig.update_yaxes(title_text="lr", tickformat=".1e", rangemode="tozero", row=2, col=1)
    _axes(fig, log_x, 2)
    fig.update_layout(template=TEMPLATE, height=460, margin=dict(l=60, r=20, t=30, b=50),
                      legend=dict(orientation="h", y=1.02, yanchor="bottom", x=0, xanchor="left"))
    return fig


def schedule_figure(cfg: TrainConfig) -> go.Figure:
    """The learning rate these settings give, step by step: warm-up, then cosine decay to min_lr."""
    xs, ys = schedule(cfg)
    fig = go.Figure(go.Scatter(x=xs, y=ys, mode="lines", line=dict(color=COLORS["lr"]), name="learning rate",
                               hovertemplate="step %{x:,d}: lr %{y:.2e}<extra></extra>"))
    fig.update_layout(template=TEMPLATE, height=220, margin=dict(l=60, r=20, t=40, b=40),
                      title=dict(text=f"Learning rate: {cfg.warmup_steps:,} warm-up steps, then cosine to "
                                      f"{cfg.min_lr:.0e} at step {cfg.max_steps:,}", font=dict(size=13)))
    fig.update_xaxes(title_text="step", tickformat=",d", rangemode="tozero")
    fig.update_yaxes(tickformat=".1e", rangemode="tozero")
    return fig


def sample_timeline(evals: list[dict], limit: int = 12) -> str:
    """Markdown: what the model wrote at each evaluation, oldest first (the first and the last `limit` - 1)."""
    if not evals:
        return "*The model's first sample appears with its first evaluation, at step 0, a few seconds after Start.*"
    shown = evals if len(evals) <= limit else [evals[0], *evals[-(limit - 1):]]
    lines = []
    for e in shown:
        sample = " ".join(str(e.get("sample", "")).split())
        lines.append(f"**step {e['step']:,}** · val loss {e['val_loss']:.2f} — {_escape(sample)}")
    skipped = len(evals) - len(shown)
    if skipped:
        lines.insert(1, f"*… {skipped} evaluations not shown …*")
    return "\n\n".join(lines)


def _escape(text: str) -> str:
    """Markdown- and HTML-inert text: a model's sample is shown as written."""
    for ch in "\\`*_{}[]<>#|~":
        text = text.replace(ch, "\\" + ch)
    return text
