"""Issue 23 item 6 in a real browser (the session's app on random demo weights, Debian's Chromium): the
walk-through's residual stream is one unbroken line beside the layer's boxes, with its "+" level with each
residual-add box, at desktop and phone width; the code panel's numbers are the lines' own in gemma3/model.py."""

import pytest

from conftest import open_page, poll

pytest.importorskip("playwright.sync_api")

from explain import walkthrough as wt  # noqa: E402


def _rails(page, section):
    return page.eval_on_selector_all(f"#walk-diagram [data-section={section}] [data-rail]", """els => els.map(e => {
        const r = e.getBoundingClientRect(), line = getComputedStyle(e, '::before');
        const node = e.querySelector('.wt-node').getBoundingClientRect();
        return {kind: e.dataset.rail, top: r.top, bottom: r.bottom, left: r.left, right: r.right,
                line: line.backgroundColor, lineTop: parseFloat(line.top), width: parseFloat(line.width),
                node: (node.top + node.bottom) / 2, text: e.textContent};
    })""")


def _check_rails(page, width):
    for section, first, add in (("attention", "start", "mid"), ("ffn", "branch", "output")):
        rails = _rails(page, section)
        assert [r["kind"] for r in rails][0] == first and rails[-1]["kind"] == "add"
        for a, b in zip(rails, rails[1:]):
            assert abs(a["bottom"] - b["top"]) <= 1, f"{width} px, {section}: the stream is one unbroken line"
            assert abs(a["left"] - b["left"]) <= 1
        assert all(r["width"] >= 3 and r["line"] not in ("", "rgba(0, 0, 0, 0)") for r in rails), "visible"
        plus = rails[-1]
        assert plus["text"] == "+"
        box = page.locator(f"#walk-diagram [data-stage={add}]").bounding_box()
        assert abs(plus["node"] - (box["y"] + box["height"] / 2)) <= 2, f"the + is level with the {add} box"
        assert plus["right"] <= box["x"], "the stream runs beside the boxes, not over them"
    assert page.evaluate("document.documentElement.scrollWidth") <= width


def test_the_residual_stream_runs_unbroken_to_its_two_adds(chromium, app_server):
    page = open_page(chromium, app_server.local_url, 1440, 1000)
    try:
        page.get_by_role("tab", name="Explore").click()
        page.wait_for_selector("#walk-diagram [data-rail]")
        _check_rails(page, 1440)
        page.set_viewport_size({"width": 390, "height": 844})   # a phone: the halves stack, the stream still runs
        poll(lambda: page.evaluate("window.innerWidth") == 390, what="the phone width")
        _check_rails(page, 390)
        page.click("#walk-diagram [data-stage='attn_probs']")   # far below it, the words on that stage come into view
        page.wait_for_selector("#walk-diagram .wt-sel[data-stage=attn_probs]")
        def top():
            return page.locator("#walk-controls").bounding_box()["y"]
        try:
            # a few pixels above the top at most: the selected box's thicker border may land after the scroll
            poll(lambda: -10 <= top() < 844 / 2, what="the stage's controls in the screen's upper half")
        except AssertionError as e:
            raise AssertionError(f"{e}: their top is at {top():.1f} px of 844") from None
        page.set_viewport_size({"width": 1440, "height": 1000})
        page.click("#walk-diagram [data-stage='post_attn_norm']")
        poll(lambda: "post_attn_norm" in page.inner_text("#walk-source"), what="the code of the post-attention norm")
        shown = page.eval_on_selector_all("#walk-source .wt-src[data-line]", """els => els.map(e =>
            [e.querySelector('.wt-ln').textContent, e.querySelector('code').textContent,
             e.querySelector('.wt-ln').getBoundingClientRect().top, e.querySelector('code').getBoundingClientRect().top])""")
        expected = [(str(n), line) for _, _, lines in wt.source_lines("post_attn_norm") for n, line in lines]
        assert [n for n, *_ in shown] == [n for n, _ in expected], "each line shows its own number in the file"
        assert all(abs(a - b) <= 1 for *_, a, b in shown), "each number level with its line"
    finally:
        page.close()
