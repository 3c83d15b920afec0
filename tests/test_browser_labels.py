"""Token labels at any prompt length, in a real browser (issue 23 item 2): on the default prompt and on a 100-token
prompt, Attention, Activations and the Logit lens show the prompt's tokens as Plotly tick labels, the lens keeps its
true-next-token row, and hovering a lens cell names its token. One page, both prompts."""

import os
import re

import pytest

from conftest import CHROMIUM, open_page, poll

if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)", allow_module_level=True)
pytest.importorskip("playwright.sync_api")

import gemma3  # noqa: E402
from explain.figures import LENS_TOKENS  # noqa: E402
from explain.hooks import show_token  # noqa: E402
from webapp.explore import PROMPT  # noqa: E402

LONG = ("Once upon a time, there was a little girl named Lily. She loved to play outside in the sun. One day, she saw "
        "a big red ball in the park. She ran to get it, but a dog took it first. Lily was sad, so her mom gave her a "
        "hug and said, \"Let's find another ball.\" They walked to the store and bought a blue ball. Lily smiled and "
        "played with her new ball all day. The dog came back and wanted to play too, so")


def labels(prompt: str) -> list[str]:
    """The token labels the figures use ("3: ␣time"), as the page shows them (the GPT-2 tokenizer adds no BOS)."""
    tok = gemma3.gpt2_tokenizer()
    return [f"{p}: {show_token(tok.decode([i]))}" for p, i in enumerate(tok.encode(prompt))]


def ticks(page, plot: str, axis: str) -> list[str]:
    return page.eval_on_selector_all(f"#plot-{plot} .{axis}axislayer-above text", "els => els.map(e => e.textContent)")


def token_ticks(page, plot: str) -> set[str]:
    return {t for t in ticks(page, plot, "x") if re.match(r"\d+: ", t)}   # not the layer or head axes


def open_view(page, label: str, plot: str, names: list[str], at_least: int):
    """Open a sub-tab and wait until its token axis shows at least `at_least` labels, all of them the prompt's."""
    page.get_by_role("tab", name=label, exact=True).click()
    poll(lambda: len(token_ticks(page, plot)) >= at_least and token_ticks(page, plot) <= set(names),
         what=f"{label}'s token labels")


def check_views(page, names: list[str]):
    """Attention and Activations label their token axes with the prompt's tokens (every one, or every k-th of a
    long prompt); the lens its window's tokens, the true-next-token row, and a hover that names the token."""
    T, last = len(names), names[-1]
    for label, plot in (("Attention", "attention"), ("Activations", "activations")):
        open_view(page, label, plot, names, min(T, 12 if T > 20 else T // 2))
    window = names[-LENS_TOKENS:]
    open_view(page, "Logit lens", "lens", window, len(window) // 2)
    assert "true next token" in ticks(page, "lens", "y"), "the true-next-token row stays"
    # the top row writes the prompt's next tokens: the last shown column's is the prompt's last token
    row = page.eval_on_selector_all("#plot-lens .textpoint text", "els => els.map(e => e.textContent)")
    assert last.split(": ", 1)[1][:7] in " ".join(row)
    hover_cell(page, names, len(window) - 2)


def hover_cell(page, names: list[str], column: int):
    """Hover the lens cell of `column` (within the shown window), mid-height: the hover names its token."""
    page.locator("#plot-lens").scroll_into_view_if_needed()
    box = page.locator("#plot-lens .nsewdrag").first.bounding_box()
    n = min(len(names), LENS_TOKENS)
    page.mouse.move(box["x"] + (column + 0.5) * box["width"] / n, box["y"] + box["height"] * 0.6)
    name = names[len(names) - n + column]
    poll(lambda: name in (page.locator("#plot-lens .hoverlayer").text_content() or ""), timeout=10, what=f"the hover naming {name}")


def test_token_labels_on_the_default_and_a_100_token_prompt(chromium, app_server):
    page = open_page(chromium, app_server.local_url, 1440, 1000)
    try:
        page.get_by_role("tab", name="Explore").click()
        short = labels(PROMPT)
        assert 15 <= len(short) <= 20
        check_views(page, short)
        long = labels(LONG)
        assert len(long) >= 100
        page.fill("#explore-prompt textarea", LONG)
        page.click("#look-inside")
        check_views(page, long)
        assert page.locator("#plot-lens .slider-container").count() == 1, "a slider moves the lens's window"
    finally:
        page.close()
