"""What is special about Gemma 3 (explain.gemma3_views and Explore's "Gemma 3" sub-tab): each view shows what
the model computed on the prompt, its numbers agree with the recorded stages and with independent references
(the KV cache as gemma3.cache allocates it, transformers' GELU, the attention the model recorded), and the
page draws every topic in a real browser at desktop and phone width.
"""

import copy

import numpy as np
import pytest
import torch
from conftest import randomise_norms, screenshot, serve

import explain
import gemma3
from explain import gemma3_views as gv
from explain.figures import FULL, SLIDING
from gemma3.cache import KVCache
from gemma3.defaults import DEMO_MODEL
from webapp import explore as ex
from webapp import models
from webapp.inputs import UserError

torch.set_num_threads(1)

# 90-odd tokens: past the demo model's 64-token window (and the tiny model's 8), so the sliding mask bites
PROMPT = ("Once upon a time, there was a little girl named Lily. She liked to play in the sun with her dog, Max. "
          "One day, Lily and Max went to the park. They saw a big red ball under a tree. Lily wanted to play "
          "with it, but a boy said it was his. Lily was sad, so Max ran to find a stick instead.")
SHORT = "Once upon a time"
JSON_LIMIT = 2_000_000  # characters of fig.to_json() (what Gradio sends), as tests/test_explain.py allows


# ---- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tok():
    return gemma3.gpt2_tokenizer()


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return randomise_norms(gemma3.Gemma3(gemma3.Gemma3Config.from_preset("tiny")).eval())


@pytest.fixture(scope="module")
def rec(tiny, tok):
    return explain.record(tiny, tok, PROMPT)


@pytest.fixture(scope="module")
def demo():
    return gemma3.load_model(DEMO_MODEL, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def demo_rec(demo):
    return explain.record(*demo, PROMPT)


def traces(fig, kind):
    return [t for t in fig.data if t.type == kind]


# ---- multi-query attention -----------------------------------------------------------------------
def test_kv_bytes_per_token_of_the_270m_preset():
    cfg = gemma3.Gemma3Config.from_preset("270m")
    # 2 (K and V) x 18 layers x 1 K/V head x 256 x 2 bytes (bf16)
    assert gv.kv_bytes_per_token(cfg) == 18_432
    assert gv.kv_bytes_per_token(cfg, kv_heads=cfg.heads) == 73_728   # one K/V per query head: 4x more
    assert gv.kv_bytes_per_token(cfg, dtype_bytes=4) == 36_864


@pytest.mark.parametrize("preset", ["270m", "demo", "tiny"])
@pytest.mark.parametrize("tokens", [1, 7, 300, 512, 1024])
def test_kv_cache_bytes_match_what_the_cache_allocates(preset, tokens):
    cfg = gemma3.Gemma3Config.from_preset(preset)
    tokens = min(tokens, cfg.context)
    cache = KVCache(cfg, 1, tokens, dtype=torch.bfloat16)
    allocated = sum(c.k.nbytes + c.v.nbytes for c in cache.layers)
    assert gv.kv_cache_bytes(cfg, tokens) == allocated
    assert gv.kv_cache_bytes(cfg, tokens, ring=False) == gv.kv_bytes_per_token(cfg) * tokens
    per_head = KVCache(gemma3.Gemma3Config.from_preset(preset, kv_heads=cfg.heads), 1, tokens, dtype=torch.bfloat16)
    assert gv.kv_cache_bytes(cfg, tokens, kv_heads=cfg.heads) == sum(c.k.nbytes + c.v.nbytes for c in per_head.layers)


def test_mqa_view_shows_every_head_over_the_one_shared_kv_head(rec):
    layer = 5  # the tiny model's full layer
    fig, text = gv.mqa_view(rec, layer)
    maps = traces(fig, "heatmap")
    assert len(maps) == rec.config.heads == 4
    probs = rec.stage("attn_probs", layer)
    for h, m in enumerate(maps):
        z = np.asarray(m.z, dtype=np.float32)
        shown = ~np.isnan(z)
        assert shown.sum() == rec.seq_len * (rec.seq_len + 1) // 2, "every causal cell drawn, the future blank"
        np.testing.assert_allclose(z[shown], probs[h].numpy()[shown], atol=1e-6)
    assert {a.text for a in fig.layout.annotations} >= {f"head {h} → K/V 0" for h in range(4)}
    assert "4 query heads sharing 1 key/value head" in text and "**4x less**" in text
    # tiny model in fp32: 2 x 7 layers x 1 x 32 x 4 bytes
    assert f"= **{gv._bytes(2 * 7 * 32 * 4)}**" in text
    lines = traces(fig, "scatter")
    mine, per_head, no_ring = (np.asarray(t.y) for t in lines)
    assert (mine < no_ring)[rec.config.window:].all() and (mine <= no_ring).all(), "the rings save from the window on"
    np.testing.assert_allclose(per_head, 4 * mine), "one K/V per query head: 4x this model's cache"


# ---- q/k norm ------------------------------------------------------------------------------------
def test_logits_after_the_norm_are_what_the_model_attended_with(tiny, rec):
    for layer in (0, 5):
        for head in range(rec.config.heads):
            raw, normed = gv.qk_logits(rec, tiny, layer, head)
            probs = torch.nan_to_num(normed, nan=float("-inf")).softmax(-1)
            torch.testing.assert_close(probs, rec.stage("attn_probs", layer)[head], atol=1e-5, rtol=1e-4)
            assert not torch.allclose(torch.nan_to_num(raw), torch.nan_to_num(normed), atol=1e-2), \
                "without the norm the logits differ"


def test_the_norm_bounds_the_logits_however_large_q_and_k_grow(tiny, tok):
    big = copy.deepcopy(tiny)
    with torch.no_grad():
        for b in big.blocks:
            b.attn.wq.weight.mul_(30)
            b.attn.wk.weight.mul_(30)
    base = explain.record(tiny, tok, PROMPT)
    grown = explain.record(big, tok, PROMPT)
    for layer in (0, 5):
        raw0, normed0 = gv.qk_logits(base, tiny, layer, 1)
        raw1, normed1 = gv.qk_logits(grown, big, layer, 1)
        ok = ~raw0.isnan()
        torch.testing.assert_close(raw1[ok], 900 * raw0[ok], rtol=1e-3, atol=1e-2)  # q and k 30x: logits 900x
        torch.testing.assert_close(normed1[ok], normed0[ok], rtol=1e-3, atol=1e-3)  # the norm undoes it
        assert gv._spread(normed1) < gv._spread(raw1)
        assert normed1[ok].abs().max() <= gv.qk_bound(big, layer)
    fig, text = gv.qk_norm_view(grown, big, 0, 1)
    raw_max, normed_max, bound = traces(fig, "scatter")
    assert max(raw_max.y) > bound.y[0] >= max(normed_max.y), "the raw logits pass the bound, the normed never"
    assert f"**{gv.qk_bound(big, 0):.3g}**" in text


# ---- RoPE's two bases ----------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["tiny", "demo"])
def test_the_rope_picture_is_the_loaded_models_two_bases(which, request):
    """Each pair's angle per position is 1 / base^(2i / head_dim) of the loaded config (the model's own RoPE
    buffers), its turn 2 pi / angle tokens; the window and the context are marked with the model's numbers."""
    model = request.getfixturevalue("tiny") if which == "tiny" else request.getfixturevalue("demo")[0]
    record = request.getfixturevalue("rec") if which == "tiny" else request.getfixturevalue("demo_rec")
    cfg = model.config
    i = np.arange(cfg.head_dim // 2)
    local = 1 / cfg.rope_local_base ** (2 * i / cfg.head_dim)
    glob = 1 / cfg.rope_global_base ** (2 * i / cfg.head_dim) / cfg.rope_global_scale
    r = gv.rope_pairs(model)
    np.testing.assert_allclose(r["local"].numpy(), local, rtol=1e-6)
    np.testing.assert_allclose(r["global"].numpy(), glob, rtol=1e-6)
    fig, text = gv.rope_view(record, model)
    by = {t.meta: t for t in fig.data if t.meta}
    np.testing.assert_allclose(by["local"].y, 2 * np.pi / local, rtol=1e-5)
    np.testing.assert_allclose(by["global"].y, 2 * np.pi / glob, rtol=1e-5)
    assert by["local"].line.color == SLIDING and by["global"].line.color == FULL
    marks = " ".join(a.text for a in fig.layout.annotations)
    assert f"window {cfg.window}" in marks and f"context {cfg.context:,}" in marks
    turns_in_window = int((2 * np.pi / local <= cfg.window).sum())
    beyond_context = int((2 * np.pi / glob > cfg.context).sum())
    assert f"**{turns_in_window} of {len(i)}** pairs turn at least once inside the window of {cfg.window}" in text
    assert f"**{beyond_context} of {len(i)}** pairs turn less than once across the whole context of {cfg.context:,}" in text
    p = gv.window_pair(r, cfg.window)   # the pair drawn turning: cos(position x its angle) under each base
    x = np.asarray(by["turn_local"].x)
    np.testing.assert_allclose(by["turn_local"].y, np.cos(x * local[p]), atol=1e-5)
    np.testing.assert_allclose(by["turn_global"].y, np.cos(x * glob[p]), atol=1e-5)
    assert gv.USES["rope"] == (), "the picture is the model's, whatever the layer or head"


def test_log_axes_tick_only_at_1_2_5():
    ticks = gv.log_ticks([0.23, 0.9, 4.1])
    assert ticks["tickvals"] == [0.2, 0.5, 1, 2, 5] and ticks["ticktext"] == ["0.2", "0.5", "1", "2", "5"]
    wide = gv.log_ticks([6.28, 2.6e6])
    assert wide["ticktext"] == ["10", "100", "1k", "10k", "100k", "1M", "10M"][: len(wide["ticktext"])]
    assert len(gv.log_ticks([0.95, 1.1])["tickvals"]) == 2


# ---- sliding vs full -----------------------------------------------------------------------------
def test_sliding_attention_stops_at_the_window_and_full_does_not(rec):
    T, W = rec.seq_len, rec.config.window
    assert T > 3 * W
    fig, text = gv.sliding_view(rec, 0, 0)
    sliding, sliding_zero, full, full_zero = traces(fig, "heatmap")
    pos = np.arange(T)
    beyond = pos[None, :] <= pos[:, None] - W       # keys W or more positions back
    zs, zf = np.asarray(sliding.z, dtype=np.float32), np.asarray(full.z, dtype=np.float32)
    assert (zs[beyond] == 0).all(), "the sliding layer gives exactly nothing beyond its window"
    assert (zf[beyond] > 0).all(), "the full layer attends to every earlier key"
    np.testing.assert_allclose(zs[~np.isnan(zs)], rec.stage("attn_probs", 0)[0].numpy()[~np.isnan(zs)])
    marked = ~np.isnan(np.asarray(sliding_zero.z, dtype=np.float32))
    assert (marked == (zs == 0)).all() and marked[beyond].all(), "every exactly-0 cell is marked, all beyond the window"
    assert np.isnan(np.asarray(full_zero.z, dtype=np.float32)).all(), "the full layer has no exactly-0 cell"
    np.testing.assert_allclose(zf[~np.isnan(zf)], rec.stage("attn_probs", 5)[0].numpy()[~np.isnan(zf)])
    last_s, last_f = [t for t in traces(fig, "scatter") if t.name and t.name.startswith("layer")]
    assert (np.asarray(last_s.y)[W:] == 0).all() and (np.asarray(last_f.y)[W:] > 0).all()
    share = float(rec.stage("attn_probs", 5)[0, -1, : T - W].sum())
    assert "exactly **0**" in text and f"**{share:.1%}**" in text


def test_sliding_view_picks_the_nearest_layer_of_each_kind_and_says_when_the_prompt_is_short(tiny, tok):
    assert gv.layer_pair(tiny.config.layer_types, 6) == (6, 5)
    assert gv.layer_pair(tiny.config.layer_types, 5) == (4, 5)
    assert gv.layer_pair(tiny.config.layer_types, 0) == (0, 5)
    short = explain.record(tiny, tok, SHORT)
    assert short.seq_len <= tiny.config.window
    _, text = gv.sliding_view(short, 0, None)
    assert "Make the prompt longer than 8 tokens" in text
    with pytest.raises(ValueError, match="no full layer"):
        gv.layer_pair(["sliding"] * 3, 1)


# ---- GeGLU ---------------------------------------------------------------------------------------
def test_geglu_product_is_the_recorded_act_and_gelu_is_transformers(demo_rec):
    from transformers.activations import ACT2FN

    for layer in range(demo_rec.layers):
        g = gv.geglu_parts(demo_rec, layer)
        torch.testing.assert_close(g["product"], demo_rec.stage("act", layer).float(), rtol=0, atol=0)
        gelu = ACT2FN["gelu_pytorch_tanh"](demo_rec.stage("gate", layer).float())  # what Gemma 3's config names
        torch.testing.assert_close(g["gelu"], gelu)
        assert g["negative"] == pytest.approx(float((demo_rec.stage("gate", layer) < 0).float().mean()))
        assert 0 < g["near_zero"] < 1


def test_geglu_view_says_how_much_is_switched_off(demo_rec):
    fig, text = gv.geglu_view(demo_rec, 2)
    g = gv.geglu_parts(demo_rec, 2)
    assert f"**{g['negative']:.0%}**" in text and f"**{g['near_zero']:.0%}**" in text
    maps = traces(fig, "heatmap")
    assert [m.name for m in maps] == ["gelu", "up", "product"]
    units = np.asarray(maps[2].x)
    np.testing.assert_allclose(np.asarray(maps[2].z), demo_rec.stage("act", 2).float().numpy()[:, units], rtol=1e-6)
    hist = [t for t in traces(fig, "bar") if t.name.startswith("gate values")][0]
    assert sum(hist.y) == demo_rec.seq_len * demo_rec.config.ffn, "every gate value counted once"
    gate = demo_rec.stage("gate", 2).float()
    assert hist.x[0] - hist.width[0] / 2 == pytest.approx(float(gate.min()), abs=1e-6)
    assert hist.x[-1] + hist.width[-1] / 2 == pytest.approx(float(gate.max()), abs=1e-6)


# ---- pre- and post-norms -------------------------------------------------------------------------
def test_post_norms_even_out_what_every_layer_adds(demo, demo_rec):
    n = gv.norm_sizes(demo_rec)
    before, after = n["o"] + n["down"], n["post_attn_norm"] + n["post_ffn_norm"]
    assert max(after) / min(after) < max(before) / min(before), "after the post-norms the layers add alike"
    assert max(after) / min(after) < 2
    # the residual: the scaled embedding, then each layer's output
    r = [float(x.pow(2).mean(-1).sqrt().mean()) for x in demo_rec.residual]
    np.testing.assert_allclose(n["residual"], r, rtol=1e-5)
    fig, text = gv.norms_view(demo_rec, demo[0])
    ys = {t.meta: list(t.y) for t in fig.data if t.meta}
    for name in ("o", "post_attn_norm", "down", "post_ffn_norm", "attn_norm"):   # recomputed from the recording
        rms = [float(demo_rec.stage(name, i).float().pow(2).mean(-1).sqrt().mean()) for i in range(demo_rec.layers)]
        np.testing.assert_allclose(ys[name], rms, rtol=1e-5)
    np.testing.assert_allclose(ys["residual"], r, rtol=1e-5)
    for i, block in enumerate(demo[0].blocks):   # the learned scales: RMS of (1 + w), the model's own weights
        w = block.post_attn_norm.weight.detach().float()
        assert ys["w_post_attn_norm"][i] == pytest.approx(float((1 + w).pow(2).mean().sqrt()), rel=1e-5)
    assert f"a factor {max(after) / min(after):.3g}" in text and f"to {r[-1]:.3g} after layer" in text
    full = [s for s in fig.layout.shapes if s.fillcolor == FULL]
    assert len(full) == 2 * demo_rec.layer_types.count("full"), "each full layer's column is marked in FULL"


def test_a_model_without_post_norms_says_so(tok):
    torch.manual_seed(0)
    model = gemma3.Gemma3(gemma3.Gemma3Config.from_preset("tiny", post_norms=False)).eval()
    _, text = gv.norms_view(explain.record(model, tok, SHORT), model)
    assert "no post-norms" in text


# ---- embedding scale and tied head ---------------------------------------------------------------
@pytest.mark.parametrize("which", ["tiny", "demo"])
def test_embedding_scale_and_the_tied_head(which, request):
    model = request.getfixturevalue("tiny") if which == "tiny" else request.getfixturevalue("demo")[0]
    record = request.getfixturevalue("rec") if which == "tiny" else request.getfixturevalue("demo_rec")
    e = gv.embedding_parts(record, model)
    torch.testing.assert_close(e["scaled_rms"] / e["raw_rms"], torch.full_like(e["raw_rms"], model.config.hidden ** 0.5))
    torch.testing.assert_close(e["similarity"], record.logits[-1].float(), rtol=1e-5, atol=1e-5)  # logits = final . E
    # the logit lens' first row, as explain.record computed it, is the most similar embedding row
    assert torch.equal(e["lens_top"], record.lens_ids[0])
    repeats = int((record.lens_ids[0] == torch.tensor(record.tokens)).sum())
    fig, text = gv.embedding_view(record, model)
    assert f"**{repeats} of {record.seq_len}**" in text and "**tied**" in text
    assert repeats >= record.seq_len * 0.9, "a token's own embedding row is the most similar to itself"
    bars = {t.name: t for t in traces(fig, "bar")}
    own, other = bars["with its own row"], bars["with the best other row"]
    assert (np.asarray(own.y) > np.asarray(other.y)).sum() == repeats


def test_every_view_stays_light_for_the_browser(tok):
    """At the explainer's longest prompt (explain.MAX_TOKENS) and the 270m preset's feed-forward width, every
    figure sends at most JSON_LIMIT characters (the limit tests/test_explain.py holds the other figures to)."""
    torch.manual_seed(0)
    model = gemma3.Gemma3(gemma3.Gemma3Config.from_preset("tiny", ffn=2048)).eval()
    long = explain.record(model, tok, PROMPT * 5)
    assert long.seq_len == explain.MAX_TOKENS
    for topic in gv.TOPICS:
        fig, _ = gv.gemma3_view(topic, long, model, 5, 0)
        assert len(fig.to_json()) < JSON_LIMIT, topic


# ---- errors, the entry point and the Explorer --------------------------------------------------
def test_bad_choices_get_one_sentence(tiny, rec):
    with pytest.raises(ValueError, match=r"^layer must be a whole number from 0 to 6, not 7\.$"):
        gv.mqa_view(rec, 7)
    with pytest.raises(ValueError, match=r"^head must be a whole number from 0 to 3, not 4\.$"):
        gv.qk_norm_view(rec, tiny, 0, 4)
    with pytest.raises(ValueError, match="There is no view 'nope'"):
        gv.gemma3_view("nope", rec, tiny)


def test_every_topic_through_the_explorer(tmp_path):
    cache = models.ModelCache(*models.load_source("random:tiny"))
    explorer = ex.Explorer(cache)
    for topic in gv.TOPICS:
        fig, words, notice, layer, layers, heads = explorer.gemma3_view(PROMPT, topic, 3, "all", None)
        assert fig.layout.title.text and len(words) > 100 and notice is None
        assert (layer, layers, heads) == (3, 7, 4)
    assert explorer.recordings == 1, "every topic reuses the one recording of the prompt"
    assert explorer.gemma3_view(PROMPT, "mqa", 40, "2")[3] == 6, "a layer past this model's last reads as its last"
    with pytest.raises(UserError, match="The topic must be one of"):
        explorer.gemma3_view(PROMPT, "MQA!", 0, "0")
    with pytest.raises(UserError, match="Head must be 'all' or a number"):
        explorer.gemma3_view(PROMPT, "rope", 0, "first")


# ---- in a browser --------------------------------------------------------------------------------
CHROMIUM = "/usr/bin/chromium"
SIZES = {"1440": (1440, 1000), "390": (390, 844)}
TITLES = {"mqa": "4 query heads sharing 1 key/value head", "qk_norm": "The q/k norm keeps",
          "rope": "Two RoPE bases", "sliding": "Sliding layer", "geglu": "GeGLU",
          "norms": "post-norm", "embedding": "The embedding"}
TITLE_HAS = "t => (document.querySelector('#plot-gemma3 .gtitle') || {}).textContent?.includes(t)"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import app

    tmp = tmp_path_factory.mktemp("gemma3_views")
    cache = models.ModelCache(*models.load_source(str(DEMO_MODEL)))   # the trained demo model: views that teach
    demo = app.build(cache=cache, runs_dir=tmp / "runs", data_dir=tmp / "data")
    yield from serve(demo, tmp / "runs", **app.LAUNCH)


@pytest.fixture(scope="module")
def browser(chromium, server):
    """The session's Chromium (tests/conftest.py), on this module's app (the trained demo model)."""
    return chromium


@pytest.mark.parametrize("size", list(SIZES))
def test_every_topic_draws_on_the_page(browser, server, size):
    width, height = SIZES[size]
    page = browser.new_page(viewport={"width": width, "height": height})
    try:
        page.set_default_timeout(60_000)
        page.goto(server.local_url)
        page.wait_for_selector("#model-info")
        page.get_by_role("tab", name="Explore").click()
        page.get_by_role("tab", name="Gemma 3", exact=True).click()
        page.wait_for_selector("#plot-gemma3 .js-plotly-plot .gtitle")
        page.fill("#explore-prompt textarea", PROMPT)
        page.click("#look-inside")
        page.wait_for_function("() => document.querySelector('#gemma3-text')?.textContent.includes('75 tokens')")
        for key, label in gv.TOPICS.items():
            page.locator("#gemma3-topic").get_by_text(label, exact=True).click()
            title = page.locator("#plot-gemma3 .js-plotly-plot .gtitle").first
            page.wait_for_function(TITLE_HAS, arg=TITLES[key])
            assert TITLES[key] in title.text_content()
            words = page.inner_text("#gemma3-text")
            assert len(words) > 100 and "Error" not in words
            layer_shown = page.locator("#gemma3-layer").is_visible()
            assert layer_shown == ("layer" in gv.USES[key]), f"{key}: the layer control only where it is read"
            assert page.locator("#gemma3-head").is_visible() == ("head" in gv.USES[key])
            panel = page.locator("#plot-gemma3").bounding_box()
            svg = page.locator("#plot-gemma3 .js-plotly-plot .main-svg").first.bounding_box()
            assert panel["x"] >= 0 and panel["x"] + panel["width"] <= width + 1, f"{key}: the panel fits the page"
            assert svg["width"] >= panel["width"] * 0.9, f"{key}: the figure fills its panel, no sliver"
            if width > 760:   # narrower, the app may let a figure keep a readable width and scroll sideways
                assert svg["width"] <= panel["width"] + 1, f"{key}: the figure fits its panel"
            screenshot(page.locator("#gemma3-tab"), f"gemma3-{key}-{size}")
    finally:
        page.close()


def open_topics(browser, server):
    """A page at 1440 x 1000 on Explore's Gemma 3 sub-tab (its first topic drawing)."""
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    page.goto(server.local_url)
    page.wait_for_selector("#model-info")
    page.get_by_role("tab", name="Explore").click()
    page.get_by_role("tab", name="Gemma 3", exact=True).click()
    return page


def test_the_layer_slider_redraws(browser, server):
    page = open_topics(browser, server)
    try:
        page.wait_for_function(TITLE_HAS, arg="layer 0 (sliding)")
        page.fill("#gemma3-layer input[type=number]", "5")   # typed, still in the box: it redraws
        page.press("#gemma3-layer input[type=number]", "Enter")
        page.wait_for_function(TITLE_HAS, arg="layer 5 (full)", timeout=15_000)
    finally:
        page.close()


def test_a_topic_picked_while_a_figure_draws_is_drawn_after_it(browser, server, monkeypatch):
    """Picking a topic while the previous one still draws (the tab just opened, a slow Space) shows the picked
    topic once the draw ends: Gradio's default for a tab's select dropped the pick, leaving "Pre- and post-norms"
    checked above the multi-query figure."""
    import threading

    draw, drawing, picked = ex.Explorer.gemma3_view, threading.Event(), threading.Event()

    def held(self, *args):   # the first draw lasts until the visitor has picked another topic
        drawing.set()
        picked.wait(10)
        return draw(self, *args)

    monkeypatch.setattr(ex.Explorer, "gemma3_view", held)
    page = open_topics(browser, server)
    try:
        assert drawing.wait(30), "opening the tab draws its first topic"
        page.locator("#gemma3-topic").get_by_text(gv.TOPICS["norms"], exact=True).click(timeout=5_000)
        picked.set()
        page.wait_for_function(TITLE_HAS, arg=TITLES["norms"], timeout=15_000)
        page.wait_for_timeout(1000)   # nothing older lands over it
        assert TITLES["norms"] in page.locator("#plot-gemma3 .gtitle").first.text_content()
        assert page.inner_text("#gemma3-text").startswith("The residual stream")
    finally:
        picked.set()
        page.close()


def test_the_api_endpoint_answers_and_refuses_in_one_sentence(server):
    from gradio_client import Client

    client = Client(server.local_url, verbose=False)
    words, plot, layer, head = client.predict(PROMPT, "sliding", 9, "all", api_name="/explore_gemma3")
    assert "Your prompt has 75 tokens, more than the sliding window of 64" in words
    assert "Sliding layer 7 stops at its window of 64; full layer 5 reads everything" in plot["plot"], \
        "layer 9 of an 8-layer model reads as its last"
    assert layer["value"] == 7 and layer["maximum"] == 7 and head["value"] == "all"
    for args, message in (((PROMPT, "nope", 0, "0"), "The topic must be one of mqa, qk_norm"),
                          ((PROMPT, "rope", 0, "first"), "Head must be 'all' or a number from 0 to 3"),
                          (("", "mqa", 0, "0"), "Explore prompt is empty")):
        with pytest.raises(Exception, match=message):
            client.predict(*args, api_name="/explore_gemma3")
