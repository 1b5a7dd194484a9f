"""The page: its frame and event wiring. Panels live in app.panels; handlers in app.callbacks, app.run_handlers,
app.sweeps and app.tour; words in app.texts; figures in app.plots and app.maps."""

from __future__ import annotations

import functools
import math
import os
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from . import advisor_tab, api, capacity, panels, sweeps, texts, tour
from . import callbacks as cb
from . import run_handlers as rh
from .common import HEAVY, STRATEGY, toast_errors
from .prompts import Prompt
from .state import Settings, Strategy
from .wiring import Group, flatten, group

ASSETS = Path(__file__).resolve().parent.parent / "assets"
SWEEP_STOPS = ("stop_sweep", "stop_heat", "stop_decode_speed")  # the Stop beside each sweep's run button
SIDEBAR_PX = 460  # the longest preset and model names fit their dropdowns whole (tests/app/test_browser.py)


def build_demo() -> gr.Blocks:
    defaults = Settings()
    # delete_cache: uploads and served downloads in Gradio's cache are removed after an hour (checked every 30 min).
    with gr.Blocks(title=texts.TITLE, fill_width=True, delete_cache=(1800, 3600)) as demo:
        api.build()  # first, so the public endpoints get their plain names before the page's private events
        ui = SimpleNamespace()
        ui.active_model = gr.State(None)  # the name of the model this session's runs use
        ui.pinned = gr.State([])
        ui.last_run = gr.State(None)  # sample + column configs of the last run, for the attention maps
        ui.tour_index = gr.State(0)
        ui.prompt_tokens = gr.State(None)  # token count of the current prompt, for recipes and mask pictures
        ui.saved_text = gr.BrowserState({}, storage_key="swaa-user-text")  # the user's own text survives a reload

        gr.Markdown(f"# {texts.TITLE}\n{texts.INTRO}", elem_id="swaa-title")
        ui.device_note = gr.Markdown(elem_id="swaa-device")
        with gr.Row(equal_height=False, elem_id="swaa-layout"):
            with gr.Column(scale=1, min_width=SIDEBAR_PX, elem_id="swaa-sidebar"):
                panels.model_panel(ui, defaults)
                panels.strategy_panel(ui, defaults)
            with (
                gr.Column(scale=3, min_width=520, elem_id="swaa-main"),
                gr.Tabs(
                    elem_id="swaa-tabs",
                    overflow_behavior="wrap",  # every tab in sight on a phone, none behind a "⋯"
                ) as ui.tabs,
            ):
                with gr.Tab("Compare", id="compare"):
                    panels.prompt_panel(ui, defaults)
                    panels.run_panel(ui, defaults)
                with gr.Tab("Why: attention & masks", id="why"):
                    panels.why_panel(ui)
                with gr.Tab("Recipes & needles", id="sweeps"):
                    panels.sweep_panel(ui)
                    panels.decode_speed_panel(ui)
                with gr.Tab("Capacity", id="capacity"):
                    capacity.panel(ui)
                with gr.Tab("Advisor", id="advisor"):
                    advisor_tab.build(ui)
                with gr.Tab("Guided tour", id="tour"):
                    panels.tour_panel(ui)
        _wire(demo, ui)
    demo.ui = ui  # tests and app.py reach components through this
    return demo


# ---------------------------------------------------------------- events
def _on(trigger, fn, inputs, outputs, **kwargs):
    """A page event: hidden from the API (the public API is app.api's), failures shown as a toast that leaves every
    output as it was. ``inputs`` may hold app.wiring Groups: the handler gets each as one value."""
    n = len(outputs) if isinstance(outputs, list | tuple) else (0 if outputs is None else 1)
    if fn is not None:
        fn, inputs = flatten(fn, inputs)
        fn = toast_errors(fn, n)
    return trigger(fn, inputs, outputs, api_visibility="private", **kwargs)


def _light(trigger, fn, inputs, outputs, **kwargs):
    """A quick page event that never waits in the queue behind model runs."""
    return _on(trigger, fn, inputs, outputs, concurrency_limit=None, show_progress="hidden", **kwargs)


def _widgets(ui, names) -> list:
    return [getattr(ui, name) for name in names]


def _groups(ui) -> SimpleNamespace:
    """The widget groups handlers take as one value each (app.wiring): the one place widgets map to values."""
    g = SimpleNamespace()
    g.strategy = group(Strategy.from_widgets, ui, STRATEGY)
    g.prompt = group(Prompt, ui, [f.name for f in fields(Prompt)])
    settings = {"model": ui.active_model, "strategy": g.strategy}
    settings |= {f.name: getattr(ui, f.name) for f in fields(Settings) if f.name not in settings}
    g.settings = Group(Settings.from_widgets, settings)
    g.options = group(rh.RunOptions, ui, [f.name for f in fields(rh.RunOptions)])
    g.recipe_sweep = Group(
        sweeps.RecipeSweepSettings,
        dict(recipes=ui.sweep_recipes, samples=ui.sweep_samples, length=ui.sweep_length, seed=ui.seed,
             window=ui.window, sinks=ui.sinks, cot=ui.cot, decode_path=ui.decode_path),
    )  # fmt: skip
    g.needle_sweep = Group(
        sweeps.NeedleSweepSettings,
        dict(lengths=ui.heat_lengths, depths=ui.heat_depths, samples=ui.heat_samples, seed=ui.seed, task=ui.task),
    )
    g.decode_speed = Group(
        sweeps.DecodeSpeedSettings,
        dict(
            recipes=ui.sweep_recipes,
            lengths=ui.decode_lengths,
            window=ui.window,
            sinks=ui.sinks,
            decode_path=ui.decode_path,
        ),
    )
    return g


def _guard_numbers(ui) -> None:
    """Every guarded number widget refuses a typed value outside its range and keeps its last valid value."""
    for widget in vars(ui).values():
        if getattr(widget, "guarded", False):
            last = gr.State(widget.value)
            low = widget.minimum if widget.minimum is not None else -math.inf
            guard = functools.partial(cb.keep_in_range, label=widget.label, low=low, high=widget.maximum)
            _light(widget.change, guard, [widget, last], [widget, last])


def _wire(demo: gr.Blocks, ui) -> None:
    _guard_numbers(ui)
    g = _groups(ui)
    strategy = _widgets(ui, STRATEGY)
    prompt = g.prompt.components()
    model_out = _widgets(ui, cb.MODEL_OUTPUTS)
    share_in = [g.settings, ui.prompt_tokens, ui.layer]
    config_out = _widgets(ui, cb.CONFIG_OUTPUTS)
    info_in, info_out = (
        [ui.active_model, g.prompt, ui.window, ui.cot, ui.max_new_tokens],
        [ui.token_info, ui.task_preview, ui.prompt_tokens],
    )

    def share_link(dep):
        return _on(dep.then, None, [ui.share_query], [ui.share_link], js=_SHARE_JS)

    # Page open: restore a shared link, wait for the model, fill everything that depends on it.
    opened = _on(
        demo.load, cb.open_page, [ui.saved_text], _widgets(ui, cb.OPEN_OUTPUTS),
        concurrency_limit=None,  # only waits for the model: must not queue behind other visitors' runs
    )  # fmt: skip
    # the prompt's token count first: the mask pictures are drawn at it
    informed = _light(opened.then, cb.prompt_info, info_in, info_out)
    described = _light(informed.then, cb.describe_config, share_in, config_out)
    noted = _light(described.then, cb.columns_note, [ui.pinned], [ui.columns_note, ui.clear_pins])
    _light(share_link(noted).then, tour.tour_figure, [ui.tour_index], [ui.tour_masks])

    # A failed load leaves the active model, the dropdown back on it and every control as it was.
    loading = _on(
        ui.load_model.click, cb.load_model, [ui.model, ui.active_model, g.strategy], [ui.model, *model_out],
        concurrency_id="load", concurrency_limit=1, show_progress="minimal",
    )  # fmt: skip
    _light(_light(loading.then, cb.prompt_info, info_in, info_out).then, cb.describe_config, share_in, config_out)

    # Strategy controls.
    _light(
        ui.recipe.input, cb.apply_recipe, [ui.recipe, ui.active_model, ui.prompt_tokens], [*strategy, ui.recipe_note]
    )
    _light(ui.fa_layers_mode.input, cb.fa_layers_for_mode, [ui.fa_layers_mode, ui.active_model, ui.fa_layers],
           [ui.fa_layers])  # fmt: skip
    _light(ui.fa_layers.input, cb.mode_for_fa_layers, [ui.fa_layers, ui.active_model], [ui.fa_layers_mode])
    _light(ui.fa_decode_mode.change, cb.fa_decode_visibility, [ui.fa_decode_mode], [ui.fa_decode_layers])
    _light(ui.apply_json.click, cb.apply_config_json, [ui.config_json, ui.active_model], strategy)
    _light(ui.adapter.input, cb.adapter_selected, [ui.adapter, ui.active_model], strategy)
    for component in [*strategy, ui.cot, ui.decode_path, ui.adapter, ui.max_new_tokens, *prompt[:5], ui.example]:
        share_link(_light(component.change, cb.describe_config, share_in, config_out))
    pinned = _light(ui.pin.click, cb.pin_column, [ui.active_model, g.strategy, ui.adapter, ui.pinned], [ui.pinned])
    pinned = _light(pinned.then, cb.columns_note, [ui.pinned], [ui.columns_note, ui.clear_pins])
    share_link(_light(pinned.then, cb.describe_config, share_in, config_out))
    cleared = _light(ui.clear_pins.click, lambda: [], None, [ui.pinned])
    cleared = _light(cleared.then, cb.columns_note, [ui.pinned], [ui.columns_note, ui.clear_pins])
    _light(cleared.then, cb.describe_config, share_in, config_out)

    # Prompt source.
    _light(ui.source.change, cb.source_visibility, [ui.source], [ui.task_group, ui.text_group])
    _light(ui.example.input, cb.pick_example, [ui.example], _widgets(ui, cb.TEXT_OUTPUTS))
    user_text = [ui.source, *_widgets(ui, cb.TEXT_OUTPUTS)]
    for component in user_text:
        _light(component.change, cb.remember_text, user_text, [ui.saved_text], trigger_mode="always_last")
    _light(ui.upload.upload, cb.read_upload, [ui.upload, ui.document], [ui.document, ui.upload])
    for component in [*prompt, ui.window, ui.cot, ui.max_new_tokens]:
        info = _light(component.change, cb.prompt_info, info_in, info_out, trigger_mode="always_last")
        _light(info.then, cb.describe_config, share_in, config_out)

    # The comparison.
    run_in = [ui.active_model, g.strategy, g.prompt, g.options, ui.layer]
    run_out = [ui.board, ui.summary, ui.latency, ui.masks, ui.last_run, ui.results_csv, ui.results_json, ui.column]
    run_out.append(ui.layer)
    attention_in = [ui.active_model, ui.last_run, ui.column, ui.layer, ui.head]
    ran = _on(ui.run.click, rh.run_comparison, run_in, run_out, concurrency_id=HEAVY)
    _on(ran.then, rh.draw_attention, attention_in, [ui.attention], concurrency_id=HEAVY)
    _on(ui.stop.click, rh.stop_run, None, None, concurrency_limit=None, queue=False)
    _on(ui.draw.click, rh.draw_attention, attention_in, [ui.attention], concurrency_id=HEAVY)
    _light(ui.layer.release, rh.masks_for_layer, [ui.active_model, ui.last_run, ui.layer], [ui.masks])

    # Sweeps.
    _on(
        ui.run_sweep.click, sweeps.run_recipe_sweep, [ui.active_model, g.recipe_sweep], [ui.tradeoff, ui.sweep_table],
        concurrency_id=HEAVY,
    )  # fmt: skip
    _on(
        ui.run_heat.click, sweeps.run_needle_sweep, [ui.active_model, g.strategy, g.needle_sweep],
        [ui.heatmap, ui.heat_results], concurrency_id=HEAVY,
    )  # fmt: skip
    _on(
        ui.run_decode_speed.click, sweeps.run_decode_curve, [ui.active_model, g.decode_speed],
        [ui.decode_speed, ui.decode_speed_note], concurrency_id=HEAVY,
    )  # fmt: skip
    # Each run's own Stop, next to it (one cancel flag per session: any of them stops the session's run).
    for stop in SWEEP_STOPS:
        _on(getattr(ui, stop).click, sweeps.stop_sweep, None, None, concurrency_limit=None, queue=False)

    capacity.wire(ui, _light)

    # Guided tour.
    for button, step in ((ui.tour_back, -1), (ui.tour_next, 1)):
        moved = _light(button.click, tour.tour_move, [ui.tour_index, gr.State(step)], [ui.tour_index, ui.tour_text])
        _light(moved.then, tour.tour_figure, [ui.tour_index], [ui.tour_masks])
    tried = _light(
        ui.tour_try.click, tour.tour_apply, [ui.tour_index, ui.active_model, ui.prompt_tokens],
        [*strategy, ui.cot, ui.recipe, ui.recipe_note],
    )  # fmt: skip
    tried = _on(tried.then, lambda: gr.Tabs(selected="compare"), None, [ui.tabs])
    tried = _on(tried.then, rh.run_comparison, run_in, run_out, concurrency_id=HEAVY)
    _on(tried.then, rh.draw_attention, attention_in, [ui.attention], concurrency_id=HEAVY)


# The link is built in the browser: only it knows the address people reach the app at (a Space, a proxy, localhost).
_SHARE_JS = "(q) => window.location.origin + window.location.pathname + (q || '')"


# Gradio 6.31's status tracker announces a finished event (in a screen-reader region) with the key "common.complete",
# which its English texts lack (they have "chatbot.complete"): without this the page says "common.complete".
GRADIO_MISSING_TEXTS = gr.I18n(en={"common.complete": "Complete"})


def theme() -> gr.themes.Base:
    """Gradio's Soft theme with every text colour at WCAG AA contrast (4.5:1) on the background it sits on, in the
    light and the dark mode (tests/app/test_layout.py measures them): Soft's grey help lines (neutral 400 on white,
    2.5:1), blue labels (primary 500 on primary 100, 3.0:1), white on primary 500 buttons and radios (3.7:1) and
    orange links (3.6:1) are a shade darker here."""
    return gr.themes.Soft(primary_hue="blue", secondary_hue="orange").set(
        body_text_color_subdued="*neutral_600",
        block_label_text_color="*primary_700",
        block_title_text_color="*primary_700",
        button_primary_background_fill="*primary_700",
        button_primary_background_fill_hover="*primary_600",
        checkbox_label_background_fill_selected="*primary_700",
        link_text_color="*secondary_700",
        link_text_color_hover="*secondary_800",
        link_text_color_visited="*secondary_800",
    )


def launch_kwargs() -> dict:
    """Arguments for demo.launch shared by app.py and the tests (theme, CSS, error display)."""
    return dict(
        theme=theme(),
        css_paths=[ASSETS / "style.css"],
        js=(ASSETS / "page.js").read_text(encoding="utf-8"),
        show_error=True,
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        allowed_paths=[],
        i18n=GRADIO_MISSING_TEXTS,
    )
