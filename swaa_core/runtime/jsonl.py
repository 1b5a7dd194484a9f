"""JSON Lines files, one JSON value per line: results of runs and sweeps, distilled training records.

One writer and one reader for every layer, so every file is written the same way (UTF-8 as is, values JSON cannot
hold written as text) and read the same way (blank lines skipped; a line that is not JSON either named in an error
or, for files a crash may have cut short, skipped with a warning)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class JsonlError(ValueError):
    """A line that is not JSON in a file read strictly; the message names the file and the line."""


def jsonl_line(value: Any) -> str:
    """``value`` as one line of a JSONL file, newline included (dates, paths and the like as text)."""
    return json.dumps(value, ensure_ascii=False, default=str) + "\n"


def save_jsonl(values: Iterable[Any], path: str | Path) -> Path:
    """Write ``values`` to ``path``, one line each, replacing the file (its folder is made when missing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for value in values:
            f.write(jsonl_line(value))
    return path


def iter_jsonl(path: str | Path, *, strict: bool = False) -> Iterator[tuple[int, Any]]:
    """(line number from 1, value) for every non-blank line of ``path``. A line that is not JSON raises
    :class:`JsonlError` when ``strict``, else is skipped with a warning (a line cut short by a crash)."""
    path = Path(path)
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield n, json.loads(line)
            except json.JSONDecodeError as e:
                if strict:
                    raise JsonlError(f"{path.name} line {n} is not valid JSON: {e}") from None
                log.warning("%s line %d is not valid JSON (an interrupted write?); skipped.", path, n)


def read_jsonl(path: str | Path, *, strict: bool = False) -> list[Any]:
    """The values of ``path`` (see :func:`iter_jsonl`); a missing file holds none."""
    if not Path(path).exists():
        return []
    return [value for _, value in iter_jsonl(path, strict=strict)]
