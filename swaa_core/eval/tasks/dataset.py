"""Evaluation sets in the upstream format (records with ``prompt``, ``question``, ``answer``) as task samples: local
.parquet/.json/.jsonl files or folders, or Hub datasets when the Hub is reachable."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from .base import TaskError, TaskSample, count_tokens

_DATA_SUFFIXES = (".parquet", ".jsonl", ".json")


def load_dataset_records(
    path_or_hub_id: str | os.PathLike, *, split: str | None = None, limit: int | None = None, tokenizer=None
) -> list[TaskSample]:
    """Evaluation records in the upstream format as samples.

    Each record needs ``prompt`` (the whole input, question included) and ``answer``; ``question`` is optional
    (upstream also accepts ``context`` + ``question`` instead of ``prompt``). Reads a local .parquet/.json/.jsonl
    file or folder of them, or a Hub dataset id (``owner/name``) when the Hub is reachable. ``split`` picks files
    whose name contains it ("test", "validation"...). ``tokenizer`` fills ``context_tokens``.
    """
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise TaskError(f"limit must be a positive whole number, got {limit!r}.")
    source = str(path_or_hub_id)
    path = Path(source).expanduser()
    if path.exists():
        files = _local_files(path, split)
    elif re.fullmatch(r"[\w.-]+/[\w.-]+", source) and not source.endswith(_DATA_SUFFIXES):
        files = _hub_files(source, split)
    else:
        raise TaskError(
            f"Dataset not found: {source!r} is neither a local file/folder nor a Hub dataset id (owner/name)."
        )
    records: list[dict] = []
    for f in files:
        records.extend(_read_records(f))
        if limit is not None and len(records) >= limit:
            break
    if limit is not None:
        records = records[:limit]
    if not records:
        raise TaskError(f"No records found in {source!r}" + (f" for split {split!r}." if split else "."))
    return [_record_to_sample(r, i, source, tokenizer) for i, r in enumerate(records)]


def _local_files(path: Path, split: str | None) -> list[Path]:
    if path.is_file():
        if path.suffix.lower() not in _DATA_SUFFIXES:
            raise TaskError(f"Unsupported dataset file type {path.suffix!r}; use .parquet, .json or .jsonl.")
        return [path]
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in _DATA_SUFFIXES and p.is_file())
    return _pick_split(files, split, str(path))


def _pick_split(files: list, split: str | None, where: str) -> list:
    if split:
        chosen = [f for f in files if split.lower() in str(f).lower()]
        if not chosen:
            names = ", ".join(str(f) for f in files[:10])
            raise TaskError(f"No file of split {split!r} in {where}; files found: {names or 'none'}.")
        return chosen
    if not files:
        raise TaskError(f"No .parquet, .json or .jsonl files in {where}.")
    return files


def _hub_files(repo_id: str, split: str | None) -> list[Path]:
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    from ...models.hub import hub_offline_reason

    offline = hub_offline_reason()  # one short check instead of huggingface_hub's ~30 s of retries
    if offline:
        raise TaskError(
            f"Cannot fetch Hub dataset {repo_id!r}: {offline}. Pass a local .parquet/.json/.jsonl file instead."
        )
    try:
        names = HfApi().list_repo_files(repo_id, repo_type="dataset")
        names = _pick_split(sorted(n for n in names if n.lower().endswith(_DATA_SUFFIXES)), split, repo_id)
        return [Path(hf_hub_download(repo_id, n, repo_type="dataset")) for n in names]
    except OfflineModeIsEnabled:
        raise TaskError(
            f"Cannot fetch Hub dataset {repo_id!r}: offline mode is on (HF_HUB_OFFLINE=1). Download it elsewhere and "
            "pass the local .parquet/.jsonl file instead."
        ) from None
    except (HfHubHTTPError, OSError) as e:
        raise TaskError(
            f"Cannot fetch Hub dataset {repo_id!r} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). "
            "Check the id and your connection, or pass a local .parquet/.json/.jsonl file."
        ) from None


def _read_records(path: Path) -> list[dict]:
    import pandas as pd

    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return pd.read_parquet(path).to_dict(orient="records")
        if suffix == ".jsonl":
            return pd.read_json(path, lines=True, dtype=False).to_dict(orient="records")
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:
        raise TaskError(f"Cannot read {path.name}: {e}") from None
    if isinstance(data, dict):  # {"data": [...]} or a single record
        data = next((v for v in data.values() if isinstance(v, list)), [data])
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise TaskError(f"{path.name} must hold a list of records (objects with prompt/question/answer).")
    return data


def _record_to_sample(record: dict, index: int, source: str, tokenizer) -> TaskSample:
    prompt, question = record.get("prompt"), record.get("question")
    if not _present(prompt) and _present(record.get("context")) and _present(question):
        prompt = f"Context: {record['context']}\n\nQuestion: {question}"
    if not _present(prompt):
        raise TaskError(
            f"Record {index} of {source} has no 'prompt' (the whole input); its fields are {sorted(record)}. "
            "Upstream records have prompt, question and answer."
        )
    answer = record.get("answer", record.get("answers"))
    if hasattr(answer, "tolist"):  # parquet list columns arrive as numpy arrays
        answer = answer.tolist()
    if answer is None or (isinstance(answer, float) and answer != answer):
        answer = ""
    answer = [str(a) for a in answer] if isinstance(answer, (list, tuple)) else str(answer)
    meta = {k: _plain(v) for k, v in record.items() if k not in ("prompt", "question", "answer", "answers", "context")}
    meta.update(source=source, index=index)
    return TaskSample(
        task="dataset",
        prompt=str(prompt),
        question=str(question) if _present(question) else "",
        answer=answer,
        answer_prefix=str(record.get("answer_prefix") or ""),
        context_tokens=count_tokens(tokenizer, str(prompt)) if tokenizer is not None else 0,
        depth=None,
        needle_char_span=None,
        seed=index,
        meta=meta,
    )


def _present(value) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _plain(value):
    """JSON-friendly copies of record extras (numpy scalars and arrays from parquet)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    return value
