"""The About tab: what the app is, the README's measured figures, links."""

import re
from pathlib import Path

import gradio as gr

from webapp import models

README = models.ROOT / "README.md"

ABOUT = """
### What this is
A **Gemma 3** language model written from scratch in PyTorch (`gemma3/`), exactly as transformers'
`Gemma3ForCausalLM` computes it: RMSNorm before and after attention and feed-forward, q/k norms before
RoPE, one shared key/value head (MQA), GeGLU feed-forward, and five *sliding-window* layers (local RoPE
base 10,000) for every *full-attention* layer (global base 1,000,000). Here it writes children's stories
with the GPT-2 tokenizer, trained on TinyStories-like text.

- **Generate** streams a story from the model in the bar above, with the usual sampling settings.
- **Explore** draws what the model does with a prompt, from its own code and weights (`explain/`).
- **Train** prepares a story corpus and trains a model in the background (`training/`); any checkpoint
  can be loaded into the model bar.

The model bar is yours: loading a model changes it for your tabs only, never another visitor's page (visitors
who pick the same model share it in memory). On a public Space, visitors pick from the list and the Space's
training runs; other paths and Hub models are for the Space's owner.

### Measured figures
{figures}

### Links
- [Gemma 3 technical report](https://arxiv.org/abs/2503.19786) · [google/gemma-3-270m](https://huggingface.co/google/gemma-3-270m)
- [TinyStories paper](https://arxiv.org/abs/2305.07759) · [roneneldan/TinyStories](https://huggingface.co/datasets/roneneldan/TinyStories)
- TinyStories Gemma 3 models: [G3nadh/gemma3-270m-tinystories](https://huggingface.co/G3nadh/gemma3-270m-tinystories) ·
  [disham993/gemma3-270m-tiny-stories](https://huggingface.co/disham993/gemma3-270m-tiny-stories)
- Built with [Gradio](https://www.gradio.app) and [PyTorch](https://pytorch.org).
"""


def measured_figures(readme: Path = README) -> str:
    """The README's "Measured figures" section, for the About tab."""
    try:
        text = readme.read_text(encoding="utf-8")
    except OSError:
        return "(README.md not found.)"
    m = re.search(r"^## Measured figures\s*$(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    return m.group(1).strip() if m else "(No measured figures in README.md yet.)"


def build():
    """The tab, in the current Tabs."""
    with gr.Tab("About", id="about"):
        gr.Markdown(ABOUT.format(figures=measured_figures()))
