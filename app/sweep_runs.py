"""The sweeps the "Recipes & needles" tab and the API run: recipes (accuracy vs time), needle depth x length, and
decode speed vs context.

Each takes its settings as one checked value (RecipeSweepSettings, NeedleSweepSettings, DecodeSpeedSettings) built
where they enter the app, by the page (app.events groups) or the API; the work is swaa_core's (sweep.run_sweep,
latency.decode_speed_curve), reported as progress and cancellable through the session's Stop button. Nothing here
knows about widgets: the tab (app.tabs.sweeps) draws what comes back.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import numpy as np

from swaa_core.eval.latency import DYNAMIC_CACHE
from swaa_core.eval.recipes import get_recipe, list_recipes, recipe_label, resolve_recipe

from .columns import config_label
from .model_service import loaded_model, num_layers
from .runs import session_run
from .state import (
    COT_LABEL,
    MAX_LENGTH,
    Strategy,
    checked_flag,
    decode_path_choice,
    seed_of,
    whole_in_range,
    window_and_sinks,
)
from .temp_files import temp_folder


def _freeze(obj, **values) -> None:
    for name, value in values.items():
        object.__setattr__(obj, name, value)


def _recipe_names(recipes) -> tuple[str, ...]:
    if not recipes:
        raise ValueError("Tick at least one recipe to sweep.")
    known = {r.name for r in list_recipes()}
    unknown = [r for r in recipes if r not in known]
    if unknown:
        raise ValueError(f"Unknown recipe(s) {', '.join(map(repr, unknown))}; choose from {', '.join(sorted(known))}.")
    return tuple(recipes)


def _recipe_configs(loaded, recipes, window: int, sinks: int) -> dict:
    """{column label: config} of each recipe at this window (sinks: 0 means the recipes' default)."""
    n = num_layers(loaded)
    configs = {}
    for name in recipes:
        cfg = resolve_recipe(name, n, window=window, keep_first=sinks or None)
        configs[recipe_label(get_recipe(name), cfg)] = cfg
    return configs


# ---------------------------------------------------------------- recipe sweep
@dataclass(frozen=True)
class RecipeSweepSettings:
    """The recipe sweep's widgets, checked on construction (ValueError with a message for the user)."""

    recipes: tuple[str, ...]  # preset names
    samples: int = 3  # per recipe, seeds seed, seed+1, ...
    length: int = 768  # prompt tokens
    seed: int = 0
    window: int = 256
    sinks: int = 10  # sink recipes only; 0: their default
    cot: bool = False
    decode_path: str = "auto"  # every recipe's decode path: auto / fixed / eager (state.decode_path_choice)

    def __post_init__(self) -> None:
        recipes = _recipe_names(self.recipes)
        samples = whole_in_range(self.samples, "Samples per recipe", 1, 20)
        length = whole_in_range(self.length, "Length", 64, MAX_LENGTH)
        window, sinks = window_and_sinks(self.window, self.sinks)
        _freeze(self, recipes=recipes, samples=samples, length=length, window=window, sinks=sinks)
        path = decode_path_choice(self.decode_path)
        _freeze(self, seed=seed_of(self.seed), cot=checked_flag(self.cot, COT_LABEL), decode_path=path)


@dataclass
class RecipeSweep:
    points: list[dict]  # one per recipe: label, accuracy 0..1, time_s, samples, is_full
    table: object  # pandas DataFrame, one row per recipe, as the page shows it
    time_label: str  # what time_s measures


def recipe_sweep(active_model, sweep: RecipeSweepSettings, request, progress) -> RecipeSweep:
    """Every chosen recipe on the same seeded samples (random depths): accuracy vs time, the paper's main figure.
    Returns the plot's points, the summary table (one row per recipe) and what the time axis measures."""
    from swaa_core.eval.results import summarize
    from swaa_core.eval.sweep import SweepSpec

    loaded = loaded_model(active_model)
    configs = _recipe_configs(loaded, sweep.recipes, sweep.window, sweep.sinks)
    seeds = [sweep.seed + i for i in range(sweep.samples)]
    spec = SweepSpec(configs, [sweep.length], depths=[None], seeds=seeds, task="needle", cot=sweep.cot,
                     score_logprob=False, decode_path=sweep.decode_path)  # fmt: skip
    df = _sweep(loaded, spec, request, progress, "recipe sweep")
    table = summarize(df, by=("label",))
    # time per sample = prompt + the same number of generated tokens for every recipe (answers differ in length)
    points = [
        {
            "label": row["label"],
            "accuracy": float(row["accuracy"]) if row["accuracy"] == row["accuracy"] else 0.0,
            "time_s": float(row["timed_total_s"]),
            "samples": int(row["runs"]),
            "is_full": configs.get(row["label"]) is None,
        }
        for _, row in table.iterrows()
    ]
    path = _paths(df)
    time_label = f"time for the prompt + {spec.timing_tokens} tokens ({path})"
    return RecipeSweep(points, _recipe_table(table, spec.timing_tokens, path), time_label)


def _paths(df) -> str:
    """The decode path(s) the sweep's runs took, in words (one unless a run failed before choosing one)."""
    paths = sorted({p for p in df.get("decode_path", []) if isinstance(p, str) and p})
    return " / ".join(paths) or "no decode timed"


def _recipe_table(table, timing_tokens: int, path: str):
    from swaa_core.eval.latency import decode_note

    shown = table[["label", "runs", "accuracy", "prefill_s", "timed_total_s", "kv_cache_bytes", "errors"]].copy()
    shown["accuracy"] = (100 * shown["accuracy"]).round(0)
    shown["kv_cache_bytes"] = (shown["kv_cache_bytes"] / 2**20).round(1)
    shown.insert(
        4,
        "decode tok/s",
        [decode_note(row) or f"{row['decode_tokens_per_s']:.1f}" for _, row in table.iterrows()],
    )
    shown.insert(5, "decode path", path)
    return shown.round({"prefill_s": 2, "timed_total_s": 2}).rename(
        columns={"label": "recipe", "accuracy": "accuracy %", "prefill_s": "prefill s",
                 "timed_total_s": f"s to token {timing_tokens}", "kv_cache_bytes": "KV cache MiB"}
    )  # fmt: skip


# ---------------------------------------------------------------- needle sweep
NEEDLE_TASKS = ("needle", "passkey", "multi_key")


@dataclass(frozen=True)
class NeedleSweepSettings:
    """The needle sweep's grid widgets, checked on construction (ValueError with a message for the user)."""

    lengths: tuple[int, ...]  # prompt tokens, one heatmap column each
    depths: int = 5  # evenly spaced from 0 to 1, one heatmap row each
    samples: int = 1  # per cell
    seed: int = 0
    task: str = "needle"  # another task than NEEDLE_TASKS sweeps the needle

    def __post_init__(self) -> None:
        if not self.lengths:
            raise ValueError("Tick at least one prompt length.")
        lengths = tuple(sorted({whole_in_range(x, "Each length", 64, MAX_LENGTH) for x in self.lengths}))
        depths = whole_in_range(self.depths, "Depths", 2, 11)
        samples = whole_in_range(self.samples, "Samples per cell", 1, 10)
        if self.task not in NEEDLE_TASKS:
            raise ValueError(f"The needle sweep's task must be one of {', '.join(NEEDLE_TASKS)}, got {self.task!r}.")
        _freeze(self, lengths=lengths, depths=depths, samples=samples, seed=seed_of(self.seed), task=self.task)


def needle_sweep(active_model, strategy: Strategy, sweep: NeedleSweepSettings, request, progress):
    """Full attention vs ``strategy`` over prompt length x needle depth. Returns one (label, lengths, depths,
    accuracy grid [depth, length]) per config and the CSV file of every run."""
    from swaa_core.eval.results import export, summarize
    from swaa_core.eval.sweep import SweepSpec

    loaded = loaded_model(active_model)
    n = num_layers(loaded)
    cfg = strategy.to_config(n)
    label = config_label(cfg, n)
    depth_values = [round(float(d), 3) for d in np.linspace(0.0, 1.0, sweep.depths)]
    seeds = [sweep.seed + i for i in range(sweep.samples)]
    spec = SweepSpec({"Full attention": None, label: cfg}, list(sweep.lengths), depth_values, seeds, sweep.task)
    df = _sweep(loaded, spec, request, progress, "needle sweep")
    table = summarize(df, by=("label", "length_target", "depth"))
    grids = []
    for name in spec.configs:
        part = table[table["label"] == name]
        grid = np.full((len(depth_values), len(spec.lengths)), np.nan)
        for _, row in part.iterrows():
            grid[depth_values.index(round(float(row["depth"]), 3)), spec.lengths.index(int(row["length_target"]))] = (
                row["accuracy"]
            )
        grids.append((name, spec.lengths, depth_values, grid))
    path = export(df, temp_folder("needle-") / "swaa-needle-sweep.csv")
    return grids, path


# ---------------------------------------------------------------- running a sweep
def _sweep_file() -> Path:
    return temp_folder("sweep-") / "sweep.jsonl"


def _progress_callback(progress, total: int, what: str):
    done = [0]

    def on_result(row: dict) -> None:
        done[0] += 1
        verdict = "error" if row.get("error") else {True: "correct", False: "wrong"}.get(row.get("correct"), "unscored")
        progress(done[0] / total, desc=f"{what}: {done[0]}/{total} runs · {row.get('label')}: {verdict}")

    return on_result


def _sweep(loaded, spec, request, progress, what: str):
    """run_sweep with a progress bar and the session's Stop button; what finished before a stop is kept."""
    from swaa_core.eval.sweep import run_sweep

    progress(0, desc=f"{what}: {spec.total_cells} runs")
    with session_run(request) as cancel:
        df = run_sweep(
            loaded, spec, _sweep_file(), progress=False, cancel=cancel,
            on_result=_progress_callback(progress, spec.total_cells, what),
        )  # fmt: skip
    if cancel.is_set():
        gr.Warning(f"{what} stopped after {len(df)} of {spec.total_cells} runs; the plot shows those.")
    if df.empty:
        raise ValueError(f"The {what} finished no run; nothing to draw.")
    return df


# ---------------------------------------------------------------- decode speed vs context
DECODE_CURVE_TOKENS = 32  # decode steps timed per point: enough to mean something, cheap on a CPU


@dataclass(frozen=True)
class DecodeSpeedSettings:
    """The decode-speed widgets, checked on construction (ValueError with a message for the user)."""

    recipes: tuple[str, ...]  # preset names
    lengths: tuple[int, ...]  # prompt tokens
    window: int = 256
    sinks: int = 10  # sink recipes only; 0: their default
    decode_path: str = "auto"  # the path every point is timed on: auto / fixed / eager

    def __post_init__(self) -> None:
        if not self.recipes or not self.lengths:
            raise ValueError("Tick at least one recipe and one prompt length.")
        lengths = tuple(sorted({whole_in_range(x, "Each prompt length", 16, MAX_LENGTH) for x in self.lengths}))
        window, sinks = window_and_sinks(self.window, self.sinks)
        path = decode_path_choice(self.decode_path)
        _freeze(self, recipes=tuple(self.recipes), lengths=lengths, window=window, sinks=sinks, decode_path=path)


def decode_curve(active_model, speed: DecodeSpeedSettings, request, progress) -> tuple[list[dict], str]:
    """Decode tokens/s of the ticked recipes at each chosen prompt length (random tokens, one run per point).
    Returns one row per (recipe, length) (swaa_core.eval.latency.DecodePoint.to_dict()) and a note on the method."""
    from swaa_core.eval.latency import decode_speed_curve

    loaded = loaded_model(active_model)
    configs = _recipe_configs(loaded, speed.recipes, speed.window, speed.sinks)
    lengths = list(speed.lengths)
    total, done = len(configs) * len(lengths), [0]

    def on_point(point) -> None:
        done[0] += 1
        progress(done[0] / total, desc=f"decode speed: {done[0]}/{total} · {point.label} at {point.prompt_tokens:,}")

    progress(0, desc=f"decode speed: {total} points")
    with session_run(request) as cancel:
        points = decode_speed_curve(
            loaded, configs, lengths, new_tokens=DECODE_CURVE_TOKENS, cancel=cancel, on_point=on_point,
            decode_path=speed.decode_path,
        )  # fmt: skip
    rows = [p.to_dict() for p in points]
    failed = "".join(f"\n- {p['label']} at {p['prompt_tokens']:,} tokens: {p['error']}" for p in rows if p["error"])
    note = (
        f"Each point: one prefill, then {DECODE_CURVE_TOKENS} decode steps, timed; drawn as decode tokens/s "
        f"(hover a point for its ms per token). {_path_note(rows)}"
    )
    return rows, note + (f"\n\nNot measured:{failed}" if failed else "")


def _path_note(rows: list[dict]) -> str:
    """Which decode path produced the points, and the fixed buffers' first-call cost (not in the speeds)."""
    paths = " / ".join(sorted({r["decode_path"] for r in rows})) or "none"
    reasons = sorted({r.get("decode_reason") or "" for r in rows} - {""})
    paths += f" ({'; '.join(reasons)})" if reasons else ""
    setups = [r["setup_s"] for r in rows if not r["error"] and r["decode_path"] != DYNAMIC_CACHE]
    if not setups:
        return f"Decode path: {paths}."
    return (
        f"Decode path: {paths}; setup per run (moving the cache into fixed buffers, warm-up steps, graph capture) "
        f"{1000 * min(setups):.0f}–{1000 * max(setups):.0f} ms, not counted in the speeds."
    )
