"""The guided tour's steps (webapp/ui/tour.py): seven short cards through one prompt, each naming numbers the page
can fill in, each pointing at an element of the app by its elem_id. The tour in a browser: test_browser_tour.py."""

import re

from explain import walkthrough as wt
from webapp import models
from webapp.ui import tour

FACT = re.compile(r"\{(\w+)\}")


def test_the_tour_goes_from_tokens_to_training_in_seven_steps():
    tabs = [s.tabs for s in tour.STEPS]
    assert tabs == [("explore", "walk"), ("explore", "walk"), ("explore", "attention"), ("explore", "walk"),
                    ("explore", "next"), ("generate",), ("train",)]
    assert [s.stage for s in tour.STEPS if s.stage] == ["ids", "embed", "act"]
    assert all(s.stage in wt.WALK_STAGES for s in tour.STEPS if s.stage), "each stage is a box of the diagram"
    for s in tour.STEPS:
        assert all(t.startswith("#") for t in s.targets), f"{s.title}: elements are found by their elem_id"
        if s.stage:
            assert f"#wt-box-{s.stage}" in s.targets, f"{s.title}: its box in the diagram is outlined too"


def test_every_card_is_short_and_every_number_comes_from_the_model():
    loaded = models.ModelCache(*models.load_source("random:tiny")).default
    facts = tour.facts(loaded)
    c = loaded.model.config
    assert facts["hidden"] == c.hidden and facts["layers"] == c.layers and facts["window"] == c.window
    assert facts["full"] == c.layer_types.count("full") and facts["vocab"] == f"{c.vocab_size:,}"
    assert facts["sqrt_hidden"] == f"{c.hidden ** 0.5:.1f}" and facts["params"].endswith("M")
    assert 1 < facts["tokens"] <= c.context
    for s in tour.STEPS:
        sentences = len(re.findall(r"[.!?](\s|$)", s.text))
        assert 2 <= sentences <= 4 and len(s.text) <= 480, f"{s.title}: two to four plain sentences"
        missing = set(FACT.findall(s.text)) - set(facts)
        assert not missing, f"{s.title} names numbers nobody fills in: {missing}"
        assert "{" not in FACT.sub("", s.text), f"{s.title}: a stray brace"


def test_the_prompt_is_quoted_by_its_first_words():
    assert tour.short("Once upon a time") == "Once upon a time"
    assert tour.short("Once upon a time, in a small house near the woods, there lived") == \
        "Once upon a time, in a small house near…"
    assert len(tour.short("word " * 50)) <= 43


def test_the_attention_step_says_what_a_short_prompt_shows_and_names_a_control_it_outlines():
    """Issue: step 3 said a sliding layer sees only the last 64 tokens and "move the Layer slider to compare", on a
    19-token prompt where sliding and full layers look alike, with the slider out of view. Now its words fit the
    prompt's length against the window, and the slider it names is one of the step's outlined elements."""
    step = next(s for s in tour.STEPS if s.tabs == ("explore", "attention"))
    assert "{window_note}" in step.text and "#attention-layer" in step.targets
    short, long = tour.window_note(19, 64), tour.window_note(100, 64)
    assert "19 tokens fit inside the window" in short and "look alike" in short and "Layer slider" in short
    assert "100 tokens overflow the window" in long and "Layer slider" in long
    assert tour.window_note(64, 64) == tour.WINDOW_NOTES[0].format(tokens=64, window=64), "64 of 64: all seen"
    loaded = models.ModelCache(*models.load_source("random:demo")).default
    facts = tour.facts(loaded)
    assert facts["tokens"] <= facts["window"]
    assert facts["window_note"] == tour.window_note(facts["tokens"], facts["window"])
    # the page computes the note again for the visitor's prompt and model, from the same two sentences
    assert "props.notes[" in tour.SCRIPT and all("{tokens}" in n for n in tour.WINDOW_NOTES)
