"""Haystack assembly shared by the synthetic tasks: filler sentences (built-in or the user's own text) fitted to a
token budget, needles placed at sentence boundaries nearest their depths, and the random keys and numbers they carry.

The prompt gets exactly ``length_tokens`` tokens where the filler allows it (the budget is corrected by the measured
count, because joined sentences do not always tokenize additively)."""

from __future__ import annotations

import functools
import random
import re
from dataclasses import dataclass

from .base import TaskError, count_tokens, finish_sample

FILLER = (
    "The grass is green.",
    "The sky is blue.",
    "The sun is yellow.",
    "Here we go.",
    "There and back again.",
    "A cat sleeps on the warm windowsill.",
    "The river runs slowly past the old mill.",
    "Children play in the park after school.",
    "The train to the coast leaves every hour.",
    "Bread is baked fresh each morning in the village.",
    "Leaves fall from the trees in autumn.",
    "The library closes early on Sundays.",
    "A light rain fell over the quiet town.",
    "The market sells apples, pears and plums.",
    "Clouds drift across the hills.",
    "The kettle whistles in the kitchen.",
    "Boats rest in the harbour at night.",
    "The road winds through the valley.",
    "Birds sing at dawn.",
    "Snow covers the mountain peaks in winter.",
    "The clock in the square strikes noon.",
    "A dog waits by the door.",
    "Fields of wheat sway in the wind.",
    "The baker greets every customer by name.",
    "Lanterns glow along the street in the evening.",
    "The bridge was painted red last summer.",
    "Old books line the shelves of the little shop.",
    "The garden is full of roses.",
    "Fishermen mend their nets on the pier.",
    "Stars fill the sky on clear nights.",
    "The bus stops at the corner.",
    "Tea is served in the afternoon.",
)


@functools.cache
def word_list(category: str) -> tuple[str, ...]:
    """RULER's word source (wonderwords lists), lowercase letters only, in a stable order."""
    from wonderwords import RandomWord

    return tuple(sorted(set(RandomWord().filter(include_categories=[category], regex=r"[a-z]{3,10}"))))


@dataclass
class Insert:
    text: str
    depth: float


def check_digits(digits) -> None:
    """TaskError unless ``digits`` is a whole number from 1 to 32 (the registry checks task args with it too)."""
    if not isinstance(digits, int) or not 1 <= digits <= 32:
        raise TaskError(f"digits must be between 1 and 32, got {digits!r}.")


def check_haystack(haystack) -> None:
    """TaskError for a haystack of your own that holds no text (None: the built-in sentences)."""
    if haystack is not None and (not isinstance(haystack, str) or not haystack.strip()):
        raise TaskError("The haystack text is empty.")


def number(rng: random.Random, digits: int) -> str:
    check_digits(digits)
    return str(rng.randint(10 ** (digits - 1) if digits > 1 else 0, 10**digits - 1))


def word_key(rng: random.Random, taken: set[str] | None = None) -> str:
    while True:
        key = f"{rng.choice(word_list('adjective'))}-{rng.choice(word_list('noun'))}"
        if not taken or key not in taken:
            return key


def _filler_pool(haystack: str | None) -> tuple[str, ...]:
    check_haystack(haystack)
    if haystack is None:
        return FILLER
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", " ".join(haystack.split())) if s.strip()]
    return tuple(sentences)


def _fill(rng: random.Random, budget: int, pool: tuple[str, ...], lengths: dict[str, int], cyclic: bool):
    """Sentences whose token counts add up to ``budget`` (exactly where the pool allows)."""
    out, total, i = [], 0, 0
    longest = max(lengths.values())
    while budget - total > 2 * longest:
        s = pool[i % len(pool)] if cyclic else rng.choice(pool)
        i += 1
        out.append(s)
        total += lengths[s]
    rest = budget - total
    by_len: dict[int, str] = {}
    for s in pool:
        by_len.setdefault(lengths[s], s)
    for a in sorted(by_len, reverse=True):  # at most two more sentences: exact when some pair sums to `rest`
        if a == rest:
            return out + [by_len[a]]
        if rest - a in by_len:
            return out + [by_len[a], by_len[rest - a]]
    while rest > 0:
        fits = [n for n in by_len if n <= rest]
        if not fits:
            break
        out.append(by_len[max(fits)])
        rest -= max(fits)
    return out


def _place(sentences: list[str], lengths: dict[str, int], inserts: list[Insert]) -> tuple[str, list[tuple[int, int]]]:
    """Join ``sentences`` with each insert at the sentence boundary nearest its depth; char spans of the inserts."""
    cum = [0]
    for s in sentences:
        cum.append(cum[-1] + lengths[s])
    at: dict[int, list[int]] = {}
    for j, ins in enumerate(inserts):
        target = ins.depth * cum[-1]
        k = min(range(len(cum)), key=lambda b: (abs(cum[b] - target), b))
        at.setdefault(k, []).append(j)
    pieces: list[tuple[str, int | None]] = []
    for k in range(len(sentences) + 1):
        pieces.extend((inserts[j].text, j) for j in sorted(at.get(k, []), key=lambda j: inserts[j].depth))
        if k < len(sentences):
            pieces.append((sentences[k], None))
    spans: list[tuple[int, int]] = [(0, 0)] * len(inserts)
    text, pos = [], 0
    for n, (piece, j) in enumerate(pieces):
        if n:
            text.append(" ")
            pos += 1
        if j is not None:
            spans[j] = (pos, pos + len(piece))
        text.append(piece)
        pos += len(piece)
    return "".join(text), spans


def _haystack_prompt(tokenizer, *, length_tokens, intro, inserts, question, seed, haystack=None):
    """(prompt, context span, insert spans) with ``length_tokens`` tokens, correcting the sentence budget by the
    measured count because joining sentences does not always tokenize additively."""
    pool = _filler_pool(haystack)
    lengths = {s: count_tokens(tokenizer, " " + s) for s in pool}
    head = f"{intro}\n\n"
    fixed = count_tokens(tokenizer, head + " ".join(i.text for i in inserts) + f"\n\n{question}")
    if fixed >= length_tokens:
        raise TaskError(
            f"length_tokens={length_tokens} is too small: the instructions, needle(s) and question alone take "
            f"{fixed} tokens. Ask for at least {fixed + 32}."
        )
    budget, best = length_tokens - fixed, None
    tolerance = max(2, length_tokens // 500)
    for _ in range(6):
        sentences = _fill(random.Random(seed), budget, pool, lengths, cyclic=haystack is not None)
        context, spans = _place(sentences, lengths, inserts)
        prompt = f"{head}{context}\n\n{question}"
        diff = length_tokens - count_tokens(tokenizer, prompt)
        if best is None or abs(diff) < abs(best[0]):
            best = (diff, prompt, context, spans)
        if abs(diff) <= tolerance:
            break
        budget += diff
    _, prompt, context, spans = best
    offset = len(head)
    return prompt, (offset, offset + len(context)), [(a + offset, b + offset) for a, b in spans]


def haystack_task(tokenizer, kind, *, length_tokens, depth, seed, haystack, intro, inserts, question, **finish):
    """Build the prompt around ``inserts`` and wrap it as a sample (the common tail of every haystack task)."""
    prompt, ctx, spans = _haystack_prompt(
        tokenizer,
        length_tokens=length_tokens,
        intro=intro,
        inserts=inserts,
        question=question,
        seed=seed,
        haystack=haystack,
    )
    return finish_sample(
        tokenizer,
        kind,
        prompt=prompt,
        question=question,
        depth=depth,
        seed=seed,
        context_span=ctx,
        spans=spans,
        length_target=length_tokens,
        **finish,
    )


def depth_or_random(depth, rng):
    return rng.random() if depth is None else float(depth)
