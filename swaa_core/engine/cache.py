"""The KV cache layer SWAA installs in a transformers Cache: a plain growing cache, or, for a sliding layer that may
forget old keys, a fixed buffer of sink slots plus a ring of W slots written in place.

Slots number the tokens of the padded batch in arrival order (the columns of the 2-D attention mask). A sliding layer
without FA decode needs only the sink slots and the last W slots (the window, the query's own token included) for any
future query. Its buffer is allocated once, when the layer first holds more than sinks + W slots; from then on a decode
step writes its key at ring index ``(slot - sinks) % W`` over the slot that just left the window and attends to the
whole buffer with no mask and no gather: keys keep the rotary position they were written with, so their order in the
buffer does not matter to attention. Before that point, and for every other layer (full, FA decode), keys grow into
the room of a buffer allocated with ``SPARE_SLOTS`` slots to spare, written in place: transformers' ``DynamicLayer``
concatenates, which reads and writes the whole cache at every decode step (34 GB per token at 128K tokens of an 8B
model). All bookkeeping is host-side integers: no step reads a GPU value. With gradients on, every step copies instead,
as ``DynamicLayer`` does: attention may have saved the keys for the backward pass, and no write may touch them. A
buffer made under ``torch.inference_mode`` is copied, not written, by the first step outside it (torch forbids that
write). A growing layer's buffer holds a multiple of ``KEY_BUCKET`` slots, its room zero-filled, so that a masked
decode step may read to the bucket's end (``SWAACacheLayer.room``).

Multi-token forwards against a wrapped ring (chunked prefill, a second turn, assisted decoding) first lay the held keys
out in slot order ("flat"), which costs one gather; they are rare. ``activate_past_recording`` (called by transformers'
assisted decoding) keeps every key until the next ``crop``, so a rejected draft can be rolled back exactly.

A captured (CUDA graph) decode step needs every per-step value on the device: :mod:`.static_cache` takes over this
cache after the prefill for that (``model.generate(..., cache_implementation="static")``).
"""

from __future__ import annotations

import weakref
from typing import NamedTuple

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer, DynamicSlidingWindowLayer

from .kinds import MaskKind

SPARE_SLOTS = 256  # room a growing layer allocates: one copy of its cache per 256 decode steps instead of per step
KEY_BUCKET = 256  # a growing layer's buffer holds a multiple of this many slots, its room zero-filled (``room``)

NEEDS_SWAA = (
    "This KV cache dropped keys outside the SWAA window of layer {layer} ({kind}, {sinks} sink slots); it can only "
    "continue under a SWAA configuration whose window (or chunk) and sinks are no wider. Start a new cache "
    "(past_key_values=None) to change the configuration or to remove SWAA."
)


class KeyView(NamedTuple):
    """Which slots the keys returned by the last ``update`` hold, as host integers (a tuple: every decode step of
    every layer builds one, and a tuple builds in a fraction of a frozen dataclass's time).

    flat: slots [0, sinks) then [lo, total), in slot order (all of [0, total) when lo <= sinks).
    ring: index i < sinks holds slot i; index sinks + r holds the slot s in [lo, total) with (s - sinks) % W == r;
    indices of no such slot are stale (only possible right after a roll-back). W: ``width``, the ring's slots after
    the sinks (the kind's span; None unless ``ring``)."""

    ring: bool
    sinks: int
    lo: int
    total: int
    width: int | None

    @property
    def contiguous(self) -> bool:
        return not self.ring and self.lo <= self.sinks

    @property
    def first(self) -> int:
        """Smallest slot held."""
        return 0 if self.sinks or self.contiguous else self.lo

    def all_valid(self) -> bool:
        return not self.ring or self.total - self.lo >= self.width

    def in_window(self, kind: MaskKind | None) -> bool:
        """Whether the newest token (slot total - 1, no padding) sees every held key in a layer of ``kind`` (None:
        full attention)."""
        if kind is None:
            return True
        newest = self.total - 1
        if self.contiguous:
            return kind.sees_prefix(newest)
        return kind.sees_held(newest, self.sinks, self.lo) and self.all_valid()

    def slots(self, device) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(slot of each key index, validity or None when every index holds a live slot) on ``device``."""
        if self.contiguous:
            return torch.arange(self.total, device=device), None
        sinks = torch.arange(self.sinks, device=device)
        if not self.ring:
            return torch.cat([sinks, torch.arange(self.lo, self.total, device=device)]), None
        W, p = self.width, (self.total - self.sinks) % self.width
        ring = (torch.arange(W, device=device) - p) % W + (self.total - W)
        valid = None if self.all_valid() else torch.cat([torch.ones_like(sinks, dtype=torch.bool), ring >= self.lo])
        return torch.cat([sinks, ring]), valid


def ring_index(slots, sinks: int, window: int):
    """Buffer index of slot(s) in the sinks + W ring layout: a sink slot keeps its own index, a later slot s goes to
    ``sinks + (s - sinks) % W``. ``slots``: an int, or a tensor (then computed on its device, as a captured decode
    step needs)."""
    if isinstance(slots, torch.Tensor):
        return torch.where(slots < sinks, slots, sinks + (slots - sinks) % window)
    return slots if slots < sinks else sinks + (slots - sinks) % window


class SWAACacheLayer(DynamicLayer):
    """A DynamicLayer that counts slots and, once bound to an evicting plan, keeps only sinks + a ring of W slots.

    Host state: ``total`` slots seen; ``sinks`` leading slots kept; held slots ``[0, sinks)`` and ``[lo, total)``;
    ``ring``: keys/values are the fixed (B, H, sinks + W, D) buffer. ``kind``: the mask kind while the layer evicts
    (None otherwise); its span is the ring's width W, and it says how many slots the layer keeps."""

    is_croppable = True

    def __init__(self, layer_idx: int | None = None, **kwargs):
        super().__init__()
        self.layer_idx = layer_idx
        self.total = 0
        self.sinks = 0
        self.lo = 0
        self.ring = False
        self.kind: MaskKind | None = None
        self.settled = True  # False while the sink slots of an evicting layer are not known yet (left padding)
        self.holes = False  # a mask fed to this cache masked a token after a real one (not left padding)
        self.counts_slots = False  # the bound plan's window counts cache slots (the model's own, unchanged)
        self.record_past = False
        self.bound = None  # the plan this layer was last configured for
        self.plan = None  # the plan of the current call: set by the SWAA pre-hook, consumed by update
        self.view = KeyView(False, 0, 0, 0, None)
        self.handed_out = None  # weak references to the (keys, values) views ``_append`` returned last
        self.capacity = 0  # slots of the buffers those views are the start of

    @property
    def width(self) -> int | None:
        """W, the ring's slots after the sinks, while this layer evicts."""
        return None if self.kind is None else self.kind.span

    @classmethod
    def from_layer(cls, layer, layer_idx: int) -> SWAACacheLayer:
        new = cls(layer_idx)
        if layer.is_initialized and layer.keys is not None and layer.keys.numel():
            if isinstance(layer, DynamicSlidingWindowLayer) and layer.cumulative_length > layer.keys.shape[-2]:
                raise ValueError(
                    f"Layer {layer_idx} of this cache already dropped tokens with the model's native sliding window; "
                    "apply SWAA before filling the cache."
                )
            new.lazy_initialization(layer.keys, layer.values)
            new.keys, new.values, new.total = layer.keys, layer.values, layer.keys.shape[-2]
        return new

    # ------------------------------------------------------------------ configuration (the SWAA pre-hook)
    def bind(self, plan, mask2d: torch.Tensor | None, layer_idx: int) -> None:
        """Configure for ``plan`` before its forward; cheap unless the plan changed or sinks are still unsettled."""
        self.plan = plan
        if plan is self.bound and self.settled:
            return
        kind = plan.kind if plan.evicts else None
        if self.bound is None or kind != self.kind:
            self._check_serves(kind, layer_idx)
            if self.holes and self.counts_slots and not plan.counts_slots and self._dropped():
                raise ValueError(
                    f"Layer {layer_idx} of this cache dropped keys under the model's own sliding window, which counts "
                    "cache slots, and its prompt masked tokens inside it; the SWAA window now asked for counts real "
                    "tokens and may need keys already dropped. Apply SWAA before filling the cache, or keep those "
                    "tokens in the attention mask."
                )
            self.counts_slots = plan.counts_slots
            if self.ring:
                self.keys, self.values = self._flat()
                self.ring = False
            self.kind = kind
            self.settled = kind is None
        self.bound = plan
        if not self.settled:
            slots = _sink_slots(mask2d, self.kind.keep_first)
            if slots is not None and (self.total == 0 or not self._dropped()):
                self.sinks, self.lo, self.settled = slots, slots, True
            elif slots is not None and slots <= self.sinks:
                self.settled = True  # a narrower reconfiguration: the sinks already held cover the new ones

    def note_mask(self, mask2d: torch.Tensor | None) -> None:
        """Before every forward: whether ``mask2d`` masks a token after a real one (:func:`masked_inside_prompt`;
        a host value when the mask came through ``attention.swaa_mask``, else one device read). From then on a
        window counted in real tokens spans more slots than a ring of W, so this layer keeps every key
        (:attr:`keeps_all`). Keys a ring dropped before (a masked token in a later chunk, or a masked one-token
        forward) are not needed: every masked slot since is itself held, so the W real tokens before any later query
        lie within the held slots."""
        if not self.holes and mask2d is not None:
            self.holes = masked_inside_prompt(mask2d)

    @property
    def keeps_all(self) -> bool:
        """No ring: the cache has masked tokens inside a prompt and the window counts real tokens."""
        return self.holes and not self.counts_slots

    def _dropped(self) -> bool:
        return self.ring or self.lo > self.sinks

    def _holds_window(self, total: int, kind: MaskKind) -> bool:
        """Whether the held slots include the span - 1 before ``total`` (all the next query needs besides sinks,
        whatever its row's padding)."""
        need_from = max(self.sinks, total - kind.span + 1)
        return need_from >= total or self.lo <= need_from

    def _check_serves(self, kind: MaskKind | None, layer_idx: int) -> None:
        """Refuse a configuration that needs keys this layer already dropped."""
        if not self._dropped():
            return
        wider = kind is None or kind.span > self.width or kind.keep_first > self.kind.keep_first
        if wider or not self._holds_window(self.total, kind):
            raise ValueError(self._needs_swaa(layer_idx))

    def _needs_swaa(self, layer_idx) -> str:
        return NEEDS_SWAA.format(layer=layer_idx, kind=self.kind.describe(), sinks=self.sinks)

    # ------------------------------------------------------------------ writing
    def update(self, key_states, value_states, *args, **kwargs):
        plan, self.plan = self.plan, None
        if plan is None and (self.bound is not None or self.kind is not None):
            # driven without SWAA after SWAA (remove_swaa): exact only while nothing was dropped
            if self._dropped():
                raise ValueError(self._needs_swaa(self.layer_idx))
            self.kind, self.bound, self.settled = None, None, True
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        elif self.keys.dim() == 4 and key_states.shape[0] != self.keys.shape[0]:
            # an in-place write would broadcast one row into every held row (transformers' concatenation refuses)
            raise ValueError(
                f"This KV cache holds {self.keys.shape[0]} sequences in layer {self.layer_idx}, but the forward "
                f"feeds {key_states.shape[0]}; pass a cache built for this batch (or past_key_values=None)."
            )
        n = key_states.shape[-2]
        in_place = self.ring and n == 1 and not self.record_past and not self.keeps_all
        if in_place and not torch.is_grad_enabled() and _writable(self.keys):
            return self._write_one(key_states, value_states)  # in place: no key saved for backward may be written
        base_k, base_v = self._flat() if self.ring else (self.keys, self.values)
        self.ring = False
        keys, values = self._append(base_k, base_v, key_states, value_states)
        self.total += n
        view = KeyView(False, self.sinks, self.lo, self.total, None)
        self.keys, self.values = keys, values
        if self._may_ring():
            self._to_ring(keys, values)
            if n == 1:
                self.view = KeyView(True, self.sinks, self.lo, self.total, self.width)
                return self.keys, self.values
        self.view = view
        return keys, values

    def _append(self, base_k, base_v, key_states, value_states):
        """``base`` followed by the new keys / values. When ``base`` is the pair of views this layer handed out last
        and their buffers have room for the new tokens, they are extended in place; anything else is copied into new
        buffers with ``SPARE_SLOTS`` slots of room. The layer refers to its views only weakly: keys replaced from
        outside (cropped, reordered for beam search, offloaded) free the old buffers, and the next step grows new
        ones. Writes land only past every view handed out before. With gradients on, keys are concatenated, as in
        ``DynamicLayer``: attention may have saved an earlier view for the backward pass (queries that need a gradient
        against keys that need none), and any write into its buffer would invalidate it."""
        if torch.is_grad_enabled():
            return torch.cat([base_k, key_states], dim=-2), torch.cat([base_v, value_states], dim=-2)
        held = base_k.shape[-2] if base_k.dim() == 4 else 0  # a fresh layer holds a 1-D empty tensor
        end = held + key_states.shape[-2]
        if self._handed_out(base_k, base_v) and end <= self.capacity and _writable(base_k):
            k_buf, v_buf = _whole_buffer(base_k, self.capacity), _whole_buffer(base_v, self.capacity)
        else:
            # the dtype torch.cat gives: a fresh layer's empty tensor has the keys' dtype (float32 under autocast,
            # where values arrive in bfloat16)
            slots = bucket_end(end + SPARE_SLOTS)
            k_buf, v_buf = (
                t.new_empty(*t.shape[:2], slots, t.shape[-1], dtype=torch.promote_types(b.dtype, t.dtype))
                for b, t in ((base_k, key_states), (base_v, value_states))
            )
            for buf, base in ((k_buf, base_k), (v_buf, base_v)):
                if held:
                    buf.narrow(2, 0, held).copy_(base)
                buf.narrow(2, end, slots - end).zero_()  # ``room`` lets masked kernels read it: never NaN
            self.capacity = slots
        k_buf.narrow(2, held, end - held).copy_(key_states)
        v_buf.narrow(2, held, end - held).copy_(value_states)
        keys, values = k_buf.narrow(2, 0, end), v_buf.narrow(2, 0, end)
        self.handed_out = (weakref.ref(keys), weakref.ref(values))
        return keys, values

    def _handed_out(self, keys, values) -> bool:
        """Whether ``keys`` / ``values`` are the views ``_append`` returned last (the start of this layer's buffers)."""
        mine = self.handed_out
        return mine is not None and mine[0]() is keys and mine[1]() is values

    def room(self, keys, values, slots: int):
        """(keys, values) this layer handed out last, extended in place to ``slots`` slots of their buffers, or None
        (other tensors, or buffers shorter than ``slots``). Slots past the real ones hold finite values (zeros, keys
        written later, or rolled back), so a kernel may read them under a mask: a masked decode step reads to a
        multiple of ``KEY_BUCKET`` slots, and SDPA's cuDNN kernel, which builds an execution graph per new shape,
        meets one key length per bucket instead of a new one at every step."""
        if slots > self.capacity or not self._handed_out(keys, values):
            return None
        return _whole_buffer(keys, slots), _whole_buffer(values, slots)

    def _write_one(self, key_states, value_states):
        S, W = self.sinks, self.width
        i = ring_index(self.total, S, W)
        self.keys.narrow(2, i, 1).copy_(key_states)
        self.values.narrow(2, i, 1).copy_(value_states)
        self.total += 1
        self.lo = max(self.lo, self.total - W)  # the slot just overwritten left the ring
        self.view = KeyView(True, S, self.lo, self.total, W)
        return self.keys, self.values

    def _may_ring(self) -> bool:
        return (
            self.kind is not None
            and self.settled
            and not self.keeps_all
            and not self.record_past
            and self.total > self.kind.kept_slots(self.sinks)
        )

    def _flat_index(self, slot: int) -> int:
        """Index of a held slot in the flat layout."""
        return slot if slot < self.sinks or self.lo <= self.sinks else self.sinks + slot - self.lo

    def _to_ring(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Keep the sinks and the last W slots of flat ``keys``/``values`` in a new sinks + W buffer."""
        S, W = self.sinks, self.width
        lo = max(self.lo, self.total - W)
        where = ring_index(torch.arange(lo, self.total, device=keys.device), S, W)
        start, n = self._flat_index(lo), self.total - lo
        out = []
        for t in (keys, values):
            # zeros: a stale slot must never be NaN
            buf = t.new_zeros(*t.shape[:2], self.kind.kept_slots(S), t.shape[-1])
            buf[:, :, :S] = t[:, :, :S]
            buf.index_copy_(2, where, t.narrow(2, start, n))
            out.append(buf)
        self.keys, self.values = out
        self.lo, self.ring = lo, True

    def _flat(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The ring's held keys and values in slot order: sinks, then [lo, total)."""
        S, W = self.sinks, self.width
        where = ring_index(torch.arange(self.lo, self.total, device=self.keys.device), S, W)
        return tuple(torch.cat([t[:, :, :S], t.index_select(2, where)], dim=2) for t in (self.keys, self.values))

    # ------------------------------------------------------------------ transformers' Cache API
    def activate_past_recording(self) -> None:
        """Keep every key until the next ``crop`` (assisted decoding verifies drafts, then rolls rejected ones back)."""
        self.record_past = True

    def get_seq_length(self) -> int:
        return self.total

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.total + query_length, 0

    def crop(self, tokens_to_remove: int) -> None:
        """Roll back the newest tokens (a positive value is the length to keep); refuse when the window the new last
        token needs was already dropped. Afterwards an evicting layer shrinks back to sinks + W slots."""
        new_total = tokens_to_remove if tokens_to_remove > 0 else max(0, self.total + tokens_to_remove)
        if not self.is_initialized or new_total > self.total:
            return
        if new_total < self.total:
            if self._dropped() and not self._holds_window(new_total, self.kind):
                raise ValueError("Cannot roll back a SWAA cache past tokens its sliding window already dropped.")
            if self.ring:
                self.keys, self.values = self._flat()
                self.ring = False
            keep = min(self.sinks, new_total) + max(0, new_total - self.lo) if self._dropped() else new_total
            self.keys, self.values = self.keys[:, :, :keep], self.values[:, :, :keep]  # new views: the next step
            # copies them into new buffers, since views handed out before may still read the rows past ``keep``
            self.total, self.lo = new_total, min(self.lo, new_total)
        if not self.ring and self._may_ring_after_crop():
            self._to_ring(self.keys, self.values)
        self.view = KeyView(self.ring, self.sinks, self.lo, self.total, self.width if self.ring else None)

    def _may_ring_after_crop(self) -> bool:
        return (
            self.kind is not None
            and self.settled
            and not self.keeps_all
            and self.total > self.kind.kept_slots(self.sinks)
        )

    def __getstate__(self):
        return {**self.__dict__, "handed_out": None}  # weak references cannot be pickled; the next step copies

    def reset(self) -> None:
        super().reset()
        self.__init__(layer_idx=self.layer_idx)


def bucket_end(slots: int) -> int:
    """``slots`` rounded up to a multiple of ``KEY_BUCKET``: where a growing layer's buffer, or a masked decode step's
    read of it, ends."""
    return -(-slots // KEY_BUCKET) * KEY_BUCKET


def _writable(buffer: torch.Tensor) -> bool:
    """Whether ``buffer`` may be written in place now: a tensor made under ``torch.inference_mode`` (a prompt
    prefilled there) may not be written outside it, so the next step outside copies into ordinary buffers, as
    transformers' concatenating cache effectively does."""
    return torch.is_inference_mode_enabled() or not buffer.is_inference()


def _whole_buffer(view: torch.Tensor, slots: int) -> torch.Tensor:
    """The first ``slots`` slots of the buffer whose start ``view`` (B, H, n, D) is. Rebuilt from the view's strides,
    not from ``view._base``: views made under ``torch.inference_mode`` do not record their base."""
    return view.as_strided((*view.shape[:2], slots, view.shape[3]), view.stride(), view.storage_offset())


MASKED_INSIDE = "_swaa_masked_inside"  # attribute attention.swaa_mask sets on the 2-D mask it hands the layers


def masked_inside_prompt(mask2d: torch.Tensor) -> bool:
    """Whether some row masks a token after its first real one (a hole, not left padding): the answer
    ``attention.swaa_mask`` attached to the mask, else one device read."""
    known = getattr(mask2d, MASKED_INSIDE, None)
    if known is not None:
        return known
    return bool(masked_inside_rows(mask2d).any())


def masked_inside_rows(mask2d: torch.Tensor) -> torch.Tensor:
    """(B,) bool: whether each row masks a token after its first real one."""
    mask = mask2d.long()
    return (mask.cummax(-1).values > mask).any(-1)


def _sink_slots(mask2d: torch.Tensor | None, keep_first: int) -> int | None:
    """Leading slots that hold every row's first keep_first real tokens (rows differ by left padding); None while
    some row has fewer real tokens (a later token may still be a sink). One device read, until settled."""
    if keep_first == 0 or mask2d is None:
        return keep_first
    real_before = mask2d.long().cumsum(-1)
    if bool((real_before[:, -1] < keep_first).any()):
        return None
    return int(torch.searchsorted(real_before, torch.full_like(real_before[:, :1], keep_first)).max()) + 1


def swaa_layer(cache: Cache, layer_idx: int) -> SWAACacheLayer:
    """The SWAA layer for ``layer_idx`` in a transformers Cache, converting (or, for lazily built caches, creating) it.

    Refuses cache classes whose storage SWAA cannot track: static, quantized, and other fixed-size layers."""
    layers = cache.layers
    if layer_idx < len(layers):
        layer = layers[layer_idx]
        if type(layer) is SWAACacheLayer:
            return layer
    elif getattr(cache, "layer_class_to_replicate", None) is DynamicLayer:
        while len(layers) <= layer_idx:  # a DynamicCache() made without a config grows its layers lazily
            layers.append(DynamicLayer())
        layer = layers[layer_idx]
    else:
        raise ValueError(f"This KV cache has no layer {layer_idx}; pass a cache built for this model.")
    if type(layer) not in (DynamicLayer, DynamicSlidingWindowLayer):
        raise ValueError(
            f"SWAA works with transformers' dynamic KV cache (DynamicCache); got {type(layer).__name__} in layer "
            f"{layer_idx}. Do not pass a StaticCache or a quantized cache while SWAA is applied: SWAA already keeps "
            "sliding layers at sinks + window slots. For fixed buffers and CUDA-graph decoding call "
            "model.generate(..., cache_implementation='static'), which SWAA serves with its own static cache."
        )
    layers[layer_idx] = swaa = SWAACacheLayer.from_layer(layer, layer_idx)
    return swaa


def growing_cache(model) -> DynamicCache:
    """A ``DynamicCache`` for ``model`` whose full-attention layers are SWAA's growing layers (new tokens written in
    place), for runs with or without SWAA: when every compared run stores its keys the same way, a difference in
    decode time comes from attention, not from transformers' per-step concatenation. Without SWAA the layers hold
    exactly what ``DynamicLayer`` holds; layers the model slides natively keep transformers' sliding layer."""
    cache = DynamicCache(config=model.config)
    cache.layers = [SWAACacheLayer(i) if type(layer) is DynamicLayer else layer for i, layer in enumerate(cache.layers)]
    return cache


def kv_cache_bytes(cache: Cache | None) -> list[int]:
    """Bytes of keys and values each layer of ``cache`` actually holds (a ring layer: its whole buffer; the room of a
    growing SWAA layer, ``SPARE_SLOTS`` to ``SPARE_SLOTS + KEY_BUCKET - 1`` slots, is not counted)."""
    if cache is None:
        return []
    if not isinstance(getattr(cache, "layers", None), (list, tuple)):
        raise TypeError(
            f"kv_cache_bytes takes a transformers Cache (e.g. generate(..., return_dict_in_generate=True)"
            f".past_key_values), got {type(cache).__name__}."
        )
    out = []
    for layer in cache.layers:
        keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
        size = 0
        for t in (keys, values):
            if isinstance(t, torch.Tensor):
                size += t.numel() * t.element_size()
        out.append(size)
    return out
