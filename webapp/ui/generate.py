"""The Generate tab: a prompt, the sampling settings, and a story streamed into the page; Stop cancels it.

The story shows the prompt (bold) followed by the continuation; when it is done, each new token is coloured by the
probability the model gave it, and a click on one (the `story.select` event, wired in app.py) opens Explore on the
text before it. The settings' ranges and checks, the streaming loop and the story's HTML live in
webapp.generation. The story comes from the model this session chose in the model bar (its `choice` state),
whatever other visitors load meanwhile.
"""

from dataclasses import dataclass

import gradio as gr

from webapp import generation as gen
from webapp import guard, models
from webapp.errors import friendly
from webapp.inputs import MAX_PROMPT_CHARS

EXAMPLES = ["Once upon a time", "Lily found a little red ball", "The dog was sad because", "One day, Tom and his mom"]
# a click on a token sends its index as a select event (gr.SelectData: index, value)
ON_CLICK = ("element.addEventListener('click', (ev) => { const t = ev.target.closest('[data-i]'); "
            "if (t) trigger('select', {index: Number(t.dataset.i), value: t.textContent}); });")
STREAMING = {"streaming": True}   # `pieces` while a story streams: Stop says "Stopped" only then
SLIDERS = (  # (low, high, default) from webapp.generation, step, label, elem_id, info
    (gen.MAX_NEW_TOKENS, 1, "Max new tokens", "max-new", None),
    (gen.TEMPERATURE, 0.05, "Temperature (0 = greedy)", None,
     "above 1, unlikely tokens get drawn too: any piece of a vocabulary built from web text, rude words included"),
    (gen.TOP_K, 1, "Top-k (0 = off)", "gen-top-k", None),
    (gen.TOP_P, 0.05, "Top-p (1 = off)", None, None),
    (gen.REPETITION_PENALTY, 0.05, "Repetition penalty (1 = off)", None, None),
)


@dataclass(eq=False)
class Generate:
    prompt: gr.Textbox
    settings: list       # max new tokens, temperature, top-k, top-p, repetition penalty, seed
    go: gr.Button
    stop: gr.Button
    story: gr.HTML        # the prompt and the story (webapp.generation.story_html)
    info: gr.Markdown
    pieces: gr.State      # the last finished story's tokens and settings (generation.story_state), for a click;
    #                       STREAMING while one streams, {} after Stop
    choice: gr.State      # the model bar's per-session source (None: the default)


def clicked(story: dict, index, source) -> tuple:
    """generation.clicked_token for a click on a finished story, with this session's model now (`source`; None:
    the default, which wrote every story of a session that loaded nothing else). A story another model wrote opens
    on the model in the bar with nothing marked as drawn (that model did not draw it), and says so."""
    before, token, sampling = gen.clicked_token(story, index)
    if source is not None and story.get("source") not in (None, source):
        gr.Warning(f"This story was written by another model ({story['model']}); Next token shows the model in "
                   "the bar now, so the token the story drew there is not marked.")
        token = None
    return before, token, sampling


def build(cache: models.ModelCache, choice: gr.State) -> Generate:
    """The tab, in the current Tabs, with its events wired; `choice`: the model bar's per-session source."""
    with gr.Tab("Generate", id="generate"):
        # on a phone (webapp.ui.page.CSS) the columns dissolve into one: the prompt, the buttons, the folded
        # settings, the story, then the example prompts
        with gr.Row(elem_id="generate-row"):
            with gr.Column(scale=2):
                prompt = gr.Textbox(label="Prompt", value=EXAMPLES[0], lines=3, elem_id="prompt",
                                    max_length=MAX_PROMPT_CHARS)
                gr.Examples(EXAMPLES, inputs=prompt, label="Example prompts", elem_id="gen-examples")
                with gr.Row(elem_id="gen-buttons"):
                    go = gr.Button("Generate", variant="primary", elem_id="generate-btn")
                    stop = gr.Button("Stop", variant="stop", elem_id="stop-btn")
                with gr.Accordion("Settings", open=True, elem_id="gen-settings"):   # folded on a phone (page.JS)
                    settings = [gr.Slider(lo, hi, value=d, step=step, label=label, elem_id=elem_id, info=info)
                                for (lo, hi, d), step, label, elem_id, info in SLIDERS]
                    settings.append(gr.Number(value=-1, precision=0, label="Seed (-1 = random)"))
            with gr.Column(scale=3):
                story = gr.HTML(gen.EMPTY_STORY, label="Story", show_label=True, container=True, elem_id="story",
                                js_on_load=ON_CLICK)
                info = gr.Markdown(elem_id="gen-info")
                pieces = gr.State({})   # inside the tab: a component between tabs would count as one
    tab = Generate(prompt, settings, go, stop, story, info, pieces, choice)
    _wire(tab, cache, choice)
    return tab


def _wire(tab: Generate, cache: models.ModelCache, choice: gr.State):
    @friendly
    def generate(prompt, max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed, source=None):
        s = gen.with_seed(gen.settings(prompt, max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed))
        loaded = cache.get(source)   # this session's model (reloaded if the cache dropped it)
        stats: dict = {}
        text = ""
        for i, text in enumerate(gen.stream(loaded, s, stats)):   # first "": the prompt shows at once
            shown = gen.story_html(s.prompt, text)
            # the notice and STREAMING only once: a piece still in flight when Stop is pressed must not undo Stop's
            yield (shown, "*generating…*", dict(STREAMING, seed=s.seed)) if i == 0 else (shown, gr.skip(), gr.skip())
        pieces = gen.token_pieces(loaded, stats, with_ids=True)
        yield gen.story_html(s.prompt, text, pieces), gen.summary(stats), gen.story_state(s, pieces, loaded.info)

    def stopped(shown, story):
        """Stop's notice, only while a story streams: a finished story (or none yet) keeps its line."""
        if not (isinstance(story, dict) and story.get("streaming")):
            return gr.skip(), gr.skip()
        n = len(gen.continuation_text(shown)) if isinstance(shown, str) else 0
        seed = story.get("seed")
        if seed is None:   # greedy: the same story every time
            return (f"Stopped after {n:,} characters. Only a story that ends gets its coloured, clickable tokens: "
                    "at temperature 0, Generate writes this one again, to its end."), {}
        return (f"Stopped after {n:,} characters (seed {seed}). Only a story that ends gets its coloured, clickable "
                f"tokens: to finish this one, set Seed to {seed} and press Generate."), {}

    event = tab.go.click(guard.gpu(generate), [tab.prompt, *tab.settings, choice], [tab.story, tab.info, tab.pieces],
                         api_name="generate", concurrency_id="generate", concurrency_limit=2, preprocess=False)
    tab.stop.click(stopped, [tab.story, tab.pieces], [tab.info, tab.pieces], cancels=[event], api_visibility="private",
                   queue=False)
