"""explain.record keeps every stage of the forward pass, each equal to what the model and transformers compute."""

import pytest
import torch
import torch.nn.functional as F

import explain
import gemma3
from gemma3.defaults import DEMO_MODEL

torch.set_num_threads(1)

# 90-odd tokens: past the demo model's 64-token window (and the tiny model's 8), so the sliding mask bites
PROMPT = ("Once upon a time, there was a little girl named Lily. She liked to play in the sun with her dog, Max. "
          "One day, Lily and Max went to the park. They saw a big red ball under a tree. Lily wanted to play "
          "with it, but a boy said it was his. Lily was sad, so Max ran to find a stick instead.")


# ---- fixtures ------------------------------------------------------------------------------------
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
    model, tokenizer = demo
    return explain.record(model, tokenizer, PROMPT)


@pytest.fixture(params=["tiny", "demo"])
def case(request):
    """(our model, its record) for the tiny model and the bundled demo model."""
    if request.param == "tiny":
        return request.getfixturevalue("tiny"), request.getfixturevalue("tiny_rec")
    return request.getfixturevalue("demo")[0], request.getfixturevalue("demo_rec")


def shapes(cfg, T) -> dict:
    """The documented shape of every stage for T tokens."""
    q, kv = (T, cfg.heads, cfg.head_dim), (T, cfg.kv_heads, cfg.head_dim)
    hidden, ffn = (T, cfg.hidden), (T, cfg.ffn)
    return {"input": hidden, "attn_norm": hidden, "q": q, "k": kv, "v": kv, "q_norm": q, "k_norm": kv,
            "q_rope": q, "k_rope": kv, "attn_probs": (cfg.heads, T, T), "attn_out": (T, cfg.heads * cfg.head_dim),
            "o": hidden, "post_attn_norm": hidden, "mid": hidden, "ffn_norm": hidden, "gate": ffn, "up": ffn,
            "act": ffn, "down": hidden, "post_ffn_norm": hidden, "output": hidden,
            "embed": hidden, "final_norm": hidden, "logits": (T, cfg.vocab_size)}


# ---- every stage, its shape, the sums that tie them together -------------------------------------
def test_stage_names_are_the_forward_order():
    assert explain.STAGES == (
        "input", "attn_norm", "q", "k", "v", "q_norm", "k_norm", "q_rope", "k_rope", "attn_probs", "attn_out",
        "o", "post_attn_norm", "mid", "ffn_norm", "gate", "up", "act", "down", "post_ffn_norm", "output")
    assert explain.MODEL_STAGES == ("embed", "final_norm", "logits")


def test_every_stage_is_recorded_with_its_shape(case):
    model, rec = case
    cfg, T = model.config, rec.seq_len
    assert T > cfg.window  # the sliding window bites in this prompt, on both models
    expected = shapes(cfg, T)
    for layer in range(cfg.layers):
        for name in explain.STAGES:
            t = rec.stage(name, layer)
            assert t.shape == expected[name], (name, layer)
            assert t.device.type == "cpu" and torch.isfinite(t).all(), (name, layer)
    for name in explain.MODEL_STAGES:
        assert rec.stage(name).shape == expected[name], name
    # the stages differ from one another (a hook on the wrong module would repeat its neighbour)
    layer0 = [rec.stage(n, 0) for n in ("input", "attn_norm", "o", "post_attn_norm", "mid", "ffn_norm", "down",
                                        "post_ffn_norm", "output")]
    assert all(not torch.equal(a, b) for i, a in enumerate(layer0) for b in layer0[i + 1:])


def test_the_residual_adds_up(case):
    model, rec = case
    with torch.no_grad():
        logits = model(torch.tensor([rec.tokens]))[0]
    # the recording pass writes attention out (explain.hooks.Probabilities), the plain pass uses SDPA:
    # the same arithmetic in another order, a few fp32 ulps apart on the trained model's larger logits
    torch.testing.assert_close(rec.stage("logits"), logits, atol=1e-4, rtol=1e-5)
    ids = torch.tensor(rec.tokens)
    torch.testing.assert_close(rec.stage("embed"), model.embed.weight[ids] * model.config.hidden ** 0.5)
    assert torch.equal(rec.stage("embed"), rec.stage("input", 0))
    for layer in range(model.config.layers):
        s = {name: rec.stage(name, layer) for name in explain.STAGES}
        torch.testing.assert_close(s["mid"], s["input"] + s["post_attn_norm"])
        torch.testing.assert_close(s["output"], s["mid"] + s["post_ffn_norm"])
        torch.testing.assert_close(s["act"], F.gelu(s["gate"], approximate="tanh") * s["up"])
        if layer + 1 < model.config.layers:
            assert torch.equal(s["output"], rec.stage("input", layer + 1))
    # the views the figures draw come from the stages
    assert torch.equal(rec.residual[0], rec.stage("embed"))
    assert torch.equal(rec.residual[-1], rec.stage("output", model.config.layers - 1))
    assert torch.equal(rec.attn_added[2], rec.stage("post_attn_norm", 2))
    assert torch.equal(rec.ffn_added[2], rec.stage("post_ffn_norm", 2))
    assert rec.attn_probs[3] is rec.stage("attn_probs", 3) and rec.logits is rec.stage("logits")


def test_memory_is_the_stated_budget(case):
    """Each tensor kept once, in the model's dtype: record_bytes is what the record holds."""
    model, rec = case
    assert rec.nbytes == explain.record_bytes(model.config, rec.seq_len, torch.float32)
    assert all(rec.stage(n, 0).dtype == torch.float32 for n in explain.STAGES)
    cfg = gemma3.Gemma3Config.from_preset("270m")
    assert explain.record_bytes(cfg, 256, torch.bfloat16) == 692_898 * 256 + 288 * 256 ** 2  # the docstring's


def test_a_bf16_model_keeps_its_stages_in_bf16(tiny, tok):
    model = gemma3.Gemma3(tiny.config).eval()
    model.load_state_dict(tiny.state_dict())
    model.to(torch.bfloat16)
    rec = explain.record(model, tok, PROMPT)
    assert rec.stage("gate", 1).dtype == rec.stage("logits").dtype == torch.bfloat16
    assert rec.stage("attn_probs", 1).dtype == torch.float32  # the dtype the softmax computes in
    assert rec.nbytes == explain.record_bytes(model.config, rec.seq_len, torch.bfloat16)
    with torch.no_grad():  # the logits are the tied head applied to the recorded final norm
        torch.testing.assert_close(rec.stage("logits"), F.linear(rec.stage("final_norm"), model.embed.weight))


def test_a_wrong_stage_or_layer_gets_one_clear_sentence(tiny_rec):
    rec = tiny_rec
    with pytest.raises(ValueError, match=r"^There is no stage 'qq': the stages of a layer are input, attn_norm, "
                                         r".*; those of the whole model are embed, final_norm, logits\.$"):
        rec.stage("qq", 0)
    for layer in (None, -1, 7, 1.0, True, "0"):
        with pytest.raises(ValueError, match=r"^Stage 'q' is recorded for each layer: give a layer from 0 to 6, "
                                             r"not .*\.$"):
            rec.stage("q", layer)
    with pytest.raises(ValueError, match=r"^Stage 'logits' belongs to the whole model, not to a layer: ask for it "
                                         r"without a layer, not with layer=3\.$"):
        rec.stage("logits", 3)


# ---- every stage equals transformers' own modules on the same weights ----------------------------
@pytest.fixture(scope="module")
def demo_hf(demo, tmp_path_factory):
    """The demo model as a transformers Gemma3ForCausalLM (eager attention), through gemma3.export_hf."""
    from transformers import AutoModelForCausalLM

    path = gemma3.export_hf(*demo, tmp_path_factory.mktemp("demo_hf"))
    return AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager", dtype=torch.float32).eval()


def hf_stages(hf, ids: list[int]) -> tuple[list[dict], dict]:
    """Every stage as transformers computes it, caught with forward hooks on its own modules, in our shapes."""
    layers = hf.model.layers
    got: list[dict] = [{} for _ in layers]
    whole: dict = {}

    def keep(where, name, pre=False):
        if pre:
            return lambda module, args: where.__setitem__(name, args[0].detach()[0])
        return lambda module, args, out: where.__setitem__(name, (out[0] if isinstance(out, tuple) else out)
                                                           .detach()[0])

    def keep_rope(where):  # the (cos, sin) the attention module receives for its layer type
        return lambda module, args, kwargs: where.__setitem__("rope", kwargs["position_embeddings"])

    handles = [hf.model.embed_tokens.register_forward_hook(keep(whole, "embed")),
               hf.model.norm.register_forward_hook(keep(whole, "final_norm"))]
    for i, layer in enumerate(layers):
        a, m, s = layer.self_attn, layer.mlp, got[i]
        post = (("attn_norm", layer.input_layernorm), ("q", a.q_proj), ("k", a.k_proj), ("v", a.v_proj),
                ("q_norm", a.q_norm), ("k_norm", a.k_norm), ("o", a.o_proj),
                ("post_attn_norm", layer.post_attention_layernorm), ("ffn_norm", layer.pre_feedforward_layernorm),
                ("gate", m.gate_proj), ("up", m.up_proj), ("down", m.down_proj),
                ("post_ffn_norm", layer.post_feedforward_layernorm), ("output", layer))
        pre = (("input", layer), ("attn_out", a.o_proj), ("mid", layer.pre_feedforward_layernorm),
               ("act", m.down_proj))
        handles += [module.register_forward_hook(keep(s, name)) for name, module in post]
        handles += [module.register_forward_pre_hook(keep(s, name, pre=True)) for name, module in pre]
        handles.append(a.register_forward_pre_hook(keep_rope(s), with_kwargs=True))
    try:
        with torch.no_grad():
            out = hf(torch.tensor([ids]), output_attentions=True)
    finally:
        for h in handles:
            h.remove()
    cfg = hf.config
    for i, s in enumerate(got):
        for name, heads in (("q", cfg.num_attention_heads), ("k", cfg.num_key_value_heads),
                            ("v", cfg.num_key_value_heads)):
            s[name] = s[name].view(len(ids), heads, cfg.head_dim)
        s["q_norm"], s["k_norm"] = s["q_norm"].transpose(0, 1), s["k_norm"].transpose(0, 1)  # [H, T, D] there
        s["attn_probs"] = out.attentions[i][0]
    whole["logits"] = out.logits[0]
    return got, whole


def hf_rope(s: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' apply_rotary_pos_emb on its own q_norm / k_norm outputs with its rotary tables: [T, H, D]."""
    from transformers.models.gemma3.modeling_gemma3 import apply_rotary_pos_emb

    cos, sin = s["rope"]
    q, k = apply_rotary_pos_emb(s["q_norm"].transpose(0, 1)[None], s["k_norm"].transpose(0, 1)[None], cos, sin)
    return q[0].transpose(0, 1), k[0].transpose(0, 1)


@pytest.fixture(params=["tiny", "demo"])
def twins(request):
    """(our record, transformers' stages) on the same weights and tokens."""
    if request.param == "tiny":
        rec, hf = request.getfixturevalue("tiny_rec"), request.getfixturevalue("hf_tiny")[0]
    else:
        rec, hf = request.getfixturevalue("demo_rec"), request.getfixturevalue("demo_hf")
    return rec, hf_stages(hf, rec.tokens)


def test_every_stage_equals_transformers(twins):
    rec, (theirs, whole) = twins
    close = dict(atol=1e-5, rtol=1e-4)
    hooked = [n for n in explain.STAGES if n not in ("q_rope", "k_rope")]
    for layer, s in enumerate(theirs):
        for name in hooked:
            torch.testing.assert_close(rec.stage(name, layer), s[name], **close, msg=lambda m: f"{name} {layer}: {m}")
        q, k = hf_rope(s)
        torch.testing.assert_close(rec.stage("q_rope", layer), q, **close)
        torch.testing.assert_close(rec.stage("k_rope", layer), k, **close)
    for name in explain.MODEL_STAGES:
        torch.testing.assert_close(rec.stage(name), whole[name], **close, msg=lambda m: f"{name}: {m}")
    # the window bites: a sliding layer's last query sees exactly `window` keys, a full layer's all of them
    cfg = rec.config
    seen = [int((rec.stage("attn_probs", i)[0, -1] > 0).sum()) for i in range(cfg.layers)]
    assert seen == [cfg.window if t == "sliding" else rec.seq_len for t in cfg.layer_types]


def test_attention_from_the_recorded_q_k_reproduces_the_probabilities(twins):
    """softmax(q_rope k_rope^T * scale) under the model's mask gives the recorded (and transformers') weights."""
    rec, (theirs, _) = twins
    cfg, T = rec.config, rec.seq_len
    pos = torch.arange(T)
    for layer, kind in enumerate(cfg.layer_types):
        q, k = rec.stage("q_rope", layer).transpose(0, 1), rec.stage("k_rope", layer).transpose(0, 1)
        k = k.repeat_interleave(cfg.heads // cfg.kv_heads, dim=0)
        visible = gemma3.model.sliding_mask(pos, pos, cfg.window if kind == "sliding" else None)
        scores = q @ k.transpose(-2, -1) * cfg.query_pre_attn_scalar ** -0.5
        probs = scores.masked_fill(~visible, float("-inf")).softmax(-1)
        torch.testing.assert_close(probs, theirs[layer]["attn_probs"], atol=1e-5, rtol=1e-4)
        # and the attention output before Wo is those probabilities applied to v, heads side by side
        v = rec.stage("v", layer).transpose(0, 1).repeat_interleave(cfg.heads // cfg.kv_heads, dim=0)
        torch.testing.assert_close(rec.stage("attn_out", layer), (probs @ v).transpose(0, 1).reshape(T, -1),
                                   atol=1e-5, rtol=1e-4)


# ---- the app keeps recordings within a byte budget -----------------------------------------------
def test_explore_keeps_recordings_within_its_byte_budget():
    from webapp import models
    from webapp.explore import Explorer

    explorer = Explorer(models.ModelCache(*models.load_source("random:tiny")), cache_size=4)
    prompts = [PROMPT + word for word in (" Then", " Soon", " Later")]  # one token more each: same size
    one = explorer.record(PROMPT).nbytes
    explorer.cache_bytes = 2 * one + one // 2  # room for two such recordings, not three
    for p in prompts:
        explorer.record(p)
    assert explorer.recordings == 4
    explorer.record(prompts[2])
    explorer.record(prompts[1])
    assert explorer.recordings == 4, "the two newest recordings are kept"
    explorer.record(prompts[0])
    assert explorer.recordings == 5, "the oldest was let go to stay within the bytes"
    explorer.cache_bytes = one // 2  # smaller than one recording: the newest still stays
    explorer.record(PROMPT)
    explorer.record(PROMPT)
    assert explorer.recordings == 6
