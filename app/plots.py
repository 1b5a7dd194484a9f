"""Plotly figures: attention maps, mask pictures, layer plans, latency bars, the accuracy/latency trade-off and the
needle heatmap. Pure functions of numbers; nothing here runs a model.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
import torch
from gradio.components.plot import PlotData
from plotly.subplots import make_subplots

FA_COLOR = "#e8833a"  # full attention: warm
SWA_COLOR = "#3a78c2"  # sliding window: cool
NEEDLE_COLOR = "#2ca25f"
LIVE_COLORS = ["#3a78c2", "#7b4fb8", "#2a9d8f", "#c2455a", "#5e8c31", "#b8860b", "#1f4e79", "#8c564b"]
GRID_COLOR = "#d8dde6"
# Labels inside the attention maps sit over dark weights and over the blank (masked) area alike: dark text on a
# light box stays readable on both.
LABEL_BOX = dict(font=dict(color="#1f2d3d", size=12), bgcolor="rgba(255,255,255,0.85)", borderpad=2)
FONT = dict(family="Inter, system-ui, sans-serif", size=13)

# The paper's headline numbers (Qwen3-4B non-thinking, LongMemEval 24k, window 2k, no SFT / SFT, seconds per sample
# on GPU), drawn next to the live points on a relative time axis (full attention = 1).
PAPER_POINTS = (
    ("Full attention", 62, 63, 3.45),
    ("SWA", 16, 24, 0.43),
    ("SWA + FA decode", 21, 42, 2.0),
    ("SWA + 1/4 FA layers + FA decode", 32, 47, 2.4),
    ("SWA + 1/2 FA layers", 36, 55, 1.9),
    ("SWA + 1/2 FA layers + FA decode", 54, 59, 2.7),
)


def plot_data(fig: go.Figure, filename: str) -> PlotData:
    """A figure for gr.Plot with Plotly's own client-side PNG export configured (no kaleido, no server browser)."""
    spec = json.loads(fig.to_json())
    layout = spec.setdefault("layout", {})
    if not (layout.get("title") or {}).get("text"):
        # Gradio reserves a 100 px band above any figure whose layout has a title object, even an empty one.
        layout.pop("title", None)
    spec["config"] = {
        "displaylogo": False,
        "displayModeBar": True,
        "modeBarButtonsToRemove": ["select2d", "lasso2d", "autoScale2d"],
        "toImageButtonOptions": {"format": "png", "filename": filename, "scale": 2},
    }
    return PlotData(type="plotly", plot=json.dumps(spec))


def _style(fig: go.Figure, *, height: int, title: str | None = None) -> go.Figure:
    fig.update_layout(
        template="plotly_white",
        height=height,
        font=FONT,
        title=dict(text=title, x=0.01, font=dict(size=15)) if title else None,
        margin=dict(l=56, r=20, t=56 if title else 30, b=48),
        legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0),
    )
    return fig


def _wrap(text: str, width: int = 34) -> str:
    """Subplot titles side by side must not run into each other: break long labels into lines."""
    import textwrap

    return "<br>".join(textwrap.wrap(text, width)) or text


def message_figure(text: str, *, height: int = 260) -> go.Figure:
    """A blank figure that says why there is nothing to draw yet."""
    fig = go.Figure()
    fig.add_annotation(text=text, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper", font=dict(size=14))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _style(fig, height=height)


# ---------------------------------------------------------------- attention maps
@dataclass
class PooledAttention:
    """Attention probabilities pooled to at most ``cells`` x ``cells`` blocks; ``scale`` tokens per block side."""

    values: np.ndarray  # (heads, q_blocks, k_blocks), max of each block
    scale: float
    tokens: int


def pool_attention(probs: torch.Tensor, max_cells: int = 192) -> PooledAttention:
    """Max-pool (heads, q, k) probabilities so a long prompt fits on screen without hiding thin stripes."""
    if probs.dim() != 3:
        raise ValueError(f"Expected attention probabilities shaped (heads, q, k), got {tuple(probs.shape)}.")
    n = probs.shape[-1]
    cells = min(n, max_cells)
    pooled = torch.nn.functional.adaptive_max_pool2d(probs.float()[None], cells)[0]
    return PooledAttention(pooled.numpy(), n / cells, n)


def _first_center(scale: float) -> float:
    # Token t is drawn as the unit cell centred on t; a pooled cell of `scale` tokens is centred on their middle.
    return (scale - 1) / 2


def _log_weights(values: np.ndarray) -> np.ndarray:
    # Masked (exactly zero) weights become gaps so "not allowed" looks different from "allowed but tiny".
    out = np.full(values.shape, np.nan)
    nz = values > 0
    out[nz] = np.log10(np.clip(values[nz], 1e-4, 1.0))
    return out


def attention_figure(
    fa: PooledAttention,
    swaa: PooledAttention,
    *,
    head: int | None,
    layer: int,
    window: int | None,
    sinks: int,
    swaa_label: str,
    layer_slides: bool,
    needle_tokens: tuple[int, int] | None = None,
) -> go.Figure:
    """FA vs SWAA attention of one layer side by side; head None averages the heads (after pooling)."""
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=("Full attention", _wrap(swaa_label)),
        horizontal_spacing=0.08,
        shared_yaxes=True,
    )
    for col, pooled in ((1, fa), (2, swaa)):
        grid = pooled.values.mean(0) if head is None else pooled.values[head]
        fig.add_trace(
            go.Heatmap(
                z=_log_weights(grid),
                x0=_first_center(pooled.scale),
                dx=pooled.scale,
                y0=_first_center(pooled.scale),
                dy=pooled.scale,
                zmin=-4,
                zmax=0,
                colorscale="Viridis",
                showscale=col == 2,
                colorbar=dict(
                    title="weight", tickvals=[-4, -3, -2, -1, 0], ticktext=["≤1e-4", "1e-3", "0.01", "0.1", "1"]
                ),
                hovertemplate="query %{y:.0f} → key %{x:.0f}<br>log10 weight %{z:.2f}<extra></extra>",
            ),
            row=1,
            col=col,
        )
        _mark_regions(
            fig, col, pooled.tokens, window if (col == 2 and layer_slides) else None, sinks if col == 2 else 0
        )
        if needle_tokens:
            _mark_needle(fig, col, needle_tokens, pooled.tokens)
    for col in (1, 2):
        fig.update_xaxes(title_text="key position (token)", range=[-0.5, fa.tokens - 0.5], row=1, col=col)
    fig.update_yaxes(title_text="query position", autorange="reversed", row=1, col=1)
    fig.update_yaxes(autorange="reversed", row=1, col=2)
    head_text = "mean of heads" if head is None else f"head {head}"
    pooled_text = f", pooled {fa.scale:.1f}×{fa.scale:.1f} tokens per cell" if fa.scale > 1 else ""
    return _style(fig, height=470, title=f"Layer {layer}, {head_text}{pooled_text}")


def _mark_regions(fig: go.Figure, col: int, n: int, window: int | None, sinks: int) -> None:
    line = dict(color="white", width=1.5, dash="dash")
    if window is not None and window < n:
        # The window's far edge: key j = i - W + 1 for query i.
        fig.add_trace(
            go.Scatter(
                x=[-0.5, n - window + 0.5],
                y=[window - 1, n],
                mode="lines",
                line=line,
                name=f"window edge (W={window})",
                showlegend=False,
                hoverinfo="skip",
            ),
            row=1,
            col=col,
        )
        fig.add_annotation(
            x=(n - window) / 2, y=(window + n) / 2, text=f"window edge (W={window})", showarrow=False,
            xanchor="right", **LABEL_BOX, row=1, col=col,
        )  # fmt: skip
    if sinks and window is not None:
        fig.add_shape(
            type="rect",
            x0=-0.5,
            x1=sinks - 0.5,
            y0=-0.5,
            y1=n,
            fillcolor="rgba(255,255,255,0.18)",
            line=dict(color="white", width=1),
            row=1,
            col=col,
        )
        fig.add_annotation(
            x=sinks, y=n * 0.97, text=f"{sinks} sinks", showarrow=False, xanchor="left", **LABEL_BOX, row=1, col=col
        )


def _mark_needle(fig: go.Figure, col: int, span: tuple[int, int], n: int) -> None:
    start, end = span
    fig.add_shape(
        type="rect",
        x0=start - 0.5,
        x1=max(end, start + n / 150) - 0.5,
        y0=-0.5,
        y1=n,
        fillcolor="rgba(44,162,95,0.25)",
        line=dict(color=NEEDLE_COLOR, width=1.5),
        row=1,
        col=col,
    )
    fig.add_annotation(
        x=end, y=n * 0.9, text="fact", showarrow=False, xanchor="left", xshift=3,
        **{**LABEL_BOX, "font": dict(color="#17663a", size=12)}, row=1, col=col,
    )  # fmt: skip


# ---------------------------------------------------------------- masks and layer plans
@dataclass
class MaskPanel:
    label: str
    visible: np.ndarray  # (rows, cols) fraction of visible pairs per cell (1.0 / 0.0 when unpooled)
    scale: float  # tokens per cell
    prompt_tokens: int
    total_tokens: int


def pool_mask(mask: torch.Tensor, max_cells: int = 160) -> tuple[np.ndarray, float]:
    """Share of visible (query, key) pairs per cell, so a pooled picture stays truthful about the window width."""
    n = mask.shape[-1]
    cells = min(n, max_cells)
    pooled = torch.nn.functional.adaptive_avg_pool2d(mask.float()[None, None], cells)[0, 0]
    return pooled.numpy(), n / cells


def mask_figure(panels: Sequence[MaskPanel], *, layer: int) -> go.Figure:
    cols = max(1, len(panels))
    fig = make_subplots(
        rows=1,
        cols=cols,
        subplot_titles=[_wrap(p.label) for p in panels],
        horizontal_spacing=0.04,
        shared_yaxes=True,
    )
    colorscale = [[0.0, "#f3f5f9"], [1.0, SWA_COLOR]]
    for i, panel in enumerate(panels, start=1):
        fig.add_trace(
            go.Heatmap(
                z=panel.visible,
                x0=_first_center(panel.scale),
                dx=panel.scale,
                y0=_first_center(panel.scale),
                dy=panel.scale,
                xgap=1 if panel.total_tokens <= 48 else 0,
                ygap=1 if panel.total_tokens <= 48 else 0,
                zmin=0,
                zmax=1,
                colorscale=colorscale,
                showscale=False,
                hovertemplate="query %{y:.0f} → key %{x:.0f}<br>visible %{z:.0%}<extra></extra>",
            ),
            row=1,
            col=i,
        )
        if panel.total_tokens > panel.prompt_tokens:
            fig.add_hline(y=panel.prompt_tokens - 0.5, line=dict(color=FA_COLOR, width=1.5, dash="dot"), row=1, col=i)
        fig.update_xaxes(title_text="key", range=[-0.5, panel.total_tokens - 0.5], row=1, col=i)
        fig.update_yaxes(autorange="reversed", row=1, col=i)
    fig.update_yaxes(title_text="query (prompt, then generated)", row=1, col=1)
    height = 330 if cols > 2 else 380
    return _style(fig, height=height, title=f"What each token may see in layer {layer} (dotted: generation starts)")


def _short_label(label: str, limit: int = 44) -> str:
    """Row labels left of a strip: long recipe names would squeeze the strip itself (the full name is on hover)."""
    return label if len(label) <= limit else label[: limit - 1] + "…"


def layer_plan_figure(rows: Sequence[tuple[str, list[bool], list[bool]]]) -> go.Figure:
    """One pair of strips per config: which layers slide in prefill and in decode (True = full attention)."""
    z, labels, text, full_labels = [], [], [], []
    for label, prefill_fa, decode_fa in rows:
        for stage, flags in (("prefill", prefill_fa), ("decode", decode_fa)):
            full_labels.append(f"{label} · {stage}")
            z.append([1 if f else 0 for f in flags])
            labels.append(f"{_short_label(label)} · {stage}")
            text.append(["FA" if f else "SWA" for f in flags])
    n_layers = len(z[0]) if z else 0
    fig = go.Figure(
        go.Heatmap(
            z=z,
            y=list(range(len(z))),  # positions, not labels: two shortened labels may read alike
            x=list(range(n_layers)),
            text=text,
            zmin=0,
            zmax=1,
            colorscale=[[0, SWA_COLOR], [0.5, SWA_COLOR], [0.5, FA_COLOR], [1, FA_COLOR]],
            showscale=False,
            xgap=2,
            ygap=3,
            customdata=[[full] * n_layers for full in full_labels],
            hovertemplate="%{customdata}, layer %{x}: %{text}<extra></extra>",
        )
    )
    # Every layer ticked up to 16 layers, every 5th beyond (30 vertical numbers in 600 px were unreadable).
    fig.update_xaxes(
        title_text="layer (orange = full attention, blue = sliding window)",
        dtick=1 if n_layers <= 16 else 5,
        tickangle=0,
    )
    fig.update_yaxes(autorange="reversed", tickvals=list(range(len(z))), ticktext=labels)
    fig = _style(fig, height=80 + 30 * len(z))
    fig.update_layout(margin=dict(t=12, b=44))
    return fig


# ---------------------------------------------------------------- results
def latency_figure(rows: Sequence[dict]) -> go.Figure:
    """Stacked prefill + decode seconds per column, both over the same work in every column: the prompt, then the
    first ``timed_tokens`` generated tokens. Rows carry label, prefill_s, timed_total_s, timed_tokens,
    decode_tokens, decode_tokens_per_s (RunResult fields)."""
    from swaa_core.eval.latency import decode_note

    if not rows:
        return message_figure("Run a comparison to see latencies.")
    labels = [_wrap(r["label"], 30) for r in rows]  # long recipe names left no room for the bars on a phone
    prefill = [r["prefill_s"] for r in rows]
    decode = [max(r["timed_total_s"] - r["prefill_s"], 0.0) for r in rows]
    speed = [
        "" if not r["decode_tokens_per_s"] else decode_note(r) or f"{r['decode_tokens_per_s']:.1f} tok/s" for r in rows
    ]
    counts = {r["timed_tokens"] for r in rows}
    what = f"the first {counts.pop()} generated tokens" if len(counts) == 1 else "UNEQUAL token counts: do not compare"
    fig = go.Figure()
    fig.add_bar(y=labels, x=prefill, name="prefill (reading the prompt)", orientation="h", marker_color=SWA_COLOR)
    fig.add_bar(
        y=labels,
        x=decode,
        name=f"decode ({what})",
        orientation="h",
        marker_color=FA_COLOR,
        text=speed,
        textposition="outside",
        cliponaxis=False,
    )
    fig.update_layout(barmode="stack")
    fig.update_xaxes(title_text="seconds")
    fig.update_yaxes(autorange="reversed")
    fig = _style(fig, height=140 + 46 * len(rows), title=f"Where the time goes: the prompt, then {what}")
    fig.update_layout(margin=dict(r=90))  # room for the tok/s labels beyond the longest bar
    return fig


def tradeoff_figure(
    points: Sequence[dict], *, show_paper: bool = True, time_label: str = "time per sample"
) -> go.Figure:
    """Accuracy vs time per sample relative to full attention; points carry label, accuracy (0..1), time_s.

    One legend entry per live recipe (labels on the points would collide where recipes score alike); the paper's
    points are hollow grey markers for comparison."""
    fig = go.Figure()
    full = next((p for p in points if p.get("is_full")), None)
    if points:
        base = full["time_s"] if full and full["time_s"] > 0 else max(p["time_s"] for p in points)
        palette = iter(LIVE_COLORS * 3)
        for p in points:
            fig.add_scatter(
                x=[p["time_s"] / base],
                y=[100 * p["accuracy"]],
                mode="markers",
                marker=dict(size=14, color=FA_COLOR if p.get("is_full") else next(palette), line=dict(width=1)),
                name=p["label"],
                customdata=[[p["time_s"], p.get("samples", 0)]],
                hovertemplate=f"{p['label']}<br>accuracy %{{y:.0f}}%<br>%{{customdata[0]:.2f}} s per sample"
                " (n=%{customdata[1]})<extra></extra>",
            )
    if show_paper:
        fa_time = PAPER_POINTS[0][3]
        fig.add_scatter(
            x=[p[3] / fa_time for p in PAPER_POINTS],
            y=[p[1] for p in PAPER_POINTS],
            # Labelled only before a sweep: then they are all there is, and nothing collides with them.
            mode="markers" if points else "markers+text",
            textposition=["middle left", "middle right", "bottom center", "bottom center", "middle left", "top center"],
            textfont=dict(size=11, color="#666"),
            text=[p[0] for p in PAPER_POINTS],
            marker=dict(size=11, symbol="circle-open", color="#888", line=dict(width=2)),
            name="paper (Qwen3-4B, LongMemEval 24k, no SFT)",
            hovertemplate="paper: %{text}<br>accuracy %{y}%<extra></extra>",
        )
    if not points and not show_paper:
        return message_figure("Run the recipe sweep to draw the trade-off.")
    if not points:
        fig.add_annotation(
            text="Run the recipe sweep: each recipe you tick appears here as a coloured point beside the paper's "
            "(grey).",
            showarrow=False, x=0.5, y=1.0, xref="paper", yref="paper", yanchor="bottom", font=dict(size=13),
        )  # fmt: skip
    fig.update_xaxes(title_text=f"{time_label}, relative to full attention (1.0)", rangemode="tozero")
    fig.update_yaxes(title_text="accuracy (%)", range=[-5, 105])
    fig = _style(fig, height=460, title="Accuracy vs latency across recipes")
    fig.update_layout(legend=dict(orientation="v", x=1.02, y=1, xanchor="left", yanchor="top", font=dict(size=11)))
    return fig


def needle_heatmap_figure(grids: Sequence[tuple[str, list[int], list[float], np.ndarray]]) -> go.Figure:
    """grids: (label, lengths, depths, accuracy[depth, length]) per config, drawn side by side."""
    if not grids:
        return message_figure("Run the needle sweep to fill the heatmap.")
    fig = make_subplots(rows=1, cols=len(grids), subplot_titles=[_wrap(g[0], 48) for g in grids], shared_yaxes=True)
    for i, (_label, lengths, depths, acc) in enumerate(grids, start=1):
        text = [["" if math.isnan(v) else f"{100 * v:.0f}%" for v in row] for row in acc]
        fig.add_trace(
            go.Heatmap(
                z=acc,
                x=[str(n) for n in lengths],
                y=[f"{d:.2f}" for d in depths],
                zmin=0,
                zmax=1,
                colorscale="RdYlGn",
                text=text,
                texttemplate="%{text}",
                showscale=i == len(grids),
                colorbar=dict(title="correct", tickformat=".0%"),
                hovertemplate="length %{x} tokens, depth %{y}<br>correct %{z:.0%}<extra></extra>",
                xgap=2,
                ygap=2,
            ),
            row=1,
            col=i,
        )
        fig.update_xaxes(title_text="prompt tokens", type="category", row=1, col=i)
    fig.update_yaxes(title_text="fact depth (0 = start)", autorange="reversed", row=1, col=1)
    return _style(fig, height=400, title="Needle retrieval: length × depth")


def decode_speed_figure(points: Sequence[dict]) -> go.Figure:
    """Decode tokens/s against prompt length, one line per recipe (swaa_core.eval.latency.decode_speed_curve's points as
    dicts: label, prompt_tokens, tokens_per_s, new_tokens, error). Full attention slows down as its cache grows; a
    sliding cache holds the same number of keys at every length. Failed points are left out and listed."""
    good = [p for p in points if not p.get("error") and p.get("tokens_per_s")]
    if not good:
        return message_figure("Measure decode speed to draw it." if not points else "Every point failed; see below.")
    fig = go.Figure()
    palette = iter(LIVE_COLORS * 3)
    for label in dict.fromkeys(p["label"] for p in good):
        line = sorted((p for p in good if p["label"] == label), key=lambda p: p["prompt_tokens"])
        full = label.lower().startswith("full attention")
        fig.add_scatter(
            x=[p["prompt_tokens"] for p in line],
            y=[p["tokens_per_s"] for p in line],
            mode="lines+markers",
            name=label,
            line=dict(color=FA_COLOR if full else next(palette), width=3 if full else 2),
            customdata=[[1000 / p["tokens_per_s"], p.get("new_tokens", 0)] for p in line],
            hovertemplate=f"{label}<br>%{{x}} prompt tokens: %{{y:.1f}} tok/s"
            " (%{customdata[0]:.1f} ms per token over %{customdata[1]} tokens)<extra></extra>",
        )
    fig.update_xaxes(title_text="prompt tokens (cache size when decoding starts)", type="log")
    fig.update_yaxes(title_text="decode tokens/s", rangemode="tozero")
    return _style(fig, height=420, title="Decode speed vs context length")
