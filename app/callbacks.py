"""Event handlers for the model, the strategy controls, the prompt source, the shareable link and the tour.
They read the controls, call swaa_core, and return what the page shows; runs and plots are in app.run_handlers.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

import gradio as gr

from swaa_core.engine.config import SWAAConfig
from swaa_core.eval.recipes import get_recipe, list_recipes, resolve_recipe
from swaa_core.models.registry import DEFAULT_MODEL, list_models

from . import plots, texts
from .board import render_board
from .common import (
    HUB,
    ColumnSpec,
    columns_for,
    config_label,
    error_message,
    layer_plan_figure,
    loaded_model,
    mask_figure,
    matching_recipe,
    num_layers,
    strategy_from,
    ui_errors,
    write_temp,
)
from .engine import device_summary, friendly_error
from .prompts import examples, model_input_tokens, task_sample, text_sample
from .prompts import read_upload as _read_upload
from .state import MAX_PINNED, Settings, Strategy, from_query, layer_pattern_name, parse_pinned, to_query

ADAPTER_DIRS = ("adapters", "runs")


# ---------------------------------------------------------------- choices shown before any model loads
def model_choices() -> list[tuple[str, str]]:
    return [(entry.title, entry.name) for entry in list_models()]


CUSTOM = "custom"


def recipe_choices(for_controls: bool = False) -> list[tuple[str, str]]:
    """All paper recipes (sweeps), or for the strategy controls the sliding ones plus "custom" (full attention
    is always the first column there)."""
    if not for_controls:
        return [(r.title, r.name) for r in list_recipes()]
    choices = [(r.title, r.name) for r in list_recipes() if r.sliding]
    return choices + [("Custom (your own combination)", CUSTOM)]


def recipe_note(name: str) -> str:
    if name == CUSTOM:
        return "<small>Your own combination of the strategies; pick a preset to start from the paper's.</small>"
    recipe = get_recipe(name)
    paper = f" *Paper (Qwen3-4B, no SFT / SFT): {recipe.paper_accuracy}% accuracy.*" if recipe.paper_accuracy else ""
    return f"<small>{recipe.description}{paper}</small>"


def adapter_choices() -> list[tuple[str, str]]:
    """LoRA adapters found locally (SWAA_ADAPTERS_DIR, adapters/ and runs/), labelled with their training config."""
    from swaa_core.train import find_adapters

    roots = [os.environ.get("SWAA_ADAPTERS_DIR", ""), *ADAPTER_DIRS]
    found = [pair for root in dict.fromkeys(r for r in roots if r) for pair in find_adapters(root)]
    return [(f"{path} ({info.swaa_config.describe() if info.swaa_config else 'no SWAA config'})", str(path))
            for path, info in found]  # fmt: skip


def empty_board() -> str:
    return render_board([])


# ---------------------------------------------------------------- models
def model_facts(loaded) -> str:
    info = loaded.info
    thinking = (
        "has a thinking mode (CoT uses it)" if info.has_thinking_mode else "no thinking mode (CoT adds an instruction)"
    )
    context = f"{info.context_length:,}-token context" if info.context_length else "unknown context length"
    facts = [
        f"**{info.num_layers}** layers",
        f"**{info.num_heads}** query / **{info.num_kv_heads}** KV heads, {info.head_dim} wide",
        context,
        thinking,
        f"{info.num_parameters / 1e6:,.0f} M parameters, {info.dtype} on {info.device}",
    ]
    if info.native_sliding_layers:
        facts.append(f"native sliding window {info.native_sliding_window} in {len(info.native_sliding_layers)} layers")
    items = "\n".join(f"- {fact}" for fact in facts)
    return f"**{html.escape(loaded.name)}** · {info.architecture}\n\n{items}"


def _model_updates(loaded, fa_mode: str, fa_layers, fad_mode: str, fad_layers) -> list:
    """Everything that depends on the model; the layer strips keep their meaning on a model with other layers."""
    n = num_layers(loaded)
    layers = [(str(i), i) for i in range(n)]
    heads = [("mean of heads", -1)] + [(f"head {h}", h) for h in range(loaded.info.num_heads)]
    limit = loaded.info.context_length or 8192
    fa = SWAAConfig.fa_layers(fa_mode, n) if fa_mode != "custom" else [int(i) for i in fa_layers or [] if int(i) < n]
    fad = [int(i) for i in fad_layers or [] if int(i) < n]
    return [
        loaded.name,
        model_facts(loaded),
        gr.CheckboxGroup(choices=layers, value=fa),
        gr.CheckboxGroup(choices=layers, value=fad, visible=fad_mode == "layers"),
        gr.Slider(maximum=n - 1),
        gr.Dropdown(choices=heads, value=-1),
        gr.Slider(maximum=limit),
        gr.Slider(maximum=limit),
    ]


def load_model(name: str, active_model, fa_mode, fa_layers, fad_mode, fad_layers):
    """The Load button: the new model's facts and controls, or on failure a toast, the dropdown back on the model
    still in use and every other control as it was."""
    name = (name or "").strip()
    try:
        if not name:
            raise ValueError("Choose a model, or type a Hugging Face Hub id (org/name) or a local folder.")
        loaded = HUB.get(name)
    except Exception as e:  # noqa: BLE001 - the page stays on the model it had
        keep = active_model or DEFAULT_MODEL
        gr.Warning(f"{error_message(e).rstrip('.')}. Still using {keep}.")
        return [keep, *[gr.skip()] * (len(MODEL_OUTPUTS))]
    gr.Info(f"{loaded.name} is ready.")
    return [name, *_model_updates(loaded, fa_mode, fa_layers, fad_mode, fad_layers)]


MODEL_OUTPUTS = ("active_model", "model_facts", "fa_layers", "fa_decode_layers", "layer", "head", "window", "length")


# ---------------------------------------------------------------- page open and shareable links
def _settings_updates(s: Settings) -> list:
    """Control values in the order of ui's settings outputs (the layer strips come with the model's updates)."""
    st = s.strategy
    return [
        s.model, st.window, st.sinks, st.fa_layers_mode, st.fa_decode_mode, s.cot, s.adapter or None, s.source, s.task,
        s.length, s.depth, s.seed, s.max_new_tokens, s.example,
    ]  # fmt: skip


@ui_errors
def open_page(saved_text: dict | None, request: gr.Request):
    """Restore a shared link (bad parameters become warnings) and the user's own text from the browser, wait for
    the model, fill what depends on it."""
    params = dict(request.query_params) if request else {}
    settings, notes = from_query(params)
    try:
        loaded = HUB.get(settings.model)
    except Exception as e:  # noqa: BLE001 - a link to an unavailable model still opens the app
        notes.append(
            f"Model {settings.model!r} from the link could not be loaded: {friendly_error(e)} Using the default."
        )
        settings.model = DEFAULT_MODEL
        loaded = HUB.get(DEFAULT_MODEL)
    for note in notes:
        gr.Warning(note)
    example = examples().get(settings.example)
    saved = saved_text if isinstance(saved_text, dict) else {}
    if example:
        text = [example.document, example.question, example.answer, example.answer_prefix]
    elif saved.get("document"):
        text = [str(saved.get(k, "")) for k in ("document", "question", "answer", "answer_prefix")]
        if "src" not in params and saved.get("source") in ("task", "text"):
            settings.source = saved["source"]
    else:
        text = [gr.skip()] * 4
    device = device_summary()
    note = f"Running on **{device}**." + (f" {texts.CPU_NOTE}" if device.startswith("CPU") else "")
    st = settings.strategy
    model = _model_updates(loaded, st.fa_layers_mode, st.fa_layers, st.fa_decode_mode, st.fa_decode_layers)
    return [*_settings_updates(settings), settings.pinned, note, *model, *text]


@ui_errors
def describe_config(
    active_model, window, sinks, fa_mode, fa_layers, fad_mode, fad_layers, cot, adapter,
    source, task, length, depth, seed, max_new_tokens, example, pinned, prompt_tokens, layer,
):  # fmt: skip
    """Config JSON, share query, config download, layer plan and mask pictures for the current controls."""
    loaded = loaded_model(active_model)
    n = num_layers(loaded)
    strategy = strategy_from(window, sinks, fa_mode, fa_layers, fad_mode, fad_layers)
    try:
        cfg = strategy.to_config(n)
    except ValueError as e:
        gr.Warning(str(e))
        return [gr.skip()] * 7
    settings = Settings(
        model=loaded.name, strategy=strategy, cot=bool(cot), adapter=adapter or "", source=source, task=task,
        length=int(length), depth=float(depth), seed=int(seed or 0), max_new_tokens=int(max_new_tokens),
        example=example or "", pinned=pinned or [],
    )  # fmt: skip
    text = config_json(cfg)
    columns = columns_for(cfg, pinned, n, adapter or "")
    n_prompt = int(prompt_tokens or length)
    recipe = matching_recipe(cfg, n)
    recipe_name = recipe.name if recipe else CUSTOM
    return [
        recipe_name,
        recipe_note(recipe_name),
        text,
        to_query(settings),
        write_temp(text, "swaa_config.json"),
        plots.plot_data(layer_plan_figure(columns, n), "swaa-layer-plan"),
        plots.plot_data(mask_figure(columns, n_prompt, int(max_new_tokens), int(layer or 0)), "swaa-masks"),
    ]


def config_json(cfg: SWAAConfig, width: int = 34) -> str:
    """Upstream's {"swaa_config": {...}} with one field per line; a layer list that would not fit the sidebar's
    ``width`` characters continues on lines of its own (the box would otherwise cut it off)."""

    def field(key, value) -> str:
        line = f"    {json.dumps(key)}: {json.dumps(value)}"
        if not isinstance(value, list) or len(line) <= width:
            return line
        rows, row = [], []
        for item in map(str, value):
            if row and len("      " + ", ".join([*row, item]) + ",") > width:
                rows.append(", ".join(row))
                row = []
            row.append(item)
        rows.append(", ".join(row))
        return f"    {json.dumps(key)}: [\n" + ",\n".join(f"      {r}" for r in rows) + "\n    ]"

    fields = ",\n".join(field(k, v) for k, v in cfg.to_dict().items())
    return '{\n  "swaa_config": {\n' + fields + "\n  }\n}"


# ---------------------------------------------------------------- strategy controls
@ui_errors
def apply_recipe(name, active_model, prompt_tokens):
    if name == CUSTOM:
        return [gr.skip()] * 6 + [recipe_note(name)]
    n = num_layers(loaded_model(active_model))
    cfg = resolve_recipe(name, n, context_tokens=int(prompt_tokens) if prompt_tokens else None)
    return [*_strategy_updates(cfg, n), recipe_note(name)]


def _strategy_updates(cfg: SWAAConfig, n_layers: int) -> list:
    s = Strategy.from_config(cfg, n_layers)
    return [
        s.window,
        s.sinks,
        s.fa_layers_mode,
        list(cfg.non_sliding_layers),
        s.fa_decode_mode,
        gr.CheckboxGroup(value=s.fa_decode_layers, visible=s.fa_decode_mode == "layers"),
    ]


@ui_errors
def fa_layers_for_mode(mode, active_model, current):
    if mode == "custom":
        return current
    return SWAAConfig.fa_layers(mode, num_layers(loaded_model(active_model)))


@ui_errors
def mode_for_fa_layers(layers, active_model):
    return layer_pattern_name([int(i) for i in layers or []], num_layers(loaded_model(active_model)))


def fa_decode_visibility(mode):
    return gr.CheckboxGroup(visible=mode == "layers")


def parse_config_text(text: str, n_layers: int) -> SWAAConfig:
    """A pasted upstream config ({"swaa_config": {...}} or the bare fields), checked for a model of ``n_layers``."""
    try:
        data = json.loads(text) if text and text.strip() else None
    except json.JSONDecodeError as e:
        raise ValueError(f"The config is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}).") from None
    if not isinstance(data, dict):
        raise ValueError('Paste a JSON object such as {"swaa_config": {"sliding_window_size": 256, ...}}.')
    cfg = SWAAConfig.from_dict(data)
    if cfg.is_full_attention:
        raise ValueError("sliding_window_size is null: that is full attention, which always runs as the first column.")
    return cfg.validate(n_layers)


@ui_errors
def apply_config_json(text, active_model):
    n = num_layers(loaded_model(active_model))
    return _strategy_updates(parse_config_text(text, n), n)


@ui_errors
def adapter_selected(adapter, active_model):
    """An adapter carries the config it was trained with: put it into the controls."""
    from swaa_core.train import read_adapter_info

    if not adapter:
        return [gr.skip()] * 6
    info = read_adapter_info(adapter)
    if info.swaa_config is None or info.swaa_config.is_full_attention:
        gr.Info("This adapter does not say which SWAA config it was trained for; the controls stay as they are.")
        return [gr.skip()] * 6
    n = num_layers(loaded_model(active_model))
    gr.Info(f"The adapter was trained with {info.swaa_config.describe()}; the controls now match it.")
    return _strategy_updates(info.swaa_config.validate(n), n)


@ui_errors
def pin_column(active_model, window, sinks, fa_mode, fa_layers, fad_mode, fad_layers, adapter, pinned):
    pinned = list(pinned or [])
    if len(pinned) >= MAX_PINNED:
        raise ValueError(f"At most {MAX_PINNED} pinned columns; remove them to pin others.")
    n = num_layers(loaded_model(active_model))
    cfg = strategy_from(window, sinks, fa_mode, fa_layers, fad_mode, fad_layers).to_config(n)
    entry = {"label": config_label(cfg, n, adapter or ""), "config": cfg.to_dict(), "adapter": adapter or ""}
    if any(item["config"] == entry["config"] and item.get("adapter", "") == entry["adapter"] for item in pinned):
        gr.Info("This config is already pinned.")
        return pinned
    gr.Info("Pinned. Change the controls to put another config beside it.")
    return parse_pinned(pinned + [entry])


def columns_note(pinned):
    names = ["**Full attention**"] + [f"**{p['label']}** (pinned)" for p in pinned or []] + ["**the current config**"]
    note = texts.COLUMNS_HELP.format(max_extra=MAX_PINNED)
    return f"Columns: {' → '.join(names)}.\n\n<small>{note}</small>", gr.Button(visible=bool(pinned))


# ---------------------------------------------------------------- prompt source
def source_visibility(source):
    return gr.Group(visible=source == "task"), gr.Group(visible=source == "text")


def remember_text(source, document, question, answer, answer_prefix):
    """What the user typed, kept in the browser's local storage (never on the server)."""
    return {
        "source": source, "document": document, "question": question, "answer": answer, "answer_prefix": answer_prefix,
    }  # fmt: skip


def pick_example(key):
    example = examples().get(key or "")
    if example is None:
        return [gr.skip()] * 4
    return example.document, example.question, example.answer, example.answer_prefix


def read_upload(file, current):
    """An upload replaces the document only when it is readable text; otherwise a toast names the file and why,
    and the document keeps what was there. The uploaded copy is deleted and the upload box cleared either way."""
    if file is None:
        return gr.skip(), gr.skip()
    path = Path(file if isinstance(file, str) else file.name)
    try:
        text = _read_upload(path)
    except Exception as e:  # noqa: BLE001 - the user's text stays
        gr.Warning(error_message(e))
        text = gr.skip()
    finally:
        path.unlink(missing_ok=True)
    return text, None


def build_sample(loaded, source, task, length, depth, seed, document, question, answer, prefix):
    if source == "task":
        return task_sample(loaded.tokenizer, task, length=length, depth=depth, seed=seed or 0)
    return text_sample(loaded.tokenizer, document, question, answer, prefix, seed=seed or 0)


def prompt_info(active_model, source, task, length, depth, seed, document, question, answer, prefix, window, cot):
    """Prompt tokens (what the model reads, chat template included: the number the columns show) against the model
    limit and the window, and a preview of a built-in task."""
    if not HUB.is_ready(active_model or DEFAULT_MODEL):
        return "Loading the model…", "", gr.skip()
    loaded = loaded_model(active_model)
    if source == "text" and not (document or "").strip():
        return "Paste a document, upload a file or pick an example.", "", gr.skip()
    try:
        sample = build_sample(loaded, source, task, length, depth, seed, document, question, answer, prefix)
    except ValueError as e:
        return f"⚠️ {html.escape(str(e))}", "", gr.skip()
    n = model_input_tokens(loaded.tokenizer, sample, cot=bool(cot))
    limit = loaded.info.context_length
    seen = min(int(window), n)
    if limit and n > limit:
        status = f"<span class='over'>**over the limit**: shorten it by {n - limit:,} tokens</span>"
    else:
        status = f"{seen / max(n, 1):.0%} of it at a time"
    limit_text = f"{limit:,}" if limit else "unknown"
    info = (
        f"**{n:,}** prompt tokens (what the model reads, chat template included) · model limit **{limit_text}** · "
        f"a window of {int(window)} tokens sees {status}."
    )
    return info, _preview(sample) if source == "task" else "", n


def _preview(sample) -> str:
    answer = sample.answer if isinstance(sample.answer, str) else ", ".join(sample.answer)
    where = f" The fact sits at depth {sample.depth:.2f}." if sample.depth is not None else ""
    prompt = html.escape(sample.prompt)
    if sample.needle_char_span:
        a, b = sample.needle_char_span
        prompt = html.escape(sample.prompt[:a]) + f"<mark>{html.escape(sample.prompt[a:b])}</mark>"
        prompt += html.escape(sample.prompt[b:])
    return (
        f"**Question:** {html.escape(sample.question)} · **expected:** `{html.escape(answer)}`.{where}\n\n"
        f"<details><summary>Show the whole prompt</summary><div class='swaa-prompt'>{prompt}</div></details>"
    )


# ---------------------------------------------------------------- guided tour
def tour_move(index, step):
    index = max(0, min(len(texts.TOUR) - 1, int(index) + int(step)))
    return index, texts.tour_markdown(index)


TOY = dict(layers=4, window=5, sinks=2, prompt=16, generated=4)  # small enough to see single tokens


@ui_errors
def tour_figure(index):
    """The step's recipe at toy scale (see TOY): full attention, a sliding layer and, if any, an FA layer."""
    step = texts.TOUR[int(index)]
    cfg = resolve_recipe(step.settings["recipe"], TOY["layers"], window=TOY["window"], keep_first=TOY["sinks"])
    columns = [ColumnSpec("Full attention", None)]
    if cfg is not None:
        sliding = next(i for i in range(TOY["layers"]) if cfg.layer_slides(i))
        columns.append(ColumnSpec(f"a sliding layer (W={TOY['window']})", _only_layer(cfg, sliding)))
        if cfg.non_sliding_layers:
            columns.append(ColumnSpec(f"an FA layer (layer {cfg.non_sliding_layers[0]})", _only_layer(cfg, None)))
    figure = mask_figure(columns, TOY["prompt"], TOY["generated"], 0)
    return plots.plot_data(figure, "swaa-tour")


def _only_layer(cfg: SWAAConfig, sliding_layer: int | None) -> SWAAConfig:
    """The config as seen from layer 0: sliding there when ``sliding_layer`` is set, full attention otherwise."""
    return SWAAConfig(
        sliding_window_size=cfg.sliding_window_size,
        keep_first=cfg.keep_first,
        force_fa_decode=cfg.layer_fa_decode(sliding_layer if sliding_layer is not None else 0),
        non_sliding_layers=[] if sliding_layer is not None else [0],
    )


@ui_errors
def tour_apply(index, active_model, prompt_tokens):
    step = texts.TOUR[int(index)]
    name = step.settings["recipe"]
    updates = apply_recipe(name, active_model, prompt_tokens)
    return [*updates[:6], bool(step.settings.get("cot")), name, updates[6]]
