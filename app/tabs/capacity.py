"""The "Capacity" tab: sequences per GPU and decode tokens/s per paper recipe for a curated model on a chosen card and
context, from swaa_core.models.capacity (pure arithmetic: any machine, no model loaded), with the points measured by
benchmarks/gpu_capacity.py (docs/results/gpu_capacity*.json) beside them, labelled with their card."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from swaa_core.eval.recipes import list_recipes, resolve_recipe
from swaa_core.models.capacity import GPU, GPUS, capacity, custom_gpu
from swaa_core.models.memory import model_shape
from swaa_core.models.registry import get_model_entry, list_models

from .. import plots
from ..events import Group
from ..state import Settings, whole_in_range, window_and_sinks

TITLE, ID = "Capacity", "capacity"
RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results"
CUSTOM = "Custom"
CONTEXTS = {"32K": 32768, "128K": 131072}
PREFILL = {
    "one request at a time (a server)": "row",
    "whole batch in one forward (fast_generate today)": "batch",
}
DEFAULT_MODEL = "meta-llama/Llama-3.1-8B-Instruct"  # the shape benchmarks/gpu_capacity.py measures
HELP = (
    "How many sequences of one context length fit on one GPU next to the model's weights, and how fast they decode "
    "together. **Model, not measured**: the fixed-buffer decoder's KV buffers (sinks + W slots per evicting sliding "
    "layer; prompt + new slots per full or FA-decode layer), the prefill's activations and cache, the logits and a 5% "
    "reserve; decode tokens/s from a bandwidth roofline (every weight and every row's KV buffers read once per step, "
    "at the card's measured copy rate). Diamonds: batches measured with `benchmarks/gpu_capacity.py`, labelled with "
    "their card."
)
COLUMNS = {  # row key -> table header
    "recipe": "recipe",
    "sequences per GPU": "seqs / GPU",
    "limited by": "limited by",
    "KV GiB per sequence": "KV GiB / seq",
    "decode tok/s (all rows)": "tok/s, all rows",
    "tok/s at batch 1": "tok/s, batch 1",
    "serve N requests (s)": "serve N (s)",
    "serve N at batch 1 (s)": "serve N, batch 1 (s)",
    "measured": "measured",
}


@dataclass(frozen=True)
class CapacitySettings:
    """The tab's widgets, checked on construction (ValueError with a message for the user)."""

    model: str
    gpu: str
    memory_gib: float
    bandwidth_tb_s: float
    context: str
    prompt_tokens: int
    new_tokens: int
    prefill: str
    window: int
    sinks: int
    requests: int

    def __post_init__(self) -> None:
        get_model_entry(self.model)  # a curated name, or a message listing them
        if self.gpu not in (*GPUS, CUSTOM):
            raise ValueError(f"Choose a GPU among {', '.join((*GPUS, CUSTOM))}, got {self.gpu!r}.")
        if self.context not in (*CONTEXTS, CUSTOM):
            raise ValueError(f"Choose a context among {', '.join((*CONTEXTS, CUSTOM))}, got {self.context!r}.")
        if self.prefill not in PREFILL:
            raise ValueError(f"Choose how prompts are prefilled: {' or '.join(PREFILL)}; got {self.prefill!r}.")
        for what, value in (("GPU memory (GiB)", self.memory_gib), ("Bandwidth (TB/s)", self.bandwidth_tb_s)):
            if self.gpu == CUSTOM and not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"{what} must be a positive number, got {value!r}.")
        window, sinks = window_and_sinks(self.window, self.sinks)
        prompt = CONTEXTS.get(self.context) or whole_in_range(self.prompt_tokens, "Prompt tokens", 1, 10_000_000)
        checked = dict(window=window, sinks=sinks, prompt_tokens=prompt,
                       new_tokens=whole_in_range(self.new_tokens, "New tokens", 1, 1_000_000),
                       requests=whole_in_range(self.requests, "Requests", 1, 1_000_000))  # fmt: skip
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    @property
    def card(self):
        if self.gpu == CUSTOM:
            return custom_gpu(float(self.memory_gib), float(self.bandwidth_tb_s))
        return GPUS[self.gpu]

    @property
    def prompt(self) -> int:
        """Prompt tokens: the chosen context's, or the custom field's."""
        return self.prompt_tokens


def capacity_rows(s: CapacitySettings) -> list[dict]:
    """One row per paper recipe (full attention first): the model's figures and the measured ones, if any."""
    entry = get_model_entry(s.model)
    shape, mode = model_shape(entry), PREFILL[s.prefill]
    recipes = list_recipes()
    configs = {r.name: resolve_recipe(r, entry.num_layers, window=s.window, keep_first=s.sinks) for r in recipes}
    measured = measured_points(shape, configs, s.prompt, s.new_tokens, mode, s.card)
    rows = []
    for recipe in recipes:
        cfg = configs[recipe.name]
        cap = capacity(shape, cfg, s.card, prompt_tokens=s.prompt, new_tokens=s.new_tokens, prefill=mode,
                       label=recipe.title)  # fmt: skip
        batch = min(s.requests, cap.max_batch)
        rows.append({
            "recipe": recipe.title,
            "name": recipe.name,
            "sequences per GPU": cap.max_batch,
            "limited by": cap.phase,
            "KV GiB per sequence": round(cap.kv_bytes_per_seq / 2**30, 3),
            "decode tok/s (all rows)": round(cap.tokens_per_s(), 1),
            "tok/s at batch 1": round(cap.tokens_per_s(1), 1) if cap.max_batch else 0.0,
            "serve N requests (s)": round(cap.serve_seconds(s.requests, batch), 1) if batch else math.inf,
            "serve N at batch 1 (s)": round(cap.serve_seconds(s.requests, 1), 1) if cap.max_batch else math.inf,
            "measured": measured.get(recipe.name, []),
        })  # fmt: skip
    return rows


def measured_points(shape, configs: dict, prompt: int, new: int, mode: str, card: GPU,
                    folder: Path | None = None) -> dict:  # fmt: skip
    """{recipe name: [{"machine", "batch", "fits", "tokens_per_s", "model_max_batch"}]} from every
    gpu_capacity*.json in ``folder`` (default docs/results) measured on ``card`` (:func:`same_card`) with this
    shape, prompt and new tokens, with the same config as ``configs`` ({name: SWAAConfig or None}): per file and
    recipe, the run at the largest batch of the "decode" section (the serving capacity) for ``mode`` "row", of the
    "batched" section run with batch prefill for "batch" (a batched section prefilled row by row is neither: its
    largest batch is the requests served)."""
    section = "decode" if mode == "row" else "batched"
    keys = ("num_layers", "num_kv_heads", "head_dim", "hidden_size", "intermediate_size", "vocab_size")
    wanted = {name: cfg.to_dict() if cfg is not None else None for name, cfg in configs.items()}
    out: dict[str, list] = {}
    for path in sorted((folder or RESULTS).glob("gpu_capacity*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        info = data.get("capacity") or {}
        if any(info.get("shape", {}).get(k) != getattr(shape, k) for k in keys) or info.get("new_tokens") != new:
            continue
        if not same_card(info.get("machine") or {}, card):
            continue
        machine = f"{info['machine']['gpu']} ({data.get('date', '')[:10]})"
        largest: dict[str, dict] = {}
        for r in (data.get("sections", {}).get(section) or {}).get("rows", []):
            name = r.get("recipe")
            if r.get("context") != prompt or name not in wanted or r.get("config") != wanted[name]:
                continue
            if section == "batched" and r.get("prefill", data.get("args", {}).get("prefill", "batch")) != "batch":
                continue
            if name not in largest or r["batch"] > largest[name]["batch"]:
                largest[name] = r
        for name, r in largest.items():
            out.setdefault(name, []).append({
                "machine": machine, "batch": r["batch"], "fits": r["fits"], "tokens_per_s": r.get("tokens_per_s"),
                "model_max_batch": r.get("model_max_batch"),
            })  # fmt: skip
    return out


def same_card(machine: dict, card: GPU) -> bool:
    """Whether a result's ``machine`` ({"gpu": torch's device name, "memory_gib"}) is ``card``: one of
    :data:`~swaa_core.models.capacity.GPUS` (never a card given by its figures) that names the device among its
    ``devices`` (an H100 PCIe or a GH200 is not the modelled H100 SXM or H200) and whose memory is within 2% of what
    the device reported."""
    if card not in GPUS.values() or machine.get("gpu") not in card.devices:
        return False
    memory = machine.get("memory_gib") or 0
    return abs(memory * 2**30 - card.memory_bytes) <= 0.02 * card.memory_bytes


def capacity_figure(rows: list[dict], title: str) -> go.Figure:
    """Sequences per GPU and decode tokens/s per recipe: bars from the model (full attention orange), diamonds where
    measured (their card in the legend). The two panels are stacked, each over the whole width: side by side, a
    phone left each about 70 px of plot beside the recipe names."""
    titles, above = plots.subplot_titles(["sequences per GPU", "decode tokens/s (all rows)"])
    fig = make_subplots(rows=2, cols=1, vertical_spacing=0.12, subplot_titles=titles)
    names = [plots.wrap_label(r["recipe"], 16) for r in rows]  # short lines: long names left a phone no plot
    colors = [plots.FA_COLOR if r["name"] == "full" else plots.SWA_COLOR for r in rows]
    tops = {1: 1.0, 2: 1.0}  # the longest bar or diamond of each panel
    for panel, key in ((1, "sequences per GPU"), (2, "decode tok/s (all rows)")):
        values = [r[key] for r in rows]
        tops[panel] = max([tops[panel], *values])
        # the value beside each bar: 1 sequence next to 400 is a bar too short to see
        fig.add_bar(y=names, x=values, orientation="h", marker_color=colors, name="model", showlegend=False,
                    text=[f"{v:,.0f}" for v in values], textposition="outside", cliponaxis=False, row=panel, col=1,
                    hovertemplate="%{y}: %{x:,} (model)<extra></extra>")  # fmt: skip
    points = [(name, p) for name, r in zip(names, rows, strict=True) for p in r["measured"] if p["fits"]]
    for machine in dict.fromkeys(p["machine"] for _, p in points):
        mine = [(name, p) for name, p in points if p["machine"] == machine]
        for panel, key in ((1, "batch"), (2, "tokens_per_s")):
            tops[panel] = max([tops[panel], *(p[key] for _, p in mine)])
            hover = f"%{{y}}: %{{x:,}} measured on {machine}<extra></extra>"
            # open diamonds: the bar's value label stays readable through them
            fig.add_scatter(y=[n for n, _ in mine], x=[p[key] for _, p in mine], mode="markers", row=panel, col=1,
                            marker=dict(symbol="diamond-open", size=12, color="#222", line=dict(width=2)),
                            name=plots.wrap_label(f"measured: {machine}", 22), showlegend=panel == 1,
                            hovertemplate=hover)  # fmt: skip
    for panel, top in tops.items():
        fig.update_xaxes(range=[0, 1.3 * top], row=panel, col=1)  # room for the labels
    fig.update_yaxes(autorange="reversed")
    return plots.style_figure(fig, height=160 + 80 * len(rows), title=title, above_plot=above)


def show(s: CapacitySettings):
    """The tab's figure, table and note."""
    rows = capacity_rows(s)
    card = s.card
    title = f"{s.model.split('/')[-1]} on {card.name}: {s.prompt:,} + {s.new_tokens} tokens"
    table = [[_cell(r, key) for key in COLUMNS] for r in rows]
    note = (
        f"Card: {card.name}, {card.memory_bytes / 2**30:.1f} GiB, {card.bandwidth / 1e12:.1f} TB/s "
        f"({card.source or 'given'}). Serve times: {s.requests} requests in waves of the largest batch (at most "
        f"{s.requests}), each wave prefilled at {card.matmul_flops / 1e12:.0f} TFLOP/s then decoding; roofline "
        "figures are lower bounds on time. Prefill "
        + (
            "one request at a time, beside the batch's buffers."
            if PREFILL[s.prefill] == "row"
            else "of the whole batch in one forward: every row's activations at once."
        )  # fmt: skip
    )
    return plots.plot_data(capacity_figure(rows, title), "swaa-capacity"), table, note


def _cell(row: dict, column: str):
    if column != "measured":
        value = row[column]
        # the page's JSON sends inf as null, an empty cell: say why there is no time
        return "does not fit" if isinstance(value, float) and not math.isfinite(value) else value
    if not row["measured"]:
        return "—"
    return "; ".join(
        f"{p['machine']}: {p['batch']} rows " + (f"fit, {p['tokens_per_s']:,} tok/s" if p["fits"] else "did not fit")
        for p in row["measured"]
    )


# CapacitySettings' fields -> the tab's widgets on ``ui``
WIDGETS = dict(model="cap_model", gpu="cap_gpu", memory_gib="cap_memory", bandwidth_tb_s="cap_bandwidth",
               context="cap_context", prompt_tokens="cap_prompt", new_tokens="cap_new", prefill="cap_prefill",
               window="cap_window", sinks="cap_sinks", requests="cap_requests")  # fmt: skip


def layout(ui, d: Settings) -> None:
    """The tab's widgets (kept on ``ui`` as ``cap_*``) and its first picture."""
    gr.Markdown(HELP)
    names = [e.name for e in list_models()]
    with gr.Row():
        ui.cap_model = gr.Dropdown(names, value=DEFAULT_MODEL, label="Model (its config's shape)", scale=2)
        ui.cap_gpu = gr.Radio([*GPUS, CUSTOM], value="H100 80GB", label="GPU", scale=2)
        ui.cap_memory = gr.Number(80, label="Custom: memory (GiB)", minimum=1, scale=1)
        ui.cap_bandwidth = gr.Number(3.0, label="Custom: bandwidth (TB/s)", minimum=0.1, scale=1)
    with gr.Row():
        ui.cap_context = gr.Radio([*CONTEXTS, CUSTOM], value="128K", label="Prompt", scale=2)
        ui.cap_prompt = gr.Number(65536, label="Custom: prompt tokens", precision=0, minimum=1, scale=1)
        ui.cap_new = gr.Number(512, label="New tokens", precision=0, minimum=1, scale=1)
        ui.cap_requests = gr.Number(16, label="Requests to serve (N)", precision=0, minimum=1, scale=1)
    with gr.Row():
        ui.cap_prefill = gr.Radio(list(PREFILL), value=next(iter(PREFILL)), label="Prefill", scale=3)
        ui.cap_window = gr.Number(2048, label="Window W", precision=0, minimum=1, scale=1)
        ui.cap_sinks = gr.Number(10, label="Sinks (sink recipes)", precision=0, minimum=0, scale=1)
    figure, table, note = show(CapacitySettings(**{field: getattr(ui, name).value for field, name in WIDGETS.items()}))
    ui.cap_plot = gr.Plot(figure, label="Capacity", elem_id="swaa-capacity")
    # no fixed column widths: headers keep whole words and the table scrolls in its box on a phone
    ui.cap_table = gr.Dataframe(table, headers=list(COLUMNS.values()), label="Per recipe", wrap=True,
                                interactive=False)  # fmt: skip
    ui.cap_note = gr.Markdown(note, elem_classes="swaa-muted")


def update(ui, settings: CapacitySettings) -> dict:
    """The figure, table and note for the widgets' values."""
    figure, table, note = show(settings)
    return {ui.cap_plot: figure, ui.cap_table: table, ui.cap_note: note}


def wire(ui, events) -> None:
    """Redraw on any change."""
    widgets = {field: getattr(ui, name) for field, name in WIDGETS.items()}
    for widget in widgets.values():
        events.light(widget.change, update, [Group(CapacitySettings, widgets)], [ui.cap_plot, ui.cap_table, ui.cap_note],
                     trigger_mode="always_last")  # fmt: skip
