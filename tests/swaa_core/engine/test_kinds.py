"""The mask-kind contract (swaa_core.engine.kinds.MaskKind), one parametrized test per question the engine asks, run
over every kind in KINDS against its reference rule spelled out in helpers/attention.py (not via the kind's methods):
the predicate, the key span a query needs, the slots an evicting layer keeps, the shortcuts the engine takes on its
word, the window kernels, the FlexAttention mask_mods, the pair count, the narrowing in natively sliding layers, the
picture in its module's docstring and the config selector. A new kind registered in KINDS runs all of them."""

from __future__ import annotations

import dataclasses
import sys

import pytest
import torch
from helpers.attention import rule_mask
from hypothesis import given, settings
from hypothesis import strategies as st

from swaa_core import SWAAConfig
from swaa_core.engine.kinds import KINDS, SinkWindow

SIZES = st.integers(1, 12)
SINKS = st.integers(0, 8)
every_kind = pytest.mark.parametrize("kind_class", list(KINDS.values()), ids=list(KINDS))


def reference(kind, q_pos, kv_pos, kv_valid=None, q_full=None) -> torch.Tensor:
    """(Q, KV) bool: the reference rule for queries at ``q_pos`` and keys at ``kv_pos`` (lists of positions)."""
    q, kv = torch.tensor(q_pos)[None], torch.tensor(kv_pos)[None]
    valid = torch.ones_like(kv, dtype=torch.bool) if kv_valid is None else torch.tensor(kv_valid)[None]
    full = torch.zeros_like(q, dtype=torch.bool) if q_full is None else torch.tensor(q_full)[None]
    return rule_mask(q, kv, valid, full, kind)[0]


def seen_by(kind, i: int) -> set[int]:
    """Keys 0..i a query at position i sees."""
    return {j for j, seen in enumerate(reference(kind, [i], list(range(i + 1)))[0].tolist()) if seen}


@every_kind
@settings(max_examples=100, deadline=None)
@given(size=SIZES, keep_first=SINKS, n=st.integers(1, 24), offset=st.integers(0, 20), data=st.data())
def test_predicate_is_the_reference_rule(kind_class, size, keep_first, n, offset, data):
    kv_valid = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    q_full = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    kind = kind_class(size, keep_first)
    pos = torch.arange(offset, offset + n)
    got = kind.visible(pos[:, None], pos[None, :], torch.tensor(kv_valid)[None, :], torch.tensor(q_full)[:, None])
    assert torch.equal(got, reference(kind, pos.tolist(), pos.tolist(), kv_valid, q_full))


@every_kind
@settings(max_examples=60, deadline=None)
@given(size=SIZES, keep_first=SINKS, n=st.integers(1, 40))
def test_key_span_holds_every_visible_key_and_nothing_it_calls_visible_is_hidden(kind_class, size, keep_first, n):
    kind = kind_class(size, keep_first)
    starts = [kind.span_start(i) for i in range(n)]
    assert starts == sorted(starts), "span_start must not decrease: a query block's span starts at its first query's"
    assert kind.span_start(torch.arange(n)).tolist() == starts  # the same arithmetic on tensors
    for i in range(n):
        run = set(range(max(starts[i], 0), i + 1))
        assert seen_by(kind, i) == set(range(min(kind.sinks_below, i + 1))) | run
        assert i - starts[i] + 1 <= kind.span


@every_kind
@settings(max_examples=60, deadline=None)
@given(size=SIZES, keep_first=SINKS)
def test_an_evicting_layer_keeps_exactly_the_keys_later_queries_need(kind_class, size, keep_first):
    """After token t is written, the queries at t and later need only sinks + the newest ``span`` keys; the largest
    such set (a long enough context) has exactly ``kept_slots`` keys."""
    kind = kind_class(size, keep_first)
    largest = 0
    for t in range(keep_first + 2 * kind.span + 2):
        needed = set().union(*(seen_by(kind, i) for i in range(t, t + kind.span + 2))) & set(range(t + 1))
        assert needed <= set(range(keep_first)) | set(range(t - kind.span + 1, t + 1))
        largest = max(largest, len(needed))
    assert largest == kind.kept_slots() == kind.kept_slots(keep_first)
    assert kind.kept_slots(keep_first + 3) == largest + 3  # left padding: more sink slots, the same span


@every_kind
@settings(max_examples=100, deadline=None)
@given(size=SIZES, keep_first=SINKS, first=st.integers(0, 20), extent=st.integers(0, 20))
def test_causal_between_means_plain_causal_attention(kind_class, size, keep_first, first, extent):
    kind = kind_class(size, keep_first)
    last = first + extent
    pos = list(range(first, last + 1))
    plain = int(reference(kind, pos, pos).sum()) == len(pos) * (len(pos) + 1) // 2
    if kind.causal_between(first, last):
        assert plain
    if keep_first == 0:  # without sinks nothing else can make far keys visible
        assert kind.causal_between(first, last) == plain


@every_kind
@settings(max_examples=100, deadline=None)
@given(size=SIZES, keep_first=SINKS, newest=st.integers(0, 30), sinks=st.integers(0, 10), lo=st.integers(0, 31))
def test_decode_shortcuts_see_every_held_key(kind_class, size, keep_first, newest, sinks, lo):
    kind = kind_class(size, keep_first)
    seen = seen_by(kind, newest)
    assert kind.sees_prefix(newest) == (seen == set(range(newest + 1)))
    sinks, lo = min(sinks, newest + 1), min(max(lo, sinks), newest + 1)
    held = set(range(sinks)) | set(range(lo, newest + 1))
    if kind.sees_held(newest, sinks, lo):
        assert held <= seen
    if sinks <= keep_first <= lo:  # held sinks are sinks, the rest must lie in the query's run
        assert kind.sees_held(newest, sinks, lo) == (held <= seen)


@every_kind
@settings(max_examples=60, deadline=None)
@given(size=SIZES, keep_first=SINKS, q_len=st.integers(1, 12), extra=st.integers(0, 12), kv_first=st.integers(0, 20))
def test_mask_mods_are_the_reference_rule(kind_class, size, keep_first, q_len, extra, kv_first):
    kind = kind_class(size, keep_first)
    q_first = kv_first + extra
    grid = torch.arange(q_len)[:, None], torch.arange(q_len + extra)[None, :]
    got = kind.offsets_mask_mod(torch.tensor([q_first, kv_first]))(0, 0, *grid)
    want = reference(kind, list(range(q_first, q_first + q_len)), list(range(kv_first, q_first + q_len)))
    assert torch.equal(got, want)
    square = torch.arange(q_len)[:, None], torch.arange(q_len)[None, :]
    assert torch.equal(kind.prefill_mask_mod()(0, 0, *square), reference(kind, list(range(q_len)), list(range(q_len))))


@every_kind
@settings(max_examples=40, deadline=None)
@given(size=SIZES, keep_first=SINKS, n=st.integers(1, 40))
def test_picture_and_pair_count_are_the_reference_rule(kind_class, size, keep_first, n):
    kind = kind_class(size, keep_first)
    want = reference(kind, list(range(n)), list(range(n)))
    assert torch.equal(kind.picture(n), want)
    assert kind.pairs_visited(n) == int(want.sum())


@every_kind
@settings(max_examples=60, deadline=None)
@given(size=SIZES, keep_first=SINKS, native=st.integers(1, 12), n=st.integers(1, 30))
def test_window_kernel_runs_the_kind_itself_and_narrowing_never_widens(kind_class, size, keep_first, native, n):
    """The window kernels run a SinkWindow rule: a kind that names one must mean exactly it. In a layer the model
    slides itself (window ``native``) a kind keeps no sinks and shows no key ``native`` or more positions back."""
    kind = kind_class(size, keep_first)
    if kind.window_kernel is not None:
        assert type(kind.window_kernel) is SinkWindow
        assert torch.equal(kind.window_kernel.picture(n), kind.picture(n))
    narrowed = kind.within(native)
    assert narrowed.keep_first == 0
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    assert not (narrowed.picture(n) & (i - j >= native)).any()


@every_kind
def test_a_kind_is_a_hashable_frozen_value(kind_class):
    """Block-mask caches and the padded decode step's memo key on the kind itself."""
    kind = kind_class(6, 2)
    assert {kind: 1}[kind_class(6, 2)] == 1 and kind != kind_class(6, 3) and kind != kind_class(7, 2)
    others = [cls(6, 2) for cls in KINDS.values() if cls is not kind_class]
    assert all(kind != other for other in others), "two kinds with the same sizes must stay distinct cache keys"
    with pytest.raises(dataclasses.FrozenInstanceError):
        kind.keep_first = 0


@every_kind
def test_the_docstring_picture_is_drawn_from_the_rule(kind_class):
    """Each kind's module draws kind(3, keep_first=1) over 8 tokens."""
    doc = sys.modules[kind_class.__module__].__doc__
    drawn = [line.strip() for line in doc.splitlines() if line.strip() and set(line.strip()) <= {"■", "·"}]
    picture = kind_class(3, 1).picture(8)
    assert drawn == ["".join("■" if seen else "·" for seen in row) for row in picture.tolist()]


@every_kind
def test_every_kind_is_selected_by_its_name_in_the_config(kind_class):
    cfg = SWAAConfig(sliding_window_size=6, keep_first=2, non_sliding_layers=[1], mask_kind=kind_class.name)
    assert cfg.kind == kind_class(6, 2)
    assert cfg.layer_rule(0) == (kind_class(6, 2), False) and cfg.layer_rule(1) == (None, False)
    assert SWAAConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.describe().startswith(kind_class(6, 2).describe())
