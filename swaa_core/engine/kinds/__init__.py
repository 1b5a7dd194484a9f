"""Mask kinds, one module each: what a kind lets a query see and every fact the engine's shortcuts derive from it.

A kind is a frozen, hashable dataclass built as ``Kind(size, keep_first)`` (``size``: SWAAConfig's
``sliding_window_size``, the window W or the chunk C). Layer plans, mask geometries, the cache layers and the
block-mask caches hold the kind object and key on it; a full-attention layer holds None instead of a kind. Every
consumer asks the kind through :class:`MaskKind`, so a new kind is one module here, its entry in :data:`KINDS` and its
tests (``tests/swaa_core/engine/test_kinds.py`` runs the contract over every kind in :data:`KINDS`).

Kinds: :class:`~swaa_core.engine.kinds.sink_window.SinkWindow` (SWAA's sinks + sliding window) and
:class:`~swaa_core.engine.kinds.chunked.ChunkedAttention` (Llama 4's chunked attention, plus sinks).
"""

from __future__ import annotations

from typing import ClassVar, Protocol

from .chunked import ChunkedAttention
from .sink_window import SinkWindow


class MaskKind(Protocol):
    """What the engine asks a mask kind. Positions are real token positions (padding excluded), ints or int64
    tensors that broadcast together. Every kind shows its sinks (key positions below ``keep_first``) to every query and
    its whole causal past to a *full* query (an FA-decode step); what else a query sees is the kind's own rule, which
    must be a run of keys ending at the query: ``[span_start(q), q]``, at most ``span`` keys."""

    name: ClassVar[str]  # the SWAAConfig.mask_kind value that selects the kind
    size_name: ClassVar[str]  # what SWAAConfig.sliding_window_size is for this kind, in SWAAConfig.notes' words
    keep_first: int  # sink positions: seen by every query

    # ------------------------------------------------------------------ the predicate
    def visible(self, qp, kp, kv_valid, q_full):
        """Whether a query at ``qp`` sees a key at ``kp`` (bool tensor of the broadcast shape): ``kv_valid`` False for
        padding keys, ``q_full`` True for queries that see their whole causal past."""

    # ------------------------------------------------------------------ the key span of a block of queries
    def span_start(self, q_pos):
        """First key position of the run a query at ``q_pos`` sees besides the sinks (int or tensor; may be
        negative). Non-decreasing in ``q_pos``, so a block of queries needs keys from ``span_start(min q_pos)`` to its
        last query, plus the sinks (the blocked CPU kernel, FlexAttention's candidate tiles)."""

    @property
    def span(self) -> int:
        """Most keys that run holds, the query's own included: a query at slot t needs nothing older than
        ``t - span + 1`` besides sinks, under any left padding (the width of an evicting layer's ring)."""

    @property
    def sinks_below(self) -> int:
        """Key positions below this are sinks that a query sees outside its run (the sink pass of the kernels)."""

    def pairs_visited(self, n: int) -> int:
        """(query, key) pairs an n-token prefill visits (the attention FLOPs of models/capacity.py)."""

    # ------------------------------------------------------------------ eviction
    def kept_slots(self, sink_slots: int | None = None) -> int:
        """Slots a layer that forgets old keys keeps: its sink slots (default ``keep_first``; more under left
        padding) plus ``span`` (cache.py's ring, static_cache.py's ring buffers, models/memory.py's KV bytes)."""

    # ------------------------------------------------------------------ when shortcuts apply
    def causal_between(self, first_key: int, last_query: int) -> bool:
        """Whether every query at a position <= ``last_query`` sees every earlier key at a position >= ``first_key``
        (sufficient, not necessary): the call is then plain causal attention and runs without a mask."""

    def sees_prefix(self, newest: int) -> bool:
        """Whether a query at ``newest`` sees every position 0..newest (a decode step that needs no mask)."""

    def sees_held(self, newest: int, sinks: int, lo: int) -> bool:
        """Whether a query at ``newest`` sees every key of a cache holding positions [0, sinks) and [lo, newest]
        (sufficient, not necessary: a decode step over an evicting layer's ring that needs no mask)."""

    # ------------------------------------------------------------------ kernels
    @property
    def window_kernel(self) -> SinkWindow | None:
        """The sink-window rule that FlashAttention's window kernels (``window_size`` plus a sink pass) run for this
        kind, or None when they cannot express it: the fa4 / flash backends are then refused by name and the
        dispatcher never takes that path."""

    def offsets_mask_mod(self, offsets):
        """FlexAttention ``mask_mod(b, h, q_idx, kv_idx)`` for consecutive positions: query index i at position
        ``offsets[0] + i``, key index j at ``offsets[1] + j`` (``offsets``: a 2-element device tensor, so one compiled
        graph serves every chunk), every key real, no full query."""

    def prefill_mask_mod(self):
        """The same for a whole unpadded prefill (index = position), in constants only (FlexAttention's FLASH
        backend rejects a predicate that reads a captured tensor)."""

    # ------------------------------------------------------------------ configuration and pictures
    def within(self, native_window: int) -> MaskKind:
        """This kind in a layer the model already slides with ``native_window``: never wider than that window and
        without sinks (SWAAConfig.layer_rule)."""

    def describe(self) -> str:
        """The kind in a few words, as SWAAConfig.describe shows it ("SWA 128 + 4 sinks")."""

    def picture(self, n_tokens: int):
        """(n, n) bool tensor of what each of ``n_tokens`` prompt tokens sees (rows: queries, columns: keys)."""


# SWAAConfig.mask_kind -> kind class; the first is the default
KINDS: dict[str, type] = {SinkWindow.name: SinkWindow, ChunkedAttention.name: ChunkedAttention}

__all__ = ["KINDS", "ChunkedAttention", "MaskKind", "SinkWindow"]
