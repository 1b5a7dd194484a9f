"""Event handlers for the model, the strategy controls, the prompt source and the shareable link.
They read the controls, call swaa_core, and return what the page shows; runs and plots are in app.run_handlers,
the guided tour in app.tour.
"""

from __future__ import annotations

import html
import json
import math
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
    LENGTH_HEADROOM,
    STRATEGY,
    columns_for,
    config_label,
    error_message,
    layer_plan_figure,
    loaded_model,
    mask_figure,
    matching_recipe,
    num_layers,
    strategy_values,
    ui_errors,
    updates,
    write_temp,
)
from .engine import device_summary, friendly_error
from .prompts import Prompt, examples, model_input_tokens
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


# What a model changes on the page (app.ui's names, after the Model dropdown itself).
MODEL_OUTPUTS = ("active_model", "model_facts", "layer", "head", "length", *STRATEGY)


def _model_updates(loaded, s: Strategy, opened: Settings | None = None) -> list:
    """Everything that depends on the model, in MODEL_OUTPUTS order: the layer strips keep their meaning on a model
    with other layers (a pattern is re-applied, chosen layers beyond the model are dropped). When the page is
    ``opened`` with settings (``s`` is theirs), the length slider and every strategy widget take their values too."""
    n = num_layers(loaded)
    layers = [(str(i), i) for i in range(n)]
    heads = [("mean of heads", -1)] + [(f"head {h}", h) for h in range(loaded.info.num_heads)]
    limit = loaded.info.context_length or 8192
    fa = (
        SWAAConfig.fa_layers(s.fa_layers_mode, n) if s.fa_layers_mode != "custom" else [i for i in s.fa_layers if i < n]
    )
    fad = [i for i in s.fa_decode_layers if i < n]
    longest = limit - LENGTH_HEADROOM
    window, length, values = gr.Slider(maximum=limit), gr.Slider(maximum=longest), {}
    if opened is not None:
        window = gr.Slider(maximum=limit, value=s.window)
        length = gr.Slider(maximum=longest, value=min(int(opened.length), longest))
        values = dict(sinks=s.sinks, fa_layers_mode=s.fa_layers_mode, fa_decode_mode=s.fa_decode_mode)
    return updates(
        MODEL_OUTPUTS,
        **values,
        active_model=loaded.name,
        model_facts=model_facts(loaded),
        layer=gr.Slider(maximum=n - 1),
        head=gr.Dropdown(choices=heads, value=-1),
        length=length,
        window=window,
        fa_layers=gr.CheckboxGroup(choices=layers, value=fa),
        fa_decode_layers=gr.CheckboxGroup(choices=layers, value=fad, visible=s.fa_decode_mode == "layers"),
    )


def load_model(name: str, active_model, strategy: Strategy):
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
        return [keep, *updates(MODEL_OUTPUTS)]
    gr.Info(f"{loaded.name} is ready.")
    return [name, *_model_updates(loaded, strategy)]


# ---------------------------------------------------------------- page open and shareable links
# What opening the page sets (app.ui's names): the link's settings, then the model's outputs, then the user's text.
SETTINGS_OUTPUTS = (
    "model", "cot", "decode_path", "adapter", "source", "task", "depth", "seed", "max_new_tokens", "example", "pinned",
)  # fmt: skip
TEXT_OUTPUTS = ("document", "question", "answer", "answer_prefix")
OPEN_OUTPUTS = (*SETTINGS_OUTPUTS, "device_note", *MODEL_OUTPUTS, *TEXT_OUTPUTS)


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
        text = {k: getattr(example, k) for k in TEXT_OUTPUTS}
    elif saved.get("document"):
        text = {k: str(saved.get(k, "")) for k in TEXT_OUTPUTS}
        if "src" not in params and saved.get("source") in ("task", "text"):
            settings.source = saved["source"]
    else:
        text = {}
    device = device_summary()
    note = f"Running on **{device}**." + (f" {texts.CPU_NOTE}" if device.startswith("CPU") else "")
    shown = {k: getattr(settings, k) for k in SETTINGS_OUTPUTS}
    model = _model_updates(loaded, settings.strategy, opened=settings)
    return [
        *updates(SETTINGS_OUTPUTS, **{**shown, "adapter": settings.adapter or None}),
        note,
        *model,
        *updates(TEXT_OUTPUTS, **text),
    ]


CONFIG_OUTPUTS = ("recipe", "recipe_note", "config_json", "share_query", "config_file", "layer_plan", "masks")


@ui_errors
def describe_config(settings: Settings, prompt_tokens, layer):
    """Config JSON, share query, config download, layer plan and mask pictures for the current controls
    (CONFIG_OUTPUTS)."""
    loaded = loaded_model(settings.model)
    settings.model = loaded.name
    n = num_layers(loaded)
    cfg = settings.strategy.to_config(n)
    text = config_json(cfg)
    columns = columns_for(cfg, settings.pinned, n, settings.adapter)
    n_prompt = int(prompt_tokens or settings.length)
    recipe = matching_recipe(cfg, n)
    recipe_name = recipe.name if recipe else CUSTOM
    return updates(
        CONFIG_OUTPUTS,
        recipe=recipe_name,
        recipe_note=recipe_note(recipe_name),
        config_json=text,
        share_query=to_query(settings),
        config_file=write_temp(text, "swaa_config.json"),
        layer_plan=plots.plot_data(layer_plan_figure(columns, n), "swaa-layer-plan"),
        masks=plots.plot_data(mask_figure(columns, n_prompt, settings.max_new_tokens, int(layer or 0)), "swaa-masks"),
    )


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
def recipe_strategy(name: str, active_model, prompt_tokens) -> Strategy | None:
    """The controls for a preset, its window scaled to the prompt (None for "custom": the controls stay)."""
    if name == CUSTOM:
        return None
    n = num_layers(loaded_model(active_model))
    cfg = resolve_recipe(name, n, context_tokens=int(prompt_tokens) if prompt_tokens else None)
    return Strategy.from_config(cfg, n)


@ui_errors
def apply_recipe(name, active_model, prompt_tokens):
    return [*strategy_values(recipe_strategy(name, active_model, prompt_tokens)), recipe_note(name)]


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
    return strategy_values(Strategy.from_config(parse_config_text(text, n), n))


@ui_errors
def adapter_selected(adapter, active_model):
    """An adapter carries the config it was trained with: put it into the controls."""
    from swaa_core.train import read_adapter_info

    if not adapter:
        return strategy_values(None)
    info = read_adapter_info(adapter)
    if info.swaa_config is None or info.swaa_config.is_full_attention:
        gr.Info("This adapter does not say which SWAA config it was trained for; the controls stay as they are.")
        return strategy_values(None)
    n = num_layers(loaded_model(active_model))
    gr.Info(f"The adapter was trained with {info.swaa_config.describe()}; the controls now match it.")
    return strategy_values(Strategy.from_config(info.swaa_config.validate(n), n))


@ui_errors
def pin_column(active_model, strategy: Strategy, adapter, pinned):
    pinned = list(pinned or [])
    if len(pinned) >= MAX_PINNED:
        raise ValueError(f"At most {MAX_PINNED} pinned columns; remove them to pin others.")
    n = num_layers(loaded_model(active_model))
    cfg = strategy.to_config(n)
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
    and the document keeps what was there. The upload box is cleared either way; the uploaded copy is only read:
    Gradio keeps one copy per content hash, shared by every visitor who sends the same file at the same time, and
    its cache (delete_cache) removes it later."""
    if file is None:
        return gr.skip(), gr.skip()
    path = Path(file if isinstance(file, str) else file.name)
    try:
        text = _read_upload(path)
    except Exception as e:  # noqa: BLE001 - the user's text stays
        gr.Warning(error_message(e))
        text = gr.skip()
    return text, None


def prompt_info(active_model, prompt: Prompt, window, cot, max_new_tokens=None):
    """Prompt tokens (what the model reads, chat template included: the number the columns show) against the model
    limit (which must also hold the ``max_new_tokens`` to generate) and the window, and a preview of a built-in task."""
    if not HUB.is_ready(active_model or DEFAULT_MODEL):
        return "Loading the model…", "", gr.skip()
    loaded = loaded_model(active_model)
    if prompt.source == "text" and not (prompt.document or "").strip():
        return "Paste a document, upload a file or pick an example.", "", gr.skip()
    try:
        sample = prompt.sample(loaded.tokenizer)
    except ValueError as e:
        return f"⚠️ {html.escape(str(e))}", "", gr.skip()
    n = model_input_tokens(loaded.tokenizer, sample, cot=bool(cot))
    new = _whole_or_zero(max_new_tokens)
    limit = loaded.info.context_length
    limit_text = f"{limit:,}" if limit else "unknown"
    info = f"**{n:,}** prompt tokens (what the model reads, chat template included) · model limit **{limit_text}**"
    if limit and n + new > limit:
        with_new = f" and {new:,} new tokens" if new else ""
        info += (
            f" · <span class='over'>**over the limit**: the prompt{with_new} {'need' if new else 'needs'} "
            f"{n + new:,} tokens; "
            f"shorten the prompt by {n + new - limit:,} tokens</span>."
        )
    else:
        info += f" · a window of {int(window)} tokens sees {min(int(window), n) / max(n, 1):.0%} of it at a time."
    return info, _preview(sample) if prompt.source == "task" else "", n


def _whole_or_zero(value) -> int:
    """A slider's value as a whole number; 0 for anything else (the run itself refuses a bad value with a message)."""
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        return 0


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


def keep_in_range(value, last, *, label: str, low: float, high: float | None):
    """The guard of a typed-in number (app.panels.Slider / Number): outside [low, high] (or not a number) it is
    refused by name and the widget goes back to ``last``, the last valid value; a valid one becomes ``last``.
    Returns (widget value, last)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if math.isfinite(number) and number >= low and (high is None or number <= high):
        return gr.skip(), value
    top = "" if high is None else f" to {high:g}"
    gr.Warning(f"{label} takes {low:g}{top}; {value!r} was not taken and it stays {last!r}.")
    return last, last
