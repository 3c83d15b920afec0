"""Gemma 3's text model, top to bottom: RMSNorm, RoPE, Attention, FeedForward, Block, Gemma3.

It computes exactly what transformers' Gemma3ForCausalLM computes (see tests/test_parity.py), in plain
PyTorch: one forward serves training (no cache), a prompt and one-token decoding (with a KVCache);
`decode` is that one-token step with shapes that never change (what a GPU replays as a CUDA graph).
Every intermediate value can be read with forward hooks on the named submodules.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .cache import KVCache, LayerCache
from .config import Gemma3Config
from .loss import cross_entropy


class RMSNorm(nn.Module):
    """x / rms(x) * (1 + w), computed in fp32 and cast back; w starts at zero."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * (1.0 + self.weight.float())).to(x.dtype)


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


def attend(q, k, v, mask: torch.Tensor | None, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v, the softmax in fp32. q [B, H, Tq, D]; k, v [B, KV, Tk, D], each
    key/value head shared by H / KV query heads; mask [Tq, Tk] boolean, or None for plain causal
    attention over keys that are exactly the queries. Attention.attend holds this function, so a caller
    can swap in another that computes the same (explain records the probabilities that way)."""
    if mask is not None and q.is_cuda and k.shape[1] == 1 < q.shape[1]:
        # a view of the one key/value head for every query head: with a mask, CUDA's fused attention takes that but
        # not enable_gqa (which falls back to SDPA's unfused math path: fp32 scores, a dozen more launches)
        k, v = k.expand(-1, q.shape[1], -1, -1), v.expand(-1, q.shape[1], -1, -1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, scale=scale,
                                          enable_gqa=k.shape[1] != q.shape[1])


class Attention(nn.Module):
    """Multi-query attention with per-head q/k RMSNorm before RoPE; sliding or full."""

    def __init__(self, cfg: Gemma3Config, sliding: bool):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = cfg.heads, cfg.kv_heads, cfg.head_dim
        self.window = cfg.window if sliding else None
        self.scale = cfg.query_pre_attn_scalar ** -0.5
        self.wq = nn.Linear(cfg.hidden, cfg.heads * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.hidden, cfg.kv_heads * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.hidden, cfg.kv_heads * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.heads * cfg.head_dim, cfg.hidden, bias=False)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)
        self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)
        self.attend = attend

    def forward(self, x, cos, sin, start: int | torch.Tensor = 0, cache: LayerCache | None = None):
        """start: the first position, an int (a prompt, training); or a one-element tensor on the device for
        one decoded token per row, whose attention reads every slot of the cache in place (decode_attention)."""
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.heads, self.head_dim)
        k = self.wk(x).view(B, T, self.kv_heads, self.head_dim)
        v = self.wv(x).view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)
        # per-head RMSNorm over head_dim, then RoPE: [B, T, heads, D] -> [B, heads, T, D]
        q = RoPE.rotate(self.q_norm(q).transpose(1, 2), cos, sin)
        k = RoPE.rotate(self.k_norm(k).transpose(1, 2), cos, sin)
        if isinstance(start, torch.Tensor):
            out = self.decode_attention(q, k, v, start, cache)
        else:
            out = self.prompt_attention(q, k, v, start, cache)
        return self.wo(out.transpose(1, 2).reshape(B, T, self.heads * self.head_dim))

    def prompt_attention(self, q, k, v, start: int, cache: LayerCache | None):
        """Queries at start .. start+T-1 over the cached keys before them (gathered) and their own."""
        T = q.shape[2]
        past_pos = torch.empty(0, dtype=torch.long, device=q.device)
        if cache is not None:  # earlier positions' keys and values, then this call's go into the cache
            past_k, past_v, past_pos = cache.past(start)
            cache.write(k, v, start)
            k, v = torch.cat((past_k, k), dim=2), torch.cat((past_v, v), dim=2)
        q_pos = torch.arange(start, start + T, device=q.device)
        # Plain causal attention is exact when nothing is older than the window; otherwise the
        # window needs an explicit mask (is_causal=True would silently drop it).
        if len(past_pos) == 0 and (self.window is None or T <= self.window):
            mask = None
        else:
            mask = sliding_mask(q_pos, torch.cat((past_pos, q_pos)), self.window)
        return self.attend(q, k, v, mask, self.scale)

    def decode_attention(self, q, k, v, pos: torch.Tensor, cache: LayerCache):
        """One query per row at `pos` over every slot of the cache, read in place: the new key and value are
        written into their slot, and a mask made on the device from the position hides the slots it may not see
        (LayerCache.mask: in a ring every written slot is in the window). No shape
        depends on the position and nothing waits for the host, so a CUDA graph can replay it."""
        cache.put(k, v, pos)
        return self.attend(q, cache.k, cache.v, cache.mask(pos), self.scale)


class FeedForward(nn.Module):
    """GeGLU: down(gelu_tanh(gate x) * up x)."""

    def __init__(self, cfg: Gemma3Config):
        super().__init__()
        self.gate = nn.Linear(cfg.hidden, cfg.ffn, bias=False)
        self.up = nn.Linear(cfg.hidden, cfg.ffn, bias=False)
        self.down = nn.Linear(cfg.ffn, cfg.hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.gate(x), approximate="tanh") * self.up(x))


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

    def forward(self, x, cos, sin, start: int | torch.Tensor = 0, cache: LayerCache | None = None):
        x = x + self.post_attn_norm(self.attn(self.attn_norm(x), cos, sin, start, cache))
        return x + self.post_ffn_norm(self.ffn(self.ffn_norm(x)))


class Gemma3(nn.Module):
    """Token ids [B, T] -> logits [B, T, vocab]."""

    def __init__(self, config: Gemma3Config):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.hidden)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.layers))
        self.final_norm = RMSNorm(config.hidden, config.norm_eps)
        self.head = None if config.tied_head else nn.Linear(config.hidden, config.vocab_size, bias=False)
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
        return F.linear(x, head)

    def decode(self, input_ids: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Logits [B, 1, vocab] of one new token per row, at the cache's position, with shapes that never change:
        the position is read from the device (cache.position) and each attention reads its whole cache in place
        (Attention.decode_attention). One call can thus be captured as a CUDA graph and replayed for every token
        (gemma3/runtime/graphs.py). The same logits as forward(input_ids, cache); the caller checks there is
        room (cache.pos < cache.max_len) and moves the count on (cache.pos += 1)."""
        w = self.embed.weight
        x = self.embed(input_ids) * torch.tensor(math.sqrt(self.config.hidden)).to(w.dtype)
        pos = cache.position
        local, glob = self.rope_local(pos, x.dtype), self.rope_global(pos, x.dtype)
        for block, layer in zip(self.blocks, cache.layers):
            cos, sin = local if block.sliding else glob
            x = block(x, cos, sin, pos, layer)
        return F.linear(self.final_norm(x), w if self.head is None else self.head.weight)

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
