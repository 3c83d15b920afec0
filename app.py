"""Gemma 3 TinyStories: write little stories with a from-scratch Gemma 3, look inside it, train it.

python app.py [--model DIR|FILE|hf:owner/name] [--host HOST] [--port PORT] [--share]

Layout and wiring only: the logic behind every event lives in the webapp package (and gemma3,
explain, training below it). One model is shared by every tab and every user (webapp.models).
"""

import argparse
import functools
import inspect
import logging
import os
import re

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import gradio as gr  # noqa: E402

from gemma3 import kernels  # noqa: E402
from gemma3.cpu import keep_freed_memory  # noqa: E402
from training.data import DataError  # noqa: E402
from training.runs import RunError  # noqa: E402
from webapp import UserError, guard  # noqa: E402
from webapp import explore as ex  # noqa: E402
from webapp import generation as gen  # noqa: E402
from webapp import models  # noqa: E402
from webapp import train as tr  # noqa: E402
from webapp.inputs import MAX_PROMPT_CHARS  # noqa: E402

log = logging.getLogger("app")

ROOT = models.ROOT
DEMO_MODEL = str(models.DEMO_MODEL)
RUNS_DIR = os.environ.get("GEMMA3_RUNS_DIR", str(ROOT / "runs"))
DATA_DIR = os.environ.get("GEMMA3_DATA_DIR", str(ROOT / "data"))
EXAMPLES = ["Once upon a time", "Lily found a little red ball", "The dog was sad because", "One day, Tom and his mom"]
EXPLORE_PROMPT = "Once upon a time, there was a little girl named Lily. She loved to play"
THEME = gr.themes.Soft(primary_hue="indigo", secondary_hue="pink")
CSS = """
#story textarea { font-family: Georgia, 'Times New Roman', serif; font-size: 1.05rem; line-height: 1.5; }
#model-bar { padding: 0.4rem 0.6rem; }
.guide { color: var(--body-text-color-subdued); }
"""
CURVE_COLORS = {"train": "#4f46e5", "val": "#db2777"}
LAUNCH = dict(theme=THEME, css=CSS)  # Gradio 6: theme and css are arguments of launch()
USER_ERRORS = (UserError, ValueError, RunError, DataError, FileNotFoundError, ConnectionError, PermissionError)


def load(source: str | None = None):
    """(model, tokenizer, description): --model, $GEMMA3_MODEL, the demo model, else random tiny weights."""
    model, tok, info = models.load_source(models.default_source(source))
    return model, tok, info.name


def friendly(fn):
    """Every error a handler raises reaches the user as one gr.Error sentence; the server keeps serving."""

    def convert(e: Exception) -> gr.Error:
        if isinstance(e, USER_ERRORS):
            return gr.Error(str(e).strip() or e.__class__.__name__, print_exception=False)
        log.exception("unexpected error in %s", fn.__name__)
        return gr.Error(f"Something went wrong ({e.__class__.__name__}: {str(e)[:300]}). The app is still "
                        "running: try again, or reload the page.")

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as e:
                raise convert(e) from None
        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as e:
            raise convert(e) from None
    return wrapper


def _username(profile) -> str | None:
    return getattr(profile, "username", None) if profile is not None else None


def measured_figures() -> str:
    """The README's "Measured figures" section, for the About tab."""
    try:
        readme = (ROOT / "README.md").read_text(encoding="utf-8")
    except OSError:
        return "(README.md not found.)"
    m = re.search(r"^## Measured figures\s*$(.*?)(?=^## |\Z)", readme, flags=re.M | re.S)
    return m.group(1).strip() if m else "(No measured figures in README.md yet.)"


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

The model bar is shared: loading a model replaces it for every tab and every visitor.

### Measured figures
{figures}

### Links
- [Gemma 3 technical report](https://arxiv.org/abs/2503.19786) · [google/gemma-3-270m](https://huggingface.co/google/gemma-3-270m)
- [TinyStories paper](https://arxiv.org/abs/2305.07759) · [roneneldan/TinyStories](https://huggingface.co/datasets/roneneldan/TinyStories)
- TinyStories Gemma 3 models: [G3nadh/gemma3-270m-tinystories](https://huggingface.co/G3nadh/gemma3-270m-tinystories) ·
  [disham993/gemma3-270m-tiny-stories](https://huggingface.co/disham993/gemma3-270m-tiny-stories)
- Built with [Gradio](https://www.gradio.app) and [PyTorch](https://pytorch.org).
"""


def build(model=None, tokenizer=None, description: str | None = None, *, holder: models.ModelHolder | None = None,
          runs_dir=None, data_dir=None) -> gr.Blocks:
    """The whole app, on `holder`'s model (or on model/tokenizer, or else the default: see load()).

    runs_dir / data_dir: where training writes (default $GEMMA3_RUNS_DIR / $GEMMA3_DATA_DIR, else runs/ and
    data/ in the repository)."""
    if holder is None and model is None:
        holder = models.ModelHolder.from_default()
    elif holder is None:
        source = description or "model given to build()"
        holder = models.ModelHolder(model, tokenizer, models.model_info(model, tokenizer, source, description))
    trainer = tr.Trainer(runs_dir or RUNS_DIR, data_dir or DATA_DIR)
    roots = models.allowed_roots(trainer.runs_dir)
    explorer = ex.Explorer(holder)
    info0 = holder.info

    def picker_state(current: str | None = None):
        choices = models.picker_choices(trainer.runs_dir)
        values = {v for _, v in choices}
        info = holder.info
        if info.source not in values:  # e.g. --model outside the listed places: still shown as loaded
            choices.insert(0, (f"Loaded: {info.name}", info.source))
            values.add(info.source)
        current = current if current in values else holder.info.source if holder.info.source in values else None
        return choices, current

    def picker_update(current: str | None = None):
        choices, value = picker_state(current)
        return gr.update(choices=choices, value=value)

    def details_text(info) -> str:
        return f"```\n{info.details}\n```"

    with gr.Blocks(title="Gemma 3 TinyStories") as demo:
        gr.Markdown("# Gemma 3 TinyStories\nA from-scratch Gemma 3: write stories, look inside the model, "
                    "train your own.")

        # ---- the model bar, shared by every tab ----
        with gr.Group(elem_id="model-bar"):
            model_md = gr.Markdown(info0.markdown(), elem_id="model-info")
            with gr.Row(equal_height=True):
                choices0, value0 = picker_state()
                picker = gr.Dropdown(choices0, value=value0, label="Available models", scale=4,
                                     elem_id="model-picker")
                custom = gr.Textbox(label="…or a path / hf:owner/name", scale=3, max_lines=1, elem_id="model-path",
                                    placeholder="runs/NAME/best · assets/demo-model · hf:owner/name")
                with gr.Column(scale=1, min_width=120):
                    load_btn = gr.Button("Load model", variant="primary", elem_id="load-model")
                    refresh_btn = gr.Button("↻ Refresh list", size="sm")
            with gr.Accordion("Model details", open=False):
                details_md = gr.Markdown(details_text(info0))

        with gr.Tabs():
            # ---- Generate ----
            with gr.Tab("Generate", id="generate"):
                with gr.Row():
                    with gr.Column(scale=2):
                        prompt = gr.Textbox(label="Prompt", value=EXAMPLES[0], lines=3, elem_id="prompt",
                                            max_length=MAX_PROMPT_CHARS)
                        gr.Examples(EXAMPLES, inputs=prompt, label="Example prompts")
                        with gr.Row():
                            go = gr.Button("Generate", variant="primary", elem_id="generate-btn")
                            stop = gr.Button("Stop", variant="stop", elem_id="stop-btn")
                        lo, hi, d = gen.MAX_NEW_TOKENS
                        max_new = gr.Slider(lo, hi, value=d, step=1, label="Max new tokens", elem_id="max-new")
                        lo, hi, d = gen.TEMPERATURE
                        temperature = gr.Slider(lo, hi, value=d, step=0.05, label="Temperature (0 = greedy)")
                        lo, hi, d = gen.TOP_K
                        top_k = gr.Slider(lo, hi, value=d, step=1, label="Top-k (0 = off)")
                        lo, hi, d = gen.TOP_P
                        top_p = gr.Slider(lo, hi, value=d, step=0.05, label="Top-p (1 = off)")
                        lo, hi, d = gen.REPETITION_PENALTY
                        rep = gr.Slider(lo, hi, value=d, step=0.05, label="Repetition penalty (1 = off)")
                        seed = gr.Number(value=-1, precision=0, label="Seed (-1 = random)")
                    with gr.Column(scale=3):
                        story = gr.Textbox(label="Story", lines=18, elem_id="story", interactive=False)
                        gen_info = gr.Markdown(elem_id="gen-info")

            # ---- Explore ----
            with gr.Tab("Explore", id="explore") as explore_tab:
                gr.Markdown("Pictures of what the model in the bar computes, drawn from its own code and weights. "
                            "Masks, RoPE and Parameters describe the architecture and need no prompt; the other "
                            "views run the model once on your prompt (switching layer or head reuses that run).")
                with gr.Row():
                    ex_prompt = gr.Textbox(label="Prompt to look inside", value=EXPLORE_PROMPT, lines=2, scale=5,
                                           elem_id="explore-prompt", max_length=MAX_PROMPT_CHARS)
                    with gr.Column(scale=1, min_width=140):
                        look = gr.Button("Look inside", variant="primary", elem_id="look-inside")
                with gr.Tabs():
                    with gr.Tab("Masks", id="mask") as t_mask:
                        gr.Markdown(ex.GUIDE["mask"], elem_classes="guide")
                        seq = gr.Slider(1, min(info0.context, ex.MAX_MASK_LEN), value=ex.default_mask_len(info0),
                                        step=1, label="Sequence length")
                        mask_plot = gr.Plot(label="Attention masks", elem_id="plot-mask")
                    with gr.Tab("RoPE", id="rope") as t_rope:
                        gr.Markdown(ex.GUIDE["rope"], elem_classes="guide")
                        rope_plot = gr.Plot(label="RoPE", elem_id="plot-rope")
                    with gr.Tab("Attention", id="attention") as t_attn:
                        gr.Markdown(ex.GUIDE["attention"], elem_classes="guide")
                        with gr.Row():
                            layer = gr.Slider(0, max(1, info0.layers - 1), value=0, step=1, label="Layer")
                            head = gr.Dropdown(ex.head_choices(info0), value="all", label="Head")
                        attn_plot = gr.Plot(label="Attention", elem_id="plot-attention")
                    with gr.Tab("Activations", id="activations") as t_act:
                        gr.Markdown(ex.GUIDE["activations"], elem_classes="guide")
                        act_plot = gr.Plot(label="Activations", elem_id="plot-activations")
                    with gr.Tab("Next token", id="next") as t_next:
                        gr.Markdown(ex.GUIDE["next_token"], elem_classes="guide")
                        with gr.Row():
                            lo, hi, d = ex.NEXT_TEMPERATURE
                            next_temp = gr.Slider(lo, hi, value=d, step=0.05, label="Temperature (0 = greedy)")
                            lo, hi, d = ex.NEXT_TOP_K
                            next_topk = gr.Slider(lo, hi, value=d, step=1, label="Top-k (0 = off)")
                        next_plot = gr.Plot(label="Next token", elem_id="plot-next")
                    with gr.Tab("Logit lens", id="lens") as t_lens:
                        gr.Markdown(ex.GUIDE["logit_lens"], elem_classes="guide")
                        lens_plot = gr.Plot(label="Logit lens", elem_id="plot-lens")
                    with gr.Tab("Parameters", id="params") as t_params:
                        gr.Markdown(ex.GUIDE["parameters"], elem_classes="guide")
                        params_plot = gr.Plot(label="Parameters", elem_id="plot-params")

            # ---- Train ----
            with gr.Tab("Train", id="train"):
                allowed0, why0 = guard.training_permission(None)
                with gr.Row(equal_height=True):
                    permission_md = gr.Markdown(why0, elem_id="train-permission")
                    if guard.on_space():
                        gr.LoginButton(scale=0)
                        duplicate = gr.DuplicateButton("Duplicate this Space", scale=0, visible=not allowed0)
                    else:
                        duplicate = None
                with gr.Row():
                    with gr.Column(scale=2):
                        source_kind = gr.Radio(list(tr.SOURCES), value="builtin", label="Training data")
                        lo, hi, d = tr.BUILTIN_STORIES
                        stories = gr.Number(d, precision=0, label=f"Built-in stories to generate ({lo:,} to {hi:,})",
                                            elem_id="train-stories")
                        hub_id = gr.Textbox(label="Hugging Face dataset id (needs a network)", visible=False,
                                            placeholder="roneneldan/TinyStories", max_lines=1)
                        files = gr.File(label="Story files: .txt (blank line between stories), "
                                        ".jsonl ({\"text\": …}), .parquet (a text column)", file_count="multiple",
                                        file_types=[".txt", ".jsonl", ".parquet"], visible=False)
                        preset = gr.Radio(list(tr.PRESETS), value="tiny", label="Model preset",
                                          info="tiny: minutes on a CPU · demo: the bundled model's size · "
                                               "270m: the full design (GPU)")
                        d = tr.preset_defaults("tiny")
                        with gr.Row():
                            max_steps = gr.Number(d["max_steps"], precision=0, label="Max steps", elem_id="train-steps")
                            batch_size = gr.Number(d["batch_size"], precision=0, label="Batch size",
                                                   elem_id="train-batch")
                            grad_accum = gr.Number(d["grad_accum"], precision=0, label="Grad accumulation")
                        with gr.Row():
                            seq_len = gr.Number(d["seq_len"], precision=0, label="Sequence length",
                                                elem_id="train-seq")
                            lr = gr.Number(d["lr"], label="Learning rate")
                        with gr.Row():
                            device = gr.Radio(list(tr.DEVICES), value="auto", label="Device", elem_id="train-device")
                            gpus = gr.Number(1, precision=0, label="GPUs")
                            compile_ = gr.Checkbox(False, label="torch.compile", elem_id="train-compile",
                                                   info="faster steps (1.1-1.3x on a CPU) after a minute or two "
                                                        "of compiling: for long runs")
                        with gr.Row():
                            start_btn = gr.Button("Start", variant="primary", interactive=allowed0,
                                                  elem_id="train-start")
                            stop_btn = gr.Button("Stop", variant="stop", interactive=allowed0, elem_id="train-stop")
                            resume_btn = gr.Button("Resume", interactive=allowed0, elem_id="train-resume")
                        use_btn = gr.Button("Use this checkpoint in the model bar", elem_id="train-use")
                    with gr.Column(scale=3):
                        with gr.Row(equal_height=True):
                            run_dd = gr.Dropdown(label="Run", choices=[], value=None, scale=4,
                                                 allow_custom_value=False, elem_id="train-run")
                            runs_refresh = gr.Button("↻", scale=0, min_width=40)
                        status_md = gr.Markdown(elem_id="train-status")
                        loss_plot = gr.LinePlot(x="step", y="loss", color="curve", title="Loss",
                                                x_title="step", y_title="cross-entropy loss",
                                                color_map=CURVE_COLORS,
                                                height=320, elem_id="train-loss")
                        stats_md = gr.Markdown(elem_id="train-stats")
                        sample_tb = gr.Textbox(label="Latest sample (at the last evaluation)", lines=4,
                                               interactive=False, elem_id="train-sample")
                        runs_df = gr.Dataframe(headers=["run", "state", "step", "preset", "best val loss", "created"],
                                               interactive=False, label="Runs", wrap=True)
                timer = gr.Timer(2.0)
                slow_timer = gr.Timer(4.0)

            # ---- About ----
            with gr.Tab("About", id="about"):
                gr.Markdown(ABOUT.format(figures=measured_figures()))

        # ================================ wiring ================================
        def model_outputs(info):
            return (info.markdown(), details_text(info),
                    gr.update(maximum=max(1, info.layers - 1), value=0),
                    gr.update(choices=ex.head_choices(info), value="all"),
                    gr.update(maximum=min(info.context, ex.MAX_MASK_LEN), value=ex.default_mask_len(info)))

        model_outs = [model_md, details_md, layer, head, seq]

        @friendly
        def load_model(choice, path, progress=gr.Progress(track_tqdm=True)):
            typed = path.strip() if isinstance(path, str) else path
            source = models.check_source(typed or choice, roots, trainer.runs_dir)
            progress(0, desc=f"Loading {models.display_name(source)} …")
            info = holder.load(source)
            gr.Info(f"Loaded {info.name}: {info.params / 1e6:.1f}M parameters.", duration=4)
            return (*model_outputs(info), picker_update(source))

        load_btn.click(load_model, [picker, custom], [*model_outs, picker], api_name="load_model",
                       concurrency_id="load", concurrency_limit=1, preprocess=False)
        custom.submit(load_model, [picker, custom], [*model_outs, picker], api_visibility="private",
                      concurrency_id="load", concurrency_limit=1, preprocess=False)
        refresh_btn.click(lambda: picker_update(), None, picker, api_visibility="private", queue=False)

        # -- Generate
        @friendly
        def generate(prompt, max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed):
            s = gen.settings(prompt, max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed)
            stats: dict = {}
            text = ""
            for i, text in enumerate(gen.stream(holder, s, stats)):
                # the notice only once: a piece still in flight when Stop is pressed must not overwrite "Stopped"
                yield text, "*generating…*" if i == 0 else gr.skip()
            yield text, gen.summary(stats)

        gen_event = go.click(guard.gpu(generate), [prompt, max_new, temperature, top_k, top_p, rep, seed],
                             [story, gen_info], api_name="generate", concurrency_id="generate",
                             concurrency_limit=2, preprocess=False)
        def stopped(text):
            n = len(text) if isinstance(text, str) else 0
            return f"Stopped after {n:,} characters."

        stop.click(stopped, story, gen_info, cancels=[gen_event], api_visibility="private", queue=False)

        # -- Explore
        def with_notice(result):
            fig, notice = result
            if notice:
                gr.Warning(notice)
            return fig

        @friendly
        def explore_mask(seq_len):
            return explorer.mask(seq_len)

        @friendly
        def explore_rope():
            return explorer.rope()

        @friendly
        def explore_parameters():
            return explorer.parameters()

        @friendly
        def explore_attention(prompt, layer, head):
            return with_notice(explorer.attention(prompt, layer, head))

        @friendly
        def explore_activations(prompt):
            return with_notice(explorer.activations(prompt))

        @friendly
        def explore_next_token(prompt, temperature, top_k):
            return with_notice(explorer.next_token(prompt, temperature, top_k))

        @friendly
        def explore_logit_lens(prompt):
            return with_notice(explorer.logit_lens(prompt))

        @friendly
        def explore_all(prompt, layer, head, temperature, top_k):
            figs = (explorer.attention(prompt, layer, head), explorer.activations(prompt),
                    explorer.next_token(prompt, temperature, top_k), explorer.logit_lens(prompt))
            return tuple(with_notice(f) if i == 0 else f[0] for i, f in enumerate(figs))

        ekw = dict(concurrency_id="explore", concurrency_limit=2, preprocess=False)
        gr.on([explore_tab.select, t_mask.select, seq.release], explore_mask, [seq], mask_plot,
              api_name="explore_mask", **ekw)
        gr.on([t_rope.select], explore_rope, None, rope_plot, api_name="explore_rope", **ekw)
        gr.on([t_params.select], explore_parameters, None, params_plot, api_name="explore_parameters", **ekw)
        gr.on([t_attn.select, layer.release, head.input], explore_attention, [ex_prompt, layer, head], attn_plot,
              api_name="explore_attention", **ekw)
        gr.on([t_act.select], explore_activations, [ex_prompt], act_plot, api_name="explore_activations", **ekw)
        gr.on([t_next.select, next_temp.release, next_topk.release], explore_next_token,
              [ex_prompt, next_temp, next_topk], next_plot, api_name="explore_next_token", **ekw)
        gr.on([t_lens.select], explore_logit_lens, [ex_prompt], lens_plot, api_name="explore_logit_lens", **ekw)
        gr.on([look.click, ex_prompt.submit], explore_all, [ex_prompt, layer, head, next_temp, next_topk],
              [attn_plot, act_plot, next_plot, lens_plot], api_visibility="private", **ekw)

        # -- Train
        def show_source(kind):
            return (gr.update(visible=kind == "builtin"), gr.update(visible=kind == "hub"),
                    gr.update(visible=kind == "files"))

        source_kind.change(show_source, source_kind, [stories, hub_id, files], api_visibility="private", queue=False)

        @friendly
        def fill_preset(name):
            d = tr.preset_defaults(name)
            return d["max_steps"], d["batch_size"], d["grad_accum"], d["seq_len"], d["lr"]

        preset.input(fill_preset, preset, [max_steps, batch_size, grad_accum, seq_len, lr], api_visibility="private",
                     queue=False)

        def runs_choices(value=None):
            names = trainer.names()
            return gr.update(choices=names, value=value if value in names else (names[0] if names else None))

        @friendly
        def train_start(data_source, builtin_stories, hub_dataset, uploaded_files, preset_name, max_steps_,
                        batch_size_, grad_accum_, seq_len_, lr_, device_, gpus_, compile_on,
                        profile: gr.OAuthProfile | None = None, progress=gr.Progress(track_tqdm=True)):
            guard.check_training(_username(profile))
            config = trainer.config(preset_name, max_steps_, batch_size_, grad_accum_, seq_len_, lr_, device_, gpus_,
                                    compile_on)
            trainer.ensure_idle()
            progress(0, desc="Preparing the training data …")
            data, meta = trainer.prepare(data_source, builtin_stories, hub_dataset, uploaded_files)
            progress(0.95, desc="Starting the trainer …")
            run = trainer.start(config, data)
            gr.Info(f"Started run {run.name}: {meta['train_tokens']:,} training tokens in {data.name}.",
                    duration=4)
            return runs_choices(run.name), f"**{run.name}**: starting …", trainer.table()

        tkw = dict(concurrency_id="train", concurrency_limit=1, preprocess=False)
        start_btn.click(train_start, [source_kind, stories, hub_id, files, preset, max_steps, batch_size, grad_accum,
                                      seq_len, lr, device, gpus, compile_], [run_dd, status_md, runs_df],
                        api_name="train_start", **tkw)

        @friendly
        def train_stop(run, profile: gr.OAuthProfile | None = None):
            guard.check_training(_username(profile))
            st = trainer.stop(run)
            gr.Info(f"Run stopped at step {st.get('step')}: {st.get('state')}"
                    + (f" ({st['reason']})" if st.get("reason") else "") + ".", duration=4)
            return f"{st.get('state')} at step {st.get('step')}", trainer.table()

        stop_btn.click(train_stop, [run_dd], [status_md, runs_df], api_name="train_stop", **tkw)

        @friendly
        def train_resume(run, max_steps_, profile: gr.OAuthProfile | None = None):
            guard.check_training(_username(profile))
            run = trainer.resume(run, max_steps_)
            gr.Info(f"Resuming run {run.name}.", duration=4)
            return runs_choices(run.name), f"**{run.name}**: resuming …", trainer.table()

        resume_btn.click(train_resume, [run_dd, max_steps], [run_dd, status_md, runs_df], api_name="train_resume",
                         **tkw)

        @friendly
        def train_metrics(run):
            m = trainer.metrics(run)
            return m["frame"], m["status"], m["stats"], m["sample"]

        gr.on([timer.tick, run_dd.change], train_metrics, [run_dd], [loss_plot, status_md, stats_md, sample_tb],
              api_name="train_metrics", show_progress="hidden", concurrency_id="monitor", concurrency_limit=8,
              preprocess=False)

        @friendly
        def refresh_runs(name):
            return runs_choices(name), trainer.table()

        gr.on([runs_refresh.click], refresh_runs, [run_dd], [run_dd, runs_df], api_visibility="private",
              preprocess=False)
        @friendly
        def slow_refresh():  # the runs table, and the shared model as another visitor may have swapped it
            return trainer.table(), holder.info.markdown()

        slow_timer.tick(slow_refresh, None, [runs_df, model_md], api_visibility="private", show_progress="hidden",
                        concurrency_id="monitor")

        @friendly
        def use_checkpoint(run, progress=gr.Progress()):
            path = trainer.checkpoint(run)
            source = models.check_source(str(path), roots, trainer.runs_dir)
            progress(0, desc=f"Loading {models.display_name(source)} …")
            info = holder.load(source)
            gr.Info(f"Loaded {info.name} into the model bar.", duration=4)
            return (*model_outputs(info), picker_update(source))

        use_btn.click(use_checkpoint, [run_dd], [*model_outs, picker], api_name="train_use_checkpoint",
                      concurrency_id="load", concurrency_limit=1, preprocess=False)

        # -- every page load: the shared model as it is now, this visitor's permission, the live run
        @friendly
        def on_load(profile: gr.OAuthProfile | None = None):
            info = holder.info
            allowed, why = guard.training_permission(_username(profile))
            live = trainer.pick(None) if trainer.runs_dir.is_dir() else None
            out = [*model_outputs(info), picker_update(), why, gr.update(interactive=allowed),
                   gr.update(interactive=allowed), gr.update(interactive=allowed),
                   runs_choices(live.name if live else None), trainer.table()]
            if duplicate is not None:
                out.append(gr.update(visible=not allowed))
            return out

        demo.load(on_load, None, [*model_outs, picker, permission_md, start_btn, stop_btn, resume_btn, run_dd, runs_df]
                  + ([duplicate] if duplicate is not None else []), api_visibility="private")
    demo.holder, demo.trainer, demo.explorer = holder, trainer, explorer  # for tests and embedding
    return demo


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None,
                        help="model to start on: a checkpoint folder, a weights file or hf:owner/name "
                             "(default: $GEMMA3_MODEL, else the bundled demo model assets/demo-model, else random "
                             "tiny weights, said plainly)")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="address to listen on (default: $GRADIO_SERVER_NAME, else 127.0.0.1; 0.0.0.0 for every "
                             "interface)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)),
                        help="port to listen on (default: $GRADIO_SERVER_PORT, else 7860)")
    parser.add_argument("--share", action="store_true", help="also create a public gradio.live link")
    parser.add_argument("--runs-dir", default=RUNS_DIR,
                        help="where training runs are written (default: $GEMMA3_RUNS_DIR, else runs/)")
    parser.add_argument("--data-dir", default=DATA_DIR,
                        help="where prepared training data is written (default: $GEMMA3_DATA_DIR, else data/)")
    args = parser.parse_args(argv)
    keep_freed_memory()  # faster long prompts and explain passes on a CPU (gemma3/cpu.py)
    kernels.load()  # compile the CPU decoding kernels now (about a second, once per machine), not mid-story
    try:
        holder = models.ModelHolder.from_default(args.model)
    except (ValueError, FileNotFoundError, ConnectionError) as e:
        parser.exit(2, f"error: could not load the model: {e}\n")
    demo = build(holder=holder, runs_dir=args.runs_dir, data_dir=args.data_dir)
    demo.queue(max_size=64, default_concurrency_limit=1).launch(
        server_name=args.host, server_port=args.port, share=args.share, **LAUNCH)


if __name__ == "__main__":
    main()
