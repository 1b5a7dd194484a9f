"""Plotly figures of results: latency bars, the accuracy/latency trade-off, the needle heatmap and decode speed; and
the styling every figure shares (colours, layout, PNG export). Attention maps, masks and layer plans are in
app.maps. Pure functions of numbers; nothing here runs a model.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from gradio.components.plot import PlotData
from plotly.subplots import make_subplots

FA_COLOR = "#e8833a"  # full attention: warm
SWA_COLOR = "#3a78c2"  # sliding window: cool
LIVE_COLORS = ["#3a78c2", "#7b4fb8", "#2a9d8f", "#c2455a", "#5e8c31", "#b8860b", "#1f4e79", "#8c564b"]
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
# The labels drawn beside the paper's points (the full names are on hover): short enough not to collide on a phone.
PAPER_TAGS = ("full", "SWA", "+FA dec", "+¼ FA +FA dec", "+½ FA", "+½ FA +FA dec")
PAPER_TAG_POSITIONS = ("top center", "middle right", "bottom center", "bottom center", "top left", "top center")


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


TITLE_CHARS = 34  # a title line that fits a phone's plot (about 300 px at 15 px)
LABEL_BAND = 50  # px at the figure's top left under Gradio's label badge (and beside Plotly's toolbar)


def style_figure(
    fig: go.Figure, *, height: int, title: str | None = None, subtitle: str | None = None, above_plot: int = 0
) -> go.Figure:
    """The look every figure shares, at any width from a phone to a projector (Gradio draws it at its box's width):
    the title in short lines under Gradio's label badge, a legend at the bottom of the figure that wraps into more
    rows when narrow, with Plotly reserving its room (container-anchored), and margins that grow to fit the axis
    titles and tick labels (automargin) instead of cutting them. ``above_plot``: px of labels between the title and
    the plot (subplot titles), kept clear of the title."""
    text = wrap_label(title, TITLE_CHARS) if title else None
    top = 30 + above_plot  # the toolbar's band
    if text:
        top = LABEL_BAND + 20 * (text.count("<br>") + 1) + above_plot + 8
        if subtitle:
            sub = wrap_label(subtitle, TITLE_CHARS + 8)
            text += f"<br><span style='font-size:12px'>{sub}</span>"
            top += 16 * (sub.count("<br>") + 1)
    fig.update_layout(
        template="plotly_white",
        height=height + top,
        font=FONT,
        title=dict(
            text=text, x=0.01, xanchor="left", yref="container", y=1, yanchor="top", pad=dict(t=LABEL_BAND),
            font=dict(size=15),
        ) if text else None,
        margin=dict(l=56, r=20, t=top, b=48),
        legend=LEGEND,
    )  # fmt: skip
    fig.update_xaxes(automargin=True)
    fig.update_yaxes(automargin=True)
    return fig


def subplot_titles(labels: Sequence[str]) -> tuple[list[str], int]:
    """Titles for subplots side by side, short enough per line that they stay apart on a phone (each subplot gets
    about 200 / columns px there beside the axes and colour bar, at 12 px a character is about 7 px), and the px they take above the plots
    (style_figure's ``above_plot``)."""
    width = max(10, 28 // max(len(labels), 1))
    lines = [wrap_label(label, width) for label in labels]
    titles = [f"<span style='font-size:12px'>{line}</span>" for line in lines]
    return titles, 17 * max((line.count("<br>") + 1 for line in lines), default=0) + 8


# Below the plot, from its left edge, in rows: a legend beside the plot took half of it (issue 30).
LEGEND = dict(orientation="h", x=0, xanchor="left", yref="container", y=0, yanchor="bottom", font=dict(size=12))


def wrap_label(text: str, width: int = 34) -> str:
    """Labels side by side must not run into each other: break long labels into lines of at most ``width``
    characters, between words."""
    import textwrap

    return "<br>".join(textwrap.wrap(text, width, break_long_words=False)) or text


def message_figure(text: str, *, height: int = 260) -> go.Figure:
    """A blank figure that says why there is nothing to draw yet: in short lines from the left edge, which read on a
    phone's narrow plot as on a wide one."""
    fig = go.Figure()
    fig.add_annotation(
        text=wrap_label(text, 30), showarrow=False, x=0, xanchor="left", align="left", y=0.5, xref="paper",
        yref="paper", font=dict(size=14),
    )  # fmt: skip
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return style_figure(fig, height=height)


# ---------------------------------------------------------------- results
def latency_figure(rows: Sequence[dict]) -> go.Figure:
    """Stacked seconds per column over the same work in every column: time to the first generated token (reading
    the prompt), then from it to token ``timed_tokens`` (the decode steps the decode speed comes from, plus the
    fixed buffers' setup on that path). Rows carry label, ttft_s, timed_total_s, timed_tokens, decode_tokens,
    decode_tokens_per_s (RunResult fields); the bars' names are the board's ("time to first token")."""
    from swaa_core.eval.latency import decode_note

    rows = [r for r in rows if r["ttft_s"] is not None and r["timed_total_s"] is not None]  # stopped unmeasured
    if not rows:
        return message_figure("Run a comparison to see where the time goes.")
    # Each column's name is written above its bar, across the plot: as tick labels beside the bars, long recipe
    # names left a phone's bars a sliver of the width.
    at = list(range(len(rows)))
    first = [r["ttft_s"] for r in rows]
    decode = [max(r["timed_total_s"] - r["ttft_s"], 0.0) for r in rows]
    speed = [
        "" if not r["decode_tokens_per_s"] else decode_note(r) or f"{r['decode_tokens_per_s']:.1f} tok/s" for r in rows
    ]
    counts = {r["timed_tokens"] for r in rows}
    n = counts.pop() if len(counts) == 1 else None
    what = f"tokens 2–{n}" if n else "UNEQUAL token counts: do not compare"
    paths = sorted({r.get("decode_path") or "" for r in rows} - {""})
    path = paths[0] if len(paths) == 1 else "MIXED decode paths: do not compare" if paths else ""
    fig = go.Figure()
    bar = dict(y=at, orientation="h", width=0.45, customdata=[r["label"] for r in rows])
    fig.add_bar(x=first, name="time to first token (reading the prompt)", marker_color=SWA_COLOR,
                hovertemplate="%{customdata}: %{x:.2f} s to the first token<extra></extra>", **bar)  # fmt: skip
    fig.add_bar(
        x=decode,
        hovertemplate=f"%{{customdata}}: %{{x:.2f}} s for {what}<extra></extra>",
        **bar,
        name=f"decode ({what})",
        marker_color=FA_COLOR,
        text=speed,
        textposition="outside",
        cliponaxis=False,
    )
    fig.update_layout(barmode="stack")
    fig.update_xaxes(title_text="seconds" + (f"<br>decode path: {path}" if path else ""))
    fig.update_yaxes(autorange="reversed", showticklabels=False, range=[len(rows) - 0.5, -0.75])
    for i, row in enumerate(rows):
        fig.add_annotation(text=wrap_label(row["label"], 44), x=0, xref="paper", xanchor="left", y=i - 0.25,
                           yanchor="bottom", align="left", showarrow=False, font=dict(size=12))  # fmt: skip
    title = f"Where the time goes (s): the prompt to the first token, then {what}"
    fig = style_figure(fig, height=130 + 60 * len(rows), title=title)
    # Stacked bars list their legend last-first by default; each bar reads first token, then decode.
    # l: no tick labels on the left; r: room for the tok/s labels.
    fig.update_layout(margin=dict(l=16, r=90), legend_traceorder="normal")
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
            mode="markers+text",
            textposition=list(PAPER_TAG_POSITIONS),
            textfont=dict(size=11, color="#555"),  # 7:1 on white
            text=list(PAPER_TAGS),
            cliponaxis=False,
            marker=dict(size=11, symbol="circle-open", color="#888", line=dict(width=2)),
            name="paper (Qwen3-4B, LongMemEval 24k, no SFT)",
            customdata=[p[0] for p in PAPER_POINTS],
            hovertemplate="paper: %{customdata}<br>accuracy %{y}%<extra></extra>",
        )
    if not points and not show_paper:
        return message_figure("Run the recipe sweep to draw the trade-off.")
    if not points:
        fig.add_annotation(
            text=wrap_label("Run the recipe sweep: each recipe you tick appears as a coloured point beside the "
                            "paper's (grey).", 40),
            showarrow=False, x=0, xanchor="left", align="left", y=1.0, xref="paper", yref="paper",
            yanchor="bottom", font=dict(size=12),
        )  # fmt: skip
    # The axis says what is compared; how the time was measured (time_label) goes under the title.
    fig.update_xaxes(title_text="time (full attention = 1)", rangemode="tozero")
    fig.update_yaxes(title_text="accuracy (%)", range=[-5, 105])
    return style_figure(fig, height=420, title="Accuracy (%) vs time per sample, across recipes",
                        subtitle=f"time = {time_label}, relative to full attention")  # fmt: skip


def needle_heatmap_figure(grids: Sequence[tuple[str, list[int], list[float], np.ndarray]]) -> go.Figure:
    """grids: (label, lengths, depths, accuracy[depth, length]) per config, drawn side by side."""
    if not grids:
        return message_figure("Run the needle sweep to fill the heatmap.")
    titles, above = subplot_titles([g[0] for g in grids])
    fig = make_subplots(rows=1, cols=len(grids), subplot_titles=titles, shared_yaxes=True)
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
                colorbar=dict(title="correct", tickformat=".0%", thickness=12),
                hovertemplate="length %{x} tokens, depth %{y}<br>correct %{z:.0%}<extra></extra>",
                xgap=2,
                ygap=2,
            ),
            row=1,
            col=i,
        )
        fig.update_xaxes(title_text="tokens", type="category", row=1, col=i)
    fig.update_yaxes(title_text="fact depth (0 = start)", autorange="reversed", row=1, col=1)
    title = "Needle retrieval (% correct) by prompt length (tokens) × fact depth"
    return style_figure(fig, height=330, title=title, above_plot=above)


def decode_speed_figure(points: Sequence[dict]) -> go.Figure:
    """Decode tokens/s against prompt length, one line per recipe (swaa_core.eval.latency.decode_speed_curve's points as
    dicts: label, prompt_tokens, tokens_per_s, new_tokens, error). Full attention slows down as its cache grows; a
    sliding cache holds the same number of keys at every length. Failed points are left out and listed."""
    good = [p for p in points if not p.get("error") and p.get("tokens_per_s")]
    if not good:
        return message_figure("Measure decode speed to draw it." if not points else "Every point failed; see below.")
    fig = go.Figure()
    palette = iter(LIVE_COLORS * 3)
    labels = list(dict.fromkeys(p["label"] for p in good))
    for label in labels:
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
            " (%{customdata[0]:.1f} ms per token over %{customdata[1]} decode steps)<extra></extra>",
        )
    paths = " / ".join(sorted({p.get("decode_path") or "" for p in good} - {""}))
    axis = "prompt tokens" + (f"<br>decode path: {paths}" if paths else "")
    # Ticks only at the measured lengths: a log axis's own ticks crowd in minor labels ("6 7 8 9 100 2 3 …").
    lengths = sorted({p["prompt_tokens"] for p in good})
    fig.update_xaxes(title_text=axis, type="log", tickmode="array", tickvals=lengths,
                     ticktext=[f"{n:,}" for n in lengths], minor=dict(showgrid=False))  # fmt: skip
    fig.update_yaxes(title_text="decode tokens/s", rangemode="tozero")
    # The legend (style_figure's, at the bottom) wraps into rows on a phone: the figure grows by a row per recipe
    # so the plot keeps its height.
    return style_figure(fig, height=380 + 20 * len(labels), title="Decode speed (tokens/s) vs prompt length (tokens)")
