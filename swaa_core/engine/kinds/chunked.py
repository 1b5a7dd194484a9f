"""Chunked attention as in Llama 4 (``attention_chunk_size`` C; transformers' ``chunked_overlay``): the sequence is cut
into chunks of C real positions and a query at real position i sees key j iff j is a real token, j <= i and
(j // C == i // C or j < keep_first or the query is 'full'). As under SinkWindow, the first keep_first positions are
sinks every query sees, and a full query (an FA-decode step, selected by ``force_fa_decode``) sees its whole causal
past. Chunks count real positions, so left padding shifts them with the row (as transformers' ``left_padding``).

C=3, keep_first=1, 8 tokens (rows: queries, columns: keys; a test keeps this copy equal to :meth:`picture`)::

    ■·······
    ■■······
    ■■■·····
    ■··■····
    ■··■■···
    ■··■■■··
    ■·····■·
    ■·····■■

No window kernel expresses it (FlashAttention's ``window_size`` is a band, not a block diagonal), so the fa4 and
flash backends refuse it; the reference, blocked and flex backends run it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .sink_window import SinkWindow


@dataclass(frozen=True)
class ChunkedAttention:
    """Chunks of ``chunk_size`` positions (C) and ``keep_first`` sink positions; see the module docstring."""

    chunk_size: int
    keep_first: int = 0
    name: ClassVar[str] = "chunked"
    size_name: ClassVar[str] = "chunk"

    def __post_init__(self) -> None:
        C = self.chunk_size
        if isinstance(C, bool) or not isinstance(C, int) or C < 1:
            raise ValueError(f"The chunked mask kind needs a chunk size of at least 1 position, got {C!r}.")

    def visible(self, qp, kp, kv_valid, q_full):
        C = self.chunk_size
        return kv_valid & (kp <= qp) & ((kp // C == qp // C) | (kp < self.keep_first) | q_full)

    def span_start(self, q_pos):
        """The first position of the query's chunk (floor division: -C for a padding query at -1)."""
        return q_pos // self.chunk_size * self.chunk_size

    @property
    def span(self) -> int:
        return self.chunk_size

    @property
    def sinks_below(self) -> int:
        return self.keep_first

    def kept_slots(self, sink_slots: int | None = None) -> int:
        return (self.keep_first if sink_slots is None else sink_slots) + self.chunk_size

    def pairs_visited(self, n: int) -> int:
        """Each chunk's causal triangle, plus for every query past the first chunk the sinks before its chunk."""
        C, K = self.chunk_size, self.keep_first
        whole, rest = divmod(n, C)
        inside = whole * C * (C + 1) // 2 + rest * (rest + 1) // 2
        low = min(max(whole - 1, 0), K // C)  # whole chunks c >= 1 that start at or below K: min(K, c * C) = c * C
        outside = C * C * low * (low + 1) // 2 + C * K * max(whole - 1 - low, 0)
        return inside + outside + (rest * min(K, whole * C) if whole else 0)

    def causal_between(self, first_key: int, last_query: int) -> bool:
        return first_key // self.chunk_size == last_query // self.chunk_size

    def sees_prefix(self, newest: int) -> bool:
        return self.span_start(newest) <= self.keep_first

    def sees_held(self, newest: int, sinks: int, lo: int) -> bool:
        return sinks <= self.keep_first and lo >= self.span_start(newest)

    @property
    def window_kernel(self) -> None:
        return None

    def offsets_mask_mod(self, offsets):
        C, keep_first = self.chunk_size, self.keep_first

        def mask_mod(b, h, q_idx, kv_idx):
            q_pos, kv_pos = q_idx + offsets[0], kv_idx + offsets[1]
            return (kv_pos <= q_pos) & ((kv_pos // C == q_pos // C) | (kv_pos < keep_first))

        return mask_mod

    def prefill_mask_mod(self):
        C, keep_first = self.chunk_size, self.keep_first

        def mask_mod(b, h, q_idx, kv_idx):
            return (kv_idx <= q_idx) & ((kv_idx // C == q_idx // C) | (kv_idx < keep_first))

        return mask_mod

    def within(self, native_window: int) -> ChunkedAttention | SinkWindow:
        """Chunks no longer than the layer's own window only narrow it (a query sees at most C - 1 earlier keys);
        longer ones would widen it, so such a layer keeps its own window."""
        if self.chunk_size <= native_window:
            return ChunkedAttention(self.chunk_size, 0)
        return SinkWindow(native_window, 0)

    def describe(self) -> str:
        return f"chunked {self.chunk_size}" + (f" + {self.keep_first} sinks" if self.keep_first else "")

    def picture(self, n_tokens: int):
        import torch  # here, not at the top: SWAAConfig imports the kinds, and `swaa --help` must not load torch

        pos = torch.arange(n_tokens)
        return self.visible(pos[:, None], pos[None, :], torch.tensor(True), torch.tensor(False))
