"""Plotly figures of what attention does: attention maps (full attention next to SWAA), mask pictures and layer
plans. Pure functions of numbers; nothing here runs a model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from .plots import FA_COLOR, SWA_COLOR, style_figure, subplot_titles, wrap_label

NEEDLE_COLOR = "#2ca25f"
# The window-edge label's width as a share of a map's width (two short lines at 12 px in a ~300 px map, with slack).
EDGE_LABEL_SHARE = 0.3
# Labels inside the attention maps sit over dark weights and over the blank (masked) area alike: dark text on a
# light box stays readable on both.
LABEL_BOX = dict(font=dict(color="#1f2d3d", size=12), bgcolor="rgba(255,255,255,0.85)", borderpad=2)


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
    titles, above = subplot_titles(["Full attention", swaa_label])
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=titles,
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
                    title="weight",
                    tickvals=[-4, -3, -2, -1, 0],
                    ticktext=["≤1e-4", "1e-3", "0.01", "0.1", "1"],
                    thickness=12,
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
        fig.update_xaxes(title_text="key (token)", range=[-0.5, fa.tokens - 0.5], row=1, col=col)
    fig.update_yaxes(title_text="query (token)", autorange="reversed", row=1, col=1)
    fig.update_yaxes(autorange="reversed", row=1, col=2)
    head_text = "mean of heads" if head is None else f"head {head}"
    pooled_text = f", pooled {fa.scale:.1f}×{fa.scale:.1f} tokens per cell" if fa.scale > 1 else ""
    title = f"Layer {layer}: attention weights (log scale), {head_text}{pooled_text}"
    return style_figure(fig, height=380, title=title, above_plot=above)


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
        # At the edge's midpoint, on the masked side when its room to the left holds the label, else on the
        # band's side: a label reaching left past key 0 ran into the full-attention map beside this one.
        masked_side = (n - window) / 2 >= EDGE_LABEL_SHARE * n
        fig.add_annotation(
            x=(n - window) / 2, y=(window + n) / 2, text=f"window edge<br>(W={window})", showarrow=False,
            xanchor="right" if masked_side else "left", xshift=-3 if masked_side else 3, **LABEL_BOX, row=1, col=col,
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
    titles, above = subplot_titles([p.label for p in panels])
    fig = make_subplots(
        rows=1,
        cols=cols,
        subplot_titles=titles,
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
    fig.update_yaxes(title_text="query (token)", row=1, col=1)
    height = 260 if cols > 2 else 300
    title = f"What each token may see in layer {layer}, in tokens (dotted: generation starts)"
    return style_figure(fig, height=height, title=title, above_plot=above)


def _short_label(label: str, limit: int = 72) -> str:
    """A config's name over its strips, cut short past ``limit`` characters (the full name is on hover)."""
    return label if len(label) <= limit else label[: limit - 1] + "…"


def layer_plan_figure(rows: Sequence[tuple[str, list[bool], list[bool]]]) -> go.Figure:
    """One pair of strips per config: which layers slide in prefill and in decode (True = full attention). Each
    config's name is written above its pair, across the figure, in empty rows that hold its lines: as tick labels
    beside the strips, long recipe names left a phone's strips a sliver of the width."""
    names = [wrap_label(_short_label(label), 36) for label, _, _ in rows]
    room = max((name.count("<br>") + 1 for name in names), default=1)  # empty rows above each pair
    z, ticks, text, full_labels = [], [], [], []
    n_layers = len(rows[0][1]) if rows else 0
    for label, prefill_fa, decode_fa in rows:
        for _ in range(room):
            z.append([None] * n_layers)
            ticks.append("")
            text.append([""] * n_layers)
            full_labels.append([label] * n_layers)
        for stage, flags in (("prefill", prefill_fa), ("decode", decode_fa)):
            full_labels.append([f"{label} · {stage}"] * n_layers)
            z.append([1 if f else 0 for f in flags])
            ticks.append(stage)
            text.append(["FA" if f else "SWA" for f in flags])
    fig = go.Figure(
        go.Heatmap(
            z=z,
            y=list(range(len(z))),
            x=list(range(n_layers)),
            text=text,
            zmin=0,
            zmax=1,
            colorscale=[[0, SWA_COLOR], [0.5, SWA_COLOR], [0.5, FA_COLOR], [1, FA_COLOR]],
            showscale=False,
            xgap=2,
            ygap=3,
            customdata=full_labels,
            hovertemplate="%{customdata}, layer %{x}: %{text}<extra></extra>",
            hoverongaps=False,
        )
    )
    for i, name in enumerate(names):  # centred in the empty rows above the config's strips
        fig.add_annotation(text=name, x=0, xref="paper", xanchor="left", y=i * (room + 2) + (room - 1) / 2,
                           align="left", showarrow=False, font=dict(size=12))  # fmt: skip
    # Every layer ticked up to 16 layers, every 5th beyond (30 vertical numbers in 600 px were unreadable).
    fig.update_xaxes(
        title_text="layer (orange: FA, blue: SWA)",
        dtick=1 if n_layers <= 16 else 5,
        tickangle=0,
    )
    fig.update_yaxes(autorange="reversed", tickvals=list(range(len(z))), ticktext=ticks)
    fig = style_figure(fig, height=80 + 22 * len(z))
    fig.update_layout(margin=dict(t=40, b=44))  # t: the toolbar's band, so it does not sit on the top row
    return fig
