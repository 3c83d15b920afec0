"""The page, one module per part. Each `build(...)` lays out its part inside the current Blocks, wires
its own events, and returns what the other parts connect to; app.py composes them.

    model_bar   what is loaded, the list of models, Load (one model for every tab and visitor)
    generate    the Generate tab: prompt, sampling settings, a streamed story, Stop
    explore     the Explore tab: one view per explain figure, registered from one table
    train       the Train tab: data, settings, Start/Stop/Resume, the live loss plot, the run list
    about       the About tab, with the README's measured figures
"""
