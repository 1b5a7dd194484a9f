"""2 · Strategy: the recipe preset, window, sinks, full-attention layers and decode, CoT, decode path, LoRA adapter,
the upstream config JSON, pinned columns and the shareable link. The strategy widgets' names are
state.Strategy's fields (STRATEGY); :func:`strategy_updates` is the one place that sets them from a Strategy.
"""

from __future__ import annotations

import json
import os
from dataclasses import fields

import gradio as gr

from swaa_core.engine.config import SWAAConfig
from swaa_core.eval.recipes import get_recipe, list_recipes, resolve_recipe
from swaa_core.models.registry import DEFAULT_MODEL, get_model_entry

from .. import plots, texts
from ..columns import columns_for, config_label, layer_plan_figure, mask_figure, matching_recipe
from ..errors import ui_errors
from ..events import Group, group
from ..model_service import loaded_model, num_layers
from ..state import (
    COT_LABEL,
    DECODE_PATH_CHOICES,
    DECODE_PATH_LABEL,
    FA_LAYER_MODES,
    MAX_PINNED,
    Settings,
    Strategy,
    layer_pattern_name,
    parse_pinned,
    to_query,
)
from ..temp_files import write_temp
from ..widgets import Slider, details

STRATEGY = Strategy.widget_names()  # the strategy widgets' names on ``ui``, in the order they travel
CUSTOM = "custom"
ADAPTER_DIRS = ("adapters", "runs")
# The link is built in the browser: only it knows the address people reach the app at (a Space, a proxy, localhost).
SHARE_JS = "(q) => window.location.origin + window.location.pathname + (q || '')"


# ---------------------------------------------------------------- choices shown before any model loads
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


def layer_choices() -> list[tuple[str, int]]:
    # The default model's layers from the registry (no load needed); a loaded model replaces them.
    return [(str(i), i) for i in range(get_model_entry(DEFAULT_MODEL).num_layers)]


# ---------------------------------------------------------------- layout
def layout(ui, d: Settings) -> None:
    s = d.strategy
    ui.pinned = gr.State([])
    with gr.Accordion("2 · Strategy", open=True):
        ui.recipe = gr.Dropdown(
            choices=recipe_choices(for_controls=True), value="recommended", label="Recipe preset",
            info=texts.RECIPE_INFO,
        )  # fmt: skip
        ui.recipe_note = gr.Markdown(recipe_note("recommended"))
        ui.window = Slider(8, 8192, value=s.window, step=8, label="Window size W", info=texts.WINDOW_INFO)
        ui.sinks = Slider(0, 256, value=s.sinks, step=1, label="Sink tokens K", info=texts.SINKS_INFO)
        ui.fa_layers_mode = gr.Radio(
            list(FA_LAYER_MODES), value=s.fa_layers_mode, label="Full-attention layers", info=texts.FA_LAYERS_INFO
        )
        ui.fa_layers = gr.CheckboxGroup(
            choices=layer_choices(), label="Layers (click to toggle)", info=texts.FA_LAYERS_STRIP_INFO,
            elem_classes="layer-strip",
        )  # fmt: skip
        ui.fa_decode_mode = gr.Radio(
            [("off", "off"), ("all layers", "all"), ("chosen layers", "layers")], value=s.fa_decode_mode,
            label="Full-attention decode", info=texts.FA_DECODE_INFO,
        )  # fmt: skip
        ui.fa_decode_layers = gr.CheckboxGroup(
            choices=layer_choices(), label="FA decode layers", info=texts.FA_DECODE_STRIP_INFO,
            elem_classes="layer-strip", visible=s.fa_decode_mode == "layers",
        )  # fmt: skip
        ui.cot = gr.Checkbox(value=d.cot, label=COT_LABEL, info=texts.COT_INFO)
        ui.decode_path = gr.Radio(
            DECODE_PATH_CHOICES, value=d.decode_path, label=DECODE_PATH_LABEL, info=texts.DECODE_PATH_INFO,
            elem_id="swaa-decode-path",
        )  # fmt: skip
        ui.adapter = gr.Dropdown(
            choices=adapter_choices(), value=d.adapter or None, allow_custom_value=True,
            label="LoRA adapter (SWAA columns)", info=texts.ADAPTER_INFO,
        )  # fmt: skip
        ui.config_json = gr.Code(
            language="json", label="Config (upstream swaa_config JSON)", interactive=True, lines=8, max_lines=16,
            wrap_lines=True, show_line_numbers=False, buttons=["copy"], elem_id="swaa-config",
        )  # fmt: skip
        gr.Markdown(texts.CONFIG_JSON_HELP, elem_classes="swaa-muted")
        with gr.Row():
            ui.apply_json = gr.Button("Apply edited JSON", size="sm")
            ui.pin = gr.Button(f"Pin as extra column (max {MAX_PINNED})", size="sm")
        ui.columns_note = gr.Markdown()
        ui.clear_pins = gr.Button("Remove pinned columns", size="sm", visible=False)
        details(texts.STRATEGY_DETAILS)
        with gr.Accordion("Share & export", open=False, elem_id="swaa-share"):
            ui.share_query = gr.Textbox(visible=False)
            ui.share_link = gr.Textbox(
                label="Shareable link", info=texts.SHARE_HELP, buttons=["copy"], interactive=False,
                elem_id="swaa-share-link",
            )  # fmt: skip
            ui.config_file = gr.DownloadButton("Download config JSON", size="sm")


# ---------------------------------------------------------------- widgets <-> values
def strategy_group(ui) -> Group:
    """The strategy widgets, reaching a handler as one Strategy."""
    return group(Strategy.from_widgets, ui, STRATEGY)


def settings_group(ui) -> Group:
    """Everything a shareable link restores (state.Settings), as one value: the active model, the strategy and the
    widgets of the Settings fields' names (the Compare tab's prompt and run options among them)."""
    settings = {"model": ui.active_model, "strategy": strategy_group(ui)}
    settings |= {f.name: getattr(ui, f.name) for f in fields(Settings) if f.name not in settings}
    return Group(Settings.from_widgets, settings)


def strategy_updates(ui, s: Strategy) -> dict:
    """{widget: value} that sets the strategy widgets to ``s``."""
    return {
        ui.window: s.window,
        ui.sinks: s.sinks,
        ui.fa_layers_mode: s.fa_layers_mode,
        ui.fa_layers: list(s.fa_layers),
        ui.fa_decode_mode: s.fa_decode_mode,
        ui.fa_decode_layers: gr.CheckboxGroup(value=list(s.fa_decode_layers), visible=s.fa_decode_mode == "layers"),
    }


# ---------------------------------------------------------------- handlers
@ui_errors
def describe_config(ui, settings: Settings, prompt_tokens, layer) -> dict:
    """Config JSON, share query, config download, layer plan and mask pictures for the current controls."""
    loaded = loaded_model(settings.model)
    settings.model = loaded.name
    n = num_layers(loaded)
    cfg = settings.strategy.to_config(n)
    text = config_json(cfg)
    columns = columns_for(cfg, settings.pinned, n, settings.adapter)
    n_prompt = int(prompt_tokens or settings.length)
    recipe = matching_recipe(cfg, n)
    recipe_name = recipe.name if recipe else CUSTOM
    masks = mask_figure(columns, n_prompt, settings.max_new_tokens, int(layer or 0))
    return {
        ui.recipe: recipe_name,
        ui.recipe_note: recipe_note(recipe_name),
        ui.config_json: text,
        ui.share_query: to_query(settings),
        ui.config_file: write_temp(text, "swaa_config.json"),
        ui.layer_plan: plots.plot_data(layer_plan_figure(columns, n), "swaa-layer-plan"),
        ui.masks: plots.plot_data(masks, "swaa-masks"),
    }


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

    lines = ",\n".join(field(k, v) for k, v in cfg.to_dict().items())
    return '{\n  "swaa_config": {\n' + lines + "\n  }\n}"


def recipe_strategy(name: str, active_model, prompt_tokens) -> Strategy | None:
    """The controls for a preset, its window scaled to the prompt (None for "custom": the controls stay)."""
    if name == CUSTOM:
        return None
    n = num_layers(loaded_model(active_model))
    cfg = resolve_recipe(name, n, context_tokens=int(prompt_tokens) if prompt_tokens else None)
    return Strategy.from_config(cfg, n)


@ui_errors
def apply_recipe(ui, name, active_model, prompt_tokens) -> dict:
    strategy = recipe_strategy(name, active_model, prompt_tokens)
    return {**(strategy_updates(ui, strategy) if strategy else {}), ui.recipe_note: recipe_note(name)}


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


def parse_config_text(text: str, n_layers: int) -> tuple[SWAAConfig, list[str]]:
    """A pasted upstream config ({"swaa_config": {...}} or the bare fields), checked for a model of ``n_layers``, and
    the top-level keys beside swaa_config that it does not apply. Upstream files carry such keys (``model_list``),
    so they are named (:func:`not_applied_note`) rather than refused; unknown fields of the config are refused."""
    try:
        data = json.loads(text) if text and text.strip() else None
    except json.JSONDecodeError as e:
        raise ValueError(f"The config is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}).") from None
    if not isinstance(data, dict):
        raise ValueError('Paste a JSON object such as {"swaa_config": {"sliding_window_size": 256, ...}}.')
    cfg = SWAAConfig.from_dict({"swaa_config": data["swaa_config"]} if "swaa_config" in data else data)
    if cfg.is_full_attention:
        raise ValueError("sliding_window_size is null: that is full attention, which always runs as the first column.")
    skipped = sorted(k for k in data if k != "swaa_config") if "swaa_config" in data else []
    return cfg.validate(n_layers), skipped


def not_applied_note(skipped: list[str]) -> str:
    """What the page and the API say of a config's top-level keys that were not applied ("" when there are none)."""
    if not skipped:
        return ""
    return (f"Not applied: the config's top-level key(s) {', '.join(map(repr, skipped))}; only swaa_config sets "
            "the strategy.")  # fmt: skip


@ui_errors
def apply_config_json(ui, text, active_model) -> dict:
    n = num_layers(loaded_model(active_model))
    cfg, skipped = parse_config_text(text, n)
    updates = strategy_updates(ui, Strategy.from_config(cfg, n))
    if skipped:
        gr.Warning(not_applied_note(skipped))
    return updates


@ui_errors
def adapter_selected(ui, adapter, active_model):
    """An adapter carries the config it was trained with: put it into the controls."""
    from swaa_core.train import read_adapter_info

    if not adapter:
        return gr.skip()
    info = read_adapter_info(adapter)
    if info.swaa_config is None or info.swaa_config.is_full_attention:
        gr.Info("This adapter does not say which SWAA config it was trained for; the controls stay as they are.")
        return gr.skip()
    n = num_layers(loaded_model(active_model))
    gr.Info(f"The adapter was trained with {info.swaa_config.describe()}; the controls now match it.")
    return strategy_updates(ui, Strategy.from_config(info.swaa_config.validate(n), n))


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


def columns_note(ui, pinned) -> dict:
    names = ["**Full attention**"] + [f"**{p['label']}** (pinned)" for p in pinned or []] + ["**the current config**"]
    note = texts.COLUMNS_HELP.format(max_extra=MAX_PINNED)
    return {
        ui.columns_note: f"Columns: {' → '.join(names)}.\n\n<small>{note}</small>",
        ui.clear_pins: gr.Button(visible=bool(pinned)),
    }


# ---------------------------------------------------------------- events
def describe(ui, events, trigger):
    """After ``trigger``: redraw what the controls mean (describe_config). Returns the event."""
    outputs = [ui.recipe, ui.recipe_note, ui.config_json, ui.share_query, ui.config_file, ui.layer_plan, ui.masks]
    return events.light(trigger, describe_config, [settings_group(ui), ui.prompt_tokens, ui.layer], outputs)


def share_link(ui, events, after):
    """After the event ``after``: the shareable link for the query describe_config wrote."""
    return events.on(after.then, None, [ui.share_query], [ui.share_link], js=SHARE_JS)


def note_columns(ui, events, trigger):
    return events.light(trigger, columns_note, [ui.pinned], [ui.columns_note, ui.clear_pins])


def wire(ui, events) -> None:
    strategy = [getattr(ui, name) for name in STRATEGY]
    events.light(ui.recipe.input, apply_recipe, [ui.recipe, ui.active_model, ui.prompt_tokens],
                 [*strategy, ui.recipe_note])  # fmt: skip
    events.light(ui.fa_layers_mode.input, fa_layers_for_mode, [ui.fa_layers_mode, ui.active_model, ui.fa_layers],
                 [ui.fa_layers])  # fmt: skip
    events.light(ui.fa_layers.input, mode_for_fa_layers, [ui.fa_layers, ui.active_model], [ui.fa_layers_mode])
    events.light(ui.fa_decode_mode.change, fa_decode_visibility, [ui.fa_decode_mode], [ui.fa_decode_layers])
    events.light(ui.apply_json.click, apply_config_json, [ui.config_json, ui.active_model], strategy)
    events.light(ui.adapter.input, adapter_selected, [ui.adapter, ui.active_model], strategy)
    # Any widget a link restores redraws the config and the link (the model through its Load, pins below).
    linked = [*STRATEGY, *(f.name for f in fields(Settings) if f.name not in ("model", "strategy", "pinned"))]
    for name in linked:
        share_link(ui, events, describe(ui, events, getattr(ui, name).change))
    pinned = events.light(
        ui.pin.click, pin_column, [ui.active_model, strategy_group(ui), ui.adapter, ui.pinned], [ui.pinned]
    )
    share_link(ui, events, describe(ui, events, note_columns(ui, events, pinned.then).then))
    cleared = events.light(ui.clear_pins.click, lambda: [], None, [ui.pinned])
    describe(ui, events, note_columns(ui, events, cleared.then).then)
