"""Sweeps: configs x lengths x depths x samples, appended to a JSONL file as they finish, resumable.

Each cell (one config on one sample) has a stable id built from everything that determines its outcome: the model
(its name, and fingerprints of its weights and tokenizer), the config, the sample (length, depth, seed) and every
setting of the spec (task, generation, timing, scoring, decode path), the backend and the weights' dtype and device.
A rerun reads the file and skips the cells already there, so an interrupted sweep continues where it stopped; one
sweep writes a file at a time (``OUT.lock``); results load as a tidy pandas table (one row per cell).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, NamedTuple

from ..engine.config import DEFAULT_KIND, SWAAConfig
from ..runtime.distributed import Launch
from ..runtime.jsonl import jsonl_line, read_jsonl
from ..runtime.stamp import tokenizer_fingerprint, weights_fingerprint
from .results import current_rows, to_frame
from .run_spec import RunSpec
from .runner import BASELINE_LABEL, RunResult, run_one
from .tasks import TaskError, make_task
from .tasks.registry import DEPTHLESS, check_grid, task_kind

log = logging.getLogger(__name__)


def _refuse_same_configs(configs: dict) -> None:
    """A cell is its config, not its label (:func:`cell_id`): two labels of one config would run each cell twice and
    leave one label out of every table. ValueError naming them."""
    seen: dict[str, str] = {}
    for label, cfg in configs.items():
        full = cfg is None or cfg.is_full_attention
        key = "null" if full else json.dumps(cfg.to_dict(), sort_keys=True)  # what cell_id reads of a config
        if key in seen:
            what = "full attention" if full else cfg.describe()
            raise ValueError(
                f"{seen[key]!r} and {label!r} are the same config ({what}); a sweep runs each config once: give one "
                "of them."
            )
        seen[key] = label


@dataclass(init=False)
class SweepSpec:
    """What to run: the grid (``configs`` x ``lengths`` x ``depths`` x ``seeds``), the task, and the one
    :class:`RunSpec` every cell runs under.

    ``configs`` maps labels to configs (None: full attention, always added first if missing). ``depths`` defaults to
    [0.5], or [None] for a task without a needle (where other depths are refused, as several seeds are for a task
    that reads the user's text: :func:`~swaa_core.eval.tasks.registry.check_grid`). ``run``: the run
    value; or give its settings as keywords (``max_new_tokens=3, decode_path="fixed"``, ...; a sweep's
    ``max_new_tokens`` defaults to 16), not both. The settings read through: ``spec.max_new_tokens`` is
    ``spec.run.max_new_tokens``. ValueError naming what is wrong with the grid or a setting; TypeError for a keyword
    that is no setting."""

    configs: dict[str, SWAAConfig | None]
    lengths: list[int]
    depths: list[float | None]
    seeds: list[int]
    task: str
    task_kwargs: dict[str, Any]
    run: RunSpec

    def __init__(self, configs: dict[str, SWAAConfig | None], lengths: list[int],
                 depths: list[float | None] | None = None, seeds: list[int] | None = None, task: str = "passkey",
                 task_kwargs: dict[str, Any] | None = None, run: RunSpec | None = None, **settings):  # fmt: skip
        if not isinstance(configs, dict):
            raise ValueError("configs must be a dict {label: SWAAConfig or None}.")
        configs = {label: SWAAConfig.coerce(cfg, f"config {label!r}") for label, cfg in configs.items()}
        lengths = _whole_numbers(lengths, "lengths", "positive whole numbers of tokens")
        if not lengths or any(n < 1 for n in lengths):
            raise ValueError(f"lengths must be positive whole numbers of tokens, got {lengths!r}.")
        depths = ([None] if task_kind(task) in DEPTHLESS else [0.5]) if depths is None else list(depths)
        if not depths:
            raise ValueError("depths is empty; use [None] for tasks without a needle depth.")
        for d in depths:
            if d is not None and not 0.0 <= float(d) <= 1.0:
                raise ValueError(f"depths must lie between 0 and 1, got {d!r}.")
        seeds = [0] if seeds is None else _whole_numbers(seeds, "seeds", "whole numbers")
        if not seeds:
            raise ValueError("seeds is empty: give at least one sample seed.")
        check_grid(task, seeds, depths)
        if run is None:
            settings = {**SWEEP_DEFAULTS, **settings}
        self.run = RunSpec.of(run, **settings)
        if not any(cfg is None or cfg.is_full_attention for cfg in configs.values()):
            configs = {BASELINE_LABEL: None, **configs}
        _refuse_same_configs(configs)
        self.configs, self.lengths, self.depths, self.seeds = configs, list(lengths), depths, seeds
        self.task, self.task_kwargs = task, dict(task_kwargs or {})

    def __getattr__(self, name: str):
        if name in RUN_FIELDS:  # only reached for names the instance does not hold itself
            return getattr(self.run, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def total_cells(self) -> int:
        return len(self.configs) * len(self.lengths) * len(self.depths) * len(self.seeds)

    def with_backend(self, backend: str | None) -> RunSpec:
        """The run value with ``backend`` (run_sweep's own argument) in it: None or the run's own backend keeps it;
        a run that asks for "auto" takes the given one; two different kernels are refused by name."""
        if backend is None or backend == self.run.backend:
            return self.run
        if self.run.backend != "auto":
            raise ValueError(f"backend={backend!r} was given beside a run value with backend={self.run.backend!r}: "
                             "give one of them.")  # fmt: skip
        return replace(self.run, backend=backend)


def _whole_numbers(values, name: str, what: str) -> list[int]:
    """``values`` as plain ints (NumPy integers included: a cell's id holds its numbers as JSON numbers, so ``0`` and
    ``np.int64(0)`` must be the same cell). ValueError naming ``name`` for anything else."""
    import operator

    try:
        if any(isinstance(v, bool) for v in values):
            raise TypeError
        return [operator.index(v) for v in values]
    except TypeError:
        raise ValueError(f"{name} must be {what}, got {values!r}.") from None


SWEEP_DEFAULTS = {"max_new_tokens": 16}  # short answers: a sweep scores many cells, and every one is timed alike
RUN_FIELDS = frozenset(f.name for f in fields(RunSpec))
# SweepSpec fields that are a cell's coordinates (each cell's own config, length, depth and seed go into its id one
# by one) rather than settings every row is run under; every other field is a setting and goes into every id, so a
# field added to SweepSpec or RunSpec later changes the ids without anyone remembering to add it here.
GRID_FIELDS = frozenset({"configs", "lengths", "depths", "seeds"})
# The run settings sweep ids have held from the start. A RunSpec field beyond them (system, warmup) enters an id only
# when it is set away from its default, and "static_cache" (now merged into decode_path) stays in as None, so that a
# setting added later does not change the ids of runs that leave it alone. (Files written before the weights and
# tokenizer fingerprints entered the ids, 2026-12-06, are read but not resumed: their cells run again.)
FIRST_KEYED = frozenset({"max_new_tokens", "cot", "score_logprob", "timing_tokens", "decode_path", "backend"})


def run_settings(spec: SweepSpec, *, backend: str | None = None, loaded=None) -> dict:
    """Every setting a sweep's rows are run under: the spec's fields but its grid, its run value's fields (with
    ``backend``, see :meth:`SweepSpec.with_backend`) and, when ``loaded`` is given, the weights' dtype and device
    type (numbers and timings differ across them) and fingerprints of the weights and the tokenizer (a folder saved
    over, another Hub revision or an adapter loaded in place is another model under the same name). The CPU thread
    count is recorded in each row ("threads") but left out here: it follows the number of processes, and a sweep
    resumes under any number of them."""
    settings = {f.name: getattr(spec, f.name) for f in fields(spec) if f.name not in GRID_FIELDS | {"run"}}
    run, default = spec.with_backend(backend), RunSpec()
    for name in sorted(RUN_FIELDS):
        value = getattr(run, name)
        if name in FIRST_KEYED or value != getattr(default, name):
            settings[name] = value
    settings["static_cache"] = None
    model = getattr(loaded, "model", None)
    param = next(iter(getattr(model, "parameters", list)()), None)
    if param is not None:
        settings.update(dtype=str(param.dtype), device=param.device.type, weights=weights_fingerprint(model),
                        tokenizer=tokenizer_fingerprint(getattr(loaded, "tokenizer", None)))  # fmt: skip
    return settings


def cell_id(
    *,
    model: str,
    config: SWAAConfig | None,
    length: int,
    depth: float | None,
    seed: int,
    settings: dict,
) -> str:
    """A stable id: the same cell gets the same id in any process, whatever the label it runs under. ``settings``
    (:func:`run_settings`) holds everything else that changes a row (task, generation and timing settings, the
    decode path, the backend): a row run under other settings never counts as this cell."""
    key = {
        "model": model,
        "config": None if config is None or config.is_full_attention else config.to_dict(),
        "length": length,
        "depth": None if depth is None else round(float(depth), 6),
        "seed": seed,
        "settings": settings,
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


class Cell(NamedTuple):
    """One config on one sample of a sweep."""

    id: str
    label: str
    config: SWAAConfig | None
    length: int
    depth: float | None
    seed: int


def iter_cells(spec: SweepSpec, model: str, settings: dict | None = None) -> Iterator[Cell]:
    """Every cell of ``spec``, grouped so that one sample serves all configs in a row (``settings``: from
    :func:`run_settings`, by default the spec's own with the auto backend)."""
    settings = run_settings(spec) if settings is None else settings
    for length in spec.lengths:
        for seed in spec.seeds:
            for depth in spec.depths:
                for label, cfg in spec.configs.items():
                    cid = cell_id(model=model, config=cfg, length=length, depth=depth, seed=seed, settings=settings)
                    yield Cell(cid, label, cfg, length, depth, seed)


def finished_cells(path: str | Path, *, retry_errors: bool = False) -> set[str]:
    """Cell ids already in ``path``. Cancelled cells never count as finished; errors count unless ``retry_errors``."""
    done = set()
    for row in read_jsonl(path):
        if row.get("cancelled") or (retry_errors and row.get("error")):
            continue
        if row.get("cell_id"):
            done.add(row["cell_id"])
    return done


def run_sweep(
    loaded,
    spec: SweepSpec,
    out_path: str | Path,
    *,
    progress: bool = True,
    retry_errors: bool = False,
    cancel: threading.Event | None = None,
    on_result: Callable[[dict], None] | None = None,
    backend: str | None = None,
    launch: Launch | None = None,
):
    """Run every unfinished cell of ``spec``, appending one JSON line per run to ``out_path``; returns the table of
    this sweep's cells in the file, earlier runs included, one row per cell (a retried error gives way to its new row:
    :func:`~swaa_core.eval.results.current_rows`). The sweep holds the file (:func:`output_lock`, ``OUT.lock``):
    ValueError while another sweep writes it.

    ``launch`` (:func:`swaa_core.runtime.distributed.current`): under a launcher with N processes each process runs every
    N-th unfinished cell into its own part file (``OUT.partR``); once all are done the main process merges the parts
    into ``out_path`` in the order one process would have written them. Parts left by a killed run count as
    finished and are merged by the next run, whatever its number of processes. ``backend``: the SWA kernel, when
    the spec's run value leaves it at "auto" (:meth:`SweepSpec.with_backend`)."""
    launch = launch or Launch()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    model = model_name(loaded)
    run = spec.with_backend(backend)
    cells = list(iter_cells(spec, model, run_settings(spec, backend=backend, loaded=loaded)))
    order = {c.id: i for i, c in enumerate(cells)}
    # the main process holds the output for the whole sweep: a second sweep on it would run the same cells again,
    # and its merge would replace the file under this one's appends (a launcher ends the other ranks if this raises)
    with output_lock(out_path) if launch.is_main else contextlib.nullcontext():
        if launch.is_main:
            _end_with_newline(out_path)
            _merge_parts(out_path, order)
        launch.wait()  # nobody reads the file before leftover parts are in it
        done = finished_cells(out_path, retry_errors=retry_errors)
        todo = launch.share([c for c in cells if c.id not in done])
        _run_cells(loaded, spec, run, todo, len(cells), out_path, model=model, launch=launch, progress=progress,
                   cancel=cancel, on_result=on_result)  # fmt: skip
        launch.wait()
        if launch.is_main:
            _merge_parts(out_path, order)
        launch.wait()
        return to_frame(current_rows([r for r in read_jsonl(out_path) if r.get("cell_id") in order]))


def _run_cells(loaded, spec, run, todo: list[Cell], n_cells: int, out_path: Path, *, model, launch, progress, cancel,
               on_result) -> None:  # fmt: skip
    """Run ``todo``, appending each row to this process's file as it finishes; a stop ends the loop between cells
    or inside one (a cancelled cell writes nothing)."""
    from tqdm.auto import tqdm

    target = part_path(out_path, launch.rank) if launch.distributed else out_path
    desc = f"sweep [{launch.rank + 1}/{launch.world}]" if launch.distributed else "sweep"
    total = len(todo) if launch.distributed else n_cells
    bar = tqdm(total=total, initial=total - len(todo), desc=desc, unit="run", disable=not progress)
    samples: dict[tuple, Any] = {}
    try:
        with target.open("a", encoding="utf-8") as f:
            for cell in todo:
                if cancel is not None and cancel.is_set():
                    break
                row = _run_cell(loaded, spec, run, cell, samples, model=model, cancel=cancel)
                if row.get("cancelled"):
                    break
                f.write(jsonl_line(row))
                f.flush()
                bar.update()
                bar.set_postfix_str(f"{cell.label[:24]} L={cell.length} d={cell.depth}: {_verdict(row)}")
                if on_result is not None:
                    on_result(row)
    finally:
        bar.close()


@contextlib.contextmanager
def output_lock(out_path: str | Path):
    """Hold a results file for one writer (an OS lock on ``OUT.lock`` beside it, released when the holder ends,
    however it ends; the empty lock file stays, as filelock leaves it, since deleting it could let two writers lock
    two files of one name). ValueError when another sweep or merge holds it."""
    from filelock import FileLock, Timeout

    lock = FileLock(f"{out_path}.lock", timeout=0, thread_local=False)
    try:
        lock.acquire()
    except Timeout:
        raise ValueError(
            f"Another sweep is writing {out_path} (it holds {out_path}.lock). Let it finish, or give this sweep "
            "another output file; run it again afterwards to continue where it stopped."
        ) from None
    try:
        yield
    finally:
        lock.release()


def part_path(out_path: str | Path, rank: int) -> Path:
    """Where process ``rank`` of a multi-process sweep appends its rows before the merge."""
    out_path = Path(out_path)
    return out_path.with_name(f"{out_path.name}.part{rank}")


def merge_parts(out_path: str | Path, order: dict[str, int] | None = None) -> int:
    """Move the rows of ``OUT.part*`` into ``out_path``; returns how many were added. Holds the file's lock
    (:func:`output_lock`: ValueError while a sweep writes it).

    New rows go in grid order (``order``: cell id -> position; others after, as found), so a merged multi-process
    sweep reads like a one-process one. The merged file replaces the old one in one step and the parts go after it:
    a crash in between leaves rows in both, and a part row equal to one already in the file is skipped next time,
    so nothing is counted twice."""
    with output_lock(out_path):
        return _merge_parts(out_path, order)


def _merge_parts(out_path: str | Path, order: dict[str, int] | None = None) -> int:
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
            f.write("".join(jsonl_line(r) for r in new).encode("utf-8"))
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


def _run_cell(loaded, spec: SweepSpec, run: RunSpec, cell: Cell, samples: dict, *, model: str, cancel) -> dict:
    """Run ``cell`` under ``run`` (building its sample unless ``samples`` holds it) and return its row."""
    key = (cell.length, cell.depth, cell.seed)
    if key not in samples:
        samples.clear()  # cells come grouped by sample: only the current one is worth keeping
        try:
            samples[key] = make_task(
                spec.task,
                loaded.tokenizer,
                length_tokens=cell.length,
                depth=cell.depth,
                seed=cell.seed,
                **spec.task_kwargs,
            )
        except TaskError as e:
            samples[key] = e
    sample = samples[key]
    if isinstance(sample, Exception):
        result = RunResult(label=cell.label, config=None if cell.config is None else cell.config.to_dict(),
                           error=str(sample))  # fmt: skip
    else:
        result = run_one(loaded, sample, cell.config, label=cell.label, cancel=cancel, spec=run)
    return _row(result, cell, model=model, task=spec.task)


def row_fields() -> frozenset[str]:
    """The columns of every row a sweep writes: a run's fields and the cell's (what ``--group-by`` may name)."""
    from .runner import RunResult as Result

    run = {f.name for f in fields(Result)} - {"kv_cache_bytes_per_layer"}  # _row drops the per-layer list
    return frozenset(run | {"answer_logprob_per_token"} | CELL_FIELDS)


CELL_FIELDS = frozenset({"cell_id", "model", "task", "length_target", "depth", "actual_depth", "needle_distance",
                         "seed", "mask_kind", "window", "keep_first", "force_fa_decode", "non_sliding_layers",
                         "finished_at"})  # fmt: skip


def _row(result: RunResult, cell: Cell, *, model: str, task: str) -> dict:
    row = result.to_dict()
    cfg = result.config or {}
    row.update(
        cell_id=cell.id,
        model=model,
        task=task,
        length_target=cell.length,
        depth=cell.depth,
        actual_depth=result.meta.get("actual_depth"),
        needle_distance=result.meta.get("needle_distance"),
        seed=cell.seed,
        mask_kind=cfg.get("mask_kind", DEFAULT_KIND) if cfg else None,  # what "window" is: a window or a chunk
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
