"""gemma3/loss.py: the training loss, computed a chunk of rows at a time with its gradient, gives what
F.cross_entropy over the full logits gives: the same loss, the same gradients, NaN when the logits are.

The reference is plain PyTorch autograd through `F.cross_entropy(logits.float(), targets)`, which is
what transformers' Gemma3ForCausalLM(labels=...) computes. Each case runs with the C++ pass of
gemma3/runtime/loss.cpp where it builds and with the PyTorch code (`kernel` on / off)."""

import pytest
import torch
import torch.nn.functional as F

import gemma3
from gemma3 import loss
from gemma3.runtime import native
from conftest import random_ids


@pytest.fixture(params=["kernel", "pytorch"])
def path(request, monkeypatch):
    if request.param == "pytorch":
        monkeypatch.setitem(native._loaded, "loss.cpp", False)
    elif not native.load("loss.cpp"):
        pytest.skip("the C++ kernels do not build here")
    return request.param


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(loss, "CHUNK_ELEMENTS", 7 * 1000)  # 7 rows of a 1000-word vocab: ragged chunks


def reference(h, w, t):
    return F.cross_entropy(F.linear(h, w).float(), t)


def grads(fn, h, w, t):
    h, w = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    value = fn(h, w, t)
    value.backward()
    return value.detach(), h.grad, w.grad


def test_loss_and_gradients_equal_full_logits_cross_entropy(path, small_chunks):
    g = torch.Generator().manual_seed(0)
    h, w = torch.randn(45, 32, generator=g), torch.randn(1000, 32, generator=g)
    t = torch.randint(0, 1000, (45,), generator=g)
    got, want = grads(loss.cross_entropy, h, w, t), grads(reference, h, w, t)
    torch.testing.assert_close(got[0], want[0], rtol=1e-6, atol=1e-6)
    for a, b in zip(got[1:], want[1:]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    with torch.no_grad():  # no gradient wanted: the loss alone
        torch.testing.assert_close(loss.cross_entropy(h, w, t), want[0], rtol=1e-6, atol=1e-6)


def test_under_bf16_autocast_it_matches_autocast_autograd(path, small_chunks):
    g = torch.Generator().manual_seed(1)
    h, w = torch.randn(30, 64, generator=g), torch.randn(1000, 64, generator=g) * 0.3
    t = torch.randint(0, 1000, (30,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = grads(loss.cross_entropy, h, w, t), grads(reference, h, w, t)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
    for a, b in zip(got[1:], want[1:]):  # bf16 products, summed in another order
        assert a.dtype == b.dtype == torch.float32
        assert (a - b).abs().max() <= 1e-2 * b.abs().max()


def test_non_finite_logits_give_a_non_finite_loss_and_gradient(path):
    """What the trainer checks to skip an update."""
    g = torch.Generator().manual_seed(0)
    h, w = torch.randn(4, 8, generator=g), torch.randn(100, 8, generator=g)
    h[:, 3] = 1.0  # so an infinite weight makes +inf logits (with h[:, 3] < 0 in every row, -inf is a finite loss)
    for bad in (float("nan"), float("inf")):
        w[17, 3] = bad
        value, gh, gw = grads(loss.cross_entropy, h, w, torch.tensor([1, 2, 3, 4]))
        assert not value.isfinite() and not gh.isfinite().all() and not gw.isfinite().all()


def test_the_model_trains_on_it_with_the_gradients_of_its_logits(path, small_chunks):
    """Gemma3.forward(ids, targets=...) against the logits' cross-entropy: the tied embedding gets the
    head's gradient and the lookup's; every parameter's gradient agrees."""
    torch.manual_seed(0)
    cfg = gemma3.Gemma3Config.from_preset("tiny", vocab_size=1000)
    a, b = gemma3.Gemma3(cfg), gemma3.Gemma3(cfg)
    b.load_state_dict(a.state_dict())
    ids = random_ids(2, 21, vocab=1000)
    x, y = ids[:, :-1], ids[:, 1:]
    value = a(x, targets=y)
    value.backward()
    ref = F.cross_entropy(b(x).float().flatten(0, 1), y.flatten())
    ref.backward()
    torch.testing.assert_close(value, ref, rtol=1e-6, atol=1e-6)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.skipif(not native.load("loss.cpp"), reason="the C++ kernels do not build here")
def test_the_kernel_rows_are_softmax_minus_one_hot():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(5, 50257, generator=g) * 4  # the GPT-2 vocabulary: a ragged tail past the 16 lanes
    t = torch.tensor([0, 50256, 7, 7, 30000])
    out = x.clone()
    rows = torch.ops.gemma3_loss.softmax_xent_(out, t)
    want = torch.softmax(x.double(), -1)
    want[torch.arange(5), t] -= 1
    assert (out.double() - want).abs().max() < 1e-7
    torch.testing.assert_close(rows.double(), torch.logsumexp(x.double(), -1) - x.double()[torch.arange(5), t],
                               rtol=1e-6, atol=1e-5)


def test_a_target_outside_the_vocabulary_is_an_error_not_a_stray_write(path):
    """Issue 21 item 10: an id past either end of the vocabulary (there is no ignore index, so -100 too)
    is one IndexError naming it, with or without a gradient, on either path."""
    h, w = torch.randn(3, 8, requires_grad=True), torch.randn(100, 8)
    for bad in (100, -1, -5, -100):
        with pytest.raises(IndexError, match=rf"target token id {bad} is outside the vocabulary \[0, 100\)"):
            loss.cross_entropy(h, w, torch.tensor([1, bad, 2]))
        with torch.no_grad(), pytest.raises(IndexError, match=f"target token id {bad} "):
            loss.cross_entropy(h, w, torch.tensor([bad, 1, 2]))


@pytest.mark.skipif(not native.load("loss.cpp"), reason="the C++ kernels do not build here")
def test_the_kernel_refuses_a_target_outside_the_vocabulary_before_writing():
    """Issue 21 item 10: the operator called directly checks its targets itself: a target of V or -5 is an
    IndexError and the logits are left as they were (these targets would land in a neighbouring row)."""
    x = torch.randn(3, 1000)
    for bad, targets in ((1000, [1000, 1, 2]), (-5, [0, 1, -5])):
        out = x.clone()
        with pytest.raises(IndexError, match=rf"target {bad} \(row .\) is outside the vocabulary"):
            torch.ops.gemma3_loss.softmax_xent_(out, torch.tensor(targets))
        assert torch.equal(out, x)
