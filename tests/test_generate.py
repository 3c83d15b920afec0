"""Generation: settings, determinism, stats, whole-character streaming, stop strings, long prompts, sampling."""

import pytest
import torch

import gemma3
from gemma3.generation import draw, generate_tokens, next_token

EOT = 50256


@pytest.fixture(scope="module")
def tok():
    return gemma3.gpt2_tokenizer()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = gemma3.Gemma3(gemma3.Gemma3Config.from_preset("tiny")).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "norm" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            elif name == "embed.weight":
                p.mul_(20)  # sharper logits than at init, so sampling and greedy really differ
    return m


class Scripted(gemma3.Gemma3):
    """The real tiny model (real cache and positions), with logits that make `plan` the greedy output.

    Call n (0 = the prefill) favours plan[n]; once the plan is used up it favours end-of-text.
    """

    def __init__(self, plan):
        super().__init__(gemma3.Gemma3Config.from_preset("tiny"))
        self.plan, self.calls = list(plan), 0
        self.eval()

    def forward(self, input_ids, cache=None, last_only=False):
        real = super().forward(input_ids, cache=cache, last_only=last_only)
        target = self.plan[self.calls] if self.calls < len(self.plan) else EOT
        self.calls += 1
        logits = torch.zeros_like(real)
        logits[..., target] = 30.0
        return logits


def byte_ids(tok, text):
    """One GPT-2 id per UTF-8 byte of text (every single byte is a GPT-2 token)."""
    return [tok.enc.encode_single_token(bytes([b])) for b in text.encode("utf-8")]


# ---- settings -----------------------------------------------------------------------------------

@pytest.mark.parametrize("bad, word", [
    (dict(temperature=-1), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(top_p=0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(max_new_tokens=2.5), "max_new_tokens"),
    (dict(top_k=0), "top_k"),
    (dict(repetition_penalty=0), "repetition_penalty"),
])
def test_bad_settings_raise_a_clear_error(model, tok, bad, word):
    with pytest.raises(ValueError, match=word) as e:
        gemma3.generate(model, tok, "Once upon a time", **{"max_new_tokens": 5, **bad})
    assert str(e.value).endswith(".") and len(str(e.value)) < 200
    with pytest.raises(ValueError, match=word):
        next(iter(gemma3.stream(model, tok, "Once", **{"max_new_tokens": 5, **bad})))


# ---- determinism and stats ----------------------------------------------------------------------

def test_same_seed_same_text_and_seeds_matter(model, tok):
    kw = dict(max_new_tokens=6, temperature=1.0)
    a = gemma3.generate(model, tok, "Once upon a time", seed=123, **kw)
    b = gemma3.generate(model, tok, "Once upon a time", seed=123, **kw)
    assert a == b and a
    others = {gemma3.generate(model, tok, "Once upon a time", seed=s, **kw) for s in (1, 2)}
    assert len(others | {a}) > 1, "the seed has no effect on sampling"


def test_greedy_is_deterministic_and_is_the_argmax(model, tok):
    prompt = "Once upon a time"
    a = gemma3.generate(model, tok, prompt, max_new_tokens=6, temperature=0)
    b = gemma3.generate(model, tok, prompt, max_new_tokens=6, temperature=0)
    assert a == b
    # the cached loop picks what a plain full forward pass would pick at every step
    ids = tok.encode(prompt)
    got = list(generate_tokens(model, ids, max_new_tokens=6, temperature=0))
    assert tok.decode(got) == a
    seq = list(ids)
    with torch.no_grad():
        for _ in range(6):
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    assert got == seq[len(ids):]


def test_max_new_tokens_and_stats(model, tok):
    stats = {}
    ids = list(generate_tokens(model, tok.encode("Hello"), max_new_tokens=7, temperature=0.8, seed=0,
                               stop_ids=(), stats=stats))
    assert len(ids) == 7
    assert stats["new_tokens"] == 7 and stats["stop_reason"] == "length" and stats["tokens_per_s"] > 0
    stats = {}
    text = gemma3.generate(model, tok, "Hello", max_new_tokens=5, temperature=0, stats=stats)
    assert stats["new_tokens"] <= 5 and stats["stop_reason"] in ("length", "end of text")
    assert isinstance(text, str) and stats["tokens_per_s"] >= 0 and stats["notice"] is None


def test_empty_prompt_starts_a_story(model, tok):
    stats = {}
    text = gemma3.generate(model, tok, "", max_new_tokens=3, temperature=0, stats=stats)
    assert isinstance(text, str) and stats["prompt_tokens"] == 1


# ---- streaming whole characters -----------------------------------------------------------------

def test_stream_never_yields_broken_utf8(tok):
    text = "héllo 🙂 ü"
    plan = byte_ids(tok, text)
    assert tok.decode(plan[:2]).endswith("\ufffd")  # the plan really splits characters
    model = Scripted(plan + [EOT])
    pieces = list(gemma3.stream(model, tok, "Hi", max_new_tokens=50, temperature=0))
    assert pieces and all("\ufffd" not in p for p in pieces), pieces
    assert "".join(pieces) == text
    assert "🙂" in pieces and "é" in pieces  # released as soon as complete, not at the end


def test_stream_cut_mid_character_yields_no_replacement_char(tok):
    """max_new_tokens ends inside the emoji: its first bytes are not a character to show."""
    plan = byte_ids(tok, "ok🙂")
    model = Scripted(plan)
    pieces = list(gemma3.stream(model, tok, "Hi", max_new_tokens=4, temperature=0))
    assert all("\ufffd" not in p for p in pieces), pieces
    assert "".join(pieces) == "ok"


# ---- stop strings and end of text ---------------------------------------------------------------

def test_stop_string_spanning_tokens_is_never_shown(tok):
    plan = tok.encode("Once upon a time. The end. After that")
    model = Scripted(plan)
    stats = {}
    pieces = list(gemma3.stream(model, tok, "Hi", max_new_tokens=20, temperature=0, stop=["The end."],
                                stats=stats))
    assert "".join(pieces) == "Once upon a time. "
    assert not any("The" in p for p in pieces), pieces
    assert stats["stop_reason"] == "stop string"
    assert stats["new_tokens"] > 0 and stats["decode_s"] > 0 and "tokens_per_s" in stats, stats
    assert model.calls < len(plan), "generation went on after the stop string"


def test_near_miss_of_a_stop_string_is_released(tok):
    plan = tok.encode("The ending was happy")
    model = Scripted(plan + [EOT])
    pieces = list(gemma3.stream(model, tok, "Hi", max_new_tokens=20, temperature=0, stop=["The end."]))
    assert "".join(pieces) == "The ending was happy"


def test_stop_string_completed_by_a_token_that_starts_a_character(tok):
    """Token ' \\xc3' completes the stop "a " and begins a two-byte character; then end of text."""
    plan = [tok.enc.encode_single_token(b"a"), tok.enc.encode_single_token(b" \xc3")]
    model = Scripted(plan + [EOT])
    pieces = list(gemma3.stream(model, tok, "Hi", max_new_tokens=10, temperature=0, stop=["a "]))
    out = "".join(pieces)
    assert "a " not in out and "\ufffd" not in out, pieces


def test_end_of_text_ends_generation(tok):
    plan = tok.encode("Hello") + [EOT] + tok.encode(" world")
    model = Scripted(plan)
    stats = {}
    out = gemma3.generate(model, tok, "Hi", max_new_tokens=10, temperature=0, stats=stats)
    assert out == "Hello"
    assert stats["stop_reason"] == "end of text" and stats["new_tokens"] == 1
    assert "<|endoftext|>" not in out


# ---- long prompts -------------------------------------------------------------------------------

def test_prompt_longer_than_context_keeps_its_end(model, tok):
    context = model.config.context
    prompt = " ".join(f"w{i}" for i in range(context))  # more tokens than the context
    ids = tok.encode(prompt)
    assert len(ids) > context
    stats = {}
    with pytest.warns(UserWarning, match="context"):
        text = gemma3.generate(model, tok, prompt, max_new_tokens=3, temperature=0, stats=stats)
    assert stats["notice"] and str(context) in stats["notice"]
    kept = stats["prompt_tokens"]
    assert kept + 3 <= context
    want = list(generate_tokens(model, ids[-kept:], max_new_tokens=3, temperature=0))
    assert text == tok.decode(want)


def test_generation_stops_at_the_context_end():
    """Asked for more than fits, the loop predicts from every position of the context, then stops."""
    torch.manual_seed(0)
    small = gemma3.Gemma3(gemma3.Gemma3Config.from_preset("tiny", vocab_size=300, context=40)).eval()
    stats = {}
    out = list(generate_tokens(small, [1, 2, 3], max_new_tokens=100, temperature=1.0, seed=0, stats=stats))
    assert stats["stop_reason"] == "context"
    assert len(out) == stats["new_tokens"] == 40 - 3 + 1  # the last token is predicted at position 39


# ---- sampling -----------------------------------------------------------------------------------

def test_repetition_penalty_lowers_seen_tokens():
    logits = torch.tensor([[0.5, 2.0, 1.9, -1.0]])
    seen = torch.tensor([[False, True, False, False]])
    assert int(next_token(logits, 0, seen=seen)) == 1  # penalty 1.0: off
    assert int(next_token(logits, 0, repetition_penalty=1.2, seen=seen)) == 2
    # a negative seen logit is pushed further down, never up
    neg = torch.tensor([[-1.0, -1.05]])
    assert int(next_token(neg, 0, seen=torch.tensor([[False, False]]))) == 0
    assert int(next_token(neg, 0, repetition_penalty=1.2, seen=torch.tensor([[True, False]]))) == 1
    # sampled: the seen favourite's probability drops
    g = torch.Generator().manual_seed(0)
    draws = [int(next_token(logits, 1.0, repetition_penalty=3.0, seen=seen, generator=g)) for _ in range(300)]
    g = torch.Generator().manual_seed(0)
    plain = [int(next_token(logits, 1.0, seen=seen, generator=g)) for _ in range(300)]
    assert draws.count(1) < plain.count(1)


def test_top_k_and_top_p_keep_the_right_tokens():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = torch.Generator().manual_seed(0)
    assert {int(next_token(logits, 1.0, top_k=2, generator=g)) for _ in range(200)} == {0, 1}
    assert {int(next_token(logits, 1.0, top_p=0.75, generator=g)) for _ in range(200)} == {0, 1}
    assert {int(next_token(logits, 1.0, top_p=0.5, generator=g)) for _ in range(50)} == {0}
    assert {int(next_token(logits, 1.0, top_k=1, generator=g)) for _ in range(50)} == {0}
    # tied logits (bf16 models tie often): exactly k tokens, the lowest ids first, as argmax picks; top-k 1 is greedy
    tied = torch.tensor([[1.0, 2.0, 2.0, 2.0, 0.5]], dtype=torch.bfloat16)
    assert {int(next_token(tied, 1.0, top_k=1, generator=g)) for _ in range(50)} == {1} == {int(tied.argmax())}
    assert {int(next_token(tied, 1.0, top_k=2, generator=g)) for _ in range(200)} == {1, 2}
    assert {int(next_token(tied, 1.0, top_k=4, generator=g)) for _ in range(400)} == {0, 1, 2, 3}
    assert {int(next_token(tied, 1.0, top_p=0.1, generator=g)) for _ in range(50)} == {1}


def test_a_draw_is_torch_multinomials_draw_without_waiting_for_the_device():
    """`draw` samples as torch.multinomial does, the same token for the same generator state (its checks of the
    probabilities, which wait for a GPU, left out), at the frequencies the probabilities give."""
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.0, 0.0, 1.0, 0.0]])
    mine, theirs = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    drawn = torch.stack([draw(probs, mine) for _ in range(4000)])
    reference = torch.stack([torch.multinomial(probs, 1, generator=theirs).squeeze(-1) for _ in range(4000)])
    assert torch.equal(drawn, reference)
    assert (drawn[:, 1] == 2).all()
    freq = torch.bincount(drawn[:, 0], minlength=4) / 4000
    assert torch.allclose(freq, probs[0], atol=0.03)


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_a_model_whose_output_is_not_a_number_says_so(tok, temperature):
    broken = gemma3.Gemma3(gemma3.Gemma3Config.from_preset("tiny")).eval()
    with torch.no_grad():
        broken.blocks[0].ffn.down.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="not a number"):
        gemma3.generate(broken, tok, "Once upon a time", max_new_tokens=4, temperature=temperature)


@pytest.fixture(scope="module")
def greedy(model, tok):
    return gemma3.generate(model, tok, "Once upon a time", max_new_tokens=6, temperature=0)


def test_unlimited_sampling_is_not_greedy(model, tok, greedy):
    """Guards the next test: at this temperature, free sampling leaves the greedy path."""
    free = {gemma3.generate(model, tok, "Once upon a time", max_new_tokens=6, temperature=1.5, seed=s)
            for s in (7, 8)}
    assert free != {greedy}


@pytest.mark.parametrize("kw", [dict(top_k=1), dict(top_p=1e-6)], ids=["top_k=1", "top_p tiny"])
def test_narrowest_sampling_equals_greedy(model, tok, greedy, kw):
    sampled = gemma3.generate(model, tok, "Once upon a time", max_new_tokens=6, temperature=1.5, seed=7, **kw)
    assert sampled == greedy
