"""The app in a real browser: Playwright driving Debian's Chromium (apt-get install chromium; never
`playwright install`). Screenshots of every tab go to artifacts/screenshots/ for a person to look at.

The app runs on random weights of the demo preset: slow enough (~6 s for 1000 tokens) that Stop lands
mid-story, and independent of whichever trained model is bundled. Training writes into a temporary folder.
"""

import os
import signal
import time
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")

import app  # noqa: E402
from conftest import poll, serve  # noqa: E402
from training import runs  # noqa: E402
from webapp import models  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "artifacts" / "screenshots"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
EXPLORE_VIEWS = [("Masks", "mask"), ("RoPE", "rope"), ("Attention", "attention"), ("Activations", "activations"),
                 ("Next token", "next"), ("Logit lens", "lens"), ("Parameters", "params")]


@pytest.fixture(scope="module")
def server(tmp_path_factory):

    tmp = tmp_path_factory.mktemp("browser")
    cache = models.ModelCache(*models.load_source("random:demo"))
    demo = app.build(cache=cache, runs_dir=tmp / "runs", data_dir=tmp / "data")
    yield from serve(demo, tmp / "runs", **app.LAUNCH)


@pytest.fixture(scope="module")
def page(server):
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(30_000)
            page.goto(server.local_url)
            page.wait_for_selector("#model-info")
            yield page
        finally:
            browser.close()


def shot(page, name):
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def story(page) -> str:
    return page.input_value("#story textarea")


def test_model_bar_says_what_is_loaded(page, server):
    info = page.inner_text("#model-info")
    assert "random weights (demo preset" in info and "8.3M parameters" in info and "cpu" in info
    assert "Untrained random weights" in info


def test_another_visitors_model_leaves_this_page_alone(page, server):
    other = page.context.browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        other.goto(server.local_url)
        other.wait_for_selector("#model-info")
        other.locator("#model-path input, #model-path textarea").first.fill("random:tiny")
        other.click("#load-model")
        poll(lambda: "tiny preset" in other.inner_text("#model-info"), what="the other visitor's model in their bar")
        time.sleep(5)   # longer than Train's slow timer, which once showed every page the model last loaded
        assert "demo preset" in page.inner_text("#model-info"), "this page keeps its own model"
        assert "random:tiny" in server.cache.sources()
    finally:
        other.close()


def test_generate_streams_and_stop_cancels(page, server):
    page.get_by_role("tab", name="Generate").click()
    page.fill("#max-new input[type=number]", "1000")
    page.press("#max-new input[type=number]", "Enter")
    page.click("#generate-btn")
    first = poll(lambda: story(page), what="the first piece of the story")
    grown = poll(lambda: len(story(page)) > len(first) and story(page), what="the story to grow")
    assert grown.startswith(first), "streamed text extends what was already shown"
    assert server.cache.streaming == 1
    page.click("#stop-btn")
    poll(lambda: "Stopped" in page.inner_text("#gen-info"), what="the stop notice")
    poll(lambda: server.cache.streaming == 0, timeout=5, what="the generator to be closed (its cache freed)")
    after_stop = story(page)
    time.sleep(1.5)
    assert story(page) == after_stop, "no more text arrives after Stop"
    assert "tokens/s" not in page.inner_text("#gen-info"), "a stopped generation never reaches its summary"
    shot(page, "generate")
    page.click("#generate-btn")  # the server is free again: a new story starts at once
    poll(lambda: story(page) and not story(page).startswith(after_stop[:20]), what="a second story")
    page.click("#stop-btn")
    poll(lambda: "Stopped" in page.inner_text("#gen-info"), what="the second stop notice")


def test_every_explore_view_shows_a_plot(page):
    page.get_by_role("tab", name="Explore").click()
    for label, key in EXPLORE_VIEWS:
        page.get_by_role("tab", name=label, exact=True).click()
        plot = page.locator(f"#plot-{key} .js-plotly-plot .main-svg").first
        plot.wait_for(state="visible")
        assert page.locator(f"#plot-{key} .js-plotly-plot .gtitle").first.text_content(), f"{label} has a title"
        shot(page, f"explore-{key}")
    # a new prompt redraws the prompt views from a new recording: the logit lens shows its tokens
    page.fill("#explore-prompt textarea", "The cat sat on the mat")
    page.click("#look-inside")
    page.get_by_role("tab", name="Logit lens", exact=True).click()
    poll(lambda: "␣mat" in page.locator("#plot-lens").text_content(),
         what="the new prompt's tokens in the logit lens")


def points(page, curve: str) -> int:
    """Data points the live loss plot draws for one curve (vega marks them with aria labels)."""
    labels = page.eval_on_selector_all("#train-loss svg path[aria-roledescription='point']",
                                       "els => els.map(e => e.getAttribute('aria-label') || '')")
    return sum(1 for a in labels if a.endswith(f"curve: {curve}") and "null" not in a)


def line_color(page, curve: str) -> str | None:
    """The stroke of the curve's line in the live plot (None: drawn invisibly)."""
    for stroke, label in page.eval_on_selector_all(
            "#train-loss svg path[aria-roledescription='line mark']",
            "els => els.map(e => [e.getAttribute('stroke'), e.getAttribute('aria-label') || ''])"):
        if label.endswith(f"curve: {curve}"):
            return stroke
    return None


def test_training_curve_grows_and_stops(page, server):
    page.get_by_role("tab", name="Train").click()
    page.fill("#train-stories input", "300")
    page.fill("#train-steps input", "100")
    page.fill("#train-batch input", "4")
    page.fill("#train-seq input", "32")
    page.click("#train-device label:has-text('cpu')")
    page.click("#train-start")
    try:
        poll(lambda: "running" in page.inner_text("#train-status"), timeout=60, what="the run to start")
        n = poll(lambda: points(page, "train"), timeout=60, what="the first points of the loss curve")
        poll(lambda: points(page, "train") > n, timeout=60, what="the loss curve to gain points")
        poll(lambda: points(page, "val") >= 2, timeout=60, what="validation points")
        poll(lambda: line_color(page, "val") == app.CURVE_COLORS["val"], what="the validation curve drawn in colour")
        assert line_color(page, "train") == app.CURVE_COLORS["train"]
        assert "tokens/s" in page.inner_text("#train-stats")
        assert page.input_value("#train-sample textarea").startswith("Once upon a time")
        shot(page, "train")
        page.click("#train-stop")
        poll(lambda: "stopped" in page.inner_text("#train-status"), timeout=60, what="the run to stop")
        name = runs.list_runs(server.trainer.runs_dir)[0].name
        assert runs.get(name, server.trainer.runs_dir).status()["state"] == "stopped"
        page.click("#train-use")
        poll(lambda: f"Model: run {name}: best" in page.inner_text("#model-info"),
             what="the checkpoint in the model bar")
        assert "Untrained random weights" not in page.inner_text("#model-info")
        shot(page, "train-stopped")
    finally:
        for info in runs.list_runs(server.trainer.runs_dir):
            pid = runs.get(info.name, server.trainer.runs_dir).launch_info().get("pid")
            if info.alive and pid:
                os.killpg(pid, signal.SIGKILL)


def test_about_tab(page):
    page.get_by_role("tab", name="About").click()
    page.get_by_text("Measured figures").wait_for(state="visible")
    assert page.get_by_role("link", name="Gemma 3 technical report").count() == 1
    shot(page, "about")
