"""RULER's variable tracking: a chain of ``num_hops`` assignments ``VAR B = VAR A`` starting at ``depth``; every
variable holding the value must be named."""

from __future__ import annotations

import random

from .base import TaskError
from .haystack import Insert, depth_or_random, haystack_task, number


def check_num_hops(num_hops) -> None:
    if not isinstance(num_hops, int) or num_hops < 1:
        raise TaskError(f"num_hops must be at least 1, got {num_hops!r}.")
    if num_hops + 1 > len(LETTERS) ** NAME_LENGTH:
        raise TaskError(
            f"num_hops must be at most {len(LETTERS) ** NAME_LENGTH - 1:,} (distinct names), got {num_hops}."
        )


LETTERS, NAME_LENGTH = "ABCDEFGHIJKLMNOPQRSTUVWXYZ", 5  # a variable's name


def variable_tracking(tokenizer, *, length_tokens, depth, seed, num_hops=4, digits=5, haystack=None):
    check_num_hops(num_hops)
    rng = random.Random(seed)
    names: list[str] = []
    while len(names) < num_hops + 1:
        name = "".join(rng.choice(LETTERS) for _ in range(NAME_LENGTH))
        if name not in names:
            names.append(name)
    value = number(rng, digits)
    d = depth_or_random(depth, rng)
    # The chain starts at `depth`; later hops spread evenly over the rest of the context, in order.
    step = (1.0 - d) / (num_hops + 1)
    statements = [f"VAR {names[0]} = {value}."] + [f"VAR {names[i + 1]} = VAR {names[i]}." for i in range(num_hops)]
    inserts = [Insert(s, d + i * step) for i, s in enumerate(statements)]
    intro = "Memorize and track the chain of variable assignments hidden in the following text."
    question = f"Find all variables that are assigned the value {value} in the text above."
    return haystack_task(
        tokenizer,
        "variable_tracking",
        length_tokens=length_tokens,
        depth=d,
        seed=seed,
        haystack=haystack,
        intro=intro,
        inserts=inserts,
        question=question,
        answer=names,
        answer_prefix=(
            f"According to the chain of variable assignments in the text above, {num_hops + 1} variables are "
            f"assigned the value {value}, they are:"
        ),
        match="all",
        value=value,
    )
