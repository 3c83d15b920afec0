"""The Train tab: prepare a story corpus, train a model in the background, watch its loss, use a checkpoint.

The logic lives in webapp.train (RunDesk: data, settings, runs) and webapp.guard (who may train on a
Space). app.py connects "Use this checkpoint" to the model bar and the page load to `page_state`.
"""

from dataclasses import dataclass

import gradio as gr

from webapp import guard
from webapp import train as tr
from webapp.errors import friendly
from webapp.ui.model_bar import username

RUN_EVENT = dict(concurrency_id="train", concurrency_limit=1, preprocess=False)   # Start, Resume
# Stop and the status polls never wait behind work. Stop has a slot of its own with no limit (queued: Gradio 6's
# page shows no error of an event outside the queue, and Stop's refusals are sentences to read); the polls run
# outside the queue in the page (queue=False: a plain request that no queued job delays and a full queue cannot
# refuse) and in a slot of their own for a script (gradio_client always queues). The estimate and the shares
# (GGUF, Hub) have slots of their own too.
STOP_EVENT = dict(concurrency_id="stop", concurrency_limit=None, preprocess=False)
MONITOR_EVENT = dict(concurrency_id="monitor", concurrency_limit=None, queue=False, preprocess=False)
ESTIMATE_EVENT = dict(concurrency_id="estimate", concurrency_limit=1, preprocess=False)
SHARE_EVENT = dict(concurrency_id="share", concurrency_limit=1, preprocess=False)
# Start and Resume bring the monitor (the run box, its progress, status and curve) into view where it lies off the
# screen: on a phone it stands a screen or more below the buttons
TO_MONITOR = """() => {
  const m = document.getElementById('train-run');
  if (!m) return;
  const r = m.getBoundingClientRect();
  if (r.bottom < 0 || r.top > window.innerHeight / 2) {
    const still = window.matchMedia('(prefers-reduced-motion: reduce)').matches;
    m.scrollIntoView({block: 'start', behavior: still ? 'auto' : 'smooth'});
  }
}"""
SETTINGS = ("source_kind", "stories", "hub_id", "files", "preset", "max_steps", "batch_size", "grad_accum",
            "seq_len", "lr", "device", "gpus", "compile")   # the inputs of Start, in train_start's order
GUARDED = ("start_btn", "stop_btn", "resume_btn", "estimate_btn", "gguf_btn", "push_btn")   # guard.check_training's


@dataclass(eq=False)
class Train:
    trainer: tr.RunDesk
    c: dict                      # every component of the tab by name
    permission: gr.Markdown
    duplicate: gr.DuplicateButton | None   # only on a Space

    # what the other parts connect to (app.py)
    use_btn = property(lambda self: self.c["use_btn"])        # "Use this checkpoint in the model bar"
    explore_btn = property(lambda self: self.c["explore_btn"])  # "Explore this run": its snapshots in Explore
    run_dd = property(lambda self: self.c["run_dd"])          # the selected run
    runs_df = property(lambda self: self.c["runs_df"])        # the table of runs
    slow_timer = property(lambda self: self.c["slow_timer"])  # every 4 s: the table, and the shared model

    def runs_choices(self, value=None):
        names = self.trainer.names()
        return gr.update(choices=names, value=value if value in names else (names[0] if names else None))

    @property
    def page_outputs(self) -> list:
        """What `page_state` fills on every page load."""
        c = self.c
        return ([self.permission, *(c[k] for k in GUARDED), c["run_dd"], c["runs_df"]]
                + ([self.duplicate] if self.duplicate is not None else []))

    def page_state(self, user: str | None) -> list:
        """This visitor's permission to train (`user`: username()), and the live run (or the latest) in the run
        list."""
        allowed, why = guard.training_permission(user)
        live = self.trainer.pick(None) if self.trainer.runs_dir.is_dir() else None
        out = [why, *(gr.update(interactive=allowed) for _ in GUARDED), self.runs_choices(live.name if live else None),
               self.trainer.table()]
        if self.duplicate is not None:
            out.append(gr.update(visible=not allowed))
        return out


def build(trainer: tr.RunDesk) -> Train:
    """The tab, in the current Tabs, with its events wired (not "Use this checkpoint": see app.py)."""
    with gr.Tab("Train", id="train"):
        allowed, why = guard.training_permission(None)
        with gr.Row(equal_height=True):
            permission = gr.Markdown(why, elem_id="train-permission")
            if guard.on_space():
                gr.LoginButton(scale=0)
                duplicate = gr.DuplicateButton("Duplicate this Space", scale=0, visible=not allowed)
            else:
                duplicate = None
        with gr.Row():
            with gr.Column(scale=2):
                c = {**_data_settings(), **_run_settings(), **_buttons(allowed)}
            with gr.Column(scale=3):
                c.update(_monitor())
        c["timer"], c["slow_timer"] = gr.Timer(2.0), gr.Timer(4.0)
    train = Train(trainer, c, permission, duplicate)
    _wire_settings(c)
    started = _wire_runs(train)
    _wire_share(train)
    _wire_monitor(train, started)
    return train


def _data_settings() -> dict:
    source_kind = gr.Radio(list(tr.SOURCES), value="builtin", label="Training data")
    lo, hi, d = tr.BUILTIN_STORIES
    stories = gr.Number(d, precision=0, label=f"Built-in training stories to generate ({lo:,} to {hi:,})",
                        elem_id="train-stories")
    hub_id = gr.Textbox(label="Hugging Face dataset id (needs a network)", visible=False,
                        placeholder="roneneldan/TinyStories", max_lines=1)
    files = gr.File(label="Story files: .txt (blank line between stories), "
                    ".jsonl ({\"text\": …}), .parquet (a text column)", file_count="multiple",
                    file_types=[".txt", ".jsonl", ".parquet"], visible=False)
    preset = gr.Radio(list(tr.PRESETS), value="tiny", label="Model preset", elem_id="train-preset")
    gr.Markdown(tr.preset_times(), elem_id="train-preset-times")
    return dict(source_kind=source_kind, stories=stories, hub_id=hub_id, files=files, preset=preset)


def _run_settings() -> dict:
    d = tr.preset_defaults("tiny")
    with gr.Row():
        max_steps = gr.Number(d["max_steps"], precision=0, label="Max steps", elem_id="train-steps")
        batch_size = gr.Number(d["batch_size"], precision=0, label="Batch size", elem_id="train-batch")
        grad_accum = gr.Number(d["grad_accum"], precision=0, label="Grad accumulation")
    with gr.Row():
        seq_len = gr.Number(d["seq_len"], precision=0, label="Sequence length", elem_id="train-seq")
        lr = gr.Number(d["lr"], label="Learning rate")
    with gr.Row():
        device = gr.Radio(list(tr.DEVICES), value="auto", label="Device", elem_id="train-device",
                          info=tr.devices_here())
        gpus = gr.Number(1, precision=0, label="GPUs")
        compile_ = gr.Checkbox(False, label="torch.compile", elem_id="train-compile",   # its width: page.CSS
                               info="faster steps (1.1-1.3x on a CPU, 2x on a GPU) after a minute or two "
                                    "of compiling: for long runs")
    schedule = gr.Plot(tr.RunDesk.schedule("tiny", d["max_steps"], d["batch_size"], d["grad_accum"], d["seq_len"],
                                           d["lr"]),
                       label="Learning-rate schedule of these settings", elem_id="train-schedule")
    return dict(max_steps=max_steps, batch_size=batch_size, grad_accum=grad_accum, seq_len=seq_len, lr=lr,
                device=device, gpus=gpus, compile=compile_, schedule=schedule)


def _buttons(allowed: bool) -> dict:
    with gr.Row():
        start_btn = gr.Button("Start", variant="primary", interactive=allowed, elem_id="train-start")
        stop_btn = gr.Button("Stop", variant="stop", interactive=allowed, elem_id="train-stop")
        resume_btn = gr.Button("Resume", interactive=allowed, elem_id="train-resume")
        estimate_btn = gr.Button("Estimate time", interactive=allowed, elem_id="train-estimate-btn")
    estimate_md = gr.Markdown(elem_id="train-estimate")
    with gr.Row(equal_height=True):
        use_btn = gr.Button("Use this checkpoint in the model bar", elem_id="train-use")
        explore_btn = gr.Button("Explore this run", elem_id="train-explore")
    with gr.Accordion("Share this run: GGUF, the Hugging Face Hub", open=False):
        with gr.Row(equal_height=True):
            gguf_type = gr.Radio(["f16", "bf16", "q8_0", "f32"], value="q8_0", label="GGUF type", scale=2)
            gguf_btn = gr.Button("Download GGUF", interactive=allowed, elem_id="train-gguf", scale=1)
        gguf_file = gr.File(label="GGUF for llama.cpp / LM Studio", elem_id="train-gguf-file")
        with gr.Row(equal_height=True):
            repo = gr.Textbox(label="Hub repository (user/name; empty: yours, named after the run)", scale=3,
                              max_lines=1, elem_id="train-repo")
            private = gr.Checkbox(True, label="private", scale=0, min_width=90)
            push_btn = gr.Button("Push to Hub", interactive=allowed, elem_id="train-push", scale=1)
        push_plan = gr.Markdown(elem_id="train-push-plan")   # which repository, whose token: before the click
        push_md = gr.Markdown(elem_id="train-push-result")
    return dict(start_btn=start_btn, stop_btn=stop_btn, resume_btn=resume_btn, use_btn=use_btn,
                explore_btn=explore_btn, estimate_btn=estimate_btn, estimate_md=estimate_md, gguf_type=gguf_type,
                gguf_btn=gguf_btn, gguf_file=gguf_file, repo=repo, private=private, push_btn=push_btn,
                push_plan=push_plan, push_md=push_md)


def _monitor() -> dict:
    with gr.Row(equal_height=True):
        run_dd = gr.Dropdown(label="Run", choices=[], value=None, scale=4, allow_custom_value=False,
                             elem_id="train-run")
        runs_refresh = gr.Button("↻", scale=0, min_width=40)
    status_md = gr.Markdown(elem_id="train-status")
    loss_plot = gr.Plot(label="Loss and learning rate", show_label=False, elem_id="train-loss")
    log_x = gr.Checkbox(False, label="Log-scale steps (early learning spread out)", elem_id="train-logx")
    stats_md = gr.Markdown(elem_id="train-stats")
    with gr.Accordion("What the model wrote at each evaluation", open=True):
        sample_tb = gr.Markdown(elem_id="train-sample")
    runs_df = gr.Dataframe(headers=["run", "state", "step", "preset", "best val loss", "created"],
                           interactive=False, label="Runs", wrap=True, elem_id="train-runs")
    return dict(run_dd=run_dd, runs_refresh=runs_refresh, status_md=status_md, loss_plot=loss_plot, log_x=log_x,
                stats_md=stats_md, sample_tb=sample_tb, runs_df=runs_df)


def _wire_settings(c: dict):
    def show_source(kind):
        return (gr.update(visible=kind == "builtin"), gr.update(visible=kind == "hub"),
                gr.update(visible=kind == "files"))

    @friendly
    def fill_preset(name):
        d = tr.preset_defaults(name)
        return d["max_steps"], d["batch_size"], d["grad_accum"], d["seq_len"], d["lr"]

    c["source_kind"].change(show_source, c["source_kind"], [c["stories"], c["hub_id"], c["files"]],
                            api_visibility="private", queue=False)
    form = [c[k] for k in ("max_steps", "batch_size", "grad_accum", "seq_len", "lr")]
    c["preset"].input(fill_preset, c["preset"], form, api_visibility="private", queue=False)

    def draw_schedule(preset, *values):
        try:
            return tr.RunDesk.schedule(preset, *values)
        except ValueError:  # a setting being typed; Start will say what is wrong with it
            return gr.skip()
    gr.on([c["preset"].change, *(x.change for x in form)], draw_schedule, [c["preset"], *form], c["schedule"],
          api_visibility="private", show_progress="hidden")


def _wire_runs(t: Train):
    """Start, Stop, Resume and the estimate: the owner's alone (guard.check_training). Returns Start's event."""
    trainer, c = t.trainer, t.c

    @friendly
    def train_start(data_source, builtin_stories, hub_dataset, uploaded_files, preset_name, max_steps_,
                    batch_size_, grad_accum_, seq_len_, lr_, device_, gpus_, compile_on,
                    profile: gr.OAuthProfile | None = None, request: gr.Request = None,
                    progress=gr.Progress(track_tqdm=True)):
        """Start at once: no estimate first (Start cancels one under way; the run's own steps give its ETA)."""
        guard.check_training(username(profile, request))
        config = trainer.config(preset_name, max_steps_, batch_size_, grad_accum_, seq_len_, lr_, device_, gpus_,
                                compile_on)
        trainer.ensure_idle()
        yield gr.skip(), "Preparing the training data for a new run …", gr.skip()
        progress(0, desc="Preparing the training data …")
        run, data, meta = trainer.launch(config, data_source, builtin_stories, hub_dataset, uploaded_files)
        gr.Info(f"Started run {run.name}: {meta['train_tokens']:,} training tokens in {data.name}.", duration=4)
        yield t.runs_choices(run.name), f"**{run.name}**: starting …", trainer.table()

    @friendly
    def train_stop(run, profile: gr.OAuthProfile | None = None, request: gr.Request = None):
        guard.check_training(username(profile, request))
        st = trainer.stop(run)
        words = tr.state_words(st)
        gr.Info(f"Run {words}.", duration=4)
        return words, trainer.table()

    @friendly
    def train_resume(run, max_steps_, profile: gr.OAuthProfile | None = None, request: gr.Request = None):
        guard.check_training(username(profile, request))
        run, longer = trainer.resume(run, max_steps_)
        gr.Info(f"Resuming run {run.name}{longer}.", duration=8 if longer else 4)
        return t.runs_choices(run.name), f"**{run.name}**: resuming …", trainer.table()

    @friendly
    def train_estimate(preset_name, max_steps_, batch_size_, grad_accum_, seq_len_, lr_, device_, gpus_, compile_on,
                       profile: gr.OAuthProfile | None = None, request: gr.Request = None):
        guard.check_training(username(profile, request))   # it trains for real, if briefly
        config, _ = trainer.config(preset_name, max_steps_, batch_size_, grad_accum_, seq_len_, lr_, device_, gpus_,
                                   compile_on)
        yield from tr.estimate_words(trainer, config)

    estimating = c["estimate_btn"].click(train_estimate, [c[k] for k in SETTINGS[4:]], c["estimate_md"],
                                         api_name="train_estimate", **ESTIMATE_EVENT)
    run_dd, status_md, runs_df = c["run_dd"], c["status_md"], c["runs_df"]
    # the data's progress on the run box only: on every output it was drawn three times, once over the status line
    started = c["start_btn"].click(train_start, [c[k] for k in SETTINGS], [run_dd, status_md, runs_df],
                                   api_name="train_start", cancels=[estimating], show_progress_on=[run_dd],
                                   **RUN_EVENT)
    c["start_btn"].click(lambda: "", None, c["estimate_md"], queue=False, api_visibility="private")  # cancelled
    for button in (c["start_btn"], c["resume_btn"]):   # the monitor into view where it lies off the screen
        button.click(None, js=TO_MONITOR, queue=False, api_visibility="private")
    c["stop_btn"].click(train_stop, [run_dd], [status_md, runs_df], api_name="train_stop", **STOP_EVENT)
    c["resume_btn"].click(train_resume, [run_dd, c["max_steps"]], [run_dd, status_md, runs_df],
                          api_name="train_resume", show_progress_on=[run_dd], **RUN_EVENT)
    return started


def _wire_share(t: Train):
    """Download a run as GGUF, push it to the Hub, and say before the click what a push writes: the owner's."""
    trainer, c = t.trainer, t.c

    @friendly
    def train_gguf(run, dtype, profile: gr.OAuthProfile | None = None, request: gr.Request = None,
                   progress=gr.Progress()):
        guard.check_training(username(profile, request))
        progress(0, desc="Writing the GGUF file …")
        return str(tr.export_gguf(trainer, run, dtype))

    @friendly
    def train_push(run, repo, private, profile: gr.OAuthProfile | None = None, token: gr.OAuthToken | None = None,
                   request: gr.Request = None, progress=gr.Progress()):
        guard.check_training(username(profile, request))
        progress(0, desc="Pushing to the Hugging Face Hub …")
        url = tr.push_to_hub(trainer, run, repo, private, token)
        return f"Pushed: [{url}]({url})"

    c["gguf_btn"].click(train_gguf, [c["run_dd"], c["gguf_type"]], c["gguf_file"], api_name="train_gguf",
                        **SHARE_EVENT)
    c["push_btn"].click(train_push, [c["run_dd"], c["repo"], c["private"]], c["push_md"], api_name="train_push",
                        **SHARE_EVENT)

    @friendly
    def push_plan(run, repo, private, profile: gr.OAuthProfile | None = None, request: gr.Request = None):
        if not guard.training_permission(username(profile, request))[0]:
            return ""
        # on a Space the push writes with the signed-in user's own token; elsewhere with this machine's
        account = getattr(profile, "username", None) if guard.on_space() else None
        return tr.push_plan(trainer, run, repo, private, account)

    gr.on([c["run_dd"].change, c["repo"].change, c["private"].change], push_plan,
          [c["run_dd"], c["repo"], c["private"]], c["push_plan"], api_visibility="private", queue=False,
          preprocess=False)


def _wire_monitor(t: Train, started):
    """The live plot, status and sample of the selected run, every 2 s and at once when a Start fails (its
    "Preparing …" would stand until the next tick); the run list on demand."""
    trainer, c = t.trainer, t.c

    @friendly
    def train_metrics(run, log_x=False):
        m = trainer.metrics(run, bool(log_x))
        return m["figure"], m["status"], m["stats"], m["sample"]

    @friendly
    def refresh_runs(name):
        return t.runs_choices(name), trainer.table()

    monitor = [c["loss_plot"], c["status_md"], c["stats_md"], c["sample_tb"]]
    gr.on([c["timer"].tick, c["run_dd"].change, c["log_x"].change], train_metrics, [c["run_dd"], c["log_x"]],
          monitor, api_name="train_metrics", show_progress="hidden", trigger_mode="always_last", **MONITOR_EVENT)
    started.failure(train_metrics, [c["run_dd"], c["log_x"]], monitor, api_visibility="private",
                    show_progress="hidden", **MONITOR_EVENT)
    gr.on([c["runs_refresh"].click], refresh_runs, [c["run_dd"]], [c["run_dd"], c["runs_df"]],
          api_visibility="private", preprocess=False)
