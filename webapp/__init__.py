"""The app: the page's parts (webapp.ui) and the logic behind them (everything else here).

webapp.ui builds one part of the page per module and wires its events to the modules below, which
can be tested without a browser; app.py composes the parts. Data flows one way:
app.py -> webapp -> {explain, training} -> gemma3.

    models      ModelCache (loaded models shared by the visitors who chose them, LRU within a memory
                budget), the picker's sources, path checks
    inputs      UserError and the checks every typed or API-sent value goes through
    generation  generation settings and the streaming loop
    explore     the recording cache and one function per explain figure
    train       data preparation, run settings, start/stop/resume, metrics for the live plot
    guard       who may train on a Space; ZeroGPU
    errors      `friendly`: every handler's errors reach the visitor as one sentence
    ui          model_bar, generate, explore, train, about: one module per part of the page
"""

from .inputs import UserError

__all__ = ["UserError"]
