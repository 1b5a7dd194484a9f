"""The page: its frame (title, device line, the sidebar beside the tabs) and what opening it does (a shared link's
settings, the user's own text, the model). Each panel's widgets, events and handlers live in its own module:
app.sidebar.model and app.sidebar.strategy beside every tab, and one module per tab in app.tabs."""

from __future__ import annotations

import os
from types import SimpleNamespace

import gradio as gr

from swaa_core.models.registry import DEFAULT_MODEL

from . import api, texts
from .errors import friendly_error, ui_errors
from .events import Events
from .model_service import HUB, device_summary
from .prompts import examples
from .sidebar import model as model_panel
from .sidebar import strategy as strategy_panel
from .state import Settings, from_query
from .tabs import TABS, compare, tour
from .tabs.compare import TEXT

SIDEBAR_PX = 460  # the longest preset and model names fit their dropdowns whole (tests/app/test_browser.py)
# What a shareable link sets beside the strategy (the widgets of these Settings fields).
LINKED = ("model", "cot", "decode_path", "adapter", "source", "task", "depth", "seed", "max_new_tokens", "example",
          "pinned")  # fmt: skip


def build_demo() -> gr.Blocks:
    # gradio rebuilds a pandas summary of every finished event on a worker thread, for its monitoring page, which this
    # app does not serve; a CI run crashed inside it (pyarrow, a segfault, 2026-12-06). Set before its queue exists.
    os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", str(2**62))
    defaults = Settings()
    # delete_cache: uploads and served downloads in Gradio's cache are removed after an hour (checked every 30 min).
    with gr.Blocks(title=texts.TITLE, fill_width=True, delete_cache=(1800, 3600)) as demo:
        api.build()  # first, so the public endpoints get their plain names before the page's private events
        ui = SimpleNamespace()  # every component of the page, by name: handlers key their updates by them
        ui.active_model = gr.State(None)  # the name of the model this session's runs use
        gr.Markdown(f"# {texts.TITLE}\n{texts.INTRO}", elem_id="swaa-title")
        ui.device_note = gr.Markdown(elem_id="swaa-device")
        with gr.Row(equal_height=False, elem_id="swaa-layout"):
            with gr.Column(scale=1, min_width=SIDEBAR_PX, elem_id="swaa-sidebar"):
                model_panel.layout(ui, defaults)
                strategy_panel.layout(ui, defaults)
            with (
                gr.Column(scale=3, min_width=520, elem_id="swaa-main"),
                gr.Tabs(
                    elem_id="swaa-tabs",
                    overflow_behavior="wrap",  # every tab in sight on a phone, none behind a "⋯"
                ) as ui.tabs,
            ):
                for tab in TABS:
                    with gr.Tab(tab.TITLE, id=tab.ID):
                        tab.layout(ui, defaults)
        # every widget exists before any event is wired: events reach across panels (a run fills the Why tab)
        events = Events(ui)
        events.guard_numbers()
        loading = model_panel.wire(ui, events)
        for part in (strategy_panel, *TABS):
            part.wire(ui, events)
        _wire_refreshes(demo, ui, events, loading)
    demo.ui = ui  # tests and app.py reach components through this
    return demo


@ui_errors
def open_page(ui, saved_text: dict | None, request: gr.Request) -> dict:
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
    notes += model_panel.link_notes(loaded, settings)
    for note in notes:
        gr.Warning(note)
    example = examples().get(settings.example)
    saved = saved_text if isinstance(saved_text, dict) else {}
    if example:
        text = {name: getattr(example, name) for name in TEXT}
    elif saved.get("document"):
        text = {name: str(saved.get(name, "")) for name in TEXT}
        if "src" not in params and saved.get("source") in ("task", "text"):
            settings.source = saved["source"]
    else:
        text = {}
    device = device_summary()
    note = f"Running on **{device}**." + (f" {texts.CPU_NOTE}" if device.startswith("CPU") else "")
    shown = {getattr(ui, name): getattr(settings, name) for name in LINKED} | {ui.adapter: settings.adapter or None}
    return {
        **shown,
        ui.device_note: note,
        **model_panel.model_updates(ui, loaded, settings.strategy, opened=settings),
        **{getattr(ui, name): value for name, value in text.items()},
    }


def _wire_refreshes(demo: gr.Blocks, ui, events: Events, loading) -> None:
    """What crosses panels when the model changes. Page open: restore a shared link, wait for the model, fill
    everything that depends on it; a model ``loading`` (the Load button's event): count the prompt again and redraw
    the config."""
    outputs = [*(getattr(ui, name) for name in LINKED), ui.device_note, *model_panel.outputs(ui),
               *(getattr(ui, name) for name in TEXT)]  # fmt: skip
    opened = events.on(
        demo.load, open_page, [ui.saved_text], outputs,
        concurrency_limit=None,  # only waits for the model: must not queue behind other visitors' runs
    )  # fmt: skip
    # the prompt's token count first: the mask pictures are drawn at it
    described = strategy_panel.describe(ui, events, compare.count_prompt(ui, events, opened.then).then)
    noted = strategy_panel.note_columns(ui, events, described.then)
    tour.draw(ui, events, strategy_panel.share_link(ui, events, noted).then)
    strategy_panel.describe(ui, events, compare.count_prompt(ui, events, loading.then).then)
