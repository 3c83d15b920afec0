"""Explore > Attention, word to word, in a real browser (Debian's Chromium through Playwright; never
`playwright install`): hovering a token leaves only its lines, a click on a head's small map shows that head in the
large views, and a sliding layer's map shows where its window stops. Screenshots go to artifacts/screenshots/."""

import os

import pytest

from conftest import CHROMIUM, open_page, poll, screenshot

if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)", allow_module_level=True)
pytest.importorskip("playwright.sync_api")

# about 80 tokens: past the demo preset's window of 64, so layer 0 (sliding) cuts the earliest keys
PROMPT = ("Once upon a time, in a small house near the woods, there lived a little girl named Lily. Every morning "
          "she went outside to look at the flowers, the trees and the birds. One sunny day, her mom gave her a big "
          "hug. Lily smiled and ran to the garden with her dog, and they played with a red ball until the sun set.")
SHOWN = "e => getComputedStyle(e).display !== 'none'"


def shown_lines(page, selector="#attention-lines .al-links path") -> int:
    return page.eval_on_selector_all(selector, f"ls => ls.filter({SHOWN}).length")


@pytest.fixture(scope="module")
def page(chromium, app_server):
    page = open_page(chromium, app_server.local_url, 1440, 1000)
    try:
        page.get_by_role("tab", name="Explore", exact=True).click()
        page.fill("#explore-prompt textarea", PROMPT)
        page.get_by_role("tab", name="Attention", exact=True).click()
        page.locator("#attention-lines .al-links path").first.wait_for(state="attached")
        yield page
    finally:
        page.close()


def test_hovering_a_token_leaves_only_its_lines_with_their_weights(page):
    every = int(page.get_attribute("#attention-lines .al-lines", "data-lines"))
    assert shown_lines(page) == every > 100, "before any hover every line is drawn"
    query = page.locator('#attention-lines .al-t[data-side="q"][data-i="10"]')
    query.hover()
    own = page.locator('#attention-lines .al-links path[data-q="10"]').count()
    assert 0 < own < every
    poll(lambda: shown_lines(page) == own, timeout=5, what="only the hovered query's lines")
    assert shown_lines(page, '#attention-lines .al-links path.al-on[data-q="10"]') == own
    keys = page.eval_on_selector_all('#attention-lines .al-links path[data-q="10"]',
                                     "ls => [...new Set(ls.map((l) => l.dataset.k))].sort((a, b) => a - b)")
    numbers = page.eval_on_selector_all('#attention-lines .al-w[data-side="k"]',
                                        "ws => ws.filter((w) => w.textContent).map((w) => w.dataset.i)")
    assert numbers == keys, "a weight beside each key query 10 has a line to, and no other"
    k = keys[0]
    drawn = page.eval_on_selector_all(f'#attention-lines .al-links path[data-q="10"][data-k="{k}"]',
                                      "ls => ls.map((l) => l.dataset.w)")
    said = page.text_content(f'#attention-lines .al-w[data-side="k"][data-i="{k}"]').split()
    assert [float(w) for w in said] == [float(w) for w in drawn], "the numbers are the lines' weights"
    screenshot(page, "explore-attention-lines-hover")
    key = page.locator('#attention-lines .al-t[data-side="k"][data-i="3"]')
    key.hover()
    attending = page.locator('#attention-lines .al-links path[data-k="3"]').count()
    poll(lambda: shown_lines(page) == attending, timeout=5, what="only the lines into the hovered key")
    page.mouse.move(5, 5)
    poll(lambda: shown_lines(page) == every, timeout=5, what="every line back when the pointer leaves")


def test_a_small_map_shows_its_head_large_and_a_sliding_window_its_edge(page):
    grid = page.locator("#attention-grid")
    assert "sliding, window 64" in grid.inner_text(), "layer 0 is a sliding layer"
    assert page.locator("#attention-grid .al-map .al-window").count() == 4, "each head's map marks the window's edge"
    assert "hatched cells are keys outside the window of 64" in grid.inner_text()
    page.locator('#attention-grid .al-map[data-head="2"]').click()
    poll(lambda: page.get_attribute("#attention-lines .al-lines", "data-head") == "2", what="the lines view on head 2")
    poll(lambda: "head 2" in page.locator("#plot-attention .gtitle").first.text_content(),
         what="the large map on head 2")
    assert page.locator("#attention-grid .al-map.al-sel").get_attribute("data-head") == "2"
    heads = page.locator("#attention-lines .al-links .al-h")
    assert heads.count() == 1 and heads.first.get_attribute("data-h") == "2", "only head 2's lines"
    screenshot(page.locator("#attention-words"), "explore-attention-words-1440")
    page.set_viewport_size({"width": 390, "height": 844})
    try:
        page.locator("#attention-lines").scroll_into_view_if_needed()
        box = page.locator("#attention-lines").bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 390 + 1, "the lines view fits a phone's width"
        assert page.evaluate("document.documentElement.scrollWidth") <= 390, "nothing overflows the page"
        screenshot(page.locator("#attention-words"), "explore-attention-words-390")
    finally:
        page.set_viewport_size({"width": 1440, "height": 1000})
