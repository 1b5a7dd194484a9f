"""The app's public API: a few named endpoints with typed, labelled inputs and outputs, for gradio_client and HTTP.

Every page event is hidden from the API (app.events marks them private); these endpoints are separate, stateless
functions (the model is a parameter, not a session's state) that run the same code as the page. The components
below exist only to give each endpoint its schema: they are never shown. Layer lists are read by swaa_core's one
grammar (engine.config.parse_layers), as the shareable link's are: FA layers "none", "1/4", "1/2" or comma-separated
layer indices such as "1,5,9"; FA decode "off", "all" or indices. Errors come back as gradio_client's AppError with
the same message the page shows.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from swaa_core.eval.recipes import list_recipes
from swaa_core.models.registry import DEFAULT_MODEL

from . import sweep_runs
from .board import render_board, summary_markdown
from .comparison import Comparison, RunOptions, export_files
from .errors import ui_errors
from .model_service import HUB, check_source_allowed, loaded_model, num_layers
from .prompts import Prompt
from .prompts import read_upload as _read_upload
from .runs import HEAVY, session_id, stop_session
from .sidebar.strategy import not_applied_note, parse_config_text
from .state import (
    DEFAULT_PINNED,
    FA_DECODE_MODES,
    FA_LAYER_MODES,
    TASK_CHOICES,
    Settings,
    Strategy,
    decode_path_choice,
    layer_choice,
    parse_pinned,
)
from .tabs import advisor

ENDPOINTS = (
    "load_model", "compare", "stop_run", "read_upload", "parse_config", "adapter_config", "recipe_sweep",
    "needle_sweep", "decode_speed", "advise",
)  # fmt: skip
DECODE_LENGTHS = ("256", "512", "1024", "2048", "4096", "8192", "16384", "32768")
SWEEP_LENGTHS = ("256", "512", "1024", "2048", "4096", "8192")


def _strategy(window, sinks, fa_layers: str, fa_decode: str) -> Strategy:
    fa_mode, fa = layer_choice(fa_layers, FA_LAYER_MODES, "fa_layers")
    fad_mode, fad = layer_choice(fa_decode, FA_DECODE_MODES, "fa_decode")
    return Strategy(window=window, sinks=sinks, fa_layers_mode=fa_mode, fa_layers=fa, fa_decode_mode=fad_mode,
                    fa_decode_layers=fad)  # fmt: skip


def _controls(cfg, n_layers: int) -> dict:
    """The compare inputs that reproduce ``cfg``, and the config itself."""
    s = Strategy.from_config(cfg, n_layers)
    fa = ",".join(map(str, s.fa_layers)) if s.fa_layers_mode == "custom" else s.fa_layers_mode
    fad = ",".join(map(str, s.fa_decode_layers)) if s.fa_decode_mode == "layers" else s.fa_decode_mode
    return {"window": s.window, "sinks": s.sinks, "fa_layers": fa, "fa_decode": fad, "config": cfg.to_dict()}


# ---------------------------------------------------------------- endpoint functions
# Each endpoint's parameters are its public schema (gradio_client names them): they go straight into the values
# the page's handlers take (Strategy, Prompt, RunOptions, the sweeps' settings), which check them.
@ui_errors
def load_model(model: str) -> dict:
    """Load a model (embedded name, Hugging Face Hub id or local folder) and return its facts: name, architecture,
    layers, heads, context length, parameters, dtype and device. Later calls naming it reuse the loaded copy."""
    name = (model or "").strip()
    if not name:
        raise ValueError("Name a model: an embedded name, a Hugging Face Hub id (org/name) or a local folder.")
    info = HUB.get(name).info
    keys = ("name", "architecture", "num_layers", "num_heads", "num_kv_heads", "head_dim", "context_length",
            "num_parameters", "dtype", "device", "has_thinking_mode")  # fmt: skip
    return {k: getattr(info, k) for k in keys}


@ui_errors
def compare(
    model, window, sinks, fa_layers, fa_decode, cot, adapter, source, task, length, depth, seed, document, question,
    answer, answer_prefix, max_new_tokens, pinned, static_cache=False, decode_path="auto",
    request: gr.Request = None,
):  # fmt: skip
    """Run full attention, the pinned configs and the current config on one prompt, as the page's Compare tab does.
    Streams the board while tokens arrive; the last message adds the summary, one result row per column (the
    Results JSON, with each column's decode_path, decode_reason and setup_s) and the CSV and JSON files.
    ``decode_path``: every column's, "auto" (fixed buffers and a CUDA graph on a GPU), "fixed" or "eager";
    ``static_cache`` on is the older spelling of "fixed". Stop it with /stop_run from the same client."""
    pinned = parse_pinned(pinned if pinned is not None else [])
    options = RunOptions(cot, adapter, max_new_tokens, pinned, decode_path_choice(decode_path, static_cache))
    prompt = Prompt(source, task, length, depth, seed, document, question, answer, answer_prefix)
    strategy = _strategy(window, sinks, fa_layers, fa_decode)
    run = Comparison.build(model or DEFAULT_MODEL, strategy, prompt, options)
    views = []
    for views in run.stream(session_id(request)):
        yield render_board(views), "", [], None, None
    rows = run.rows(views)
    yield (render_board(views), summary_markdown(views), rows, *export_files(rows))


async def stop_run(request: gr.Request = None) -> bool:
    """Stop this client's running comparison or sweep (finished columns are kept) and take its runs still waiting in
    the queue out of it (they end with an error saying they were stopped before they started). True if anything
    was stopped."""
    return await stop_session(request)


@ui_errors
def read_upload(file) -> str:
    """The text of a .txt, .md or .pdf file (UTF-8 or UTF-16 text; PDF text via pypdf). Binary, non-UTF-8, empty
    and oversized files are refused with a message naming the file."""
    if file is None:
        raise ValueError("No file was sent.")
    # only read: Gradio stores uploads by content hash, so clients sending the same file share this path (its
    # cache removes it later)
    return _read_upload(Path(file))


@ui_errors
def parse_config(config: str, model: str) -> dict:
    """The compare inputs (window, sinks, fa_layers, fa_decode) for an upstream swaa_config JSON object, checked
    against the model's layer count; also the normalised config, ``not_applied``: the top-level keys beside
    swaa_config that set nothing (an upstream file's ``model_list``), and ``note``, a sentence naming them ("" when
    every key was applied). Unknown fields inside swaa_config are refused."""
    n = num_layers(loaded_model(model or DEFAULT_MODEL))
    cfg, skipped = parse_config_text(config, n)
    return {**_controls(cfg, n), "not_applied": skipped, "note": not_applied_note(skipped)}


@ui_errors
def adapter_config(adapter: str, model: str) -> dict:
    """The SWAA config a LoRA adapter (folder or Hub id) was trained with, as compare inputs."""
    from swaa_core.train import read_adapter_info

    if not (adapter or "").strip():
        raise ValueError("Name a LoRA adapter folder or Hub id.")
    check_source_allowed(adapter, "LoRA adapter")
    info = read_adapter_info(adapter)
    if info.swaa_config is None or info.swaa_config.is_full_attention:
        raise ValueError(f"{adapter} does not say which SWAA config it was trained for.")
    n = num_layers(loaded_model(model or DEFAULT_MODEL))
    return _controls(info.swaa_config.validate(n), n)


@ui_errors
def recipe_sweep(
    model, recipes, samples, length, seed, window, sinks, cot, static_cache=False, decode_path="auto",
    request: gr.Request = None,
) -> list:  # fmt: skip
    """Every chosen recipe on the same seeded needle samples: one summary row per recipe (runs, accuracy %,
    prefill and total seconds, decode path, KV cache MiB, errors), the numbers of the page's accuracy-vs-latency
    plot. ``decode_path``: every recipe's, as for /compare (``static_cache`` on: "fixed")."""
    path = decode_path_choice(decode_path, static_cache)
    settings = sweep_runs.RecipeSweepSettings(recipes, samples, length, seed, window, sinks, cot, path)
    return sweep_runs.recipe_sweep(model or DEFAULT_MODEL, settings, request, _no_progress).table.to_dict(
        orient="records"
    )


@ui_errors
def needle_sweep(
    model, window, sinks, fa_layers, fa_decode, lengths, depths, samples, seed, task, request: gr.Request = None
):  # fmt: skip
    """Full attention vs the config over prompt lengths x evenly spaced needle depths: per config the accuracy
    grid (rows: depths, columns: lengths; null where nothing ran) and a CSV of every run."""
    sweep = sweep_runs.NeedleSweepSettings(tuple(int(x) for x in lengths or []), depths, samples, seed, task)
    strategy = _strategy(window, sinks, fa_layers, fa_decode)
    grids, path = sweep_runs.needle_sweep(model or DEFAULT_MODEL, strategy, sweep, request, _no_progress)
    cells = [
        {"label": label, "lengths": list(ls), "depths": list(ds), "accuracy": [[_num(v) for v in row] for row in grid]}
        for label, ls, ds, grid in grids
    ]
    return cells, str(path)


@ui_errors
def decode_speed(
    model, recipes, lengths, window, sinks, static_cache=False, decode_path="auto", request: gr.Request = None
) -> tuple[list, str]:  # fmt: skip
    """Decode speed of each recipe at each prompt length (random tokens): one row per point with ms_per_token,
    tokens_per_s, prefill_s, kv_cache_bytes, decode_path, decode_reason and setup_s (error set where a point could
    not be measured), and a note on the method. ``decode_path``: the path of every point, as for /compare (the
    fixed-buffer decoder's setup is reported, not counted in the speed; ``static_cache`` on: "fixed")."""
    lengths = tuple(int(x) for x in lengths or [])
    path = decode_path_choice(decode_path, static_cache)
    speed = sweep_runs.DecodeSpeedSettings(tuple(recipes or ()), lengths, window, sinks, path)
    return sweep_runs.decode_curve(model or DEFAULT_MODEL, speed, request, _no_progress)


@ui_errors
def advise(
    model, length, window, sinks, budget_kind, budget, samples, held_out, task, request: gr.Request = None
) -> dict:  # fmt: skip
    """Which layers keep full attention for the model at ``length`` tokens under a budget (``budget_kind``: "full
    layers", "prefill share" of full attention's FLOPs, or "KV GiB"): per-layer scores with their spread, the
    recommended swaa_config (also as compare inputs, "controls"), FA decode / sinks decisions and the held-out
    candidates (accuracy, NLL, forward seconds, prefill share, KV bytes) beside the periodic patterns. Stop it with
    /stop_run from the same client."""
    settings = advisor.AdvisorSettings(length, window, sinks, budget_kind, budget, samples, held_out, task)
    advice = advisor.run_for_session(model or DEFAULT_MODEL, settings, request)
    out = advice.to_dict()
    out["controls"] = _controls(advice.config, len(advice.scores.mean))
    return out


def _num(value: float) -> float | None:
    return None if value != value else float(value)


# Numbers are plain JSON numbers in the schema: whole-number inputs are checked by the app, which names the
# input and its range, rather than rounded silently by the component.
def _no_progress(*_args, **_kwargs) -> None:
    """API calls report no progress bar."""


# ---------------------------------------------------------------- schema components and wiring
def build() -> None:
    """Register the endpoints; call inside the page's gr.Blocks (after its own events)."""
    d = Settings()
    st = d.strategy
    with gr.Column(visible=False, elem_id="swaa-api"):
        model = gr.Textbox(DEFAULT_MODEL, label="model")
        window = gr.Number(st.window, label="window")
        sinks = gr.Number(st.sinks, label="sinks")
        fa_layers = gr.Textbox(st.fa_layers_mode, label="fa_layers")
        fa_decode = gr.Textbox(st.fa_decode_mode, label="fa_decode")
        cot = gr.Checkbox(d.cot, label="cot")
        adapter = gr.Textbox("", label="adapter")
        source = gr.Radio(["task", "text"], value=d.source, label="source")
        task = gr.Dropdown([kind for kind, _ in TASK_CHOICES], value=d.task, label="task")
        length = gr.Number(d.length, label="length")
        depth = gr.Number(d.depth, label="depth")
        seed = gr.Number(d.seed, label="seed")
        document = gr.Textbox("", label="document")
        question = gr.Textbox("", label="question")
        answer = gr.Textbox("", label="answer")
        answer_prefix = gr.Textbox("", label="answer_prefix")
        max_new_tokens = gr.Number(d.max_new_tokens, label="max_new_tokens")
        pinned = gr.JSON([DEFAULT_PINNED], label="pinned")
        static_cache = gr.Checkbox(False, label="static_cache")
        decode_path = gr.Textbox(d.decode_path, label="decode_path")  # checked by the app, which names the values
        file = gr.File(label="file", type="filepath")
        config = gr.Textbox('{"swaa_config": {"sliding_window_size": 256}}', label="config")
        recipes = gr.CheckboxGroup([r.name for r in list_recipes()], value=["full", "swa"], label="recipes")
        samples = gr.Number(1, label="samples")
        sweep_length = gr.Number(512, label="length")
        lengths = gr.CheckboxGroup(list(SWEEP_LENGTHS), value=["256"], label="lengths")
        depths = gr.Number(2, label="depths")
        sweep_task = gr.Dropdown(["needle", "passkey", "multi_key"], value="needle", label="task")
        decode_lengths = gr.CheckboxGroup(list(DECODE_LENGTHS), value=["256", "512"], label="lengths")
        budget_kind = gr.Radio(list(advisor.BUDGET_KINDS), value="full layers", label="budget_kind")
        budget = gr.Number(8, label="budget")
        held_out = gr.Number(2, label="held_out")
        advice_task = gr.Dropdown(list(advisor.TASKS), value="needle", label="task")
        trigger = gr.Button()
        out = dict(
            facts=gr.JSON(label="facts"), board=gr.HTML(label="board"), summary=gr.Markdown(label="summary"),
            results=gr.JSON(label="results"), results_csv=gr.File(label="results_csv"),
            results_json=gr.File(label="results_json"), stopped=gr.Checkbox(label="stopped"),
            text=gr.Textbox(label="text"), controls=gr.JSON(label="controls"), table=gr.JSON(label="table"),
            grids=gr.JSON(label="grids"), sweep_csv=gr.File(label="sweep_csv"), points=gr.JSON(label="points"),
            note=gr.Markdown(label="note"), advice=gr.JSON(label="advice"),
        )  # fmt: skip

    def endpoint(fn, inputs, outputs, **kwargs):
        trigger.click(fn, inputs, [out[o] for o in outputs], api_name=fn.__name__, show_progress="hidden", **kwargs)

    endpoint(load_model, [model], ["facts"], concurrency_id="load", concurrency_limit=1)
    endpoint(
        compare,
        [model, window, sinks, fa_layers, fa_decode, cot, adapter, source, task, length, depth, seed, document,
         question, answer, answer_prefix, max_new_tokens, pinned, static_cache, decode_path],
        ["board", "summary", "results", "results_csv", "results_json"], concurrency_id=HEAVY,
    )  # fmt: skip
    endpoint(stop_run, [], ["stopped"], concurrency_limit=None, queue=False)
    endpoint(read_upload, [file], ["text"], concurrency_limit=None)
    endpoint(parse_config, [config, model], ["controls"], concurrency_limit=None)
    endpoint(adapter_config, [adapter, model], ["controls"], concurrency_limit=None)
    endpoint(
        recipe_sweep, [model, recipes, samples, sweep_length, seed, window, sinks, cot, static_cache, decode_path],
        ["table"],
        concurrency_id=HEAVY,
    )  # fmt: skip
    endpoint(
        needle_sweep, [model, window, sinks, fa_layers, fa_decode, lengths, depths, samples, seed, sweep_task],
        ["grids", "sweep_csv"], concurrency_id=HEAVY,
    )  # fmt: skip
    endpoint(
        decode_speed, [model, recipes, decode_lengths, window, sinks, static_cache, decode_path], ["points", "note"],
        concurrency_id=HEAVY,
    )  # fmt: skip
    endpoint(
        advise, [model, sweep_length, window, sinks, budget_kind, budget, samples, held_out, advice_task], ["advice"],
        concurrency_id=HEAVY,
    )  # fmt: skip
