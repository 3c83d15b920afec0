"""Explore's "Over training" sub-tab: a run's snapshots, and how the prompt's predictions formed across them.

Pick a run (the one the loaded model comes from is chosen for you) and a step: "Look inside at this step"
loads that snapshot in the model bar, so every Explore view (the walk-through, attention, the logit lens,
the next token) shows the model as it was then. The table below runs the run's snapshots (at most
webapp.learning.MAX_SNAPSHOTS, spread over it, loaded once through the model cache) on the Explore prompt:
the loss of each of its tokens, step by step, and the head that learned to copy names. The Train tab's
"Explore this run" opens here on the run's latest snapshot, loaded in the model bar, and says so. app.py
connects the step to the model bar.
"""

from dataclasses import dataclass

import gradio as gr

from webapp.errors import friendly
from webapp.learning import Learning
from webapp.explore import prompt_ok
from webapp.ui import LEARN_EVENT

GUIDE = ("Watch the model learn. The table shows how surprised each snapshot of the run is by each token of your "
         "prompt (bright = expected, dark = surprised): the frequent words are learned first, then the grammar that joins them, and "
         "last the tokens only copying can predict, such as a name said earlier in the story. Copying takes an "
         "induction head; the small map finds it in the last snapshot. Pick a step and look inside to see every "
         "other view as the model was then.")


@dataclass(eq=False)
class OverTraining:
    learning: Learning
    tab: gr.Tab
    run: gr.Dropdown
    step: gr.Dropdown
    look: gr.Button
    table: gr.Plot
    heads: gr.Plot
    words: gr.Markdown
    draw: tuple = ()   # (function, inputs, outputs) drawing the table: other tabs chain it

    @staticmethod
    def loaded(info):
        """Say that a snapshot is now the visitor's model (Look inside, or the Train tab's "Explore this run")."""
        gr.Info(f"Loaded {info.name} in the model bar: Explore and Generate now use the model at that step (the "
                "model bar loads another).", duration=6)

    def choose(self, name=None, source=None, exact=False):
        """Updates for (run, step): `name`, else the run of the model `source`, else the newest run; its latest step.
        exact: `name` or nothing (no step), never another run ("Explore this run" on a run without snapshots)."""
        runs = self.learning.runs()
        names = [n for _, n in runs]
        if exact:
            name = name if name in names else None
        else:
            name = name if name in names else (self.learning.run_of(source) or (names[0] if names else None))
        steps = self.learning.steps(name) if name else []
        return (gr.update(choices=runs, value=name),
                gr.update(choices=steps, value=steps[-1][1] if steps else None))


# whether this sub-tab is the one Explore shows (read in the page as Explore opens: the server cannot know)
IN_VIEW = """(showing, ...rest) => [
    document.querySelector('#over-training-button')?.getAttribute('aria-selected') === 'true'
    || !!document.querySelector('#over-training')?.checkVisibility(), ...rest]"""


def build(learning: Learning, prompt: gr.Textbox, choice: gr.State, new_prompt: list, opened: list) -> OverTraining:
    """The sub-tab, in the current Tabs, with its events that need no model bar wired; the table follows the
    prompt on the `new_prompt` triggers ("Look inside"), and the runs are looked up again on its own select and on
    the `opened` triggers (Explore opened: on this sub-tab, its own select does not fire)."""
    with gr.Tab("Over training", id="training", elem_id="over-training") as tab:
        gr.Markdown(GUIDE, elem_classes="guide")
        with gr.Row(equal_height=True):
            run = gr.Dropdown([], label="Training run (with snapshots)", elem_id="learn-run", scale=2)
            step = gr.Dropdown([], label="Step", elem_id="learn-step", scale=2)
            with gr.Column(scale=1, min_width=160):
                look = gr.Button("Look inside at this step", variant="primary", elem_id="learn-look",
                                 interactive=False)   # until there is a step to look at
        words = gr.Markdown(elem_id="learn-words")
        table = gr.Plot(label="Loss of each prompt token, snapshot by snapshot", elem_id="plot-learn",
                        elem_classes="explore-plot")
        heads = gr.Plot(label="Induction heads (last snapshot)", elem_id="plot-heads", elem_classes="explore-plot")
        with gr.Column(visible=False) as comparing:   # shown with a run; its figure once Compare has drawn it
            with gr.Row(equal_height=True):
                other = gr.Dropdown([], label="Compare the step above with step", elem_id="learn-other", scale=3)
                compare_btn = gr.Button("Compare the two steps", elem_id="learn-compare", scale=1, min_width=160)
            pair = gr.Plot(label="Two steps side by side", elem_id="plot-pair", elem_classes="explore-plot",
                           visible=False)
        showing = gr.Checkbox(False, visible=False)   # IN_VIEW's answer, for the draw that follows it
    over = OverTraining(learning, tab, run, step, look, table, heads, words)

    @friendly
    def show_runs(name, source):
        return over.choose(name, source)

    @friendly
    def show_steps(name):
        return over.choose(name)[1]

    @friendly
    def first_step(name):  # the other step of a comparison starts at the run's first snapshot; another run's pair goes
        steps = learning.steps(name) if name else []
        return gr.update(choices=steps, value=steps[0][1] if steps else None), gr.update(visible=False)

    @friendly
    def explore_compare(text, name, a, b):
        return gr.update(value=learning.compare(text, name, a, b), visible=True)

    @friendly
    def explore_learning(text, name):
        if not name:   # no empty frames: the sentence says what fills them
            return (gr.update(visible=False), gr.update(visible=False),
                    "*No run has snapshots yet: start one in the Train tab, and its snapshots show here as it trains.*",
                    gr.update(visible=False))
        loss_table, induction, words = learning.table(text, name)
        return (gr.update(value=loss_table, visible=True), gr.update(value=induction, visible=True), words,
                gr.update(visible=True))

    def prompt_changed(text, name):   # the table follows the Explore prompt; a comparison of the old one goes
        if not name or not prompt_ok(text):   # "Look inside" says what is wrong with a prompt, once
            return (gr.skip(),) * 5
        return (*explore_learning(text, name), gr.update(visible=False))

    shows = [table, heads, words, comparing]
    over.draw = (explore_learning, [prompt, run], shows)
    tab.select(show_runs, [run, choice], [run, step], api_visibility="private", queue=False).then(
        explore_learning, [prompt, run], shows, api_name="explore_learning", **LEARN_EVENT)

    def reopened(in_view, name, source):   # a run that was training when the visitor left has new snapshots now
        return (*show_runs(name, source), True) if in_view else (gr.skip(), gr.skip(), False)

    def redrawn(in_view, text, name):
        return explore_learning(text, name) if in_view else (gr.skip(),) * len(shows)

    gr.on(opened, reopened, [showing, run, choice], [run, step, showing], js=IN_VIEW, api_visibility="private",
          queue=False).then(redrawn, [showing, prompt, run], shows, api_visibility="private", **LEARN_EVENT)
    run.change(first_step, run, [other, pair], api_visibility="private", queue=False)
    step.change(lambda value: gr.update(interactive=bool(value)), step, look, api_visibility="private", queue=False)
    compare_btn.click(explore_compare, [prompt, run, step, other], pair, api_name="explore_compare", **LEARN_EVENT)
    run.input(show_steps, run, step, api_visibility="private", queue=False).then(
        explore_learning, [prompt, run], shows, api_visibility="private", **LEARN_EVENT)
    gr.on(new_prompt, prompt_changed, [prompt, run], [*shows, pair], api_visibility="private", **LEARN_EVENT)
    return over
