"""The "Recipes & needles" tab: the recipe sweep (accuracy vs time), the needle sweep (depth x length heatmap) and
decode speed vs context, each with its Stop. The sweeps themselves are app.sweep_runs' (the API runs the same)."""

from __future__ import annotations

import gradio as gr

from .. import plots, texts
from ..events import Group
from ..model_service import on_gpu
from ..runs import HEAVY, stop_session
from ..sidebar import strategy as strategy_panel
from ..state import Settings, Strategy
from ..sweep_runs import (
    DecodeSpeedSettings,
    NeedleSweepSettings,
    RecipeSweepSettings,
    decode_curve,
    needle_sweep,
    recipe_sweep,
)
from ..widgets import Slider, details, placeholder

TITLE, ID = "Recipes & needles", "sweeps"
DEFAULT_SWEEP_RECIPES = ["full", "swa", "swa-fa-decode", "swa-half-fa", "swa-half-fa-fa-decode", "recommended"]
SWEEP_STOPS = ("stop_sweep", "stop_heat", "stop_decode_speed")  # the Stop beside each sweep's run button


def layout(ui, d: Settings) -> None:
    gr.Markdown(texts.SWEEP_HELP)
    with gr.Row():
        ui.sweep_recipes = gr.CheckboxGroup(
            choices=strategy_panel.recipe_choices(), value=DEFAULT_SWEEP_RECIPES, label="Recipes", scale=3
        )
        with gr.Column(scale=1):
            ui.sweep_samples = Slider(1, 20, value=3, step=1, label="Samples per recipe")
            ui.sweep_length = Slider(256, 8192, value=768, step=128, label="Length (tokens)")
    with gr.Row():
        ui.run_sweep = gr.Button("Run recipe sweep", variant="primary")
        ui.stop_sweep = gr.Button("Stop", variant="stop")
    ui.tradeoff = gr.Plot(
        plots.plot_data(plots.tradeoff_figure([]), "swaa-tradeoff"), label="Accuracy vs latency",
        elem_id="swaa-tradeoff",
    )  # fmt: skip
    ui.sweep_table = gr.Dataframe(label="Sweep results", interactive=False, wrap=True, visible=False)
    gr.Markdown(texts.HEATMAP_HELP)
    with gr.Row():
        ui.heat_lengths = gr.CheckboxGroup(
            choices=[256, 512, 1024, 2048, 4096, 8192], value=[256, 512, 1024], label="Lengths (tokens)", scale=2
        )
        ui.heat_depths = Slider(2, 11, value=5, step=1, label="Depths (evenly from 0 to 1)", scale=1)
        ui.heat_samples = Slider(1, 10, value=1, step=1, label="Samples per cell", scale=1)
    with gr.Row():
        ui.run_heat = gr.Button("Run needle sweep", variant="primary")
        ui.stop_heat = gr.Button("Stop", variant="stop")
        ui.heat_results = gr.DownloadButton("Sweep CSV", size="sm", interactive=False)
    ui.heatmap = gr.Plot(
        placeholder("Run the needle sweep to fill the heatmap."), label="Needle heatmap", elem_id="swaa-heatmap"
    )
    gr.Markdown(texts.DECODE_SPEED_HELP)
    details(texts.DECODE_SPEED_DETAILS, "How it is measured")
    with gr.Row():
        ui.decode_lengths = gr.CheckboxGroup(
            choices=[256, 512, 1024, 2048, 4096, 8192, 16384, 32768], value=[512, 1024, 2048],
            label="Prompt lengths (tokens)", scale=3,
        )  # fmt: skip
        with gr.Column(scale=1):
            ui.run_decode_speed = gr.Button("Measure decode speed", variant="primary")
            ui.stop_decode_speed = gr.Button("Stop", variant="stop")
    ui.decode_speed = gr.Plot(
        placeholder("Measure decode speed to draw it."), label="Decode speed", elem_id="swaa-decode-speed"
    )
    ui.decode_speed_note = gr.Markdown(elem_classes="swaa-muted", elem_id="swaa-decode-speed-note")


# ---------------------------------------------------------------- handlers
@on_gpu(duration=600)
def run_recipe_sweep(
    ui, active_model, sweep: RecipeSweepSettings, request: gr.Request = None, progress=gr.Progress()
) -> dict:  # fmt: skip
    """The trade-off plot and the table (shown once there is something in it)."""
    result = recipe_sweep(active_model, sweep, request, progress)
    figure = plots.tradeoff_figure(result.points, time_label=result.time_label)
    return {
        ui.tradeoff: plots.plot_data(figure, "swaa-tradeoff"),
        ui.sweep_table: gr.Dataframe(value=result.table, visible=True),
    }


@on_gpu(duration=600)
def run_needle_sweep(
    ui, active_model, strategy: Strategy, sweep: NeedleSweepSettings, request: gr.Request = None,
    progress=gr.Progress(),
) -> dict:  # fmt: skip
    """The heatmap and the CSV download."""
    grids, path = needle_sweep(active_model, strategy, sweep, request, progress)
    return {
        ui.heatmap: plots.plot_data(plots.needle_heatmap_figure(grids), "swaa-needle-heatmap"),
        ui.heat_results: gr.DownloadButton(value=str(path), interactive=True),
    }


@on_gpu(duration=600)
def run_decode_curve(
    ui, active_model, speed: DecodeSpeedSettings, request: gr.Request = None, progress=gr.Progress()
) -> dict:  # fmt: skip
    """The decode-speed plot and its note."""
    rows, note = decode_curve(active_model, speed, request, progress)
    return {ui.decode_speed: plots.plot_data(plots.decode_speed_figure(rows), "swaa-decode-speed"),
            ui.decode_speed_note: note}  # fmt: skip


async def stop_sweep(request: gr.Request = None) -> None:
    """The sweeps' Stop buttons: the session's running sweep ends at its next step and keeps what finished; one
    still waiting for the model never starts."""
    if await stop_session(request):
        gr.Info("Stopping: the run in progress ends at its next step; the finished points stay.")


# ---------------------------------------------------------------- events
def wire(ui, events) -> None:
    recipe = Group(
        RecipeSweepSettings,
        dict(recipes=ui.sweep_recipes, samples=ui.sweep_samples, length=ui.sweep_length, seed=ui.seed,
             window=ui.window, sinks=ui.sinks, cot=ui.cot, decode_path=ui.decode_path),
    )  # fmt: skip
    needle = Group(
        NeedleSweepSettings,
        dict(lengths=ui.heat_lengths, depths=ui.heat_depths, samples=ui.heat_samples, seed=ui.seed, task=ui.task),
    )
    speed = Group(
        DecodeSpeedSettings,
        dict(recipes=ui.sweep_recipes, lengths=ui.decode_lengths, window=ui.window, sinks=ui.sinks,
             decode_path=ui.decode_path),
    )  # fmt: skip
    events.on(ui.run_sweep.click, run_recipe_sweep, [ui.active_model, recipe], [ui.tradeoff, ui.sweep_table],
              concurrency_id=HEAVY)  # fmt: skip
    events.on(ui.run_heat.click, run_needle_sweep, [ui.active_model, strategy_panel.strategy_group(ui), needle],
              [ui.heatmap, ui.heat_results], concurrency_id=HEAVY)  # fmt: skip
    events.on(ui.run_decode_speed.click, run_decode_curve, [ui.active_model, speed],
              [ui.decode_speed, ui.decode_speed_note], concurrency_id=HEAVY)  # fmt: skip
    # Each run's own Stop, next to it (one cancel flag per session: any of them stops the session's run).
    for stop in SWEEP_STOPS:
        events.on(getattr(ui, stop).click, stop_sweep, None, None, concurrency_limit=None, queue=False)
