"""The Train tab in a real browser, in its first seconds: Start begins at once, and a step-0 loss and the
model's first sample are on the page within 15 s on the demo preset; Stop leaves no trainer behind.

Uses the session's app (conftest.app_server: random weights of the demo preset, training into a temporary
folder) and Chromium. Screenshots go to artifacts/screenshots/ (train-first-seconds*.png).
"""

import os
import signal
import time
from pathlib import Path

import pytest

from conftest import CHROMIUM, open_page, poll

if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)", allow_module_level=True)
pytest.importorskip("playwright.sync_api")

from training import runs  # noqa: E402

SHOTS = Path(__file__).resolve().parent.parent / "artifacts" / "screenshots"


def plot(page) -> dict:
    """What the live loss plot shows: each named trace's x and y, and the axes' ranges and titles."""
    return page.evaluate("""() => {
        const p = document.querySelector('#train-loss .js-plotly-plot');
        if (!p || !p.data) return {};
        const out = {traces: {}, layout: {x: p.layout.xaxis2 && p.layout.xaxis2.range,
                                          xtitle: p.layout.xaxis2 && p.layout.xaxis2.title.text,
                                          ytype: p.layout.yaxis.type}};
        for (const t of p.data) if (t.name) out.traces[t.name] = {x: Array.from(t.x || []), y: Array.from(t.y || [])};
        return out;
    }""")


def step0_and_sample(page):
    shown = plot(page).get("traces", {}).get("validation")
    sample = page.inner_text("#train-sample")
    return shown and shown["x"][:1] == [0] and sample.startswith("step 0 · val loss") and "Once upon a time" in sample


def timeline(runs_dir, clicked: float) -> str:
    """When the run's trainer started and wrote each record, in seconds after Start (for a failure's message)."""
    import json

    lines = []
    offset = time.time() - time.monotonic()
    for info in runs.list_runs(runs_dir)[:1]:
        run = runs.get(info.name, runs_dir)
        lines.append(f"run {run.name} launched at {run.launch_info().get('started', 0) - offset - clicked:.1f} s")
        path = run.path / "metrics.jsonl"
        for line in path.read_text().splitlines() if path.exists() else []:
            r = json.loads(line)
            lines.append(f"{r['kind']} {r['step']} at {r['time'] - offset - clicked:.1f} s")
        lines.append(run.log_tail(10))
    return "\n".join(lines)


def test_start_shows_a_step_0_loss_and_a_sample_within_seconds(chromium, app_server):
    runs_dir = app_server.trainer.runs_dir
    SHOTS.mkdir(parents=True, exist_ok=True)
    page = open_page(chromium, app_server.local_url, 1440, 1000)
    try:
        page.get_by_role("tab", name="Train", exact=True).click()
        page.click("#train-preset label:has-text('demo')")
        poll(lambda: page.input_value("#train-steps input") == "1000", what="the demo preset's defaults")
        page.fill("#train-stories input", "300")   # little data to prepare: the test times the trainer
        page.fill("#train-steps input", "40")      # a short run: its intervals shrink with it
        page.fill("#train-batch input", "4")
        page.fill("#train-seq input", "64")
        page.click("#train-device label:has-text('cpu')")
        page.wait_for_timeout(300)
        before = {i.name for i in runs.list_runs(runs_dir)}   # the session's app may hold earlier modules' runs

        def this_run_shows_step_0():   # the new run's status, plot (its planned end) and sample, not an earlier run's
            new = {i.name for i in runs.list_runs(runs_dir)} - before
            return (new and new.pop() in page.inner_text("#train-status") and step0_and_sample(page)
                    and "of 40 planned" in (plot(page).get("layout", {}).get("xtitle") or ""))

        started = time.monotonic()
        page.click("#train-start")
        poll(lambda: "No training runs yet" not in page.inner_text("#train-status"), timeout=3,
             what="Start to say at once what it is doing")
        try:
            poll(this_run_shows_step_0, timeout=15 - (time.monotonic() - started),
                 what="a step-0 loss and a sample within 15 s of Start")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{timeline(runs_dir, started)}") from None
        shown = plot(page)
        assert shown["layout"]["ytype"] == "log", "the loss axis is logarithmic"
        assert "of 40 planned" in shown["layout"]["xtitle"], "the step axis says the planned end"
        assert "quick" in page.inner_text("#train-sample"), "step 0's quick evaluation says so"
        page.screenshot(path=str(SHOTS / "train-first-seconds.png"), full_page=True)
        page.set_viewport_size({"width": 390, "height": 844})
        page.wait_for_timeout(500)
        page.screenshot(path=str(SHOTS / "train-first-seconds-390.png"), full_page=True)
        page.set_viewport_size({"width": 1440, "height": 1000})
        page.click("#train-stop")
        poll(lambda: "stopped" in page.inner_text("#train-status"), timeout=30, what="the run to stop")
        assert runs.active(runs_dir) is None, "no trainer left behind"
    finally:
        page.close()
        for info in runs.list_runs(runs_dir):
            pid = runs.get(info.name, runs_dir).launch_info().get("pid")
            if info.alive and pid:
                os.killpg(pid, signal.SIGKILL)
