"""The "Guided tour" tab: its steps (app.texts.TOUR), each step's recipe drawn at toy scale, and "Try it", which puts
the step's recipe into the controls and runs the comparison."""

from __future__ import annotations

import gradio as gr

from swaa_core.engine.config import SWAAConfig
from swaa_core.eval.recipes import resolve_recipe

from .. import plots, texts
from ..columns import ColumnSpec, mask_figure
from ..errors import ui_errors
from ..sidebar.strategy import STRATEGY, recipe_note, recipe_strategy, strategy_updates
from ..state import Settings
from . import compare

TITLE, ID = "Guided tour", "tour"
TOY = dict(layers=4, window=5, sinks=2, prompt=16, generated=4)  # small enough to see single tokens


def layout(ui, d: Settings) -> None:
    ui.tour_index = gr.State(0)
    ui.tour_text = gr.Markdown(texts.tour_markdown(0))
    ui.tour_masks = gr.Plot(label="Masks at toy scale")
    with gr.Row():
        ui.tour_back = gr.Button("◀ Back", size="sm")
        ui.tour_try = gr.Button("Try it: set the controls and run", variant="primary", size="sm")
        ui.tour_next = gr.Button("Next ▶", size="sm")


def tour_move(ui, index, step) -> dict:
    index = max(0, min(len(texts.TOUR) - 1, int(index) + int(step)))
    return {ui.tour_index: index, ui.tour_text: texts.tour_markdown(index)}


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
def tour_apply(ui, index, active_model, prompt_tokens) -> dict:
    """The step's recipe and CoT into the controls."""
    step = texts.TOUR[int(index)]
    name = step.settings["recipe"]
    strategy = recipe_strategy(name, active_model, prompt_tokens)
    shown = {ui.cot: bool(step.settings.get("cot")), ui.recipe: name, ui.recipe_note: recipe_note(name)}
    return {**(strategy_updates(ui, strategy) if strategy else {}), **shown}


def draw(ui, events, trigger):
    """After ``trigger``: the current step's picture. Returns the event."""
    return events.light(trigger, tour_figure, [ui.tour_index], [ui.tour_masks])


def wire(ui, events) -> None:
    for button, step in ((ui.tour_back, -1), (ui.tour_next, 1)):
        moved = events.light(button.click, tour_move, [ui.tour_index, gr.State(step)], [ui.tour_index, ui.tour_text])
        draw(ui, events, moved.then)
    strategy = [getattr(ui, name) for name in STRATEGY]
    tried = events.light(ui.tour_try.click, tour_apply, [ui.tour_index, ui.active_model, ui.prompt_tokens],
                         [*strategy, ui.cot, ui.recipe, ui.recipe_note])  # fmt: skip
    tried = events.on(tried.then, lambda: gr.Tabs(selected=compare.ID), None, [ui.tabs])
    compare.run_after(ui, events, tried.then)
