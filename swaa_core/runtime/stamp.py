"""Content stamps of files and folders, for caches keyed by a path.

A cache that remembers what a path held (a loaded model folder, a merged LoRA adapter, a hashed .gguf file) must
notice when something else is written to the same path: ``swaa finetune --out adapter/`` run again, a model saved
over an old one. Hashing gigabytes of weights on every lookup is too slow, so the stamp is what the file system
says about every file under the path: its relative name, size, modification time (ns), inode and change time (ns).
Writing a file changes its change time whatever the writer does to the modification time, and ``save_pretrained``
replacing a file gives it a new inode, so a rewrite changes the stamp even when sizes stay the same.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = ["content_stamp", "path_stamp"]


def content_stamp(path: str | os.PathLike) -> str:
    """A 16-hex-digit stamp of the file or folder (recursively) at ``path``; it changes when any file under it is
    added, removed, renamed or rewritten. Raises FileNotFoundError when ``path`` does not exist."""
    root = Path(path)
    if root.is_file():
        entries = [("", root.stat())]
    else:
        if not root.is_dir():
            raise FileNotFoundError(f"No such file or folder: {root}")
        entries = [(p.relative_to(root).as_posix(), p.stat()) for p in sorted(root.rglob("*")) if p.is_file()]
    digest = hashlib.sha1()
    for name, st in entries:
        digest.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\0{st.st_ctime_ns}\n".encode())
    return digest.hexdigest()[:16]


def path_stamp(name: str | os.PathLike | None) -> str:
    """:func:`content_stamp` when ``name`` is an existing local path, else "" (a Hub id, an embedded model's name,
    nothing): the part of a cache key that tells two contents of one path apart."""
    if not name:
        return ""
    path = Path(name).expanduser()
    try:
        return content_stamp(path) if path.exists() else ""
    except OSError:  # unreadable or removed meanwhile: no stamp, the load itself reports the problem
        return ""
