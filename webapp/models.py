"""One model for every tab and every user, the sources the picker offers, and which paths may be loaded.

    holder = ModelHolder.from_default(None)          # --model, $GEMMA3_MODEL, the demo model, or random
    model, tokenizer, info, version = holder.current()
    with holder.reading(): ...                       # a forward pass (generation holds it per token)
    with holder.exclusive(): ...                     # something that changes the model's state (explain.record)
    holder.load(check_source("runs/x/best", roots))  # swap in another model; on failure the old one stays

A swap takes the write lock only for the assignment, so it waits at most for one decode step; a
generation that started on the old model finishes on it (it holds its own reference).
"""

from __future__ import annotations

import gc
import os
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

import gemma3
import gemma3.defaults
from gemma3.__main__ import describe

from .inputs import UserError

ROOT = Path(__file__).resolve().parent.parent
ASSETS = gemma3.defaults.ASSETS      # the checkout's assets/, or the copy `pip install .` puts inside gemma3
DEMO_MODEL = gemma3.defaults.DEMO_MODEL
RANDOM = "random:tiny"         # random:<preset> for the small presets: untrained weights, said plainly
RANDOM_PRESETS = ("tiny", "demo")
ALLOW_ENV = "GEMMA3_ALLOWED_DIRS"  # extra folders (os.pathsep-separated) a user may load models from
HUB_ID = re.compile(r"hf:[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")
MAX_SOURCE_CHARS = 1000


@dataclass(frozen=True)
class HubModel:
    repo: str
    note: str
    gated: bool = False


KNOWN_HUB = (
    HubModel("G3nadh/gemma3-270m-tinystories", "the reference TinyStories model, 164.6M parameters, val loss 1.78"),
    HubModel("disham993/gemma3-270m-tiny-stories", "the di37 project's TinyStories model"),
    HubModel("google/gemma-3-270m", "Google's pretrained Gemma 3 270M, own tokenizer; gated: needs HF_TOKEN",
             gated=True),
)


@dataclass(frozen=True)
class ModelInfo:
    name: str          # short, for people: "bundled demo model", "hf:owner/name", "run tiny-1: best"
    source: str        # what was loaded: a path, hf:owner/name, or random:tiny
    params: int
    device: str
    dtype: str
    details: str       # `python -m gemma3 info`'s text
    layers: int
    heads: int
    context: int
    window: int

    @property
    def random(self) -> bool:
        return self.source.startswith("random:")

    def markdown(self) -> str:
        source = "" if self.source == self.name else f" — `{self.source}`"
        text = (f"**Model:** {self.name}{source} · {self.params / 1e6:.1f}M parameters · "
                f"{self.device} · {self.dtype}")
        if self.random:
            text += "  \n⚠️ Untrained random weights: the text will be noise. Load a trained model above."
        return text


def model_info(model, tokenizer, source: str, name: str | None = None) -> ModelInfo:
    cfg, w = model.config, model.embed.weight
    return ModelInfo(name=name or display_name(source), source=source, params=model.num_params(),
                     device=str(w.device), dtype=str(w.dtype).replace("torch.", ""), details=describe(model, tokenizer),
                     layers=cfg.layers, heads=cfg.heads, context=cfg.context, window=cfg.window)


def display_name(source: str, runs_dir: Path | None = None) -> str:
    """A short name for a source: the demo model, a run's checkpoint, a Hub id, or the folder's name."""
    if source.startswith("random:"):
        return f"random weights ({source[7:]} preset, untrained: expect noise)"
    if source.startswith("hf:"):
        return source
    path = Path(source)
    try:
        if path.resolve() == DEMO_MODEL.resolve():
            return "bundled demo model"
    except OSError:
        pass
    parts = path.parts
    if len(parts) >= 2 and parts[-1] == "best":
        return f"run {parts[-2]}: best"
    if len(parts) >= 3 and parts[-2] == "checkpoints" and parts[-1].startswith("step_"):
        return f"run {parts[-3]}: {parts[-1]}"
    return path.name or source


def random_model(preset: str = "tiny", seed: int = 0):
    """A randomly initialised model of a preset with the GPT-2 tokenizer (deterministic for a seed)."""
    torch.manual_seed(seed)
    return gemma3.Gemma3(gemma3.Gemma3Config.from_preset(preset)).eval(), gemma3.gpt2_tokenizer()


def load_source(source: str):
    """(model, tokenizer, ModelInfo) for a checked source; errors propagate as gemma3 raises them."""
    if source.startswith("random:"):
        model, tok = random_model(source[7:])
    else:
        model, tok = gemma3.load_model(source)
    return model, tok, model_info(model, tok, source)


def default_source(cli: str | None = None) -> str:
    """--model, else $GEMMA3_MODEL, else the bundled demo model if present, else random tiny weights."""
    return cli or gemma3.defaults.default_model() or RANDOM


# ---- which sources a user may name -----------------------------------------------------------------

def allowed_roots(runs_dir, extra=None) -> list[Path]:
    """The repository's assets/, the runs folder, the Hugging Face cache, and $GEMMA3_ALLOWED_DIRS."""
    from huggingface_hub import constants

    roots = [ASSETS, Path(runs_dir), Path(constants.HF_HUB_CACHE)]
    roots += [Path(p) for p in os.environ.get(ALLOW_ENV, "").split(os.pathsep) if p.strip()]
    roots += [Path(p) for p in (extra or [])]
    out = []
    for r in roots:
        try:
            out.append(r.expanduser().resolve())
        except (OSError, RuntimeError):
            continue
    return out


def check_source(value, roots: list[Path], runs_dir=None) -> str:
    """A picker value or typed text -> random:<preset>, hf:owner/name, or an absolute path inside an allowed folder.

    A relative path is taken from the repository root, except that runs/... means the app's runs folder."""
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise UserError(f"A model source must be text (a path or hf:owner/name), not {type(value).__name__}.")
    text = value.strip()
    if not text:
        raise UserError("No model given: pick one from the list, or type a path or hf:owner/name.")
    if len(text) > MAX_SOURCE_CHARS or "\x00" in text:
        raise UserError("That model source is not a usable path or Hub id; type a path or hf:owner/name.")
    if text.startswith("random:"):
        if text[7:] not in RANDOM_PRESETS:
            raise UserError(f"Random weights are offered for the presets {', '.join(RANDOM_PRESETS)}, "
                            f"not {text[7:]!r}.")
        return text
    if text.startswith("hf:"):
        if not HUB_ID.fullmatch(text) or ".." in text:
            raise UserError(f"{text!r} is not a Hub model id; write hf:owner/name, "
                            f"e.g. hf:{KNOWN_HUB[0].repo}.")
        return text
    path = Path(text).expanduser()
    if not path.is_absolute():
        parts = path.parts
        path = Path(runs_dir, *parts[1:]) if runs_dir is not None and parts and parts[0] == "runs" else ROOT / path
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError):
        raise UserError(f"{text} is not a usable path.") from None
    if not any(resolved == r or resolved.is_relative_to(r) for r in roots):
        shown = ", ".join(_short(r) for r in roots)
        raise UserError(f"{text} is outside the folders models may be loaded from ({shown}); copy the "
                        f"checkpoint into one of them, or add its folder to ${ALLOW_ENV} when starting the app.")
    if not resolved.exists():
        raise UserError(f"No checkpoint at {text}: give a folder or weights file that exists, or hf:owner/name.")
    return str(resolved)


def _short(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT)) + "/"
    except ValueError:
        return str(path)


# ---- what the picker lists -------------------------------------------------------------------------

def picker_choices(runs_dir) -> list[tuple[str, str]]:
    """(label, value) pairs: the bundled model, random weights, local runs' checkpoints, known Hub models."""
    from training import runs

    choices = []
    if DEMO_MODEL.is_dir():
        choices.append(("Bundled demo model (assets/demo-model)", str(DEMO_MODEL.resolve())))
    try:
        infos = runs.list_runs(runs_dir)
    except OSError:
        infos = []
    for info in infos:
        if info.has_best:
            loss = f", val loss {info.best_val_loss:.3f}" if info.best_val_loss is not None else ""
            choices.append((f"Run {info.name}: best{loss}", str(info.path / "best")))
        if info.latest_checkpoint is not None:
            choices.append((f"Run {info.name}: latest ({info.latest_checkpoint.name})", str(info.latest_checkpoint)))
    choices.append(("Random weights (tiny preset, untrained)", RANDOM))
    for m in KNOWN_HUB:
        choices.append((f"Hub: {m.repo} ({m.note})", f"hf:{m.repo}"))
    return choices


# ---- the shared model --------------------------------------------------------------------------------

class RWLock:
    """Many readers or one writer; a waiting writer goes first, so readers cannot starve it."""

    def __init__(self):
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting = 0

    @contextmanager
    def read(self):
        with self._cond:
            self._cond.wait_for(lambda: not self._writer and not self._waiting)
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def write(self, timeout: float | None = None):
        with self._cond:
            self._waiting += 1
            try:
                ok = self._cond.wait_for(lambda: not self._writer and not self._readers, timeout)
            finally:
                self._waiting -= 1
                self._cond.notify_all()
            if not ok:
                raise UserError("The model is busy; try again in a moment.")
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class ModelHolder:
    """The one model in memory, swapped safely under a lock."""

    def __init__(self, model, tokenizer, info: ModelInfo):
        self._state = (model, tokenizer, info, 0)
        self._rw = RWLock()
        self._loading = threading.Lock()
        self._count = threading.Lock()
        self.streaming = 0   # generations in flight (each holds a KV cache until its generator is closed)

    @contextmanager
    def stream_slot(self):
        with self._count:
            self.streaming += 1
        try:
            yield
        finally:
            with self._count:
                self.streaming -= 1

    @classmethod
    def from_default(cls, cli: str | None = None) -> "ModelHolder":
        """Start on --model / $GEMMA3_MODEL / the demo model / random weights (the operator's choice: not
        restricted to the allowed folders)."""
        return cls(*load_source(default_source(cli)))

    def current(self):
        """(model, tokenizer, info, version): one consistent snapshot; version changes on every swap."""
        return self._state

    @property
    def info(self) -> ModelInfo:
        return self._state[2]

    def reading(self):
        return self._rw.read()

    def exclusive(self, timeout: float | None = 120):
        return self._rw.write(timeout)

    def load(self, source: str, name: str | None = None) -> ModelInfo:
        """Load a checked source and swap it in; any failure is a UserError and the current model stays."""
        if not self._loading.acquire(blocking=False):
            raise UserError("Another model is being loaded right now; wait until it is done, then try again.")
        try:
            current = self.info.name
            try:
                model, tok, info = load_source(source)
            except UserError:
                raise
            except (FileNotFoundError, ConnectionError, ValueError) as e:
                raise UserError(f"{_hint(source, e)} The current model ({current}) stays loaded.") from None
            except Exception as e:  # a corrupt file, out of memory, ...: still one sentence, and the old model
                raise UserError(f"Could not load {source} ({e.__class__.__name__}: {str(e)[:300]}). "
                                f"The current model ({current}) stays loaded.") from None
            if name:
                info = ModelInfo(**{**info.__dict__, "name": name})
            with self._rw.write(timeout=None):
                self._state = (model, tok, info, self._state[3] + 1)
        finally:
            self._loading.release()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return info


def _hint(source: str, error: Exception) -> str:
    message = str(error).strip() or error.__class__.__name__
    gated = next((m for m in KNOWN_HUB if m.gated and source == f"hf:{m.repo}"), None)
    if gated and isinstance(error, ConnectionError) and not os.environ.get("HF_TOKEN"):
        message += (f" {gated.repo} is gated: accept its licence on huggingface.co, then start the app with a "
                    "token in HF_TOKEN.")
    return message
