"""A transformers cache layer that knows which token slots it still holds, so sliding layers can drop old keys.

Slots number the tokens of the padded batch in arrival order (the columns of the 2-D attention mask). A sliding layer
without FA decode needs only the sink slots and the last W-1 slots for any future query, so after each attention call
it keeps just those: its memory stays bounded however long the generation runs (upstream SWAA never frees KV).
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer, DynamicSlidingWindowLayer


class SWAACacheLayer(DynamicLayer):
    def __init__(self, **kwargs):
        super().__init__()
        self.slots: torch.Tensor | None = None  # the held slots, on the cache's device (the masks index with it)
        # The same slots as ascending [start, end) intervals on the host: eviction and the mask geometry decide from
        # these, so a decode step never waits for the GPU to answer which slots are held.
        self.held: list[tuple[int, int]] = []
        self.total = 0  # slots seen, evicted or not: the next token's slot index
        self.window: int | None = None  # set once this layer starts dropping old slots
        self.sink_slots: int | None = None  # leading slots holding every row's sinks, once no new token can be one

    @classmethod
    def from_layer(cls, layer) -> SWAACacheLayer:
        new = cls()
        if layer.is_initialized and layer.keys is not None and layer.keys.numel():
            if isinstance(layer, DynamicSlidingWindowLayer) and layer.cumulative_length > layer.keys.shape[-2]:
                raise ValueError(
                    "This cache already dropped tokens with the model's native sliding window; "
                    "apply SWAA before filling the cache."
                )
            new.update(layer.keys, layer.values)
        return new

    def lazy_initialization(self, key_states, value_states):
        super().lazy_initialization(key_states, value_states)
        self.slots = torch.empty(0, dtype=torch.long, device=self.device)

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = key_states.shape[-2]
        new_slots = torch.arange(self.total, self.total + n, device=self.device)
        self.keys = torch.cat([self.keys, key_states], dim=-2)
        self.values = torch.cat([self.values, value_states], dim=-2)
        self.slots = torch.cat([self.slots, new_slots])
        self.held = _merge([*self.held, (self.total, self.total + n)])
        self.total += n
        return self.keys, self.values

    def evict(self, sink_slots: int, window: int) -> None:
        """Keep slots < sink_slots and the last window-1 slots: all a later query can see in a sliding layer."""
        self.window = window
        tail = max(sink_slots, self.total - (window - 1))
        self._keep([(0, sink_slots), (tail, self.total)])

    def get_seq_length(self) -> int:
        return self.total

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.total + query_length, 0

    def crop(self, tokens_to_remove: int) -> None:
        """Roll back the newest tokens (assisted decoding); refuse when the window they expose was already dropped."""
        new_total = tokens_to_remove if tokens_to_remove > 0 else max(0, self.total + tokens_to_remove)
        if not self.is_initialized or new_total >= self.total:
            return
        if self.window is not None:
            needed_from = max(0, new_total - (self.window - 1))
            held = sum(max(0, min(end, new_total) - max(start, needed_from)) for start, end in self.held)
            if held < new_total - needed_from:
                raise ValueError("Cannot roll back a SWAA cache past tokens its sliding window already dropped.")
        self._keep([(0, new_total)])
        self.total = new_total

    def _keep(self, wanted: list[tuple[int, int]]) -> None:
        """Drop every held slot outside the ``wanted`` intervals, by slicing on host-known offsets (no sync)."""
        pieces, kept, offset = [], [], 0
        for start, end in self.held:
            for lo, hi in wanted:
                lo, hi = max(start, lo), min(end, hi)
                if lo < hi:
                    pieces.append((offset + lo - start, offset + hi - start))
                    kept.append((lo, hi))
            offset += end - start
        kept = _merge(kept)
        if kept == self.held:
            return
        pieces = _merge(pieces)
        self.keys = _take(self.keys, pieces, -2)
        self.values = _take(self.values, pieces, -2)
        self.slots = _take(self.slots, pieces, 0)
        self.held = kept

    def reset(self) -> None:
        super().reset()
        self.slots = None
        self.held = []
        self.total = 0
        self.window = None
        self.sink_slots = None


def _merge(intervals: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, non-empty [start, end) intervals with touching ones joined."""
    out: list[tuple[int, int]] = []
    for start, end in sorted(i for i in intervals if i[0] < i[1]):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def _take(t: torch.Tensor, pieces: list[tuple[int, int]], dim: int) -> torch.Tensor:
    """A copy, never a view: a view would keep the whole old tensor alive behind a small reported size."""
    return torch.cat([t.narrow(dim, lo, hi - lo) for lo, hi in pieces] or [t.narrow(dim, 0, 0)], dim=dim)


def ensure_swaa_layers(cache: Cache) -> None:
    """Turn the dynamic layers of a transformers Cache into SWAA layers (once; idempotent)."""
    for i, layer in enumerate(cache.layers):
        if isinstance(layer, SWAACacheLayer):
            continue
        if type(layer) not in (DynamicLayer, DynamicSlidingWindowLayer):
            raise ValueError(
                f"SWAA works with transformers' dynamic KV cache; got {type(layer).__name__} in layer {i}. "
                "Do not pass cache_implementation='static' (or a quantized/offloaded cache) while SWAA is applied."
            )
        cache.layers[i] = SWAACacheLayer.from_layer(layer)


def kv_cache_bytes(cache: Cache | None) -> list[int]:
    """Bytes of keys and values each layer of ``cache`` actually holds."""
    if cache is None:
        return []
    out = []
    for layer in cache.layers:
        keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
        size = 0
        for t in (keys, values):
            if isinstance(t, torch.Tensor):
                size += t.numel() * t.element_size()
        out.append(size)
    return out
