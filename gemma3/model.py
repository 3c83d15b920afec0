"""Gemma 3's text model, top to bottom: RMSNorm, RoPE, Attention, FeedForward, Block, Gemma3.

It computes exactly what transformers' Gemma3ForCausalLM computes (see tests/test_parity.py).
One forward serves training (no cache), prefill and one-token decoding (with a KVCache). For
inference on a CPU, a few places hand their work to the C kernels of kernels.py when those can run
here (the same equations and roundings, in fewer passes); each falls back to the PyTorch code below.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .cache import KVCache, LayerCache
from .config import Gemma3Config
from .loss import cross_entropy
from .kernels import attention, feed_forward, geglu, matvec_bf16, norm_rope, rms_norm, watched


class RMSNorm(nn.Module):
    """x / rms(x) * (1 + w), computed in fp32 and cast back; w starts at zero."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = rms_norm(x, self.weight, self.eps)  # one C call on a CPU when no gradient is wanted (kernels.py)
        if y is not None:
            return y
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * (1.0 + self.weight.float())).to(x.dtype)


def project(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x W^T. One bf16 row on the CPU (a decoded token) takes a matrix-vector product instead of a
    one-row matrix product: our prefetching kernel where the CPU has AVX512-BF16 (gemma3/kernels.py),
    else torch.mv, both faster there (bench/generate.py)."""
    if x.dtype == torch.bfloat16 and x.device.type == "cpu" and x.numel() == x.shape[-1]:
        v = x.reshape(-1)
        y = matvec_bf16(weight, v)
        if y is None:
            y = torch.mv(weight, v)
        return y.view(*x.shape[:-1], weight.shape[0])
    return F.linear(x, weight)


def stacked(weights) -> torch.Tensor | None:
    """The matrices stacked on their rows as one tensor, without a copy: only when they lie back to
    back in one buffer (checkpoints.pack_qkv); otherwise None."""
    first = weights[0]
    base = first.untyped_storage().data_ptr()
    for a, b in zip(weights, weights[1:]):
        if (b.untyped_storage().data_ptr() != base or b.dtype != a.dtype or b.shape[1:] != a.shape[1:]
                or not b.is_contiguous() or a.data_ptr() + a.numel() * a.element_size() != b.data_ptr()):
            return None
    if not first.is_contiguous():
        return None
    return first.as_strided((sum(w.shape[0] for w in weights), *first.shape[1:]), first.stride())


class Linear(nn.Linear):
    """A bias-free nn.Linear whose forward is `project`."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return project(x, self.weight)


class RoPE(nn.Module):
    """Rotary position embedding on half-split pairs (dimension i rotates with i + head_dim/2)."""

    def __init__(self, head_dim: int, base: float, scale: float = 1.0):
        super().__init__()
        self.base, self.scale = base, scale
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim)) / scale
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin tables of shape [T, head_dim] for the given positions."""
        angles = positions.float()[:, None] * self.inv_freq.float()[None, :]
        angles = torch.cat((angles, angles), dim=-1)
        return angles.cos().to(dtype), angles.sin().to(dtype)

    @staticmethod
    def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def sliding_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None) -> torch.Tensor:
    """Boolean [Tq, Tk] mask, True where query i may see key j: j <= i, and i - window < j if sliding."""
    allowed = k_pos[None, :] <= q_pos[:, None]
    if window is not None:
        allowed &= k_pos[None, :] > q_pos[:, None] - window
    return allowed


class Attention(nn.Module):
    """Multi-query attention with per-head q/k RMSNorm before RoPE; sliding or full."""

    def __init__(self, cfg: Gemma3Config, sliding: bool):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = cfg.heads, cfg.kv_heads, cfg.head_dim
        self.window = cfg.window if sliding else None
        self.scale = cfg.query_pre_attn_scalar ** -0.5
        self.wq = Linear(cfg.hidden, cfg.heads * cfg.head_dim)
        self.wk = Linear(cfg.hidden, cfg.kv_heads * cfg.head_dim)
        self.wv = Linear(cfg.hidden, cfg.kv_heads * cfg.head_dim)
        self.wo = Linear(cfg.heads * cfg.head_dim, cfg.hidden)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)
        self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)
        self.keep_probs = False  # explain: compute softmax explicitly and keep it in self.probs
        self.probs: torch.Tensor | None = None

    def forward(self, x, cos, sin, start: int = 0, cache: LayerCache | None = None):
        B, T, _ = x.shape
        q, k, v = self._project(x)
        q = self._norm_rope(q.view(B, T, self.heads, self.head_dim), self.q_norm, cos, sin)
        k = self._norm_rope(k.view(B, T, self.kv_heads, self.head_dim), self.k_norm, cos, sin)
        v = v.view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)

        if cache is not None and T == 1:
            out = self._decode_step(q, k, v, start, cache)
        else:
            if cache is not None:
                past_k, past_v, past_pos = cache.past(start)
                cache.write(k, v, start)
                if len(past_pos):
                    k, v = torch.cat((past_k, k), dim=2), torch.cat((past_v, v), dim=2)
            else:
                past_pos = torch.empty(0, dtype=torch.long, device=x.device)
            q_pos = torch.arange(start, start + T, device=x.device)
            k_pos = torch.cat((past_pos, q_pos))
            if self.keep_probs:
                out = self._explicit(q, k, v, sliding_mask(q_pos, k_pos, self.window))
            # Plain causal attention is exact when nothing is older than the window; otherwise
            # the window needs an explicit mask (is_causal=True would silently drop it).
            elif len(past_pos) == 0 and (self.window is None or T <= self.window):
                out = self._sdpa(q, k, v, None, is_causal=True)
            else:
                out = self._sdpa(q, k, v, sliding_mask(q_pos, k_pos, self.window), is_causal=False)
        return self.wo(out.transpose(1, 2).reshape(B, T, self.heads * self.head_dim))

    def _project(self, x):
        """x Wq, x Wk, x Wv: for prompt rows with no gradient wanted, one matrix product where the three
        weights lie back to back in memory (checkpoints.pack_qkv), which is faster than three."""
        ws = (self.wq.weight, self.wk.weight, self.wv.weight)
        fused = None
        if x.shape[-2] > 1 and not (torch.is_grad_enabled() and ws[0].requires_grad) and not watched(
                self.wq, self.wk, self.wv):
            fused = stacked(ws)
        if fused is None:
            return self.wq(x), self.wk(x), self.wv(x)
        return F.linear(x, fused).split([w.shape[0] for w in ws], dim=-1)

    @staticmethod
    def _norm_rope(x, norm: RMSNorm, cos, sin):
        """[B, T, heads, head_dim] -> per-head RMSNorm, then RoPE -> [B, heads, T, head_dim]."""
        y = norm_rope(x, norm.weight, norm.eps, cos, sin)  # one C call where the kernels run (kernels.py)
        if y is not None:
            return y.transpose(1, 2)
        return RoPE.rotate(norm(x).transpose(1, 2), cos, sin)

    def _decode_step(self, q, k, v, pos: int, cache: LayerCache):
        """One new token: write it, then attend to every cached key (all of them are visible)."""
        cache.write(k, v, pos)
        keys, values = cache.visible(pos)
        B = q.shape[0]
        # Fold the query heads that share a key/value head into the query-length axis:
        # [B, H, 1, D] -> [B, KV, H/KV, D], a single matrix product per key/value head.
        qg = q.view(B, self.kv_heads, self.heads // self.kv_heads, self.head_dim)
        out = F.scaled_dot_product_attention(qg, keys, values, scale=self.scale)
        return out.reshape(B, self.heads, 1, self.head_dim)

    def _explicit(self, q, k, v, mask):
        """softmax(q k^T * scale + mask) v written out, keeping the probabilities [B, H, Tq, Tk]."""
        k = k.repeat_interleave(self.heads // self.kv_heads, dim=1)
        v = v.repeat_interleave(self.heads // self.kv_heads, dim=1)
        scores = (q @ k.transpose(-2, -1)).float() * self.scale
        probs = scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        self.probs = probs.detach()
        return probs.to(v.dtype) @ v

    def _sdpa(self, q, k, v, mask, is_causal):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, scale=self.scale,
                                              enable_gqa=self.kv_heads != self.heads)


class FeedForward(nn.Module):
    """GeGLU: down(gelu_tanh(gate x) * up x)."""

    def __init__(self, cfg: Gemma3Config):
        super().__init__()
        self.gate = Linear(cfg.hidden, cfg.ffn)
        self.up = Linear(cfg.hidden, cfg.ffn)
        self.down = Linear(cfg.ffn, cfg.hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g, u = self.gate(x), self.up(x)
        p = geglu(g, u)  # one pass in C where the kernels run (kernels.py)
        return self.down(p if p is not None else F.gelu(g, approximate="tanh") * u)


def residual(x: torch.Tensor, norm: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """x + norm(h); one C pass where the kernels run and nothing watches the norm (explain's hooks)."""
    if isinstance(norm, RMSNorm) and not watched(norm):
        y = rms_norm(h, norm.weight, norm.eps, residual=x)
        if y is not None:
            return y
    return x + norm(h)


class Block(nn.Module):
    """x + post_norm(attn(pre_norm(x))), then x + post_norm(ffn(pre_norm(x)))."""

    def __init__(self, cfg: Gemma3Config, layer: int):
        super().__init__()
        self.sliding = cfg.layer_types[layer] == "sliding"
        post = (lambda: RMSNorm(cfg.hidden, cfg.norm_eps)) if cfg.post_norms else nn.Identity
        self.attn_norm = RMSNorm(cfg.hidden, cfg.norm_eps)
        self.attn = Attention(cfg, self.sliding)
        self.post_attn_norm = post()
        self.ffn_norm = RMSNorm(cfg.hidden, cfg.norm_eps)
        self.ffn = FeedForward(cfg)
        self.post_ffn_norm = post()

    def forward(self, x, cos, sin, start: int = 0, cache: LayerCache | None = None):
        decoding = cache is not None and x.shape[1] == 1  # one token: each half is one C call where it can be
        y = attention(x, self, cos, sin, start, cache) if decoding else None  # (kernels.py)
        x = y if y is not None else residual(x, self.post_attn_norm,
                                             self.attn(self.attn_norm(x), cos, sin, start, cache))
        y = feed_forward(x, self) if decoding else None
        return y if y is not None else residual(x, self.post_ffn_norm, self.ffn(self.ffn_norm(x)))


class Gemma3(nn.Module):
    """Token ids [B, T] -> logits [B, T, vocab]."""

    def __init__(self, config: Gemma3Config):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.hidden)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.layers))
        self.final_norm = RMSNorm(config.hidden, config.norm_eps)
        self.head = None if config.tied_head else Linear(config.hidden, config.vocab_size)
        self.rope_local = RoPE(config.head_dim, config.rope_local_base)
        self.rope_global = RoPE(config.head_dim, config.rope_global_base, config.rope_global_scale)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        elif isinstance(module, RMSNorm):
            nn.init.zeros_(module.weight)

    def forward(self, input_ids: torch.Tensor, cache: KVCache | None = None,
                last_only: bool = False, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Logits for every position (or only the last with `last_only`).

        With a cache, the ids continue the sequence already in it and are appended to it.
        With `targets` [B, T] (the next token at each position), the mean cross-entropy instead,
        computed with its gradient a chunk of rows at a time so the logits never exist whole (loss.py).
        """
        B, T = input_ids.shape
        start = cache.pos if cache is not None else 0
        if start + T > self.config.context:
            raise ValueError(f"Sequence of {start + T} tokens exceeds the model's context of {self.config.context}.")
        if cache is not None and start + T > cache.max_len:
            raise ValueError(f"Sequence of {start + T} tokens exceeds the cache's {cache.max_len} positions.")
        w = self.embed.weight
        x = self.embed(input_ids) * torch.tensor(math.sqrt(self.config.hidden)).to(w.dtype)
        positions = torch.arange(start, start + T, device=input_ids.device)
        local = self.rope_local(positions, x.dtype)
        glob = self.rope_global(positions, x.dtype)
        for i, block in enumerate(self.blocks):
            cos, sin = local if block.sliding else glob
            x = block(x, cos, sin, start, cache.layers[i] if cache is not None else None)
        if cache is not None:
            cache.pos += T
        if last_only:
            x = x[:, -1:]
        x = self.final_norm(x)
        head = w if self.head is None else self.head.weight
        if targets is not None:
            return cross_entropy(x.flatten(0, 1), head, targets.flatten())
        return project(x, head)

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        """A preallocated cache for `max_len` positions on the model's device and dtype."""
        w = self.embed.weight
        return KVCache(self.config, batch, min(max_len, self.config.context), w.device, w.dtype)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def param_groups(self) -> dict[str, int]:
        """Parameter counts by part: embedding, attention, feed-forward, norms, head (0 when tied)."""
        groups = {"embedding": 0, "attention": 0, "feed-forward": 0, "norms": 0, "head": 0}
        for name, p in self.named_parameters():
            if name.startswith("embed."):
                part = "embedding"
            elif name.startswith("head."):
                part = "head"
            elif "norm" in name:
                part = "norms"
            elif ".attn." in name:
                part = "attention"
            else:
                part = "feed-forward"
            groups[part] += p.numel()
        return groups
