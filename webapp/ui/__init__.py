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

# Explore's figure events: two draws at a time, inputs passed as sent (the Explorer checks them), and a control
# moved while its figure draws redraws once that draw ends ("always_last"; Gradio's default for a tab's .select
# or a button's .click drops it, which left a figure for the old setting under the new one).
EXPLORE_EVENT = dict(concurrency_id="explore", concurrency_limit=2, preprocess=False, trigger_mode="always_last")
