"""Gemma 3 TinyStories: write little stories with a from-scratch Gemma 3, look inside it, train it.

python app.py [--model DIR|FILE|hf:owner/name] [--host HOST] [--port PORT] [--share]

Layout and wiring only: each part of the page (the model bar, Generate, Explore, Train, About) is a
module of webapp.ui that builds its components and wires its own events; this file composes them and
makes the few connections between parts. Each visitor picks their own model (the model bar's session
state); loaded models are shared through one cache (webapp.models.ModelCache).
"""

import argparse
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from webapp.storage import use_persistent_storage  # noqa: E402

# A Space's persistent storage (/data, or $GEMMA3_PERSISTENT): runs, data and the Hugging Face cache default
# to it. Before gradio and huggingface_hub are imported: the Hub library reads HF_HOME once.
PERSISTENT = use_persistent_storage()

import gradio as gr  # noqa: E402

from gemma3.runtime import cpu, engine  # noqa: E402
from webapp import explore as ex, guard, models, storage, train as tr  # noqa: E402
from webapp.errors import friendly, guard_inputs, port_problem  # noqa: E402
from webapp.inputs import UserError  # noqa: E402
from webapp.learning import Learning  # noqa: E402
from webapp.ui import EXPLORE_EVENT, LEARN_EVENT, about, explore, generate, model_bar, page, tour, train  # noqa: E402

RUNS_DIR, DATA_DIR = storage.folders()   # runs/ and data/ in the checkout, or the user's data folder once installed
TITLE = "Gemma 3 TinyStories"
HEADER = "# Gemma 3 TinyStories\nA from-scratch Gemma 3: write stories, look inside the model, train your own."
LAUNCH = dict(theme=page.THEME, css=page.CSS, js=page.JS)  # Gradio 6: theme, css and js are arguments of launch()
MAX_FILE_SIZE = f"{tr.MAX_UPLOAD_MB}mb"   # an upload, refused while it streams in beyond this (and by train.py after)
DELETE_CACHE = (1800, 3600)   # every half hour, Gradio deletes uploads and downloads (GGUF) older than an hour
# At most 64 requests wait; an event without a slot of its own runs one at a time. api_open=False: a queued event is
# reached only through the queue, never directly past its limit (the status polls skip the queue: train.MONITOR_EVENT)
QUEUE = dict(max_size=64, default_concurrency_limit=1, api_open=False)


def load(source: str | None = None):
    """(model, tokenizer, description): --model, $GEMMA3_MODEL, the demo model, else random tiny weights."""
    model, tok, info = models.load_source(models.default_source(source))
    return model, tok, info.name


def build(model=None, tokenizer=None, description: str | None = None, *, cache: models.ModelCache | None = None,
          runs_dir=None, data_dir=None) -> gr.Blocks:
    """The whole app, with `cache`'s default model (or model/tokenizer, or else the default: see load()) as the
    model every visitor starts on.

    runs_dir / data_dir: where training writes (default $GEMMA3_RUNS_DIR / $GEMMA3_DATA_DIR, else runs/ and
    data/ in the repository, or in the persistent folder when there is one)."""
    if cache is None and model is None:
        cache = models.ModelCache.from_default()
    elif cache is None:
        source = description or "model given to build()"
        cache = models.ModelCache(model, tokenizer, models.model_info(model, tokenizer, source, description))
    trainer = tr.RunDesk(runs_dir or RUNS_DIR, data_dir or DATA_DIR)
    explorer = ex.Explorer(cache)
    learning = Learning(trainer.runs_dir, cache)   # snapshots load through the model cache
    with gr.Blocks(title=TITLE, delete_cache=DELETE_CACHE) as demo:
        tour.header(HEADER, cache.default)   # the title and "Show me how it works"
        bar = model_bar.build(cache, trainer.runs_dir)   # above every tab; its choice is per session
        with gr.Tabs() as tabs:
            generate_tab = generate.build(cache, bar.choice)
            explore_tab = explore.build(explorer, cache.default.info, bar.choice, learning)
            train_tab = train.build(trainer)
            about.build()
        connect(demo, bar, explore_tab, train_tab)
        link_story(generate_tab, explore_tab, tabs)
        link_training(bar, explore_tab, train_tab, tabs)
        guard_inputs(demo)  # a call with too few or refused inputs gets a sentence, not {"error": null}
    demo.cache, demo.trainer, demo.explorer = cache, trainer, explorer  # for tests and embedding
    return demo


def connect(demo: gr.Blocks, bar: model_bar.ModelBar, explore_tab: explore.Explore, train_tab: train.Train):
    """The connections between parts: a loaded model resets Explore's selectors; "Use this checkpoint"
    loads into this visitor's model bar; Train's slow timer refreshes the runs; every page load shows the
    default model (a new session starts on it) and this visitor's permissions."""
    bar.connect(explore_tab.selectors, explore_tab.follow)
    trainer = train_tab.trainer

    @friendly
    def use_checkpoint(run, profile: gr.OAuthProfile | None = None, request: gr.Request = None,
                       progress=gr.Progress()):
        info = bar.load(str(trainer.checkpoint(run)), progress, profile, request)
        gr.Info(f"Loaded {info.name} into the model bar.", duration=4)
        return bar.shown(info)

    train_tab.use_btn.click(use_checkpoint, [train_tab.run_dd], bar.outputs, api_name="train_use_checkpoint",
                            **model_bar.LOAD_EVENT)

    @friendly
    def slow_refresh():  # the runs table (another visitor's run may have started or ended)
        return trainer.table()

    train_tab.slow_timer.tick(slow_refresh, None, [train_tab.runs_df], api_visibility="private",
                              show_progress="hidden", **train.MONITOR_EVENT)

    @friendly
    def on_load(profile: gr.OAuthProfile | None = None, request: gr.Request = None):
        user = model_bar.username(profile, request)
        return [*bar.page_state(user), *train_tab.page_state(user)]

    demo.load(on_load, None, [*bar.outputs, bar.custom, *train_tab.page_outputs], api_visibility="private")


def link_story(generate_tab: generate.Generate, explore_tab: explore.Explore, tabs: gr.Tabs):
    """A click on a token of a finished story opens Explore on the text before it, on its Next token view at the
    story's sampling settings, with the token the story drew there marked, and looks inside."""
    sub_tabs, c = explore_tab.views["next"].parent, explore_tab.controls

    @friendly
    def open_in_explore(story: dict, source, evt: gr.SelectData):
        before, token, sampling = generate.clicked(story, evt.index, source)
        return gr.Tabs(selected="explore"), before, gr.Tabs(selected="next"), token, *sampling

    targets = [tabs, explore_tab.prompt, sub_tabs, c["story"], c["temperature"], c["top_k"], c["top_p"], c["penalty"]]
    clicked = generate_tab.story.select(open_in_explore, [generate_tab.pieces, generate_tab.choice], targets,
                                        api_visibility="private")
    clicked.success(*explore_tab.look_all, api_visibility="private", **EXPLORE_EVENT)


def link_training(bar: model_bar.ModelBar, explore_tab: explore.Explore, train_tab: train.Train, tabs: gr.Tabs):
    """Explore over training: a step of the "Over training" sub-tab loads that snapshot in this visitor's model
    bar; the Train tab's "Explore this run" opens that sub-tab on the run's latest snapshot, loaded."""
    over = explore_tab.over
    sub_tabs = over.tab.parent

    @friendly
    def look_at_step(run, step, profile: gr.OAuthProfile | None = None, request: gr.Request = None,
                     progress=gr.Progress()):
        info = bar.load(over.learning.snapshot(run, step), progress, profile, request)
        over.loaded(info)
        return bar.shown(info)

    over.look.click(look_at_step, [over.run, over.step], bar.outputs, api_name="explore_step",
                    **model_bar.LOAD_EVENT)

    @friendly
    def explore_run(name, profile: gr.OAuthProfile | None = None, request: gr.Request = None,
                    progress=gr.Progress()):
        run_update, step_update = over.choose(name, exact=True)
        if step_update.get("value") is None:
            raise UserError(tr.no_snapshots(name))
        info = bar.load(step_update["value"], progress, profile, request)
        over.loaded(info)
        return (*bar.shown(info), run_update, step_update, gr.Tabs(selected="explore"), gr.Tabs(selected="training"))

    opened = train_tab.explore_btn.click(explore_run, [train_tab.run_dd],
                                         [*bar.outputs, over.run, over.step, tabs, sub_tabs], api_name="train_explore",
                                         **model_bar.LOAD_EVENT)
    opened.success(*over.draw, api_visibility="private", **LEARN_EVENT)  # Explore's views redraw on the new model


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None,
                        help="model every visitor starts on: a checkpoint folder, a weights file or hf:owner/name "
                             "(default: $GEMMA3_MODEL, else the bundled demo model assets/demo-model, else random "
                             "tiny weights, said plainly)")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="address to listen on (default: $GRADIO_SERVER_NAME, else 127.0.0.1; 0.0.0.0 for every "
                             "interface)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)),
                        help="port to listen on (default: $GRADIO_SERVER_PORT, else 7860)")
    parser.add_argument("--share", action="store_true", help="also create a public gradio.live link")
    parser.add_argument("--home", help=f"the folder of runs/ and data/ (default: ${storage.HOME_ENV}, else "
                                       f"{storage.home()})")
    parser.add_argument("--runs-dir", help="where training runs are written (default: $GEMMA3_RUNS_DIR, else runs/ "
                                           "in the persistent folder or the home folder)")
    parser.add_argument("--data-dir", help="where prepared training data is written (default: $GEMMA3_DATA_DIR, "
                                           "else data/ in the persistent folder or the home folder)")
    args = parser.parse_args(argv)
    runs_dir, data_dir = storage.folders(args.home)
    if busy := port_problem(args.host, args.port):   # before a minute of loading, not after
        parser.exit(2, f"error: {busy}\n")
    guard.set_exposure(args.host, args.share)   # before build(): who may do the owner's actions depends on it
    print(guard.mode(), flush=True)
    cpu.keep_freed_memory()  # faster long prompts and explain passes on a CPU (gemma3/runtime/cpu.py)
    engine.available()  # build the CPU kernels now (about 15 s, once per machine), not mid-story
    try:
        cache = models.ModelCache.from_default(args.model)
    except (ValueError, FileNotFoundError, ConnectionError) as e:
        parser.exit(2, f"error: could not load the model: {e}\n")
    demo = build(cache=cache, runs_dir=args.runs_dir or runs_dir, data_dir=args.data_dir or data_dir)
    try:
        demo.queue(**QUEUE).launch(
            server_name=args.host, server_port=args.port, share=args.share, max_file_size=MAX_FILE_SIZE,
            auth=guard.password_login(), app_kwargs={"middleware": guard.middleware()}, **LAUNCH)
    except OSError as e:   # the port was taken while the model loaded
        parser.exit(2, f"error: {port_problem(args.host, args.port) or e}\n")


if __name__ == "__main__":
    main()
