"""Result tables: the per-run columns every results file and table shares, the per-group summary of a set of runs
(one list of metrics for ``swaa eval``, ``swaa sweep`` and the app), and export to .csv / .jsonl."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from ..runtime.jsonl import read_jsonl

# Per-run columns of the tidy table, in this order (the JSONL holds them and a few more).
COLUMNS = (
    "cell_id", "model", "task", "label", "mask_kind", "window", "keep_first", "force_fa_decode", "non_sliding_layers",
    "length_target", "prompt_tokens", "depth", "actual_depth", "needle_distance", "seed", "reference", "output_text", "answer_text",
    "correct", "answer_logprob", "answer_logprob_per_token", "ttft_s", "prefill_s", "decode_tokens_per_s",
    "decode_tokens", "timed_tokens", "timed_total_s", "total_s", "peak_memory_bytes", "memory_delta_bytes", "kv_cache_bytes", "generated_tokens", "reasoning_tokens",
    "backend", "decode_path", "decode_reason", "setup_s", "cot", "error", "config",
)  # fmt: skip


# What a summary reports per group of runs, in this order: name -> (per-run column, aggregation). Failed runs are
# left out of these and counted in "errors" instead.
METRICS = {
    "accuracy": ("correct_num", "mean"),
    "logprob_per_token": ("answer_logprob_per_token", "mean"),
    "ttft_s": ("ttft_s", "mean"),
    "prefill_s": ("prefill_s", "mean"),
    "decode_tokens_per_s": ("decode_tokens_per_s", "mean"),
    "decode_tokens": ("decode_tokens", "min"),  # fewer than MIN_DECODE_TOKENS: do not rank its decode speed
    "timed_total_s": ("timed_total_s", "mean"),
    "total_s": ("total_s", "mean"),
    "kv_cache_bytes": ("kv_cache_bytes", "mean"),
}


def to_frame(rows: list[dict]):
    """A tidy DataFrame: one row per run, the :data:`COLUMNS` first."""
    import pandas as pd

    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=list(COLUMNS))
    for col in COLUMNS:
        if col not in df.columns:
            df[col] = None
    extra = [c for c in df.columns if c not in COLUMNS]
    return df[list(COLUMNS) + extra]


def load_results(path: str | Path):
    """The tidy table of a results JSONL file, one row per sweep cell (:func:`current_rows`)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Results file not found: {path}")
    return to_frame(current_rows(read_jsonl(path)))


def current_rows(rows: list[dict]) -> list[dict]:
    """``rows`` with one row per ``cell_id``: a cell run again (``--retry-errors`` after an error, or recorded twice)
    keeps its last successful row, else its last row, at the place of its first; rows without a cell id (single
    runs) all stay, in order."""
    keep: dict[str, int] = {}
    out: list[dict] = []
    for row in rows:
        cid = row.get("cell_id")
        if not cid:
            out.append(row)
        elif cid not in keep:
            keep[cid] = len(out)
            out.append(row)
        elif not row.get("error") or out[keep[cid]].get("error"):
            out[keep[cid]] = row
    return out


def summarize(df, by: tuple[str, ...] = ("label", "length_target", "depth")):
    """Accuracy and costs per group: runs, errors, accuracy, mean log-likelihood per answer token, timings.

    ``decode_tokens`` is the fewest decode steps any run of the group was timed over: below
    :data:`~swaa_core.eval.latency.MIN_DECODE_TOKENS` its ``decode_tokens_per_s`` is noise, not a ranking.
    ``timed_total_s`` (prompt to the ``timed_tokens``-th token) compares groups like for like; ``total_s`` is the
    time of each run's own answer, which differs in length between configs.

    ``by`` names columns of ``df``: ValueError for one it lacks or for none at all (a group dropped in silence would
    summarize something else than asked). List values (layer lists, per-layer FA decode) group as tuples."""
    import pandas as pd

    keys = list(dict.fromkeys(by))
    if not keys:
        raise ValueError("Nothing to group by: name at least one column of the results.")
    if df.empty:
        return pd.DataFrame()
    unknown = [k for k in keys if k not in df.columns]
    if unknown:
        raise ValueError(f"Cannot group by {', '.join(map(repr, unknown))}: not a column of the results "
                         f"({', '.join(map(str, df.columns))}).")  # fmt: skip
    df = df.copy()
    for k in keys:  # lists and dicts cannot be group keys
        df[k] = df[k].map(lambda v: tuple(v) if isinstance(v, list) else json.dumps(v) if isinstance(v, dict) else v)
    ok = df[df["error"].isna()].copy()
    ok["correct_num"] = pd.to_numeric(ok["correct"].map(lambda v: None if v is None else float(v)), errors="coerce")
    order = list(dict.fromkeys(df["label"])) if "label" in keys else None
    grouped = ok.groupby(keys, dropna=False, sort=False)
    table = grouped.agg(runs=("cell_id", "size"), **METRICS).reset_index()
    errors = df[df["error"].notna()].groupby(keys, dropna=False, sort=False).size().rename("errors").reset_index()
    table = table.merge(errors, on=keys, how="outer") if not errors.empty else table.assign(errors=0)
    table["errors"] = table["errors"].fillna(0).astype(int)
    table["runs"] = table["runs"].fillna(0).astype(int)
    if order:
        table["_order"] = table["label"].map({name: i for i, name in enumerate(order)})
        table = table.sort_values(["_order", *[k for k in keys if k != "label"]]).drop(columns="_order")
    return table.reset_index(drop=True)


def accuracy_table(results: Iterable):
    """:func:`summarize` per config label of :class:`~swaa_core.eval.runner.RunResult` objects (``swaa eval``'s
    table): runs, accuracy, mean answer log-likelihood per token, timings, KV cache, errors (pandas)."""
    return summarize(to_frame([r.to_dict() for r in results]), by=("label",))


def export(df, path: str | Path) -> Path:
    """Save a table as .csv or .jsonl (by the file's suffix)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        # Lists and dicts (configs, layer lists, multi-answer references) as JSON, not Python reprs.
        flat = df.copy()
        for col in flat.columns:
            if flat[col].map(lambda v: isinstance(v, (list, dict, tuple))).any():
                flat[col] = flat[col].map(lambda v: json.dumps(v) if isinstance(v, (list, dict, tuple)) else v)
        flat.to_csv(path, index=False)
    elif suffix in (".jsonl", ".ndjson"):
        df.to_json(path, orient="records", lines=True, force_ascii=False)
    else:
        raise ValueError(f"Cannot export to {path.name}: use a .csv or .jsonl file name.")
    return path
