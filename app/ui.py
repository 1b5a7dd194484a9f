"""The page: layout and event wiring. Handlers live in app.callbacks; words in app.texts; figures in app.plots."""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from swaa_core.models.registry import DEFAULT_MODEL, get_model_entry

from . import api, plots, sweeps, texts
from . import callbacks as cb
from . import run_handlers as rh
from .common import STRATEGY, toast_errors
from .prompts import TASK_CHOICES, Prompt, examples
from .state import FA_LAYER_MODES, MAX_PINNED, Settings, Strategy
from .wiring import Group, flatten, group

ASSETS = Path(__file__).resolve().parent.parent / "assets"
HEAVY = "model"  # concurrency group of everything that runs the model
SIDEBAR_PX = 460  # the longest preset and model names fit their dropdowns whole (tests/app/test_browser.py)
DEFAULT_SWEEP_RECIPES = ["full", "swa", "swa-fa-decode", "swa-half-fa", "swa-half-fa-fa-decode", "recommended"]


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
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=SIDEBAR_PX, elem_id="swaa-sidebar"):
                _model_panel(ui, defaults)
                _strategy_panel(ui, defaults)
            with gr.Column(scale=3, min_width=520), gr.Tabs(elem_id="swaa-tabs") as ui.tabs:
                with gr.Tab("Compare", id="compare"):
                    _prompt_panel(ui, defaults)
                    _run_panel(ui, defaults)
                with gr.Tab("Why: attention & masks", id="why"):
                    _why_panel(ui)
                with gr.Tab("Recipes & needles", id="sweeps"):
                    _sweep_panel(ui)
                    _decode_speed_panel(ui)
                with gr.Tab("Guided tour", id="tour"):
                    _tour_panel(ui)
        _wire(demo, ui)
    demo.ui = ui  # tests and app.py reach components through this
    return demo


# ---------------------------------------------------------------- layout pieces
def _placeholder(text: str):
    return plots.plot_data(plots.message_figure(text), "swaa-plot")


def _layer_choices() -> list[tuple[str, int]]:
    # The default model's layers from the registry (no load needed); a loaded model replaces them.
    return [(str(i), i) for i in range(get_model_entry(DEFAULT_MODEL).num_layers)]


def _model_panel(ui, d: Settings) -> None:
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


def _strategy_panel(ui, d: Settings) -> None:
    s = d.strategy
    with gr.Accordion("2 · Strategy", open=True):
        ui.recipe = gr.Dropdown(
            choices=cb.recipe_choices(for_controls=True),
            value="recommended",
            label="Recipe preset",
            info=texts.RECIPE_INFO,
        )
        ui.recipe_note = gr.Markdown(cb.recipe_note("recommended"))
        ui.window = gr.Slider(8, 8192, value=s.window, step=8, label="Window size W", info=texts.WINDOW_INFO)
        ui.sinks = gr.Slider(0, 256, value=s.sinks, step=1, label="Sink tokens K", info=texts.SINKS_INFO)
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


def _prompt_panel(ui, d: Settings) -> None:
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
                ui.seed = gr.Number(value=d.seed, precision=0, minimum=0, label="Seed", info=texts.SEED_INFO)
            with gr.Row():
                ui.length = gr.Slider(
                    128, 8192, value=d.length, step=64, label="Length (tokens)", info=texts.LENGTH_INFO
                )
                ui.depth = gr.Slider(0, 1, value=d.depth, step=0.05, label="Fact depth", info=texts.DEPTH_INFO)
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


def _run_panel(ui, d: Settings) -> None:
    with gr.Row(equal_height=True):
        ui.max_new_tokens = gr.Slider(
            1, 512, value=d.max_new_tokens, step=1, label="Max new tokens", info=texts.MAX_NEW_TOKENS_INFO, scale=3
        )
        ui.run = gr.Button("Run comparison", variant="primary", scale=1, elem_id="swaa-run")
        ui.stop = gr.Button("Stop", variant="stop", scale=1, elem_id="swaa-stop")
    ui.board = gr.HTML(cb.empty_board(), elem_id="swaa-board")
    gr.Markdown(texts.METRICS_HELP, elem_classes="swaa-muted")
    ui.summary = gr.Markdown(elem_id="swaa-summary")
    ui.latency = gr.Plot(
        _placeholder("Run a comparison to see where the time goes."), label="Latency", elem_id="swaa-latency"
    )
    gr.Markdown(texts.PNG_HELP, elem_classes="swaa-muted")
    with gr.Row():
        ui.results_csv = gr.DownloadButton("Results CSV", size="sm", interactive=False)
        ui.results_json = gr.DownloadButton("Results JSON", size="sm", interactive=False)


def _why_panel(ui) -> None:
    gr.Markdown(texts.ATTENTION_HELP)
    entry = get_model_entry(DEFAULT_MODEL)
    with gr.Row():  # the column names are long ("Recommended: ... (W=256, 10 sinks)"): their dropdown gets the room
        ui.column = gr.Dropdown([], label="SWAA column", info="Which config to compare with full attention.", scale=3)
        heads = [("mean of heads", -1)] + [(f"head {h}", h) for h in range(entry.num_heads)]
        ui.head = gr.Dropdown(heads, value=-1, label="Head", scale=1)
    with gr.Row(equal_height=True):
        ui.layer = gr.Slider(0, entry.num_layers - 1, value=0, step=1, label="Layer", scale=3)
        ui.draw = gr.Button("Draw attention", size="sm", scale=1)
    ui.attention = gr.Plot(
        _placeholder("Run a comparison: the maps use its prompt."), label="Attention maps", elem_id="swaa-attention"
    )
    gr.Markdown(texts.MASK_HELP)
    ui.masks = gr.Plot(label="Masks", elem_id="swaa-masks")
    ui.layer_plan = gr.Plot(label="Layer plan", elem_id="swaa-layer-plan")


def _sweep_panel(ui) -> None:
    gr.Markdown(texts.SWEEP_HELP)
    with gr.Row():
        ui.sweep_recipes = gr.CheckboxGroup(
            choices=cb.recipe_choices(), value=DEFAULT_SWEEP_RECIPES, label="Recipes", scale=3
        )
        with gr.Column(scale=1):
            ui.sweep_samples = gr.Slider(1, 20, value=3, step=1, label="Samples per recipe")
            ui.sweep_length = gr.Slider(256, 8192, value=768, step=128, label="Length (tokens)")
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
        ui.heat_depths = gr.Slider(2, 11, value=5, step=1, label="Depths (evenly from 0 to 1)", scale=1)
        ui.heat_samples = gr.Slider(1, 10, value=1, step=1, label="Samples per cell", scale=1)
    with gr.Row():
        ui.run_heat = gr.Button("Run needle sweep", variant="primary")
        ui.heat_results = gr.DownloadButton("Sweep CSV", size="sm", interactive=False)
    ui.heatmap = gr.Plot(
        _placeholder("Run the needle sweep to fill the heatmap."), label="Needle heatmap", elem_id="swaa-heatmap"
    )


def _decode_speed_panel(ui) -> None:
    gr.Markdown(texts.DECODE_SPEED_HELP)
    with gr.Row():
        ui.decode_lengths = gr.CheckboxGroup(
            choices=[256, 512, 1024, 2048, 4096, 8192, 16384, 32768],
            value=[512, 1024, 2048],
            label="Prompt lengths (tokens)",
            scale=3,
        )
        ui.run_decode_speed = gr.Button("Measure decode speed", variant="primary", scale=1)
    ui.decode_speed = gr.Plot(
        _placeholder("Measure decode speed to draw it."), label="Decode speed", elem_id="swaa-decode-speed"
    )
    ui.decode_speed_note = gr.Markdown(elem_classes="swaa-muted")


def _tour_panel(ui) -> None:
    ui.tour_text = gr.Markdown(texts.tour_markdown(0))
    ui.tour_masks = gr.Plot(label="What the strategy lets a token see (toy scale)")
    with gr.Row():
        ui.tour_back = gr.Button("◀ Back", size="sm")
        ui.tour_try = gr.Button("Try it: set the controls and run", variant="primary", size="sm")
        ui.tour_next = gr.Button("Next ▶", size="sm")


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
             window=ui.window, sinks=ui.sinks, cot=ui.cot),
    )  # fmt: skip
    g.needle_sweep = Group(
        sweeps.NeedleSweepSettings,
        dict(lengths=ui.heat_lengths, depths=ui.heat_depths, samples=ui.heat_samples, seed=ui.seed, task=ui.task),
    )
    g.decode_speed = Group(
        sweeps.DecodeSpeedSettings,
        dict(recipes=ui.sweep_recipes, lengths=ui.decode_lengths, window=ui.window, sinks=ui.sinks),
    )
    return g


def _wire(demo: gr.Blocks, ui) -> None:
    g = _groups(ui)
    strategy = _widgets(ui, STRATEGY)
    prompt = g.prompt.components()
    model_out = _widgets(ui, cb.MODEL_OUTPUTS)
    share_in = [g.settings, ui.prompt_tokens, ui.layer]
    config_out = _widgets(ui, cb.CONFIG_OUTPUTS)
    info_in, info_out = (
        [ui.active_model, g.prompt, ui.window, ui.cot],
        [ui.token_info, ui.task_preview, ui.prompt_tokens],
    )

    def share_link(dep):
        return _on(dep.then, None, [ui.share_query], [ui.share_link], js=_SHARE_JS)

    # Page open: restore a shared link, wait for the model, fill everything that depends on it.
    opened = _on(
        demo.load, cb.open_page, [ui.saved_text], _widgets(ui, cb.OPEN_OUTPUTS),
        concurrency_limit=None,  # only waits for the model: must not queue behind other visitors' runs
    )  # fmt: skip
    described = _light(opened.then, cb.describe_config, share_in, config_out)
    informed = _light(described.then, cb.prompt_info, info_in, info_out)
    noted = _light(informed.then, cb.columns_note, [ui.pinned], [ui.columns_note, ui.clear_pins])
    _light(share_link(noted).then, cb.tour_figure, [ui.tour_index], [ui.tour_masks])

    # A failed load leaves the active model, the dropdown back on it and every control as it was.
    loading = _on(
        ui.load_model.click, cb.load_model, [ui.model, ui.active_model, g.strategy], [ui.model, *model_out],
        concurrency_id="load", concurrency_limit=1, show_progress="minimal",
    )  # fmt: skip
    _light(_light(loading.then, cb.describe_config, share_in, config_out).then, cb.prompt_info, info_in, info_out)

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
    for component in [*strategy, ui.cot, ui.adapter, ui.max_new_tokens, *prompt[:5], ui.example]:
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
    for component in [*prompt, ui.window, ui.cot]:
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
    _on(ui.stop_sweep.click, rh.stop_run, None, None, concurrency_limit=None, queue=False)
    _on(
        ui.run_heat.click, sweeps.run_needle_sweep, [ui.active_model, g.strategy, g.needle_sweep],
        [ui.heatmap, ui.heat_results], concurrency_id=HEAVY,
    )  # fmt: skip
    _on(
        ui.run_decode_speed.click, sweeps.run_decode_curve, [ui.active_model, g.decode_speed],
        [ui.decode_speed, ui.decode_speed_note], concurrency_id=HEAVY,
    )  # fmt: skip

    # Guided tour.
    for button, step in ((ui.tour_back, -1), (ui.tour_next, 1)):
        moved = _light(button.click, cb.tour_move, [ui.tour_index, gr.State(step)], [ui.tour_index, ui.tour_text])
        _light(moved.then, cb.tour_figure, [ui.tour_index], [ui.tour_masks])
    tried = _light(
        ui.tour_try.click, cb.tour_apply, [ui.tour_index, ui.active_model, ui.prompt_tokens],
        [*strategy, ui.cot, ui.recipe, ui.recipe_note],
    )  # fmt: skip
    tried = _on(tried.then, lambda: gr.Tabs(selected="compare"), None, [ui.tabs])
    tried = _on(tried.then, rh.run_comparison, run_in, run_out, concurrency_id=HEAVY)
    _on(tried.then, rh.draw_attention, attention_in, [ui.attention], concurrency_id=HEAVY)


# The link is built in the browser: only it knows the address people reach the app at (a Space, a proxy, localhost).
_SHARE_JS = "(q) => window.location.origin + window.location.pathname + (q || '')"


def launch_kwargs() -> dict:
    """Arguments for demo.launch shared by app.py and the tests (theme, CSS, error display)."""
    return dict(
        theme=gr.themes.Soft(primary_hue="blue", secondary_hue="orange"),
        css_paths=[ASSETS / "style.css"],
        show_error=True,
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        allowed_paths=[],
    )
