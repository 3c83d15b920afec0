"""On a GPU: the model, the cache, loading, generation and the trainer do there what they do on a CPU.

Skipped where no CUDA device is visible (CI has none). References are the same as on the CPU:
transformers' eager Gemma 3 on the same GPU, the full forward pass for the cache, an uninterrupted
run for a resumed one. GPU reductions run in another order than the CPU's, so fp32 tolerances are
1e-4 where the CPU tests use 1e-5.
"""

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from conftest import TINY_HF, random_ids

import gemma3
from gemma3.defaults import DEMO_MODEL

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible")

W = TINY_HF["sliding_window"]
GPU = torch.device("cuda")


@pytest.fixture(autouse=True)
def plain_fp32():
    """fp32 matrix products in full fp32 (no TF32), as PyTorch's default; asserted, not assumed."""
    assert not torch.backends.cuda.matmul.allow_tf32


@torch.no_grad()
def logits_of(model, ids):
    out = model(ids.to(GPU))
    return getattr(out, "logits", out).float()


@pytest.fixture(scope="module")
def pair(hf_tiny):
    """(transformers model, our model), fp32, same weights, on the GPU."""
    from transformers import AutoModelForCausalLM

    _, path = hf_tiny
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").to(GPU).eval()
    ours, _ = gemma3.load_model(path, device=GPU, dtype=torch.float32)
    return hf, ours


@pytest.mark.parametrize("length", [W - 3, W + 1, 5 * W])
def test_fp32_logits_on_the_gpu_match_transformers(pair, length):
    hf, ours = pair
    ids = random_ids(2, length, seed=length)
    torch.testing.assert_close(logits_of(ours, ids), logits_of(hf, ids), atol=1e-4, rtol=0)


def test_bf16_on_the_gpu_is_as_close_to_fp32_as_transformers_bf16(hf_tiny, pair):
    """load_model picks bf16 on a GPU; its logits lose no more than transformers' bf16 model does."""
    from transformers import AutoModelForCausalLM

    hf32, _ = pair
    _, path = hf_tiny
    ours, _ = gemma3.load_model(path, device="cuda")
    assert ours.embed.weight.dtype == torch.bfloat16 and ours.embed.weight.is_cuda
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, attn_implementation="eager").to(GPU).eval()
    ids = random_ids(2, 5 * W, seed=2)
    exact, a, b = logits_of(hf32, ids), logits_of(ours, ids), logits_of(hf, ids)
    assert (a - exact).abs().mean() < 1.25 * (b - exact).abs().mean()
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() >= 0.8


@pytest.mark.parametrize("prefill", [1, W + 3])
def test_gpu_decoding_equals_the_full_forward(pair, prefill):
    """Token by token through four ring wrap-arounds of the sliding layers' cache."""
    _, ours = pair
    ids = random_ids(2, 4 * W + 3, seed=prefill).to(GPU)
    cache = ours.new_cache(2, ids.shape[1])
    with torch.no_grad():
        parts = [ours(ids[:, :prefill], cache=cache)]
        parts += [ours(ids[:, t:t + 1], cache=cache) for t in range(prefill, ids.shape[1])]
        full = ours(ids)
    assert cache.layers[0].k.is_cuda
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-4, rtol=0)


def test_greedy_generation_on_the_gpu_matches_transformers(pair):
    """fp32 greedy decoding with the cache: the same 40 tokens as transformers' generate."""
    hf, ours = pair
    prompt = random_ids(1, 5, seed=9).to(GPU)
    want = hf.generate(prompt, max_new_tokens=40, do_sample=False)[0, 5:].tolist()
    got = list(gemma3.generate_tokens(ours, prompt[0].tolist(), max_new_tokens=40, temperature=0))
    assert got == want


def test_the_demo_model_writes_the_same_story_on_the_gpu(tmp_path):
    """The bundled model, bf16 on the GPU, agrees with fp32 on the CPU on the next-token choices of a story."""
    cpu, tok = gemma3.load_model(DEMO_MODEL, device="cpu", dtype=torch.float32)
    gpu, _ = gemma3.load_model(DEMO_MODEL, device="cuda")
    assert gpu.embed.weight.dtype == torch.bfloat16
    ids = torch.tensor([tok.encode("Once upon a time, there was a little girl named Lily. She loved to play")])
    with torch.no_grad():
        a, b = cpu(ids), gpu(ids.to(GPU)).float().cpu()
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() >= 0.9
    text = gemma3.generate(gpu, tok, "Once upon a time", max_new_tokens=30, temperature=0)
    assert len(tok.encode(text)) >= 10


# ---- decoding as CUDA graphs (gemma3/runtime/graphs.py) ---------------------------------------------

@pytest.mark.parametrize("mode", ["graph", "compile", "eager"])
def test_every_gpu_decode_mode_gives_the_reference_tokens(pair, mode, monkeypatch):
    """The fixed-shape step, replayed as a CUDA graph (or compiled, or eager): 60 greedy fp32 tokens, the
    sliding layers' ring wrapping seven times, equal to the reference forward's tokens and transformers', in the
    main thread and in a worker thread (as the web app runs a generation, its tokens from several threads)."""
    hf, ours = pair
    monkeypatch.setenv("GEMMA3_GPU_DECODE", mode)
    prompt = random_ids(1, 5, seed=10).to(GPU)
    want = hf.generate(prompt, max_new_tokens=60, do_sample=False)[0, 5:].tolist()
    reference = list(gemma3.generate_tokens(ours, prompt[0].tolist(), max_new_tokens=60, temperature=0,
                                            use_engine=False))
    tokens = gemma3.generate_tokens(ours, prompt[0].tolist(), max_new_tokens=60, temperature=0)
    got = [next(tokens) for _ in range(30)]
    with ThreadPoolExecutor(1) as worker:  # the rest of the same generation in another thread
        got += worker.submit(list, tokens).result()
    assert got == reference == want


def test_the_demo_model_samples_the_same_story_as_a_graph_and_eagerly(monkeypatch):
    """bf16, sampling on the device with a seed: the graph replays exactly the eager step's kernels, so the
    same seed gives the same story; a stream stopped half way leaves the next generation as it would be."""
    gpu, tok = gemma3.load_model(DEMO_MODEL, device="cuda")
    settings = dict(max_new_tokens=80, temperature=0.8, top_k=40, seed=3)
    monkeypatch.setenv("GEMMA3_GPU_DECODE", "eager")
    eager = gemma3.generate(gpu, tok, "Once upon a time", **settings)
    monkeypatch.setenv("GEMMA3_GPU_DECODE", "graph")
    stopped = gemma3.stream(gpu, tok, "Once upon a time", **settings)
    first = [next(stopped) for _ in range(3)]
    stopped.close()
    assert eager.startswith("".join(first))
    stats = {}
    assert gemma3.generate(gpu, tok, "Once upon a time", stats=stats, **settings) == eager
    assert stats["tokens_per_s"] > 0


# ---- training ---------------------------------------------------------------------------------------

SMALL = dict(preset="tiny", batch_size=8, seq_len=64, eval_windows=8, sample_tokens=8, log_every=1, device="cuda")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from training.data import prepare

    out = tmp_path_factory.mktemp("data") / "builtin"
    prepare("builtin", out, builtin_stories=2000, progress=False)
    return out


def train_records(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == "train"]


def test_training_on_the_gpu_learns_in_bf16(data, tmp_path):
    from training import TrainConfig, train

    run = tmp_path / "run"
    cfg = TrainConfig.for_preset(**dict(SMALL, data=str(data), out=str(run), max_steps=120, eval_every=60,
                                        ckpt_every=60, log_every=10))
    assert train(cfg) == 0
    losses = [r["loss"] for r in train_records(run)]
    assert losses[-1] < 0.6 * losses[0], losses
    last = train_records(run)[-1]
    assert last["mfu"] > 0 and last["tokens_per_s"] > 0
    model, tok = gemma3.load_model(run / "checkpoints" / "step_0000120", device="cuda")
    assert gemma3.generate(model, tok, "Once upon a time", max_new_tokens=10, temperature=0)


def test_a_resumed_gpu_run_logs_the_losses_of_an_uninterrupted_one(data, tmp_path, monkeypatch):
    from training import TrainConfig, train
    from training import trainer as train_module

    common = dict(SMALL, data=str(data), max_steps=10, eval_every=100, ckpt_every=100)
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert train(TrainConfig.for_preset(**common, out=str(straight))) == 0
    cfg = TrainConfig.for_preset(**common, out=str(stopped))
    original = train_module.Trainer._stop_now
    with monkeypatch.context() as m:
        m.setattr(train_module.Trainer, "_stop_now", lambda self: self.step == 4 or original(self))
        assert train(cfg) == 0
    assert train(cfg, resume=True) == 0
    want = {r["step"]: r["loss"] for r in train_records(straight)}
    got = {r["step"]: r["loss"] for r in train_records(stopped)}
    assert sorted(got) == list(range(1, 11))
    assert got == want


def test_compiled_gpu_training_follows_eager(data, tmp_path):
    from training import TrainConfig, train

    common = dict(SMALL, data=str(data), max_steps=6, eval_every=100, ckpt_every=100)
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    assert train(TrainConfig.for_preset(**common, out=str(eager))) == 0
    assert train(TrainConfig.for_preset(**common, out=str(compiled), compile=True)) == 0
    a = [r["loss"] for r in train_records(eager)]
    b = [r["loss"] for r in train_records(compiled)]
    assert b == pytest.approx(a, rel=2e-2)


# ---- the training step on a GPU: FlexAttention, compiling, no host sync ---------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_flex_sliding_attention_equals_sdpa_with_the_mask_forward_and_gradients(dtype):
    """gemma3/runtime/flex.py's compiled FlexAttention against the core's SDPA with the sliding mask, at the 270m
    preset's head shapes (4 query heads sharing one key-value head of 256), a length that is not a multiple of
    FlexAttention's blocks: the output and the gradients of q, k and v. fp32: equal to rounding; bf16: no further
    from the fp32 result than SDPA's own bf16 result is (twice as far at most)."""
    from gemma3.model import attend, sliding_mask
    from gemma3.runtime import flex

    B, H, KV, D, W = 2, 4, 1, 256, 128
    T = 4 * W + 17
    g = torch.Generator(device=GPU).manual_seed(0)
    exact = [torch.randn(B, h, T, D, device=GPU, generator=g) for h in (H, KV, KV)]
    grad = torch.randn(B, H, T, D, device=GPU, generator=g)
    pos = torch.arange(T, device=GPU)
    mask = sliding_mask(pos, pos, W)

    def run(fn, dtype):
        q, k, v = (t.to(dtype).requires_grad_() for t in exact)
        out = fn(q, k, v, mask, 0.0625)
        return [out.float(), *(t.float() for t in torch.autograd.grad(out, (q, k, v), grad.to(dtype)))]

    got, want = run(flex.sliding_attend(W, T, GPU), dtype), run(attend, dtype)
    if dtype == torch.float32:
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)
    else:
        ref = run(attend, torch.float32)
        for name, a, b, r in zip(("out", "dq", "dk", "dv"), got, want, ref):
            assert (a - r).abs().mean() <= 2 * (b - r).abs().mean() + 1e-4, name


def _tiny_step(compile, dtype=None, seed=0):
    from training.step import TrainStep, adamw

    torch.manual_seed(seed)
    model = gemma3.Gemma3(gemma3.Gemma3Config.from_preset("tiny")).to(GPU)
    step = TrainStep(model, grad_clip=1.0, amp_dtype=dtype, compile=compile, seq_len=64, device=GPU)
    return model, step, adamw(model, 1e-3, (0.9, 0.95), 0.1, GPU)


def _batches(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 50257, (8, 65), generator=g) for _ in range(n)]


def test_the_compiled_train_step_follows_the_eager_one_and_neither_waits_for_the_host():
    """training/step.py compiled (FlexAttention in the sliding layers: 64 tokens over a window of 8; the loss's rows
    compiled) against eager (SDPA with the mask), fp32: the same losses and gradient norms over four steps, to fp32
    rounding (weights are not compared: Adam turns a rounding difference in a near-zero gradient into a full step).
    Then, warm, two more steps of each (batches from the CPU, as the trainer's) under CUDA's sync debug mode set
    to error: nothing in a step (loss, clipping, the skip of a non-finite update, the tally) makes the host wait."""
    _, e_step, e_opt = _tiny_step(compile=False)
    compiled, c_step, c_opt = _tiny_step(compile=True)
    assert c_step.flex_layers == 6 and e_step.flex_layers == 0
    batches = [[(ids[:, :-1].contiguous(), ids[:, 1:].contiguous())] for ids in _batches(6)]  # as the trainer's
    for batch in batches[:4]:
        a, b = e_step(e_opt, batch, 1e-3), c_step(c_opt, batch, 1e-3)
        torch.testing.assert_close(b[0], a[0], atol=0, rtol=1e-3)
        torch.testing.assert_close(b[1], a[1], atol=0, rtol=1e-2)
    assert not any(getattr(blk.attn.attend, "flex", False) for blk in compiled.blocks)  # only during the step
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for batch in batches[4:]:
            e_step(e_opt, batch, 1e-3)
            c_step(c_opt, batch, 1e-3)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for step in (e_step, c_step):
        r = step.read()
        assert r.loss > 0 and r.skipped == 0


def test_the_compiled_loss_rows_equal_the_eager_ones():
    """gemma3/runtime/gpu_loss.py against gemma3/loss.py's own PyTorch row pass on CUDA rows of fp32 and bf16 (a full
    chunk of the GPT-2 vocabulary and a short one), and the whole loss with it installed against F.cross_entropy."""
    from gemma3 import loss
    from gemma3.runtime import gpu_loss

    g = torch.Generator(device=GPU).manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        for rows in (loss.CHUNK_ELEMENTS // 50257, 121):
            out = (torch.randn(rows, 50257, device=GPU, generator=g) * 4).to(dtype)
            targets = torch.randint(0, 50257, (rows,), device=GPU, generator=g)
            before = loss.use_rows_kernel(None)
            try:
                want, want_grad = loss.rows_grad(out.clone(), targets)
            finally:
                loss.use_rows_kernel(before)
            got, got_grad = gpu_loss.rows_grad(out, targets)
            assert got_grad.dtype == dtype
            torch.testing.assert_close(got, want, atol=0, rtol=1e-5)
            close = {"atol": 1e-7, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 1e-7, "rtol": 8e-3}  # 1 bf16 ulp
            torch.testing.assert_close(got_grad, want_grad, **close)
    h = torch.randn(3000, 64, device=GPU, generator=g, requires_grad=True)
    w = (torch.randn(50257, 64, device=GPU, generator=g) * 0.1).requires_grad_()
    y = torch.randint(0, 50257, (3000,), device=GPU, generator=g)
    before = loss._rows_kernel
    with gpu_loss.compiled_rows():
        got = loss.cross_entropy(h, w, y)
        got_grads = torch.autograd.grad(got, (h, w))
    assert loss._rows_kernel is before
    want = torch.nn.functional.cross_entropy(h @ w.t(), y)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    for a, b in zip(got_grads, torch.autograd.grad(want, (h, w))):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)