"""The guided tour: moving between its steps (app.texts.TOUR), each step's recipe drawn at toy scale, and "try it",
which puts the step's recipe into the controls."""

from __future__ import annotations

from swaa_core.engine.config import SWAAConfig
from swaa_core.eval.recipes import resolve_recipe

from . import plots, texts
from .callbacks import recipe_note, recipe_strategy
from .common import ColumnSpec, mask_figure, strategy_values, ui_errors


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
    """The step's recipe and CoT into the controls (the strategy widgets, then cot, recipe and recipe_note)."""
    step = texts.TOUR[int(index)]
    name = step.settings["recipe"]
    strategy = recipe_strategy(name, active_model, prompt_tokens)
    return [*strategy_values(strategy), bool(step.settings.get("cot")), name, recipe_note(name)]
