"""Prompt sources: built-in tasks, the user's own text (pasted or uploaded as txt/md/PDF) and the ready examples.

Samples are always built by swaa_core.eval.tasks so that every source is scored the same way as in the CLI.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from swaa_core.eval.tasks import TaskSample, count_tokens, make_task

from .assets import ASSETS
from .state import depth_of, length_of, seed_of, task_of

EXAMPLES_DIR = ASSETS / "examples"
TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".text")
MAX_UPLOAD_CHARS = 2_000_000  # about 500K tokens: far beyond any supported context; bigger files are refused
# The task Length slider stops this far below the model's context: the chat template and the default new tokens must
# fit beside the task text, or the slider's last values would always be refused.
LENGTH_HEADROOM = 128


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


MAX_UPLOAD_BYTES = 20 * 2**20  # a PDF of a few hundred pages; text files meet MAX_UPLOAD_CHARS long before
_CONTROL = {chr(c) for c in range(32)} - set("\t\n\r\f\v") | {"\x7f"}


def read_upload(path: str | Path, name: str | None = None) -> str:
    """The text of an uploaded .txt/.md/.pdf file (PDF text extracted with pypdf).

    ``name``: the file's name as the user knows it (uploads arrive under a temporary path). Raises PromptError,
    naming the file and the reason, for other suffixes, files over MAX_UPLOAD_BYTES or MAX_UPLOAD_CHARS, binary
    content, text that is not UTF-8 (or UTF-16 with a byte-order mark), and files without text.
    """
    path = Path(path)
    name = name or path.name
    suffix = Path(name).suffix.lower()
    if suffix not in (".pdf", *TEXT_SUFFIXES):
        raise PromptError(f"Cannot read {name}: upload a .txt, .md or .pdf file.")
    size = path.stat().st_size
    if size > MAX_UPLOAD_BYTES:
        raise PromptError(f"{name} is {size / 2**20:,.1f} MiB; uploads are limited to {MAX_UPLOAD_BYTES // 2**20} MiB.")
    text = _pdf_text(path, name) if suffix == ".pdf" else _plain_text(path.read_bytes(), name)
    text = text.strip()
    if not text:
        raise PromptError(f"{name} contains no text (a scanned PDF needs OCR first).")
    if len(text) > MAX_UPLOAD_CHARS:
        raise PromptError(f"{name} holds {len(text):,} characters; the limit is {MAX_UPLOAD_CHARS:,}.")
    return text


def _plain_text(raw: bytes, name: str) -> str:
    """UTF-8 (or BOM-marked UTF-16) text; anything else is refused rather than guessed at."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return raw.decode("utf-16")
        except UnicodeDecodeError:
            raise PromptError(f"{name} starts like UTF-16 text but is not valid UTF-16.") from None
    if b"\x00" in raw[:65536]:
        raise PromptError(f"{name} is a binary file (it contains NUL bytes), not text; upload a .txt, .md or .pdf.")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise PromptError(
            f"{name} is not UTF-8 text (byte 0x{raw[e.start]:02x} at position {e.start:,}); save it as UTF-8 "
            "and upload it again."
        ) from None
    sample = text[:65536]
    if sample and sum(ch in _CONTROL for ch in sample) > 0.01 * len(sample):
        raise PromptError(f"{name} is mostly control characters: it looks like a binary file, not text.")
    return text


def _pdf_text(path: Path, name: str) -> str:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(path)
        if reader.is_encrypted and not reader.decrypt(""):
            raise PromptError(f"{name} is password-protected; save an unprotected copy first.")
        pages = [page.extract_text() or "" for page in reader.pages]
    except PromptError:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, IndexError, OSError) as e:  # pypdf on damaged files
        raise PromptError(f"{name} is not a readable PDF: {e}") from None
    return "\n\n".join(p.strip() for p in pages if p.strip())


@dataclass(frozen=True)
class Prompt:
    """The prompt widgets: a built-in task (source "task") or the user's own text (source "text").

    Field names are the page's widget names (app.tabs.compare)."""

    source: str = "task"
    task: str = "needle"
    length: int = 512
    depth: float = 0.25
    seed: int = 0
    document: str = ""
    question: str = ""
    answer: str = ""
    answer_prefix: str = ""

    def sample(self, tokenizer) -> TaskSample:
        """The sample every column answers (ValueError with a message for the user when it cannot be built, naming
        the field: a seed or length that is no whole number, an unknown source)."""
        seed = seed_of(self.seed)
        if self.source == "task":
            return task_sample(tokenizer, task_of(self.task), length=self.task_length(), depth=self.depth, seed=seed)
        if self.source != "text":
            raise ValueError(f"The prompt source must be 'task' or 'text', got {self.source!r}.")
        return text_sample(tokenizer, self.document, self.question, self.answer, self.answer_prefix, seed=seed)

    def task_length(self) -> int:
        """The task's length in tokens (ValueError naming it unless a whole number from 1 to MAX_LENGTH)."""
        return length_of(self.length)


def task_sample(tokenizer, kind: str, *, length: int, depth: float, seed: int) -> TaskSample:
    return make_task(kind, tokenizer, length_tokens=length, depth=depth_of(depth), seed=seed)


def text_sample(tokenizer, document: str, question: str, answer: str, answer_prefix: str, *, seed: int) -> TaskSample:
    """The user's document and question as a doc_qa sample (scored when an expected answer is given).

    An empty question is allowed when the document ends with one: its last sentence (ending in "?") becomes the
    question and the rest the document, as the Question field's help says."""
    document, question = (document or "").strip(), (question or "").strip()
    if not document:
        raise PromptError("The text box is empty: paste a document, upload a file or pick an example.")
    if not question:
        document, question = split_trailing_question(document)
    if not question:
        raise PromptError(
            "Add a question about the text (or end the text with one), so every column answers the same thing."
        )
    if not document:
        raise PromptError("The text is only a question: paste the document it asks about before it.")
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


# Question marks and sentence ends of Latin, CJK (fullwidth) and Arabic script.
_LAST_SENTENCE = re.compile(r"(?s)^(.*?)([^.!?。！？؟\n]*[?？؟])\s*$")


def split_trailing_question(text: str) -> tuple[str, str]:
    """(document, question) when ``text`` ends with a question (its last sentence ends in a question mark), else (text, "")."""
    match = _LAST_SENTENCE.match(text.strip())
    if not match or not match.group(2).strip():
        return text, ""
    return match.group(1).strip(), match.group(2).strip()


def model_input(tokenizer, sample: TaskSample, *, cot: bool) -> str:
    """What the model reads (chat template, CoT instruction and answer prefix included), rendered by swaa_core
    exactly as runner.run_one renders it."""
    from swaa_core.eval.cot import render_prompt

    return render_prompt(tokenizer, sample.prompt, cot=bool(cot), answer_prefix=sample.answer_prefix)


def model_input_tokens(tokenizer, sample: TaskSample, *, cot: bool) -> int:
    """Prompt tokens as the app counts them everywhere (RunResult.prompt_tokens): the tokens of :func:`model_input`."""
    return len(tokenizer(model_input(tokenizer, sample, cot=cot), add_special_tokens=False)["input_ids"])


def token_count(tokenizer, text: str) -> int:
    return count_tokens(tokenizer, text) if text else 0
