"""Sampling settings at their extremes: a temperature too small to divide by is greedy everywhere (library, CLI,
the app's Generate and Explore), and no setting that passes the checks gives NaN probabilities or an error while
sampling; what cannot be sampled with (NaN, infinity, a negative temperature) is refused in one sentence."""

import math

import pytest
import torch

import explain
import gemma3
from gemma3.__main__ import main
from gemma3.generation import GREEDY_BELOW, check_settings, next_token

TINY_TEMPERATURES = (1e-6, 1e-38, 1e-45)  # 1e-45: the smallest float; dividing by any of them overflowed before
LOGITS = torch.tensor([[3.0, 9.0, -2.0, 8.5]])


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = gemma3.Gemma3(gemma3.Gemma3Config.from_preset("tiny")).eval()
    with torch.no_grad():
        model.embed.weight.mul_(50)  # logits of a few units, as a trained model gives
    return model, gemma3.tokenizer.gpt2_tokenizer()


def test_a_temperature_too_small_to_divide_by_picks_the_most_likely_token():
    """Issue 21 item 7: any temperature below GREEDY_BELOW is greedy, never a NaN probability or an error."""
    for t in (0.0, *TINY_TEMPERATURES):
        for seed in range(3):
            g = torch.Generator().manual_seed(seed)
            assert next_token(LOGITS, t, generator=g).tolist() == [1], t
    assert GREEDY_BELOW <= 1e-5


def test_extreme_penalties_and_top_p_sample_without_nan():
    """Issue 21 item 7: a repetition penalty of 1e-38 or 1e38 and a top-p of 1e-45 pick tokens as their limits
    say (a huge boost, a huge penalty, only the most likely token) instead of failing on NaN probabilities."""
    g = torch.Generator().manual_seed(0)
    seen = torch.tensor([[False, True, False, False]])
    for t in (0.7, 0.0):  # penalty 1e-38 multiplies the seen token's positive logit by 1e38
        assert next_token(LOGITS, t, repetition_penalty=1e-38, seen=seen, generator=g).tolist() == [1]
    negative = torch.tensor([[-3.0, -9.0, -2.0, -8.5]])
    everything = torch.ones_like(seen)
    for rp in (1e38, 1e-38):  # every token seen: all saturate or all shrink to about 0
        picks = {next_token(negative, 0.7, repetition_penalty=rp, seen=everything, generator=g).item()
                 for _ in range(20)}
        assert picks <= {0, 1, 2, 3}
    assert next_token(LOGITS, 1.0, repetition_penalty=1e38, seen=seen, generator=g).item() in (0, 2, 3)
    for _ in range(10):
        assert next_token(LOGITS, 2.0, top_p=1e-45, generator=g).tolist() == [1]


@pytest.mark.parametrize("setting, value", [
    ("temperature", math.nan), ("temperature", math.inf), ("temperature", -1e-38), ("temperature", "hot"),
    ("top_p", 0.0), ("top_p", math.nan), ("top_p", 1.5),
    ("repetition_penalty", 0.0), ("repetition_penalty", math.inf), ("repetition_penalty", math.nan)])
def test_settings_that_cannot_be_sampled_with_are_one_sentence(setting, value):
    """Issue 21 item 7: refused at the boundary, naming the setting."""
    settings = dict(max_new_tokens=1, temperature=0.7, top_k=None, top_p=None, repetition_penalty=1.0)
    with pytest.raises(ValueError, match=f"^{setting} must be .*, not .*\\.$"):
        check_settings(**{**settings, setting: value})


def test_generate_with_a_tiny_temperature_is_the_greedy_text(tiny):
    """Issue 21 item 7: gemma3.generate at temperature 1e-38 writes what greedy decoding writes."""
    model, tok = tiny
    greedy = gemma3.generate(model, tok, "Once upon a time", max_new_tokens=6, temperature=0)
    for t in TINY_TEMPERATURES:
        assert gemma3.generate(model, tok, "Once upon a time", max_new_tokens=6, temperature=t, seed=1) == greedy


def test_the_cli_treats_a_tiny_temperature_as_greedy_and_refuses_infinity(tiny, tmp_path, capsys):
    """Issue 21 item 7: `python -m gemma3 generate --temperature 1e-38` prints the greedy story (it printed a
    traceback); `--temperature inf` or `nan` is one error line and exit status 2. A stop string met ends the story
    with the summary line (it ended in a KeyError)."""
    folder = gemma3.save_model(*tiny, tmp_path / "tiny-model")
    args = ["generate", "--model", str(folder), "--device", "cpu", "--prompt", "Once", "--max-new-tokens", "5"]

    def run(temperature):
        rc = main([*args, "--temperature", temperature])
        return rc, capsys.readouterr()

    rc, greedy = run("0")
    assert rc == 0
    assert main([*args, "--temperature", "0", "--top-k", "0"]) == 0, "top-k 0 is off, as the app's slider says"
    assert capsys.readouterr().out == greedy.out
    new = greedy.out[len("Once"):-1]   # a stop string met: the story cut before it, and the usual summary line
    stop = new.strip()[-1]
    assert main([*args, "--temperature", "0", "--stop", stop]) == 0
    cut = capsys.readouterr()
    assert cut.out == "Once" + new[:new.index(stop)] + "\n" and "stopped on stop string]" in cut.err, cut
    rc, tiny_t = run("1e-38")
    assert rc == 0 and tiny_t.out == greedy.out
    for bad in ("inf", "nan", "-1"):
        rc, out = run(bad)
        assert rc == 2 and out.out == ""
        assert out.err.strip().splitlines()[-1].startswith("error: temperature must be"), bad
        assert "Traceback" not in out.err


def test_the_app_generates_greedily_at_a_tiny_temperature():
    """Issue 21 item 7: the Generate tab's slider accepts 1e-38 (within 0-2); the story is the greedy one."""
    from webapp import generation, models

    cache = models.ModelCache(*models.load_source("random:tiny"))
    loaded = cache.get(None)

    def story(temperature):
        s = generation.settings("Once upon a time", 6, temperature, 0, 1.0, 1.0, 5)
        return list(generation.stream(loaded, s, {}))[-1]

    assert story(1e-38) == story(1e-45) == story(0.0)


def test_explore_shows_a_tiny_temperature_as_greedy(tiny):
    """Issue 21 item 7: the Explore tab's next-token view at temperature 1e-38 shows the greedy distribution
    (all on the most likely token), not NaN probabilities."""
    model, tok = tiny
    p = explain.figures.sampling_probs(LOGITS[0], 1e-38)
    assert p.tolist() == [0.0, 1.0, 0.0, 0.0]
    record = explain.record(model, tok, "Once upon a time")
    fig = explain.next_token_figure(record, temperature=1e-38)
    bars = fig.data[0]
    assert "(greedy)" in bars.name and max(bars.y) == 1.0 and all(math.isfinite(v) for v in bars.y)
