"""gemma3/runtime/engine: the CPU fast path gives what the reference model gives, stays out of the reference, is
safe under torch.compile, and builds its library only where nobody else can plant one."""

import ast
import copy
import logging
import os
import re
import select
import signal
import threading
from pathlib import Path

import pytest
import torch

import gemma3
from gemma3.runtime import engine, native
from gemma3.runtime.engine import ops
from gemma3.model import RMSNorm, RoPE

needs_kernels = pytest.mark.skipif(not (native.supported() and ops.available()),
                                   reason="needs an x86-64 CPU with AVX512-BF16 and a C++ compiler")
DTYPES = [torch.float32, torch.bfloat16]


def ulps(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest difference in units of the dtype's last place at b's magnitude."""
    eps = torch.finfo(b.dtype).eps
    return ((a.double() - b.double()).abs() / (b.double().abs() * eps).clamp_min(1e-30)).max().item()


def close(y: torch.Tensor, ref: torch.Tensor) -> bool:
    """Equal up to sums taken in another order (and tanhf against PyTorch's tanh, attention's softmax
    in fp32 where SDPA rounds to bf16 on the way): fp32 to about 1e-6; bf16 to a last bit or two,
    which later roundings may carry further."""
    if y.dtype == torch.float32:
        return torch.allclose(y, ref, rtol=1e-5, atol=1e-5)
    return torch.allclose(y.float(), ref.float(), rtol=2 ** -6, atol=3e-2)


def tiny(dtype=torch.float32, seed=0, **config):
    torch.manual_seed(seed)
    model = gemma3.Gemma3(gemma3.Gemma3Config.from_preset("tiny", **config)).eval().to(dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0, 0.2)  # norms away from their zero start, so a wrong norm shows
    return model


def test_the_reference_model_knows_nothing_of_the_engine():
    tree = ast.parse(Path(gemma3.model.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
    imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | {
        n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    assert not [m for m in imported if re.search(r"engine|kernel|native", m)]
    assert not names & {"engine", "ops", "native", "watched", "keep_probs", "matvec", "stacked"}


# ---- the engine and the reference, stage by stage ----
FUSED = {"q_norm", "k_norm", "attn_probs", "post_attn_norm", "post_ffn_norm"}   # computed inside another stage's step
ROW_FUSED = {"gate", "up"}  # decode_row computes act from their rows in one step
WALK_PROMPT = "Once upon a time, a little dog named Max found a red ball in the park and ran home to his mom"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_engine_walks_every_stage_of_the_reference(dtype):
    """The engine is the reference's forward pass in fewer, faster steps: every stage it computes apart equals the
    reference's stage of that name (explain.hooks records them with forward hooks on gemma3/model.py's modules), on
    a prompt past the window, in both of its forms: the step-by-step path (forward.py, the per-stage operators) on
    all tokens but the last, then decode_row (the last token in one call, kernels.cpp) with its trace. The stages
    the steps fuse are exactly FUSED; decode_row's, FUSED and ROW_FUSED."""
    from explain import hooks

    model, tok = tiny(dtype), gemma3.gpt2_tokenizer()
    rec = hooks.record(model, tok, WALK_PROMPT)
    ids = torch.tensor([tok.encode(WALK_PROMPT)])
    assert ids.shape[1] == rec.seq_len > model.config.window + 1
    steps, row = {}, {}
    with torch.inference_mode():
        cache = model.new_cache(1, ids.shape[1])
        engine.forward(model, ids[:, :-1], cache, tap=lambda stage, layer, t: steps.__setitem__((stage, layer), t[0].clone()))
        engine.forward(model, ids[:, -1:], cache, tap=lambda stage, layer, t: row.__setitem__((stage, layer), t[0].clone()))
    layers = range(model.config.layers)
    walked = {(s, i) for s in hooks.STAGES for i in layers} | {(s, None) for s in hooks.MODEL_STAGES}
    assert set(steps) == {(s, i) for s, i in walked if s not in FUSED}, "every stage but the fused ones, once"
    row_fused = FUSED | ROW_FUSED if ops.available() else FUSED  # without the kernels a row takes the steps too
    assert set(row) == {(s, i) for s, i in walked if s not in row_fused}, "decode_row's stages, once"
    # in bf16 the two round in different places (the engine adds the residual before rounding): against the fp32
    # pass, the engine's stage may be no more than twice as far off as the reference's own bf16 stage
    truth = hooks.record(copy.deepcopy(model).float(), tok, WALK_PROMPT) if dtype == torch.bfloat16 else None
    for seen, tokens in ((steps, slice(None, -1)), (row, slice(-1, None))):
        for (stage, layer), t in seen.items():
            ref = rec.stage(stage, layer)[tokens]
            assert t.shape == ref.shape, (stage, layer)
            if truth is None:
                assert close(t, ref), (stage, layer)
            else:
                exact = truth.stage(stage, layer)[tokens].float()
                off, ref_off = ((x.float() - exact).abs().max().item() for x in (t, ref))
                assert off <= 2 * ref_off + 1e-6, (stage, layer, off, ref_off)


# ---- the operators against the reference's PyTorch code ----

@needs_kernels
@pytest.mark.parametrize("rows, cols", [(1024, 640), (7, 2048), (50, 700), (3, 33), (1, 1)])
def test_matvec_is_the_correctly_rounded_product(rows, cols):
    g = torch.Generator().manual_seed(rows * cols)
    w = torch.randn(rows, cols, generator=g).bfloat16()
    x = torch.randn(cols, generator=g).bfloat16()
    exact = (w.double() @ x.double()).bfloat16()  # the true sum, rounded once
    y = ops.matvec(w, x)
    assert y.dtype == torch.bfloat16 and y.shape == (rows,)
    # fp32 sums in another order than float64's may move a result by one bf16 step, rarely
    assert (y != exact).float().mean() < 0.02
    assert ulps(y, exact) <= 1.0 or torch.allclose(y.float(), exact.float(), atol=1e-3)


@needs_kernels
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1, 640), (2, 37, 64), (1, 300, 640)])
@pytest.mark.parametrize("with_residual", [False, True])
def test_rms_norm_matches_the_reference(dtype, shape, with_residual):
    g = torch.Generator().manual_seed(shape[1])
    norm = RMSNorm(shape[-1]).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(shape[-1], generator=g) * 0.3)
        x = (torch.randn(shape, generator=g) * 3).to(dtype)
        res = torch.randn(shape, generator=g).to(dtype) if with_residual else None
        y = ops.rms_norm(x, norm, res)
        ref = norm(x) if res is None else res + norm(x)
    assert y.dtype == dtype and y.shape == ref.shape
    # only the order of the sum of squares differs: fp32 moves by an ulp, bf16 almost never
    if dtype == torch.float32:
        assert ulps(y, ref) <= 4 if res is None else torch.allclose(y, ref, rtol=1e-6, atol=1e-6)
    else:
        assert (y != ref).float().mean() < 1e-3


@needs_kernels
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch, heads, positions, fused", [(1, 4, [0], False), (1, 1, [37], False),
                                                            (1, 4, [5000], False), (2, 4, list(range(30, 130)), False),
                                                            (2, 4, list(range(30, 130)), True)])
def test_norm_rope_matches_the_reference(dtype, batch, heads, positions, fused):
    """`fused`: q or k as a slice of a wider row (a fused q/k/v product), tokens strided apart."""
    g = torch.Generator().manual_seed(heads + positions[0])
    norm, rope = RMSNorm(256).to(dtype), RoPE(256, 10_000.0)
    T = len(positions)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(256, generator=g) * 0.3)
        cos, sin = rope(torch.tensor(positions), dtype)
        x = (torch.randn(batch, T, heads * 256 + 3 * 256 if fused else heads * 256, generator=g) * 2).to(dtype)
        x = x[..., 256:256 + heads * 256].view(batch, T, heads, 256) if fused else x.view(batch, T, heads, 256)
        assert x.is_contiguous() != fused
        y = ops.norm_rope(x, norm, cos, sin).transpose(1, 2)
        ref = RoPE.rotate(norm(x).transpose(1, 2), cos, sin)
    assert y.shape == ref.shape == (batch, heads, T, 256)
    if dtype == torch.float32:
        assert torch.allclose(y, ref, rtol=1e-6, atol=1e-6)
    else:
        assert (y != ref).float().mean() < 1e-2 and torch.allclose(y.float(), ref.float(), rtol=2 ** -7, atol=1e-2)


@needs_kernels
@pytest.mark.parametrize("dtype", DTYPES)
def test_geglu_matches_the_reference(dtype):
    g = torch.Generator().manual_seed(3)
    gate = (torch.randn(37, 2048 + 5, generator=g) * 3).to(dtype)  # a ragged tail past the 16 lanes
    gate[0, :4] = torch.tensor([-100.0, 100.0, 0.0, -5.0])
    up = torch.randn(37, 2048 + 5, generator=g).to(dtype)
    p = ops.geglu(gate, up)
    ref = torch.nn.functional.gelu(gate, approximate="tanh") * up
    assert p.shape == ref.shape and p.dtype == dtype
    if dtype == torch.float32:
        assert torch.allclose(p, ref, rtol=1e-5, atol=2e-6)
    else:
        assert (p != ref).float().mean() < 0.06 and torch.allclose(p.float(), ref.float(), rtol=2 ** -7, atol=1e-4)


@needs_kernels
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pos", [3, 13])  # the sliding layer's ring not yet full, and wrapped
@pytest.mark.parametrize("threads", [1, 2])
def test_a_decoded_row_is_one_call_that_gives_the_reference_logits_and_cache(dtype, pos, threads):
    """Layers of the 270m preset's sizes (hidden 640, head_dim 256, ffn 2048), a sliding and a full
    one, over a cache that already holds earlier positions: the operator's logits and the keys and
    values it writes are the reference model's, on one thread or a team of two."""
    torch.manual_seed(pos)
    cfg = gemma3.Gemma3Config.from_preset("270m", layers=2, layer_types=["sliding", "full"], window=8,
                                          vocab_size=1000)
    model = gemma3.Gemma3(cfg).eval().to(dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0, 0.3)
        cache = model.new_cache(1, 20)
        for lc in cache.layers:
            lc.k.normal_(), lc.v.normal_()
        cache.pos = pos
        before = [(lc.k.clone(), lc.v.clone()) for lc in cache.layers]
        ids = torch.tensor([[17]])
        x = model.embed(ids) * torch.tensor(cfg.hidden ** 0.5).to(dtype)
        positions = torch.tensor([pos])
        rope = [model.rope_local(positions, dtype) if b.sliding else model.rope_global(positions, dtype)
                for b in model.blocks]
        with gemma3.runtime.cpu.threads(threads):
            logits = ops.decode_row(model, x, cache, rope)
        written = [(lc.k.clone(), lc.v.clone()) for lc in cache.layers]
        for lc, (k, v) in zip(cache.layers, before):
            lc.k.copy_(k), lc.v.copy_(v)
        ref = model(ids, cache=cache)[0, -1]
    assert logits is not None and logits.shape == ref.shape and logits.dtype == dtype
    assert close(logits, ref)
    for lc, (k, v), (k0, v0) in zip(cache.layers, written, before):
        slot = pos % lc.slots if lc.ring else pos
        assert close(k, lc.k) and close(v, lc.v), "the reference's key and value, in the same slot"
        others = torch.arange(lc.slots) != slot
        assert torch.equal(k[:, :, others], k0[:, :, others]) and torch.equal(v[:, :, others], v0[:, :, others])


def _decoded(model, ids, threads):
    """The logits of ids[4:] decoded one at a time after the prompt ids[:4] (on one PyTorch thread)."""
    forward, cache = engine.decoder(model, threads=threads), model.new_cache(1, ids.shape[1])
    with torch.inference_mode(), gemma3.runtime.cpu.threads(1):
        forward(ids[:, :4], cache, True)
        return torch.cat([forward(ids[:, t:t + 1], cache) for t in range(4, ids.shape[1])], 1)


@needs_kernels
@pytest.mark.parametrize("dtype", DTYPES)
def test_threads_the_os_stops_mid_token_change_no_bit(dtype):
    """Three times as many threads as cores: the OS stops threads in the middle of a chunk of a step
    and the others compute it for them (which happened, the counter says); over 196 decoded tokens
    every logit is still, to the bit, the one a single thread computes."""
    torch.manual_seed(0)
    cfg = gemma3.Gemma3Config.from_preset("270m", layers=2, layer_types=["sliding", "full"], window=8,
                                          vocab_size=1000)
    model = gemma3.Gemma3(cfg).eval().to(dtype)
    ids = torch.randint(0, 1000, (1, 200), generator=torch.Generator().manual_seed(1))
    runs, covered = [], []
    for n in (1, 3 * len(os.sched_getaffinity(0))):
        before = ops.covered_chunks()
        runs.append(_decoded(model, ids, n))
        covered.append(ops.covered_chunks() - before)
    assert covered[0] == 0 and covered[1] > 0, covered
    assert torch.equal(runs[0], runs[1]), "a wrong key or value would also change the later tokens' logits"


@needs_kernels
def test_two_generations_at_once_and_a_forked_child_decode_correctly():
    """Two visitors decoding at the same moment share the engine's helper threads, and a child forked
    after they ran starts helpers of its own: each gets, to the bit, the logits it gets alone."""
    torch.manual_seed(0)
    cfg = gemma3.Gemma3Config.from_preset("270m", layers=2, layer_types=["sliding", "full"], window=8,
                                          vocab_size=1000)
    model = gemma3.Gemma3(cfg).eval()
    gen = torch.Generator().manual_seed(2)
    prompts = [torch.randint(0, 1000, (1, 60), generator=gen) for _ in range(2)]
    alone = [_decoded(model, ids, 1) for ids in prompts]
    together = [None, None]

    def visitor(i):
        together[i] = _decoded(model, prompts[i], 2)

    workers = [threading.Thread(target=visitor, args=(i,)) for i in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert all(torch.equal(a, b) for a, b in zip(alone, together))
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the child: report whether its decoding matched, then leave at once
        ok = torch.equal(_decoded(model, prompts[0], 2), alone[0])
        os.write(write, b"1" if ok else b"0")
        os._exit(0)
    os.close(write)
    ready = select.select([read], [], [], 120)[0]  # a hung child fails the test instead of the suite
    answer = os.read(read, 1) if ready else b""
    if not ready:
        os.kill(child, signal.SIGKILL)
    os.waitpid(child, 0)
    assert answer == b"1", "the forked child decoded different logits, hung or died"


# ---- the engine's forward against the reference model ----

def decode(forward, model, ids, prompt=12):
    """Logits of a prompt, then of one token at a time past the tiny preset's window of 8 (the ring wraps)."""
    cache = model.new_cache(1, ids.shape[1] + 4)
    with torch.inference_mode():
        out = [forward(ids[:, :prompt], cache, True)]
        for t in range(prompt, ids.shape[1]):
            out.append(forward(ids[:, t:t + 1], cache))
    return torch.cat(out, 1).float()


def reference(model):
    return lambda ids, cache, last_only=False: model(ids, cache=cache, last_only=last_only)


@needs_kernels
@pytest.mark.parametrize("dtype", DTYPES)
def test_the_engine_gives_the_reference_logits_and_tokens(dtype):
    model = tiny(dtype)
    ids = torch.randint(0, 50000, (1, 32), generator=torch.Generator().manual_seed(0))
    assert engine.applies(model)
    got = decode(engine.decoder(model), model, ids)
    want = decode(reference(model), model, ids)
    tol = 1e-5 if dtype == torch.float32 else 0.05
    assert (got - want).abs().max() <= tol * want.abs().max()
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() >= (1.0 if dtype == torch.float32 else 0.9)


@needs_kernels
def test_a_decoder_made_with_gradients_on_decodes_each_token_in_one_call(monkeypatch):
    """engine.decoder checks the weights once, and whether gradients are wanted is asked of each call:
    a decoder made outside inference mode (as a script makes it) still decodes a token in one engine
    call, with PyTorch's operations around it on one thread."""
    model, real, results = tiny(), ops.decode_row, []
    monkeypatch.setattr(ops, "decode_row", lambda *a, **k: results.append(real(*a, **k)) or results[-1])
    assert torch.is_grad_enabled()
    f = engine.decoder(model)
    decode(f, model, torch.randint(0, 50000, (1, 16), generator=torch.Generator().manual_seed(0)))
    assert len(results) == 4 and all(r is not None for r in results)
    with gemma3.runtime.cpu.threads(2), f.step():
        assert torch.get_num_threads() == 1


@needs_kernels
def test_greedy_generation_on_the_engine_equals_the_reference():
    model, tok = tiny(), gemma3.gpt2_tokenizer()
    args = dict(max_new_tokens=30, temperature=0)
    fast = list(gemma3.generate_tokens(model, tok.encode("Once upon a time"), **args))
    slow = list(gemma3.generate_tokens(model, tok.encode("Once upon a time"), use_engine=False, **args))
    assert fast == slow and len(fast) == 30


@needs_kernels
def test_packed_q_k_v_prefill_equals_unpacked():
    model = tiny(torch.bfloat16)
    packed = gemma3.Gemma3(model.config).eval()
    packed.load_state_dict(engine.pack_qkv(model.state_dict(), model.config.layers, torch.bfloat16), assign=True)
    assert engine.stacked([packed.blocks[0].attn.wq.weight, packed.blocks[0].attn.wk.weight,
                           packed.blocks[0].attn.wv.weight]) is not None
    ids = torch.randint(0, 50000, (1, 20), generator=torch.Generator().manual_seed(1))
    got = decode(engine.decoder(packed), packed, ids, prompt=20)
    want = decode(engine.decoder(model), model, ids, prompt=20)
    assert (got - want).abs().max() <= 0.05 * want.abs().max()  # one product sums in another order than three
    assert torch.equal(got.argmax(-1), want.argmax(-1))


def test_a_watched_model_runs_the_reference():
    """Forward hooks mean someone is looking at the modules: generation then runs them."""
    model = tiny()
    seen = []
    handle = model.blocks[1].attn.register_forward_hook(lambda *a: seen.append(1))
    assert not engine.applies(model)
    list(gemma3.generate_tokens(model, [1, 2, 3], max_new_tokens=3, temperature=0))
    handle.remove()
    assert len(seen) == 3  # the prompt and two decoded tokens


def test_an_operator_never_takes_a_tensor_that_wants_a_gradient():
    norm = RMSNorm(64)
    x = torch.randn(2, 3, 64, requires_grad=True)
    assert ops.rms_norm(x, norm) is None  # they have no backward


# ---- torch.compile ----

def test_torch_compile_of_the_model_equals_eager():
    model = tiny(layers=2, layer_types=["sliding", "full"])   # one of each: compiling 7 would add seconds, no check
    ids = torch.randint(0, 50000, (1, 20), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        compiled = torch.compile(model)(ids)
        eager = model(ids)
    assert torch.allclose(compiled, eager, rtol=1e-5, atol=1e-5)


@needs_kernels
def test_a_compiled_decode_step_runs_the_engine_operators_and_equals_eager():
    model = tiny(layers=2, layer_types=["sliding", "full"])
    ids = torch.randint(0, 50000, (1, 15), generator=torch.Generator().manual_seed(3))
    step = torch.compile(engine.decoder(model))
    assert torch.allclose(decode(step, model, ids), decode(engine.decoder(model), model, ids), rtol=1e-5, atol=1e-5)


# ---- the build folder ----

def test_the_build_folder_is_private(tmp_path):
    folder = native.private_folder(tmp_path / "cache" / "gemma3")
    assert folder.stat().st_mode & 0o777 == 0o700
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    with pytest.raises(native.UnsafeFolder):
        native.private_folder(shared)


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to give a file to another user")
def test_a_folder_or_library_of_another_user_is_refused(tmp_path, monkeypatch, caplog):
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 65534, 65534)
    with pytest.raises(native.UnsafeFolder):
        native.private_folder(theirs)
    # a library planted in our build folder by another user is never loaded
    monkeypatch.setattr(native, "supported", lambda: True)
    monkeypatch.setattr(native, "_loaded", {})
    monkeypatch.setattr(native, "build_folders", lambda: [tmp_path / "mine"])
    real_build = native._build

    def plant_then_build(src, name, folder):
        lib = folder / f"{name}.so"
        lib.write_bytes(b"\x7fELF planted")
        os.chown(lib, 65534, 65534)
        return real_build(src, name, folder)

    monkeypatch.setattr(native, "_build", plant_then_build)
    with caplog.at_level(logging.WARNING, logger="gemma3.runtime.native"):
        assert native.load("loss.cpp") is False
    assert "could not be built" in caplog.text and "not a file of this user's" in caplog.text


def test_a_failed_build_says_why_once_and_the_reference_runs(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(native, "supported", lambda: True)
    monkeypatch.setattr(native, "_loaded", {})
    monkeypatch.setattr(native, "build_folders", lambda: [tmp_path / "a", tmp_path / "b"])
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    with caplog.at_level(logging.WARNING, logger="gemma3.runtime.native"):
        assert native.load("loss.cpp") is False
        assert native.load("loss.cpp") is False
    warnings = [r for r in caplog.records if r.name == "gemma3.runtime.native"]
    assert len(warnings) == 1 and "PyTorch's operations run instead" in warnings[0].getMessage()
    assert not list((tmp_path / "a").rglob("*.so"))  # nothing half-built to load later


def test_switched_off_by_the_environment(monkeypatch):
    monkeypatch.setenv("GEMMA3_NO_KERNEL", "1")
    assert not native.supported()


@pytest.mark.skipif(not native.supported(), reason="needs an x86-64 CPU with AVX512-BF16")
def test_a_build_lock_left_by_a_killed_process_does_not_stop_later_loads(tmp_path):
    """torch's build lock (a file named "lock") stays behind when a process is killed while loading,
    and made every later load wait forever: a trainer stopped while starting never resumed."""
    import subprocess
    import sys
    import textwrap

    assert native.load("loss.cpp")  # built once, in this user's folder
    code = textwrap.dedent("""
        import sys
        from gemma3.runtime import native
        folder = next(f for base in native.build_folders() if base.is_dir()
                      for f in base.iterdir() if f.name.startswith("gemma3_loss_"))
        (folder / "lock").write_text("")  # as a killed process leaves it
        sys.exit(0 if native.load("loss.cpp") else 3)
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(gemma3.__file__).parent.parent, timeout=120)
    assert done.returncode == 0
