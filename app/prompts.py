"""Prompt sources: built-in tasks, the user's own text (pasted or uploaded as txt/md/PDF) and the ready examples.

Samples are always built by swaa_core.tasks so that every source is scored the same way as in the CLI.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from swaa_core.tasks import TaskSample, count_tokens, make_task

ASSETS = Path(__file__).resolve().parent.parent / "assets"
EXAMPLES_DIR = ASSETS / "examples"
TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".text")
MAX_UPLOAD_CHARS = 2_000_000  # about 500K tokens: far beyond any supported context; bigger files are refused

# Built-in tasks offered in the picker: (kind, label). doc_qa is the "your text" source instead.
TASK_CHOICES = [
    ("needle", "Needle in a haystack (find a magic number)"),
    ("passkey", "Pass key (find a number)"),
    ("multi_key", "Multi-key needle (distractors)"),
    ("multi_value", "Multi-value needle (find all values)"),
    ("variable_tracking", "Variable tracking (follow a chain)"),
    ("common_words", "Common words (count frequencies)"),
]


class PromptError(ValueError):
    """A prompt the app cannot build, with a message for the user."""


@dataclass(frozen=True)
class Example:
    key: str
    title: str
    document: str
    question: str
    answer: str
    answer_prefix: str


@lru_cache(maxsize=1)
def examples() -> dict[str, Example]:
    out = {}
    for path in sorted(EXAMPLES_DIR.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        out[path.stem] = Example(
            path.stem,
            data["title"],
            data["document"],
            data["question"],
            data.get("answer", ""),
            data.get("answer_prefix", ""),
        )
    return out


def read_upload(path: str | Path) -> str:
    """The text of an uploaded .txt/.md/.pdf file (PDF text extracted with pypdf)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".pdf":
        text = _pdf_text(path)
    elif suffix in TEXT_SUFFIXES:
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
    else:
        raise PromptError(f"Cannot read {path.name}: upload a .txt, .md or .pdf file.")
    text = text.strip()
    if not text:
        raise PromptError(f"{path.name} contains no text (a scanned PDF needs OCR first).")
    if len(text) > MAX_UPLOAD_CHARS:
        raise PromptError(f"{path.name} holds {len(text):,} characters; the limit is {MAX_UPLOAD_CHARS:,}.")
    return text


def _pdf_text(path: Path) -> str:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(path)
        if reader.is_encrypted and not reader.decrypt(""):
            raise PromptError(f"{path.name} is password-protected; save an unprotected copy first.")
        pages = [page.extract_text() or "" for page in reader.pages]
    except PdfReadError as e:
        raise PromptError(f"{path.name} is not a readable PDF: {e}") from None
    return "\n\n".join(p.strip() for p in pages if p.strip())


def task_sample(tokenizer, kind: str, *, length: int, depth: float, seed: int) -> TaskSample:
    return make_task(kind, tokenizer, length_tokens=int(length), depth=float(depth), seed=int(seed))


def text_sample(tokenizer, document: str, question: str, answer: str, answer_prefix: str, *, seed: int) -> TaskSample:
    """The user's document and question as a doc_qa sample (scored when an expected answer is given)."""
    document, question = (document or "").strip(), (question or "").strip()
    if not document:
        raise PromptError("The text box is empty: paste a document, upload a file or pick an example.")
    if not question:
        raise PromptError("Add a question about the text, so every column answers the same thing.")
    return make_task(
        "doc_qa",
        tokenizer,
        length_tokens=None,
        seed=int(seed),
        document=document,
        question=question,
        answer=(answer or "").strip(),
        answer_prefix=(answer_prefix or "").strip(),
    )


def token_count(tokenizer, text: str) -> int:
    return count_tokens(tokenizer, text) if text else 0
