"""Take the README's screenshots: every screen of the app at 1440 x 1000 and 390 x 844, into docs/screens/.

    python docs/screens/take.py            # all screens (about 3 minutes on 2 CPU cores)
    python docs/screens/take.py train tour # only these

Runs the app in this process on the bundled demo model (training goes to a temporary folder) and drives Debian's
Chromium with Playwright (apt-get install chromium; pip install playwright). Each screen is what a visitor sees
after the steps below, scrolled to the part it shows.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import app  # noqa: E402
from webapp import models  # noqa: E402

OUT = Path(__file__).resolve().parent
CHROMIUM = "/usr/bin/chromium"
SIZES = {"1440": (1440, 1000), "390": (390, 844)}
LONG = ("Once upon a time, in a small house near the woods, there lived a little girl named Lily. Every morning she "
        "went outside to look at the flowers, the trees and the birds. One sunny day, her mom gave her a big hug. "
        "Lily smiled and ran to the garden with her dog. They played with a red ball until the sun went down, and "
        "then they sat on the grass and looked at the stars. Lily was very happy and she said")


def tab(page, name):
    page.get_by_role("tab", name=name, exact=True).first.click()


def wait_plot(page, key):
    page.locator(f"#plot-{key} .js-plotly-plot .main-svg").first.wait_for(state="visible")
    time.sleep(1.0)   # the page script re-lays the figure out for the screen's width


def show(page, selector):
    """Scroll `selector` to the top of the screen (the page's own header stays out of the way)."""
    page.locator(selector).first.evaluate("e => e.scrollIntoView({block: 'start'})")
    time.sleep(0.4)


def generate(page, width):
    tab(page, "Generate")
    page.fill("#prompt textarea", "Once upon a time, a little dog")
    page.click("#generate-btn")
    page.wait_for_function("() => document.querySelector('#gen-info')?.innerText.includes('tokens/s')",
                           timeout=60_000)
    page.evaluate("window.scrollTo(0, 0)")
    time.sleep(0.5)


def next_token(page, width):
    """A story token clicked: Explore's next-token view at the story's settings, the drawn token marked."""
    generate(page, width)
    page.locator("#story .tok").nth(6).click()
    page.wait_for_function("() => document.querySelector('#plot-next .gtitle')?.textContent.includes('the story drew')",
                           timeout=30_000)
    time.sleep(1.5)
    show(page, "#plot-next")


def walkthrough(page, width):
    tab(page, "Explore")
    page.locator("#walk-diagram").first.wait_for(state="visible")
    time.sleep(2)
    show(page, "#walk-diagram")


def attention(page, width):
    tab(page, "Explore")
    tab(page, "Attention")
    page.locator("#attention-lines .al-links path").first.wait_for(state="attached")
    wait_plot(page, "attention")
    show(page, "#attention-words")
    page.locator('#attention-lines .al-t[data-side="q"]').nth(12).hover()   # only its lines, their weights beside
    time.sleep(0.5)


def attention_long(page, width):
    """A prompt past the 64-token window: labels thinned, the sliding window's edge in every small map."""
    tab(page, "Explore")
    page.fill("#explore-prompt textarea", LONG)
    page.click("#look-inside")
    tab(page, "Attention")
    time.sleep(4)
    wait_plot(page, "attention")
    show(page, "#plot-attention")


def view(tab_name, key):
    """One of Explore's views on the default prompt."""
    def take(page, width):
        tab(page, "Explore")
        tab(page, tab_name)
        wait_plot(page, key)
        show(page, f"#plot-{key}")
    return take


def about(page, width):
    """How the bundled model learned: its whole run on the log-scale loss axis."""
    tab(page, "About")
    page.get_by_text("How the bundled model learned").first.click()   # its fold opens
    page.locator("#about-demo-training .js-plotly-plot .main-svg").first.wait_for(state="visible")
    time.sleep(1)
    show(page, "#about-demo-training")


def gemma3(topic):
    def take(page, width):
        tab(page, "Explore")
        tab(page, "Gemma 3")
        page.locator("#gemma3-topic").get_by_label(topic).check()
        time.sleep(3)
        wait_plot(page, "gemma3")
        show(page, "#plot-gemma3")
    return take


def train(page, width):
    """The demo preset on 300 stories, a minute after Start: the step-0 loss (open marker, quick), the log-scale
    curve up to the steps done of those planned, the smoothed ETA and the samples."""
    tab(page, "Train")
    page.locator("#train-stories input").fill("300")
    page.get_by_label("demo").first.check()
    time.sleep(2)   # the preset fills in its settings first
    for field, value in (("steps", "300"), ("batch", "8"), ("seq", "64")):
        page.locator(f"#train-{field} input").fill(value)
    page.click("#train-start")
    page.wait_for_function("() => (document.querySelector('#train-sample')?.innerText || '').trim().length > 20",
                           timeout=60_000)
    time.sleep(45)
    show(page, "#train-loss")
    yield
    page.click("#train-stop")
    time.sleep(3)


def tour(page, width):
    page.click("#tour-start")
    for _ in range(2):
        page.click("#tour-next")
        time.sleep(1.5)
    wait_plot(page, "attention")
    time.sleep(2)


def bad_load(page, width):
    """A failed load is said once, in its toast, and the model picker stays usable."""
    if width == "390":   # on a phone the picker is folded under "Change model"
        page.get_by_text("Change model").first.click()
    page.locator("#model-path input, #model-path textarea").first.fill("no/such/folder")
    page.click("#load-model")
    page.locator(".toast-body").first.wait_for(state="visible")
    time.sleep(0.5)
    page.evaluate("window.scrollTo(0, 0)")


SCREENS = {
    "generate": generate, "next-token": next_token, "walkthrough": walkthrough, "attention": attention,
    "attention-long": attention_long, "logit-lens": view("Logit lens", "lens"), "rope-bases": gemma3("RoPE's two bases"),
    "norms": gemma3("Pre- and post-norms"), "train": train, "tour": tour, "error": bad_load,
    "masks": view("Masks", "mask"), "rope": view("RoPE", "rope"), "activations": view("Activations", "activations"),
    "parameters": view("Parameters", "params"), "about": about,
}


def main(names):
    from playwright.sync_api import sync_playwright

    unknown = set(names) - set(SCREENS)
    if unknown:
        sys.exit(f"unknown screens: {', '.join(sorted(unknown))}; known: {', '.join(SCREENS)}")
    tmp = Path(tempfile.mkdtemp(prefix="screens-"))
    demo = app.build(cache=models.ModelCache.from_default(None), runs_dir=tmp / "runs", data_dir=tmp / "data")
    demo.queue().launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=None, quiet=True, **app.LAUNCH)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
            for name in names or SCREENS:
                for width, (w, h) in SIZES.items():
                    page = browser.new_page(viewport={"width": w, "height": h})
                    page.set_default_timeout(60_000)
                    page.goto(demo.local_url)
                    page.wait_for_selector("#model-info")
                    steps = SCREENS[name](page, width)
                    if steps is not None:   # a generator: screenshot at its yield, then its clean-up
                        next(steps)
                    page.screenshot(path=str(OUT / f"{name}-{width}.png"))
                    for _ in steps or ():
                        pass
                    page.close()
                    print(f"docs/screens/{name}-{width}.png", flush=True)
            browser.close()
    finally:
        demo.close()


if __name__ == "__main__":
    main(sys.argv[1:])
