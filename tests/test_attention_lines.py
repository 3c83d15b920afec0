"""Explore's word-to-word attention (explain.attention_lines, webapp.ui.attention_lines): the lines view and the heads
grid show the recording's own attention probabilities, checked against the Record and against a plain recomputation
from q and k; sliding layers show their window; the page stays small at long prompts."""

import io
import re

import numpy as np
import pytest
import torch

import explain
from explain import attention_lines as al
from webapp import explore as ex
from webapp import models
from webapp.inputs import UserError
from webapp.ui import attention_lines as ui

PROMPT = ("Once upon a time, there was a little girl named Lily. She liked to play with her ball in the "
          "garden every day.")   # 25 tokens: past the tiny preset's window of 8


@pytest.fixture(scope="module")
def explorer():
    return ex.Explorer(models.ModelCache(*models.load_source("random:tiny")))


@pytest.fixture(scope="module")
def rec(explorer):
    return explorer.record(PROMPT)


def recomputed(rec, layer: int) -> torch.Tensor:
    """softmax(q k^T * scale + mask) from the layer's q and k after RoPE, written out plainly: [H, T, T]."""
    cfg = rec.config
    q, k = rec.stage("q_rope", layer).float(), rec.stage("k_rope", layer).float()   # [T, H, D], [T, KV, D]
    k = k.repeat_interleave(cfg.heads // cfg.kv_heads, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q, k) * cfg.query_pre_attn_scalar ** -0.5
    i, j = torch.arange(rec.seq_len)[:, None], torch.arange(rec.seq_len)[None, :]
    seen = j <= i
    if rec.layer_types[layer] == "sliding":
        seen &= i - cfg.window < j
    return scores.masked_fill(~seen, float("-inf")).softmax(-1)


def test_weights_are_the_recordings_probabilities(rec):
    assert rec.seq_len > rec.config.window + 4, "the prompt passes the window"
    for layer in (0, 5):   # a sliding and the full layer
        att = al.layer_attention(rec, layer)
        assert att.n == rec.seq_len and att.first == 0 and att.note is None
        assert att.tokens == [rec.token_text[i] for i in rec.tokens]
        assert np.array_equal(att.weights, np.round(rec.attn_probs[layer].double().numpy(), 3))
        plain = recomputed(rec, layer).double().numpy()
        assert np.abs(att.weights - plain).max() <= 5e-4 + 1e-6, "within rounding of a plain recomputation"
        hidden = ~al.visible(att)
        assert not att.weights[:, hidden].any(), "no weight where the mask hides the key"
    sliding = al.layer_attention(rec, 0)
    assert sliding.kind == "sliding" and sliding.window == 8 and sliding.window_bites
    assert not np.any(sliding.weights[:, 20, :13]), "query 20 sees only keys 13..20 in a window of 8"
    full = al.layer_attention(rec, 5)
    assert full.kind == "full" and full.window is None and not full.window_bites
    assert (full.weights[:, 20, :13] > 0).any(), "a full layer sees the earliest tokens"


def test_a_long_prompt_is_cut_to_its_last_tokens_with_a_note(rec):
    att = al.layer_attention(rec, 5, max_tokens=10)
    first = rec.seq_len - 10
    assert att.n == 10 and att.first == first and att.positions[0] == first
    assert np.array_equal(att.weights, np.round(rec.attn_probs[5][:, first:, first:].double().numpy(), 3))
    assert f"last 10 of the {rec.seq_len} tokens recorded" in att.note
    html = ui.lines_html(rec, 5, None).replace("\n", "")
    assert "Showing the last" not in html, "the default cap is above this prompt"


def test_lines_are_every_nonzero_weight_or_each_querys_strongest(rec):
    att = al.layer_attention(rec, 5)
    everything = al.lines(att, None)
    nonzero = int((att.weights > 0).sum())
    assert len(everything.rows) == nonzero and everything.left_out == 0 and everything.note is None
    for h, q, k, w in everything.rows:
        assert w == att.weights[h, q, k] > 0 and k <= q
    few = al.lines(att, 1, max_lines=3 * att.n)   # 3 keys per query
    assert few.per_query == 3 and few.left_out == int((att.weights[1] > 0).sum()) - len(few.rows) > 0
    assert "3 strongest keys" in few.note
    for q in range(att.n):
        kept = sorted((w for h, qq, k, w in few.rows if qq == q), reverse=True)
        assert kept == sorted(att.weights[1, q][att.weights[1, q] > 0], reverse=True)[:3], "the strongest three"
    with pytest.raises(ValueError, match="head must be"):
        al.lines(att, 4)


def test_lines_view_draws_a_line_per_weight_with_its_number(rec):
    html = ui.lines_html(rec, 2, 3)
    att = al.layer_attention(rec, 2)
    drawn = al.lines(att, 3)
    paths = re.findall(r'<path d="[^"]+" data-q="(\d+)" data-k="(\d+)" data-w="([0-9.]+)"', html)
    assert len(paths) == len(drawn.rows) == int((att.weights[3] > 0).sum())
    for q, k, w in paths:
        assert float(w) == att.weights[3, int(q), int(k)]
    assert 'data-head="3"' in html and "sliding, window 8" in html
    for side in "qk":
        assert len(re.findall(f'class="al-t" data-side="{side}"', html)) == att.n, "a token per row on each side"
    every = ui.lines_html(rec, 5, None)
    heads = set(re.findall(r'class="al-h" data-h="(\d+)" stroke="(#[0-9a-f]{6})"', every))
    assert len(heads) == 4 and len({c for _, c in heads}) == 4, "all heads overlay, one colour each"
    assert ">full<" in every


def test_heads_grid_shows_the_window_and_marks_the_head(rec):
    grid = ui.grid_html(rec, 0, 2)
    assert len(re.findall(r'class="al-map[ "]', grid)) == 4
    assert re.search(r'class="al-map al-sel" data-head="2"', grid) and "sliding, window 8" in grid
    assert grid.count('class="al-window"') == 4 and "hatched cells are keys outside the window of 8" in grid
    full = ui.grid_html(rec, 5, None)
    assert 'class="al-window"' not in full and ">full<" in full and 'class="al-all al-sel"' in full
    assert al.window_edge(10, 8) == "M1 8V9H2V10" and al.window_edge(8, 8) == ""


def test_small_map_pixels(rec):
    from PIL import Image

    T, s = rec.seq_len, al.map_pixels(rec.seq_len)
    rgb = al.head_map_rgb(rec, 0, 1)
    assert rgb.shape == (T * s, T * s, 3) and T * s >= al.MIN_MAP_PX and s > 1
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(al.head_map_png(rec, 0, 1))).convert("RGB")), rgb)
    cell = lambda i, j: rgb[i * s:(i + 1) * s, j * s:(j + 1) * s].reshape(-1, 3)
    assert (cell(3, 10) == al.HIDDEN).all(), "a later key stays white"
    outside = {tuple(p) for p in cell(20, 2)}
    assert outside <= set(al.HATCH) and len(outside) == 2, "a key outside the window is hatched"
    assert not {tuple(p) for p in cell(20, 15)} & set(al.HATCH), "a key inside the window is shaded by its weight"
    full = al.head_map_rgb(rec, 5, 1)
    assert not {tuple(p) for p in full[20 * s:21 * s, 2 * s:3 * s].reshape(-1, 3)} & set(al.HATCH)


def test_draw_checks_the_pickers_and_stays_small(explorer):
    with pytest.raises(UserError, match="Head must be between 0 and 3"):
        ui.draw(explorer, PROMPT, 0, "4")
    with pytest.raises(UserError, match="Head must be 'all' or a number"):
        ui.draw(explorer, PROMPT, 0, "first")
    with pytest.raises(UserError, match="Layer must be between 0 and 6"):
        ui.draw(explorer, PROMPT, 7, "all")
    long = " ".join(["The cat sat on the mat and looked at the little dog."] * 25)   # 256 tokens recorded
    grid, lines = ui.draw(explorer, long, 5, "all")
    rec = explorer.record(long)
    assert rec.seq_len == explain.MAX_TOKENS
    assert f"last {al.MAX_TOKENS} of the {rec.seq_len} tokens recorded" in lines
    assert lines.count("<path ") <= al.MAX_LINES and "strongest keys per head" in lines
    assert len(lines) < 400_000 and len(grid) < 200_000, "the page stays small"
