"""The SWAA rule, sinks + sliding window: a query at real position i sees key j iff j is a real token, j <= i, and
(i - j < W or j < keep_first or the query is 'full'). W counts the query's own token (flash-attn
``window_size=(W-1, 0)``); ``window=None`` is plain causal attention. Full queries (FA decode, full layers) are a
property of the call, not of the rule, and enter the predicate as a flag.

W=3, keep_first=1, 8 tokens (rows: queries, columns: keys; :meth:`SinkWindow.picture` draws it, a test keeps this
copy equal)::

    ■·······
    ■■······
    ■■■·····
    ■■■■····
    ■·■■■···
    ■··■■■··
    ■···■■■·
    ■····■■■

Every method returns the integers and tensor expressions the engine computed before it asked this class, so the
fast paths run the same kernels on the same arguments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


def visible(qp, kp, kv_valid, q_full, window: int | None, keep_first: int):
    """The predicate on real positions (broadcastable tensors): kept a plain function of ints so that mask_mods
    traced by torch.compile see exactly this expression."""
    seen = kv_valid & (kp <= qp)
    if window is None:
        return seen
    return seen & ((qp - kp < window) | (kp < keep_first) | q_full)


@dataclass(frozen=True)
class SinkWindow:
    """Window W (keys a query sees, itself included; None: no window) and keep_first sink positions."""

    window: int | None
    keep_first: int = 0
    name: ClassVar[str] = "sink_window"
    size_name: ClassVar[str] = "window"

    # ------------------------------------------------------------------ the predicate
    def visible(self, qp, kp, kv_valid, q_full):
        """Whether a query at real position ``qp`` sees a key at ``kp`` (bool tensors broadcast together)."""
        return visible(qp, kp, kv_valid, q_full, self.window, self.keep_first)

    # ------------------------------------------------------------------ the key span a query block needs
    @property
    def sinks_below(self) -> int:
        """Key positions below this are sinks, seen by every query outside its window; 0 without a window (every
        earlier key is seen anyway) or without sinks."""
        return self.keep_first if self.window is not None else 0

    def window_start(self, q_pos):
        """First position inside the window of a query at ``q_pos`` (int or tensor): ``q_pos - W + 1``. Needs a
        window."""
        return q_pos - self.window + 1

    span_start = window_start  # the mask-kind protocol's name (swaa_core.engine.kinds.MaskKind)

    @property
    def span(self) -> int | None:
        """Keys the window holds, the query's own included: W (None without a window)."""
        return self.window

    def sink_count(self, first_key: int, n_keys: int) -> int:
        """How many of ``n_keys`` keys at consecutive positions from ``first_key`` are sinks: they lead the run."""
        return min(max(self.keep_first - first_key, 0), n_keys)

    # ------------------------------------------------------------------ eviction
    def kept_slots(self, sink_slots: int | None = None) -> int:
        """Slots a layer that forgets old keys keeps: its sink slots (default ``keep_first``; more under left
        padding) plus the W newest, the query's own token included. Needs a window."""
        return (self.keep_first if sink_slots is None else sink_slots) + self.window

    def pairs_visited(self, n: int) -> int:
        """(query, key) pairs an n-token prefill visits: i + 1 keys while i < W, then W, plus the
        ``min(keep_first, i + 1 - W)`` sinks outside the window (no window: the causal triangle)."""
        window, sinks = self.window, self.keep_first
        if window is None or n <= window:
            return n * (n + 1) // 2
        m = n - window  # queries past the first window
        outside = m * (m + 1) // 2 if m <= sinks else sinks * (sinks + 1) // 2 + (m - sinks) * sinks
        return window * (window + 1) // 2 + m * window + outside

    # ------------------------------------------------------------------ when shortcuts apply
    def covers(self, reach: int) -> bool:
        """Whether the window holds every key at most ``reach`` positions before its query: sliding attention is then
        plain causal attention (short prompts), whatever the sinks."""
        return self.window is None or reach < self.window

    def causal_between(self, first_key: int, last_query: int) -> bool:
        """:meth:`covers` for the keys from ``first_key`` and the queries up to ``last_query``."""
        return self.covers(last_query - first_key)

    def sees_prefix(self, newest: int) -> bool:
        """Whether a query at position ``newest`` sees every position 0..newest (window and sinks overlap)."""
        return self.window is None or self.window_start(newest) <= self.keep_first

    def sees_held(self, newest: int, sinks: int, lo: int) -> bool:
        """Whether a query at ``newest`` sees every key of a cache holding positions [0, sinks) and [lo, newest]: the
        held sinks are sinks and the rest lies in the window (sufficient, not necessary: a decode-step shortcut)."""
        return self.window is None or (sinks <= self.keep_first and lo >= self.window_start(newest))

    @property
    def single_run_below(self) -> int:
        """Queries at positions below this see one run [first key, themselves] (sinks and window touch or overlap)."""
        return self.keep_first + self.window - 1

    # ------------------------------------------------------------------ window kernels
    @property
    def window_kernel(self) -> SinkWindow | None:
        """The window kernels run this rule itself (None without a window: nothing to slide)."""
        return self if self.window is not None else None

    @property
    def window_left(self) -> int:
        """The window kernels' left extent: W - 1 keys before the query."""
        return self.window - 1

    @property
    def window_size(self) -> tuple[int, int]:
        """flash-attn's ``window_size`` for the window part (the sinks are a separate pass)."""
        return (self.window_left, 0)

    # ------------------------------------------------------------------ FlexAttention mask_mods, in constants only
    def offsets_mask_mod(self, offsets):
        """The rule for consecutive positions: query index i is at position offsets[0] + i, key index j at
        offsets[1] + j (``offsets``: a 2-element device tensor, so one compiled graph serves every chunk). Same
        predicate as :func:`visible` with every key valid and no full query."""
        window, keep_first = self.window, self.keep_first

        def mask_mod(b, h, q_idx, kv_idx):
            q_pos, kv_pos = q_idx + offsets[0], kv_idx + offsets[1]
            return (kv_pos <= q_pos) & ((q_pos - kv_pos < window) | (kv_pos < keep_first))

        return mask_mod

    def prefill_mask_mod(self):
        """The rule for a whole unpadded prefill (index = position), in constants only: the form FlexAttention's
        FLASH backend translates into FlashAttention-4's mask (it rejected a predicate reading a captured tensor)."""
        window, keep_first = self.window, self.keep_first

        def mask_mod(b, h, q_idx, kv_idx):
            return (kv_idx <= q_idx) & ((q_idx - kv_idx < window) | (kv_idx < keep_first))

        return mask_mod

    # ------------------------------------------------------------------ configuration and picture
    def within(self, native_window: int) -> SinkWindow:
        """In a layer the model slides itself: its window narrowed to ``native_window`` at most, without sinks."""
        return SinkWindow(native_window if self.window is None else min(self.window, native_window), 0)

    def describe(self) -> str:
        if self.window is None:
            return "full attention"
        return f"SWA {self.window}" + (f" + {self.keep_first} sinks" if self.keep_first else "")

    def picture(self, n_tokens: int):
        """(n, n) bool tensor of what each of ``n_tokens`` prompt tokens sees (rows: queries, columns: keys), drawn by
        :func:`visible` on consecutive positions with every key real and no full query."""
        import torch  # here, not at the top: SWAAConfig imports the kinds, and `swaa --help` must not load torch

        pos = torch.arange(n_tokens)
        return visible(
            pos[:, None], pos[None, :], torch.tensor(True), torch.tensor(False), self.window, self.keep_first
        )
