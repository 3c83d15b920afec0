"""The Explore tab: one sub-tab per picture of what the model computes, each drawn by an Explorer method.

Masks, RoPE and Parameters describe the architecture; the other views run the model once on the prompt
(webapp.explore caches the recording, so switching layer, head or temperature reuses it). One table in
`_wire` registers every figure's endpoint: API name, Explorer method, its inputs, its plot, what redraws it.
Every figure is drawn from the model this session chose in the model bar (its `choice` state, the last input).
"""

import functools
from dataclasses import dataclass

import gradio as gr

from webapp import explore as ex
from webapp.errors import USER_ERRORS, friendly, public
from webapp.inputs import MAX_PROMPT_CHARS
from webapp.ui import EXPLORE_EVENT, attention_lines, gemma3_views, over_training, walkthrough

PROMPT = ex.PROMPT   # 19 tokens, shorter than the demo model's 64-token window, open at its end (webapp.explore)
INTRO = ("Pictures of what the model in the bar computes, drawn from its own code and weights. Masks, RoPE and "
         "Parameters describe the architecture and need no prompt; the other views run the model once on your "
         "prompt (switching layer or head reuses that run).")
VIEWS = (  # (tab label, tab id and plot elem_id plot-<id>, key of its guide in webapp.explore.GUIDE, plot label)
    ("Masks", "mask", "mask", "Attention masks"),
    ("RoPE", "rope", "rope", "RoPE"),
    ("Attention", "attention", "attention", "Attention"),
    ("Activations", "activations", "activations", "Activations"),
    ("Next token", "next", "next_token", "Next token"),
    ("Logit lens", "lens", "logit_lens", "Logit lens"),
    ("Parameters", "params", "parameters", "Parameters"),
)


@dataclass(eq=False)
class Explore:
    explorer: ex.Explorer
    tab: gr.Tab
    prompt: gr.Textbox
    look: gr.Button
    views: dict          # tab id -> its gr.Tab
    plots: dict          # tab id -> its gr.Plot
    controls: dict       # seq, layer, head, words (attention_lines), temperature, top_k, top_p, penalty, story
    look_all: tuple = ()  # (function, inputs, outputs) of "Look inside": other tabs chain it (Generate's tokens)
    over: object = None   # the "Over training" sub-tab (webapp/ui/over_training.py), when built

    @property
    def selectors(self) -> list:
        """The controls whose range depends on the model: they follow the model bar."""
        return [self.controls["layer"], self.controls["head"], self.controls["seq"]]

    @staticmethod
    def follow(info) -> tuple:
        """Updates for `selectors` when the model `info` is loaded."""
        return (gr.update(maximum=max(1, info.layers - 1), value=0),
                gr.update(choices=ex.head_choices(info), value="all"),
                gr.update(maximum=min(info.context, ex.MAX_MASK_LEN), value=ex.default_mask_len(info)))


def _mask_controls(info) -> dict:
    return {"seq": gr.Slider(1, min(info.context, ex.MAX_MASK_LEN), value=ex.default_mask_len(info), step=1,
                             label="Sequence length")}


def _attention_controls(info) -> dict:
    with gr.Row():
        layer = gr.Slider(0, max(1, info.layers - 1), value=0, step=1, label="Layer", elem_id="attention-layer")
        head = gr.Dropdown(ex.head_choices(info), value="all", label="Head")
    # word to word (BertViz): the layer's heads as small maps, and lines from each token to the tokens it attends to
    return {"layer": layer, "head": head, "words": attention_lines.build()}


def _next_token_controls(info) -> dict:
    with gr.Row(elem_id="next-sampling"):   # on a phone, one slider a line (webapp.ui.page)
        lo, hi, d = ex.NEXT_TEMPERATURE
        temperature = gr.Slider(lo, hi, value=d, step=0.05, label="Temperature (0 = greedy)",
                                elem_id="next-temperature")
        lo, hi, d = ex.NEXT_TOP_K
        top_k = gr.Slider(lo, hi, value=d, step=1, label="Top-k (0 = off)")
        lo, hi, d = ex.NEXT_TOP_P
        top_p = gr.Slider(lo, hi, value=d, step=0.05, label="Top-p (1 = off)")
        lo, hi, d = ex.NEXT_REPETITION_PENALTY
        penalty = gr.Slider(lo, hi, value=d, step=0.05, label="Repetition penalty (1 = off)")
    # {"prompt", "id"}: the text before a clicked story token and the token the story drew there (app.link_story)
    story = gr.State(None)
    return {"temperature": temperature, "top_k": top_k, "top_p": top_p, "penalty": penalty, "story": story}


CONTROLS = {"mask": _mask_controls, "attention": _attention_controls, "next": _next_token_controls}


def build(explorer: ex.Explorer, info, choice: gr.State, learning=None) -> Explore:
    """The tab, in the current Tabs, for the model `info` describes (the default), with its events wired; every
    figure is drawn from the model of the session's `choice` (the model bar's per-session source)."""
    views, plots, controls = {}, {}, {}
    with gr.Tab("Explore", id="explore") as tab:
        gr.Markdown(INTRO)
        with gr.Row():
            prompt = gr.Textbox(label="Prompt to look inside", value=PROMPT, lines=2, max_lines=6, scale=5,
                                min_width=320, elem_id="explore-prompt", max_length=MAX_PROMPT_CHARS)
            with gr.Column(scale=1, min_width=140):
                look = gr.Button("Look inside", variant="primary", elem_id="look-inside")
        with gr.Tabs():
            with gr.Tab("Walk-through", id="walk") as views["walk"]:
                # its own select only: opening Explore selects it too, and a second trigger of the same draw would
                # run again later (always_last) with whatever prompt is there by then
                walkthrough.build(explorer, prompt, choice, [views["walk"].select],
                                  [look.click, prompt.submit, choice.change])
            gemma3_views.build(explorer, info, prompt, look, choice)  # "What is special about Gemma 3"
            for label, key, guide, plot_label in VIEWS:
                with gr.Tab(label, id=key) as views[key]:
                    gr.Markdown(ex.GUIDE[guide], elem_classes="guide")
                    if key in CONTROLS:
                        controls.update(CONTROLS[key](info))
                    plots[key] = gr.Plot(label=plot_label, elem_id=f"plot-{key}", elem_classes="explore-plot")
            over = (over_training.build(learning, prompt, choice, [look.click, prompt.submit], [tab.select])
                    if learning is not None else None)
    explore = Explore(explorer, tab, prompt, look, views, plots, controls, over=over)
    _wire(explore, choice)
    return explore


def shown(result):
    """A figure; a figure from a prompt comes with the recording's notice (e.g. a prompt cut to the context),
    shown as a warning."""
    if not isinstance(result, tuple):
        return result
    fig, notice = result
    if notice:
        gr.Warning(notice)
    return fig


def handler(name: str, method):
    """An Explorer method as an event handler: its parameters (the API's), its errors as one sentence."""
    @functools.wraps(method)
    def draw(*args):
        return shown(method(*args))
    draw.__name__ = draw.__qualname__ = name
    return friendly(draw)


def _moved(slider: gr.Slider) -> list:
    """A slider's redraw triggers: let go after a drag, or changed by a typed number or the arrow keys (which
    Gradio says with .input only; .release waits for the number box to lose focus)."""
    return [slider.release, slider.input]


def _wire(e: Explore, choice: gr.State):
    x, c, v, prompt = e.explorer, e.controls, e.views, e.prompt
    sampling = [c["temperature"], c["top_k"], c["top_p"], c["penalty"]]
    new_model = choice.change   # this visitor loaded another model: every view redraws on it, none stays stale
    figures = (  # API name, Explorer method, its inputs, its plot, what redraws it
        ("explore_mask", x.mask, [c["seq"]], "mask", [e.tab.select, v["mask"].select, *_moved(c["seq"]), new_model]),
        ("explore_rope", x.rope, None, "rope", [v["rope"].select, new_model]),
        ("explore_parameters", x.parameters, None, "params", [v["params"].select, new_model]),
        ("explore_attention", x.attention, [prompt, c["layer"], c["head"]], "attention",
         [v["attention"].select, *_moved(c["layer"]), c["head"].input]),
        ("explore_activations", x.activations, [prompt], "activations", [v["activations"].select]),
        ("explore_next_token", x.next_token, [prompt, *sampling, c["story"]], "next",
         [v["next"].select, *(t for s in sampling for t in _moved(s))]),
        ("explore_logit_lens", x.logit_lens, [prompt], "lens", [v["lens"].select]),
    )
    for name, method, inputs, plot, triggers in figures:
        gr.on(triggers, handler(name, method), [*(inputs or []), choice], e.plots[plot], api_name=name, **EXPLORE_EVENT)
    attention_lines.wire(c["words"], x, prompt, c["layer"], c["head"], e.plots["attention"], choice,
                         [v["attention"].select, *_moved(c["layer"]), c["head"].input, e.look.click, prompt.submit,
                          new_model],
                         lambda *args: shown(x.attention(*args)))

    @friendly
    def explore_all(prompt, layer, head, temperature, top_k, top_p, penalty, story, source=None):
        """The four prompt figures; a prompt the visitor can fix (e.g. empty) keeps the figures shown and says
        why in a warning, rather than turning every plot into an error box."""
        try:
            figs = (x.attention(prompt, layer, head, source), x.activations(prompt, source),
                    x.next_token(prompt, temperature, top_k, top_p, penalty, story, source),
                    x.logit_lens(prompt, source))
        except USER_ERRORS as err:
            gr.Warning(public(str(err)))
            return (gr.skip(),) * 4
        return tuple(shown(f) if i == 0 else f[0] for i, f in enumerate(figs))

    inputs = [prompt, c["layer"], c["head"], *sampling, c["story"], choice]
    outputs = [e.plots[k] for k in ("attention", "activations", "next", "lens")]
    gr.on([e.look.click, prompt.submit], explore_all, inputs, outputs, api_visibility="private", **EXPLORE_EVENT)
    e.look_all = (explore_all, inputs, outputs)

    def redraw_all(prompt, *args):   # a prompt to fix is said by Look inside, not at a model's load
        return explore_all(prompt, *args) if ex.prompt_ok(prompt) else (gr.skip(),) * 4

    new_model(redraw_all, inputs, outputs, api_visibility="private", **EXPLORE_EVENT)
