"""write_new: an output file written whole never replaces another run's file of the same name."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from swaa_core.runtime.files import write_new


def test_a_new_name_is_written_and_nothing_is_left_beside_it(tmp_path):
    out = write_new(tmp_path / "sub" / "runs.csv", lambda p: p.write_text("a,b\n", encoding="utf-8"))
    assert out == tmp_path / "sub" / "runs.csv" and out.read_text(encoding="utf-8") == "a,b\n"
    assert sorted(os.listdir(out.parent)) == ["runs.csv"]


def test_a_name_taken_meanwhile_keeps_its_file_and_the_new_one_goes_beside_it(tmp_path):
    target = tmp_path / "runs.jsonl"

    def write(p: Path):
        target.write_text("another run\n", encoding="utf-8")  # finishes while this one writes
        (tmp_path / "runs-2.jsonl").write_text("a third\n", encoding="utf-8")
        p.write_text("this run\n", encoding="utf-8")

    out = write_new(target, write)
    assert out == tmp_path / "runs-3.jsonl" and out.read_text(encoding="utf-8") == "this run\n"
    assert target.read_text(encoding="utf-8") == "another run\n"
    assert sorted(os.listdir(tmp_path)) == ["runs-2.jsonl", "runs-3.jsonl", "runs.jsonl"]


def test_a_failed_write_leaves_no_file(tmp_path):
    def write(p: Path):
        p.write_text("half", encoding="utf-8")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_new(tmp_path / "advice.json", write)
    assert os.listdir(tmp_path) == []
