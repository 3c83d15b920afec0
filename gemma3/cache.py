"""A preallocated key/value cache: every position for full layers, a ring of the last W for sliding ones.

Keys are stored after RoPE, so the order of slots in a ring does not matter to attention:
position p lives in slot p % W, and once the ring has wrapped it holds exactly the W most recent
positions, which are exactly the keys a sliding query may see.

Two ways in: a prompt (`write`, `past`: the slots it needs, gathered) and a decoded token (`put`,
`mask`: the new key and value written in place, attention over every slot with a mask made on the
device), whose shapes never change from one token to the next (Gemma3.decode, for CUDA graphs).
"""

from __future__ import annotations

import torch


class LayerCache:
    def __init__(self, batch: int, kv_heads: int, slots: int, head_dim: int, ring: bool, device, dtype):
        self.ring = ring
        self.slots = slots
        # Zeros: the decode step reads every slot (masking the unwritten ones; 0 * garbage could be NaN)
        self.k = torch.zeros(batch, kv_heads, slots, head_dim, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.index = torch.arange(slots, device=device)  # each slot's number, for the decode step's mask

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

    def put(self, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor):
        """Store one position's keys/values [B, KV, 1, D] in place; `pos` is a one-element tensor on the
        cache's device, so nothing here waits for the host or depends on its value."""
        slot = pos % self.slots if self.ring else pos
        self.k.index_copy_(2, slot, k)
        self.v.index_copy_(2, slot, v)

    def mask(self, pos: torch.Tensor) -> torch.Tensor:
        """Boolean [1, slots]: the slots a query at `pos` (a one-element tensor) sees, once every position up to
        it is written: a full layer's slots 0..pos; every slot of a ring that holds a position yet (slot s holds
        the newest position p <= pos with p % W == s, if p >= 0), which is exactly the sliding window."""
        if self.ring:
            return (pos - (pos - self.index) % self.slots >= 0)[None]
        return (self.index <= pos)[None]

    def past(self, start: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Cached keys, values and positions before `start` that a query at `start` or later can see."""
        first = max(0, start - self.slots + 1) if self.ring else 0
        positions = torch.arange(first, start, device=self.k.device)
        if self.ring:
            idx = self._slots(positions)
            return self.k[:, :, idx], self.v[:, :, idx], positions
        return self.k[:, :, :start], self.v[:, :, :start], positions


class KVCache:
    """One LayerCache per layer plus the number of positions already processed: `pos` on the host, and
    `position`, the same number as a one-element tensor on the cache's device (the decode step reads it)."""

    def __init__(self, config, batch: int, max_len: int, device=None, dtype=torch.float32):
        self.max_len = max_len
        self.position = torch.zeros(1, dtype=torch.long, device=device)
        self.pos = 0
        self.layers = [
            LayerCache(batch, config.kv_heads, min(config.window, max_len) if t == "sliding" else max_len,
                       config.head_dim, ring=t == "sliding", device=device, dtype=dtype)
            for t in config.layer_types
        ]

    @property
    def pos(self) -> int:
        return self._pos

    @pos.setter
    def pos(self, value: int):
        self._pos = value
        self.position.fill_(value)  # on a GPU an asynchronous write: the host never waits for it

