"""RULER's multi-key needle: one key asked for among ``num_keys - 1`` distractor keys at seeded random depths."""

from __future__ import annotations

from .base import TaskError
from .needle import check_key_room, niah


def check_num_keys(num_keys) -> None:
    if not isinstance(num_keys, int) or num_keys < 2:
        raise TaskError(f"multi_key needs num_keys >= 2 (one asked for, the rest distractors), got {num_keys!r}.")
    check_key_room(num_keys)


def multi_key(tokenizer, *, num_keys=4, **kw):
    check_num_keys(num_keys)
    return niah(tokenizer, num_keys=num_keys, kind="multi_key", **kw)
