"""The "Advisor" tab: which layers keep full attention for the loaded model, a length and a budget, measured.

Per-layer scores as bars over the layer indices (the same 0..L-1 axis as the strategy's layer checkboxes), the
recommendation one click from "Apply" (it sets the strategy controls), and the held-out candidates on the
accuracy-vs-latency plot beside the paper's points. The measurement is swaa_core.eval.recommend.advise; the API
endpoint app.api.advise runs the same :func:`run_for_session`.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import gradio as gr
import plotly.graph_objects as go

from swaa_core.engine.config import SWAAConfig
from swaa_core.models.registry import DEFAULT_MODEL

from ..events import Group
from ..model_service import loaded_model, num_layers
from ..plots import FA_COLOR, SWA_COLOR, message_figure, style_figure, tradeoff_figure
from ..runs import HEAVY, session_run
from ..sidebar.strategy import STRATEGY, strategy_updates
from ..state import MAX_LENGTH, Settings, Strategy, whole_in_range, window_and_sinks

TITLE, ID = "Advisor", "advisor"
BUDGET_KINDS = ("full layers", "prefill share", "KV GiB")
TASKS = ("needle", "passkey", "multi_key")


@dataclass(frozen=True)
class AdvisorSettings:
    """The panel's inputs, checked once where they enter (names say which input is wrong)."""

    length: int
    window: int
    sinks: int
    budget_kind: str
    budget: float
    samples: int
    held_out: int
    task: str = "needle"

    def __post_init__(self):
        for name, (low, high) in {"length": (64, MAX_LENGTH), "samples": (1, 1000), "held_out": (1, 1000)}.items():
            object.__setattr__(self, name, whole_in_range(getattr(self, name), name, low, high))
        window, sinks = window_and_sinks(self.window, self.sinks)  # the strategy controls' rule, in their words
        object.__setattr__(self, "window", window)
        object.__setattr__(self, "sinks", sinks)
        if self.budget_kind not in BUDGET_KINDS:
            raise ValueError(f"budget_kind must be one of {', '.join(BUDGET_KINDS)}; got {self.budget_kind!r}.")
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}; got {self.task!r}.")
        if self.budget is None:
            raise ValueError("Give a budget value.")
        try:
            budget = float(self.budget)
        except (TypeError, ValueError):
            raise ValueError(f"The budget must be a number, got {self.budget!r}.") from None
        if not math.isfinite(budget):
            raise ValueError(f"The budget must be a finite number, got {self.budget!r}.")

    def to_budget(self):
        from swaa_core.eval.budget import Budget

        if self.budget_kind == "full layers":
            if float(self.budget) != int(self.budget):
                raise ValueError(f"A number of full layers must be a whole number, got {self.budget!r}.")
            return Budget(full_layers=int(self.budget))
        if self.budget_kind == "prefill share":
            return Budget(prefill=float(self.budget))
        return Budget(kv_gib=float(self.budget))


def run_advice(model: str | None, settings: AdvisorSettings, cancel: threading.Event | None = None, progress=None):
    """The advice for ``model`` (None: the embedded default) under ``settings``."""
    from swaa_core.eval.recommend import advise

    loaded = loaded_model(model or DEFAULT_MODEL)
    with loaded.lock:  # one run of a model at a time, as the page's other runs
        return advise(loaded.model, loaded.tokenizer, length=settings.length, budget=settings.to_budget(),
                      window=settings.window, sinks=settings.sinks, samples=settings.samples,
                      held_out=settings.held_out, task=settings.task, cancel=cancel, progress=progress,
                      model_name=loaded.info.name)  # fmt: skip


def run_for_session(model, settings: AdvisorSettings, request: gr.Request | None, progress=None):
    """:func:`run_advice` under the session's cancel flag, so its Stop (or the API's /stop_run) ends it between two
    forwards."""
    with session_run(request) as cancel:
        return run_advice(model, settings, cancel, progress)


def scores_figure(advice) -> go.Figure:
    """Bars of each layer's score (nats per answer token) with its spread, chosen layers in the full-attention
    colour, on the layer axis 0..L-1."""
    if advice is None:
        return message_figure("Run the advisor to see which layers need full attention.")
    s = advice.scores
    chosen = set(advice.config.non_sliding_layers)
    n = len(s.mean)
    fig = go.Figure()
    fig.add_bar(x=list(range(n)), y=s.mean, error_y=dict(type="data", array=s.spread, visible=True),
                marker_color=[FA_COLOR if i in chosen else SWA_COLOR for i in range(n)],
                hovertemplate="layer %{x}<br>score %{y:.3f}<extra></extra>")  # fmt: skip
    fig.update_xaxes(
        title_text="layer (full attention: highlighted)", tickmode="linear", dtick=1, range=[-0.5, n - 0.5]
    )
    unit = "attention mass" if s.method == "mass" else "NLL fall, nats per answer token"
    fig.update_yaxes(title_text=unit)
    return style_figure(fig, height=300, title=f"Need for full attention per layer ({s.method})")


def candidates_figure(advice) -> go.Figure:
    """The held-out candidates on the accuracy-vs-latency plot (forward time relative to full attention), with
    the paper's points."""
    if advice is None:  # the sweep's empty plot would tell the user to run the sweep
        return message_figure("Run the advisor: its candidates appear here beside the paper's points.")
    points = [dict(label=c.label, accuracy=c.accuracy, time_s=c.seconds, is_full=c.kind == "full",
                   samples=len(advice.held_out_seeds)) for c in advice.candidates]  # fmt: skip
    return tradeoff_figure(points, time_label="forward time per held-out sample")


def candidates_rows(advice) -> list[list]:
    from swaa_core.runtime.units import format_bytes

    if advice is None:
        return []
    return [[c.label, "all" if c.kind == "full" else ",".join(map(str, c.full_layers)), round(100 * c.accuracy),
             round(c.nll, 3), round(c.seconds, 2), round(100 * c.prefill_share), format_bytes(c.kv_bytes)]
            for c in advice.candidates]  # fmt: skip


def summary_text(advice) -> str:
    if advice is None:
        return ""
    d = advice.decisions
    lines = [
        f"**Recommended:** {advice.config.describe()} ({advice.budget} -> {advice.full_layers} full layers, "
        f"{advice.seconds:.0f} s).",
        f"FA decode {'on' if d['fa_decode']['chosen'] else 'off'}, {d['sinks']['chosen']} sinks (kept only where they "
        f"lower held-in NLL by more than {d['tolerance']} nats per token).",
        *[f"_{n}_" for n in advice.notes],
    ]
    return "\n\n".join(lines)


def advise_page(ui, model, settings: AdvisorSettings, request: gr.Request = None, progress=gr.Progress()) -> dict:
    """The Advise button: the figures, the table, the summary and the advice kept for Apply."""
    advice = run_for_session(model, settings, request, lambda d, t, w: progress((d, max(t, 1)), desc=w))
    return {
        ui.advice_scores: scores_figure(advice),
        ui.advice_tradeoff: candidates_figure(advice),
        ui.advice_table: candidates_rows(advice),
        ui.advice_summary: summary_text(advice),
        ui.advice_config: advice.config.to_dict(),
    }


def apply_advice(ui, config: dict | None, model) -> dict:
    """Apply: the strategy controls set to the recommendation."""
    if not config:
        raise ValueError("Run the advisor first: there is no recommendation to apply.")
    n = num_layers(loaded_model(model or DEFAULT_MODEL))
    return strategy_updates(ui, Strategy.from_config(SWAAConfig.from_dict(config).validate(n), n))


def layout(ui, d: Settings) -> None:
    gr.Markdown("Measure which layers need full attention for this model at one length, keep the best ones a budget "
                "allows, and check the choice on held-out samples beside the paper's periodic patterns. On a CPU "
                "this takes minutes (one forward per layer and sample).")  # fmt: skip
    with gr.Row():
        ui.advice_length = gr.Number(1536, label="Length (tokens)", precision=0)
        ui.advice_window = gr.Number(256, label="Window W", precision=0)
        ui.advice_sinks = gr.Number(16, label="Sinks", precision=0)
        ui.advice_task = gr.Dropdown(list(TASKS), value="needle", label="Calibration task")
    with gr.Row():
        ui.advice_budget_kind = gr.Radio(list(BUDGET_KINDS), value="full layers", label="Budget")
        ui.advice_budget = gr.Number(8, label="Budget value")
        ui.advice_samples = gr.Number(2, label="Calibration samples", precision=0)
        ui.advice_held_out = gr.Number(2, label="Held-out samples", precision=0)
    with gr.Row():
        ui.advise = gr.Button("Advise", variant="primary")
        ui.advise_apply = gr.Button("Apply recommendation")
    ui.advice_summary = gr.Markdown()
    ui.advice_scores = gr.Plot(scores_figure(None))
    ui.advice_tradeoff = gr.Plot(candidates_figure(None))
    ui.advice_table = gr.Dataframe(headers=["candidate", "full layers", "accuracy %", "NLL/token", "forward s",
                                            "prefill % (FLOPs)", "KV"], interactive=False)  # fmt: skip
    ui.advice_config = gr.State(None)


def wire(ui, events) -> None:
    fields = ("length", "window", "sinks", "budget_kind", "budget", "samples", "held_out", "task")
    settings = Group(AdvisorSettings, {name: getattr(ui, f"advice_{name}") for name in fields})
    outputs = [ui.advice_scores, ui.advice_tradeoff, ui.advice_table, ui.advice_summary, ui.advice_config]
    events.on(ui.advise.click, advise_page, [ui.active_model, settings], outputs, concurrency_id=HEAVY)
    events.on(ui.advise_apply.click, apply_advice, [ui.advice_config, ui.active_model],
              [getattr(ui, name) for name in STRATEGY], concurrency_limit=None)  # fmt: skip
