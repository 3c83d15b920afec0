"""The model bar above the tabs: what is loaded, the list of available models, a path box, Load.

One model serves every tab and every visitor (webapp.models.ModelHolder). Parts that change with the
model (Explore's layer, head and length selectors) follow it: app.py hands them to `ModelBar.connect`.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from webapp import models
from webapp.errors import friendly

LOAD_EVENT = dict(concurrency_id="load", concurrency_limit=1, preprocess=False)


def details_text(info) -> str:
    return f"```\n{info.details}\n```"


def picker_state(holder: models.ModelHolder, runs_dir: Path, current: str | None = None):
    """(choices, value): the known models, with the loaded one even if it is outside the listed places."""
    choices = models.picker_choices(runs_dir)
    values = {v for _, v in choices}
    info = holder.info
    if info.source not in values:  # e.g. --model outside the listed places: still shown as loaded
        choices.insert(0, (f"Loaded: {info.name}", info.source))
        values.add(info.source)
    current = current if current in values else holder.info.source if holder.info.source in values else None
    return choices, current


@dataclass(eq=False)
class ModelBar:
    holder: models.ModelHolder
    runs_dir: Path
    roots: list[Path]                     # the folders a visitor may load from
    info_md: gr.Markdown
    details_md: gr.Markdown
    picker: gr.Dropdown
    custom: gr.Textbox
    load_btn: gr.Button
    followers: list = field(default_factory=list)        # other parts' components that change with the model
    follow: Callable = lambda info: ()                    # info -> their updates, in that order

    def picker_update(self, current: str | None = None):
        choices, value = picker_state(self.holder, self.runs_dir, current)
        return gr.update(choices=choices, value=value)

    @property
    def outputs(self) -> list:
        """What `shown` fills: the bar, its followers, the picker."""
        return [self.info_md, self.details_md, *self.followers, self.picker]

    def shown(self, info, source: str | None = None) -> tuple:
        """Updates for `outputs` after `info` was loaded (from `source`, selected in the picker)."""
        return (info.markdown(), details_text(info), *self.follow(info), self.picker_update(source))

    def load(self, value, progress) -> tuple:
        """(info, source): `value` checked against the allowed places, loaded into the shared holder."""
        source = models.check_source(value, self.roots, self.runs_dir)
        progress(0, desc=f"Loading {models.display_name(source)} …")
        return self.holder.load(source), source

    def connect(self, followers: list, follow: Callable):
        """Wire Load and the path box, with `followers` updated by follow(info) on every load."""
        self.followers, self.follow = list(followers), follow

        @friendly
        def load_model(choice, path, progress=gr.Progress(track_tqdm=True)):
            typed = path.strip() if isinstance(path, str) else path
            info, source = self.load(typed or choice, progress)
            gr.Info(f"Loaded {info.name}: {info.params / 1e6:.1f}M parameters.", duration=4)
            return self.shown(info, source)

        inputs = [self.picker, self.custom]
        self.load_btn.click(load_model, inputs, self.outputs, api_name="load_model", **LOAD_EVENT)
        self.custom.submit(load_model, inputs, self.outputs, api_visibility="private", **LOAD_EVENT)


def build(holder: models.ModelHolder, runs_dir: Path) -> ModelBar:
    """The bar, in the current Blocks; Refresh wired, Load wired by `connect`."""
    info = holder.info
    with gr.Group(elem_id="model-bar"):
        info_md = gr.Markdown(info.markdown(), elem_id="model-info")
        with gr.Row(equal_height=True):
            choices, value = picker_state(holder, runs_dir)
            picker = gr.Dropdown(choices, value=value, label="Available models", scale=4, elem_id="model-picker")
            custom = gr.Textbox(label="…or a path / hf:owner/name", scale=3, max_lines=1, elem_id="model-path",
                                placeholder="runs/NAME/best · assets/demo-model · hf:owner/name")
            with gr.Column(scale=1, min_width=120):
                load_btn = gr.Button("Load model", variant="primary", elem_id="load-model")
                refresh_btn = gr.Button("↻ Refresh list", size="sm")
        with gr.Accordion("Model details", open=False):
            details_md = gr.Markdown(details_text(info))
    bar = ModelBar(holder, runs_dir, models.allowed_roots(runs_dir), info_md, details_md, picker, custom, load_btn)
    refresh_btn.click(lambda: bar.picker_update(), None, picker, api_visibility="private", queue=False)
    return bar
