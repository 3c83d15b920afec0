"""The app's logic without the UI: the shared model, input checks, explore, train and the Space guard.

app.py lays out the page and wires its events to these functions; everything here can be tested
without a browser. Data flows one way: webapp -> {explain, training} -> gemma3.

    models      ModelHolder (one model for every tab and user), the picker's sources, path checks
    inputs      UserError and the checks every typed or API-sent value goes through
    generation  generation settings and the streaming loop
    explore     the recording cache and one function per explain figure
    train       data preparation, run settings, start/stop/resume, metrics for the live plot
    guard       who may train on a Space; ZeroGPU
"""

from .inputs import UserError

__all__ = ["UserError"]
