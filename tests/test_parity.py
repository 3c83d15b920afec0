"""Parity with transformers' Gemma3ForCausalLM, the numerical reference for gemma3/.

A user notices a mismatch as different logits for the same checkpoint, a different greedy story,
or an exported folder that transformers reads differently. The tiny model (conftest.py) has random
RMSNorm weights, head_dim != hidden/heads, query_pre_attn_scalar != head_dim and a window of 8,
so each of Gemma 3's traps (RMSNorm's 1 + w, the attention scale, the window, the embedding scale) changes the logits.
"""

import copy
import math

import pytest
import torch
from conftest import TINY_HF, build_hf_tiny, random_ids, randomise_norms
from transformers import AutoModelForCausalLM, Gemma3ForCausalLM, Gemma3TextConfig, GenerationConfig
from transformers.masking_utils import sliding_window_causal_mask_function

import gemma3
from gemma3.model import sliding_mask

W = TINY_HF["sliding_window"]


@torch.no_grad()
def logits_of(model, ids: torch.Tensor) -> torch.Tensor:
    """Logits [B, T, V] in fp32 from either our model or a transformers one."""
    out = model(ids)
    return getattr(out, "logits", out).float()


# ---- same checkpoint, same logits ---------------------------------------------------------------

def test_fp32_logits_match_transformers(hf_tiny, tiny):
    """A transformers checkpoint loads through load_model and gives its logits (fp32, 5 windows long)."""
    hf, _ = hf_tiny
    ids = random_ids(2, 5 * W, seed=1)
    torch.testing.assert_close(logits_of(tiny, ids), logits_of(hf, ids), atol=1e-5, rtol=0)


@pytest.mark.parametrize("length", [W - 3, W, W + 1, 3 * W - 1])
def test_shorter_equal_and_longer_than_window_match(hf_tiny, tiny, length):
    """Shorter than / exactly the window (causal fast path) and longer (explicit window mask) all match."""
    hf, _ = hf_tiny
    ids = random_ids(2, length, seed=length)
    torch.testing.assert_close(logits_of(tiny, ids), logits_of(hf, ids), atol=1e-5, rtol=0)


def test_bf16_logits_match_transformers(hf_tiny, tiny):
    """In bf16 our logits stay as close to transformers' bf16 logits as bf16 allows, and pick the same top token."""
    hf32, path = hf_tiny
    ours, _ = gemma3.load_model(path, device="cpu", dtype=torch.bfloat16)
    # from_pretrained(dtype=bf16) is how users get a bf16 transformers model (RoPE frequencies stay fp32)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, attn_implementation="eager").eval()
    assert ours.embed.weight.dtype == torch.bfloat16 and hf.model.embed_tokens.weight.dtype == torch.bfloat16

    ids = random_ids(2, 5 * W, seed=2)
    exact = logits_of(hf32, ids)
    a, b = logits_of(ours, ids), logits_of(hf, ids)
    scale = exact.std()
    # bf16 keeps ~3 significant digits; measured here: mean |a-b| ~ 0.02 scale, max ~ 0.3 scale
    assert (a - b).abs().mean() < 0.05 * scale
    assert (a - b).abs().max() < 0.75 * scale
    # ... and our bf16 loses no more accuracy against the fp32 model than transformers' bf16 does
    assert (a - exact).abs().mean() < 1.25 * (b - exact).abs().mean()
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() >= 0.8


def test_grouped_query_attention_matches_transformers(tmp_path):
    """A checkpoint with 2 key/value heads shared by 4 query heads matches transformers, full and cached."""
    hf = build_hf_tiny(seed=1, num_key_value_heads=2)
    hf.save_pretrained(tmp_path)
    ours, _ = gemma3.load_model(tmp_path, device="cpu", dtype=torch.float32)
    assert ours.config.kv_heads == 2
    ids = random_ids(2, 3 * W, seed=9)
    reference = logits_of(hf, ids)
    torch.testing.assert_close(logits_of(ours, ids), reference, atol=1e-5, rtol=0)
    cache = ours.new_cache(2, ids.shape[1])
    with torch.no_grad():
        steps = [ours(ids[:, :5], cache=cache)] + [ours(ids[:, i:i + 1], cache=cache) for i in range(5, 3 * W)]
    torch.testing.assert_close(torch.cat(steps, dim=1), reference, atol=1e-5, rtol=0)


# ---- export to transformers -----------------------------------------------------------------------

@pytest.mark.parametrize("preset", ["270m", "tiny"])
def test_config_round_trips_through_transformers(preset):
    """Every preset's exported config.json is accepted by transformers and reads back unchanged."""
    cfg = gemma3.Gemma3Config.from_preset(preset)
    hf = Gemma3TextConfig(**cfg.to_hf())
    assert gemma3.Gemma3Config.from_hf(hf.to_dict()) == cfg


def _export_and_reload(model, folder):
    gemma3.export_hf(model, gemma3.gpt2_tokenizer(), folder)
    return AutoModelForCausalLM.from_pretrained(folder).eval()


def test_export_hf_gives_same_logits(tiny, tmp_path):
    """export_hf writes a folder that transformers' AutoModelForCausalLM loads with our logits."""
    hf = _export_and_reload(tiny, tmp_path / "export")
    assert isinstance(hf, Gemma3ForCausalLM)
    ids = random_ids(2, 3 * W, seed=3)
    torch.testing.assert_close(logits_of(hf, ids), logits_of(tiny, ids), atol=1e-5, rtol=0)


def test_export_hf_untied_head(tmp_path):
    """A model with its own output head (seed checkpoints) exports with that head, not the embedding."""
    torch.manual_seed(0)
    model = randomise_norms(gemma3.Gemma3(gemma3.Gemma3Config.from_preset("tiny", tied_head=False))).eval()
    assert model.head is not None
    hf = _export_and_reload(model, tmp_path / "untied")
    assert not hf.config.tie_word_embeddings
    assert hf.lm_head.weight.data_ptr() != hf.model.embed_tokens.weight.data_ptr()
    torch.testing.assert_close(hf.lm_head.weight, model.head.weight, atol=0, rtol=0)
    ids = random_ids(2, 3 * W, seed=4)
    torch.testing.assert_close(logits_of(hf, ids), logits_of(model, ids), atol=1e-5, rtol=0)


# ---- generation ------------------------------------------------------------------------------------

@pytest.mark.parametrize("use_engine", [False, True], ids=["reference", "engine"])
def test_greedy_generation_matches_transformers(hf_tiny, tiny, use_engine):
    """Greedy decoding through our ring-buffer cache writes the same 40 tokens as transformers' generate,
    on the reference model alone and on the engine (where it runs here)."""
    hf, _ = hf_tiny
    prompt = random_ids(1, 6, seed=5)
    new = 40  # 6 + 40 positions: the sliding layers' ring of 8 slots wraps five times
    ours = list(gemma3.generate_tokens(tiny, prompt[0].tolist(), max_new_tokens=new, temperature=0,
                                       use_engine=use_engine))
    config = GenerationConfig(max_new_tokens=new, min_new_tokens=new, do_sample=False, use_cache=True,
                              eos_token_id=None, bos_token_id=None, pad_token_id=0)
    with torch.no_grad():
        out = hf.generate(prompt, attention_mask=torch.ones_like(prompt), generation_config=config)
    theirs = out[0, prompt.shape[1]:].tolist()
    assert len(ours) == len(theirs) == new
    assert ours == theirs
    assert len(set(ours)) > 5  # a varied continuation, not one token repeated


# ---- the traps a reimplementation of Gemma 3 falls into -----------------------------------------------

def test_sliding_mask_sees_exactly_window_keys():
    """Query i sees keys i-W+1 .. i: W keys including itself (min(i+1, W) at the start), like transformers."""
    pos = torch.arange(3 * W)
    mask = sliding_mask(pos, pos, W)
    assert mask.sum(1).tolist() == [min(i + 1, W) for i in range(3 * W)]
    reference = sliding_window_causal_mask_function(W)
    expected = reference(0, 0, pos[:, None], pos[None, :])
    assert torch.equal(mask, expected)
    # with an offset, as during cached prefill: queries 13..15 against keys 6..15
    q, k = torch.arange(13, 16), torch.arange(6, 16)
    assert torch.equal(sliding_mask(q, k, W), expected[13:16, 6:16])
    assert torch.equal(sliding_mask(pos, pos, None), torch.ones(3 * W, 3 * W).tril().bool())


def _one_sliding_layer_model():
    torch.manual_seed(0)
    cfg = gemma3.Gemma3Config.from_preset("tiny", vocab_size=1000, layers=1, layer_types=["sliding"])
    return randomise_norms(gemma3.Gemma3(cfg)).eval()


@pytest.mark.parametrize("length", [W, 3 * W])
def test_token_influences_exactly_the_next_window_positions(length):
    """With one sliding layer, changing token p changes the predictions at positions p .. p+W-1 and no others."""
    model = _one_sliding_layer_model()
    ids = random_ids(1, length, seed=6, vocab=1000)
    for p in (0, 3, length - W // 2):
        edited = ids.clone()
        edited[0, p] = (edited[0, p] + 1) % 1000
        diff = (logits_of(model, ids) - logits_of(model, edited)).abs().amax(-1)[0]
        changed = [i for i in range(length) if diff[i] > 1e-6]
        assert changed == list(range(p, min(p + W, length))), f"token {p}"


def test_window_is_really_applied(tiny):
    """Beyond the window the sliding layers give other logits than full attention would (is_causal trap)."""
    full = copy.deepcopy(tiny)
    for block in full.blocks:
        block.attn.window = None  # same weights and RoPE, sliding layers attend to everything
    ids = random_ids(2, 3 * W, seed=7)
    ours, everything = logits_of(tiny, ids), logits_of(full, ids)
    torch.testing.assert_close(ours[:, :W], everything[:, :W], atol=1e-5, rtol=0)
    assert (ours[:, W:] - everything[:, W:]).abs().amax(-1).min() > 1e-3


def test_head_dim_is_not_hidden_over_heads(hf_tiny, tiny):
    """head_dim comes from the config (32 here, 256 in the 270m), not hidden / heads (16, 160)."""
    cfg = tiny.config
    assert cfg.head_dim == 32 != cfg.hidden // cfg.heads
    assert tiny.blocks[0].attn.wq.weight.shape == (cfg.heads * 32, cfg.hidden)
    assert tiny.blocks[0].attn.q_norm.weight.shape == (32,)
    big = gemma3.Gemma3Config.from_preset("270m")
    assert big.head_dim == 256 and big.hidden // big.heads == 160


def test_embedding_scale_is_rounded_to_bf16():
    """In bf16 the embedding is multiplied by sqrt(640) rounded to bf16 (25.25), as transformers does."""
    from transformers.models.gemma3.modeling_gemma3 import Gemma3TextScaledWordEmbedding

    torch.manual_seed(0)
    cfg = gemma3.Gemma3Config.from_preset("tiny", vocab_size=1000, hidden=640, layers=1)
    model = gemma3.Gemma3(cfg).to(torch.bfloat16).eval()
    seen = {}

    def record_block_input(module, args):
        seen["x"] = args[0]

    model.blocks[0].register_forward_pre_hook(record_block_input)
    ids = random_ids(1, 16, seed=8, vocab=1000)
    logits_of(model, ids)

    scale = torch.tensor(math.sqrt(640)).to(torch.bfloat16)
    assert scale.item() == 25.25
    rows = model.embed.weight[ids]
    assert torch.equal(seen["x"], rows * scale)
    reference = Gemma3TextScaledWordEmbedding(1000, 640, None, embed_scale=math.sqrt(640)).to(torch.bfloat16)
    reference.weight.data.copy_(model.embed.weight.data)
    assert torch.equal(seen["x"], reference(ids))
    # the trap (scaling in fp32, rounding after) gives other numbers, so this test can tell
    assert not torch.equal(seen["x"], (rows.float() * math.sqrt(640)).to(torch.bfloat16))


def test_layer_pattern_matches_transformers():
    """Every sixth layer is full attention, the rest sliding, as in transformers' Gemma 3."""
    hf_types = Gemma3TextConfig(num_hidden_layers=18, pad_token_id=None).layer_types
    assert [t + "_attention" for t in gemma3.Gemma3Config(layers=18).layer_types] == hf_types


# ---- the 270m preset -------------------------------------------------------------------------------

def test_270m_parameter_count():
    """The 270m preset with the GPT-2 vocabulary has exactly the parameters of transformers' equivalent."""
    vocab, hidden, layers, heads, kv, head_dim, ffn = 50257, 640, 18, 4, 1, 256, 2048
    attention = hidden * heads * head_dim + 2 * hidden * kv * head_dim + heads * head_dim * hidden
    norms = 4 * hidden + 2 * head_dim  # attn/ffn pre- and post-norms, q and k norms
    expected = vocab * hidden + layers * (attention + 3 * hidden * ffn + norms) + hidden
    assert expected == 132_490_496

    with torch.device("meta"):
        ours = gemma3.Gemma3(gemma3.Gemma3Config.from_preset("270m"))
        hf = Gemma3ForCausalLM(Gemma3TextConfig(
            vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
            num_key_value_heads=kv, head_dim=head_dim, intermediate_size=ffn, pad_token_id=None))
    assert ours.num_params() == sum(p.numel() for p in ours.parameters()) == expected
    assert sum(p.numel() for p in hf.parameters()) == expected
