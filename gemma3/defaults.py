"""Where the bundled files are, and the model the CLI and the app open when none is named.

In a checkout (or `pip install -e .`) assets/ sits beside the package; `pip install .` puts a copy
inside it (gemma3/assets/, see pyproject.toml), so the installed package finds it from any folder.
"""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
ASSETS = _PACKAGE / "assets" if (_PACKAGE / "assets").is_dir() else _PACKAGE.parent / "assets"
DEMO_MODEL = ASSETS / "demo-model"
MODEL_ENV = "GEMMA3_MODEL"


def default_model() -> str | None:
    """$GEMMA3_MODEL, else the bundled demo model if present, else None."""
    return os.environ.get(MODEL_ENV) or (str(DEMO_MODEL) if DEMO_MODEL.is_dir() else None)
