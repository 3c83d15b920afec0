"""The Generate tab: a prompt, the sampling settings, and a story streamed into the page; Stop cancels it.

The settings' ranges and checks and the streaming loop live in webapp.generation. The story comes from the model
this session chose in the model bar (its `choice` state), whatever other visitors load meanwhile.
"""

from dataclasses import dataclass

import gradio as gr

from webapp import generation as gen
from webapp import guard, models
from webapp.errors import friendly
from webapp.inputs import MAX_PROMPT_CHARS

EXAMPLES = ["Once upon a time", "Lily found a little red ball", "The dog was sad because", "One day, Tom and his mom"]
SLIDERS = (  # (low, high, default) from webapp.generation, step, label, elem_id
    (gen.MAX_NEW_TOKENS, 1, "Max new tokens", "max-new"),
    (gen.TEMPERATURE, 0.05, "Temperature (0 = greedy)", None),
    (gen.TOP_K, 1, "Top-k (0 = off)", None),
    (gen.TOP_P, 0.05, "Top-p (1 = off)", None),
    (gen.REPETITION_PENALTY, 0.05, "Repetition penalty (1 = off)", None),
)


@dataclass(eq=False)
class Generate:
    prompt: gr.Textbox
    settings: list       # max new tokens, temperature, top-k, top-p, repetition penalty, seed
    go: gr.Button
    stop: gr.Button
    story: gr.Textbox
    info: gr.Markdown


def build(cache: models.ModelCache, choice: gr.State) -> Generate:
    """The tab, in the current Tabs, with its events wired; `choice`: the model bar's per-session source."""
    with gr.Tab("Generate", id="generate"):
        with gr.Row():
            with gr.Column(scale=2):
                prompt = gr.Textbox(label="Prompt", value=EXAMPLES[0], lines=3, elem_id="prompt",
                                    max_length=MAX_PROMPT_CHARS)
                gr.Examples(EXAMPLES, inputs=prompt, label="Example prompts")
                with gr.Row():
                    go = gr.Button("Generate", variant="primary", elem_id="generate-btn")
                    stop = gr.Button("Stop", variant="stop", elem_id="stop-btn")
                settings = [gr.Slider(lo, hi, value=d, step=step, label=label, elem_id=elem_id)
                            for (lo, hi, d), step, label, elem_id in SLIDERS]
                settings.append(gr.Number(value=-1, precision=0, label="Seed (-1 = random)"))
            with gr.Column(scale=3):
                story = gr.Textbox(label="Story", lines=18, elem_id="story", interactive=False)
                info = gr.Markdown(elem_id="gen-info")
    tab = Generate(prompt, settings, go, stop, story, info)
    _wire(tab, cache, choice)
    return tab


def _wire(tab: Generate, cache: models.ModelCache, choice: gr.State):
    @friendly
    def generate(prompt, max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed, source=None):
        s = gen.settings(prompt, max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed)
        loaded = cache.get(source)   # this session's model (reloaded if the cache dropped it)
        stats: dict = {}
        text = ""
        for i, text in enumerate(gen.stream(loaded, s, stats)):
            # the notice only once: a piece still in flight when Stop is pressed must not overwrite "Stopped"
            yield text, "*generating…*" if i == 0 else gr.skip()
        yield text, gen.summary(stats)

    def stopped(text):
        n = len(text) if isinstance(text, str) else 0
        return f"Stopped after {n:,} characters."

    event = tab.go.click(guard.gpu(generate), [tab.prompt, *tab.settings, choice], [tab.story, tab.info],
                         api_name="generate", concurrency_id="generate", concurrency_limit=2, preprocess=False)
    tab.stop.click(stopped, tab.story, tab.info, cancels=[event], api_visibility="private", queue=False)
