"""Explore over training: a run's snapshots (training/snapshots.py) as models to look inside, and how the
predictions of one prompt formed across them (explain.learning).

A snapshot is a checkpoint folder inside the runs folder, so looking inside one is loading it in the
model bar like any checkpoint: every Explore view then shows the model at that step. The table of
per-token losses runs at most MAX_SNAPSHOTS of them (spread over the run) on the prompt's last MAX_TOKENS
tokens. Snapshots load through the app's model cache (webapp.models.ModelCache), as the model bar's loads do:
once per run, in the dtype the model bar would use (load_model's default: bf16 where the device computes it
natively, else fp32), counted in its memory budget and dropped least recently used beyond it. The tables
are cached per run, snapshot set and prompt.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

import torch

import explain
from explain import learning
from training import runs, snapshots

from .inputs import UserError, text

MAX_TOKENS = 128   # the prompt's last tokens in the loss table (one forward per snapshot each)
MAX_SNAPSHOTS = 24   # snapshots in one loss table: spread over the run, its first and last always in
CACHE_SIZE = 8


class Learning:
    def __init__(self, runs_dir, cache):
        self.runs_dir = Path(runs_dir)
        self.cache = cache   # webapp.models.ModelCache: the snapshots in memory, shared with the model bar
        self._tables: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    # ---- which runs and steps ----
    def runs(self) -> list[tuple[str, str]]:
        """(label, name) of every run that has snapshots, newest first."""
        out = []
        for info in runs.list_runs(self.runs_dir):
            found = snapshots.snapshots(info.path)
            if found:
                out.append((f"{info.name} ({len(found)} snapshots, up to step {_step(found[-1]):,})", info.name))
        return out

    def run_of(self, source: str | None) -> str | None:
        """The run a loaded model comes from (a checkpoint, best/ or a snapshot inside the runs folder)."""
        if not source or source.startswith(("hf:", "random:")):
            return None
        try:
            rel = self.path(source).resolve().relative_to(self.runs_dir.resolve())
        except (ValueError, OSError, RuntimeError):
            return None
        name = rel.parts[0] if rel.parts else None
        return name if name and snapshots.snapshots(self.runs_dir / name) else None

    def _run(self, name) -> Path:
        names = {n for _, n in self.runs()}
        if not isinstance(name, str) or name not in names:
            if not names:
                raise UserError("No training run has snapshots yet: start one in the Train tab (snapshots are "
                                "taken from step 0 on).")
            raise UserError(f"Pick one of the runs with snapshots ({', '.join(sorted(names))}), not {name!r}.")
        return self.runs_dir / name

    def steps(self, name) -> list[tuple[str, str]]:
        """(label, name) of the run's snapshots, oldest first: runs/RUN/snapshots/step_N, never a server path
        (the model bar loads it by that name; `path` maps it back)."""
        out = []
        for p in snapshots.snapshots(self._run(name)):
            info = snapshots.read(p)
            loss = info.get("val_loss") if info.get("val_loss") is not None else info.get("batch_loss")
            out.append((f"step {info['step']:,} · {info['tokens']:,} tokens · loss {loss:.2f}",
                        f"runs/{name}/snapshots/{p.name}"))
        return out

    def path(self, value: str) -> Path:
        """The folder a runs/… name stands for (any other value as it is)."""
        parts = Path(value).parts
        return Path(self.runs_dir, *parts[1:]) if parts[:1] == ("runs",) else Path(value)

    def snapshot(self, name, folder) -> str:
        """`folder` if it is one of the run's snapshots (a value the step picker offers), else UserError."""
        offered = {v for _, v in self.steps(name)}
        if folder not in offered:
            raise UserError(f"Pick a step from the list of run {name}'s snapshots.")
        return folder

    def _get(self, folder):
        """The snapshot in `folder` from the model cache, by the source the model bar loads it as (check_source)."""
        return self.cache.get(str(Path(folder).resolve()))

    def _in_memory_first(self, folders):
        """(folder, LoadedModel) of each snapshot, those the cache holds first: a run larger than its budget then
        reloads only the snapshots that did not fit."""
        held = set(self.cache.sources())
        for folder in sorted(folders, key=lambda f: str(Path(f).resolve()) not in held):
            yield folder, self._get(folder)

    # ---- how the prompt's predictions formed ----
    def table(self, prompt, name):
        """(loss heatmap, induction-score figure, two or three sentences) for the prompt over the run's snapshots."""
        prompt = text(prompt, "The Explore prompt", hint="type a story for the model to read")
        every = snapshots.snapshots(self._run(name))
        found = spread(every, MAX_SNAPSHOTS)
        key = (name, tuple(p.name for p in found), prompt)
        with self._lock:
            hit = self._tables.get(key)
            if hit is not None:
                self._tables.move_to_end(key)
                return hit
        rows, ids = [], None
        for folder, loaded in self._in_memory_first(found):
            if ids is None:   # a run's snapshots share its tokenizer
                ids = loaded.tokenizer.encode(prompt)[-MAX_TOKENS:]
                if len(ids) < 2:
                    raise UserError("The prompt needs at least two tokens: the table shows how well each token "
                                    "after the first is predicted.")
            with loaded.reading():
                rows.append((_step(folder), learning.token_losses(loaded.model, ids)))
            if folder == found[-1]:
                latest = loaded   # recorded below, whether or not the cache still holds it then
        rows.sort(key=lambda row: row[0])
        steps, losses = [step for step, _ in rows], torch.stack([row for _, row in rows])
        tok = latest.tokenizer
        with latest.exclusive():   # recording switches the model's attention into a probability-keeping mode
            rec = explain.record(latest.model, tok, tok.decode(ids), max_tokens=MAX_TOKENS)
        scores = learning.induction_scores(rec)
        labels = [f"{i}: {explain.hooks.show_token(tok.decode([t]))}" for i, t in enumerate(ids)]
        layer_types = list(latest.model.config.layer_types)
        words = learning.learning_text(steps, losses, scores, layer_types, learning.even_share(rec))
        if len(found) < len(every):
            words += f" The run has {len(every):,} snapshots; the table shows {len(found)} of them, spread over it."
        result = (learning.learning_figure(steps, losses, labels), learning.induction_figure(scores, layer_types),
                  words)
        with self._lock:
            self._tables[key] = result
            while len(self._tables) > CACHE_SIZE:
                self._tables.popitem(last=False)
        return result


    def compare(self, prompt, name, a, b):
        """Two of the run's snapshots side by side on the prompt (explain.learning.compare_figure)."""
        prompt = text(prompt, "The Explore prompt", hint="type a story for the model to read")
        folders = sorted((self.path(self.snapshot(name, f)) for f in (a, b)), key=lambda f: _step(Path(f)))  # in time
        models = [self._get(f) for f in folders]
        tok = models[0].tokenizer
        ids = tok.encode(prompt)[-MAX_TOKENS:]
        if len(ids) < 2:
            raise UserError("The prompt needs at least two tokens to compare how well each is predicted.")
        losses, probs = [], []
        for loaded in models:
            with loaded.reading(), torch.no_grad():
                x = torch.tensor([ids], device=loaded.model.embed.weight.device)
                logits = loaded.model(x)[0].float()
                losses.append(torch.nn.functional.cross_entropy(logits[:-1], x[0, 1:], reduction="none").cpu())
                probs.append(logits[-1].softmax(-1).cpu())
        show = lambda i: explain.hooks.show_token(tok.decode([i]))  # noqa: E731
        labels = [f"{i}: {show(t)}" for i, t in enumerate(ids)]
        names = tuple(f"step {_step(Path(f)):,}" for f in folders)
        return learning.compare_figure(names, tuple(losses), labels, tuple(probs), show)


def spread(items: list, n: int) -> list:
    """At most `n` (>= 2) of `items`, evenly spread over them, the first and the last always kept."""
    if len(items) <= n:
        return items
    return [items[round(i * (len(items) - 1) / (n - 1))] for i in range(n)]


def _step(folder: Path) -> int:
    return int(Path(folder).name[len("step_"):])
