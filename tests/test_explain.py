"""explain: a recorded forward pass and the figures drawn from it agree with what the model computes."""

import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import randomise_norms

import explain
import gemma3
from explain.figures import _html
from gemma3 import describe
from gemma3.generation import next_token
from gemma3.model import RoPE

torch.set_num_threads(1)

JSON_LIMIT = 2_000_000  # characters of fig.to_json() (what Gradio sends) for any figure of a 256-token prompt
PROMPT = "Once upon a time, there was a little girl named Lily. She liked <b>tags</b> & the sun.\n"
LONG_PROMPT = "Once upon a time, there was a little girl named Lily. She loved to play in the park.\n" * 30


# ---- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tok():
    return gemma3.gpt2_tokenizer()


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return randomise_norms(gemma3.Gemma3(gemma3.Gemma3Config.from_preset("tiny")).eval())


@pytest.fixture(scope="module")
def tiny_rec(tiny, tok):
    return explain.record(tiny, tok, PROMPT)


@pytest.fixture(scope="module")
def big():
    """The 270m preset with random weights (132M parameters): built once."""
    torch.manual_seed(0)
    return gemma3.Gemma3(gemma3.Gemma3Config.from_preset("270m")).eval()


@pytest.fixture(scope="module")
def big_rec(big, tok):
    """A prompt over the limit: cut to the last 256 tokens."""
    return explain.record(big, tok, LONG_PROMPT)


def all_figures(model, rec):
    yield "mask", explain.mask_figure(model.config, rec.seq_len)
    yield "rope", explain.rope_figure(model.config)
    for layer in (0, model.config.layer_types.index("full")):
        yield f"attention {layer} head 0", explain.attention_figure(rec, layer, 0)
        yield f"attention {layer} all heads", explain.attention_figure(rec, layer)
    yield "activation", explain.activation_figure(rec)
    yield "next token", explain.next_token_figure(rec, 0.7, 40)
    yield "logit lens", explain.logit_lens_figure(rec)
    yield "parameters", explain.parameter_figure(model)


def assert_clean(model):
    """No hook left on any module, and attention back on its fast path."""
    for name, module in model.named_modules():
        assert not module._forward_hooks and not module._forward_pre_hooks, name
    for block in model.blocks:
        assert block.attn.attend is gemma3.model.attend


def assert_titled(fig):
    assert fig.layout.title.text
    layout = fig.to_plotly_json()["layout"]
    for trace in fig.data:
        for ax in (trace.xaxis or "x", trace.yaxis or "y"):
            spec = layout.get(ax[0] + "axis" + ax[1:], {})
            if spec.get("showticklabels") is False and spec.get("matches"):
                continue  # inner panel of a shared grid: the matching outer axis carries the title
            assert spec.get("title", {}).get("text"), f"{trace.name}: {ax} has no title"


def trace(fig, **match):
    return next(t for t in fig.data if all(getattr(t, k) == v for k, v in match.items()))


# ---- recording -----------------------------------------------------------------------------------
def test_record_holds_the_pass(tiny, tok, tiny_rec):
    rec, cfg = tiny_rec, tiny.config
    ids = tok.encode(PROMPT)
    T, L = len(ids), cfg.layers
    assert rec.tokens == ids and rec.notice is None and rec.prompt_tokens == T > cfg.window
    assert rec.residual.shape == (L + 1, T, cfg.hidden)
    assert rec.attn_added.shape == rec.ffn_added.shape == (L, T, cfg.hidden)
    assert len(rec.attn_probs) == L and rec.attn_probs[0].shape == (cfg.heads, T, T)
    assert rec.logits.shape == (T, cfg.vocab_size) and rec.layer_types == cfg.layer_types
    # the residual stream is the sum of what the blocks add
    for i in range(L):
        torch.testing.assert_close(rec.residual[i + 1], rec.residual[i] + rec.attn_added[i] + rec.ffn_added[i])
    # the input of block 0 is the scaled embedding
    torch.testing.assert_close(rec.residual[0], tiny.embed.weight[ids] * cfg.hidden ** 0.5)
    # labels: unique, position first, spaces visible
    assert len(set(rec.labels)) == T and rec.labels[:2] == ["0: Once", "1: ␣upon"]
    assert all(label.startswith(f"{p}: ") for p, label in enumerate(rec.labels))


def test_recording_changes_nothing(tiny, tok, tiny_rec):
    """Explicit attention gives the block outputs of the normal SDPA path; the model is unchanged after."""
    ids = torch.tensor([tiny_rec.tokens])
    outputs = []
    handles = [b.register_forward_hook(lambda m, a, out: outputs.append(out[0])) for b in tiny.blocks]
    try:
        with torch.no_grad():
            before = tiny(ids)[0]
    finally:
        for h in handles:
            h.remove()
    torch.testing.assert_close(tiny_rec.residual[1:], torch.stack(outputs), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(tiny_rec.logits, before, atol=1e-4, rtol=1e-4)
    explain.record(tiny, tok, PROMPT)
    with torch.no_grad():
        after = tiny(ids)[0]
    assert torch.equal(before, after)
    assert_clean(tiny)


def test_no_hooks_left_after_an_exception(tiny, tok):
    ffn = tiny.blocks[3].ffn

    def boom(x):
        raise RuntimeError("boom in block 3")

    ffn.forward = boom
    try:
        with pytest.raises(RuntimeError, match="boom in block 3"):
            explain.record(tiny, tok, PROMPT)
    finally:
        del ffn.forward
    assert_clean(tiny)
    explain.record(tiny, tok, PROMPT)  # and it records fine afterwards
    assert_clean(tiny)


def test_long_prompt_keeps_its_end_and_empty_prompt_is_refused(tiny, tok):
    ids = tok.encode(PROMPT)
    rec = explain.record(tiny, tok, PROMPT, max_tokens=10)
    assert rec.tokens == ids[-10:] and rec.prompt_tokens == len(ids)
    assert str(len(ids)) in rec.notice and "last 10" in rec.notice
    assert rec.labels[0].startswith("0: ")

    class WithBos:  # a tokenizer that puts BOS first (as Gemma's does): BOS stays when the prompt is cut
        bos_id = 50256
        encode, decode = tok.encode, tok.decode

    rec = explain.record(tiny, WithBos(), PROMPT, max_tokens=10)
    assert rec.tokens == [50256] + ids[-9:]
    for bad in ("", None):
        with pytest.raises(ValueError, match="prompt"):
            explain.record(tiny, tok, bad)
    with pytest.raises(ValueError, match="max_tokens"):
        explain.record(tiny, tok, PROMPT, max_tokens=0)
    assert_clean(tiny)


# ---- figures carry the model's numbers -----------------------------------------------------------
def test_attention_rows_sum_to_one_and_match_q_k(tiny, tiny_rec):
    rec, cfg = tiny_rec, tiny.config
    T = rec.seq_len
    pos = torch.arange(T)
    i, j = pos[:, None], pos[None, :]
    for layer, block in enumerate(tiny.blocks):
        attn = block.attn
        rope = tiny.rope_local if block.sliding else tiny.rope_global
        with torch.no_grad():
            h = block.attn_norm(rec.residual[layer])
            q = attn.q_norm(attn.wq(h).view(T, cfg.heads, cfg.head_dim)).transpose(0, 1)
            k = attn.k_norm(attn.wk(h).view(T, cfg.kv_heads, cfg.head_dim)).transpose(0, 1)
            cos, sin = rope(pos, torch.float32)
            q, k = RoPE.rotate(q, cos, sin), RoPE.rotate(k, cos, sin)
            k = k.repeat_interleave(cfg.heads // cfg.kv_heads, dim=0)
            allowed = (j <= i) & ((i - j < cfg.window) if block.sliding else True)
            scores = q @ k.transpose(-2, -1) * cfg.query_pre_attn_scalar ** -0.5
            expected = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
        probs = rec.attn_probs[layer]
        torch.testing.assert_close(probs.sum(-1), torch.ones(cfg.heads, T))
        torch.testing.assert_close(probs, expected, atol=1e-5, rtol=1e-4)
        assert probs.std() > 0.01  # not uniform: the test would not see a wrong mask otherwise

    fig = explain.attention_figure(rec, 0, 1)
    z = np.asarray(fig.data[0].z, dtype=np.float64)
    shown = ~np.isnan(z)
    np.testing.assert_allclose(z[shown], rec.attn_probs[0][1].numpy()[shown], rtol=1e-6)
    assert (shown == (rec.attn_probs[0][1] > 0).numpy()).all()  # hidden keys (the window) left empty
    assert "sliding" in fig.layout.title.text and "full" in explain.attention_figure(rec, 5).layout.title.text
    assert len(explain.attention_figure(rec, 5).data) == tiny.config.heads
    assert "7: ␣Lily" not in fig.data[0].x and any("&lt;" in x for x in fig.data[0].x)  # "<" escaped for plotly
    for bad in ((7, None), (0, 4), (-1, None)):
        with pytest.raises(ValueError):
            explain.attention_figure(rec, *bad)


def test_mask_counts_are_the_model_attention_counts(tiny, tiny_rec):
    rec, cfg = tiny_rec, tiny.config
    fig = explain.mask_figure(cfg, rec.seq_len)
    counts = {t.name: np.asarray(t.y) for t in fig.data if t.type == "scatter"}
    sliding, full = counts[f"sliding layers (window {cfg.window})"], counts["full layers"]
    assert sliding.max() == cfg.window and full.max() == rec.seq_len  # the window bites in this prompt
    for layer, kind in enumerate(cfg.layer_types):
        seen = (rec.attn_probs[layer] > 0).sum(-1).numpy()  # [H, T] keys each query really attends to
        assert (seen == (sliding if kind == "sliding" else full)).all(), layer
        mask = np.asarray(trace(fig, name=f"{kind} mask").z)
        assert (mask == (rec.attn_probs[layer][0] > 0).numpy()).all()
    strip = trace(fig, name="layer pattern")
    assert list(strip.z[0]) == [int(t == "full") for t in cfg.layer_types]
    # the 270m: 512-key window, visible from 513 tokens on; long masks are shown at sampled positions
    cfg270 = gemma3.Gemma3Config.from_preset("270m")
    fig = explain.mask_figure(cfg270, cfg270.context)
    lines = {t.name: t for t in fig.data if t.type == "scatter"}
    q = np.asarray(lines["full layers"].x)
    assert len(q) <= explain.figures.MASK_CELLS and q[0] == 0 and q[-1] > cfg270.context - 200
    np.testing.assert_array_equal(lines["sliding layers (window 512)"].y, np.minimum(q + 1, 512))
    np.testing.assert_array_equal(lines["full layers"].y, q + 1)
    assert np.asarray(fig.data[0].z).shape == (len(q), len(q))
    with pytest.raises(ValueError):
        explain.mask_figure(cfg, 0)


def test_rope_figure_uses_the_model_tables(tiny):
    cfg = tiny.config
    fig = explain.rope_figure(cfg)
    freq = {t.legendgroup: np.asarray(t.y) for t in fig.data if t.type == "scatter" and t.xaxis == "x"}
    np.testing.assert_allclose(freq["sliding"], tiny.rope_local.inv_freq.numpy(), rtol=1e-6)
    np.testing.assert_allclose(freq["full"], tiny.rope_global.inv_freq.numpy(), rtol=1e-6)
    dots = {t.legendgroup: (np.asarray(t.x), np.asarray(t.y)) for t in fig.data if t.xaxis == "x2"}
    for kind, rope in (("sliding", tiny.rope_local), ("full", tiny.rope_global)):
        d, y = dots[kind]
        expected = np.cos(d[:, None] * rope.inv_freq.double().numpy()[None]).mean(-1)
        np.testing.assert_allclose(y, expected, atol=5e-3)
    d = dots["sliding"][0]
    middle = (d >= 16) & (d <= 512)
    assert np.abs(dots["sliding"][1][middle]).mean() < np.abs(dots["full"][1][middle]).mean()
    angles = np.asarray(trace(fig, name="sliding angles").z)
    pos = np.arange(angles.shape[0])[:, None]
    expected = (pos * tiny.rope_local.inv_freq.numpy()[None]) % (2 * np.pi)
    diff = np.abs(angles - expected)
    assert np.minimum(diff, 2 * np.pi - diff).max() < 1e-3


def test_logit_lens_last_layer_is_the_model_prediction(tiny, tok, tiny_rec):
    rec = tiny_rec
    with torch.no_grad():
        logits = tiny(torch.tensor([rec.tokens]))[0]
    top = logits.argmax(-1)
    fig = explain.logit_lens_figure(rec)
    hm = fig.data[0]
    assert len(hm.y) == tiny.config.layers + 1
    assert rec.lens_ids[-1].tolist() == top.tolist()
    tokens = [explain.hooks.show_token(tok.decode([i])) for i in top.tolist()]
    assert [c[0] for c in hm.customdata[-1]] == [_html(t) for t in tokens]   # the hover: the whole token
    assert list(hm.text[-1]) == [explain.figures._cell(t) for t in tokens]   # the cell: its first LENS_CHARS
    np.testing.assert_allclose(np.asarray(hm.z[-1]), logits.softmax(-1).max(-1).values.numpy(), rtol=1e-4)
    with torch.no_grad():  # every row: that residual through the model's final norm and unembedding
        for layer in range(tiny.config.layers + 1):
            row = F.linear(tiny.final_norm(rec.residual[layer]), tiny.embed.weight).argmax(-1)
            assert rec.lens_ids[layer].tolist() == row.tolist()
    assert hm.texttemplate  # every cell writes its token
    ranks = explain.figures.lens_ranks(tiny, rec)
    with torch.no_grad():  # the final prediction's and the true next token's probability and rank, every layer
        for layer in range(tiny.config.layers + 1):
            p = F.linear(tiny.final_norm(rec.residual[layer]), tiny.embed.weight).softmax(-1)
            final, true = p.gather(-1, top[:, None])[:, 0], p[:-1].gather(-1, torch.tensor(rec.tokens[1:])[:, None])[:, 0]
            np.testing.assert_allclose(ranks["final_p"][layer], final.numpy(), rtol=1e-4, atol=1e-7)
            np.testing.assert_allclose(ranks["true_p"][layer, :-1], true.numpy(), rtol=1e-4, atol=1e-7)
            rank = (p > p.gather(-1, top[:, None])).sum(-1) + 1
            assert ranks["final_rank"][layer].tolist() == rank.float().tolist()
    assert (ranks["final_rank"][-1] == 1).all() and np.isnan(ranks["true_p"][:, -1]).all()
    lens = explain.logit_lens_figure(rec, ranks)
    np.testing.assert_allclose(np.asarray(lens.data[0].z, dtype=np.float64), ranks["final_p"], rtol=1e-6)
    # outlined cells (each a rectangle around its whole cell): the layer's top-1 is the prompt's next token
    hits = [((s.x0 + s.x1) / 2, (s.y0 + s.y1) / 2) for s in lens.layout.shapes if s.name == "top-1 = the true next token"]
    expected = [(c, r) for r, row in enumerate(rec.lens_ids.tolist()) for c, i in enumerate(row)
                if c < rec.seq_len - 1 and i == rec.tokens[c + 1]]
    assert hits == [(float(c), float(r)) for c, r in expected]


def legend(fig) -> list[str]:
    """The legend's entries as Plotly shows them: no legend for a lone trace."""
    entries = [t.name for t in fig.data if t.showlegend is not False]
    shows = fig.layout.showlegend if fig.layout.showlegend is not None else len(entries) > 1
    return entries if shows else []


def test_the_next_token_legend_names_each_distribution_once(tiny_rec):
    """Issue: at the default settings the legend said "temperature 1, top-k off" and "temperature 1, no top-k" for
    one distribution. Now: one entry at most; where the settings change the bars, two entries that differ."""
    default = explain.next_token_figure(tiny_rec)
    assert len(legend(default)) <= 1 and len([t for t in default.data if t.type == "scatter"]) == 0
    changed = explain.next_token_figure(tiny_rec, 0.7, 40)
    names = legend(changed)
    assert len(names) == 2 and len(set(names)) == 2 and "temperature 0.7" in names[0], names
    assert "temperature 1" in names[1] and "top-k" not in names[1]


def test_the_drawn_token_is_marked_with_nothing_over_the_bars_labels(tiny_rec):
    """Issue: the "sampled" arrow and its label sat on the top bars' percentages. The drawn token is marked by its
    bar's colour, its own axis label in that colour and the title; no annotation is drawn in the plot, and the
    legend's swatch keeps the settings' colour when the drawn token is the first bar."""
    from explain.figures import NEXT, SAMPLED
    for rank in (0, 1, 25):
        token = tiny_rec.next_ids[rank] if rank < len(tiny_rec.next_ids) else int(tiny_rec.logits[-1].argmin())
        fig = explain.next_token_figure(tiny_rec, 0.7, None, sampled=(token, "tok"))
        assert not fig.layout.annotations, "nothing drawn over the bars and their percentages"
        bars = fig.data[0]
        s = list(bars.customdata).index(token)
        assert bars.marker.color[s] == SAMPLED and set(bars.textposition) <= {"outside", "inside"}
        ticks = dict(zip(fig.layout.xaxis.tickvals, fig.layout.xaxis.ticktext))
        assert SAMPLED in ticks[bars.x[s]] and sum(SAMPLED in t for t in ticks.values()) == 1
        assert "the story drew" in fig.layout.title.text and "in green" in fig.layout.title.text
        swatch = next(t for t in fig.data if t.type == "bar" and t.showlegend is not False)
        colour = swatch.marker.color if isinstance(swatch.marker.color, str) else swatch.marker.color[0]
        assert colour == NEXT, "the legend's square is the settings' blue, not the drawn token's green"


def test_a_bars_percentage_never_lies_under_the_models_own_tick(tiny_rec):
    """Issue: at temperature above 1 the model's own tick sits a little above a bar, where the bar's percentage
    stands: that percentage goes inside the bar's top, where the bar holds it. Axis 8 decades high: a label is 0.56
    decades of it, upright 1.6."""
    from explain.figures import label_positions
    bars = np.array([0.1, 0.1, 0.1, 0.1, 0.1, 0.0, 1e-7])
    # tick above, just above, on, just under, deep inside; no bar; a bar too short to hold its label, tick on it
    ticks = bars * 10.0 ** np.array([1.0, 0.2, 0.0, -0.1, -1.0, 0.0, 0.0])
    assert label_positions(bars, ticks, (-8.0, 0.0)) == ["outside", "inside", "inside", "outside", "outside",
                                                         "outside", "outside"]
    fig = explain.next_token_figure(tiny_rec, 1.15)
    assert fig.data[0].insidetextanchor == "end", "inside, the percentage stands at the bar's top"
    tick = next(t for t in fig.data if t.type == "scatter")
    low = fig.layout.yaxis.range[0]
    assert list(fig.data[0].textposition) == label_positions(np.array(fig.data[0].y), np.array(tick.y), (low, 0.25))
    assert explain.next_token_figure(tiny_rec).data[0].textposition == "outside", "without ticks, above every bar"


def test_next_token_is_what_sampling_draws_from(tiny_rec, monkeypatch):
    rec = tiny_rec
    seen = {}

    def capture(probs, generator=None):
        seen["probs"] = probs.clone()
        return torch.zeros(probs.shape[0], dtype=torch.long)

    monkeypatch.setattr(gemma3.generation, "draw", capture)
    top1 = []
    for temperature, top_k in ((2.0, None), (1.0, None), (0.5, None), (0.7, 5), (1.3, 1)):
        next_token(rec.logits[-1:], temperature, top_k)
        fig = explain.next_token_figure(rec, temperature, top_k)
        bars = np.asarray(fig.data[0].y, dtype=np.float64)
        np.testing.assert_allclose(bars, seen["probs"][0, rec.next_ids[:20]].numpy(), rtol=1e-5, atol=1e-7)
        if top_k is not None:
            assert (bars[top_k:] == 0).all() and bars[:top_k].sum() == pytest.approx(1, abs=1e-5)
        top1.append(bars[0])
    assert top1[0] < top1[1] < top1[2]  # colder sharpens, hotter flattens
    greedy = explain.next_token_figure(rec, 0)
    assert int(next_token(rec.logits[-1:], 0)) == rec.next_ids[0]
    assert list(greedy.data[0].y) == [1] + [0] * 19
    assert greedy.data[0].x[0] == "1. " + _html(rec.token_text[rec.next_ids[0]])
    for bad in ((-1, None), (1.0, 0)):
        with pytest.raises(ValueError):
            explain.next_token_figure(rec, *bad)


def test_parameter_figure_counts_the_model(tiny, big, tok):
    for model in (tiny, big):
        fig = explain.parameter_figure(model)
        bars = dict(zip(fig.data[0].y, fig.data[0].x))
        parts = dict(zip(fig.data[0].y, fig.data[0].customdata))
        by_part = {}
        for label, n in bars.items():
            by_part[parts[label]] = by_part.get(parts[label], 0) + n
        assert by_part == model.param_groups() and sum(bars.values()) == model.num_params()
        cfg = model.config  # split by matrix: Wq holds heads * head_dim rows, Wk and Wv kv_heads * head_dim
        assert bars["Wq (query)"] == cfg.layers * cfg.hidden * cfg.heads * cfg.head_dim
        assert bars["Wk (key)"] == bars["Wv (value)"] == cfg.layers * cfg.hidden * cfg.kv_heads * cfg.head_dim
        assert bars["gate"] == bars["up"] == bars["down"] == cfg.layers * cfg.hidden * cfg.ffn
        printed = describe(model, tok).splitlines()[-1]  # "total   132,xxx,xxx" from python -m gemma3 info
        assert int(printed.split()[-1].replace(",", "")) == sum(bars.values())
        assert f"{model.num_params():,}" in fig.layout.title.text


# ---- every figure, both presets, size ------------------------------------------------------------
@pytest.mark.parametrize("preset", ["tiny", "270m"])
def test_every_figure_builds_with_titles(preset, request):
    model, rec = (request.getfixturevalue("tiny"), request.getfixturevalue("tiny_rec")) if preset == "tiny" else \
        (request.getfixturevalue("big"), request.getfixturevalue("big_rec"))
    names = set()
    for name, fig in all_figures(model, rec):
        assert_titled(fig)
        assert fig.data, name
        names.add(name.split()[0])
    assert names == {"mask", "rope", "attention", "activation", "next", "logit", "parameters"}


def test_270m_records_100_tokens(big, tok):
    """(Its time is measured by bench/record.py, not here.)"""
    rec = explain.record(big, tok, LONG_PROMPT, max_tokens=100)
    assert rec.seq_len == 100
    with torch.no_grad():
        logits = big(torch.tensor([rec.tokens]))[0]
    torch.testing.assert_close(rec.logits, logits, atol=1e-4, rtol=1e-4)
    assert rec.lens_ids[-1].tolist() == logits.argmax(-1).tolist()
    torch.testing.assert_close(rec.attn_probs[5].sum(-1), torch.ones(4, 100))
    assert_clean(big)


def test_figures_of_a_256_token_prompt_stay_light(big, big_rec):
    assert big_rec.seq_len == 256 and big_rec.prompt_tokens > 256 and "last 256" in big_rec.notice
    sizes = {name: len(fig.to_json()) for name, fig in all_figures(big, big_rec)}
    print({k: f"{v / 1e6:.2f} MB" for k, v in sizes.items()})
    assert max(sizes.values()) < JSON_LIMIT, sizes
    lens = explain.logit_lens_figure(big_rec)   # 19 x 256 cells: still a token in every cell, 20 tokens at a time
    assert lens.data[0].texttemplate and list(lens.layout.xaxis.range) == [235.5, 255.5]
    assert re.search(r"256 tokens", explain.activation_figure(big_rec).layout.title.text)


def test_every_figure_wears_the_apps_template(tiny, tiny_rec):
    from explain.figures import FONT, TEMPLATE
    for name, fig in [*all_figures(tiny, tiny_rec), ("message", explain.figures.message_figure("No prompt."))]:
        layout = fig.layout
        assert layout.template.layout.font.family == FONT, name
        assert layout.template.layout.plot_bgcolor == TEMPLATE.layout.plot_bgcolor == "white", name
        assert layout.plot_bgcolor in (None, "white", "#f9fafb"), f"{name}: no grey default background"


def test_the_default_explore_prompt_is_short_and_leaves_the_next_token_open():
    """15 to 20 tokens (GPT-2), so every view writes every token; on the bundled demo model no single next token
    near 100%."""
    import gemma3
    from gemma3 import defaults
    from webapp.explore import PROMPT as EXPLORE_PROMPT
    assert 15 <= len(gemma3.gpt2_tokenizer().encode(EXPLORE_PROMPT)) <= 20
    if not defaults.DEMO_MODEL.is_dir():
        pytest.skip("the bundled demo model is missing")
    model, tok = gemma3.load_model(defaults.DEMO_MODEL, device="cpu")
    rec = explain.record(model, tok, EXPLORE_PROMPT)
    p = rec.logits[-1].float().softmax(-1)
    assert float(p.max()) < 0.5 and float(p.topk(5).values.sum()) > 0.5, "an open choice among a few words"
    lens = explain.logit_lens_figure(rec)
    assert not lens.layout.sliders and list(lens.layout.xaxis.range) == [-0.5, rec.seq_len - 0.5], "all, no window"


# ---- token labels at any length, ticks, heights, colours ------------------------------------------
def shown_positions(axis_range) -> range:
    lo, hi = axis_range
    return range(math.ceil(lo), math.floor(hi) + 1)


@pytest.mark.parametrize("length", [100, 256])
def test_long_prompts_keep_their_token_labels(big, tok, big_rec, length):
    """Attention and activations label their token axes with the tokens (Plotly shows every k-th, as many as the
    drawn size fits) and hover names each; the logit lens writes every cell and the true-next-token row, LENS_TOKENS
    tokens at a time, and its slider moves that window over the whole prompt."""
    rec = big_rec if length == 256 else explain.record(big, tok, LONG_PROMPT, max_tokens=100)
    assert rec.seq_len == length
    labels = [_html(s) for s in rec.labels]
    att = explain.attention_figure(rec, 0)
    assert all(list(t.x) == labels and list(t.y) == labels for t in att.data)
    assert att.layout.xaxis.type == "category" and att.layout.xaxis.tickmode in (None, "auto")
    assert "query %{y}" in att.data[0].hovertemplate and "key %{x}" in att.data[0].hovertemplate
    act = explain.activation_figure(rec)
    assert list(act.data[0].x) == labels and "token %{x}" in act.data[0].hovertemplate
    lens = explain.logit_lens_figure(rec)
    n = explain.figures.LENS_TOKENS
    hm, nxt = lens.data
    assert hm.texttemplate == "%{text}" and list(hm.x) == labels
    assert list(nxt.x) == labels[:-1] and list(nxt.y) == ["true next token"] * (length - 1)
    assert list(nxt.customdata) == [_html(rec.token_text[i]) for i in rec.tokens[1:]]
    assert list(lens.layout.yaxis.categoryarray)[-1] == "true next token"
    shown = shown_positions(lens.layout.xaxis.range)
    assert list(shown) == list(range(length - n, length)), "the last LENS_TOKENS tokens first"
    steps = lens.layout.sliders[0].steps
    windows = [shown_positions(s.args[0]["xaxis.range"]) for s in steps]
    assert all(len(w) == n for w in windows) and windows[-1] == shown
    assert sorted({p for w in windows for p in w}) == list(range(length)), "the slider reaches every token"
    assert all(f"tokens {w[0]}–{w[-1]} of {length}" in s.args[0]["title.text"] for w, s in zip(windows, steps))
    for fig in (att, act, lens):
        assert fig.layout.height <= explain.figures.MAX_HEIGHT
    # the walk-through's heatmaps too (the embedding's, every [T, ...] stage's): labelled rows, thinned the same way
    from explain import walkthrough as wt
    for stage in ("embed", "q_norm"):
        hm = wt.stage_figure(rec, stage, 0, 0).data[0]
        ya = wt.stage_figure(rec, stage, 0, 0).layout.yaxis
        assert list(hm.y) == labels and ya.type == "category" and ya.showticklabels is not False, stage
        assert ya.tickmode in (None, "auto") and "%{y}" in hm.hovertemplate, stage


def test_the_embedding_heatmap_names_the_tokens_of_a_short_prompt(tiny_rec):
    """The walk-through's embedding (step 2 of the tour: "each row of this heatmap is one token of the prompt"):
    rows labelled with their tokens on the default prompt's length too, not tick marks alone."""
    from explain import walkthrough as wt
    assert 16 < tiny_rec.seq_len <= 32
    fig = wt.stage_figure(tiny_rec, "embed", 0, 3)
    ya = fig.layout.yaxis
    assert list(fig.data[0].y) == [_html(s) for s in tiny_rec.labels]
    assert ya.showticklabels is not False and ya.type == "category" and ya.autorange == "reversed"


def test_log_ticks_never_crowd():
    for low in range(-40, 0):
        vals, text = explain.figures.log_ticks(low)
        assert 2 <= len(vals) <= 8 and len(set(text)) == len(text) and vals[-1] == 1.0
        assert vals == sorted(vals) and vals[0] >= 10.0 ** low
    assert explain.figures.log_ticks(-4)[1] == ["0.01%", "0.1%", "1%", "10%", "100%"]


def test_figures_fit_the_screen_and_keep_their_colours(tiny, tiny_rec):
    """No figure taller than MAX_HEIGHT; layer names wear SLIDING / FULL; those two colours mean nothing else."""
    from explain.figures import FONT, FULL, MAX_HEIGHT, SLIDING
    assert not FONT.startswith("Montserrat") and "Verdana" in FONT
    for name, fig in all_figures(tiny, tiny_rec):
        assert fig.layout.height <= MAX_HEIGHT, name
        for t in fig.data:
            if t.type == "bar":
                colours = t.marker.color if isinstance(t.marker.color, tuple) else [t.marker.color]
                assert not {SLIDING, FULL} & set(colours), f"{name}: {t.name} is not a sliding/full layer"
    act = explain.activation_figure(tiny_rec)
    text = dict(zip(act.layout.yaxis.tickvals, act.layout.yaxis.ticktext))
    for i, kind in enumerate(tiny_rec.layer_types):
        name = f"after {i} {kind}"   # the words of the walk-through, Attention and the tour: sliding, full
        assert (SLIDING if kind == "sliding" else FULL) in text[name]


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            if k not in ("legendgroup", "meta", "uid"):   # not shown
                yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)


def test_one_vocabulary_sliding_and_full(tiny, tok, tiny_rec):
    """Issue: the logit lens's rows read "after 5 global", "after 7 local" and Model details "RoPE bases 10000
    local / 1e+06 global", where the walk-through, Attention, the tour and About say sliding and full."""
    words = re.compile(r"\b(local|global)\b", re.I)
    for name, fig in [*all_figures(tiny, tiny_rec), ("lens with ranks", explain.logit_lens_figure(
            tiny_rec, explain.figures.lens_ranks(tiny, tiny_rec)))]:
        said = [s for s in _strings(fig.to_plotly_json()) if words.search(s)]
        assert not said, f"{name}: {said[:3]}"
    lens = explain.logit_lens_figure(tiny_rec)
    rows = list(lens.layout.yaxis.categoryarray)
    full = tiny_rec.layer_types.index("full")
    assert rows[1] == f"after 0 {tiny_rec.layer_types[0]}" and f"after {full} full" in rows
    details = describe(tiny, tok)
    assert not words.search(details), details
    cfg = tiny.config
    assert f"RoPE bases {cfg.rope_local_base:g} sliding / {cfg.rope_global_base:g} full" in details
