"""The SWAA cache layer against a plain set of slots: which tokens it holds after any mix of appends, roll-backs and
past recording, that every key it hands to attention is that token's own row, that it hands every key the rule says
the new queries need, and that its buffer never exceeds sinks + W slots once it evicts."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from swaa_core.engine.attention import LayerPlan
from swaa_core.engine.cache import SWAACacheLayer
from swaa_core.engine.kinds import SinkWindow

append = st.tuples(st.just("append"), st.sampled_from([1, 1, 1, 2, 5, 9]))
crop = st.tuples(st.just("crop"), st.integers(0, 5))
record = st.tuples(st.just("record"), st.booleans())


def rows(first: int, n: int) -> torch.Tensor:
    """(1, 2, n, 3) keys whose every entry is the token's slot number, so a held row names itself."""
    return torch.arange(first, first + n, dtype=torch.float32).view(1, 1, n, 1).expand(1, 2, n, 3).clone()


def live_slots(layer: SWAACacheLayer, keys: torch.Tensor) -> list[int]:
    slots, live = layer.view.slots("cpu")
    assert slots.numel() == keys.shape[2]
    keep = torch.ones_like(slots, dtype=torch.bool) if live is None else live
    assert keys[0, 1, keep, 2].tolist() == slots[keep].tolist(), "a key row is not its slot's own"
    assert (-layer.values[0, 0, :, 0] == layer.keys[0, 0, :, 0]).all()
    return slots[keep].tolist()


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 6),
    st.integers(0, 4),
    st.lists(st.one_of(append, crop, record), min_size=1, max_size=30),
)
def test_cache_holds_exactly_what_the_rules_say(window, sinks, ops):
    plan = LayerPlan(0, window, sinks, False, "reference")
    layer, held, total, recording = SWAACacheLayer(0), set(), 0, False

    def compact(slots, total):
        if recording or total <= sinks + window:
            return slots
        return {s for s in slots if s < sinks or s >= total - window}

    for op, arg in ops:
        if op == "append":
            layer.bind(plan, None, 0)
            keys, _ = layer.update(rows(total, arg), -rows(total, arg))
            seen = held | set(range(total, total + arg))
            total += arg
            got = live_slots(layer, keys)
            needed = {s for q in range(total - arg, total) for s in range(q + 1) if s < sinks or q - s < window}
            assert needed <= set(got) <= seen
            held = compact(seen, total)
        elif op == "crop" and total:
            new_total = max(0, total - arg)
            needed = set(range(min(sinks, new_total))) | set(range(max(0, new_total - window + 1), new_total))
            if not needed <= held:
                with pytest.raises(ValueError, match="already dropped"):
                    layer.crop(-arg)
                continue
            layer.crop(-arg)
            total = new_total
            held = {s for s in held if s < total}
            if total > sinks + window:  # crop also shrinks a recording layer back to sinks + W
                held = {s for s in held if s < sinks or s >= total - window}
        elif op == "record":
            recording = arg
            if arg:
                layer.activate_past_recording()
            else:
                layer.record_past = False
        if not layer.is_initialized:
            continue
        assert layer.get_seq_length() == total
        if layer.ring:
            assert layer.keys.shape[2] == sinks + window
            slots, live = layer.view.slots("cpu") if layer.view.ring else (None, None)
            stored = {s for s in range(total) if s < sinks or layer.lo <= s}
            assert stored == held
        else:
            assert layer.keys.shape[2] == len(held)
            assert set(layer.keys[0, 1, :, 2].tolist()) == held


def test_decode_steps_write_in_place_without_reading_the_device():
    """Once the ring exists, a one-token step writes into the same buffer and returns all of it."""
    plan = LayerPlan(0, 4, 2, False, "reference")
    layer = SWAACacheLayer(0)
    layer.bind(plan, None, 0)
    layer.update(rows(0, 10), -rows(0, 10))
    buffer = layer.keys
    for t in range(10, 30):
        layer.bind(plan, None, 0)
        keys, _ = layer.update(rows(t, 1), -rows(t, 1))
        assert keys is buffer and keys.shape[2] == 6
        assert sorted(keys[0, 0, :, 0].tolist()) == [0, 1, *range(t - 3, t + 1)]
        assert layer.view.in_window(SinkWindow(4, 2))
