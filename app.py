"""Gemma 3 TinyStories: write little stories with a from-scratch Gemma 3 (python app.py --help)."""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import gradio as gr  # noqa: E402
import torch  # noqa: E402

import gemma3  # noqa: E402

DEMO_MODEL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "demo-model")
EXAMPLES = ["Once upon a time", "Lily found a little red ball", "The dog was sad because", "One day, Tom and his mom"]


def load(source: str | None):
    """(model, tokenizer, description). Without a checkpoint: a random tiny model, said plainly."""
    source = source or os.environ.get("GEMMA3_MODEL") or (DEMO_MODEL if os.path.isdir(DEMO_MODEL) else None)
    if source is None:
        torch.manual_seed(0)
        model = gemma3.Gemma3(gemma3.Gemma3Config.from_preset("tiny")).eval()
        return model, gemma3.gpt2_tokenizer(), "random weights (tiny preset, untrained: expect noise)"
    model, tok = gemma3.load_model(source)
    return model, tok, source


def build(model, tokenizer, description: str) -> gr.Blocks:
    def generate(prompt, max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed):
        stats: dict = {}
        text = ""
        try:
            pieces = gemma3.stream(model, tokenizer, prompt, int(max_new_tokens), float(temperature),
                                   int(top_k) if top_k else None, float(top_p) if top_p < 1 else None,
                                   float(repetition_penalty), int(seed) if seed not in (None, "", -1) else None,
                                   stats=stats)
            for i, piece in enumerate(pieces):
                text += piece
                if i % 4 == 0:
                    yield text, ""
        except ValueError as e:
            raise gr.Error(str(e)) from None
        info = f"{stats.get('new_tokens', 0)} tokens, {stats.get('tokens_per_s', 0):.1f} tokens/s"
        yield text, info + (f" — {stats['notice']}" if stats.get("notice") else "")

    n = model.num_params()
    with gr.Blocks(title="Gemma 3 TinyStories") as demo:
        gr.Markdown(f"# Gemma 3 TinyStories\nModel: **{description}** — {n / 1e6:.1f}M parameters, "
                    f"{model.embed.weight.device}, {str(model.embed.weight.dtype).replace('torch.', '')}")
        with gr.Row():
            with gr.Column():
                prompt = gr.Textbox(label="Prompt", value=EXAMPLES[0], lines=3)
                gr.Examples(EXAMPLES, inputs=prompt)
                max_new = gr.Slider(1, 1000, value=200, step=1, label="Max new tokens")
                temperature = gr.Slider(0, 2, value=0.7, step=0.05, label="Temperature (0 = greedy)")
                top_k = gr.Slider(0, 200, value=0, step=1, label="Top-k (0 = off)")
                top_p = gr.Slider(0.05, 1, value=1, step=0.05, label="Top-p (1 = off)")
                rep = gr.Slider(0.5, 2, value=1.0, step=0.05, label="Repetition penalty (1 = off)")
                seed = gr.Number(value=-1, precision=0, label="Seed (-1 = random)")
                with gr.Row():
                    go = gr.Button("Generate", variant="primary")
                    stop = gr.Button("Stop")
            with gr.Column():
                out = gr.Textbox(label="Story", lines=16)
                info = gr.Markdown()
        event = go.click(generate, [prompt, max_new, temperature, top_k, top_p, rep, seed], [out, info],
                         api_name="generate", concurrency_limit=2)
        stop.click(None, cancels=[event])
    return demo


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=None, help="checkpoint folder, weights file or hf:owner/name "
                        "(default: $GEMMA3_MODEL, else the bundled demo model)")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    parser.add_argument("--share", action="store_true", help="create a public gradio.live link")
    args = parser.parse_args(argv)
    model, tok, description = load(args.model)
    build(model, tok, description).queue().launch(server_name=args.host, server_port=args.port, share=args.share)


if __name__ == "__main__":
    main()
