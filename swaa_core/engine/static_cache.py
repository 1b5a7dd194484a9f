"""A KV cache of fixed shapes for decoding, so that one decode step can be captured in a CUDA graph and replayed.

Every per-step fact lives on the device: the slot being written (one int64), each row's real position (B, 1), and
per layer the real position held at each buffer index (-1: empty or padding). A step writes its key and value with
``index_copy_`` at an index computed on the device, derives the layer's visibility mask from those positions with the
layer's mask kind (:mod:`swaa_core.engine.kinds`), and attends to the whole buffer. Nothing is read back
to the host, no shape changes, so the kernels of a step are the same from one token to the next.

Two buffer kinds, chosen per layer from its :class:`~swaa_core.engine.attention.LayerPlan`:

* **ring**: a sliding layer whose decode steps also slide keeps ``sinks + W`` slots, the layout of
  :class:`~swaa_core.engine.cache.SWAACacheLayer`'s ring: slot ``s`` lives at ``s`` while ``s < sinks``, else at
  ``sinks + (s - sinks) % W``, W the kind's span. The step costs the same at 8K and at 128K tokens of context.
* **flat**: full layers and FA-decode layers keep every slot up to ``max_slots`` (prompt + new tokens), like
  transformers' ``StaticCache``.

A cache is built from a prefilled SWAA dynamic cache (:meth:`StaticSWAACache.from_dynamic`); the prefill itself runs
through the fast prefill kernels, not here. Source of the idea: transformers' ``StaticCache`` (fixed buffers written
with ``index_copy_`` under ``torch.compile``) and gpt-fast's CUDA-graph decode.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from .cache import KeyView, SWAACacheLayer, ring_index
from .kernels.sdpa import decode_sdpa
from .kinds import MaskKind
from .masks import visible


class SlotTable:
    """Where each buffer index sits, shared by every layer of one buffer geometry (their slots are the same):
    the real position held at each index (B, L), -1 where none, and per step the write index and the (B, 1, 1, L)
    mask. The first layer of the group (``owner``) refreshes them; the others read them, so a step pays for them
    once, not once per layer.

    ``ring``: (sinks, W) for a ring buffer of ``sinks + W`` indices, else None (index = slot).
    ``kind``: what decode queries see (None under FA decode and in full layers: every key)."""

    def __init__(self, positions, clock, *, ring, kind: MaskKind | None, owner: int):
        self.positions, self.clock = positions, clock
        self.ring, self.kind, self.owner = ring, kind, owner
        self.index = self.mask = None

    def refresh(self, layer_idx: int) -> None:
        if layer_idx != self.owner and self.index is not None:
            return
        slot = self.clock.slot
        if self.ring is None:
            self.index = slot
        else:
            self.index = ring_index(slot, *self.ring)
        self.positions.index_copy_(1, self.index, self.clock.positions)
        held = self.positions
        self.mask = visible(self.kind, self.clock.positions, held, held >= 0, False)[:, None, None]


class StaticSlots(CacheLayerMixin):
    """One layer's fixed (B, H, L, D) key and value buffers, and the :class:`SlotTable` of its geometry."""

    is_compileable = True
    is_sliding = False

    def __init__(self, keys, values, table: SlotTable, layer_idx: int):
        super().__init__()
        self.keys, self.values, self.table, self.layer_idx = keys, values, table, layer_idx
        self.is_initialized = True

    def lazy_initialization(self, key_states, value_states) -> None:  # buffers exist from the start
        pass

    def update(self, key_states, value_states, *args, **kwargs):
        if key_states.shape[-2] != 1:
            raise ValueError("A static SWAA cache takes one token per step; prefill with the dynamic cache first.")
        self.table.refresh(self.layer_idx)
        self.keys.index_copy_(2, self.table.index, key_states)
        self.values.index_copy_(2, self.table.index, value_states)
        return self.keys, self.values

    def attend(self, query, key, value, scaling: float) -> torch.Tensor:
        """(B, H, 1, D) query over the whole buffer under this step's mask -> (B, 1, H, D), through SDPA, compiled
        or not. (FlexAttention under compile was measured instead and lost: 114 us per layer against SDPA's 9 us in
        the SWA step of a 32K prompt (a 2,176-key ring) on an H100, no split-KV kernel chosen, and other greedy
        tokens than the eager step; 2026-12-06, docs/benchmarks.md.)"""
        return decode_sdpa(query, key, value, self.table.mask, scaling, fixed_shape=True)

    def get_seq_length(self) -> int:
        return self.table.clock.seen

    def get_mask_sizes(self, query_length: int, *args) -> tuple[int, int]:
        return self.keys.shape[-2], 0

    def get_max_length(self) -> int:
        return self.keys.shape[-2]

    get_max_cache_shape = get_max_length  # the name transformers 5.17 asks for


class DecodeClock:
    """The device-side counters of a decode step: the slot written (1,) and each row's real position (B, 1).

    ``advance()`` moves them on the device (inside a captured step); ``seen`` is the host's count of slots."""

    def __init__(self, slot: int, positions: torch.Tensor):
        self.slot = torch.tensor([slot], dtype=torch.long, device=positions.device)
        self.positions = positions.to(torch.long).view(-1, 1).clone()
        self.seen = slot

    def advance(self) -> None:
        self.slot.add_(1)
        self.positions.add_(1)


class StaticSWAACache(Cache):
    """A transformers Cache of :class:`StaticSlots` layers, one decode token per forward."""

    def __init__(self, layers: list[StaticSlots], clock: DecodeClock):
        super().__init__(layers=layers)
        self.clock = clock

    def get_query_offset(self, layer_idx: int = 0):
        """Slots before the query: the host's count, or under torch.compile the device's (a host int would be a
        guard on its value, one recompilation per step; transformers' masking takes either)."""
        if torch.compiler.is_compiling():
            return self.clock.slot[0]
        return self.clock.seen

    @classmethod
    def from_dynamic(cls, cache: Cache, plans, mask2d: torch.Tensor | None, max_slots: int) -> StaticSWAACache:
        """Move a prefilled SWAA dynamic cache into fixed buffers that hold up to ``max_slots`` slots.

        ``plans``: the model's LayerPlans; ``mask2d``: the prompt's (B, T) padding mask or None. The dynamic layers
        are emptied as they are moved, so at most one layer is held twice. Raises ValueError when ``max_slots`` is
        smaller than what the cache already holds."""
        layers = cache.layers
        first = layers[0]
        total = first.total if isinstance(first, SWAACacheLayer) else first.get_seq_length()
        if max_slots <= total:
            raise ValueError(f"max_slots ({max_slots}) must exceed the {total} slots the prompt already fills.")
        device = first.keys.device
        if mask2d is None:
            real = torch.arange(total, device=device)[None].expand(first.keys.shape[0], total)
            next_positions = torch.full((first.keys.shape[0],), total, device=device)
        else:
            mask2d = mask2d.to(device=device, dtype=torch.bool)
            real = torch.where(mask2d, mask2d.long().cumsum(-1) - 1, -1)
            next_positions = mask2d.long().sum(-1)
        clock = DecodeClock(total, next_positions)
        static, tables = [], []
        for i, (plan, layer) in enumerate(zip(plans, layers, strict=True)):
            static.append(_static_layer(layer, plan, real, max_slots, clock, tables, i))
            layer.keys = layer.values = None
        return cls(static, clock)

    def for_rows(self, rows: int) -> StaticSWAACache:
        """Empty fixed buffers for ``rows`` rows with this one-row cache's geometry, for prefilling a batch one request
        at a time (:meth:`put_row`). Make it from the most padded row: its sink slots cover every row's first
        ``keep_first`` real tokens and its buffer kinds (a ring once those are all held, else flat) are what a batch
        prefill would choose. Raises ValueError unless this cache has exactly one row."""
        if self.clock.positions.shape[0] != 1:
            raise ValueError(f"for_rows takes a one-row cache (this one has {self.clock.positions.shape[0]} rows).")
        clock = DecodeClock(self.clock.seen, torch.full((rows, 1), -1, device=self.clock.positions.device))
        tables, layers = {}, []
        for layer in self.layers:
            old = layer.table
            if id(old) not in tables:
                held = old.positions.new_full((rows, old.positions.shape[1]), -1)
                tables[id(old)] = SlotTable(held, clock, ring=old.ring, kind=old.kind, owner=old.owner)
            keys, values = (t.new_zeros(rows, *t.shape[1:]) for t in (layer.keys, layer.values))  # zeros: never NaN
            layers.append(StaticSlots(keys, values, tables[id(old)], layer.layer_idx))
        return StaticSWAACache(layers, clock)

    def put_row(self, row: int, other: StaticSWAACache, pad: int) -> None:
        """Copy the one-row cache ``other`` (same plans, prompt length and ``max_slots``; ``pad`` left-padding
        slots) into row ``row`` of buffers made by :meth:`for_rows`. Each held key goes to the index of its slot
        (real position + ``pad``) in this cache's layout."""
        if other.clock.seen != self.clock.seen or len(other.layers) != len(self.layers):
            raise ValueError("put_row needs a one-row cache of the same prompt length and layers.")
        self.clock.positions[row] = other.clock.positions[0]
        for mine, theirs in zip(self.layers, other.layers, strict=True):
            real = theirs.table.positions[0]
            held = (real >= 0).nonzero().squeeze(1)
            slots = real[held] + pad
            index = slots if mine.table.ring is None else ring_index(slots, *mine.table.ring)
            mine.keys[row].index_copy_(1, index, theirs.keys[0].index_select(1, held))
            mine.values[row].index_copy_(1, index, theirs.values[0].index_select(1, held))
            mine.table.positions[row].index_copy_(0, index, real[held])


def _static_layer(layer, plan, real, max_slots: int, clock: DecodeClock, tables: list, i: int) -> StaticSlots:
    """Copy dynamic layer ``i`` into its fixed buffers; ``real`` (B, total): real position of each slot, -1 padding.
    Its SlotTable is the one in ``tables`` with the same geometry and positions, else a new one appended there."""
    keys, values = layer.keys, layer.values
    B, H, _, D = keys.shape
    if isinstance(layer, SWAACacheLayer):  # the stored layout (``view`` describes the last call's return value)
        stored = KeyView(layer.ring, layer.sinks, layer.lo, layer.total, layer.width if layer.ring else None)
        slots, live = stored.slots(keys.device)
    else:
        stored, slots, live = None, torch.arange(keys.shape[-2], device=keys.device), None
    held = real[:, slots]
    if live is not None:
        held = torch.where(live, held, -1)
    kind = plan.kind if plan.evicts else None
    ring = None
    if kind is not None and isinstance(layer, SWAACacheLayer) and layer.settled and not layer.keeps_all:
        ring = (layer.sinks, kind.span)
    size = kind.kept_slots(layer.sinks) if ring is not None else max_slots
    index = slots if ring is None else ring_index(slots, *ring)
    if stored is not None and stored.ring:
        index = torch.arange(keys.shape[-2], device=keys.device)  # already in ring layout
    out_k = keys.new_zeros(B, H, size, D)  # zeros: an unwritten index must never be NaN
    out_v = values.new_zeros(B, values.shape[1], size, values.shape[-1])
    positions = torch.full((B, size), -1, dtype=torch.long, device=keys.device)
    out_k.index_copy_(2, index, keys)
    out_v.index_copy_(2, index, values)
    positions.index_copy_(1, index, held)
    for table in tables:  # one host read per layer, at setup only
        same_rule = (table.ring, table.kind) == (ring, kind)
        if same_rule and table.positions.shape == positions.shape and torch.equal(table.positions, positions):
            return StaticSlots(out_k, out_v, table, i)
    tables.append(SlotTable(positions, clock, ring=ring, kind=kind, owner=i))
    return StaticSlots(out_k, out_v, tables[-1], i)
