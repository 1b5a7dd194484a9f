"""What every task builds: a :class:`TaskSample` (prompt, question, reference answer, where the needle sits), the
:class:`TaskError` a task raises when it cannot be built as asked, and token counting in the model's own tokenizer."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


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


REPLACEMENT = "\ufffd"  # what a decoder writes for bytes that do not (yet) form a character
MAX_CHAR_TOKENS = 4  # a UTF-8 character has at most 4 bytes, so at most 4 byte-level tokens share one


def decode_whole(tokenizer, ids, *, skip_special_tokens: bool = True) -> str:
    """``tokenizer.decode(ids)`` without a character cut at the end: byte-level tokenizers split a character (an
    emoji, a CJK character) over several tokens, and a sequence that stops among them decodes to a trailing U+FFFD.
    The tokens of that unfinished character are left out, so a person only ever sees whole characters."""
    ids = list(ids.tolist() if hasattr(ids, "tolist") else ids)
    text = tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
    if not text.endswith(REPLACEMENT):
        return text
    for k in range(1, min(MAX_CHAR_TOKENS, len(ids)) + 1):
        shorter = tokenizer.decode(ids[:-k], skip_special_tokens=skip_special_tokens)
        if not shorter.endswith(REPLACEMENT):
            return shorter
    return text.rstrip(REPLACEMENT)


def cut_to_tokens(tokenizer, text: str, max_tokens: int) -> str:
    """The longest beginning of ``text`` that the tokenizer encodes (alone) in at most ``max_tokens`` tokens, cut
    between whole characters: a slice of ``text`` itself (by the fast tokenizers' offsets), else the decoded
    tokens without an unfinished character at the end."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=getattr(tokenizer, "is_fast", False))
    ids = enc["input_ids"]
    if len(ids) <= max_tokens:
        return text
    if max_tokens <= 0:
        return ""
    offsets = enc.get("offset_mapping")
    if not offsets:
        return decode_whole(tokenizer, ids[:max_tokens])
    # the tokens of one split character all map to that character: cut after the last token whose successor
    # starts a new character
    k = max_tokens
    while k > 0 and offsets[k][0] < offsets[k - 1][1]:
        k -= 1
    return text[: offsets[k - 1][1]] if k else ""


def finish_sample(
    tokenizer, kind, *, prompt, question, answer, answer_prefix, depth, seed, context_span, spans, **meta
):
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


def needle_distance(tokenizer, rendered: str, sample: TaskSample) -> int | None:
    """Tokens from the needle's first token to the end of the rendered prompt: with a window of W, the last prompt
    token (and an answer decoded without FA decode) can see the needle only when this is at most W."""
    if sample.needle_char_span is None:
        return None
    offset = rendered.rfind(sample.prompt)
    if offset < 0:
        return None
    return count_tokens(tokenizer, rendered[offset + sample.needle_char_span[0] :])


def run_meta(sample: TaskSample | None) -> dict[str, Any]:
    """The sample facts a run result carries (task, depth, seed, lengths; {'task': 'prompt'} for plain text)."""
    if sample is None:
        return {"task": "prompt"}
    meta = {"task": sample.task, "depth": sample.depth, "seed": sample.seed, "context_tokens": sample.context_tokens}
    for key in ("length_target", "actual_depth", "source", "index"):
        if key in sample.meta:
            meta[key] = sample.meta[key]
    return meta
