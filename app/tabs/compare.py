"""The "Compare" tab: 3 · Prompt (a built-in task or your own text) and the run of every column on it, full
attention first, streamed onto the board, with the summary, latency bars and the results' exports. The comparison
itself is app.comparison's (the API's /compare runs the same); its attention maps are drawn in the "Why" tab.
"""

from __future__ import annotations

import html
from dataclasses import fields
from pathlib import Path

import gradio as gr

from swaa_core.models.registry import DEFAULT_MODEL

from .. import plots, texts
from ..board import ColumnView, render_board, summary_markdown
from ..columns import mask_figure
from ..comparison import Comparison, RunOptions, export_files
from ..errors import error_message
from ..events import group
from ..model_service import HUB, loaded_model, on_gpu
from ..prompts import LENGTH_HEADROOM, Prompt, examples, model_input_tokens
from ..prompts import read_upload as read_text_file
from ..runs import HEAVY, session_id, stop_session
from ..sidebar import strategy as strategy_panel
from ..state import MAX_NEW_TOKENS, TASK_CHOICES, Settings
from ..widgets import Number, Slider, details, placeholder
from . import why

TITLE, ID = "Compare", "compare"
TEXT = ("document", "question", "answer", "answer_prefix")  # the user's own text, kept in the browser


def layout(ui, d: Settings) -> None:
    ui.prompt_tokens = gr.State(None)  # token count of the current prompt, for recipes and mask pictures
    ui.saved_text = gr.BrowserState({}, storage_key="swaa-user-text")  # the user's own text survives a reload
    ui.last_run = gr.State(None)  # sample + column configs of the last run, for the attention maps
    with gr.Accordion("3 · Prompt", open=True):
        ui.source = gr.Radio(
            [("Built-in task", "task"), ("Your text (paste, upload or example)", "text")], value=d.source,
            label="Prompt source",
        )  # fmt: skip
        with gr.Group(visible=d.source == "task") as ui.task_group:
            with gr.Row():
                ui.task = gr.Dropdown(
                    [(label, kind) for kind, label in TASK_CHOICES], value=d.task, label="Task", info=texts.TASK_INFO
                )
                ui.seed = Number(value=d.seed, precision=0, minimum=0, label="Seed", info=texts.SEED_INFO)
            with gr.Row():
                ui.length = Slider(128, 8192 - LENGTH_HEADROOM, value=d.length, step=64, label="Length (tokens)",
                                   info=texts.LENGTH_INFO)  # fmt: skip
                ui.depth = Slider(0, 1, value=d.depth, step=0.05, label="Fact depth", info=texts.DEPTH_INFO)
            ui.task_preview = gr.Markdown()
        with gr.Group(visible=d.source == "text") as ui.text_group:
            with gr.Row():
                ui.example = gr.Dropdown([("—", "")] + [(e.title, k) for k, e in examples().items()],
                                         value=d.example, label="Ready example", scale=2)  # fmt: skip
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
    ui.max_new_tokens = Slider(1, MAX_NEW_TOKENS, value=d.max_new_tokens, step=1, label="Max new tokens",
                               info=texts.MAX_NEW_TOKENS_INFO)  # fmt: skip
    with gr.Row(elem_classes="swaa-runbar"):  # sticks to the screen's bottom edge until scrolled past (style.css)
        ui.run = gr.Button("Run comparison", variant="primary", scale=2, elem_id="swaa-run")
        ui.stop = gr.Button("Stop", variant="stop", scale=1, elem_id="swaa-stop")
    ui.board = gr.HTML(render_board([]), elem_id="swaa-board")
    ui.summary = gr.Markdown(elem_id="swaa-summary")
    ui.latency = gr.Plot(
        placeholder("Run a comparison to see where the time goes."), label="Latency", elem_id="swaa-latency"
    )
    with gr.Row():
        ui.results_csv = gr.DownloadButton("Results CSV", size="sm", interactive=False)
        ui.results_json = gr.DownloadButton("Results JSON", size="sm", interactive=False)
    details(texts.METRICS_HELP, texts.METRICS_LABEL)


# ---------------------------------------------------------------- the prompt
def source_visibility(ui, source) -> dict:
    return {ui.task_group: gr.Group(visible=source == "task"), ui.text_group: gr.Group(visible=source == "text")}


def remember_text(source, document, question, answer, answer_prefix) -> dict:
    """What the user typed, kept in the browser's local storage (never on the server)."""
    return {
        "source": source, "document": document, "question": question, "answer": answer, "answer_prefix": answer_prefix,
    }  # fmt: skip


def pick_example(ui, key) -> dict:
    example = examples().get(key or "")
    if example is None:
        return gr.skip()
    return {getattr(ui, name): getattr(example, name) for name in TEXT}


def read_upload(ui, file, current) -> dict:
    """An upload replaces the document only when it is readable text; otherwise a toast names the file and why,
    and the document keeps what was there. The upload box is cleared either way; the uploaded copy is only read:
    Gradio keeps one copy per content hash, shared by every visitor who sends the same file at the same time, and
    its cache (delete_cache) removes it later."""
    if file is None:
        return gr.skip()
    path = Path(file if isinstance(file, str) else file.name)
    try:
        return {ui.document: read_text_file(path), ui.upload: None}
    except Exception as e:  # noqa: BLE001 - the user's text stays
        gr.Warning(error_message(e))
        return {ui.upload: None}


def prompt_info(ui, active_model, prompt: Prompt, window, cot, max_new_tokens=None) -> dict:
    """Prompt tokens (what the model reads, chat template included: the number the columns show) against the model
    limit (which must also hold the ``max_new_tokens`` to generate) and the window, and a preview of a built-in task."""
    if not HUB.is_ready(active_model or DEFAULT_MODEL):
        return {ui.token_info: "Loading the model…", ui.task_preview: ""}
    loaded = loaded_model(active_model)
    if prompt.source == "text" and not (prompt.document or "").strip():
        return {ui.token_info: "Paste a document, upload a file or pick an example.", ui.task_preview: ""}
    try:
        sample = prompt.sample(loaded.tokenizer)
    except ValueError as e:
        return {ui.token_info: f"⚠️ {html.escape(str(e))}", ui.task_preview: ""}
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
    preview = _preview(sample) if prompt.source == "task" else ""
    return {ui.token_info: info, ui.task_preview: preview, ui.prompt_tokens: n}


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


# ---------------------------------------------------------------- the run
@on_gpu(duration=180)
def run_comparison(
    ui, active_model, strategy, prompt: Prompt, options: RunOptions, layer, request: gr.Request = None
):  # fmt: skip
    """Stream every column (full attention first) on the same prompt; end with metrics, summary and exports, and
    the Why tab's masks and column choice for this run."""
    run = Comparison.build(active_model, strategy, prompt, options)
    views: list[ColumnView] = []
    for views in run.stream(session_id(request)):
        yield {ui.board: render_board(views)}
    rows = run.rows(views)
    last_run = run.last_run(views)
    swaa_choices = [(c.label, i) for i, c in enumerate(run.columns) if c.config is not None]
    masks = mask_figure(run.columns, last_run["prompt_tokens"], run.spec.max_new_tokens, int(layer or 0))
    csv, data = export_files(rows)
    yield {
        ui.board: render_board(views),
        ui.summary: summary_markdown(views),
        ui.latency: plots.plot_data(plots.latency_figure(rows), "swaa-latency"),
        ui.masks: plots.plot_data(masks, "swaa-masks"),
        ui.last_run: last_run,
        ui.results_csv: gr.DownloadButton(value=csv, interactive=bool(csv)),
        ui.results_json: gr.DownloadButton(value=data, interactive=bool(data)),
        ui.column: gr.Dropdown(choices=swaa_choices, value=swaa_choices[-1][1]),
        ui.layer: gr.Slider(value=run.shown_layer(int(layer or 0))),
    }


async def stop_run(request: gr.Request):
    if await stop_session(request):
        gr.Info("Stopping: the running column ends at its next step; finished results stay; a run still waiting "
                "for the model does not start.")  # fmt: skip


# ---------------------------------------------------------------- events
def prompt_group(ui):
    return group(Prompt, ui, [f.name for f in fields(Prompt)])


def count_prompt(ui, events, trigger, **kwargs):
    """After ``trigger``: the prompt's token count and preview (prompt_info). Returns the event."""
    inputs = [ui.active_model, prompt_group(ui), ui.window, ui.cot, ui.max_new_tokens]
    return events.light(trigger, prompt_info, inputs, [ui.token_info, ui.task_preview, ui.prompt_tokens], **kwargs)


def run_after(ui, events, trigger):
    """After ``trigger``: run the comparison, then draw its attention maps. Returns the last event."""
    inputs = [ui.active_model, strategy_panel.strategy_group(ui), prompt_group(ui),
              group(RunOptions, ui, [f.name for f in fields(RunOptions)]), ui.layer]  # fmt: skip
    outputs = [ui.board, ui.summary, ui.latency, ui.masks, ui.last_run, ui.results_csv, ui.results_json, ui.column,
               ui.layer]  # fmt: skip
    ran = events.on(trigger, run_comparison, inputs, outputs, concurrency_id=HEAVY)
    return why.draw_after(ui, events, ran.then)


def wire(ui, events) -> None:
    text = [getattr(ui, name) for name in TEXT]
    events.light(ui.source.change, source_visibility, [ui.source], [ui.task_group, ui.text_group])
    events.light(ui.example.input, pick_example, [ui.example], text)
    for component in [ui.source, *text]:
        events.light(component.change, remember_text, [ui.source, *text], [ui.saved_text], trigger_mode="always_last")
    events.light(ui.upload.upload, read_upload, [ui.upload, ui.document], [ui.document, ui.upload])
    for component in [*prompt_group(ui).components(), ui.window, ui.cot, ui.max_new_tokens]:
        counted = count_prompt(ui, events, component.change, trigger_mode="always_last")
        strategy_panel.describe(ui, events, counted.then)
    run_after(ui, events, ui.run.click)
    events.on(ui.stop.click, stop_run, None, None, concurrency_limit=None, queue=False)
