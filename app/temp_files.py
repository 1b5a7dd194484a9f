"""Files the page offers for download and the sweeps write, in this process's own temp folder: pruned after an hour
and removed when the app stops (app.py)."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

TEMP_ROOT = Path(tempfile.gettempdir()) / f"swaa-app-{os.getpid()}"  # removed at shutdown (app.py)
TEMP_MAX_AGE_S = 3600  # downloads older than this are deleted when a new one is written


def write_temp(text: str, name: str) -> str:
    """A file for a download button in this process's temp folder (Gradio copies it into its own cache, which
    Blocks(delete_cache=...) empties); files older than an hour are removed on the way."""
    _prune(TEMP_ROOT, TEMP_MAX_AGE_S)
    TEMP_ROOT.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="dl-", dir=TEMP_ROOT))
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def temp_folder(prefix: str) -> Path:
    """A fresh folder under this process's temp root (sweep files and exports)."""
    _prune(TEMP_ROOT, TEMP_MAX_AGE_S)
    TEMP_ROOT.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=TEMP_ROOT))


def _prune(root: Path, max_age_s: float) -> None:
    if not root.is_dir():
        return
    cutoff = time.time() - max_age_s
    for folder in root.iterdir():
        try:
            if folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            pass  # another request removed it first


def remove_temp_root() -> None:
    shutil.rmtree(TEMP_ROOT, ignore_errors=True)
