"""The model bar above the tabs: which model this visitor uses, the list of available models, a path box, Load.

The choice is per visitor: `ModelBar.choice` (a gr.State) holds the source this session picked (None: the
default model), and every tab passes it to webapp.models.ModelCache, which shares loaded models between
sessions that picked the same one. Loading changes nothing on another visitor's page. On a Space,
visitors pick from the list and the Space's runs; other paths and Hub ids are the owner's
(webapp.guard.may_load_anything). Parts that change with the model (Explore's layer, head and length
selectors) follow it: app.py hands them to `ModelBar.connect`.
"""

import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from webapp import guard, models
from webapp.errors import friendly
from webapp.inputs import UserError

# Loads of models in memory answer at once; new ones load side by side, bounded by ModelCache.MAX_LOADING. Another
# model picked and loaded while one loads is loaded after it (Gradio's default dropped that second click).
LOAD_EVENT = dict(concurrency_id="load", concurrency_limit=8, preprocess=False, trigger_mode="always_last")


def details_text(info) -> str:
    return f"```\n{info.details}\n```"


def username(profile, request=None) -> str | None:
    """Who this request is signed in as (webapp.guard.login): handlers take both of Gradio's injected arguments."""
    return guard.login(request, profile)


def picker_state(cache: models.ModelCache, names: models.PublicNames, current: str | None = None):
    """(choices, value): the known models, plus the default and this session's model (`current`, a checked
    source) where they are outside the listed places (e.g. --model, or a typed path). Values are names
    (models.PublicNames), never server paths."""
    choices = models.picker_choices(names.runs_dir)
    values = {v for _, v in choices}
    for source in (cache.default.source, current):
        name = names.name(source) if source else None
        if name and name not in values:
            choices.insert(0, (f"Loaded: {models.display_name(source)}", name))
            values.add(name)
    return choices, names.name(current or cache.default.source)


@dataclass(eq=False)
class ModelBar:
    cache: models.ModelCache
    runs_dir: Path
    roots: list[Path]                     # the folders a visitor may load from
    names: models.PublicNames             # the picker's values <-> sources
    info_md: gr.Markdown
    details_md: gr.Markdown
    picker: gr.Dropdown
    custom: gr.Textbox
    load_btn: gr.Button
    choice: gr.State                      # this session's source (None: the default model)
    followers: list = field(default_factory=list)        # other parts' components that change with the model
    follow: Callable = lambda info: ()                    # info -> their updates, in that order
    newest: dict = field(default_factory=dict)            # session -> the ticket of its latest load in flight
    tickets: itertools.count = field(default_factory=itertools.count)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def picker_update(self, current: str | None = None):
        choices, value = picker_state(self.cache, self.names, current)
        return gr.update(choices=choices, value=value)

    @property
    def outputs(self) -> list:
        """What `shown` fills: the bar, its followers, the picker, the session's choice."""
        return [self.info_md, self.details_md, *self.followers, self.picker, self.choice]

    def shown(self, info) -> tuple:
        """Updates for `outputs` after this session chose the model `info` describes."""
        return (info.markdown(), details_text(info), *self.follow(info), self.picker_update(info.source),
                info.source)

    def load(self, value, progress, profile=None, request=None):
        """The ModelInfo of `value` (a picker name, typed text, or a path the app found) for the visitor of
        `profile`/`request` (Gradio's injected arguments), loaded into the shared cache (or found there). The
        caller stores its source in this session's `choice`.

        A session may start a second load (another button) before the first is ready: the load asked for last
        is the one the page keeps, whichever finishes first. An earlier one that finishes later ends with a
        sentence and changes nothing."""
        session = getattr(request, "session_hash", None)
        with self.lock:
            self.newest[session] = ticket = next(self.tickets)
        try:
            info = self._load(value, progress, username(profile, request))
        finally:
            with self.lock:
                latest = self.newest.get(session)
                if latest == ticket:
                    del self.newest[session]
        if latest != ticket:
            raise UserError(f"{info.name} loaded, but you asked for another model meanwhile: the page keeps that one.")
        return info

    def _load(self, value, progress, user: str | None):
        """load(), checked against this visitor's rights (before anything on disk is looked at) and the allowed
        places."""
        owner = guard.may_load_anything(user)   # the owner's loads alone may fetch with the app's Hub token
        try:
            value = models.check_visitor_choice(value, self.runs_dir, owner, self.cache.default.source)
        except UserError:
            if guard.on_space():
                raise
            raise UserError(guard.owner_only()) from None   # off a Space: the setting that lets the owner in
        source = self.names.source(value) or models.check_source(value, self.roots, self.runs_dir)
        progress(0, desc=f"Loading {models.display_name(source)} …")
        try:
            return self.cache.get(source, hub_token=owner).info
        except UserError as e:
            raise UserError(f"{e} Your current model stays loaded.") from None

    def connect(self, followers: list, follow: Callable):
        """Wire Load and the path box, with `followers` updated by follow(info) on every load."""
        self.followers, self.follow = list(followers), follow

        @friendly
        def load_model(choice, path, profile: gr.OAuthProfile | None = None, request: gr.Request = None,
                       progress=gr.Progress(track_tqdm=True)):
            typed = path.strip() if isinstance(path, str) else path
            info = self.load(typed or choice, progress, profile, request)
            gr.Info(f"Loaded {info.name}: {info.params / 1e6:.1f}M parameters.", duration=4)
            return self.shown(info)

        inputs = [self.picker, self.custom]
        # a model picked from the list is the one to load: a path typed earlier (one that failed) is cleared
        self.picker.input(lambda: "", None, self.custom, api_visibility="private", queue=False)
        # a failed load leaves this session's model in use: the picker shows it again, not the one that failed
        back = dict(fn=self.picker_update, inputs=self.choice, outputs=self.picker, api_visibility="private",
                    queue=False)
        self.load_btn.click(load_model, inputs, self.outputs, api_name="load_model", **LOAD_EVENT).failure(**back)
        self.custom.submit(load_model, inputs, self.outputs, api_visibility="private", **LOAD_EVENT).failure(**back)

    def page_state(self, user: str | None) -> list:
        """On every page load: the default model (a new session starts on it; its `choice` stays None, so that
        choice.change means a model this visitor loaded) and the path box only for those who may load anything
        (`user`: username()). Fills `outputs` + [custom]."""
        return [*self.shown(self.cache.default.info)[:-1], gr.skip(), gr.update(visible=guard.may_load_anything(user))]


def build(cache: models.ModelCache, runs_dir: Path) -> ModelBar:
    """The bar, in the current Blocks; Refresh wired, Load wired by `connect`."""
    info = cache.default.info
    with gr.Group(elem_id="model-bar"):
        info_md = gr.Markdown(info.markdown(), elem_id="model-info")
        # open, with no heading of its own, on a wide screen; on a phone a folded "Change model" (webapp.ui.page)
        with gr.Accordion("Change model", open=True, elem_id="model-choose"), gr.Row(equal_height=True):
            names = models.PublicNames(runs_dir, cache.default.source)
            choices, value = picker_state(cache, names)
            picker = gr.Dropdown(choices, value=value, label="Available models", scale=4, elem_id="model-picker")
            custom = gr.Textbox(label="…or a path / hf:owner/name", scale=3, max_lines=1, elem_id="model-path",
                                placeholder="runs/NAME/best · assets/demo-model · hf:owner/name",
                                visible=guard.may_load_anything(None))
            with gr.Column(scale=1, min_width=120):
                load_btn = gr.Button("Load model", variant="primary", elem_id="load-model")
                refresh_btn = gr.Button("↻ Refresh list", size="sm")
        with gr.Accordion("Model details", open=False):
            details_md = gr.Markdown(details_text(info))
    choice = gr.State(None)
    bar = ModelBar(cache, runs_dir, models.allowed_roots(runs_dir), names, info_md, details_md, picker, custom,
                   load_btn, choice)
    refresh_btn.click(lambda source: bar.picker_update(source), choice, picker, api_visibility="private",
                      queue=False)
    return bar
