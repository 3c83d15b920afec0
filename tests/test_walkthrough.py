"""The architecture walk-through: the diagram's boxes and shapes, the walk's order, the source lines read from
the model's code, the panel figures drawn from the recording; then the page in a real browser (Playwright
driving Debian's Chromium, as tests/test_browser.py): every box clicked, Previous / Next, a layer chip, and
screenshots at 1440 and 390 px in artifacts/screenshots/walkthrough-*.png."""

import inspect
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import explain
import gemma3
from explain import walkthrough as wt
from webapp import explore as ex
from gemma3.defaults import DEMO_MODEL
from conftest import screenshot

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "Once upon a time, there was a little girl named Lily. She loved to play"
RECORDED = set(explain.STAGES) | set(explain.MODEL_STAGES)


# ---- unit: from the config, the code and a record -------------------------------------------------------
@pytest.fixture(scope="module")
def tok():
    return gemma3.gpt2_tokenizer()


@pytest.fixture(scope="module")
def demo():
    return gemma3.load_model(DEMO_MODEL, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def tiny_rec(tiny, tok):
    return explain.record(tiny, tok, PROMPT)


@pytest.fixture(scope="module")
def demo_rec(demo):
    return explain.record(*demo, PROMPT)


def test_the_diagram_has_every_stage_in_forward_order_and_the_issue_boxes():
    assert wt.WALK_STAGES[:2] == ("ids", "embed") and wt.WALK_STAGES[-4:] == ("final_norm", "logits", "probs", "next")
    assert wt.WALK_STAGES[2:-4] == explain.STAGES
    assert set(wt.STEPS) == set(wt.WALK_STAGES) == set(wt.SOURCES)
    in_diagram = [s for _, _, rows in wt.SECTIONS for row in rows for s in row if s]
    assert in_diagram == list(wt.WALK_STAGES), "the diagram reads top to bottom in the order of the forward pass"


@pytest.mark.parametrize("which", ["tiny", "demo"])
def test_every_box_shows_the_shape_of_the_recorded_tensor(which, request):
    rec = request.getfixturevalue(f"{which}_rec")
    cfg, T = rec.config, rec.seq_len
    for stage in wt.WALK_STAGES:
        if stage in RECORDED:
            layer = None if stage in explain.MODEL_STAGES else cfg.layers - 1
            assert wt.shape(cfg, T, stage) == tuple(rec.stage(stage, layer).shape), stage
    assert wt.shape(cfg, T, "ids") == (len(rec.tokens),) == wt.shape(cfg, T, "next")
    assert wt.shape(cfg, T, "probs") == tuple(rec.logits.shape)
    html = wt.diagram_html(cfg, T, 0, "q_norm")
    for stage in wt.WALK_STAGES:
        box = re.search(rf'data-stage="{stage}"[^>]*>.*?<code class="wt-shape">(.*?)</code>', html)
        assert box and box.group(1) == wt.shape_text(wt.shape(cfg, T, stage)), stage
    assert html.count('data-stage="') == len(wt.WALK_STAGES)
    assert html.count('data-layer="') == cfg.layers
    assert len(re.findall(r'class="wt-box wt-sel" data-stage="q_norm"', html)) == 1


def test_the_diagram_draws_the_residual_stream_and_its_two_adds():
    """Like the well-known block pictures: in each half of the layer the residual stream runs beside the boxes,
    branches into the half at its pre-norm, passes the half by (the skip path) and takes its output back at a "+"."""
    import html.parser

    class Rows(html.parser.HTMLParser):
        def __init__(self):
            super().__init__()
            self.rows, self.section = [], None

        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            if tag == "section":
                self.section = a["data-section"]
            if "data-rail" in a:
                self.rows.append([self.section, a["data-rail"], []])
            if "data-stage" in a and self.rows and self.section in ("attention", "ffn"):
                self.rows[-1][2].append(a["data-stage"])

    cfg = gemma3.Gemma3Config.from_preset("tiny")
    parser = Rows()
    parser.feed(wt.diagram_html(cfg, 9, 0, "mid"))
    rails = {(sec, tuple(stages)): kind for sec, kind, stages in parser.rows}
    layer_rows = [(key, row) for key, _, rows in wt.SECTIONS if key in ("attention", "ffn") for row in rows]
    assert set(rails) == {(key, tuple(s for s in row if s)) for key, row in layer_rows}, "a rail beside every row"
    assert rails[("attention", ("input",))] == "start"
    assert rails[("attention", ("attn_norm",))] == rails[("ffn", ("ffn_norm",))] == "branch"
    assert rails[("attention", ("mid",))] == rails[("ffn", ("output",))] == "add", "the two + adds"
    skipped = [k for k, kind in rails.items() if kind == "line"]
    assert ("attention", ("attn_probs",)) in skipped and ("ffn", ("act",)) in skipped, "the skip paths"
    assert "data-rail" not in wt.diagram_html(cfg, 9, 0).split('data-section="into"')[1].split("</section>")[0]
    html_ = wt.diagram_html(cfg, 9, 0)
    assert html_.count('class="wt-node">+</span>') == 2 and "residual stream" in html_


def test_the_diagram_wears_the_sliding_and_full_colours_and_the_font_of_the_figures():
    from explain.figures import FONT, FULL, SLIDING
    assert f".wt-chip.wt-sliding, .wt-key i.wt-sliding {{ background: {SLIDING}; }}" in wt.DIAGRAM_CSS
    assert f".wt-chip.wt-full, .wt-key i.wt-full {{ background: {FULL}; }}" in wt.DIAGRAM_CSS
    assert f"font-family: {FONT};" in wt.DIAGRAM_CSS


def test_the_code_lines_carry_their_own_line_numbers():
    for stage in ("post_attn_norm", "attn_probs", "q_rope"):
        page = wt.source_html(stage)
        numbered = re.findall(r'data-line="(\d+)"><span class="wt-ln">(\d+)</span><code>(.*?)</code>', page)
        assert numbered, stage
        for _, lines in ((n, l) for n, _, l in wt.source_lines(stage)):
            for n, line in lines:
                assert (str(n), str(n), html_escape(line.strip())) in {(a, b, c.strip()) for a, b, c in numbered}
        file_lines = (ROOT / "gemma3" / "model.py").read_text().splitlines()
        for a, _, code in numbered:
            if wt.source_lines(stage)[0][1] == "gemma3.model":
                assert html_unescape(code).strip() in file_lines[int(a) - 1], "the number is the line's in the file"


def html_escape(s):
    import html
    return html.escape(s, quote=False)


def html_unescape(s):
    import html
    return html.unescape(s)


def test_the_ids_text_says_bos_only_when_the_tokenizer_put_one(tiny_rec):
    assert not wt.bos_first(tiny_rec), "GPT-2's tokenizer adds no BOS: position 0 is the prompt's own first piece"
    text = wt.guide(tiny_rec.config, "ids", 0, tiny_rec.seq_len, wt.bos_first(tiny_rec))
    assert "BOS token goes first" not in text and "adds no BOS token" in text
    view = wt.view(tiny_rec, "ids", 0, 0)
    assert "adds no BOS token" in view.guide
    import dataclasses
    with_bos = dataclasses.replace(tiny_rec, tokens=[50256] + tiny_rec.tokens, labels=["0: bos"] + tiny_rec.labels)
    assert wt.bos_first(with_bos) and "BOS token goes first" in wt.guide(with_bos.config, "ids", 0, 3, True)
    assert "BOS" not in wt.guide(tiny_rec.config, "ids", 0, 3), "unknown: no claim either way"


def test_every_panel_fits_a_screen_and_says_what_to_look_for(demo_rec):
    for stage in wt.WALK_STAGES:
        fig = wt.stage_figure(demo_rec, stage, 0, demo_rec.seq_len - 1)
        assert fig.layout.height <= 700, stage
        assert "look: " + html_escape(wt.LOOK[stage]) in fig.layout.title.text, stage


def test_the_layer_label_says_sliding_or_full_with_window_and_base(demo):
    cfg = demo[0].config
    assert cfg.layer_types[0] == "sliding" and cfg.layer_types[5] == "full"
    assert wt.layer_label(cfg, 0) == f"Layer 0 · sliding · window {cfg.window} · RoPE base 10,000"
    assert wt.layer_label(cfg, 5) == "Layer 5 · full · RoPE base 1,000,000"
    assert "Layer 5 · full · RoPE base 1,000,000: attention half" in wt.diagram_html(cfg, 7, 5)
    big = gemma3.Gemma3Config.from_preset("270m")
    html = wt.diagram_html(big, 17, 0)
    for shown in ("[17, 640]", "[17, 4, 256]", "[17, 1, 256]", "[4, 17, 17]", "[17, 1024]", "[17, 2048]",
                  "[17, 50257]", "embedding × √640"):
        assert shown in html, shown
    assert "[T, 640]" in wt.diagram_html(big, None, 0), "before a prompt the shapes read with T"


def test_every_stage_finds_its_lines_in_the_code_itself():
    files = {}
    for stage in wt.WALK_STAGES:
        places = wt.source_lines(stage)
        assert places, stage
        for name, module, lines in places:
            path = Path(inspect.getsourcefile(__import__(module, fromlist=["x"])))
            text = files.setdefault(path, path.read_text(encoding="utf-8").splitlines())
            assert lines, (stage, name)
            for n, line in lines:
                assert text[n - 1] == line, f"{stage}: line {n} of {path.name} is what is shown"
        shown = wt.source(stage)
        assert shown.startswith("# gemma3/"), stage
    assert "self.q_norm(q)" in wt.source("q_norm") and "rsqrt" in wt.source("q_norm")
    assert 'F.gelu(self.gate(x), approximate="tanh") * self.up(x)' in wt.source("act")
    assert "scaled_dot_product_attention" in wt.source("attn_probs")
    assert "sliding_mask(q_pos" in wt.source("attn_probs"), "a statement is shown whole"
    assert "exponential_" in wt.source("next") and "argmax" in wt.source("next"), "greedy and the draw"


def test_a_marker_that_left_the_code_is_an_error(monkeypatch):
    monkeypatch.setitem(wt.SOURCES, "q", ((gemma3.model.Attention.forward, ("q = self.no_such_thing(x)",)),))
    with pytest.raises(LookupError, match="no_such_thing"):
        wt.source_lines("q")


def test_the_walk_goes_through_every_layer_in_order():
    layers = 3
    order = wt.walk(layers)
    assert len(order) == 2 + layers * len(explain.STAGES) + 4
    stage, layer = "ids", 0
    seen = [(stage, None)]
    while (stage, layer) != wt.step(stage, layer, layers, +1):
        stage, layer = wt.step(stage, layer, layers, +1)
        seen.append((stage, layer if stage in wt.PER_LAYER else None))
    assert seen == order, "Next visits every stage once, in order"
    assert wt.step("output", 0, layers, +1) == ("input", 1), "after layer 0's output comes layer 1's input"
    assert wt.step("input", 1, layers, -1) == ("output", 0)
    assert wt.step("output", 2, layers, +1) == ("final_norm", 2)
    assert wt.step("final_norm", 1, layers, -1) == ("output", 2), "back from the end into the last layer"
    assert wt.step("embed", 2, layers, +1) == ("input", 0)
    assert wt.step("ids", 0, layers, -1) == ("ids", 0) and wt.step("next", 1, layers, +1) == ("next", 1)


def _heatmap(fig):
    return next(t for t in fig.data if t.type == "heatmap")


def test_the_panels_draw_the_recorded_tensors(tiny_rec, demo_rec):
    rec, token = tiny_rec, 4
    for stage in wt.WALK_STAGES:
        fig = wt.stage_figure(rec, stage, 5, token)
        assert fig.layout.title.text, stage
    # a [T, heads, head_dim] stage: the heatmap holds the recorded values of every head, dims evenly sampled
    q = rec.stage("q_norm", 5)
    fig = wt.stage_figure(rec, "q_norm", 5, token)
    z = np.asarray(_heatmap(fig).z)
    cols = wt._columns(q.shape[2], wt.MAX_COLUMNS // q.shape[1])
    assert z.shape == (rec.seq_len, q.shape[1] * len(cols))
    np.testing.assert_allclose(z, q[:, :, cols].reshape(rec.seq_len, -1).numpy(), rtol=1e-6)
    bars = [t for t in fig.data if t.type == "bar"]
    assert len(bars) == q.shape[1], "the RMS per head"
    np.testing.assert_allclose(bars[0].y, q[:, 0].pow(2).mean(-1).sqrt().numpy(), rtol=1e-5)
    line = next(t for t in fig.data if t.type == "scatter")
    np.testing.assert_allclose(line.y, q[token].reshape(-1).numpy(), rtol=1e-6)
    # wider than MAX_COLUMNS: sampled, said in the subplot title
    gate = demo_rec.stage("gate", 0)
    assert gate.shape[1] > wt.MAX_COLUMNS
    fig = wt.stage_figure(demo_rec, "gate", 0, token)
    z, cols = np.asarray(_heatmap(fig).z), wt._columns(gate.shape[1], wt.MAX_COLUMNS)
    assert z.shape[1] == len(cols) == wt.MAX_COLUMNS
    np.testing.assert_allclose(z, gate[:, cols].numpy(), rtol=1e-6)
    assert any(f"({wt.MAX_COLUMNS} of {gate.shape[1]} dims, evenly spaced)" in a.text for a in fig.layout.annotations)
    assert "evenly spaced" not in " ".join(a.text for a in wt.stage_figure(rec, "q", 0, 0).layout.annotations)
    # attention: the chosen head's probabilities, each head's own map
    fig = wt.stage_figure(rec, "attn_probs", 0, token)
    maps = [t for t in fig.data if t.type == "heatmap"]
    assert len(maps) == rec.config.heads
    for h, m in enumerate(maps):
        np.testing.assert_allclose(np.asarray(m.z), rec.stage("attn_probs", 0)[h].numpy(), rtol=1e-6)
    assert f"sees {min(token + 1, rec.config.window)} keys" in fig.layout.title.text


def test_the_output_panels_follow_the_model_logits(tiny_rec):
    rec, token = tiny_rec, 3
    fig = wt.stage_figure(rec, "logits", None, token)
    top = rec.logits[token].float().topk(wt.TOP)
    np.testing.assert_allclose(fig.data[0].x, top.values.numpy(), rtol=1e-6)
    fig = wt.stage_figure(rec, "probs", None, token)
    np.testing.assert_allclose(fig.data[0].x, rec.logits[token].float().softmax(-1).topk(wt.TOP).values.numpy(),
                               rtol=1e-5)
    assert abs(sum(rec.logits[token].float().softmax(-1).tolist()) - 1) < 1e-4
    fig = wt.stage_figure(rec, "next", None, token)
    np.testing.assert_allclose(fig.data[0].x, rec.logits.float().softmax(-1).max(-1).values.numpy(), rtol=1e-5)
    fig = wt.stage_figure(rec, "ids", None, token)
    assert list(fig.data[0].cells.values[2]) == rec.tokens


def test_the_gelu_fact_counts_the_recorded_gate(tiny_rec):
    gate = rec_gate = tiny_rec.stage("gate", 2)[1].float()
    near = (torch.nn.functional.gelu(rec_gate, approximate="tanh").abs() < 0.05).float().mean().item()
    title = wt.stage_figure(tiny_rec, "act", 2, 1).layout.title.text
    assert f"{near * 100:.0f}% of {gate.numel()} GELU(gate) values<br>within ±0.05 of 0" in title


def test_the_guide_teaches_with_the_models_numbers(demo):
    cfg = demo[0].config
    text = wt.guide(cfg, "embed", 0, 17)
    assert f"√{cfg.hidden} ≈ {cfg.hidden ** 0.5:.1f}" in text and "`[17, 128]`" in text
    assert "tied" in wt.guide(cfg, "logits", 0, 17)
    assert f"window of {cfg.window}" in wt.guide(cfg, "attn_probs", 0, 17)
    assert "every earlier key" in wt.guide(cfg, "attn_probs", 5, 17)
    assert "base 1,000,000" in wt.guide(cfg, "q_rope", 5, 17) and "base 10,000" in wt.guide(cfg, "q_rope", 0, 17)
    assert "input of layer 1" in wt.guide(cfg, "output", 0, 17)
    assert "last layer" in wt.guide(cfg, "output", cfg.layers - 1, 17)
    bare = gemma3.Gemma3Config.from_preset("tiny", post_norms=False)
    assert "no post-norms" in wt.guide(bare, "post_attn_norm", 0, 5)
    assert "d′ = d" in wt.guide(bare, "post_ffn_norm", 0, 5)
    for stage in wt.WALK_STAGES:
        body = wt.guide(cfg, stage, 1, 17)
        assert "{" not in body and "**Equation**" in body, stage


def test_the_guide_names_how_this_models_heads_share_keys():
    """Multi-query in the 270M design, grouped-query in the larger Gemma 3 shapes; head_dim named as a choice
    only where it is not hidden / heads."""
    mqa = gemma3.Gemma3Config.from_preset("270m")
    assert "multi-query" in wt.guide(mqa, "k", 0, 5) and "shared by all 4 query heads" in wt.guide(mqa, "v", 0, 5)
    assert "not hidden / heads (160)" in wt.guide(mqa, "q", 0, 5)
    gqa = gemma3.Gemma3Config.from_preset("tiny", heads=8, kv_heads=2, head_dim=8)
    assert "grouped-query" in wt.guide(gqa, "k", 0, 5) and "multi-query" not in wt.guide(gqa, "k", 0, 5)
    assert "each shared by 4 query heads" in wt.guide(gqa, "v", 0, 5)
    assert "equals hidden / heads" in wt.guide(gqa, "q", 0, 5)


def test_the_explorer_checks_the_walks_inputs():
    from webapp import explore as ex
    from webapp import models
    from webapp.inputs import UserError

    explorer = ex.Explorer(models.ModelCache(*models.load_source("random:tiny")))
    v = explorer.walk(PROMPT, "k_rope", 5, -1)
    assert (v.stage, v.layer, v.token) == ("k_rope", 5, len(v.tokens) - 1)
    for bad, match in ((("nope", 0, 0), "Stage must be one of"), (("q", 99, 0), "Layer must be between"),
                       (("q", 0, 999), "Token must be between"), (("q", "x", 0), "Layer must be a whole number")):
        with pytest.raises(UserError, match=match):
            explorer.walk(PROMPT, *bad)
    v = explorer.walk(PROMPT, "q", 99, 999, clamp=True)
    assert (v.layer, v.token) == (explorer.cache.get(None).model.config.layers - 1, len(v.tokens) - 1)
    assert explorer.recordings == 1, "walking reuses the recording"
    assert explorer.walk_step("output", 0, +1) == ("input", 1)


# ---- the page in a real browser ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(app_server):
    return app_server


@pytest.fixture(scope="module")
def browser(chromium):
    return chromium


def open_walk(browser, server, width, height):
    page = browser.new_page(viewport={"width": width, "height": height})
    page.set_default_timeout(30_000)
    page.goto(server.local_url)
    page.wait_for_selector("#model-info")
    page.get_by_role("tab", name="Explore").click()
    page.wait_for_selector("#walk-diagram [data-stage='embed']")
    T = len(gemma3.gpt2_tokenizer().encode(ex.PROMPT))  # the default prompt's tokens (GPT-2: no BOS)
    wait_for(page, lambda: f"[{T}, " in page.inner_text("#walk-diagram [data-stage='embed']"), "the prompt's shapes")
    return page


def wait_for(page, fn, what):
    from conftest import poll
    return poll(fn, timeout=30, what=what)


def heading(page) -> str:
    return page.inner_text("#walk-guide h3")


def plot_title(page) -> str:
    title = page.locator("#walk-plot .gtitle")
    return (title.first.text_content() or "") if title.count() else ""


def selected(page) -> str:
    return page.get_attribute("#walk-diagram .wt-sel", "data-stage")


def test_the_walk_through_is_explores_first_view_with_the_prompts_shapes(browser, server):
    page = open_walk(browser, server, 1440, 1000)
    try:
        assert page.get_by_role("tab", name="Walk-through").get_attribute("aria-selected") == "true"
        rec = server.explorer.record(page.input_value("#explore-prompt textarea"))
        cfg = rec.config
        for stage in wt.WALK_STAGES:
            text = page.inner_text(f"#walk-diagram [data-stage='{stage}']")
            if stage in RECORDED:
                layer = None if stage in explain.MODEL_STAGES else 0
                assert wt.shape_text(tuple(rec.stage(stage, layer).shape)) in text, stage
        assert page.locator("#walk-diagram [data-layer]").count() == cfg.layers
        assert f"window {cfg.window} · RoPE base 10,000" in page.inner_text("#walk-diagram [data-section=attention]")
        page.locator("#walk-plot .js-plotly-plot .main-svg").first.wait_for(state="visible")
    finally:
        page.close()


def test_clicking_every_box_shows_its_stage(browser, server):
    page = open_walk(browser, server, 1440, 1000)
    try:
        for stage in wt.WALK_STAGES:
            before = plot_title(page)
            page.click(f"#walk-diagram [data-stage='{stage}']")
            wait_for(page, lambda: selected(page) == stage, f"box {stage} to be selected")
            title = wt.STEPS[stage].title.format(**wt._facts(server.cache.default.model.config, 0, 0))
            wait_for(page, lambda: heading(page) == title, f"the heading of {stage}")
            wait_for(page, lambda: plot_title(page) not in ("", before), f"the figure of {stage}")
            code = page.inner_text("#walk-source")
            first = wt.source_lines(stage)[0][2][0][1].strip()
            assert first in code, f"{stage}: the source panel shows its lines"
            if stage in ("attn_probs", "logits", "probs"):
                screenshot(page.locator("#walk-plot"), f"walkthrough-{stage}-1440")
    finally:
        page.close()


def test_next_and_previous_walk_the_data_flow_across_layers(browser, server):
    page = open_walk(browser, server, 1440, 1000)
    layers = server.cache.default.model.config.layers
    try:
        page.click("#walk-diagram [data-stage='post_ffn_norm']")
        wait_for(page, lambda: selected(page) == "post_ffn_norm", "the post-ffn norm box")
        page.click("#walk-next")
        wait_for(page, lambda: selected(page) == "output", "Next: the layer's output")
        page.click("#walk-next")
        wait_for(page, lambda: selected(page) == "input" and "Layer 1 ·" in page.inner_text("#walk-guide"),
                 "Next after layer 0's output: layer 1's input")
        assert "Layer 1 ·" in page.inner_text("#walk-diagram [data-section=attention] h4")
        page.click("#walk-prev")
        wait_for(page, lambda: selected(page) == "output" and "Layer 0 ·" in page.inner_text("#walk-guide"),
                 "Previous: back to layer 0's output")
        page.click("#walk-token input")
        label = server.explorer.record(page.input_value("#explore-prompt textarea")).labels[3]
        page.get_by_role("option", name=label, exact=True).click()
        wait_for(page, lambda: label in plot_title(page), "the token picker: the panel follows the chosen token")
        page.click(f"#walk-diagram [data-layer='{layers - 1}']")
        wait_for(page, lambda: f"Layer {layers - 1} ·" in page.inner_text("#walk-guide"), "a layer chip")
        page.click("#walk-next")
        wait_for(page, lambda: selected(page) == "final_norm", "after the last layer: the final norm")
        page.click("#walk-diagram [data-stage='ids']")
        wait_for(page, lambda: selected(page) == "ids", "the first box")
        wait_for(page, lambda: page.locator("#walk-prev").is_disabled(), "Previous off at the start")
        page.click("#walk-next")
        wait_for(page, lambda: selected(page) == "embed", "Next goes on")
        assert page.locator("#walk-prev").is_enabled()
        page.click("#walk-diagram [data-stage='next']")
        wait_for(page, lambda: page.locator("#walk-next").is_disabled(), "Next off at the last stage")
    finally:
        page.close()


def test_quick_clicks_are_drawn_in_turn_and_the_last_one_stays(browser, server, monkeypatch):
    """While a stage still draws (a big model, a busy Space), a second box clicked is drawn after it, and Next then
    Previous come back where they started: Gradio's defaults redid the first click or stepped twice from it."""
    import threading

    walk, held = ex.Explorer.walk, threading.Event()
    held.set()

    def slow(self, *args, **kwargs):   # while `held` is clear, a draw waits for it (at most 10 s)
        held.wait(10)
        return walk(self, *args, **kwargs)

    monkeypatch.setattr(ex.Explorer, "walk", slow)
    page = open_walk(browser, server, 1440, 1000)
    try:
        page.click("#walk-diagram [data-stage='q']")
        wait_for(page, lambda: selected(page) == "q", "box q")
        held.clear()
        page.click("#walk-diagram [data-stage='v']")
        page.click("#walk-diagram [data-stage='o']", timeout=5_000)
        held.set()
        wait_for(page, lambda: selected(page) == "o", "the box clicked last")
        page.wait_for_timeout(800)
        assert selected(page) == "o" and "Wo" in page.inner_text("#walk-guide")
        held.clear()
        page.click("#walk-next")
        page.click("#walk-prev", timeout=5_000)
        held.set()
        page.wait_for_timeout(1500)
        wait_for(page, lambda: selected(page) == "o", "Next then Previous: back at o")
        held.clear()
        for _ in range(3):
            page.click("#walk-next", timeout=5_000)
        held.set()
        want = ("o", 0)
        for _ in range(3):
            want = wt.step(*want, server.cache.default.model.config.layers, +1)
        wait_for(page, lambda: selected(page) == want[0], "three presses of Next: three steps")
    finally:
        held.set()
        page.close()


def _boxes(page):
    return page.eval_on_selector_all("#walk-diagram [data-stage], #walk-diagram [data-layer]", """els => els.map(e => {
        const r = e.getBoundingClientRect();
        const clipped = e.scrollWidth > e.clientWidth + 1;
        return [e.dataset.stage || e.dataset.layer, r.left, r.top, r.right, r.bottom, clipped];
    })""")


@pytest.mark.parametrize("width,height", [(1440, 1000), (390, 844)])
def test_the_walk_through_reads_at_desktop_and_phone_width(browser, server, width, height):
    page = open_walk(browser, server, width, height)
    try:
        page.click("#walk-diagram [data-stage='attn_probs']")
        wait_for(page, lambda: selected(page) == "attn_probs", "the attention box")
        page.locator("#walk-plot .js-plotly-plot .main-svg").first.wait_for(state="visible")
        boxes = _boxes(page)
        for name, left, top, right, bottom, clipped in boxes:
            assert left >= 0 and right <= width, f"{name} lies within the {width} px page"
            assert not clipped, f"{name}'s text fits its box"
        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                overlap = min(a[3], b[3]) - max(a[1], b[1]) > 1 and min(a[4], b[4]) - max(a[2], b[2]) > 1
                assert not overlap, f"{a[0]} and {b[0]} overlap"
        plot = page.locator("#walk-plot .js-plotly-plot").first.bounding_box()
        panel = page.locator("#walk-plot").bounding_box()
        assert plot["width"] >= panel["width"] - 40, "the figure is as wide as its panel"
        assert page.evaluate("document.documentElement.scrollWidth") <= width, "nothing widens the page"
        screenshot(page, f"walkthrough-{width}", full_page=True)
        for stage in ("q_norm", "act", "next", "ids", "q_rope", "logits"):  # the other kinds of panel, long equations
            before = plot_title(page)
            page.click(f"#walk-diagram [data-stage='{stage}']")
            wait_for(page, lambda: plot_title(page) not in ("", before), f"the figure of {stage}")
            assert page.evaluate("document.documentElement.scrollWidth") <= width, f"{stage}: nothing widens the page"
            screenshot(page.locator("#walk-guide"), f"walkthrough-{stage}-guide-{width}")
            screenshot(page.locator("#walk-plot"), f"walkthrough-{stage}-{width}")
    finally:
        page.close()


def test_the_walk_is_an_api_endpoint_with_one_sentence_errors(server):
    from gradio_client import Client

    client = Client(server.local_url, verbose=False)
    diagram, stage, layer, token, guide, plot, code = client.predict(PROMPT, "k_norm", 5, 2, api_name="/explore_walk")
    assert stage == "k_norm" and 'class="wt-box wt-sel" data-stage="k_norm"' in diagram
    assert guide.startswith("### RMSNorm of each key head") and "Layer 5 · full" in guide
    assert "self.k_norm(k)" in code and plot
    with pytest.raises(Exception, match="Stage must be one of") as e:
        client.predict(PROMPT, "everything", 0, 0, api_name="/explore_walk")
    assert "Traceback" not in str(e.value)
