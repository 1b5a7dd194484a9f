"""RULER's needle in a haystack: "the special magic number for KEY", one key asked for, optional distractor keys
(:mod:`.multi_key` asks with several)."""

from __future__ import annotations

import random

from .base import TaskError
from .haystack import Insert, depth_or_random, haystack_task, number, word_key, word_list

NIAH_INTRO = (
    "Some special magic numbers are hidden within the following text. Make sure to memorize them. "
    "I will quiz you about the numbers afterwards."
)


def check_num_keys(num_keys) -> None:
    if not isinstance(num_keys, int) or num_keys < 1:
        raise TaskError(f"num_keys must be at least 1, got {num_keys!r}.")
    check_key_room(num_keys)


def check_key_room(num_keys: int) -> None:
    """TaskError when the word lists make fewer distinct adjective-noun keys (:func:`.haystack.word_key`) than asked."""
    room = len(word_list("adjective")) * len(word_list("noun"))
    if num_keys > room:
        raise TaskError(f"num_keys must be at most {room:,} (the distinct keys the word lists make), got {num_keys}.")


def niah(tokenizer, *, length_tokens, depth, seed, digits=7, num_keys=1, haystack=None, kind="needle"):
    check_num_keys(num_keys)
    rng = random.Random(seed)
    keys: list[str] = []
    for _ in range(num_keys):
        keys.append(word_key(rng, set(keys)))
    values = [number(rng, digits) for _ in keys]
    d = depth_or_random(depth, rng)
    # The asked-for needle comes first (it sits at `depth`); distractor keys land at seeded random depths.
    inserts = [Insert(f"One of the special magic numbers for {keys[0]} is: {values[0]}.", d)]
    inserts += [
        Insert(f"One of the special magic numbers for {k} is: {v}.", rng.random())
        for k, v in zip(keys[1:], values[1:], strict=True)
    ]
    question = f"What is the special magic number for {keys[0]} mentioned in the provided text?"
    return haystack_task(
        tokenizer,
        kind,
        length_tokens=length_tokens,
        depth=d,
        seed=seed,
        haystack=haystack,
        intro=NIAH_INTRO,
        inserts=inserts,
        question=question,
        answer=values[0],
        answer_prefix=f"The special magic number for {keys[0]} mentioned in the provided text is",
        key=keys[0],
        distractors=dict(zip(keys[1:], values[1:], strict=True)),
    )


def needle(tokenizer, **kw):
    return niah(tokenizer, num_keys=1, kind="needle", **kw)
