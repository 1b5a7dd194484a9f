"""The "Why: attention & masks" tab: the last comparison's attention maps (full attention beside one SWAA column, one
layer and head), what each column's mask lets a token see, and the layer plan. The capture is
app.comparison.attention_maps; this module draws it."""

from __future__ import annotations

import gradio as gr

from swaa_core.engine.config import SWAAConfig
from swaa_core.models.registry import DEFAULT_MODEL, get_model_entry

from .. import maps, plots, texts
from ..columns import ColumnSpec, mask_figure
from ..comparison import PromptTooLongForMaps, attention_maps
from ..errors import ui_errors
from ..model_service import loaded_model, num_layers, on_gpu
from ..runs import HEAVY
from ..state import Settings
from ..widgets import Slider, placeholder

TITLE, ID = "Why: attention & masks", "why"


def layout(ui, d: Settings) -> None:
    gr.Markdown(texts.ATTENTION_HELP)
    entry = get_model_entry(DEFAULT_MODEL)
    with gr.Row():  # the column names are long ("Recommended: ... (W=256, 10 sinks)"): their dropdown gets the room
        ui.column = gr.Dropdown(
            [], label="SWAA column", info="The SWAA columns of the last comparison (listed once one has run).", scale=3
        )
        heads = [("mean of heads", -1)] + [(f"head {h}", h) for h in range(entry.num_heads)]
        ui.head = gr.Dropdown(heads, value=-1, label="Head", scale=1)
    with gr.Row(equal_height=True):
        ui.layer = Slider(0, entry.num_layers - 1, value=0, step=1, label="Layer", scale=3)
        ui.layer.guarded = False
        ui.draw = gr.Button("Draw attention", size="sm", scale=1)
    ui.attention = gr.Plot(
        placeholder("Run a comparison: the maps use its prompt."), label="Attention maps", elem_id="swaa-attention"
    )
    gr.Markdown(texts.MASK_HELP)
    ui.masks = gr.Plot(label="Masks", elem_id="swaa-masks")
    ui.layer_plan = gr.Plot(label="Layer plan", elem_id="swaa-layer-plan")


@ui_errors
@on_gpu(duration=60)
def draw_attention(active_model, last_run, column, layer, head):
    if not last_run:
        return plots.plot_data(plots.message_figure("Run a comparison first; the maps use its prompt."), "attention")
    try:
        captured = attention_maps(loaded_model(active_model), last_run, column, int(layer))
    except PromptTooLongForMaps as e:
        return plots.plot_data(plots.message_figure(str(e)), "attention")
    fig = maps.attention_figure(
        captured.full, captured.swaa, head=None if head is None or int(head) < 0 else int(head),
        layer=captured.layer, swaa_label=captured.label, needle_tokens=captured.needle_tokens,
        **region_marks(captured.config, captured.layer),
    )  # fmt: skip
    return plots.plot_data(fig, f"swaa-attention-layer{captured.layer}")


def region_marks(config: SWAAConfig, layer: int) -> dict:
    """What the SWAA map outlines in ``layer`` (maps.attention_figure's window, sinks and layer_slides): the band's
    edge and the sinks of a sliding window; nothing for a kind no band draws (chunks: the map itself shows them)."""
    kind, _ = config.layer_rule(layer)
    band = kind.window_kernel if kind is not None else None
    return dict(window=band.window if band else None, sinks=band.keep_first if band else 0, layer_slides=bool(band))


@ui_errors
def masks_for_layer(active_model, last_run, layer):
    if not last_run:
        return gr.skip()
    n = num_layers(loaded_model(active_model))
    columns = [
        ColumnSpec(label, SWAAConfig.from_dict(c).validate(n) if c else None) for label, c in last_run["columns"]
    ]
    return plots.plot_data(mask_figure(columns, last_run["prompt_tokens"], 0, int(layer)), "swaa-masks")


def draw_after(ui, events, trigger):
    """After ``trigger``: draw the attention maps of the last run. Returns the event."""
    inputs = [ui.active_model, ui.last_run, ui.column, ui.layer, ui.head]
    return events.on(trigger, draw_attention, inputs, [ui.attention], concurrency_id=HEAVY)


def wire(ui, events) -> None:
    draw_after(ui, events, ui.draw.click)
    events.light(ui.layer.release, masks_for_layer, [ui.active_model, ui.last_run, ui.layer], [ui.masks])
