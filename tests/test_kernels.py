"""gemma3/kernels.py: the C kernels a decoded token runs on the CPU give what the PyTorch code gives."""

import shutil
import tempfile

import pytest
import torch

import gemma3
from gemma3 import kernels
from gemma3.model import RMSNorm, RoPE, project

AVAILABLE = kernels.cpu_has_avx512_bf16() and bool(shutil.which("cc") or shutil.which("gcc"))
needs_kernels = pytest.mark.skipif(not AVAILABLE, reason="needs AVX512-BF16 and a C compiler")
DTYPES = [torch.float32, torch.bfloat16]


@pytest.fixture
def pytorch_only(monkeypatch):
    """A context in which the model runs its PyTorch code (the reference for the kernels)."""
    def off():
        monkeypatch.setattr(kernels, "_lib", False)
    return off


def ulps(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest difference in units of the dtype's last place at b's magnitude."""
    eps = torch.finfo(b.dtype).eps
    return ((a.double() - b.double()).abs() / (b.double().abs() * eps).clamp_min(1e-30)).max().item()


@needs_kernels
def test_the_kernels_build_and_load_where_they_can():
    assert kernels.load() is not None


@needs_kernels
@pytest.mark.parametrize("rows, cols", [(1024, 640), (7, 2048), (50, 700), (3, 33), (1, 1)])
def test_matvec_is_the_correctly_rounded_product(rows, cols):
    g = torch.Generator().manual_seed(rows * cols)
    w = torch.randn(rows, cols, generator=g).bfloat16()
    x = torch.randn(cols, generator=g).bfloat16()
    exact = (w.double() @ x.double()).bfloat16()  # the true sum, rounded once
    y = kernels.matvec_bf16(w, x)
    assert y.dtype == torch.bfloat16 and y.shape == (rows,)
    # fp32 sums in another order than float64's may move a result by one bf16 step, rarely
    assert (y != exact).float().mean() < 0.02
    assert ulps(y, exact) <= 1.0 or torch.allclose(y.float(), exact.float(), atol=1e-3)


@needs_kernels
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1, 640), (2, 37, 64), (1, 300, 640)])
def test_rms_norm_matches_the_pytorch_code(dtype, shape, pytorch_only):
    g = torch.Generator().manual_seed(shape[1])
    norm = RMSNorm(shape[-1]).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(shape[-1], generator=g) * 0.3)
        x = (torch.randn(shape, generator=g) * 3).to(dtype)
        y = norm(x)
        pytorch_only()
        ref = norm(x)
    assert y.dtype == dtype and y.shape == ref.shape
    # only the order of the sum of squares differs: fp32 moves by an ulp, bf16 almost never
    if dtype == torch.float32:
        assert ulps(y, ref) <= 4
    else:
        assert (y != ref).float().mean() < 1e-3 and ulps(y, ref) <= 1


@needs_kernels
@pytest.mark.parametrize("dtype", DTYPES)
def test_residual_norm_matches_the_pytorch_code_and_leaves_hooked_norms_alone(dtype, pytorch_only):
    g = torch.Generator().manual_seed(4)
    norm = RMSNorm(640).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(640, generator=g) * 0.3)
        x, h = (torch.randn(2, 300, 640, generator=g) * 3).to(dtype), (torch.randn(2, 300, 640, generator=g)).to(dtype)
        y = gemma3.model.residual(x, norm, h)
        seen = []
        handle = norm.register_forward_hook(lambda mod, inp, out: seen.append(out))
        hooked = gemma3.model.residual(x, norm, h)  # the hook must see the norm's output
        handle.remove()
        pytorch_only()
        ref = x + norm(h)
    assert len(seen) == 1 and torch.equal(hooked, x + seen[0])
    assert close(y, ref) and close(hooked, ref)


@needs_kernels
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch, heads, positions, fused", [(1, 4, [0], False), (1, 1, [37], False),
                                                            (1, 4, [5000], False), (2, 4, list(range(30, 130)), False),
                                                            (2, 4, list(range(30, 130)), True)])
def test_norm_rope_matches_the_pytorch_code(dtype, batch, heads, positions, fused, pytorch_only):
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
        y = kernels.norm_rope(x, norm.weight, norm.eps, cos, sin).transpose(1, 2)
        pytorch_only()
        ref = RoPE.rotate(norm(x).transpose(1, 2), cos, sin)
    assert y.shape == ref.shape == (batch, heads, T, 256)
    if dtype == torch.float32:
        assert torch.allclose(y, ref, rtol=1e-6, atol=1e-6)
    else:
        assert (y != ref).float().mean() < 1e-2 and torch.allclose(y.float(), ref.float(), rtol=2 ** -7, atol=1e-2)


def close(y: torch.Tensor, ref: torch.Tensor) -> bool:
    """Equal up to sums taken in another order (and tanhf against PyTorch's tanh, attention's softmax
    in fp32 where SDPA rounds to bf16 on the way): fp32 to about 1e-6; bf16 to a last bit or two,
    which later roundings may carry further."""
    if y.dtype == torch.float32:
        return torch.allclose(y, ref, rtol=1e-5, atol=1e-5)
    return torch.allclose(y.float(), ref.float(), rtol=2 ** -6, atol=3e-2)


@needs_kernels
@pytest.mark.parametrize("dtype", DTYPES)
def test_feed_forward_half_matches_the_pytorch_code(dtype, pytorch_only):
    torch.manual_seed(1)
    cfg = gemma3.Gemma3Config.from_preset("270m")
    block = gemma3.model.Block(cfg, 0).to(dtype)
    with torch.no_grad():
        for name, p in block.named_parameters():
            if "norm" in name:
                p.normal_(0, 0.3)
        x = (torch.randn(1, 1, cfg.hidden) * 4).to(dtype)
        y = kernels.feed_forward(x, block)
        pytorch_only()
        ref = x + block.post_ffn_norm(block.ffn(block.ffn_norm(x)))
    assert y.shape == ref.shape and y.dtype == dtype
    assert close(y, ref)
    if dtype == torch.bfloat16:
        assert (y != ref).float().mean() < 0.05  # mostly bit-identical


@needs_kernels
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layer, pos", [(0, 13), (0, 3), (5, 13)])  # sliding (wrapped, not yet), full
def test_attention_half_matches_the_pytorch_code(dtype, layer, pos, pytorch_only):
    torch.manual_seed(layer + pos)
    cfg = gemma3.Gemma3Config.from_preset("tiny")
    model = gemma3.Gemma3(cfg).eval().to(dtype)
    block = model.blocks[layer]
    with torch.no_grad():
        for name, p in block.named_parameters():
            if "norm" in name:
                p.normal_(0, 0.3)
        cache = model.new_cache(1, 20)
        lc = cache.layers[layer]
        lc.k.normal_(), lc.v.normal_()  # a cache that already holds earlier positions
        before_k, before_v = lc.k.clone(), lc.v.clone()
        rope = model.rope_local if block.sliding else model.rope_global
        cos, sin = rope(torch.tensor([pos]), dtype)
        x = (torch.randn(1, 1, cfg.hidden) * 4).to(dtype)
        y = kernels.attention(x, block, cos, sin, pos, lc)
        k_kernel, v_kernel = lc.k.clone(), lc.v.clone()
        lc.k.copy_(before_k), lc.v.copy_(before_v)
        pytorch_only()
        ref = x + block.post_attn_norm(block.attn(block.attn_norm(x), cos, sin, pos, lc))
    assert y.shape == ref.shape
    assert close(y, ref)
    assert torch.allclose(v_kernel, lc.v, rtol=1e-6, atol=1e-6)  # the same slot written, nothing else moved
    assert close(k_kernel, lc.k)


@needs_kernels
@pytest.mark.parametrize("dtype", DTYPES)
def test_decoding_with_and_without_the_kernels_agree(dtype, pytorch_only):
    torch.manual_seed(0)
    model = gemma3.Gemma3(gemma3.Gemma3Config.from_preset("tiny")).eval().to(dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0, 0.2)
    ids = torch.randint(0, 50000, (1, 32))

    def decode():
        cache = model.new_cache(1, 40)
        with torch.no_grad():
            out = [model(ids[:, :12], cache=cache, last_only=True)]
            for t in range(12, 32):  # beyond the window of 8: the ring buffer wraps
                out.append(model(ids[:, t:t + 1], cache=cache))
        return torch.cat(out, 1).float()

    with_kernels = decode()
    pytorch_only()
    without = decode()
    tol = 1e-5 if dtype == torch.float32 else 0.05
    assert (with_kernels - without).abs().max() <= tol * without.abs().max()
    assert (with_kernels.argmax(-1) == without.argmax(-1)).float().mean() >= 0.9  # bf16 near-ties may flip


@needs_kernels
def test_a_hooked_block_part_runs_as_a_module_while_decoding():
    model = gemma3.Gemma3(gemma3.Gemma3Config.from_preset("tiny")).eval()
    seen = []
    model.blocks[2].post_ffn_norm.register_forward_hook(lambda mod, inp, out: seen.append(out.shape))
    model.blocks[3].attn.register_forward_hook(lambda mod, inp, out: seen.append(out.shape))
    cache = model.new_cache(1, 8)
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3]]), cache=cache)
        seen.clear()
        model(torch.tensor([[4]]), cache=cache)  # one decoded token: the halves would skip the modules
    assert len(seen) == 2


def test_training_never_takes_a_kernel():
    norm = RMSNorm(64)
    x = torch.randn(2, 3, 64, requires_grad=True)
    norm(x).sum().backward()  # a kernel has no backward: this would raise if one ran
    assert x.grad is not None and norm.weight.grad is not None


def test_without_a_compiler_the_model_falls_back_to_pytorch(monkeypatch, tmp_path):
    monkeypatch.setattr(kernels, "_lib", None)
    monkeypatch.setenv("GEMMA3_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    assert kernels.load() is None
    w, x = torch.randn(8, 64).bfloat16(), torch.randn(1, 1, 64).bfloat16()
    assert torch.equal(project(x, w).view(-1), torch.mv(w, x.view(-1)))
    assert kernels.rms_norm(x, torch.zeros(64, dtype=torch.bfloat16), 1e-6) is None
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []  # nothing half-built left behind


@needs_kernels
def test_an_unwritable_cache_folder_falls_back_to_the_temporary_folder(monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setattr(kernels, "_lib", None)
    monkeypatch.setenv("GEMMA3_CACHE", str(blocker / "cache"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    assert kernels.load() is not None
    assert kernels.build().parent == tmp_path / "tmp" / "gemma3"


def test_switched_off_by_the_environment(monkeypatch):
    monkeypatch.setattr(kernels, "_lib", None)
    monkeypatch.setenv("GEMMA3_NO_KERNEL", "1")
    assert kernels.load() is None


@needs_kernels
@pytest.mark.parametrize("dtype", DTYPES)
def test_geglu_matches_the_pytorch_code(dtype):
    g = torch.Generator().manual_seed(3)
    gate = (torch.randn(37, 2048 + 5, generator=g) * 3).to(dtype)  # a ragged tail past the 16 lanes
    gate[0, :4] = torch.tensor([-100.0, 100.0, 0.0, -5.0])
    up = torch.randn(37, 2048 + 5, generator=g).to(dtype)
    p = kernels.geglu(gate, up)
    ref = torch.nn.functional.gelu(gate, approximate="tanh") * up
    assert p.shape == ref.shape and p.dtype == dtype
    if dtype == torch.float32:
        assert torch.allclose(p, ref, rtol=1e-5, atol=2e-6)
    else:
        assert (p != ref).float().mean() < 0.06 and torch.allclose(p.float(), ref.float(), rtol=2 ** -7, atol=1e-4)


def test_info_says_which_code_runs_inference(monkeypatch):
    from gemma3.__main__ import describe
    model, tok = gemma3.Gemma3(gemma3.Gemma3Config.from_preset("tiny")), gemma3.gpt2_tokenizer()
    if AVAILABLE:
        assert "C kernels" in describe(model, tok)
    monkeypatch.setattr(kernels, "_lib", False)
    assert "PyTorch's operations" in describe(model, tok)
