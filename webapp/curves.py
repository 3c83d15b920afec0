"""The Train tab's pictures: a run's loss curves over its learning-rate schedule, and the schedule alone
for the settings in the form (before Start).

The loss starts where a random guess over the vocabulary does, ln(vocabulary) nats (10.82 for GPT-2's
50,257 tokens), drawn as a dashed line: the run's step-0 evaluation sits on it, and everything below
it is learning. The loss axis is logarithmic and follows the data (a fall from 10.8 to 6 and one from
2 to 1 look alike), and the step axis runs from 0 to the steps done so far, so a run that has done 40
of its 1,000 steps fills the plot; the axis title says how many are planned, and a dashed line marks
the planned end once it is in view. Steps are whole numbers; on a log axis step 0 cannot be drawn and
is left out (the axis title says so). A quick evaluation (step 0's, on a few validation windows) is an
open marker, and its hover says on how many windows.
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
LOG_TICKS = ((1, 2, 5), (1, 2, 3, 5), (1, 1.5, 2, 3, 4, 5, 6, 8), (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 7, 8, 9))


def schedule(cfg: TrainConfig, upto: float | None = None) -> tuple[list[int], list[float]]:
    """(steps, lr) of the run's schedule (trainer.lr_at: the lr of the update that ends at step s + 1), up to
    step `upto` (default: the whole run), at most SCHEDULE_POINTS points."""
    n = cfg.max_steps if upto is None else max(1, min(cfg.max_steps, math.ceil(upto)))
    stride = max(1, n // SCHEDULE_POINTS)
    steps = sorted(set(range(0, n, stride)) | {n - 1} | ({cfg.warmup_steps} if cfg.warmup_steps < n else set()))
    return [s + 1 for s in steps], [lr_at(s, cfg) for s in steps]


def log_ticks(lo: float, hi: float, most: int = 7) -> list[float]:
    """Round values between lo and hi for a log axis: the densest ladder of LOG_TICKS giving at most `most`."""
    best = []
    for ladder in LOG_TICKS:
        ticks = [round(m * 10.0 ** e, 6) for e in range(-4, 5) for m in ladder]
        ticks = [t for t in ticks if lo <= t <= hi]
        if len(ticks) > most:
            break
        best = ticks
    return best or [round(math.sqrt(lo * hi), 3)]


def _axes(fig: go.Figure, log_x: bool, rows: int, right: float, done: int, planned: int | None):
    """x from 0 (step 1 on a log axis) to just past the steps done; the title says how many are planned."""
    if log_x:
        title = "step (log scale: step 0 not shown)"
        span = [0, math.log10(max(2.0, right))]
    else:
        title = "step"
        span = [-right / 60, right]   # room for step 0's marker
    if planned:
        title += f" · {done:,} of {planned:,} planned" + (" (the dashed line: the end)" if right >= planned else "")
    for row in range(1, rows + 1):
        fig.update_xaxes(type="log" if log_x else "linear", tickformat=",d" if not log_x else None,
                         range=span, autorange=False, row=row, col=1)
    fig.update_xaxes(title_text=title, row=rows, col=1)


def run_figure(train: list[dict], evals: list[dict], cfg: TrainConfig | None, vocab: int,
               log_x: bool = False) -> go.Figure:
    """Loss (train line, validation points, the random-guess line) above the learning rate (the schedule,
    and the run's position on it), over the steps done so far."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.72, 0.28], vertical_spacing=0.06)
    keep = (lambda s: s > 0) if log_x else (lambda s: True)
    t = [r for r in train if keep(r["step"])]
    v = [r for r in evals if keep(r["step"])]
    fig.add_trace(go.Scatter(x=[r["step"] for r in t], y=[r["loss"] for r in t], name="train", mode="lines+markers",
                             marker=dict(size=4), line=dict(color=COLORS["train"]),
                             hovertemplate="step %{x:,d}: train loss %{y:.3f}<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Scatter(
        x=[r["step"] for r in v], y=[r["val_loss"] for r in v], name="validation", mode="lines+markers",
        marker=dict(size=8, symbol=["circle-open" if r.get("quick") else "circle" for r in v],
                    line=dict(width=2, color=COLORS["val"])),
        line=dict(color=COLORS["val"]), customdata=[_windows(r, cfg) for r in v],
        hovertemplate="step %{x:,d}: validation loss %{y:.3f}%{customdata}<extra></extra>"), row=1, col=1)
    guess = math.log(vocab)
    losses = [r["loss"] for r in t] + [r["val_loss"] for r in v]
    lo = min([guess, *(x for x in losses if x > 0)]) / 1.15
    hi = max([guess, *losses]) * 1.12
    ticks = log_ticks(lo, hi)
    fig.update_yaxes(title_text="loss (nats, log scale)", type="log", range=[math.log10(lo), math.log10(hi)],
                     autorange=False, tickvals=ticks, ticktext=[f"{x:g}" for x in ticks], row=1, col=1)
    done = max([r["step"] for r in train] + [r["step"] for r in evals] + [0])
    planned = cfg.max_steps if cfg is not None else None
    right = max(done, 1 if planned is None else min(planned, 10)) * 1.04
    first = 1 if log_x else 0
    fig.add_trace(go.Scatter(x=[first, right], y=[guess, guess], mode="lines", showlegend=False, hoverinfo="skip",
                             line=dict(color=COLORS["guess"], dash="dash", width=1)), row=1, col=1)
    fig.add_annotation(text=f"random guess: ln {vocab:,} = {guess:.2f}", x=1, xref="x domain", xanchor="right",
                       y=math.log10(guess), yref="y", yanchor="bottom", showarrow=False,
                       font=dict(color="#6b7280"))
    if cfg is not None:
        xs, ys = schedule(cfg, upto=right)
        used = [(r["step"], r["lr"]) for r in train if isinstance(r.get("lr"), (int, float))]
        if any(abs(lr - lr_at(step - 1, cfg)) > 1e-3 * abs(lr) for step, lr in used):
            # the schedule changed during the run (resumed to more steps): the rates it used, then today's plan
            last = used[-1][0]
            plan = [(x, y) for x, y in zip(xs, ys) if x > last]
            xs, ys = [x for x, _ in used + plan], [y for _, y in used + plan]
        fig.add_trace(go.Scatter(x=xs, y=ys, name="learning rate", mode="lines", line=dict(color=COLORS["lr"]),
                                 hovertemplate="step %{x:,d}: lr %{y:.2e}<extra></extra>"), row=2, col=1)
        if train:
            now = train[-1]["step"]
            fig.add_trace(go.Scatter(x=[now], y=[lr_at(now - 1, cfg)], mode="markers", name="now",
                                     marker=dict(color=COLORS["lr"], size=10, symbol="diamond"),
                                     hovertemplate="step %{x:,d} (now): lr %{y:.2e}<extra></extra>"), row=2, col=1)
        if right >= planned:  # the planned end is in view: a dashed line across both panels
            for row, ys_ in ((1, [lo, hi]), (2, [0, cfg.lr * 1.05])):
                fig.add_trace(go.Scatter(x=[planned, planned], y=ys_, mode="lines", showlegend=False,
                                         hovertemplate=f"planned end: step {planned:,}<extra></extra>",
                                         line=dict(color=COLORS["guess"], dash="dash", width=1)), row=row, col=1)
    fig.update_yaxes(title_text="lr", tickformat=".1e", rangemode="tozero", row=2, col=1)
    _axes(fig, log_x, 2, right, done, planned)
    fig.update_layout(template=TEMPLATE, height=460, margin=dict(l=60, r=20, t=30, b=50),
                      legend=dict(orientation="h", y=1.02, yanchor="bottom", x=0, xanchor="left"))
    return fig


def _windows(record: dict, cfg: TrainConfig | None) -> str:
    """The hover's note on a quick evaluation: on how many validation windows it ran."""
    if not record.get("quick"):
        return ""
    of = f" of {cfg.eval_windows}" if cfg is not None else ""
    return f" (quick: {record.get('windows', '?')}{of} windows)"


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
        quick = f" (quick: {e.get('windows', '?')} windows)" if e.get("quick") else ""
        lines.append(f"**step {e['step']:,}** · val loss {e['val_loss']:.2f}{quick} — {_escape(sample)}")
    skipped = len(evals) - len(shown)
    if skipped:
        lines.insert(1, f"*… {skipped} evaluations not shown …*")
    return "\n\n".join(lines)


def _escape(text: str) -> str:
    """Markdown- and HTML-inert text: a model's sample is shown as written."""
    for ch in "\\`*_{}[]<>#|~":
        text = text.replace(ch, "\\" + ch)
    return text
