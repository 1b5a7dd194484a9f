"""What SinkWindow offers beyond the mask-kind contract (test_kinds.py runs that over every kind), against the rule of
docs/paper.md spelled out as plain Python loops over positions: no window, the sink count and the window-kernel
parameters of the sink + window composition, ``covers`` and the single run of the first queries."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from swaa_core.engine.kinds import SinkWindow

WINDOWS = st.one_of(st.none(), st.integers(1, 12))
SINKS = st.integers(0, 8)


def sees(i: int, j: int, window: int | None, keep_first: int, full: bool = False, valid: bool = True) -> bool:
    """Query at real position i, key at j."""
    if not valid or j > i:
        return False
    return window is None or full or i - j < window or j < keep_first


@settings(max_examples=40, deadline=None)
@given(keep_first=SINKS, n=st.integers(1, 24), data=st.data())
def test_no_window_is_the_causal_past_whatever_the_sinks(keep_first, n, data):
    kv_valid = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    rule = SinkWindow(None, keep_first)
    pos = torch.arange(n)
    got = rule.visible(pos[:, None], pos[None, :], torch.tensor(kv_valid)[None, :], torch.tensor(False))
    assert torch.equal(got, torch.tensor([[sees(i, j, None, keep_first, valid=kv_valid[j]) for j in range(n)]
                                          for i in range(n)]))  # fmt: skip
    assert torch.equal(rule.picture(n), torch.ones(n, n, dtype=torch.bool).tril())
    assert rule.sinks_below == 0  # no key is seen *because* it is a sink: the whole causal past is seen
    assert rule.covers(n) and rule.sees_prefix(n) and rule.sees_held(n, n, n)
    assert rule.window_kernel is None and rule.describe() == "full attention"
    assert rule.pairs_visited(n) == n * (n + 1) // 2


@settings(max_examples=100, deadline=None)
@given(keep_first=SINKS, first_key=st.integers(0, 12), n_keys=st.integers(0, 12), window=WINDOWS)
def test_sink_count_counts_the_leading_sink_keys(keep_first, first_key, n_keys, window):
    expected = sum(1 for p in range(first_key, first_key + n_keys) if p < keep_first)
    assert SinkWindow(window, keep_first).sink_count(first_key, n_keys) == expected


@settings(max_examples=150, deadline=None)
@given(window=WINDOWS, keep_first=SINKS, reach=st.integers(0, 20))
def test_covers_means_plain_causal_within_the_reach(window, keep_first, reach):
    pairs = [(i, j) for i in range(reach + 3) for j in range(i + 1) if i - j <= reach]
    plain = all(sees(i, j, window, keep_first) for i, j in pairs)
    covers = SinkWindow(window, keep_first).covers(reach)
    if covers:
        assert plain
    if keep_first == 0:  # without sinks nothing else can make far keys visible
        assert covers == plain


@settings(max_examples=60, deadline=None)
@given(window=st.integers(1, 12), keep_first=SINKS)
def test_queries_below_single_run_below_see_their_whole_past(window, keep_first):
    rule = SinkWindow(window, keep_first)
    for i in range(rule.single_run_below):
        assert all(sees(i, j, window, keep_first) for j in range(i + 1))


@settings(max_examples=100, deadline=None)
@given(window=st.integers(1, 12), keep_first=SINKS, n=st.integers(1, 30))
def test_window_kernel_plus_sink_pass_is_the_rule(window, keep_first, n):
    """flash-attn's window_size=(left, right) shows query i the keys i - left <= j <= i + right (causal, same length);
    the sink pass adds the first ``sink_count`` keys."""
    rule = SinkWindow(window, keep_first)
    assert rule.window_kernel is rule
    left, right = rule.window_size
    assert left == rule.window_left
    sinks = rule.sink_count(0, n)
    for i in range(n):
        for j in range(n):
            kernel = i - left <= j <= min(i + right, i) or (j < sinks and j <= i)
            assert kernel == sees(i, j, window, keep_first)


def test_within_a_native_window_is_the_narrower_window_without_sinks():
    assert SinkWindow(8, 4).within(5) == SinkWindow(5, 0)
    assert SinkWindow(3, 4).within(5) == SinkWindow(3, 0)
    assert SinkWindow(None, 4).within(5) == SinkWindow(5, 0)
