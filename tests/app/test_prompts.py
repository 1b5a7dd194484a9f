"""Prompt sources: the ready examples and text uploads (no model)."""

from __future__ import annotations

import pytest

from app.prompts import PromptError, examples, read_upload, split_trailing_question
from app.state import TASK_CHOICES
from swaa_core.eval.tasks import TASK_KINDS


def test_builtin_task_choices_exist_in_swaa_core():
    assert {kind for kind, _ in TASK_CHOICES} <= set(TASK_KINDS)


@pytest.mark.parametrize("key", sorted(examples()))
def test_examples_hold_their_answer_early_in_the_document(key):
    ex = examples()[key]
    assert ex.question.strip() and ex.answer_prefix.strip()
    at = ex.document.find(ex.answer)
    assert at >= 0, f"{key}: the expected answer does not occur in the document"
    # The fact sits in the first third, so a window over the end of the document cannot see it.
    assert at < len(ex.document) / 3


MIXED_SCRIPTS = "Café ☕ 🐈‍⬛ 東京の猫は三匹。 שלום עולם مرحبا بالعالم"


@pytest.mark.parametrize(
    "name, raw",
    [
        ("notes.md", f"# Title\n\n{MIXED_SCRIPTS}".encode()),
        ("bom.txt", "\ufeff".encode() + MIXED_SCRIPTS.encode()),
        ("utf16.txt", MIXED_SCRIPTS.encode("utf-16")),  # with its byte-order mark
    ],
)
def test_text_in_any_script_survives_intact(tmp_path, name, raw):
    path = tmp_path / name
    path.write_bytes(raw)
    assert read_upload(path).endswith(MIXED_SCRIPTS)
    assert "\ufeff" not in read_upload(path)


@pytest.mark.parametrize(
    "name, raw, message",
    [
        (
            "program.txt",
            b"\x7fELF\x02\x01\x01\x00\x00\x00" + bytes(range(256)),
            "program.txt is a binary file (it contains NUL bytes)",
        ),
        ("old.txt", "Grüße aus Köln".encode("latin-1"), "old.txt is not UTF-8 text (byte 0xfc at position 2)"),
        ("noise.md", bytes(range(1, 32)) * 20, "noise.md is mostly control characters"),
        ("blank.txt", b"  \n\t\n", "blank.txt contains no text"),
    ],
)
def test_non_text_is_refused_naming_the_file_and_why(tmp_path, name, raw, message):
    path = tmp_path / name
    path.write_bytes(raw)
    with pytest.raises(PromptError) as excinfo:
        read_upload(path)
    assert message in str(excinfo.value)


def test_oversized_files_are_refused_before_reading(tmp_path, monkeypatch):
    import app.prompts as prompts

    monkeypatch.setattr(prompts, "MAX_UPLOAD_BYTES", 1000)
    big = tmp_path / "big.txt"
    big.write_text("a" * 2000)
    with pytest.raises(PromptError, match=r"big\.txt is 0\.0 MiB; uploads are limited to 0 MiB"):
        read_upload(big)
    monkeypatch.setattr(prompts, "MAX_UPLOAD_CHARS", 100)
    long = tmp_path / "long.txt"
    long.write_text("é" * 101)
    with pytest.raises(PromptError, match=r"long\.txt holds 101 characters; the limit is 100"):
        read_upload(long)


def test_a_trailing_question_is_split_off_in_every_script():
    assert split_trailing_question("Alice has 3 cats.\nHow many cats does Alice have?") == (
        "Alice has 3 cats.", "How many cats does Alice have?",
    )  # fmt: skip
    assert split_trailing_question("東京の猫は三匹。猫は何匹？") == ("東京の猫は三匹。", "猫は何匹？")
    assert split_trailing_question("للقطط ثلاثة. كم عدد القطط؟") == ("للقطط ثلاثة.", "كم عدد القطط؟")
    assert split_trailing_question("No question here.") == ("No question here.", "")


def test_other_file_types_are_refused_with_the_allowed_ones(tmp_path):
    doc = tmp_path / "report.docx"
    doc.write_bytes(b"PK")
    with pytest.raises(PromptError, match=r"upload a \.txt, \.md or \.pdf file"):
        read_upload(doc)
