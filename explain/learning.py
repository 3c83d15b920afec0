"""How a model's predictions form during training, from a run's snapshots (training/snapshots.py).

    losses = token_losses(model, ids)                        # [T - 1]: how surprised the model is by each token
    steps, table = losses_over_training(snapshots, ids)      # [snapshots, T - 1]
    scores = induction_scores(record)                        # [layers, heads]
    learning_figure(steps, table, labels, scores)            # the heatmap, with the strongest induction head named

The loss of token t + 1 is the cross-entropy of the model's logits at position t against it: what
`Gemma3(ids, targets=...)` averages during training, kept per token. Read over the snapshots, it shows
in which order a model learns: frequent words first, then the grammar that joins them, then tokens
that can only be predicted by copying from earlier in the story (a name said before), which takes an
induction head: a head that, just before a token the story already used, attends to where it was
used, so the layers above can copy it. `induction_scores` measures that from recorded attention.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import torch
import torch.nn.functional as F

from .figures import FULL, GREY, SLIDING, TEAL, _html, _title
from .figures import _style as _app_style
from .hooks import Record

__all__ = ["token_losses", "losses_over_training", "induction_scores", "learning_figure", "induction_figure",
           "compare_figure",
           "learning_text"]


@torch.no_grad()
def token_losses(model, ids: list[int]) -> torch.Tensor:
    """Cross-entropy (nats, fp32) of each token after the first, given the ones before it: [T - 1]."""
    x = torch.tensor([ids], device=model.embed.weight.device)
    logits = model(x)[0, :-1].float()
    return F.cross_entropy(logits, x[0, 1:], reduction="none").cpu()


def losses_over_training(models, ids: list[int]) -> tuple[list[int], torch.Tensor]:
    """(steps, [len(models), T - 1] losses) for `models`, an iterable of (step, model)."""
    steps, rows = [], []
    for step, model in models:
        steps.append(step)
        rows.append(token_losses(model, ids))
    return steps, torch.stack(rows)


def copy_targets(record: Record) -> list[tuple[int, int]]:
    """(position i, earlier position j): the token at i + 1 already appeared at j <= i, most recently.
    Names (tokens whose text starts with a capital letter) when the prompt repeats one, else every
    repeated token: a story's names are what only copying can predict."""
    ids, pairs = record.tokens, []
    for i in range(len(ids) - 1):
        earlier = [j for j in range(i + 1) if ids[j] == ids[i + 1]]
        if earlier:
            pairs.append((i, earlier[-1]))
    names = [(i, j) for i, j in pairs if record.token_text[record.tokens[j]].lstrip("␣")[:1].isupper()]
    return names or pairs


def even_share(record: Record) -> float:
    """The induction score attention spread evenly over every earlier token would get: the mean of
    1 / (i + 1) over the positions `induction_scores` averages (0 when nothing repeats)."""
    pairs = copy_targets(record)
    return sum(1 / (i + 1) for i, _ in pairs) / len(pairs) if pairs else 0.0


def induction_scores(record: Record) -> torch.Tensor:
    """[layers, heads]: where the next token already appeared in the prompt (`copy_targets`), the share of
    attention on that earlier occurrence, averaged: the head that finds a name said before and copies it.
    A head with no such habit scores about 1 / (keys it sees); zero everywhere when nothing repeats."""
    probs = torch.stack([p.float() for p in record.attn_probs])  # [L, H, T, T]
    pairs = copy_targets(record)
    if not pairs:
        return torch.zeros(probs.shape[:2])
    q, k = torch.tensor(pairs).T
    return probs[:, :, q, k].mean(-1)


def learning_text(steps: list[int], losses: torch.Tensor, scores: torch.Tensor | None, layer_types,
                  even: float = 0.0) -> str:
    """Two or three sentences on the table: how far the loss fell, and where the induction head is (`even`:
    the score of attention spread evenly, `even_share`; a head is named only at three times that)."""
    first, final = losses[0].mean().item(), losses[-1].mean().item()
    text = (f"Across {len(steps)} snapshots (steps {steps[0]:,} to {steps[-1]:,}) the mean loss of your prompt's "
            f"tokens fell from {first:.2f} to {final:.2f} nats. Rows are snapshots, columns the prompt's tokens: "
            "frequent words turn bright first, then the grammar between them, and last the tokens that can only be "
            "copied from earlier in the story (a name said before).")
    if scores is not None and scores.numel() and scores.max() > 0 and scores.max() < 3 * even:
        text += (f" No head copies yet: the highest induction score is {scores.max():.0%}, near the "
                 f"{even:.0%} that attention spread evenly over the earlier tokens would give.")
    elif scores is not None and scores.numel() and scores.max() > 0:
        layer, head = divmod(int(scores.argmax()), scores.shape[1])
        kind = layer_types[layer]
        text += (f" Copying takes an induction head: in the last snapshot the strongest is layer {layer} ({kind}), "
                 f"head {head}, which, just before a name (or token) said earlier, puts {scores[layer, head]:.0%} of "
                 "its attention on that earlier occurrence.")
    else:
        text += " No token of your prompt repeats, so no induction head can be seen on it: repeat a name."
    return text


def learning_figure(steps: list[int], losses: torch.Tensor, labels: list[str],
                    scores: torch.Tensor | None = None) -> go.Figure:
    """Heatmap of per-token losses, one row per snapshot (x: the predicted token), optionally beside the
    last snapshot's induction scores per layer and head."""
    z = losses.float().numpy().astype(np.float32)
    rows = [f"step {s:,}" for s in steps]
    cols = labels[1:]  # the token each loss is about
    fig = go.Figure(go.Heatmap(z=z, x=cols, y=rows, colorscale="Viridis_r", zmin=0,
                               colorbar=dict(title="loss (nats)"),
                               hovertemplate="%{y}<br>predicting %{x}<br>loss %{z:.2f}<extra></extra>"))
    fig.update_layout(title=_title("Which tokens each snapshot already expects",
                                   "loss of each token of your prompt, one row per snapshot: bright = expected"),
                      xaxis=dict(title="the token predicted", tickangle=-60, automargin=True),
                      yaxis=dict(title="snapshot", autorange="reversed", type="category"),
                      height=min(680, max(320, 28 * len(rows) + 220)), margin=dict(l=90, r=20, t=80, b=120))
    return _app_style(fig)


def induction_figure(scores: torch.Tensor, layer_types) -> go.Figure:
    """Induction score per layer and head (the last snapshot), as a small heatmap."""
    L, H = scores.shape
    fig = go.Figure(go.Heatmap(z=scores.numpy().astype(np.float32), x=[f"head {h}" for h in range(H)],
                               y=[f"{i} {t}" for i, t in enumerate(layer_types)], zmin=0, zmax=1,
                               colorscale="Blues", colorbar=dict(title="score"),
                               hovertemplate="layer %{y}, %{x}<br>induction score %{z:.2f}<extra></extra>"))
    fig.update_layout(title=_title("Which head copies: a dark cell is an induction head",
                                   "share of attention on the earlier occurrence of the next token"),
                      yaxis=dict(autorange="reversed", tickmode="array", tickvals=list(range(L)),
                                 ticktext=[f"<span style='color:{SLIDING if t == 'sliding' else FULL}'>{i} {t}</span>"
                                           for i, t in enumerate(layer_types)]),
                      height=min(680, max(280, 30 * L + 140)))
    return _app_style(fig)


def compare_figure(names: tuple[str, str], losses: tuple[torch.Tensor, torch.Tensor], labels: list[str],
                   next_probs: tuple[torch.Tensor, torch.Tensor], token_text) -> go.Figure:
    """Two steps side by side: the loss of each prompt token at each (top), and each one's ten likeliest
    next tokens after the prompt (bottom left and right). `next_probs`: two [vocab] probability vectors;
    `token_text(id)` gives a token's visible text."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=2, cols=2, specs=[[{"colspan": 2}, None], [{}, {}]], vertical_spacing=0.22,
                        subplot_titles=("Loss of each token of your prompt", f"Next token at {names[0]}",
                                        f"Next token at {names[1]}"))
    colors = (GREY, TEAL)   # the first step named, the second
    for name, row, color in zip(names, losses, colors):
        fig.add_trace(go.Scatter(x=labels[1:], y=row.tolist(), name=name, mode="lines+markers",
                                 line=dict(color=color), hovertemplate="%{x}: loss %{y:.2f}<extra>" + name +
                                 "</extra>"), row=1, col=1)
    for col, (name, probs, color) in enumerate(zip(names, next_probs, colors), start=1):
        top = probs.float().topk(10)
        fig.add_trace(go.Bar(x=top.values.tolist(), y=[_html(token_text(i)) for i in top.indices.tolist()],
                             orientation="h", marker_color=color, showlegend=False,
                             hovertemplate="%{y}: %{x:.3~p}<extra>" + name + "</extra>"), row=2, col=col)
        fig.update_yaxes(autorange="reversed", row=2, col=col)
        # percentages to two significant figures: an untrained step's probabilities are all far below 1%
        fig.update_xaxes(tickformat=".2~p", nticks=4, rangemode="tozero", row=2, col=col)
    fig.update_yaxes(title_text="loss (nats)", rangemode="tozero", row=1, col=1)
    fig.update_xaxes(tickangle=-60, row=1, col=1)
    fig.update_layout(title=_title(f"What changed from {names[0]} to {names[1]}",
                                   "lower loss = the token is expected; right: the likeliest next tokens"),
                      height=640, legend=dict(orientation="h", y=1.02, yanchor="bottom", x=1, xanchor="right"),
                      margin=dict(l=60, r=20, t=110, b=40))
    return _app_style(fig)
