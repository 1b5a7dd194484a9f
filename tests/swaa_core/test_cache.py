"""The SWAA cache layer against a plain set of slots: which tokens it holds after any mix of appends, evictions and
roll-backs, and that its keys and values are those tokens' own rows."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from swaa_core.cache import SWAACacheLayer

append = st.tuples(st.just("append"), st.integers(1, 9))
evict = st.tuples(st.just("evict"), st.tuples(st.integers(0, 6), st.integers(1, 8)))
crop = st.tuples(st.just("crop"), st.integers(1, 5))


def rows(first: int, n: int) -> torch.Tensor:
    """(1, 2, n, 3) keys whose every entry is the token's slot number, so a held row names itself."""
    return torch.arange(first, first + n, dtype=torch.float32).view(1, 1, n, 1).expand(1, 2, n, 3).clone()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(append, evict, crop), min_size=1, max_size=25))
def test_cache_holds_exactly_what_the_rules_say(ops):
    layer, expected, total, window = SWAACacheLayer(), set(), 0, None
    for op, arg in ops:
        if op == "append":
            layer.update(rows(total, arg), -rows(total, arg))
            expected |= set(range(total, total + arg))
            total += arg
        elif op == "evict" and total:
            sinks, window = arg
            layer.evict(sinks, window)
            expected = {s for s in expected if s < sinks or s >= total - (window - 1)}
        elif op == "crop" and total:
            new_total = max(0, total - arg)
            exposed = set(range(max(0, new_total - (window - 1)), new_total)) if window else set()
            if not exposed <= expected:
                with pytest.raises(ValueError, match="already dropped"):
                    layer.crop(-arg)
                continue
            layer.crop(-arg)
            expected = {s for s in expected if s < new_total}
            total = new_total
        if not layer.is_initialized:
            continue
        held = sorted(expected)
        assert layer.slots.tolist() == held
        assert [s for start, end in layer.held for s in range(start, end)] == held
        assert layer.keys[0, 1, :, 2].tolist() == held
        assert (-layer.values[0, 0, :, 0]).tolist() == held
        assert layer.get_seq_length() == total
