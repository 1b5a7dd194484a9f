"""RULER's common-word frequency: a numbered word list in which ``num_common`` words repeat ``freq_common`` times;
name them. No needle, so no depth."""

from __future__ import annotations

import random

from .base import TaskError, count_tokens, finish_sample
from .haystack import word_list


def check_num_common(num_common) -> None:
    if not isinstance(num_common, int) or num_common < 1:
        raise TaskError(f"num_common must be at least 1, got {num_common!r}.")
    if num_common > len(word_list("noun")):
        raise TaskError(
            f"num_common must be at most {len(word_list('noun')):,} (the distinct words), got {num_common}."
        )


def check_freq_rare(freq_rare) -> None:
    if not isinstance(freq_rare, int) or freq_rare < 1:
        raise TaskError(f"freq_rare (how often each other word appears) must be at least 1, got {freq_rare!r}.")


def check_freq_common(freq_common) -> None:
    if freq_common is not None and (not isinstance(freq_common, int) or freq_common < 2):
        raise TaskError(f"freq_common (how often each common word appears) must be at least 2, got {freq_common!r}.")


def check_frequencies(freq_common, freq_rare) -> None:
    """TaskError when a given ``freq_common`` does not exceed ``freq_rare`` (the common words would not stand out)."""
    if freq_common is not None and freq_common <= freq_rare:
        raise TaskError(
            f"freq_common ({freq_common}) must be above freq_rare ({freq_rare}): the common words must appear more "
            "often than the others."
        )


def common_words(tokenizer, *, length_tokens, depth, seed, num_common=10, freq_common=None, freq_rare=1):
    check_num_common(num_common)
    check_freq_rare(freq_rare)
    check_freq_common(freq_common)
    check_frequencies(freq_common, freq_rare)
    rng = random.Random(seed)
    pool = list(word_list("noun"))
    rng.shuffle(pool)
    common, rare_pool = pool[:num_common], pool[num_common:]
    intro = (
        "Below is a numbered list of words. In these words, some appear more often than others. "
        "Memorize the ones that appear most often."
    )
    question = f"What are the {num_common} most common words in the above list?"
    head = count_tokens(tokenizer, f"{intro}\n\n\n\n{question}")
    per_item = max(1, count_tokens(tokenizer, " 100. " + common[0]))
    items_budget = max(0, (length_tokens - head) // per_item)
    if freq_common is None:  # RULER uses 30 repeats at long lengths; shorter lists need fewer to stay below half
        freq_common = max(2, min(30, items_budget // (2 * num_common)))
    if freq_common <= freq_rare:
        raise TaskError(
            f"length_tokens={length_tokens} leaves room for too few words: common words need to appear more often "
            "than the others. Ask for a longer prompt or fewer common words."
        )

    def build(n_rare: int) -> str:
        if n_rare > len(rare_pool):
            raise TaskError(f"The word list has only {len(rare_pool)} distinct filler words; ask for fewer tokens.")
        words = common * freq_common + rare_pool[:n_rare] * freq_rare
        random.Random(seed + 1).shuffle(words)
        return " ".join(f"{i + 1}. {w}" for i, w in enumerate(words))

    n_rare = max(0, (items_budget - num_common * freq_common) // max(1, freq_rare))
    best, tried = None, set()
    while n_rare not in tried and len(tried) < 12:  # word counts vary in tokens: step towards the target
        tried.add(n_rare)
        listing = build(n_rare)
        prompt = f"{intro}\n\n{listing}\n\n{question}"
        diff = length_tokens - count_tokens(tokenizer, prompt)
        if best is None or abs(diff) < abs(best[0]):
            best = (diff, listing, prompt)
        if diff == 0:
            break
        step = round(diff / (per_item * freq_rare)) or (1 if diff > 0 else -1)
        n_rare = max(0, n_rare + step)
    _, listing, prompt = best
    start = len(intro) + 2
    return finish_sample(
        tokenizer,
        "common_words",
        prompt=prompt,
        question=question,
        answer=common,
        answer_prefix=f"Answer: The top {num_common} words that appear most often in the list are:",
        depth=None,
        seed=seed,
        context_span=(start, start + len(listing)),
        spans=[],
        length_target=length_tokens,
        match="all",
        freq_common=freq_common,
        freq_rare=freq_rare,
    )
