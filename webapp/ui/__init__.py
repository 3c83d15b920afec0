"""The page, one module per part. Each `build(...)` lays out its part inside the current Blocks, wires
its own events, and returns what the other parts connect to; app.py composes them.

    model_bar   what is loaded, the list of models, Load (one model for every tab and visitor)
    generate    the Generate tab: prompt, sampling settings, a streamed story, Stop
    explore     the Explore tab: one view per explain figure, registered from one table, with its sub-tabs
    walkthrough   the architecture walk-through (Explore's first sub-tab)
    gemma3_views  what is special about Gemma 3 (Explore's "Gemma 3")
    over_training a run's snapshots (Explore's "Over training")
    train       the Train tab: data, settings, Start/Stop/Resume/Estimate, the loss and lr plot, samples, runs
    about       the About tab, with the bundled model's training and the README's measured figures
    page        the theme, the CSS and the page's script
"""

# Explore's figure events: one draw at a time, so a visitor's draws land in the order they were asked for (a figure
# asked for before a model load never lands after the new model's); inputs passed as sent (the Explorer checks
# them); a control moved while its figure draws redraws once that draw ends, with the controls as they are then
# ("always_last"; Gradio's default for a tab's .select or a button's .click dropped it, leaving a figure for the
# old setting under the new one). A click whose event data says what was clicked is sent at once instead
# (CLICK_EVENT): Gradio replays a deferred trigger with its first event data, which would redo the first click.
EXPLORE_EVENT = dict(concurrency_id="explore", concurrency_limit=1, preprocess=False, trigger_mode="always_last")
CLICK_EVENT = {**EXPLORE_EVENT, "trigger_mode": "multiple"}
# Over training's table runs the prompt through every snapshot of a run: a queue of its own, never ahead of the others
LEARN_EVENT = {**EXPLORE_EVENT, "concurrency_id": "explore-learning"}
