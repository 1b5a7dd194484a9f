"""Sweeps: configs x lengths x depths x samples, appended to a JSONL file as they finish, resumable.

Each cell (one config on one sample) has a stable id built from everything that determines its outcome: the model,
the task and its parameters, the config, the generation settings. A rerun reads the file and skips the cells already
there, so an interrupted sweep continues where it stopped; results load as a tidy pandas table (one row per run).
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..engine.config import SWAAConfig
from ..runtime.distributed import Launch
from .latency import DEFAULT_TIMING_TOKENS
from .runner import BASELINE_LABEL, RunResult, run_one
from .tasks import TaskError, make_task

log = logging.getLogger(__name__)

# Per-run columns of the tidy table, in this order (the JSONL holds them and a few more).
COLUMNS = (
    "cell_id", "model", "task", "label", "window", "keep_first", "force_fa_decode", "non_sliding_layers",
    "length_target", "prompt_tokens", "depth", "actual_depth", "needle_distance", "seed", "reference", "output_text", "answer_text",
    "correct", "answer_logprob", "answer_logprob_per_token", "ttft_s", "prefill_s", "decode_tokens_per_s",
    "decode_tokens", "timed_tokens", "timed_total_s", "total_s", "peak_memory_bytes", "memory_delta_bytes", "kv_cache_bytes", "generated_tokens", "reasoning_tokens",
    "backend", "cot", "error", "config",
)  # fmt: skip


@dataclass
class SweepSpec:
    """What to run. ``configs`` maps labels to configs (None: full attention, always added first if missing)."""

    configs: dict[str, SWAAConfig | None]
    lengths: list[int]
    depths: list[float | None] = field(default_factory=lambda: [0.5])
    seeds: list[int] = field(default_factory=lambda: [0])
    task: str = "passkey"
    task_kwargs: dict[str, Any] = field(default_factory=dict)
    max_new_tokens: int = 16
    cot: bool = False
    score_logprob: bool = True
    timing_tokens: int = DEFAULT_TIMING_TOKENS  # every cell is timed over this many generated tokens

    def __post_init__(self):
        if not isinstance(self.configs, dict):
            raise ValueError("configs must be a dict {label: SWAAConfig or None}.")
        if not self.lengths or any(not isinstance(n, int) or n < 1 for n in self.lengths):
            raise ValueError(f"lengths must be positive whole numbers of tokens, got {self.lengths!r}.")
        if not self.depths:
            raise ValueError("depths is empty; use [None] for tasks without a needle depth.")
        for d in self.depths:
            if d is not None and not 0.0 <= float(d) <= 1.0:
                raise ValueError(f"depths must lie between 0 and 1, got {d!r}.")
        if not self.seeds:
            raise ValueError("seeds is empty: give at least one sample seed.")
        if not any(cfg is None or cfg.is_full_attention for cfg in self.configs.values()):
            self.configs = {BASELINE_LABEL: None, **self.configs}

    @property
    def total_cells(self) -> int:
        return len(self.configs) * len(self.lengths) * len(self.depths) * len(self.seeds)


def cell_id(model: str, task: str, task_kwargs: dict, config: SWAAConfig | None, length: int, depth, seed: int,
            max_new_tokens: int, cot: bool, timing_tokens: int = DEFAULT_TIMING_TOKENS) -> str:  # fmt: skip
    """A stable id: the same cell gets the same id in any process, whatever the label it runs under. The timing
    budget is part of it: rows timed over different token counts must not meet in one table."""
    key = {
        "model": model,
        "task": task,
        "task_kwargs": task_kwargs,
        "config": None if config is None or config.is_full_attention else config.to_dict(),
        "length": length,
        "depth": None if depth is None else round(float(depth), 6),
        "seed": seed,
        "max_new_tokens": max_new_tokens,
        "cot": bool(cot),
        "timing_tokens": timing_tokens,
    }
    return hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def model_name(loaded) -> str:
    info = getattr(loaded, "info", None)
    for attr in ("name", "name_or_path", "id"):
        value = getattr(info, attr, None)
        if isinstance(value, str) and value:
            return value
    model = getattr(loaded, "model", None)
    return str(getattr(getattr(model, "config", None), "_name_or_path", "") or "model")


def iter_cells(spec: SweepSpec, model: str) -> Iterator[tuple[str, str, SWAAConfig | None, int, Any, int]]:
    """(cell id, label, config, length, depth, seed), grouped so that one sample serves all configs in a row."""
    for length in spec.lengths:
        for seed in spec.seeds:
            for depth in spec.depths:
                for label, cfg in spec.configs.items():
                    cid = cell_id(model, spec.task, spec.task_kwargs, cfg, length, depth, seed, spec.max_new_tokens,
                                  spec.cot, spec.timing_tokens)  # fmt: skip
                    yield cid, label, cfg, length, depth, seed


def finished_cells(path: str | Path, *, retry_errors: bool = False) -> set[str]:
    """Cell ids already in ``path``. Cancelled cells never count as finished; errors count unless ``retry_errors``."""
    done = set()
    for row in read_jsonl(path):
        if row.get("cancelled") or (retry_errors and row.get("error")):
            continue
        if row.get("cell_id"):
            done.add(row["cell_id"])
    return done


def read_jsonl(path: str | Path) -> list[dict]:
    """Rows of a results file; a line cut short by a crash is skipped with a warning, not fatal."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("%s line %d is not valid JSON (an interrupted write?); skipped.", path, n)
    return rows


def run_sweep(
    loaded,
    spec: SweepSpec,
    out_path: str | Path,
    *,
    progress: bool = True,
    retry_errors: bool = False,
    cancel: threading.Event | None = None,
    on_result: Callable[[dict], None] | None = None,
    backend: str = "auto",
    launch: Launch | None = None,
):
    """Run every unfinished cell of ``spec``, appending one JSON line per run to ``out_path``; returns the table of
    all rows in the file for this sweep's cells (earlier runs included).

    ``launch`` (:func:`swaa_core.runtime.distributed.current`): under a launcher with N processes each process runs every
    N-th unfinished cell into its own part file (``OUT.partR``); once all are done the main process merges the parts
    into ``out_path`` in the order one process would have written them. Parts left by a killed run count as
    finished and are merged by the next run, whatever its number of processes."""
    from tqdm.auto import tqdm

    launch = launch or Launch()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    model = model_name(loaded)
    cells = list(iter_cells(spec, model))
    order = {c[0]: i for i, c in enumerate(cells)}
    if launch.is_main:
        _end_with_newline(out_path)
        merge_parts(out_path, order)
    launch.wait()  # nobody reads the file before leftover parts are in it
    done = finished_cells(out_path, retry_errors=retry_errors)
    todo = launch.share([c for c in cells if c[0] not in done])
    target = part_path(out_path, launch.rank) if launch.distributed else out_path
    desc = f"sweep [{launch.rank + 1}/{launch.world}]" if launch.distributed else "sweep"
    total = len(todo) if launch.distributed else len(cells)
    bar = tqdm(total=total, initial=total - len(todo), desc=desc, unit="run", disable=not progress)
    samples: dict[tuple, Any] = {}
    try:
        with target.open("a", encoding="utf-8") as f:
            for cid, label, cfg, length, depth, seed in todo:
                if cancel is not None and cancel.is_set():
                    break
                row = _run_cell(loaded, spec, samples, cid, label, cfg, length, depth, seed, model, cancel, backend)
                if row.get("cancelled"):
                    break
                f.write(json.dumps(row, default=str) + "\n")
                f.flush()
                bar.update()
                bar.set_postfix_str(f"{label[:24]} L={length} d={depth}: {_verdict(row)}")
                if on_result is not None:
                    on_result(row)
    finally:
        bar.close()
    launch.wait()
    if launch.is_main:
        merge_parts(out_path, order)
    launch.wait()
    return to_frame([r for r in read_jsonl(out_path) if r.get("cell_id") in order])


def part_path(out_path: str | Path, rank: int) -> Path:
    """Where process ``rank`` of a multi-process sweep appends its rows before the merge."""
    out_path = Path(out_path)
    return out_path.with_name(f"{out_path.name}.part{rank}")


def merge_parts(out_path: str | Path, order: dict[str, int] | None = None) -> int:
    """Move the rows of ``OUT.part*`` into ``out_path``; returns how many were added.

    New rows go in grid order (``order``: cell id -> position; others after, as found), so a merged multi-process
    sweep reads like a one-process one. The merged file replaces the old one in one step and the parts go after it:
    a crash in between leaves rows in both, and a part row equal to one already in the file is skipped next time,
    so nothing is counted twice."""
    out_path = Path(out_path)
    numbered = re.compile(re.escape(out_path.name) + r"\.part(\d+)")
    found = [(m, p) for p in out_path.parent.glob(glob.escape(out_path.name) + ".part*")
             if (m := numbered.fullmatch(p.name))]  # fmt: skip
    parts = [p for m, p in sorted(found, key=lambda mp: int(mp[0].group(1)))]
    if not parts:
        return 0
    order = order or {}
    seen = {_row_key(r) for r in read_jsonl(out_path)}
    new = []
    for part in parts:
        for row in read_jsonl(part):
            key = _row_key(row)
            if key not in seen:
                seen.add(key)
                new.append(row)
    new.sort(key=lambda r: order.get(r.get("cell_id"), len(order)))  # stable: unknown cells keep their order
    if new:
        staged = out_path.with_name(out_path.name + ".merging")
        with staged.open("wb") as f:
            if out_path.exists():
                f.write(out_path.read_bytes())
            f.write("".join(json.dumps(r, default=str) + "\n" for r in new).encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(staged, out_path)
    for part in parts:
        part.unlink()
    return len(new)


def _row_key(row: dict) -> str:
    return json.dumps(row, sort_keys=True, default=str)


def _end_with_newline(path: Path) -> None:
    """A crash can leave a half-written last line; new rows must start on a line of their own."""
    if path.exists() and path.stat().st_size:
        with path.open("rb+") as f:
            f.seek(-1, 2)
            if f.read(1) != b"\n":
                f.write(b"\n")


def _run_cell(loaded, spec, samples, cid, label, cfg, length, depth, seed, model, cancel, backend) -> dict:
    key = (length, depth, seed)
    if key not in samples:
        samples.clear()  # cells come grouped by sample: only the current one is worth keeping
        try:
            samples[key] = make_task(
                spec.task, loaded.tokenizer, length_tokens=length, depth=depth, seed=seed, **spec.task_kwargs
            )
        except TaskError as e:
            samples[key] = e
    sample = samples[key]
    if isinstance(sample, Exception):
        result = RunResult(label=label, config=None if cfg is None else cfg.to_dict(), error=str(sample))
    else:
        result = run_one(
            loaded,
            sample,
            cfg,
            label=label,
            max_new_tokens=spec.max_new_tokens,
            cot=spec.cot,
            cancel=cancel,
            backend=backend,
            score_logprob=spec.score_logprob,
            timing_tokens=spec.timing_tokens,
        )
    return _row(result, cid, model, spec.task, length, depth, seed)


def _row(result: RunResult, cid: str, model: str, task: str, length: int, depth, seed: int) -> dict:
    row = result.to_dict()
    cfg = result.config or {}
    row.update(
        cell_id=cid,
        model=model,
        task=task,
        length_target=length,
        depth=depth,
        actual_depth=result.meta.get("actual_depth"),
        needle_distance=result.meta.get("needle_distance"),
        seed=seed,
        window=cfg.get("sliding_window_size"),
        keep_first=cfg.get("keep_first", 0),
        force_fa_decode=cfg.get("force_fa_decode", False),
        non_sliding_layers=cfg.get("non_sliding_layers", []),
        finished_at=time.strftime("%Y-%m-%dT%H:%M:%S"),
    )
    row.pop("kv_cache_bytes_per_layer", None)
    return row


def _verdict(row: dict) -> str:
    if row.get("error"):
        return "error"
    return {True: "correct", False: "wrong", None: "unscored"}[row.get("correct")]


# ---------------------------------------------------------------------- tables


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
    """The tidy table of a results JSONL file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Results file not found: {path}")
    return to_frame(read_jsonl(path))


def summarize(df, by: tuple[str, ...] = ("label", "length_target", "depth")):
    """Accuracy and costs per group: runs, errors, accuracy, mean log-likelihood per answer token, timings.

    ``decode_tokens`` is the fewest decode steps any run of the group was timed over: below
    :data:`~swaa_core.eval.latency.MIN_DECODE_TOKENS` its ``decode_tokens_per_s`` is noise, not a ranking.
    ``timed_total_s`` (prompt to the ``timed_tokens``-th token) compares groups like for like; ``total_s`` is the
    time of each run's own answer, which differs in length between configs."""
    import pandas as pd

    if df.empty:
        return pd.DataFrame()
    ok = df[df["error"].isna()].copy()
    ok["correct_num"] = pd.to_numeric(ok["correct"].map(lambda v: None if v is None else float(v)), errors="coerce")
    keys = [k for k in by if k in ok.columns]
    order = list(dict.fromkeys(df["label"])) if "label" in keys else None
    grouped = ok.groupby(keys, dropna=False, sort=False)
    table = grouped.agg(
        runs=("cell_id", "size"),
        accuracy=("correct_num", "mean"),
        logprob_per_token=("answer_logprob_per_token", "mean"),
        ttft_s=("ttft_s", "mean"),
        prefill_s=("prefill_s", "mean"),
        decode_tokens_per_s=("decode_tokens_per_s", "mean"),
        decode_tokens=("decode_tokens", "min"),
        timed_total_s=("timed_total_s", "mean"),
        total_s=("total_s", "mean"),
        kv_cache_bytes=("kv_cache_bytes", "mean"),
    ).reset_index()
    errors = df[df["error"].notna()].groupby(keys, dropna=False, sort=False).size().rename("errors").reset_index()
    table = table.merge(errors, on=keys, how="outer") if not errors.empty else table.assign(errors=0)
    table["errors"] = table["errors"].fillna(0).astype(int)
    table["runs"] = table["runs"].fillna(0).astype(int)
    if order:
        table["_order"] = table["label"].map({name: i for i, name in enumerate(order)})
        table = table.sort_values(["_order", *[k for k in keys if k != "label"]]).drop(columns="_order")
    return table.reset_index(drop=True)


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
