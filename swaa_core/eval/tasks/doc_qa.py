"""A user's document and question (scored when an answer is given); the document is cut to ``length_tokens`` when
asked, keeping its beginning."""

from __future__ import annotations

from .base import TaskError, count_tokens, cut_to_tokens, finish_sample


def doc_qa(
    tokenizer, *, length_tokens=None, depth=None, seed=0, document=None, question=None, answer="", answer_prefix=""
):
    if not isinstance(document, str) or not document.strip():
        raise TaskError("doc_qa needs a document: pass document='...' (the text to ask about).")
    if not isinstance(question, str) or not question.strip():
        raise TaskError("doc_qa needs a question about the document: pass question='...'.")
    document, truncated = document.strip(), False
    head, tail = "Read the document below and answer the question.\n\nDocument:\n", f"\n\nQuestion: {question.strip()}"
    if length_tokens is not None:
        document, truncated = _cut(tokenizer, document, head, tail, length_tokens)
    prompt = head + document + tail
    start = len(head)
    refs = [a for a in (answer if isinstance(answer, (list, tuple)) else [answer]) if str(a or "").strip()]
    spans, actual_depth = [], None
    if refs:
        at = prompt.lower().find(str(refs[0]).lower(), start, start + len(document))
        if at >= 0:
            spans = [(at, at + len(str(refs[0])))]
    sample = finish_sample(
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


def _cut(tokenizer, document: str, head: str, tail: str, length_tokens: int) -> tuple[str, bool]:
    """(document, truncated): its beginning, between whole characters, such that the whole prompt has at most
    ``length_tokens`` tokens (tokens can merge across the joins, so the prompt itself is counted)."""
    budget = length_tokens - count_tokens(tokenizer, head + tail)
    if budget < 16:
        raise TaskError(f"length_tokens={length_tokens} leaves no room for the document; ask for more tokens.")
    if count_tokens(tokenizer, head + document + tail) <= length_tokens:
        return document, False
    while budget > 0:  # keep the beginning; the user sees meta["truncated"]
        cut = cut_to_tokens(tokenizer, document, budget).strip()
        if count_tokens(tokenizer, head + cut + tail) <= length_tokens:
            return cut, True
        budget -= 1
    raise TaskError(f"length_tokens={length_tokens} leaves no room for the document; ask for more tokens.")
