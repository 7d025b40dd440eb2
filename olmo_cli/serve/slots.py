"""The KV cache of continuous batching: one slot per request in flight, each at its own length.

`SlotCache` holds keys and values as [layers, slots, Hkv, capacity, hd]. Requests are prefilled into their
slots (`prefill`: plain causal attention over each prompt, several prompts of one length as rows of one
forward, the computation `olmo generate` does for one prompt); decode steps then run every active slot
together (`decode`), one new token each at that slot's own position, attending to its own positions only
(a boolean mask per row). Requests join and leave between steps without touching the others' entries.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from olmo_cli.model.generate import KVCache, cache_dtype, model_placement
from olmo_cli.model.olmo import OLMo

__all__ = ["SlotCache"]


class SlotCache:
    """Implements the model's `AttentionCache` for a prefill of one slot or a decode step of several."""

    def __init__(self, model: OLMo, slots: int, capacity: int) -> None:
        cfg = model.config
        dtype, device = model_placement(model)
        shape = (cfg.n_layers, slots, cfg.effective_n_kv_heads, capacity, cfg.head_dim)
        # Zeros, not uninitialized memory: a decode step reads each row's keys and values up to the longest
        # row's length, masked past its own; a masked value still enters the weighted sum (times 0), and
        # 0 * NaN from leftover bytes would poison the row. Entries left by an earlier request are finite.
        self.keys = torch.zeros(shape, dtype=cache_dtype(dtype, device), device=device)
        self.values = torch.zeros(shape, dtype=cache_dtype(dtype, device), device=device)
        self.n_layers = cfg.n_layers
        self.slots = slots
        self.capacity = capacity
        self.device = device
        self.lengths = [0] * slots  # positions written per slot
        self._rows: list[int] = []  # the slots of the current forward
        self._prefill = False
        self._index: tuple[torch.Tensor, torch.Tensor] | None = None
        self._mask: torch.Tensor | None = None
        self._span = 0

    @staticmethod
    def bytes_for(model: OLMo, slots: int, capacity: int) -> int:
        dtype, device = model_placement(model)
        return KVCache.bytes_for(model.config, slots, capacity, dtype, device)

    # ---- a forward's setup ---------------------------------------------------------------------------

    def prefill(self, slots: Sequence[int], length: int) -> torch.Tensor:
        """Prepares a forward of `length` prompt tokens for each of `slots` (one row each, from empty);
        returns their positions."""
        if length > self.capacity:
            raise ValueError(
                f"a prompt of {length} tokens does not fit the {self.capacity} positions of a slot"
            )
        for slot in slots:
            self.lengths[slot] = 0
        self._rows, self._prefill = list(slots), True
        return torch.arange(length, device=self.device)

    def decode(self, rows: Sequence[int]) -> torch.Tensor:
        """Prepares a one-token forward for each slot of `rows`; returns positions [len(rows), 1]."""
        if any(self.lengths[r] >= self.capacity for r in rows):
            raise ValueError("a slot is full")
        self._rows, self._prefill = list(rows), False
        positions = torch.tensor([self.lengths[r] for r in rows], device=self.device)
        row_index = torch.tensor(self._rows, device=self.device)
        self._index = (row_index, positions)
        self._span = max(self.lengths[r] for r in rows) + 1
        if all(self.lengths[r] + 1 == self._span for r in rows):
            self._mask = None  # every row sees all `span` positions: no mask (as `olmo generate` runs)
        else:
            keys = torch.arange(self._span, device=self.device)
            self._mask = (keys[None, :] <= positions[:, None])[:, None, None, :]  # [b, 1, 1, span]
        return positions[:, None]

    # ---- the AttentionCache protocol -----------------------------------------------------------------

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, bool]:
        keys, values = self.keys[layer], self.values[layer]
        last = layer == self.n_layers - 1
        if self._prefill:
            # From empty, each row attends to its own prompt only: this step's k, v, causally.
            t = k.shape[2]
            for i, slot in enumerate(self._rows):
                keys[slot, :, :t].copy_(k[i])
                values[slot, :, :t].copy_(v[i])
            if last:
                for slot in self._rows:
                    self.lengths[slot] = t
            return k, v, None, True
        assert self._index is not None
        rows, positions = self._index
        keys[rows, :, positions] = k[:, :, 0]
        values[rows, :, positions] = v[:, :, 0]
        if last:
            for r in self._rows:
                self.lengths[r] += 1
        first, count = self._rows[0], len(self._rows)
        if self._rows == list(range(first, first + count)):  # contiguous slots: views, no copy
            return (
                keys[first : first + count, :, : self._span],
                values[first : first + count, :, : self._span],
                self._mask,
                False,
            )
        return keys[rows, :, : self._span], values[rows, :, : self._span], self._mask, False
