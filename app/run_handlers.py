"""Handlers that run the model: the side-by-side comparison, attention maps, and the two sweeps.

All model work is swaa_core's (runner.run_one, capture_attention, sweep.run_sweep); these functions stream and
draw what comes back. Runs are cancellable through the session's Stop button and decorated for ZeroGPU.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import numpy as np

from swaa_core.engine.config import SWAAConfig
from swaa_core.eval.harness import ContextOverflowError, check_context
from swaa_core.eval.recipes import get_recipe, recipe_label, resolve_recipe

from . import plots
from .board import ColumnView, render_board, summary_markdown
from .callbacks import build_sample
from .common import (
    ADAPTERS,
    CANCELS,
    ColumnSpec,
    columns_for,
    config_label,
    loaded_model,
    mask_figure,
    num_layers,
    strategy_from,
    temp_folder,
    ui_errors,
    write_temp,
)
from .engine import on_gpu, stream_columns
from .prompts import model_input_tokens, token_count

MAX_ATTENTION_TOKENS = 4096  # the reference kernel holds (heads, n, n) probabilities: ~600 MB at 4K for SmolLM2
RESULT_FIELDS = (
    "label", "correct", "answer_text", "output_text", "reasoning_text", "answer_logprob", "prompt_tokens",
    "generated_tokens", "ttft_s", "prefill_s", "decode_tokens_per_s", "decode_tokens", "timed_tokens",
    "timed_total_s", "timing_extra_tokens", "total_s", "kv_cache_bytes",
    "peak_memory_bytes", "backend", "error", "config",
)  # fmt: skip


def _session(request: gr.Request | None) -> str:
    return request.session_hash if request is not None and request.session_hash else "local"


def stop_run(request: gr.Request):
    if CANCELS.cancel(_session(request)):
        gr.Info("Stopping: the running column ends at its next step; finished results stay.")


# ---------------------------------------------------------------- the comparison
@dataclass
class Comparison:
    """One validated comparison request: the model, its columns (full attention first) and the sample."""

    loaded: object
    config: SWAAConfig
    columns: list[ColumnSpec]
    sample: object
    max_new_tokens: int
    cot: bool
    seed: int

    @classmethod
    def build(cls, active_model, strategy, adapter, pinned, prompt: dict, max_new_tokens, cot) -> Comparison:
        """``prompt``: source, task, length, depth, seed, document, question, answer, prefix. Raises ValueError
        with a message for the user when anything is out of range or the prompt does not fit the model."""
        loaded = loaded_model(active_model)
        n = num_layers(loaded)
        cfg = strategy.to_config(n)
        columns = columns_for(cfg, pinned, n, adapter or "")
        sample = build_sample(loaded, **prompt)
        max_new = _whole_in_range(max_new_tokens, "Max new tokens", 1, MAX_NEW_TOKENS)
        request = cls(loaded, cfg, columns, sample, max_new, bool(cot), int(prompt.get("seed") or 0))
        _check_length(loaded, sample, max_new, request.cot)
        return request

    def stream(self, session: str) -> Iterator[list[ColumnView]]:
        """The columns' views while they stream, the last time complete; the session's Stop button cancels."""
        cancel = CANCELS.start(session)
        try:
            yield from stream_columns(
                lambda name: ADAPTERS.get(self.loaded, name), self.sample, self.columns,
                max_new_tokens=self.max_new_tokens, cot=self.cot, seed=self.seed, cancel=cancel, registry=CANCELS,
            )  # fmt: skip
        finally:
            cancel.set()  # also stops the worker when the page closes mid-run
            CANCELS.finish(session, cancel)

    def rows(self, views: list[ColumnView]) -> list[dict]:
        meta = {"model": self.loaded.name, "task": self.sample.task, "seed": self.seed, "cot": self.cot,
                "max_new_tokens": self.max_new_tokens}  # fmt: skip
        return result_rows(views, meta)


MAX_NEW_TOKENS = 512  # the slider's maximum; the API refuses more with the same message


def _whole_in_range(value, what: str, low: int, high: int) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a whole number, got {value!r}.") from None
    if number != int(number) or not low <= number <= high:
        raise ValueError(f"{what} must be a whole number from {low} to {high}, got {value!r}.")
    return int(number)


def prompt_args(source, task, length, depth, seed, document, question, answer, prefix) -> dict:
    return dict(source=source, task=task, length=length, depth=depth, seed=seed, document=document,
                question=question, answer=answer, prefix=prefix)  # fmt: skip


@on_gpu(duration=180)
def run_comparison(
    active_model, window, sinks, fa_mode, fa_layers, fad_mode, fad_layers, cot, adapter,
    source, task, length, depth, seed, document, question, answer, prefix, max_new_tokens, pinned, layer,
    request: gr.Request = None,
):  # fmt: skip
    """Stream every column (full attention first) on the same prompt; end with metrics, summary and exports."""
    strategy = strategy_from(window, sinks, fa_mode, fa_layers, fad_mode, fad_layers)
    prompt = prompt_args(source, task, length, depth, seed, document, question, answer, prefix)
    run = Comparison.build(active_model, strategy, adapter, pinned, prompt, max_new_tokens, cot)
    views: list[ColumnView] = []
    for views in run.stream(_session(request)):
        yield (render_board(views), *[gr.skip()] * 8)
    rows = run.rows(views)
    prompt_tokens = next((v.result.prompt_tokens for v in views if v.result and v.result.prompt_tokens), 0)
    swaa_choices = [(c.label, i) for i, c in enumerate(run.columns) if c.config is not None]
    last_run = {
        "sample": run.sample.to_dict(),
        "columns": [(c.label, c.config.to_dict() if c.config else None) for c in run.columns],
        "prompt_tokens": prompt_tokens or model_input_tokens(run.loaded.tokenizer, run.sample, cot=run.cot),
    }
    masks = mask_figure(run.columns, last_run["prompt_tokens"], run.max_new_tokens, int(layer or 0))
    csv, data = export_files(rows)
    yield (
        render_board(views),
        summary_markdown(views),
        plots.plot_data(plots.latency_figure(rows), "swaa-latency"),
        plots.plot_data(masks, "swaa-masks"),
        last_run,
        gr.DownloadButton(value=csv, interactive=bool(csv)),
        gr.DownloadButton(value=data, interactive=bool(data)),
        gr.Dropdown(choices=swaa_choices, value=swaa_choices[-1][1]),
        gr.Slider(value=_first_sliding_layer(run.config, int(layer or 0))),
    )


def _first_sliding_layer(cfg: SWAAConfig, current: int) -> int:
    """Keep the chosen layer if it slides (the interesting case), else show the first sliding layer."""
    if cfg.layer_slides(current):
        return current
    return next((i for i in range(current, current + 1000) if cfg.layer_slides(i)), current)


def _check_length(loaded, sample, max_new: int, cot: bool) -> None:
    n = model_input_tokens(loaded.tokenizer, sample, cot=cot)
    try:
        check_context(loaded.model, n, max_new, info=loaded.info)
    except ContextOverflowError as e:  # the same rule as every run; the page's own words
        raise ValueError(
            f"The prompt is too long for {loaded.name}: {n:,} prompt tokens + {max_new} new tokens exceed its "
            f"{e.limit:,}-token context. Shorten the text or lower the length slider."
        ) from None


def result_rows(views: list[ColumnView], meta: dict) -> list[dict]:
    rows = []
    for view in views:
        if view.result is None:
            continue
        full = view.result.to_dict()
        row = {**meta, **{k: full.get(k) for k in RESULT_FIELDS}}
        row["config"] = json.dumps(row["config"]) if row["config"] is not None else ""
        rows.append(row)
    return rows


def export_files(rows: list[dict]) -> tuple[str | None, str | None]:
    """The results as CSV and JSON files (None, None when no column finished)."""
    import pandas as pd

    if not rows:
        return None, None
    csv = write_temp(pd.DataFrame(rows).to_csv(index=False), "swaa-results.csv")
    data = write_temp(json.dumps(rows, indent=2, default=str, ensure_ascii=False), "swaa-results.json")
    return csv, data


# ---------------------------------------------------------------- attention maps and masks
@ui_errors
@on_gpu(duration=60)
def draw_attention(active_model, last_run, column, layer, head):
    from swaa_core import capture_attention
    from swaa_core.eval.tasks import TaskSample

    if not last_run:
        return plots.plot_data(plots.message_figure("Run a comparison first; the maps use its prompt."), "attention")
    loaded = loaded_model(active_model)
    sample = TaskSample.from_dict(last_run["sample"])
    index = int(column) if column is not None else len(last_run["columns"]) - 1
    label, cfg_dict = last_run["columns"][index]
    cfg = SWAAConfig.from_dict(cfg_dict)
    ids = loaded.tokenizer(sample.prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    if ids.shape[1] > MAX_ATTENTION_TOKENS:
        text = f"The prompt has {ids.shape[1]:,} tokens; attention maps are drawn up to {MAX_ATTENTION_TOKENS:,}."
        return plots.plot_data(plots.message_figure(text), "attention")
    ids, layer = ids.to(loaded.model.device), int(layer)
    with loaded.lock:
        fa = plots.pool_attention(capture_attention(loaded.model, ids, layer, None).cpu())
        sw = plots.pool_attention(capture_attention(loaded.model, ids, layer, cfg).cpu())
    fig = plots.attention_figure(
        fa,
        sw,
        head=None if head is None or int(head) < 0 else int(head),
        layer=layer,
        window=cfg.sliding_window_size,
        sinks=cfg.keep_first,
        swaa_label=label,
        layer_slides=cfg.layer_slides(layer),
        needle_tokens=_needle_tokens(loaded.tokenizer, sample),
    )
    return plots.plot_data(fig, f"swaa-attention-layer{layer}")


def _needle_tokens(tokenizer, sample) -> tuple[int, int] | None:
    """Token span of the fact in the user prompt (the maps are drawn on the prompt without the chat template)."""
    if not sample.needle_char_span:
        return None
    a, b = sample.needle_char_span
    start = token_count(tokenizer, sample.prompt[:a])
    return start, start + max(1, token_count(tokenizer, sample.prompt[a:b]))


@ui_errors
def masks_for_layer(active_model, last_run, layer):
    if not last_run:
        return gr.skip()
    n = num_layers(loaded_model(active_model))
    columns = [
        ColumnSpec(label, SWAAConfig.from_dict(c).validate(n) if c else None) for label, c in last_run["columns"]
    ]
    return plots.plot_data(mask_figure(columns, last_run["prompt_tokens"], 0, int(layer)), "swaa-masks")


# ---------------------------------------------------------------- sweeps
def _sweep_file() -> Path:
    return temp_folder("sweep-") / "sweep.jsonl"


def _progress_callback(progress, total: int, what: str):
    done = [0]

    def on_result(row: dict) -> None:
        done[0] += 1
        verdict = "error" if row.get("error") else {True: "correct", False: "wrong"}.get(row.get("correct"), "unscored")
        progress(done[0] / total, desc=f"{what}: {done[0]}/{total} runs · {row.get('label')}: {verdict}")

    return on_result


@on_gpu(duration=600)
def run_recipe_sweep(
    active_model, recipes, samples, length, seed, window, sinks, cot, request: gr.Request = None,
    progress=gr.Progress(),
):  # fmt: skip
    """The page's recipe sweep: the trade-off plot and the table (shown once there is something in it)."""
    sweep = recipe_sweep(active_model, recipes, samples, length, seed, window, sinks, cot, request, progress)
    figure = plots.tradeoff_figure(sweep.points, time_label=sweep.time_label)
    return plots.plot_data(figure, "swaa-tradeoff"), gr.Dataframe(value=sweep.table, visible=True)


@dataclass
class RecipeSweep:
    points: list[dict]  # one per recipe: label, accuracy 0..1, time_s, samples, is_full
    table: object  # pandas DataFrame, one row per recipe, as the page shows it
    time_label: str  # what time_s measures


def recipe_sweep(active_model, recipes, samples, length, seed, window, sinks, cot, request, progress):
    """Every chosen recipe on the same seeded samples (random depths): accuracy vs time, the paper's main figure.
    Returns the plot's points, the summary table (one row per recipe) and what the time axis measures."""
    from swaa_core.eval.recipes import list_recipes
    from swaa_core.eval.results import summarize
    from swaa_core.eval.sweep import SweepSpec

    if not recipes:
        raise ValueError("Tick at least one recipe to sweep.")
    known = {r.name for r in list_recipes()}
    unknown = [r for r in recipes if r not in known]
    if unknown:
        raise ValueError(f"Unknown recipe(s) {', '.join(map(repr, unknown))}; choose from {', '.join(sorted(known))}.")
    samples = _whole_in_range(samples, "Samples per recipe", 1, 20)
    length = _whole_in_range(length, "Length", 64, 131072)
    window = _whole_in_range(window, "Window size", 1, 131072)
    sinks = _whole_in_range(sinks, "Sink tokens", 0, 131072)
    loaded = loaded_model(active_model)
    n = num_layers(loaded)
    configs = {}
    for name in recipes:
        cfg = resolve_recipe(name, n, window=int(window), keep_first=int(sinks) or None)
        configs[recipe_label(get_recipe(name), cfg)] = cfg
    seeds = [int(seed or 0) + i for i in range(int(samples))]
    spec = SweepSpec(configs, [length], depths=[None], seeds=seeds, task="needle", cot=bool(cot), score_logprob=False)
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
    time_label = f"time for the prompt + {spec.timing_tokens} tokens"
    return RecipeSweep(points, _recipe_table(table, spec.timing_tokens), time_label)


def _recipe_table(table, timing_tokens: int):
    from swaa_core.eval.latency import decode_note

    shown = table[["label", "runs", "accuracy", "prefill_s", "timed_total_s", "kv_cache_bytes", "errors"]].copy()
    shown["accuracy"] = (100 * shown["accuracy"]).round(0)
    shown["kv_cache_bytes"] = (shown["kv_cache_bytes"] / 2**20).round(1)
    shown.insert(
        4,
        "decode tok/s",
        [decode_note(row) or f"{row['decode_tokens_per_s']:.1f}" for _, row in table.iterrows()],
    )
    return shown.round({"prefill_s": 2, "timed_total_s": 2}).rename(
        columns={"label": "recipe", "accuracy": "accuracy %", "prefill_s": "prefill s",
                 "timed_total_s": f"s to token {timing_tokens}", "kv_cache_bytes": "KV cache MiB"}
    )  # fmt: skip


@on_gpu(duration=600)
def run_needle_sweep(
    active_model, window, sinks, fa_mode, fa_layers, fad_mode, fad_layers, lengths, depths, samples, seed, task,
    request: gr.Request = None, progress=gr.Progress(),
):  # fmt: skip
    """The page's needle sweep: the heatmap and the CSV download."""
    strategy = strategy_from(window, sinks, fa_mode, fa_layers, fad_mode, fad_layers)
    grids, path = needle_sweep(active_model, strategy, lengths, depths, samples, seed, task, request, progress)
    return (
        plots.plot_data(plots.needle_heatmap_figure(grids), "swaa-needle-heatmap"),
        gr.DownloadButton(value=str(path), interactive=True),
    )


def needle_sweep(active_model, strategy, lengths, depths, samples, seed, task, request, progress):
    """Full attention vs ``strategy`` over prompt length x needle depth. Returns one (label, lengths, depths,
    accuracy grid [depth, length]) per config and the CSV file of every run."""
    from swaa_core.eval.results import export, summarize
    from swaa_core.eval.sweep import SweepSpec

    if not lengths:
        raise ValueError("Tick at least one prompt length.")
    lengths = sorted({_whole_in_range(x, "Each length", 64, 131072) for x in lengths})
    depths = _whole_in_range(depths, "Depths", 2, 11)
    samples = _whole_in_range(samples, "Samples per cell", 1, 10)
    loaded = loaded_model(active_model)
    n = num_layers(loaded)
    cfg = strategy.to_config(n)
    label = config_label(cfg, n)
    depth_values = [round(float(d), 3) for d in np.linspace(0.0, 1.0, depths)]
    seeds = [int(seed or 0) + i for i in range(samples)]
    kind = task if task in ("needle", "passkey", "multi_key") else "needle"
    spec = SweepSpec({"Full attention": None, label: cfg}, lengths, depth_values, seeds, kind)
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


def _sweep(loaded, spec, request, progress, what: str):
    """run_sweep with a progress bar and the session's Stop button; what finished before a stop is kept."""
    from swaa_core.eval.sweep import run_sweep

    session = _session(request)
    cancel = CANCELS.start(session)
    CANCELS.track(threading.current_thread())
    progress(0, desc=f"{what}: {spec.total_cells} runs")
    try:
        df = run_sweep(
            loaded, spec, _sweep_file(), progress=False, cancel=cancel,
            on_result=_progress_callback(progress, spec.total_cells, what),
        )  # fmt: skip
    finally:
        stopped = cancel.is_set()
        CANCELS.finish(session, cancel)
        CANCELS.untrack(threading.current_thread())
    if stopped:
        gr.Warning(f"{what} stopped after {len(df)} of {spec.total_cells} runs; the plot shows those.")
    if df.empty:
        raise ValueError(f"The {what} finished no run; nothing to draw.")
    return df


# ---------------------------------------------------------------- decode speed vs context
DECODE_CURVE_TOKENS = 32  # decode steps timed per point: enough to mean something, cheap on a CPU


@on_gpu(duration=600)
def run_decode_curve(active_model, recipes, lengths, window, sinks, request: gr.Request = None, progress=gr.Progress()):
    """The page's decode-speed plot and its note."""
    rows, note = decode_curve(active_model, recipes, lengths, window, sinks, request, progress)
    return plots.plot_data(plots.decode_speed_figure(rows), "swaa-decode-speed"), note


def decode_curve(active_model, recipes, lengths, window, sinks, request, progress) -> tuple[list[dict], str]:
    """Decode tokens/s of the ticked recipes at each chosen prompt length (random tokens, one run per point).
    Returns one row per (recipe, length) (swaa_core.eval.latency.DecodePoint.to_dict()) and a note on the method."""
    from swaa_core.eval.latency import decode_speed_curve

    if not recipes or not lengths:
        raise ValueError("Tick at least one recipe and one prompt length.")
    lengths = sorted({_whole_in_range(x, "Each prompt length", 16, 131072) for x in lengths})
    window = _whole_in_range(window, "Window size", 1, 131072)
    sinks = _whole_in_range(sinks, "Sink tokens", 0, 131072)
    loaded = loaded_model(active_model)
    n = num_layers(loaded)
    configs = {}
    for name in recipes:
        cfg = resolve_recipe(name, n, window=window, keep_first=sinks or None)
        configs[recipe_label(get_recipe(name), cfg)] = cfg
    total, done = len(configs) * len(lengths), [0]

    def on_point(point) -> None:
        done[0] += 1
        progress(done[0] / total, desc=f"decode speed: {done[0]}/{total} · {point.label} at {point.prompt_tokens:,}")

    session = _session(request)
    cancel = CANCELS.start(session)
    CANCELS.track(threading.current_thread())
    progress(0, desc=f"decode speed: {total} points")
    try:
        points = decode_speed_curve(
            loaded, configs, lengths, new_tokens=DECODE_CURVE_TOKENS, cancel=cancel, on_point=on_point
        )
    finally:
        CANCELS.finish(session, cancel)
        CANCELS.untrack(threading.current_thread())
    rows = [p.to_dict() for p in points]
    failed = "".join(f"\n- {p['label']} at {p['prompt_tokens']:,} tokens: {p['error']}" for p in rows if p["error"])
    note = f"Each point: one prefill, then {DECODE_CURVE_TOKENS} decode steps timed (ms per token)."
    return rows, note + (f"\n\nNot measured:{failed}" if failed else "")
