"""Explore's first view: Gemma 3 as a diagram of its forward pass, a box per stage; a click on a box (or a
layer chip, or Previous / Next) shows, below the diagram, that stage on the Explore prompt: its tensor, what it
does, its equation and the model's own lines that compute it, numbered as in gemma3/model.py.

The diagram is a gr.HTML drawn by explain.walkthrough.diagram_html; its js_on_load turns a click on a box or
chip into the component's "click" event carrying {stage} or {layer}. Every view is drawn by
webapp.explore.Explorer.walk from the cached recording of the prompt, so walking never runs the model again.
"""

from dataclasses import dataclass

import gradio as gr

from explain import walkthrough as wt
from webapp import explore as ex
from webapp.errors import friendly
from webapp.ui import CLICK_EVENT, EXPLORE_EVENT

START = "embed"
MAX_SESSIONS = 10_000   # the sessions whose last walk-through stage is remembered for Previous/Next
INTRO = ("The model's forward pass, drawn from the loaded model's configuration: every box is one stage, with "
         "the shape of its tensor for your prompt ([tokens, ...]). Click a box to see that stage on your prompt "
         "below; pick a layer with the numbered chips, a token with the picker, and walk the data flow with "
         "Previous and Next.")


@dataclass(eq=False)
class Walkthrough:
    diagram: gr.HTML
    stage: gr.Textbox     # hidden: the stage shown
    layer: gr.Dropdown
    token: gr.Dropdown
    prev: gr.Button
    next: gr.Button
    guide: gr.Markdown
    plot: gr.Plot
    code: gr.HTML     # the model's lines, each beside its own line number in gemma3/model.py

    @property
    def outputs(self) -> list:
        return [self.diagram, self.stage, self.layer, self.token, self.guide, self.plot, self.code, self.prev,
                self.next]


def layer_choices(config) -> list[tuple[str, int]]:
    return [(f"{i} · {t}", i) for i, t in enumerate(config.layer_types)]


def shown(v: wt.View) -> tuple:
    """The outputs (Walkthrough.outputs) for a view; Previous is off at the first stage, Next at the last."""
    tokens = [(label, i) for i, label in enumerate(v.tokens)]
    return (v.diagram, v.stage, gr.update(choices=layer_choices(v.config), value=v.layer),
            gr.update(choices=tokens, value=v.token), v.guide, v.figure, v.source,
            gr.update(interactive=v.stage != wt.WALK_STAGES[0]), gr.update(interactive=v.stage != wt.WALK_STAGES[-1]))


def build(explorer: ex.Explorer, prompt: gr.Textbox, choice: gr.State, redraw_on: list,
          new_prompt: list) -> Walkthrough:
    """The walk-through in the current tab for the Explore `prompt`, on the model of the session's `choice`. It
    redraws on the `redraw_on` triggers (keeping the stage, layer and token) and on `new_prompt` (the token goes
    back to the prompt's last)."""
    config = explorer.cache.default.model.config
    gr.Markdown(INTRO, elem_classes="guide")
    diagram = gr.HTML(wt.diagram_html(config, None, 0, START), css_template=wt.DIAGRAM_CSS,
                      js_on_load=wt.DIAGRAM_JS, elem_id="walk-diagram")
    stage = gr.Textbox(START, visible=False, elem_id="walk-stage")
    with gr.Row(equal_height=True, elem_id="walk-controls"):
        prev = gr.Button("← Previous", elem_id="walk-prev", scale=1, min_width=110)
        layer = gr.Dropdown(layer_choices(config), value=0, label="Layer", elem_id="walk-layer", scale=2,
                            min_width=120)
        token = gr.Dropdown([("last token", -1)], value=-1, label="Token", elem_id="walk-token", scale=3,
                            min_width=140)
        nxt = gr.Button("Next →", elem_id="walk-next", scale=1, min_width=110)
    guide = gr.Markdown(wt.guide(config, START, 0, "T"), elem_id="walk-guide")
    plot = gr.Plot(label="The tensor at this stage", show_label=False, elem_id="walk-plot")
    code = gr.HTML(wt.source_html(START), css_template=wt.SOURCE_CSS, elem_id="walk-source")
    w = Walkthrough(diagram, stage, layer, token, prev, nxt, guide, plot, code)
    _wire(w, explorer, prompt, choice, redraw_on, new_prompt)
    return w


def _wire(w: Walkthrough, explorer: ex.Explorer, prompt, choice, redraw_on: list, new_prompt: list):
    # session -> the (stage, layer) last drawn for it. Previous and Next step from there: the page's own stage may be
    # a step behind while quick clicks are drawn one after another.
    drawn_at: dict[str, tuple[str, int]] = {}

    def show(v: wt.View, request: gr.Request | None) -> tuple:
        session = getattr(request, "session_hash", None)
        if session:
            drawn_at.pop(session, None)
            drawn_at[session] = (v.stage, v.layer)
            while len(drawn_at) > MAX_SESSIONS:
                drawn_at.pop(next(iter(drawn_at)))   # the longest unseen
        return shown(v)

    @friendly
    def explore_walk(prompt, stage, layer, token, source=None, request: gr.Request = None):
        return show(explorer.walk(prompt, stage, layer, token, source, clamp=True), request)

    @friendly
    def walk_new_prompt(prompt, stage, layer, source=None, request: gr.Request = None):
        if not ex.prompt_ok(prompt):   # "Look inside" says why, once
            return (gr.skip(),) * len(w.outputs)
        return show(explorer.walk(prompt, stage, layer, -1, source, clamp=True), request)

    @friendly
    def walk_click(prompt, stage, layer, token, source=None, evt: gr.EventData = None, request: gr.Request = None):
        data = getattr(evt, "_data", None) or {}
        stage = data.get("stage", stage)
        layer = data.get("layer", layer)
        return show(explorer.walk(prompt, stage, layer, token, source, clamp=True), request)

    def stepper(direction: int):
        @friendly
        def walk_step(prompt, stage, layer, token, source=None, request: gr.Request = None):
            stage, layer = drawn_at.get(getattr(request, "session_hash", None), (stage, layer))
            stage, layer = explorer.walk_step(stage, layer, direction, source)
            return show(explorer.walk(prompt, stage, layer, token, source, clamp=True), request)
        return walk_step

    inputs = [prompt, w.stage, w.layer, w.token, choice]
    gr.on([*redraw_on, w.layer.input, w.token.input], explore_walk, inputs, w.outputs, api_name="explore_walk",
          **EXPLORE_EVENT)
    gr.on(new_prompt, walk_new_prompt, [prompt, w.stage, w.layer, choice], w.outputs, api_visibility="private",
          **EXPLORE_EVENT)
    # each click drawn in turn (a box's click says which box in its event data; Previous and Next count every press)
    w.diagram.click(walk_click, inputs, w.outputs, api_visibility="private", **CLICK_EVENT)
    w.prev.click(stepper(-1), inputs, w.outputs, api_visibility="private", **CLICK_EVENT)
    w.next.click(stepper(+1), inputs, w.outputs, api_visibility="private", **CLICK_EVENT)
