"""The page's layout, one function per panel: each creates its widgets and keeps them on ``ui`` under the names
the handlers use (app.callbacks, app.run_handlers). The events that connect them are wired in app.ui."""

from __future__ import annotations

import gradio as gr

from swaa_core.models.registry import DEFAULT_MODEL, get_model_entry

from . import callbacks as cb
from . import plots, texts
from .common import LENGTH_HEADROOM
from .prompts import TASK_CHOICES, examples
from .state import DECODE_PATH_CHOICES, DECODE_PATH_LABEL, FA_LAYER_MODES, MAX_PINNED, Settings

DEFAULT_SWEEP_RECIPES = ["full", "swa", "swa-fa-decode", "swa-half-fa", "swa-half-fa-fa-decode", "recommended"]


def _typed_as_is(cls):
    """A subclass of a Gradio number widget whose value reaches the handlers unchecked (rounded to its precision).
    Gradio's own range check raises inside every event that reads it (a traceback in the log each time) while the
    browser clamps the number to the range's end, which the next run then uses; instead app.ui's guard refuses it
    by name and puts the last valid value back, and the handlers' own checks refuse it if a run reads it first.
    A subclass, as sessions rebuild a widget from its class when an event updates it; Gradio would write a .pyi
    stub beside this module for it, which is switched off while the class is made."""
    import gradio.component_meta as meta

    def preprocess(self, payload):
        try:
            return gr.Number.round_to_precision(payload, getattr(self, "precision", None))
        except (TypeError, ValueError):  # not a number: the guard and the handlers name it
            return payload

    write_stub, meta.create_or_modify_pyi = meta.create_or_modify_pyi, lambda *_args, **_kwargs: None
    try:
        name = cls.__name__.lower()  # the browser draws Gradio's own widget of that name
        return type(cls.__name__, (cls,), {"preprocess": preprocess, "guarded": True,
                                            "get_block_name": lambda _self: name})  # fmt: skip
    finally:
        meta.create_or_modify_pyi = write_stub


Slider = _typed_as_is(gr.Slider)  # ``guarded`` False on an instance: a range that follows the model (the layer)
Number = _typed_as_is(gr.Number)


def _placeholder(text: str):
    return plots.plot_data(plots.message_figure(text), "swaa-plot")


def details(text: str, label: str = texts.DETAILS_LABEL) -> None:
    """What there is to say beyond a control's one line, behind an info toggle (closed)."""
    with gr.Accordion(label, open=False, elem_classes="swaa-details"):
        gr.Markdown(text)


def _layer_choices() -> list[tuple[str, int]]:
    # The default model's layers from the registry (no load needed); a loaded model replaces them.
    return [(str(i), i) for i in range(get_model_entry(DEFAULT_MODEL).num_layers)]


def model_panel(ui, d: Settings) -> None:
    with gr.Accordion("1 · Model", open=True):
        ui.model = gr.Dropdown(
            choices=cb.model_choices(),
            value=d.model,
            allow_custom_value=True,
            label="Model",
            info=texts.MODEL_INFO,
            elem_id="swaa-model",
        )
        ui.load_model = gr.Button("Load model", size="sm")
        ui.model_facts = gr.Markdown("Loading the embedded model…", elem_id="swaa-facts")


def strategy_panel(ui, d: Settings) -> None:
    s = d.strategy
    with gr.Accordion("2 · Strategy", open=True):
        ui.recipe = gr.Dropdown(
            choices=cb.recipe_choices(for_controls=True),
            value="recommended",
            label="Recipe preset",
            info=texts.RECIPE_INFO,
        )
        ui.recipe_note = gr.Markdown(cb.recipe_note("recommended"))
        ui.window = Slider(8, 8192, value=s.window, step=8, label="Window size W", info=texts.WINDOW_INFO)
        ui.sinks = Slider(0, 256, value=s.sinks, step=1, label="Sink tokens K", info=texts.SINKS_INFO)
        ui.fa_layers_mode = gr.Radio(
            list(FA_LAYER_MODES), value=s.fa_layers_mode, label="Full-attention layers", info=texts.FA_LAYERS_INFO
        )
        ui.fa_layers = gr.CheckboxGroup(
            choices=_layer_choices(),
            label="Layers (click to toggle)",
            info=texts.FA_LAYERS_STRIP_INFO,
            elem_classes="layer-strip",
        )
        ui.fa_decode_mode = gr.Radio(
            [("off", "off"), ("all layers", "all"), ("chosen layers", "layers")],
            value=s.fa_decode_mode,
            label="Full-attention decode",
            info=texts.FA_DECODE_INFO,
        )
        ui.fa_decode_layers = gr.CheckboxGroup(
            choices=_layer_choices(),
            label="FA decode layers",
            info=texts.FA_DECODE_STRIP_INFO,
            elem_classes="layer-strip",
            visible=s.fa_decode_mode == "layers",
        )
        ui.cot = gr.Checkbox(value=d.cot, label="Chain of thought", info=texts.COT_INFO)
        ui.decode_path = gr.Radio(
            DECODE_PATH_CHOICES, value=d.decode_path, label=DECODE_PATH_LABEL, info=texts.DECODE_PATH_INFO,
            elem_id="swaa-decode-path",
        )  # fmt: skip
        ui.adapter = gr.Dropdown(
            choices=cb.adapter_choices(),
            value=d.adapter or None,
            allow_custom_value=True,
            label="LoRA adapter (SWAA columns)",
            info=texts.ADAPTER_INFO,
        )
        ui.config_json = gr.Code(
            language="json",
            label="Config (upstream swaa_config JSON)",
            interactive=True,
            lines=8,
            max_lines=16,
            wrap_lines=True,
            show_line_numbers=False,
            buttons=["copy"],
            elem_id="swaa-config",
        )
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
                label="Shareable link",
                info=texts.SHARE_HELP,
                buttons=["copy"],
                interactive=False,
                elem_id="swaa-share-link",
            )
            ui.config_file = gr.DownloadButton("Download config JSON", size="sm")


def prompt_panel(ui, d: Settings) -> None:
    with gr.Accordion("3 · Prompt", open=True):
        ui.source = gr.Radio(
            [("Built-in task", "task"), ("Your text (paste, upload or example)", "text")],
            value=d.source,
            label="Prompt source",
        )
        with gr.Group(visible=d.source == "task") as ui.task_group:
            with gr.Row():
                ui.task = gr.Dropdown(
                    [(label, kind) for kind, label in TASK_CHOICES], value=d.task, label="Task", info=texts.TASK_INFO
                )
                ui.seed = Number(value=d.seed, precision=0, minimum=0, label="Seed", info=texts.SEED_INFO)
            with gr.Row():
                ui.length = Slider(
                    128,
                    8192 - LENGTH_HEADROOM,
                    value=d.length,
                    step=64,
                    label="Length (tokens)",
                    info=texts.LENGTH_INFO,
                )
                ui.depth = Slider(0, 1, value=d.depth, step=0.05, label="Fact depth", info=texts.DEPTH_INFO)
            ui.task_preview = gr.Markdown()
        with gr.Group(visible=d.source == "text") as ui.text_group:
            with gr.Row():
                ui.example = gr.Dropdown(
                    [("—", "")] + [(e.title, k) for k, e in examples().items()],
                    value=d.example,
                    label="Ready example",
                    scale=2,
                )
                ui.upload = gr.File(
                    label="Upload .txt / .md / .pdf", file_types=[".txt", ".md", ".pdf"], height=120, scale=1
                )
            ui.document = gr.Textbox(
                label="Document", lines=8, max_lines=16, placeholder="Paste a long text here…", elem_id="swaa-document"
            )
            with gr.Row():
                ui.question = gr.Textbox(label="Question", info=texts.QUESTION_INFO, scale=2, elem_id="swaa-question")
                ui.answer = gr.Textbox(label="Expected answer", info=texts.ANSWER_INFO, scale=1)
            ui.answer_prefix = gr.Textbox(
                label="Answer begins with (optional)",
                info="Small models answer better when the reply's first words are given.",
            )
        ui.token_info = gr.Markdown(elem_id="swaa-token-count")
        details(texts.PROMPT_DETAILS)


def run_panel(ui, d: Settings) -> None:
    ui.max_new_tokens = Slider(
        1, 512, value=d.max_new_tokens, step=1, label="Max new tokens", info=texts.MAX_NEW_TOKENS_INFO
    )
    with gr.Row(elem_classes="swaa-runbar"):  # sticks to the screen's bottom edge until scrolled past (style.css)
        ui.run = gr.Button("Run comparison", variant="primary", scale=2, elem_id="swaa-run")
        ui.stop = gr.Button("Stop", variant="stop", scale=1, elem_id="swaa-stop")
    ui.board = gr.HTML(cb.empty_board(), elem_id="swaa-board")
    ui.summary = gr.Markdown(elem_id="swaa-summary")
    ui.latency = gr.Plot(
        _placeholder("Run a comparison to see where the time goes."), label="Latency", elem_id="swaa-latency"
    )
    with gr.Row():
        ui.results_csv = gr.DownloadButton("Results CSV", size="sm", interactive=False)
        ui.results_json = gr.DownloadButton("Results JSON", size="sm", interactive=False)
    details(texts.METRICS_HELP, texts.METRICS_LABEL)


def why_panel(ui) -> None:
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
        _placeholder("Run a comparison: the maps use its prompt."), label="Attention maps", elem_id="swaa-attention"
    )
    gr.Markdown(texts.MASK_HELP)
    ui.masks = gr.Plot(label="Masks", elem_id="swaa-masks")
    ui.layer_plan = gr.Plot(label="Layer plan", elem_id="swaa-layer-plan")


def sweep_panel(ui) -> None:
    gr.Markdown(texts.SWEEP_HELP)
    with gr.Row():
        ui.sweep_recipes = gr.CheckboxGroup(
            choices=cb.recipe_choices(), value=DEFAULT_SWEEP_RECIPES, label="Recipes", scale=3
        )
        with gr.Column(scale=1):
            ui.sweep_samples = Slider(1, 20, value=3, step=1, label="Samples per recipe")
            ui.sweep_length = Slider(256, 8192, value=768, step=128, label="Length (tokens)")
    with gr.Row():
        ui.run_sweep = gr.Button("Run recipe sweep", variant="primary")
        ui.stop_sweep = gr.Button("Stop", variant="stop")
    ui.tradeoff = gr.Plot(
        plots.plot_data(plots.tradeoff_figure([]), "swaa-tradeoff"),
        label="Accuracy vs latency",
        elem_id="swaa-tradeoff",
    )
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
        _placeholder("Run the needle sweep to fill the heatmap."), label="Needle heatmap", elem_id="swaa-heatmap"
    )


def decode_speed_panel(ui) -> None:
    gr.Markdown(texts.DECODE_SPEED_HELP)
    details(texts.DECODE_SPEED_DETAILS, "How it is measured")
    with gr.Row():
        ui.decode_lengths = gr.CheckboxGroup(
            choices=[256, 512, 1024, 2048, 4096, 8192, 16384, 32768],
            value=[512, 1024, 2048],
            label="Prompt lengths (tokens)",
            scale=3,
        )
        with gr.Column(scale=1):
            ui.run_decode_speed = gr.Button("Measure decode speed", variant="primary")
            ui.stop_decode_speed = gr.Button("Stop", variant="stop")
    ui.decode_speed = gr.Plot(
        _placeholder("Measure decode speed to draw it."), label="Decode speed", elem_id="swaa-decode-speed"
    )
    ui.decode_speed_note = gr.Markdown(elem_classes="swaa-muted", elem_id="swaa-decode-speed-note")


def tour_panel(ui) -> None:
    ui.tour_text = gr.Markdown(texts.tour_markdown(0))
    ui.tour_masks = gr.Plot(label="Masks at toy scale")
    with gr.Row():
        ui.tour_back = gr.Button("◀ Back", size="sm")
        ui.tour_try = gr.Button("Try it: set the controls and run", variant="primary", size="sm")
        ui.tour_next = gr.Button("Next ▶", size="sm")
