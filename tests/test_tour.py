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
