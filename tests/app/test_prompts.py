"""Prompt sources: the ready examples and text uploads (no model)."""

from __future__ import annotations

import pytest

from app.prompts import TASK_CHOICES, PromptError, examples, read_upload
from swaa_core.tasks import TASK_KINDS


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


def test_markdown_and_latin1_text_are_read(tmp_path):
    md = tmp_path / "notes.md"
    md.write_text("# Title\n\nThe café opens at nine.", encoding="utf-8")
    assert "café opens at nine" in read_upload(md)
    old = tmp_path / "old.txt"
    old.write_bytes("Grüße aus Köln".encode("latin-1"))
    assert read_upload(old) == "Grüße aus Köln"


def test_other_file_types_are_refused_with_the_allowed_ones(tmp_path):
    doc = tmp_path / "report.docx"
    doc.write_bytes(b"PK")
    with pytest.raises(PromptError, match=r"upload a \.txt, \.md or \.pdf file"):
        read_upload(doc)
