"""A preallocated key/value cache: every position for full layers, a ring of the last W for sliding ones.

Keys are stored after RoPE, so the order of slots in a ring does not matter to attention:
position p lives in slot p % W, and once the ring has wrapped it holds exactly the W most recent
positions, which are exactly the keys a sliding query may see.
"""

from __future__ import annotations

import torch


class LayerCache:
    def __init__(self, batch: int, kv_heads: int, slots: int, head_dim: int, ring: bool, device, dtype):
        self.ring = ring
        self.slots = slots
        # Never read before written (past() and visible() give written slots only), so left unfilled.
        self.k = torch.empty(batch, kv_heads, slots, head_dim, device=device, dtype=dtype)
        self.v = torch.empty_like(self.k)

    def _slots(self, positions: torch.Tensor) -> torch.Tensor:
        return positions % self.slots if self.ring else positions

    def write(self, k: torch.Tensor, v: torch.Tensor, start: int):
        """Store keys/values [B, KV, T, D] of positions start .. start+T-1 (a ring keeps the last W)."""
        T = k.shape[2]
        keep = min(T, self.slots) if self.ring else T
        first = start + T - keep
        slot = first % self.slots if self.ring else first
        if slot + keep <= self.slots:  # one run of slots: a plain copy
            self.k[:, :, slot:slot + keep] = k[:, :, T - keep:]
            self.v[:, :, slot:slot + keep] = v[:, :, T - keep:]
            return
        idx = self._slots(torch.arange(first, start + T, device=k.device))
        self.k[:, :, idx] = k[:, :, T - keep:]
        self.v[:, :, idx] = v[:, :, T - keep:]

    def past(self, start: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Cached keys, values and positions before `start` that a query at `start` or later can see."""
        first = max(0, start - self.slots + 1) if self.ring else 0
        positions = torch.arange(first, start, device=self.k.device)
        if self.ring:
            idx = self._slots(positions)
            return self.k[:, :, idx], self.v[:, :, idx], positions
        return self.k[:, :, :start], self.v[:, :, :start], positions

    def visible(self, pos: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Every key/value a query at `pos` sees, once `pos` itself has been written (slot order)."""
        n = min(pos + 1, self.slots)
        return self.k[:, :, :n], self.v[:, :, :n]


class KVCache:
    """One LayerCache per layer plus the number of positions already processed (`pos`)."""

    def __init__(self, config, batch: int, max_len: int, device=None, dtype=torch.float32):
        self.max_len = max_len
        self.pos = 0
        self.layers = [
            LayerCache(batch, config.kv_heads, min(config.window, max_len) if t == "sliding" else max_len,
                       config.head_dim, ring=t == "sliding", device=device, dtype=dtype)
            for t in config.layer_types
        ]

    def reset(self):
        self.pos = 0
