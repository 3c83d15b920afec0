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
