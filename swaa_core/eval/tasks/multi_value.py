"""RULER's multi-value needle: one key with ``num_values`` numbers spread through the context; every one must be
named."""

from __future__ import annotations

import random

from .base import TaskError
from .haystack import Insert, depth_or_random, haystack_task, number, word_key
from .needle import NIAH_INTRO


def check_num_values(num_values) -> None:
    if not isinstance(num_values, int) or num_values < 2:
        raise TaskError(f"multi_value needs num_values >= 2, got {num_values!r}.")


def check_value_room(num_values, digits) -> None:
    """TaskError when there are fewer distinct ``digits``-digit numbers (:func:`.haystack.number`) than values."""
    room = 10 if digits == 1 else 9 * 10 ** (digits - 1)
    if num_values > room:
        raise TaskError(
            f"multi_value needs {num_values} distinct {digits}-digit numbers and there are only {room}: ask for fewer "
            "values or more digits."
        )


def multi_value(tokenizer, *, length_tokens, depth, seed, digits=7, num_values=4, haystack=None):
    check_num_values(num_values)
    check_value_room(num_values, digits)
    rng = random.Random(seed)
    key = word_key(rng)
    values: list[str] = []
    while len(values) < num_values:
        v = number(rng, digits)
        if v not in values:
            values.append(v)
    d = depth_or_random(depth, rng)
    depths = [d] + [rng.random() for _ in values[1:]]
    inserts = [
        Insert(f"One of the special magic numbers for {key} is: {v}.", x) for v, x in zip(values, depths, strict=True)
    ]
    question = f"What are all the special magic numbers for {key} mentioned in the provided text?"
    return haystack_task(
        tokenizer,
        "multi_value",
        length_tokens=length_tokens,
        depth=d,
        seed=seed,
        haystack=haystack,
        intro=NIAH_INTRO,
        inserts=inserts,
        question=question,
        answer=values,
        answer_prefix=f"The special magic numbers for {key} mentioned in the provided text are",
        key=key,
        match="all",
    )
