"""The About tab, for learners: what Gemma 3 is, how to read the app, what each tab does; the README's measured
figures folded away at the bottom."""

import json
import re
from pathlib import Path

import gradio as gr

from training.config import TrainConfig
from webapp import curves, models
from webapp.train import VOCAB

README = models.ROOT / "README.md"

ABOUT = """
### What is Gemma 3?
**Gemma 3** is a family of open language models from Google DeepMind. A language model reads text as *tokens*
(pieces of words) and, one token at a time, predicts which token comes next; writing a story is just asking for
the next token again and again. This app holds a small Gemma 3 written from scratch in PyTorch (`gemma3/`),
computing exactly what Hugging Face transformers' `Gemma3ForCausalLM` computes, trained to write short
children's stories (TinyStories) with the GPT-2 tokenizer. The bundled model, the one the app opens on, is
the 270M design in miniature, small enough to train on a laptop: 128 numbers per token (640 in Gemma 3 270M),
8 layers (18), head size 32 (256), a window of 64 tokens (512) and a 50,257-token vocabulary (262,144). Every
view shows the numbers of the model in the bar.

Inside, every token becomes a vector (its *embedding*). The vectors pass through a stack of *layers* of one
design, each with its own weights; each layer lets every token look back at earlier tokens (**attention**) and
then transforms each token on its own (the **feed-forward** part). At the end the last token's vector is
compared with every token's embedding to score what comes next. What makes Gemma 3 Gemma 3:
- **Sliding and full attention.** Five layers out of six see only a *window* of recent tokens (cheap, local:
  512 tokens in the 270M and 1B models, 1,024 in the larger ones); every sixth sees the whole text. Each kind
  rotates its queries and keys (RoPE) at its own speed.
- **Shared key/value heads.** In the 270M design the four query heads of a layer share one key and one value
  head (multi-query attention), so the memory kept per token while writing is four times smaller; larger
  Gemma 3 models share each key/value head between two query heads (grouped-query attention).
- **Norms everywhere.** RMSNorm before *and* after attention and feed-forward, and on queries and keys
  before RoPE, keep the numbers in a steady range.
- **A gated feed-forward (GeGLU)** and a **tied head**: the output layer reuses the embedding table.

### How to use this app
The **model bar** at the top says which model you are using; pick another (or a checkpoint you trained)
and load it. It is yours alone: other visitors keep theirs.

- **Generate** writes a story after your prompt. Your prompt is shown in bold, the model's words after
  it; when the story is done each new token is coloured by how likely the model found it (red: a surprise,
  green: expected). Click a token to open Explore at that point of the story.
- **Explore** looks inside the model on a prompt. Start with the **Walk-through**: the whole architecture
  as a diagram, one box per step of the computation with the shape of its numbers for your prompt; click a
  box to see its numbers, what it does, its equation and the lines of code that compute it, and walk the
  data flow with Previous / Next. **Gemma 3** shows, live, each thing that makes Gemma 3 what it is (the
  list above). The other views show the attention masks and RoPE rotations, where each token looks
  (attention), how big the numbers get (activations), the next-token probabilities and how temperature
  reshapes them, what each layer would predict (logit lens), and where the parameters are. **Over
  training** shows how a model you trained learned your prompt, snapshot by snapshot. Each view starts
  with two or three sentences on what to look for.
- **Train** trains your own model on stories in the background and shows its loss from the first step,
  what it writes at each evaluation, and snapshots to explore; any checkpoint can be loaded into the
  model bar.

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


def demo_training():
    """The bundled model's training run (assets/demo-model: metrics.jsonl and train_config.json) drawn as the
    Train tab draws a run, or None."""
    try:
        records = [json.loads(line) for line in (models.DEMO_MODEL / "metrics.jsonl").read_text().splitlines()]
        cfg = TrainConfig.from_dict(json.loads((models.DEMO_MODEL / "train_config.json").read_text()))
    except (OSError, ValueError, TypeError):
        return None
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    return curves.run_figure(train, evals, cfg, VOCAB, log_x=True)


def build():
    """The tab, in the current Tabs: the explanation, the bundled model's training, the measured figures folded
    away."""
    with gr.Tab("About", id="about"):
        gr.Markdown(ABOUT)
        figure = demo_training()
        if figure is not None:
            with gr.Accordion("How the bundled model learned", open=False):
                gr.Markdown("The bundled demo model's own training run (its card: assets/demo-model/README.md), "
                            "on a log scale of steps: the loss falls from the random guess at step 0 within a few "
                            "hundred steps, then slowly while it learns to keep its characters' names.")
                gr.Plot(figure, show_label=False, elem_id="about-demo-training")
        with gr.Accordion("Measured figures", open=False):
            gr.Markdown("How fast and how exact this implementation is, measured against transformers on this "
                        "project's machines (the README has the details).\n\n" + measured_figures())
