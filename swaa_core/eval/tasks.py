"""Long-context evaluation tasks, sized in tokens of the model's own tokenizer and deterministic from a seed.

Synthetic kinds follow the passkey test and RULER (needle, multi-key, multi-value, variable tracking, common-word
frequency); ``doc_qa`` wraps a user's document and question; :func:`load_dataset_records` reads evaluation sets in
the upstream format (records with ``prompt``, ``question``, ``answer``).

``length_tokens`` is the token count of :attr:`TaskSample.prompt` (the user message; the chat template adds a few
dozen tokens around it). ``depth`` is the fraction of the haystack's tokens that come before the needle.
"""

from __future__ import annotations

import functools
import json
import os
import random
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

TASK_KINDS = ("passkey", "needle", "multi_key", "multi_value", "variable_tracking", "common_words", "doc_qa")
_KIND_ALIASES = {
    "niah": "needle",
    "niah_single": "needle",
    "multikey": "multi_key",
    "niah_multikey": "multi_key",
    "multivalue": "multi_value",
    "niah_multivalue": "multi_value",
    "vt": "variable_tracking",
    "variables": "variable_tracking",
    "cwe": "common_words",
    "common_word_frequency": "common_words",
    "qa": "doc_qa",
    "document_qa": "doc_qa",
}

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
def _words(category: str) -> tuple[str, ...]:
    """RULER's word source (wonderwords lists), lowercase letters only, in a stable order."""
    from wonderwords import RandomWord

    return tuple(sorted(set(RandomWord().filter(include_categories=[category], regex=r"[a-z]{3,10}"))))


class TaskError(ValueError):
    """A task that cannot be built or loaded as asked, with a message that says why."""


@dataclass
class TaskSample:
    task: str
    prompt: str
    question: str
    answer: str | list[str]
    answer_prefix: str = ""
    context_tokens: int = 0  # tokens of `prompt` in the tokenizer it was built for (0: not counted)
    depth: float | None = None
    needle_char_span: tuple[int, int] | None = None  # where the (first) needle sits in `prompt`
    seed: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def references(self) -> list[str]:
        """The reference answers as a list (empty when the answer is unknown)."""
        if isinstance(self.answer, (list, tuple)):
            return [str(a) for a in self.answer if str(a).strip()]
        return [self.answer] if str(self.answer or "").strip() else []

    @property
    def match_mode(self) -> str:
        """ "all": every reference must appear (multi-value, variable tracking); "any": one of them suffices."""
        return self.meta.get("match", "any")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskSample:
        data = dict(data)
        if data.get("needle_char_span") is not None:
            data["needle_char_span"] = tuple(data["needle_char_span"])
        return cls(**data)


def count_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def make_task(kind: str, tokenizer, *, length_tokens: int | None, depth: float | None = 0.5, seed: int = 0, **kw):
    """Build one sample of ``kind`` (see :data:`TASK_KINDS`) with ``length_tokens`` prompt tokens.

    Extra keywords per kind: passkey/needle ``digits``; multi_key ``num_keys``; multi_value ``num_values``;
    variable_tracking ``num_hops``; common_words ``num_common``; every haystack kind ``haystack`` (your own filler
    text instead of the built-in sentences); doc_qa ``document``, ``question``, ``answer``, ``answer_prefix``.
    """
    key = kind.strip().lower().replace("-", "_") if isinstance(kind, str) else kind
    key = _KIND_ALIASES.get(key, key)
    if key not in _BUILDERS:
        raise TaskError(f"Unknown task {kind!r}. Choose one of: {', '.join(TASK_KINDS)}.")
    if key != "doc_qa":
        if not isinstance(length_tokens, int) or length_tokens < 1:
            raise TaskError(f"length_tokens must be a positive whole number for {key}, got {length_tokens!r}.")
        if depth is not None and not 0.0 <= float(depth) <= 1.0:
            raise TaskError(f"depth must be between 0 (start of the context) and 1 (end), got {depth!r}.")
    return _BUILDERS[key](tokenizer, length_tokens=length_tokens, depth=depth, seed=int(seed), **kw)


# ---------------------------------------------------------------------- haystack assembly


@dataclass
class _Insert:
    text: str
    depth: float


def _number(rng: random.Random, digits: int) -> str:
    if not isinstance(digits, int) or not 1 <= digits <= 32:
        raise TaskError(f"digits must be between 1 and 32, got {digits!r}.")
    return str(rng.randint(10 ** (digits - 1) if digits > 1 else 0, 10**digits - 1))


def _key(rng: random.Random, taken: set[str] | None = None) -> str:
    while True:
        key = f"{rng.choice(_words('adjective'))}-{rng.choice(_words('noun'))}"
        if not taken or key not in taken:
            return key


def _filler_pool(haystack: str | None) -> tuple[str, ...]:
    if haystack is None:
        return FILLER
    if not isinstance(haystack, str) or not haystack.strip():
        raise TaskError("The haystack text is empty.")
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


def _place(sentences: list[str], lengths: dict[str, int], inserts: list[_Insert]) -> tuple[str, list[tuple[int, int]]]:
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


def _finish(tokenizer, kind, *, prompt, question, answer, answer_prefix, depth, seed, context_span, spans, **meta):
    start, end = context_span
    context = prompt[start:end]
    actual = None
    if spans:
        # Depth counts haystack tokens only: the needle's own tokens and those of other inserts are left out.
        sizes = [count_tokens(tokenizer, " " + prompt[a:b]) for a, b in spans]
        before = count_tokens(tokenizer, prompt[start : spans[0][0]].rstrip())
        before -= sum(n for (a, _), n in zip(spans, sizes, strict=True) if a < spans[0][0])
        actual = before / max(1, count_tokens(tokenizer, context) - sum(sizes))
    meta.update(context_char_span=context_span, actual_depth=actual, insert_char_spans=spans)
    return TaskSample(
        task=kind,
        prompt=prompt,
        question=question,
        answer=answer,
        answer_prefix=answer_prefix,
        context_tokens=count_tokens(tokenizer, prompt),
        depth=None if depth is None else float(depth),
        needle_char_span=spans[0] if spans else None,
        seed=seed,
        meta=meta,
    )


def _haystack_task(tokenizer, kind, *, length_tokens, depth, seed, haystack, intro, inserts, question, **finish):
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
    return _finish(
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


def _depth_or_random(depth, rng):
    return rng.random() if depth is None else float(depth)


# ---------------------------------------------------------------------- the task kinds


def _passkey(tokenizer, *, length_tokens, depth, seed, digits=5, haystack=None):
    rng = random.Random(seed)
    key = _number(rng, digits)
    d = _depth_or_random(depth, rng)
    intro = (
        "There is an important piece of information hidden inside a lot of irrelevant text. "
        "Find it and memorize it. I will quiz you about it."
    )
    question = "What is the pass key?"
    needle = f"The pass key is {key}. Remember it. {key} is the pass key."
    return _haystack_task(
        tokenizer,
        "passkey",
        length_tokens=length_tokens,
        depth=d,
        seed=seed,
        haystack=haystack,
        intro=intro,
        inserts=[_Insert(needle, d)],
        question=question,
        answer=key,
        answer_prefix="The pass key is:",  # the colon makes a small model state the number, not describe it
    )


_NIAH_INTRO = (
    "Some special magic numbers are hidden within the following text. Make sure to memorize them. "
    "I will quiz you about the numbers afterwards."
)


def _niah(tokenizer, *, length_tokens, depth, seed, digits=7, num_keys=1, haystack=None, kind="needle"):
    if not isinstance(num_keys, int) or num_keys < 1:
        raise TaskError(f"num_keys must be at least 1, got {num_keys!r}.")
    rng = random.Random(seed)
    keys: list[str] = []
    for _ in range(num_keys):
        keys.append(_key(rng, set(keys)))
    values = [_number(rng, digits) for _ in keys]
    d = _depth_or_random(depth, rng)
    # The asked-for needle comes first (it sits at `depth`); distractor keys land at seeded random depths.
    inserts = [_Insert(f"One of the special magic numbers for {keys[0]} is: {values[0]}.", d)]
    inserts += [
        _Insert(f"One of the special magic numbers for {k} is: {v}.", rng.random())
        for k, v in zip(keys[1:], values[1:], strict=True)
    ]
    question = f"What is the special magic number for {keys[0]} mentioned in the provided text?"
    return _haystack_task(
        tokenizer,
        kind,
        length_tokens=length_tokens,
        depth=d,
        seed=seed,
        haystack=haystack,
        intro=_NIAH_INTRO,
        inserts=inserts,
        question=question,
        answer=values[0],
        answer_prefix=f"The special magic number for {keys[0]} mentioned in the provided text is",
        key=keys[0],
        distractors=dict(zip(keys[1:], values[1:], strict=True)),
    )


def _needle(tokenizer, **kw):
    return _niah(tokenizer, num_keys=1, kind="needle", **kw)


def _multi_key(tokenizer, *, num_keys=4, **kw):
    if not isinstance(num_keys, int) or num_keys < 2:
        raise TaskError(f"multi_key needs num_keys >= 2 (one asked for, the rest distractors), got {num_keys!r}.")
    return _niah(tokenizer, num_keys=num_keys, kind="multi_key", **kw)


def _multi_value(tokenizer, *, length_tokens, depth, seed, digits=7, num_values=4, haystack=None):
    if not isinstance(num_values, int) or num_values < 2:
        raise TaskError(f"multi_value needs num_values >= 2, got {num_values!r}.")
    rng = random.Random(seed)
    key = _key(rng)
    values: list[str] = []
    while len(values) < num_values:
        v = _number(rng, digits)
        if v not in values:
            values.append(v)
    d = _depth_or_random(depth, rng)
    depths = [d] + [rng.random() for _ in values[1:]]
    inserts = [
        _Insert(f"One of the special magic numbers for {key} is: {v}.", x) for v, x in zip(values, depths, strict=True)
    ]
    question = f"What are all the special magic numbers for {key} mentioned in the provided text?"
    return _haystack_task(
        tokenizer,
        "multi_value",
        length_tokens=length_tokens,
        depth=d,
        seed=seed,
        haystack=haystack,
        intro=_NIAH_INTRO,
        inserts=inserts,
        question=question,
        answer=values,
        answer_prefix=f"The special magic numbers for {key} mentioned in the provided text are",
        key=key,
        match="all",
    )


def _variable_tracking(tokenizer, *, length_tokens, depth, seed, num_hops=4, digits=5, haystack=None):
    if not isinstance(num_hops, int) or num_hops < 1:
        raise TaskError(f"num_hops must be at least 1, got {num_hops!r}.")
    rng = random.Random(seed)
    names: list[str] = []
    while len(names) < num_hops + 1:
        name = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(5))
        if name not in names:
            names.append(name)
    value = _number(rng, digits)
    d = _depth_or_random(depth, rng)
    # The chain starts at `depth`; later hops spread evenly over the rest of the context, in order.
    step = (1.0 - d) / (num_hops + 1)
    statements = [f"VAR {names[0]} = {value}."] + [f"VAR {names[i + 1]} = VAR {names[i]}." for i in range(num_hops)]
    inserts = [_Insert(s, d + i * step) for i, s in enumerate(statements)]
    intro = "Memorize and track the chain of variable assignments hidden in the following text."
    question = f"Find all variables that are assigned the value {value} in the text above."
    return _haystack_task(
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


def _common_words(tokenizer, *, length_tokens, depth, seed, num_common=10, freq_common=None, freq_rare=1):
    if not isinstance(num_common, int) or num_common < 1:
        raise TaskError(f"num_common must be at least 1, got {num_common!r}.")
    rng = random.Random(seed)
    pool = list(_words("noun"))
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
    return _finish(
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


def _doc_qa(
    tokenizer, *, length_tokens=None, depth=None, seed=0, document=None, question=None, answer="", answer_prefix=""
):
    if not isinstance(document, str) or not document.strip():
        raise TaskError("doc_qa needs a document: pass document='...' (the text to ask about).")
    if not isinstance(question, str) or not question.strip():
        raise TaskError("doc_qa needs a question about the document: pass question='...'.")
    document, truncated = document.strip(), False
    head, tail = "Read the document below and answer the question.\n\nDocument:\n", f"\n\nQuestion: {question.strip()}"
    if length_tokens is not None:
        budget = length_tokens - count_tokens(tokenizer, head + tail)
        if budget < 16:
            raise TaskError(f"length_tokens={length_tokens} leaves no room for the document; ask for more tokens.")
        ids = tokenizer(document, add_special_tokens=False)["input_ids"]
        if len(ids) > budget:  # keep the beginning; the user sees meta["truncated"]
            document, truncated = tokenizer.decode(ids[:budget], skip_special_tokens=True).strip(), True
    prompt = head + document + tail
    start = len(head)
    refs = [a for a in (answer if isinstance(answer, (list, tuple)) else [answer]) if str(a or "").strip()]
    spans, actual_depth = [], None
    if refs:
        at = prompt.lower().find(str(refs[0]).lower(), start, start + len(document))
        if at >= 0:
            spans = [(at, at + len(str(refs[0])))]
    sample = _finish(
        tokenizer,
        "doc_qa",
        prompt=prompt,
        question=question.strip(),
        answer=list(answer) if isinstance(answer, (list, tuple)) else (answer or ""),
        answer_prefix=answer_prefix or "",
        depth=None,
        seed=seed,
        context_span=(start, start + len(document)),
        spans=spans,
        truncated=truncated,
    )
    if spans:
        actual_depth = sample.meta["actual_depth"]
        sample.depth = actual_depth
    return sample


_BUILDERS: dict[str, Callable[..., TaskSample]] = {
    "passkey": _passkey,
    "needle": _needle,
    "multi_key": _multi_key,
    "multi_value": _multi_value,
    "variable_tracking": _variable_tracking,
    "common_words": _common_words,
    "doc_qa": _doc_qa,
}


# ---------------------------------------------------------------------- external datasets (upstream format)

_DATA_SUFFIXES = (".parquet", ".jsonl", ".json")


def load_dataset_records(
    path_or_hub_id: str | os.PathLike, *, split: str | None = None, limit: int | None = None, tokenizer=None
) -> list[TaskSample]:
    """Evaluation records in the upstream format as samples.

    Each record needs ``prompt`` (the whole input, question included) and ``answer``; ``question`` is optional
    (upstream also accepts ``context`` + ``question`` instead of ``prompt``). Reads a local .parquet/.json/.jsonl
    file or folder of them, or a Hub dataset id (``owner/name``) when the Hub is reachable. ``split`` picks files
    whose name contains it ("test", "validation"...). ``tokenizer`` fills ``context_tokens``.
    """
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise TaskError(f"limit must be a positive whole number, got {limit!r}.")
    source = str(path_or_hub_id)
    path = Path(source).expanduser()
    if path.exists():
        files = _local_files(path, split)
    elif re.fullmatch(r"[\w.-]+/[\w.-]+", source) and not source.endswith(_DATA_SUFFIXES):
        files = _hub_files(source, split)
    else:
        raise TaskError(
            f"Dataset not found: {source!r} is neither a local file/folder nor a Hub dataset id (owner/name)."
        )
    records: list[dict] = []
    for f in files:
        records.extend(_read_records(f))
        if limit is not None and len(records) >= limit:
            break
    if limit is not None:
        records = records[:limit]
    if not records:
        raise TaskError(f"No records found in {source!r}" + (f" for split {split!r}." if split else "."))
    return [_record_to_sample(r, i, source, tokenizer) for i, r in enumerate(records)]


def _local_files(path: Path, split: str | None) -> list[Path]:
    if path.is_file():
        if path.suffix.lower() not in _DATA_SUFFIXES:
            raise TaskError(f"Unsupported dataset file type {path.suffix!r}; use .parquet, .json or .jsonl.")
        return [path]
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in _DATA_SUFFIXES and p.is_file())
    return _pick_split(files, split, str(path))


def _pick_split(files: list, split: str | None, where: str) -> list:
    if split:
        chosen = [f for f in files if split.lower() in str(f).lower()]
        if not chosen:
            names = ", ".join(str(f) for f in files[:10])
            raise TaskError(f"No file of split {split!r} in {where}; files found: {names or 'none'}.")
        return chosen
    if not files:
        raise TaskError(f"No .parquet, .json or .jsonl files in {where}.")
    return files


def _hub_files(repo_id: str, split: str | None) -> list[Path]:
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    from ..models.loading import hub_offline_reason

    offline = hub_offline_reason()  # one short check instead of huggingface_hub's ~30 s of retries
    if offline:
        raise TaskError(
            f"Cannot fetch Hub dataset {repo_id!r}: {offline}. Pass a local .parquet/.json/.jsonl file instead."
        )
    try:
        names = HfApi().list_repo_files(repo_id, repo_type="dataset")
        names = _pick_split(sorted(n for n in names if n.lower().endswith(_DATA_SUFFIXES)), split, repo_id)
        return [Path(hf_hub_download(repo_id, n, repo_type="dataset")) for n in names]
    except OfflineModeIsEnabled:
        raise TaskError(
            f"Cannot fetch Hub dataset {repo_id!r}: offline mode is on (HF_HUB_OFFLINE=1). Download it elsewhere and "
            "pass the local .parquet/.jsonl file instead."
        ) from None
    except (HfHubHTTPError, OSError) as e:
        raise TaskError(
            f"Cannot fetch Hub dataset {repo_id!r} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). "
            "Check the id and your connection, or pass a local .parquet/.json/.jsonl file."
        ) from None


def _read_records(path: Path) -> list[dict]:
    import pandas as pd

    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return pd.read_parquet(path).to_dict(orient="records")
        if suffix == ".jsonl":
            return pd.read_json(path, lines=True, dtype=False).to_dict(orient="records")
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:
        raise TaskError(f"Cannot read {path.name}: {e}") from None
    if isinstance(data, dict):  # {"data": [...]} or a single record
        data = next((v for v in data.values() if isinstance(v, list)), [data])
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise TaskError(f"{path.name} must hold a list of records (objects with prompt/question/answer).")
    return data


def _record_to_sample(record: dict, index: int, source: str, tokenizer) -> TaskSample:
    prompt, question = record.get("prompt"), record.get("question")
    if not _present(prompt) and _present(record.get("context")) and _present(question):
        prompt = f"Context: {record['context']}\n\nQuestion: {question}"
    if not _present(prompt):
        raise TaskError(
            f"Record {index} of {source} has no 'prompt' (the whole input); its fields are {sorted(record)}. "
            "Upstream records have prompt, question and answer."
        )
    answer = record.get("answer", record.get("answers"))
    if hasattr(answer, "tolist"):  # parquet list columns arrive as numpy arrays
        answer = answer.tolist()
    if answer is None or (isinstance(answer, float) and answer != answer):
        answer = ""
    answer = [str(a) for a in answer] if isinstance(answer, (list, tuple)) else str(answer)
    meta = {k: _plain(v) for k, v in record.items() if k not in ("prompt", "question", "answer", "answers", "context")}
    meta.update(source=source, index=index)
    return TaskSample(
        task="dataset",
        prompt=str(prompt),
        question=str(question) if _present(question) else "",
        answer=answer,
        answer_prefix=str(record.get("answer_prefix") or ""),
        context_tokens=count_tokens(tokenizer, str(prompt)) if tokenizer is not None else 0,
        depth=None,
        needle_char_span=None,
        seed=index,
        meta=meta,
    )


def _present(value) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _plain(value):
    """JSON-friendly copies of record extras (numpy scalars and arrays from parquet)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    return value
