"""The guided first visit in a real browser ("Show me how it works", webapp/ui/tour.py): it walks through every
step, selecting each step's tab and outlining its figure; Back returns; Escape leaves midway at phone width with no
outline left and the page still working. Screenshots go to artifacts/screenshots/tour-*.png."""

import os
from pathlib import Path

import pytest

from conftest import CHROMIUM, open_page, poll

if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)", allow_module_level=True)
pytest.importorskip("playwright.sync_api")

from webapp.ui import tour  # noqa: E402

SHOTS = Path(__file__).resolve().parent.parent / "artifacts" / "screenshots"
N = len(tour.STEPS)
# what a step shows: the card, its outlined figure (visible, outlined, not hidden by the card) and the tabs selected
SHOWN = """([target, tabs]) => {
  const t = document.querySelector(target), card = document.querySelector('#tour-card');
  if (!t || !card || !t.classList.contains('tour-spot') || !t.getClientRects().length) return null;
  const r = t.getBoundingClientRect(), c = card.getBoundingClientRect();
  const W = document.documentElement.clientWidth, H = innerHeight;
  const seen = [Math.max(r.left, 0), Math.max(r.top, 0), Math.min(r.right, W), Math.min(r.bottom, H)];
  const dx = Math.min(seen[2], c.right) - Math.max(seen[0], c.left), dy = Math.min(seen[3], c.bottom) - Math.max(seen[1], c.top);
  const area = (seen[2] - seen[0]) * (seen[3] - seen[1]);
  return {outline: getComputedStyle(t).outlineStyle, inView: area > 0, covered: dx > 0 && dy > 0 && dx * dy >= area - 1,
          card: [c.left, c.top, c.right, c.bottom], W, H,
          tabs: tabs.map((id) => [...document.querySelectorAll(`button[role=tab][data-tab-id="${id}"]`)]
                                  .some((b) => b.getAttribute('aria-selected') === 'true' && b.getClientRects().length))};
}"""


def shown(page, k: int) -> dict:
    """Step k (0-based) as the page shows it, once its card and outline are there."""
    step = tour.STEPS[k]
    poll(lambda: page.locator("#tour-step").text_content() == f"Step {k + 1} of {N}", timeout=10,
         what=f"the card of step {k + 1}")
    state = poll(lambda: page.evaluate(SHOWN, [step.targets[0], list(step.tabs)]), timeout=15,
                 what=f"step {k + 1}'s figure {step.targets[0]} outlined")
    assert state["outline"] == "solid", f"step {k + 1}: {step.targets[0]} is outlined"
    assert all(state["tabs"]), f"step {k + 1}: the tabs {step.tabs} are selected"
    l, t, r, b = state["card"]
    assert 0 <= l and r <= state["W"] and 0 <= t and b <= state["H"], f"step {k + 1}: the card stays on screen"
    text = page.locator("#tour-text").text_content()
    assert "{" not in text and page.locator("#tour-title").text_content() == step.title
    return state


@pytest.fixture(scope="module")
def url(app_server):
    SHOTS.mkdir(parents=True, exist_ok=True)
    return app_server.local_url


def test_the_tour_walks_every_step_and_back(chromium, url):
    page = open_page(chromium, url, 1440, 900)
    try:
        page.click("#tour-start")
        for k in range(N):
            state = shown(page, k)
            poll(lambda: page.evaluate(SHOWN, [tour.STEPS[k].targets[0], []])["inView"], timeout=5,
                 what=f"step {k + 1}'s figure scrolled into view")
            assert not page.evaluate(SHOWN, [tour.STEPS[k].targets[0], []])["covered"], "the card leaves it seen"
            if k == 0:
                text = page.locator("#tour-text").text_content()
                assert "vocabulary of 50,257 entries" in text and "“Once upon a time" in text, text
                assert page.locator("#tour-back").is_disabled()
                page.wait_for_function("document.querySelector('#walk-diagram .wt-sel[data-stage=ids]')")
            if k == 2:   # Back once: the walk-through's embedding again, numbers of the model in the bar
                page.screenshot(path=str(SHOTS / "tour-attention.png"))
                page.click("#tour-back")
                shown(page, 1)
                assert "√128 ≈ 11.3" in page.locator("#tour-text").text_content()
                page.wait_for_function("document.querySelector('#walk-diagram .wt-sel[data-stage=embed]')")
                page.click("#tour-next")
                shown(page, 2)
            if k == 5:
                assert page.input_value("#prompt textarea") == page.input_value("#explore-prompt textarea"), \
                    "Generate starts from the tour's prompt"
            if k < N - 1:
                page.click("#tour-next")
        assert page.locator("#tour-next").text_content().startswith("Finish")
        page.click("#tour-next")
        poll(lambda: page.locator("#tour-card").count() == 0, timeout=5, what="the card to go")
        assert page.locator(".tour-spot").count() == 0
    finally:
        page.close()


def test_escape_leaves_midway_on_a_phone(chromium, url):
    page = open_page(chromium, url, 390, 844)
    try:
        start = page.locator("#tour-start")
        box = start.bounding_box()
        assert start.is_visible() and box["x"] >= 0 and box["x"] + box["width"] <= 390, "the button fits a phone"
        start.click()
        shown(page, 0)
        page.keyboard.press("ArrowRight")   # the card has the focus: the arrow keys step
        state = shown(page, 1)
        assert state["card"][2] - state["card"][0] > 300, "a bottom (or top) sheet across the phone"
        assert not state["covered"], "the sheet leaves the figure seen"
        page.screenshot(path=str(SHOTS / "tour-390-embedding.png"))
        page.keyboard.press("Escape")
        poll(lambda: page.locator("#tour-card").count() == 0, timeout=5, what="Escape to close the tour")
        assert page.locator(".tour-spot").count() == 0, "no outline is left behind"
        page.get_by_role("tab", name="Generate").click()   # the page still works
        page.locator("#generate-btn").wait_for(state="visible")
        page.keyboard.press("ArrowLeft")                   # and the tour's keys are gone with it
        assert page.locator("#tour-card").count() == 0
    finally:
        page.close()
