"""The models visitors generate with: a cache shared by every session, the sources the picker offers, and
which sources may be loaded (and by whom, on a Space).

    cache = ModelCache.from_default(None)            # --model, $GEMMA3_MODEL, the demo model, or random
    loaded = cache.get(source)                       # a LoadedModel: model, tokenizer, info, version
    with loaded.reading(): ...                       # a forward pass (generation holds it per token)
    with loaded.exclusive(): ...                     # something that changes the model's state (explain.record)

Each visitor (a browser page, or one gradio_client Client) keeps the source it chose in its own session
state (webapp.ui.model_bar), so one visitor's choice never changes another's page. Sessions that chose
the same source share one LoadedModel. The cache holds models up to a memory budget (parameter and
buffer bytes; $GEMMA3_MODEL_MEMORY_MB, default 2048) and drops the least recently used beyond it,
never the default model. Loads of different sources run side by side (at most ModelCache.MAX_LOADING new
ones at once; one more is refused at once, never queued), so one visitor's slow load never holds up
another's. Loading takes no lock any model's users hold, so it never pauses or changes a
generation on another model; a generation keeps its own reference, so a model dropped from the cache
mid-story finishes that story, and the session that chose it reloads it on its next request.
"""

from __future__ import annotations

import gc
import itertools
import os
import re
import threading
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

import gemma3
import gemma3.defaults
from gemma3 import describe
from gemma3.io.hub import resolve_source
from gemma3.runtime import graphs

from .inputs import UserError
ROOT = Path(__file__).resolve().parent.parent
ASSETS = gemma3.defaults.ASSETS      # the checkout's assets/, or the copy `pip install .` puts inside gemma3
DEMO_MODEL = gemma3.defaults.DEMO_MODEL
RANDOM = "random:tiny"         # random:<preset> for the small presets: untrained weights, said plainly
RANDOM_PRESETS = ("tiny", "demo")
ALLOW_ENV = "GEMMA3_ALLOWED_DIRS"  # extra folders (os.pathsep-separated) a user may load models from
MEMORY_ENV = "GEMMA3_MODEL_MEMORY_MB"  # how much model memory the cache keeps (MiB)
DEFAULT_MEMORY_MB = 2048   # the demo model, random weights and three 270m models in bf16 (or one in fp32 and more)
DEFAULT_NAME = "default"   # the picker's name for the default model when it lies outside the named folders
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
        # a Hub id or random:<preset> is worth showing; a path is not (visitors never see server paths: the
        # name says which run, or the folder's name)
        shown = self.source != self.name and self.source.startswith(("hf:", "random:"))
        source = f" — `{self.source}`" if shown else ""
        text = (f"**Model:** {self.name}{source} · {self.params / 1e6:.1f}M parameters · "
                f"{self.device} · {self.dtype}")
        if self.random:
            # the picker lies below this line (webapp.ui.model_bar; folded as "Change model" on a phone)
            text += ("  \n⚠️ Untrained random weights: the text will be noise. Pick a trained model below and press "
                     "Load model.")
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
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-1][5:].isdigit():
        return f"run {parts[-3]} at step {int(parts[-1][5:]):,}"
    return path.name or source


def random_model(preset: str = "tiny", seed: int = 0):
    """A randomly initialised model of a preset with the GPT-2 tokenizer (deterministic for a seed)."""
    torch.manual_seed(seed)
    return gemma3.Gemma3(gemma3.Gemma3Config.from_preset(preset)).eval(), gemma3.gpt2_tokenizer()


def load_source(source: str, token: bool | None = None):
    """(model, tokenizer, ModelInfo) for a checked source; errors propagate as gemma3 raises them.

    token: what a Hub download carries (gemma3.io.hub.resolve_source): None, the app's own token
    (HF_TOKEN: the owner's choices); False, none (a visitor's: what the cache holds, or a public repository)."""
    if source.startswith("random:"):
        model, tok = random_model(source[7:])
    else:
        model, tok = gemma3.load_model(resolve_source(source, token))
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
    hub = None
    if not path.is_absolute():
        parts = path.parts
        named = {"runs": runs_dir, "assets": ASSETS}.get(parts[0] if parts else None)   # public_name's folders
        path = Path(named, *parts[1:]) if named is not None else ROOT / path
        hub = _hub_id(text) if named is None else None
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError):
        raise UserError(f"{text} is not a usable path.") from None
    if hub and not resolved.exists():
        raise UserError(f"There is no folder {text} here; for the model on the Hugging Face Hub, write {hub}.")
    if not any(resolved == r or resolved.is_relative_to(r) for r in roots):
        shown = ", ".join(_short(r) for r in roots)
        raise UserError(f"The path “{text}” is outside the folders models may be loaded from ({shown}); copy the "
                        f"checkpoint into one of them, or add its folder to ${ALLOW_ENV} when starting the app.")
    if not resolved.exists():
        raise UserError(f"No checkpoint at {text}: give a folder or weights file that exists, or hf:owner/name.")
    return str(resolved)


def _hub_id(text: str) -> str | None:
    """hf:owner/name for typed text that reads as a Hub id without its hf: (owner/name, or the name of a model the
    picker offers), else None."""
    known = {k.repo.split("/")[1].lower(): k.repo for k in KNOWN_HUB}
    if text.lower() in known:
        return f"hf:{known[text.lower()]}"
    return f"hf:{text}" if HUB_ID.fullmatch(f"hf:{text}") and ".." not in text else None


def public_name(source: str, runs_dir) -> str | None:
    """The name a visitor sees a checked source by, which check_source maps back: an hf: or random: id as it is,
    runs/… inside the runs folder, assets/… inside the bundled assets; None for a path elsewhere (see
    PublicNames). Never a server path."""
    if source.startswith(("hf:", "random:")):
        return source
    for name, root in (("runs", runs_dir), ("assets", ASSETS)):
        try:
            rel = Path(source).resolve().relative_to(Path(root).resolve())
        except (ValueError, OSError, RuntimeError):
            continue
        return "/".join((name, *rel.parts))
    return None


class PublicNames:
    """public_name, and for a path elsewhere a made-up name (DEFAULT_NAME for the default model, e.g. given by
    --model; "loaded: NAME" for a path the owner typed), remembered so that the name maps back to it."""

    def __init__(self, runs_dir, default: str):
        self.runs_dir = runs_dir
        self._sources = {DEFAULT_NAME: default}   # made-up name -> source
        self._lock = threading.Lock()

    def name(self, source: str) -> str:
        found = public_name(source, self.runs_dir)
        if found is not None:
            return found
        with self._lock:
            for name, known in self._sources.items():
                if known == source:
                    return name
            base = name = f"loaded: {display_name(source, self.runs_dir)}"
            while name in self._sources:
                name = f"{base} ({len(self._sources)})"
            self._sources[name] = source
            return name

    def source(self, name) -> str | None:
        """The source a made-up name stands for; None for any other value."""
        with self._lock:
            return self._sources.get(name) if isinstance(name, str) else None


def _short(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT)) + "/"
    except ValueError:
        return str(path)


# ---- what the picker lists -------------------------------------------------------------------------

def picker_choices(runs_dir) -> list[tuple[str, str]]:
    """(label, value) pairs: the bundled model, random weights, local runs' checkpoints, known Hub models. The
    values are names (public_name), never server paths."""
    from training import runs

    choices = []
    if DEMO_MODEL.is_dir():
        demo = public_name(str(DEMO_MODEL), runs_dir)
        choices.append((f"Bundled demo model ({demo})", demo))
    try:
        infos = runs.list_runs(runs_dir)
    except OSError:
        infos = []
    for info in infos:
        if info.has_best:
            loss = f", val loss {info.best_val_loss:.3f}" if info.best_val_loss is not None else ""
            choices.append((f"Run {info.name}: best{loss}", f"runs/{info.name}/best"))
        if info.latest_checkpoint is not None:
            choices.append((f"Run {info.name}: latest ({info.latest_checkpoint.name})",
                            f"runs/{info.name}/checkpoints/{info.latest_checkpoint.name}"))
    choices.append(("Random weights (tiny preset, untrained)", RANDOM))
    for m in KNOWN_HUB:
        choices.append((f"Hub: {m.repo} ({m.note})", f"hf:{m.repo}"))
    return choices


def check_visitor_choice(value, runs_dir, anything: bool, default: str | None = None):
    """`value` (a picker name, typed text or a path, before check_source) if this visitor may load it: anyone
    may load what the picker lists, the default model and any checkpoint inside the runs folder; other paths
    and Hub ids need `anything` (everyone locally, the owner and allowed users on a Space:
    webapp.guard.may_load_anything). Decided from the value alone, before anything on disk is looked at: a
    refusal reads the same whether a path exists or not."""
    if anything or not isinstance(value, str):   # not text: check_source says so
        return value
    if value in (default, DEFAULT_NAME) or value in {v for _, v in picker_choices(runs_dir)}:
        return value
    text = value.strip()
    parts = Path(text).parts
    path = Path(runs_dir, *parts[1:]) if parts[:1] == ("runs",) else Path(text)
    runs_root = os.path.normpath(Path(runs_dir).absolute())
    if path.is_absolute() and "\x00" not in text and os.path.normpath(path).startswith(runs_root + os.sep):
        return value
    raise UserError("On this Space, visitors load the models in the list and the checkpoints of its training runs; "
                    "other paths and Hub models are for its owner. Duplicate the Space to load your own.")


# ---- the models in memory ----------------------------------------------------------------------------

def memory_budget(env=None) -> int:
    """Bytes of model weights the cache keeps: $GEMMA3_MODEL_MEMORY_MB (default 2048) MiB."""
    raw = (env if env is not None else os.environ).get(MEMORY_ENV, "").strip()
    try:
        mb = float(raw) if raw else DEFAULT_MEMORY_MB
    except ValueError:
        mb = DEFAULT_MEMORY_MB
    return int(max(mb, 0) * 2**20)


def model_bytes(model) -> int:
    """Memory held by a model's parameters and buffers, each storage counted once (a tied head is free)."""
    seen, total = set(), 0
    for t in itertools.chain(model.parameters(), model.buffers()):
        storage = t.untyped_storage()
        key = (str(t.device), storage.data_ptr())
        if key not in seen:
            seen.add(key)
            total += storage.nbytes()
    return total


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


class Counter:
    """A thread-safe count of things in flight."""

    def __init__(self):
        self._lock = threading.Lock()
        self.value = 0

    def add(self, n: int):
        with self._lock:
            self.value += n


class LoadedModel:
    """One model in memory with its tokenizer and info, its lock, and the generations streaming from it."""

    def __init__(self, model, tokenizer, info: ModelInfo, version: int = 0, streams: Counter | None = None):
        self.model, self.tokenizer, self.info, self.version = model, tokenizer, info, version
        self.bytes = model_bytes(model)
        self._rw = RWLock()
        self._streams = Counter()
        self._all_streams = streams   # the cache's count, over every model

    @property
    def source(self) -> str:
        return self.info.source

    @property
    def streaming(self) -> int:
        """Generations in flight on this model (each holds a KV cache until its generator is closed)."""
        return self._streams.value

    def reading(self):
        return self._rw.read()

    def exclusive(self, timeout: float | None = 120):
        return self._rw.write(timeout)

    @contextmanager
    def stream_slot(self):
        counters = [c for c in (self._streams, self._all_streams) if c is not None]
        for c in counters:
            c.add(1)
        try:
            yield
        finally:
            for c in counters:
                c.add(-1)


class ModelCache:
    """The models the sessions chose, by source: shared, least recently used dropped beyond the budget,
    the default always kept."""

    LOAD_WAIT_S = 600   # how long a load waits for another session's load of the same source
    MAX_LOADING = 2     # new models loading at once (two 270m loads in fp32 take about 2 GB); more are refused

    def __init__(self, model, tokenizer, info: ModelInfo, *, budget: int | None = None, loader=None):
        self.budget = memory_budget() if budget is None else int(budget)
        self._loader = loader or load_source   # (source, token) -> (model, tokenizer, ModelInfo)
        self._lock = threading.Lock()       # guards _entries and _loading (held only for dict operations)
        self._loading: dict[str, threading.Event] = {}   # sources being loaded, set when done: no load waits on
                                                         # another source's
        self._slots = threading.BoundedSemaphore(self.MAX_LOADING)
        self._versions = itertools.count()
        self._streams = Counter()
        self._entries: OrderedDict[str, LoadedModel] = OrderedDict()
        self.loads = self.evictions = 0     # what the cache did (tests and the About tab read them)
        self.default = self._wrap(model, tokenizer, info)
        self._entries[info.source] = self.default

    @classmethod
    def from_default(cls, cli: str | None = None, budget: int | None = None) -> "ModelCache":
        """Start on --model / $GEMMA3_MODEL / the demo model / random weights (the operator's choice: not
        restricted to the allowed folders)."""
        return cls(*load_source(default_source(cli)), budget=budget)

    def _wrap(self, model, tokenizer, info) -> LoadedModel:
        return LoadedModel(model, tokenizer, info, next(self._versions), self._streams)

    @property
    def streaming(self) -> int:
        """Generations in flight on any model, including one dropped from the cache mid-story."""
        return self._streams.value

    @property
    def bytes(self) -> int:
        with self._lock:
            return sum(e.bytes for e in self._entries.values())

    def sources(self) -> list[str]:
        """The sources in memory, least recently used first."""
        with self._lock:
            return list(self._entries)

    def _hit(self, source: str) -> LoadedModel | None:
        with self._lock:
            hit = self._entries.get(source)
            if hit is not None:
                self._entries.move_to_end(source)
            return hit

    def get(self, source: str | None = None, hub_token: bool = False) -> LoadedModel:
        """The model for a checked source (None: the default), loaded if it is not in memory. Failures are one
        UserError sentence; nothing another session uses changes.

        hub_token: whether a Hub download may carry the app's token (HF_TOKEN): only for its owner's loads
        (webapp.guard.may_load_anything). A visitor's load carries none: it finds what the owner fetched in
        the Hugging Face cache, or downloads a public repository."""
        if source in (None, ""):
            source = self.default.source
        while True:
            hit = self._hit(source)
            if hit is not None:
                return hit
            with self._lock:
                pending = self._loading.get(source)
                if pending is None:   # this session loads it
                    pending = self._loading[source] = threading.Event()
                    break
            if not pending.wait(self.LOAD_WAIT_S):   # another session is loading this very source: its result
                raise UserError("This model is still being loaded for another visitor; try again in a minute.")
        try:
            if not self._slots.acquire(blocking=False):
                raise UserError(f"{self.MAX_LOADING} other models are being loaded right now; try again in a minute.")
            try:
                loaded = self._wrap(*self._load(source, hub_token))
            finally:
                self._slots.release()
            with self._lock:
                self._entries[source] = loaded
                self.loads += 1
                dropped = self._evict(keep=source)
        finally:
            with self._lock:
                del self._loading[source]
            pending.set()
        if dropped:   # free the dropped models' memory now (a collection costs about 0.1 s: not after every load)
            gc.collect()
            if torch.cuda.is_available():
                graphs.empty_cache()  # not while another visitor's generation captures its graph
        return loaded

    def _load(self, source: str, hub_token: bool):
        try:
            return self._loader(source, None if hub_token else False)
        except UserError:
            raise
        except (FileNotFoundError, ConnectionError, ValueError) as e:
            raise UserError(_hint(source, e)) from None
        except Exception as e:  # a corrupt file, out of memory, ...: still one sentence
            raise UserError(f"Could not load {source} ({e.__class__.__name__}: {str(e)[:300]}).") from None

    def _evict(self, keep: str) -> int:
        """Drop least recently used models (never the default, nor `keep`) until the rest fit the budget; how many."""
        total, before = sum(e.bytes for e in self._entries.values()), self.evictions
        for source in list(self._entries):
            if total <= self.budget:
                break
            entry = self._entries[source]
            if entry is self.default or source == keep:
                continue
            del self._entries[source]
            total -= entry.bytes
            self.evictions += 1
        return self.evictions - before


def _hint(source: str, error: Exception) -> str:
    message = str(error).strip() or error.__class__.__name__
    known = next((m for m in KNOWN_HUB if source == f"hf:{m.repo}"), None)
    if isinstance(error, ConnectionError) and known is None and source.startswith("hf:"):
        message += " Check the name's spelling too."   # a typo offline reads like a model not downloaded yet
    if known and known.gated and isinstance(error, ConnectionError):
        message += (f" {known.repo} is gated: accept its licence on huggingface.co and set HF_TOKEN, then load it "
                    "once with a network (on a shared app its owner does this, signed in; visitors then load it "
                    "from the cache).")
    return message
