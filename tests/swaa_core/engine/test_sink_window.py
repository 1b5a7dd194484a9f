"""The SinkWindow mask kind against the rule of docs/paper.md spelled out as plain Python loops over positions: its
predicate, the key span a query needs, the slots an evicting layer keeps, the shortcuts the engine takes on its word,
the window-kernel parameters, the FlexAttention mask_mods and its picture."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from swaa_core.engine.kinds import SinkWindow, sink_window

WINDOWS = st.one_of(st.none(), st.integers(1, 12))
SINKS = st.integers(0, 8)


def sees(i: int, j: int, window: int | None, keep_first: int, full: bool = False, valid: bool = True) -> bool:
    """Query at real position i, key at j."""
    if not valid or j > i:
        return False
    return window is None or full or i - j < window or j < keep_first


@settings(max_examples=150, deadline=None)
@given(window=WINDOWS, keep_first=SINKS, n=st.integers(1, 24), data=st.data())
def test_predicate_equals_the_hand_loop(window, keep_first, n, data):
    kv_valid = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    q_full = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    pos = torch.arange(n)
    got = SinkWindow(window, keep_first).visible(
        pos[:, None], pos[None, :], torch.tensor(kv_valid)[None, :], torch.tensor(q_full)[:, None]
    )
    want = [[sees(i, j, window, keep_first, q_full[i], kv_valid[j]) for j in range(n)] for i in range(n)]
    assert torch.equal(got, torch.tensor(want))


@settings(max_examples=150, deadline=None)
@given(window=WINDOWS, keep_first=SINKS, n=st.integers(1, 40))
def test_key_span_holds_every_visible_key_and_nothing_it_calls_visible_is_hidden(window, keep_first, n):
    rule = SinkWindow(window, keep_first)
    if window is None:
        assert rule.sinks_below == 0  # no key is seen *because* it is a sink: the whole causal past is seen
        return
    assert rule.sinks_below == keep_first
    for i in range(n):
        span = set(range(min(rule.sinks_below, i + 1))) | set(range(max(rule.window_start(i), 0), i + 1))
        assert span == {j for j in range(n) if sees(i, j, window, keep_first)}
    starts = rule.window_start(torch.arange(n))  # the same arithmetic on tensors
    assert starts.tolist() == [rule.window_start(i) for i in range(n)]


@settings(max_examples=100, deadline=None)
@given(keep_first=SINKS, first_key=st.integers(0, 12), n_keys=st.integers(0, 12), window=WINDOWS)
def test_sink_count_counts_the_leading_sink_keys(keep_first, first_key, n_keys, window):
    expected = sum(1 for p in range(first_key, first_key + n_keys) if p < keep_first)
    assert SinkWindow(window, keep_first).sink_count(first_key, n_keys) == expected


@settings(max_examples=100, deadline=None)
@given(window=st.integers(1, 12), keep_first=SINKS)
def test_an_evicting_layer_keeps_exactly_the_keys_later_queries_need(window, keep_first):
    """After token t is written, the queries at t and later need only sinks + the last W keys; the largest such set
    (a long enough context) has exactly ``kept_slots`` keys."""
    rule = SinkWindow(window, keep_first)
    largest = 0
    for t in range(keep_first + window + 6):
        needed = {j for j in range(t + 1) if any(sees(i, j, window, keep_first) for i in range(t, t + window + 2))}
        assert needed <= set(range(keep_first)) | set(range(rule.window_start(t), t + 1))
        largest = max(largest, len(needed))
    assert largest == rule.kept_slots() == rule.kept_slots(keep_first)
    assert rule.kept_slots(keep_first + 3) == largest + 3  # left padding: more sink slots, the same W


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


@settings(max_examples=150, deadline=None)
@given(window=WINDOWS, keep_first=SINKS, newest=st.integers(0, 30), sinks=st.integers(0, 10), lo=st.integers(0, 31))
def test_decode_shortcuts_see_every_held_key(window, keep_first, newest, sinks, lo):
    rule = SinkWindow(window, keep_first)
    assert rule.sees_prefix(newest) == all(sees(newest, j, window, keep_first) for j in range(newest + 1))
    sinks, lo = min(sinks, newest + 1), min(max(lo, sinks), newest + 1)
    held = set(range(sinks)) | set(range(lo, newest + 1))
    all_seen = all(sees(newest, j, window, keep_first) for j in held)
    if rule.sees_held(newest, sinks, lo):
        assert all_seen
    if window is not None and sinks <= keep_first <= lo:  # sinks held are sinks, the rest must lie in the window
        assert rule.sees_held(newest, sinks, lo) == all_seen
    for i in range(rule.single_run_below if window is not None else 0):
        assert rule.sees_prefix(i)


@settings(max_examples=100, deadline=None)
@given(window=st.integers(1, 12), keep_first=SINKS, n=st.integers(1, 30))
def test_window_kernel_plus_sink_pass_is_the_rule(window, keep_first, n):
    """flash-attn's window_size=(left, right) shows query i the keys i - left <= j <= i + right (causal, same length);
    the sink pass adds the first ``sink_count`` keys."""
    rule = SinkWindow(window, keep_first)
    left, right = rule.window_size
    assert left == rule.window_left
    sinks = rule.sink_count(0, n)
    for i in range(n):
        for j in range(n):
            kernel = i - left <= j <= min(i + right, i) or (j < sinks and j <= i)
            assert kernel == sees(i, j, window, keep_first)


@settings(max_examples=100, deadline=None)
@given(window=st.integers(1, 12), keep_first=SINKS, q_len=st.integers(1, 12), extra=st.integers(0, 12), data=st.data())
def test_mask_mods_equal_the_hand_loop(window, keep_first, q_len, extra, data):
    kv_first = data.draw(st.integers(0, 20))
    q_first = kv_first + extra
    rule = SinkWindow(window, keep_first)
    grid = torch.arange(q_len)[:, None], torch.arange(q_len + extra)[None, :]
    got = rule.offsets_mask_mod(torch.tensor([q_first, kv_first]))(0, 0, *grid)
    want = [[sees(q_first + i, kv_first + j, window, keep_first) for j in range(q_len + extra)] for i in range(q_len)]
    assert torch.equal(got, torch.tensor(want))
    square = torch.arange(q_len)[:, None], torch.arange(q_len)[None, :]
    want = [[sees(i, j, window, keep_first) for j in range(q_len)] for i in range(q_len)]
    assert torch.equal(rule.prefill_mask_mod()(0, 0, *square), torch.tensor(want))


@settings(max_examples=40, deadline=None)
@given(window=WINDOWS, keep_first=SINKS, n=st.integers(1, 16))
def test_picture_is_the_rule(window, keep_first, n):
    want = [[sees(i, j, window, keep_first) for j in range(n)] for i in range(n)]
    assert torch.equal(SinkWindow(window, keep_first).picture(n), torch.tensor(want))


def test_the_docstring_picture_is_drawn_from_the_rule():
    drawn = [
        line.strip() for line in sink_window.__doc__.splitlines() if line.strip() and set(line.strip()) <= {"■", "·"}
    ]
    picture = SinkWindow(3, 1).picture(8)
    assert drawn == ["".join("■" if seen else "·" for seen in row) for row in picture.tolist()]
