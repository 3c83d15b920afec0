"""The app on a phone, 390 x 844 (issue 23 item 4): the prompt and the story come first with the settings folded;
a story token opens Explore's Next token figure in view, not the top of the page; the figures fill the screen's
width, their titles wrap within it, and Plotly's toolbar covers no title (at desktop width either).

Screenshots go to artifacts/screenshots/phone-*.png for a person to look at.
"""

import os

import pytest

from conftest import CHROMIUM, open_page, poll, screenshot

if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)", allow_module_level=True)
pytest.importorskip("playwright.sync_api")

W, H = 390, 844
PAGE_PADDING = 8   # each side, at phone width (webapp.ui.page)


@pytest.fixture(scope="module")
def page(chromium, app_server):
    page = open_page(chromium, app_server.local_url, W, H)
    try:
        yield page
    finally:
        page.close()


def shot(page, name, full_page=False):
    screenshot(page, f"phone-{name}", full_page=full_page)


def overlap(a, b) -> bool:
    return bool(a and b) and a["x"] < b["x"] + b["width"] and b["x"] < a["x"] + a["width"] \
        and a["y"] < b["y"] + b["height"] and b["y"] < a["y"] + a["height"]


def test_the_prompt_and_the_story_come_first_with_the_settings_folded(page):
    page.get_by_role("tab", name="Generate", exact=True).click()
    settings = page.locator("#gen-settings")
    poll(lambda: not page.locator("#max-new").is_visible(), timeout=5, what="the settings folded on a phone")
    assert settings.get_by_text("Settings", exact=True).is_visible(), "their heading stays, to unfold them"
    settings.get_by_text("Settings", exact=True).click()   # unfolded, they work as at any width: a short story
    page.fill("#max-new input[type=number]", "16")
    page.press("#max-new input[type=number]", "Enter")
    settings.get_by_text("Settings", exact=True).click()
    poll(lambda: not page.locator("#max-new").is_visible(), timeout=5, what="the settings folded again")
    page.fill("#prompt textarea", "Once upon a time, a dog")
    page.click("#generate-btn")
    poll(lambda: "tokens/s" in page.inner_text("#gen-info"), what="the story to finish")
    assert page.evaluate("window.scrollY") == 0, "nothing scrolled the page"
    story = page.locator("#story").bounding_box()
    first_line = page.locator("#story .story-prompt").bounding_box()
    assert story["y"] < H and first_line["y"] + first_line["height"] < H, "the story starts on the first screen"
    assert page.locator("#prompt textarea").bounding_box()["y"] < story["y"], "the prompt comes before the story"
    assert settings.bounding_box()["y"] < story["y"] and settings.bounding_box()["height"] < 80, \
        "the settings sit folded above the story"
    assert page.evaluate("document.documentElement.scrollWidth") <= W, "nothing is wider than the screen"
    shot(page, "generate")


def test_a_story_token_opens_the_next_token_figure_in_view(page):
    token = page.locator("#story .tok").nth(2)
    token.scroll_into_view_if_needed()
    token.click()
    poll(lambda: page.get_by_role("tab", name="Next token", exact=True).get_attribute("aria-selected") == "true",
         what="Explore's Next token view to open")
    # the page shows the figure the click opened (not the top of the page), once it is drawn and after
    in_view = lambda: 0 <= page.locator("#plot-next").bounding_box()["y"] < H / 2  # noqa: E731
    poll(lambda: page.locator("#plot-next .gtitle").count() and "the story drew" in
         page.locator("#plot-next .gtitle").first.text_content() and in_view(), what="the Next token figure in view")
    page.wait_for_timeout(800)
    assert page.evaluate("window.scrollY") > 0 and in_view(), "the view stays on the figure"
    shot(page, "next-token-from-story")
    # the drawn token is marked without covering a bar's percentage (an arrow and its "sampled" sat on them)
    texts = page.eval_on_selector("#plot-next .js-plotly-plot", """gd => {
        const box = (e) => { const r = e.getBoundingClientRect();
                             return {x: r.x, y: r.y, width: r.width, height: r.height, text: e.textContent}; };
        const all = (sel) => [...gd.querySelectorAll(sel)].filter((e) => e.textContent.trim()).map(box);
        return {labels: all('text.bartext'), others: all('.annotation, .legendtext, .gtitle, .xtick text')};
    }""")
    assert len(texts["labels"]) >= 20, "each bar says its probability"
    covered = [(a["text"], b["text"]) for a in texts["labels"] for b in texts["others"] if overlap(a, b)]
    assert not covered, f"a bar's percentage is covered: {covered[:3]}"
    widths = page.eval_on_selector_all("#next-sampling .block", "bs => bs.map((b) => b.getBoundingClientRect().width)")
    assert len(widths) == 4 and min(widths) > 0.8 * 390, "the four sampling sliders one a line, labels unsqueezed"


def figure_boxes(page, sel) -> dict | None:
    """Boxes of a figure (gd), its title, its block's label and its toolbar (None where hidden), and its width;
    None while Gradio swaps the figure."""
    return page.evaluate("""sel => { const block = document.querySelector(sel);
        const gd = block && block.querySelector('.js-plotly-plot');
        if (!gd || !gd._fullLayout) return null;
        const box = (el) => { if (!el || !el.checkVisibility()) return null;
            const r = el.getBoundingClientRect(); return r.width && r.height ? {x: r.x, y: r.y, width: r.width,
            height: r.height} : null; };
        const label = block.querySelector(':scope > label');
        return {gd: box(gd), width: gd._fullLayout.width, title: box(gd.querySelector('.gtitle')),
                label: label && getComputedStyle(label).display !== 'none' ? box(label) : null,
                bar: gd.querySelector('.modebar-container') &&
                     getComputedStyle(gd.querySelector('.modebar-container')).display !== 'none'
                     ? box(gd.querySelector('.modebar')) : null};
    }""", sel)


def wrapped(f) -> bool:
    """The figure's title lies within the figure's width."""
    return f["title"]["x"] >= f["gd"]["x"] - 1 and f["title"]["x"] + f["title"]["width"] <= f["gd"]["x"] + f["width"] + 1


FIGURES = [("Next token", "#plot-next"), ("Attention", "#plot-attention"), ("Walk-through", "#walk-plot")]


def test_figures_fill_the_width_and_no_toolbar_covers_a_title(page):
    page.get_by_role("tab", name="Explore", exact=True).click()
    for label, sel in FIGURES:
        page.get_by_role("tab", name=label, exact=True).click()
        page.locator(f"{sel} .js-plotly-plot .main-svg").first.wait_for(state="visible")
        page.hover(f"{sel} .js-plotly-plot")   # where a mouse would show the toolbar
        # the title is wrapped for the width once the figure has taken it (fitText runs after Plotly's relayout)
        f = poll(lambda: (f := figure_boxes(page, sel)) and f["title"] and f["width"] >= W - 2 * PAGE_PADDING - 2
                 and wrapped(f) and f, timeout=10, what=f"{label} as wide as the screen, its title wrapped within it")
        assert f["gd"]["x"] >= 0 and f["gd"]["x"] + f["gd"]["width"] <= W + 1, f"{label} stays within the screen"
        title = f["title"]
        assert not overlap(f["bar"], title), f"the toolbar covers {label}'s title"
        assert not overlap(f["label"], title), f"{label}'s label covers its title"
        shot(page, f"explore-{sel.rsplit('-', 1)[-1]}")
    page.set_viewport_size({"width": 1440, "height": 1000})   # a desktop: the toolbar shows on hover, off the title
    try:
        page.get_by_role("tab", name="Next token", exact=True).click()
        page.hover("#plot-next .js-plotly-plot")
        f = poll(lambda: (f := figure_boxes(page, "#plot-next")) and f["bar"] and f["width"] > 1000 and f, timeout=10,
                 what="the toolbar on hover at 1440 px")
        assert not overlap(f["bar"], f["title"]), "the toolbar covers the title at 1440 px"
    finally:
        page.set_viewport_size({"width": W, "height": H})


def text_boxes(page, sel, what) -> list:
    """Boxes of a figure's texts of one kind (`what`: a CSS selector inside the figure), visible ones only."""
    return page.eval_on_selector(f"{sel} .js-plotly-plot", """(gd, what) => [...gd.querySelectorAll(what)]
        .filter((el) => el.checkVisibility() && el.textContent.trim())
        .map((el) => { const r = el.getBoundingClientRect(); return {x: r.x, y: r.y, width: r.width, height: r.height,
                                                                    text: el.textContent}; })
        .filter((r) => r.width && r.height)""", what)


PANELS = [("Walk-through", "#walk-plot"), ("RoPE", "#plot-rope"), ("Activations", "#plot-activations"),
          ("Logit lens", "#plot-lens")]


def test_panel_titles_and_lens_cells_do_not_overlap(page):
    """Side-by-side panels stand one above another on a phone: no two titles (the figure's, its panels') overlap
    or leave the figure; the logit lens shows few enough tokens that no two cells' texts overlap."""
    page.get_by_role("tab", name="Explore", exact=True).click()
    for label, sel in PANELS:
        page.get_by_role("tab", name=label, exact=True).click()
        page.locator(f"{sel} .js-plotly-plot .main-svg").first.wait_for(state="visible")
        fig = lambda: page.eval_on_selector(f"{sel} .js-plotly-plot", "gd => gd._phone === true")  # noqa: E731
        if label != "Walk-through":
            poll(fig, timeout=10, what=f"{label} in its phone layout")
        page.wait_for_timeout(300)
        f = poll(lambda: figure_boxes(page, sel), timeout=10, what=f"{label} drawn")
        titles = text_boxes(page, sel, ".gtitle, .annotation-text-g")
        for i, a in enumerate(titles):
            assert a["x"] >= f["gd"]["x"] - 1 and a["x"] + a["width"] <= f["gd"]["x"] + f["gd"]["width"] + 1, \
                f"{label}: {a['text']!r} leaves the figure"
            for b in titles[i + 1:]:
                assert not overlap(a, b), f"{label}: {a['text']!r} overlaps {b['text']!r}"
        if label == "Logit lens":
            cells = text_boxes(page, sel, ".heatmaplayer text")
            assert len(cells) > 20, "the lens writes its cells"
            for i, a in enumerate(cells):
                for b in cells[i + 1:]:
                    assert not overlap(a, b), f"lens cells {a['text']!r} and {b['text']!r} overlap"
        shot(page, f"explore-{sel.rsplit('-', 1)[-1]}-panels")
