"""The passkey test: a number hidden at ``depth`` in filler text, asked for at the end."""

from __future__ import annotations

import random

from .haystack import Insert, depth_or_random, haystack_task, number


def passkey(tokenizer, *, length_tokens, depth, seed, digits=5, haystack=None):
    rng = random.Random(seed)
    key = number(rng, digits)
    d = depth_or_random(depth, rng)
    intro = (
        "There is an important piece of information hidden inside a lot of irrelevant text. "
        "Find it and memorize it. I will quiz you about it."
    )
    question = "What is the pass key?"
    needle = f"The pass key is {key}. Remember it. {key} is the pass key."
    return haystack_task(
        tokenizer,
        "passkey",
        length_tokens=length_tokens,
        depth=d,
        seed=seed,
        haystack=haystack,
        intro=intro,
        inserts=[Insert(needle, d)],
        question=question,
        answer=key,
        answer_prefix="The pass key is:",  # the colon makes a small model state the number, not describe it
    )
