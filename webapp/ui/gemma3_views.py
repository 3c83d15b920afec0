"""Explore's "Gemma 3" sub-tab: what is special about Gemma 3, one topic at a time, live on the prompt.

A radio picks one of explain.gemma3_views.TOPICS; below it the layer and head controls the topic reads (the
others are hidden), the topic's few sentences with this model's numbers, and its figure. Everything is drawn by
Explorer.gemma3_view from the recording the other prompt views share, for the model of this session's `choice`.
"""

from dataclasses import dataclass

import gradio as gr

from explain.gemma3_views import TOPICS, USES
from webapp import explore as ex
from webapp.errors import friendly
from webapp.ui import EXPLORE_EVENT

INTRO = ("What makes Gemma 3 Gemma 3, each shown on your prompt with the model in the bar: pick a topic. The "
         "sentences under it are filled in with this model's own numbers.")
# One at a time, in order: a draw for an older prompt (the tab opened) never lands after a newer one ("Look inside").
EVENT = {**EXPLORE_EVENT, "concurrency_id": "explore-gemma3", "concurrency_limit": 1}


@dataclass(eq=False)
class Gemma3Views:
    tab: gr.Tab
    topic: gr.Radio
    layer: gr.Slider
    head: gr.Dropdown
    text: gr.Markdown
    plot: gr.Plot


def build(explorer: ex.Explorer, info, prompt: gr.Textbox, look: gr.Button, choice: gr.State) -> Gemma3Views:
    """The sub-tab, in the current Tabs, wired to redraw on its controls, on "Look inside" and on the prompt."""
    with gr.Tab("Gemma 3", id="gemma3", elem_id="gemma3-tab") as tab:
        gr.Markdown(INTRO, elem_classes="guide")
        topic = gr.Radio([(label, key) for key, label in TOPICS.items()], value="mqa", label="What is special",
                         elem_id="gemma3-topic")
        with gr.Row():
            layer = gr.Slider(0, max(1, info.layers - 1), value=0, step=1, label="Layer", elem_id="gemma3-layer")
            head = gr.Dropdown(ex.head_choices(info), value="0", label="Head (all = their mean)",
                               elem_id="gemma3-head", visible=False)
        text = gr.Markdown(elem_id="gemma3-text")
        plot = gr.Plot(label="What is special about Gemma 3", elem_id="plot-gemma3", elem_classes="explore-plot")
    views = Gemma3Views(tab, topic, layer, head, text, plot)
    _wire(views, explorer, prompt, look, choice)
    return views


def _wire(v: Gemma3Views, explorer: ex.Explorer, prompt: gr.Textbox, look: gr.Button, choice: gr.State):
    @friendly
    def explore_gemma3(prompt, topic, layer, head, source=None):
        fig, words, notice, layer, layers, heads = explorer.gemma3_view(prompt, topic, layer, head, source)
        if notice:
            gr.Warning(notice)
        uses = USES[topic]
        heads_shown = ["all"] + [str(h) for h in range(heads)]
        return (words, fig,
                gr.update(maximum=max(1, layers - 1), value=layer, visible="layer" in uses),
                gr.update(choices=heads_shown, value=str(head) if str(head) in heads_shown else "0",
                          visible="head" in uses))

    def new_prompt(prompt, *args):
        if not ex.prompt_ok(prompt):   # "Look inside" says why, once
            return (gr.skip(),) * 4
        return explore_gemma3(prompt, *args)

    inputs, outputs = [prompt, v.topic, v.layer, v.head, choice], [v.text, v.plot, v.layer, v.head]
    redraw = [v.tab.select, v.topic.change, v.layer.release, v.layer.input, v.head.input]   # .input: a typed layer
    gr.on(redraw, explore_gemma3, inputs, outputs, api_name="explore_gemma3", **EVENT)
    gr.on([look.click, prompt.submit, choice.change], new_prompt, inputs, outputs, api_visibility="private", **EVENT)
