"""Generate -> Explore: a story's token opens the next-token view at the story's settings, the drawn token marked
(issue 23 item 5); an empty Explore prompt is said once (issue 23 item 1)."""

import pytest

import explain
from webapp import explore as ex, generation as gen, models


@pytest.fixture(scope="module")
def explorer():
    return ex.Explorer(models.ModelCache(*models.load_source("random:tiny")))


def test_story_token_opens_next_token_at_the_story_settings_with_the_drawn_token_marked(explorer):
    """Issue 23 item 5: the clicked token's view uses the story's temperature, top-k, top-p and penalty and marks
    the token the story drew, with its rank and probability."""
    s = gen.settings("Once upon a time", 8, 0.7, 40, 0.9, 1.2, 5)
    story = gen.story_state(s, [(" the", 0.5, 262), (" cat", 0.25, 3797)])
    before, token, sampling = gen.clicked_token(story, 1)
    assert before == "Once upon a time the" and token["id"] == 3797 and sampling == [0.7, 40, 0.9, 1.2]
    fig = explorer.next_token(before, *sampling, token)[0]
    title = fig.layout.title.text
    assert "temperature 0.7" in title and "top-k 40" in title and "top-p 0.9" in title and "penalty 1.2" in title
    assert "the story drew ␣cat, in green (rank" in title and "p = " in title
    bars = fig.data[0]
    assert 3797 in list(bars.customdata) and bars.marker.color[list(bars.customdata).index(3797)] != bars.marker.color[0]
    assert "drew" not in explorer.next_token(before + " and", *sampling, token)[0].layout.title.text, \
        "another prompt is not the story's: nothing marked"


def test_sampling_probs_follow_top_p_and_the_repetition_penalty():
    """Issue 23 item 5: the bars are the distribution the story sampled from."""
    import torch
    logits = torch.tensor([2.0, 1.0, 0.5, -1.0])
    p = explain.figures.sampling_probs(logits, 1.0, top_p=0.7)
    assert p[2] == 0 and p[3] == 0 and p[0] > p[1] > 0
    hit = explain.figures.sampling_probs(logits, 1.0, repetition_penalty=2.0, seen=[0, 0])
    assert hit[0] < logits.softmax(-1)[0] and hit[0] == pytest.approx(torch.tensor([1.0, 1, .5, -1]).softmax(-1)[0])


def test_an_empty_explore_prompt_is_refused_once():
    """Issue 23 item 1: the views "Look inside" redraws besides its own four keep quiet about a prompt it refuses."""
    assert not ex.prompt_ok("   ") and not ex.prompt_ok("") and ex.prompt_ok("Once")


def test_a_story_of_another_model_opens_with_nothing_marked():
    """A token of a story written before the visitor loaded another model opens on the model in the bar, which did
    not draw it: nothing is marked as the story's (and a warning says why); the same model, or a session that never
    loaded another (source None), keeps the mark."""
    import warnings

    from webapp.ui.generate import clicked

    s = gen.settings("Once upon a time", 8, 0.7, 40, 0.9, 1.2, 5)
    written_by = models.ModelInfo("bundled demo model", "assets/demo-model", 1, "cpu", "bf16", "", 8, 4, 1024, 64)
    story = gen.story_state(s, [(" the", 0.5, 262), (" cat", 0.25, 3797)], written_by)
    assert clicked(story, 1, None)[1]["id"] == 3797 and clicked(story, 1, "assets/demo-model")[1]["id"] == 3797
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # gr.Warning outside an event is a Python warning
        before, token, sampling = clicked(story, 1, "random:tiny")
    assert before == "Once upon a time the" and token is None and sampling == [0.7, 40, 0.9, 1.2]
