"""Output files written whole, never over another run's: the file is made beside its name, then put in place only if
no file of that name exists by then (``os.link`` fails rather than replace), else at the first free ``NAME-2``,
``NAME-3``, ... The commands also refuse an existing name up front; this covers a run that finished in between."""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Callable
from pathlib import Path


def write_new(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Write a new file through ``write(temporary_path)`` (a path with ``path``'s suffix, in its folder, which is made
    when missing) and give it the name ``path``, or ``stem-N.suffix`` when that name was taken meanwhile. Returns the
    path written. Never replaces a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:12]}.partial{path.suffix}")
    try:
        write(temporary)
        for n in itertools.count(1):
            target = path if n == 1 else path.with_name(f"{path.stem}-{n}{path.suffix}")
            try:
                _place(temporary, target)
                return target
            except FileExistsError:
                continue
    finally:
        temporary.unlink(missing_ok=True)
    raise AssertionError("unreachable")


def _place(source: Path, target: Path) -> None:
    """Give ``source``'s content the name ``target``; FileExistsError when ``target`` exists."""
    try:
        os.link(source, target)
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links: an exclusive create and a copy
        with target.open("xb") as out:
            out.write(source.read_bytes())
