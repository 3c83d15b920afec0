"""Watching a model learn: per-token losses over a run's snapshots, and the head that copies names."""

import pytest
import torch

import explain
import gemma3
from explain.learning import (induction_scores, learning_figure, learning_text, losses_over_training,
                              token_losses)
from gemma3.defaults import DEMO_MODEL
from training import TrainConfig, snapshots, train
from training.data import prepare

STORY = ('Once upon a time, there was a little girl named Mia. Mia had a red kite. One day, Mia went to the park '
         'with her friend Leo. Leo said, "Mia, can I fly your kite?" Mia said yes. Leo and Mia')


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    data = tmp_path_factory.mktemp("data") / "builtin"
    prepare("builtin", data, builtin_stories=2000, progress=False)
    run = tmp_path_factory.mktemp("runs") / "run"
    cfg = TrainConfig.for_preset("tiny", data=str(data), out=str(run), batch_size=4, seq_len=32, max_steps=50,
                                 eval_every=25, eval_windows=4, sample_tokens=2)
    assert train(cfg) == 0
    return run


def snapshot_cache(budget=None):
    """The app's model cache (webapp.models.ModelCache), on random tiny weights: snapshots load through it."""
    from webapp import models

    return models.ModelCache(*models.load_source(models.RANDOM), budget=budget)


def test_the_loss_table_equals_each_snapshots_own_loss(run):
    found = snapshots.snapshots(run)
    models = [(snapshots.read(p)["step"], gemma3.load_model(p, device="cpu", dtype=torch.float32)[0]) for p in found]
    tok = gemma3.gpt2_tokenizer()
    ids = tok.encode("Once upon a time, there was a little girl named Lily. Lily liked to play.")
    steps, table = losses_over_training(models, ids)
    assert steps == [0, 1, 2, 5, 10, 20, 25, 50] and table.shape == (len(steps), len(ids) - 1)
    x, y = torch.tensor([ids[:-1]]), torch.tensor([ids[1:]])
    for (step, model), row in zip(models, table):
        with torch.no_grad():  # the model's own training loss (gemma3/loss.py) is the mean of the row
            assert row.mean().item() == pytest.approx(model(x, targets=y).item(), rel=1e-5), step
    assert table[-1].mean() < table[0].mean() - 2  # it learned
    first, last = models[0][1], models[-1][1]
    assert not torch.allclose(first(x), last(x))  # two steps, two models
    labels = [f"{i}: {t}" for i, t in enumerate(ids)]
    fig = learning_figure(steps, table, labels)
    assert torch.equal(torch.tensor(fig.data[0].z), table)  # the picture is the table


def test_the_trained_model_has_a_head_that_copies_names_and_random_weights_do_not():
    model, tok = gemma3.load_model(DEMO_MODEL, device="cpu", dtype=torch.float32)
    scores = induction_scores(explain.record(model, tok, STORY))
    random = induction_scores(explain.record(gemma3.Gemma3(model.config), tok, STORY))
    assert scores.shape == (model.config.layers, model.config.heads)
    assert scores.max() > 0.3 and scores.max() > 4 * random.max(), (scores.max(), random.max())
    layer, head = divmod(int(scores.argmax()), scores.shape[1])
    text = learning_text([0, 100], torch.ones(2, 3), scores, model.config.layer_types)
    assert f"layer {layer} ({model.config.layer_types[layer]}), head {head}" in text


def test_no_repeated_token_no_induction_claim():
    model, tok = gemma3.load_model(DEMO_MODEL, device="cpu", dtype=torch.float32)
    rec = explain.record(model, tok, "One big dog")
    assert induction_scores(rec).max() == 0
    assert "repeat a name" in learning_text([0], torch.ones(1, 2), induction_scores(rec), model.config.layer_types)
    assert token_losses(model, rec.tokens).shape == (rec.seq_len - 1,)


def test_explore_over_training_lists_runs_steps_and_draws_the_table(run):
    from webapp.inputs import UserError
    from webapp.learning import Learning

    lrn = Learning(run.parent, snapshot_cache())
    assert [name for _, name in lrn.runs()] == [run.name]
    steps = lrn.steps(run.name)
    assert [label.split(" ·")[0] for label, _ in steps] == [f"step {s}" for s in (0, 1, 2, 5, 10, 20, 25, 50)]
    folder = steps[-1][1]
    assert folder == f"runs/{run.name}/snapshots/step_0000050", "a name, never a server path (issue 21 item 9)"
    assert lrn.run_of(folder) == run.name and lrn.run_of(str(run / "best")) == run.name
    assert lrn.run_of("random:tiny") is None and lrn.snapshot(run.name, folder) == folder
    with pytest.raises(UserError, match="Pick a step"):
        lrn.snapshot(run.name, str(run / "best"))
    with pytest.raises(UserError, match="Pick one of the runs with snapshots"):
        lrn.steps("../elsewhere")
    # "Explore this run" on a run without snapshots says so (app.py), never opens another run instead
    from webapp.ui.over_training import OverTraining

    over = OverTraining(lrn, *[None] * 7)
    assert over.choose("no-snapshots-run")[0]["value"] == run.name  # the sub-tab's own pick: the newest run
    assert over.choose("no-snapshots-run", exact=True)[1]["value"] is None
    assert over.choose(run.name, exact=True)[1]["value"] == folder

    prompt = "Once upon a time, there was a girl named Lily. Lily liked to play."
    heat, scores, words = lrn.table(prompt, run.name)
    assert lrn.table(prompt, run.name)[0] is heat  # cached
    tok = gemma3.gpt2_tokenizer()
    ids = tok.encode(prompt)
    # each snapshot as the model bar loads it (in bf16 where the CPU computes it natively), and that is exact
    # enough: within 0.05 nats of fp32 for every token
    want = torch.stack([token_losses(gemma3.load_model(lrn.path(p))[0], ids) for _, p in steps])
    torch.testing.assert_close(torch.tensor(heat.data[0].z), want)
    fp32 = torch.stack([token_losses(gemma3.load_model(lrn.path(p), dtype=torch.float32)[0], ids) for _, p in steps])
    torch.testing.assert_close(torch.tensor(heat.data[0].z), fp32, atol=0.05, rtol=0)
    cfg = gemma3.Gemma3Config.from_preset("tiny")
    assert "steps 0 to 50" in words and torch.tensor(scores.data[0].z).shape == (cfg.layers, cfg.heads)


def test_a_head_is_named_only_when_it_copies_more_than_even_attention_would():
    from explain.learning import even_share

    model, tok = gemma3.load_model(DEMO_MODEL, device="cpu", dtype=torch.float32)
    random = gemma3.Gemma3(model.config)
    rec = explain.record(random, tok, STORY)
    text = learning_text([0], torch.ones(1, 2), induction_scores(rec), model.config.layer_types, even_share(rec))
    assert "No head copies yet" in text and "head 0" not in text
    rec = explain.record(model, tok, STORY)
    text = learning_text([0], torch.ones(1, 2), induction_scores(rec), model.config.layer_types, even_share(rec))
    assert "the strongest is layer" in text


def test_two_steps_side_by_side(run):
    from webapp.learning import Learning

    lrn = Learning(run.parent, snapshot_cache())
    steps = lrn.steps(run.name)
    prompt = "Once upon a time, there was a girl named Lily."
    fig = lrn.compare(prompt, run.name, steps[0][1], steps[-1][1])
    tok = gemma3.gpt2_tokenizer()
    ids = tok.encode(prompt)
    for trace, (_, folder) in zip(fig.data[:2], (steps[0], steps[-1])):
        model = gemma3.load_model(lrn.path(folder))[0]   # as the model bar loads it
        torch.testing.assert_close(torch.tensor(trace.y), token_losses(model, ids))
    assert [t.name for t in fig.data[:2]] == ["step 0", "step 50"] and len(fig.data) == 4
    # the next-token axes read in significant figures: step 0's probabilities are all far below 1%, which a
    # whole-percent format would label "0%" at every tick
    assert max(fig.data[2].x) < 0.01
    for axis in (fig.layout.xaxis2, fig.layout.xaxis3):
        assert axis.tickformat == ".2~p"
    assert "What changed from step 0 to step 50" in fig.layout.title.text
    backwards = lrn.compare(prompt, run.name, steps[-1][1], steps[0][1])   # the later step picked first
    assert "What changed from step 0 to step 50" in backwards.layout.title.text, "the two steps read forward in time"


def test_a_new_prompt_loads_no_snapshot_again(run):
    """Issue 22 item 6: the run's snapshots load once, into the app's model cache (counted in its memory budget,
    shared with the model bar): a new prompt, a comparison and "Look inside at this step" load none again."""
    from webapp import models
    from webapp.learning import Learning

    cache = snapshot_cache()
    lrn = Learning(run.parent, cache)
    steps = lrn.steps(run.name)
    lrn.table("Once upon a time, there was a girl named Lily. Lily liked to play.", run.name)
    assert cache.loads == len(steps) == 8
    assert cache.bytes == sum(models.model_bytes(e.model) for e in map(cache.get, cache.sources()))
    lrn.table("One day, a boy named Tom found a ball. Tom", run.name)
    lrn.compare("Tom and Lily", run.name, steps[0][1], steps[-1][1])
    bar = cache.get(models.check_source(steps[3][1], models.allowed_roots(run.parent), run.parent))
    assert cache.loads == 8, "no snapshot loaded twice"
    assert bar.info.name == f"run {run.name} at step 5", "the model bar's load is the table's"


def test_a_run_larger_than_the_memory_budget_stays_inside_it(run):
    """Issue 22 item 6: with room for three snapshots, the table still covers the run, the cache never holds
    more than its budget, and a new prompt reloads only the snapshots that did not fit."""
    from webapp import models
    from webapp.learning import Learning

    cache = snapshot_cache()
    snap = models.model_bytes(gemma3.load_model(run / "snapshots" / "step_0000000")[0])
    cache.budget = cache.default.bytes + 3 * snap
    lrn = Learning(run.parent, cache)
    heat = lrn.table("Once upon a time, there was a girl named Lily. Lily liked to play.", run.name)[0]
    assert len(heat.data[0].y) == 8 and cache.loads == 8 and cache.bytes <= cache.budget
    lrn.table("One day, a boy named Tom found a ball. Tom", run.name)
    assert cache.loads == 8 + 5 and cache.bytes <= cache.budget, "the three in memory were not loaded again"


def test_one_table_runs_at_most_max_snapshots_and_max_tokens(run, monkeypatch):
    """Issue 22 item 6: the work one request asks for is bounded: at most MAX_SNAPSHOTS snapshots (spread over
    the run, its first and last in, said in words) on the prompt's last MAX_TOKENS tokens."""
    from webapp import learning as wl

    monkeypatch.setattr(wl, "MAX_SNAPSHOTS", 3)
    cache = snapshot_cache()
    heat, _, words = wl.Learning(run.parent, cache).table("Once upon a time, Lily played. " * 40, run.name)
    assert list(heat.data[0].y) == ["step 0", "step 10", "step 50"] and cache.loads == 3
    assert len(heat.data[0].x) == wl.MAX_TOKENS - 1
    assert "The run has 8 snapshots; the table shows 3 of them" in words
