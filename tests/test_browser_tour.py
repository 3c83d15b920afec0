"""The guided first visit in a real browser ("Show me how it works", webapp/ui/tour.py): it walks through every
step, selecting each step's tab and outlining its figure (and the control it names, in view beside it); Back returns;
the card folds to one line and back; on a phone the card is a sheet docked at the bottom with each figure's top above
it, also after a late redraw moves the figure; Escape leaves midway at phone width with no outline left and the page
still working. Screenshots go to artifacts/screenshots/tour-*.png."""

import os

import pytest

from conftest import CHROMIUM, open_page, poll, screenshot

if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)", allow_module_level=True)
pytest.importorskip("playwright.sync_api")

from webapp.ui import tour  # noqa: E402

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


# the rectangles a reader looks at: the step's figure, the other elements it outlines, the card
RECTS = """(targets) => {
  const box = (e) => { if (!e || !e.getClientRects().length) return null; const r = e.getBoundingClientRect();
                       return [r.left, r.top, r.right, r.bottom]; };
  return {targets: targets.map((t) => box(document.querySelector(t))), card: box(document.querySelector('#tour-card')),
          W: document.documentElement.clientWidth, H: innerHeight};
}"""


def overlap(a, b) -> bool:
    return min(a[2], b[2]) - max(a[0], b[0]) > 1 and min(a[3], b[3]) - max(a[1], b[1]) > 1


def token_rows(page) -> list[str]:
    """The walk-through heatmap's row labels as Plotly draws them ("3: ␣time")."""
    texts = page.eval_on_selector_all("#walk-plot .yaxislayer-above text", "els => els.map(e => e.textContent)")
    return [t for t in texts if t.split(": ", 1)[0].isdigit()]


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
    return app_server.local_url


def test_the_tour_walks_every_step_and_back(chromium, url):
    page = open_page(chromium, url, 1440, 900)
    try:
        page.get_by_role("tab", name="Generate").click()
        page.fill("#prompt textarea", "My own dragon story")   # the visitor's own prompt, before the tour
        page.get_by_role("tab", name="Explore").click()
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
            if k == 1:   # "each row of this heatmap is one token of the prompt": the rows say which
                rows = poll(lambda: len(token_rows(page)) >= 10 and token_rows(page), timeout=15,
                            what="the embedding heatmap's rows named by their tokens")
                assert "0: Once" in rows, rows
            if k == 2:   # the slider the card names is on screen beside the maps, neither under the card
                text = page.locator("#tour-text").text_content()
                assert "tokens fit inside the window, so here both kinds look alike" in text, text
                step = tour.STEPS[2]
                rects = poll(lambda: (r := page.evaluate(RECTS, list(step.targets)))["targets"][1] and
                             r["targets"][1][1] >= 0 and r["targets"][0][3] <= r["H"] and r, timeout=5,
                             what="the Layer slider and the heads' maps both in view")
                for name, r in zip(step.targets, rects["targets"]):
                    assert not overlap(r, rects["card"]), f"the card covers {name}"
            if k == 2:   # Back once: the walk-through's embedding again, numbers of the model in the bar
                screenshot(page, "tour-attention")
                page.click("#tour-back")
                shown(page, 1)
                assert "√128 ≈ 11.3" in page.locator("#tour-text").text_content()
                page.wait_for_function("document.querySelector('#walk-diagram .wt-sel[data-stage=embed]')")
                page.click("#tour-next")
                shown(page, 2)
            if k == 3:   # the card folds to one line (a tall figure seen whole) and unfolds
                page.click("#tour-card .tour-fold")
                poll(lambda: page.locator("#tour-card").bounding_box()["height"] < 60, timeout=5,
                     what="the card folded to one line")
                assert not page.locator("#tour-text").is_visible()
                assert page.locator("#tour-card .tour-short").text_content() == tour.STEPS[3].title
                page.click("#tour-card .tour-short")
                page.locator("#tour-text").wait_for(state="visible", timeout=5000)
            if k == 5:
                assert page.input_value("#prompt textarea") == page.input_value("#explore-prompt textarea"), \
                    "Generate starts from the tour's prompt"
            if k < N - 1:
                page.click("#tour-next")
        assert page.locator("#tour-next").text_content().startswith("Finish")
        page.click("#tour-next")
        poll(lambda: page.locator("#tour-card").count() == 0, timeout=5, what="the card to go")
        assert page.locator(".tour-spot").count() == 0
        assert page.input_value("#prompt textarea") == "My own dragon story", "no story came of the tour's prompt: " \
            "the visitor's own comes back"
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
        assert len(poll(lambda: token_rows(page), timeout=15, what="the heatmap's token rows")) >= 8
        screenshot(page, "tour-390-embedding")
        # the figures the card talks about (the heatmap, the heads' maps, the bars) stand above the docked sheet:
        # their tops and titles are never under it
        for k in (1, 2, 3, 4):
            if k > 1:
                page.click("#tour-next")
                shown(page, k)
            target = tour.STEPS[k].targets[0]

            def above():
                r = page.evaluate(RECTS, [target])
                fig, card = r["targets"][0], r["card"]
                seen = card[1] - max(fig[1], 0)
                ok = fig[1] >= -1 and card[3] >= r["H"] - 12 and seen >= min(fig[3] - fig[1], 0.45 * r["H"])
                return ok and r
            poll(above, timeout=15, what=f"step {k + 1}: {target}'s top above the sheet docked at the bottom")
            if k == 1:   # a busy server's late redraw moves the figure down: the tour brings it back
                page.evaluate("""() => { const d = document.createElement('div');
                    d.id = 'late'; d.style.height = '400px'; document.querySelector('#walk-plot').before(d); }""")
                poll(above, timeout=5, what="the figure brought back above the sheet after a late layout change")
                page.evaluate("document.querySelector('#late').remove()")
            screenshot(page, f"tour-390-step{k + 1}")
        page.keyboard.press("Escape")
        poll(lambda: page.locator("#tour-card").count() == 0, timeout=5, what="Escape to close the tour")
        assert page.locator(".tour-spot").count() == 0, "no outline is left behind"
        page.get_by_role("tab", name="Generate").click()   # the page still works
        page.locator("#generate-btn").wait_for(state="visible")
        page.keyboard.press("ArrowLeft")                   # and the tour's keys are gone with it
        assert page.locator("#tour-card").count() == 0
    finally:
        page.close()
