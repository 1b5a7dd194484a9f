"""Figures: pooling against numpy references, PNG export settings, and what the pictures encode (no model)."""

from __future__ import annotations

import json
from dataclasses import fields

import numpy as np
import pytest
import torch

from app import maps, plots
from app.columns import ColumnSpec, mask_figure, scaled_config
from swaa_core.engine.config import SWAAConfig


def test_attention_pooling_keeps_the_block_maximum():
    rng = np.random.default_rng(0)
    probs = rng.random((3, 12, 12)).astype(np.float32)
    pooled = maps.pool_attention(torch.from_numpy(probs), max_cells=4)
    expected = probs.reshape(3, 4, 3, 4, 3).max(axis=(2, 4))
    np.testing.assert_allclose(pooled.values, expected)
    assert pooled.scale == 3 and pooled.tokens == 12


def test_short_prompts_are_not_pooled():
    probs = torch.rand(2, 7, 7)
    pooled = maps.pool_attention(probs, max_cells=192)
    np.testing.assert_array_equal(pooled.values, probs.numpy())
    assert pooled.scale == 1


def test_mask_pooling_is_the_share_of_visible_pairs():
    n, w = 16, 4
    i, j = np.indices((n, n))
    mask = (j <= i) & (i - j < w)
    visible, scale = maps.pool_mask(torch.from_numpy(mask), max_cells=4)
    np.testing.assert_allclose(visible, mask.reshape(4, 4, 4, 4).mean(axis=(1, 3)))
    assert scale == 4


def test_pooled_mask_picture_keeps_the_window_fraction():
    """A 4K-token prompt is drawn at reduced scale; the last prompt row must still show W/n of the keys."""
    cfg = SWAAConfig(sliding_window_size=256)
    fig = mask_figure([ColumnSpec("SWA", cfg)], prompt_tokens=4096, new_tokens=0, layer=0)
    z = np.asarray(fig.data[0].z)
    assert z[-1].mean() == pytest.approx(256 / 4096, rel=0.1)
    assert z[-1, 0] == 0  # the start of the prompt is out of the last token's window


def test_a_long_prompts_mask_picture_keeps_the_configs_mask_kind():
    """Chunks of 512 over 4096 tokens are drawn at a quarter of the size: chunks of 128 over 1024, not a window."""
    cfg = SWAAConfig(sliding_window_size=512, mask_kind="chunked")
    fig = mask_figure([ColumnSpec("chunks", cfg)], prompt_tokens=4096, new_tokens=0, layer=0)
    i, j = np.indices((1024, 1024))
    drawn = (j <= i) & (j // 128 == i // 128)
    np.testing.assert_allclose(np.asarray(fig.data[0].z), maps.pool_mask(torch.from_numpy(drawn))[0])


def test_scaling_a_config_for_its_picture_keeps_every_field_it_does_not_scale():
    cfg = SWAAConfig(sliding_window_size=512, keep_first=8, force_fa_decode=[1], non_sliding_layers=[0, 2],
                     mask_kind="chunked")  # fmt: skip
    default = SWAAConfig()
    unset = [f.name for f in fields(SWAAConfig) if getattr(cfg, f.name) == getattr(default, f.name)]
    assert not unset, f"give {unset} a value other than the default here, so the check below covers it"
    scaled = scaled_config(cfg, 4.0)
    for f in fields(SWAAConfig):
        expected = {"sliding_window_size": 128, "keep_first": 2}.get(f.name, getattr(cfg, f.name))
        assert getattr(scaled, f.name) == expected, f.name


def test_png_export_is_plotly_client_side():
    data = plots.plot_data(plots.message_figure("hello"), "my-plot")
    spec = json.loads(data.plot)
    assert spec["config"]["toImageButtonOptions"]["filename"] == "my-plot"
    assert spec["config"]["displayModeBar"] is True


def _timed(label, ttft, timed_total, speed, tokens=32, total=99.0):
    # prefill_s (the prompt's forward alone) differs from the time to first token: the bars must use the latter
    return {"label": label, "ttft_s": ttft, "prefill_s": ttft * 0.9, "timed_total_s": timed_total,
            "total_s": total, "decode_tokens_per_s": speed, "timed_tokens": tokens, "decode_tokens": tokens - 1}  # fmt: skip


def test_latency_bars_split_first_token_and_decode_of_the_same_tokens():
    # total_s (each run's own answer) differs wildly; the bars use the time to the same 32nd token
    rows = [_timed("Full attention", 2.0, 3.0, 9.0, total=50.0), _timed("SWA", 1.0, 1.5, 12.0, total=2.0)]
    fig = plots.latency_figure(rows)
    first, decode = fig.data
    assert list(first.x) == [2.0, 1.0] and first.name.startswith("time to first token")  # the cards' name
    assert list(decode.x) == pytest.approx([1.0, 0.5])  # token 1 to token 32, as the decode speed is timed
    assert list(decode.text) == ["9.0 tok/s", "12.0 tok/s"] and "tokens 2–32" in decode.name
    # Each bar reads first token, then decode: the legend lists them in that order (stacked bars default to reversed)
    assert fig.layout.legend.traceorder == "normal"


def test_latency_bars_do_not_rank_too_few_or_unequal_tokens():
    fig = plots.latency_figure([_timed("Full attention", 2.0, 3.0, 9.0), _timed("SWA", 1.0, 1.2, 50.0, tokens=4)])
    decode = fig.data[1]
    assert decode.text[1].startswith("too few tokens to compare")
    assert "UNEQUAL" in fig.layout.title.text


def test_decode_speed_plot_has_one_line_per_recipe_over_prompt_length():
    points = [
        {"label": label, "prompt_tokens": n, "tokens_per_s": speed, "new_tokens": 32, "error": None}
        for label, speeds in (("Full attention", (20.0, 10.0)), ("SWA", (21.0, 20.5)), ("SWA + FA decode", (19, 9)))
        for n, speed in zip((1024, 8192), speeds, strict=True)
    ]
    points.append({"label": "SWA", "prompt_tokens": 16384, "tokens_per_s": 0.0, "new_tokens": 32, "error": "OOM"})
    fig = plots.decode_speed_figure(list(reversed(points)))
    assert sorted(t.name for t in fig.data) == ["Full attention", "SWA", "SWA + FA decode"]
    by_name = {t.name: t for t in fig.data}
    assert list(by_name["SWA"].x) == [1024, 8192]  # sorted by length, the failed point left out
    assert list(by_name["Full attention"].y) == [20.0, 10.0]
    assert plots.decode_speed_figure([]).data == ()


def test_decode_speed_axis_ticks_only_the_measured_lengths_and_the_legend_stays_off_the_title():
    points = [
        {"label": f"recipe {i}", "prompt_tokens": n, "tokens_per_s": 10.0 + i, "new_tokens": 32, "error": None}
        for i in range(6)
        for n in (512, 2048)
    ]
    points.append({"label": "recipe 0", "prompt_tokens": 8192, "tokens_per_s": 0.0, "new_tokens": 32, "error": "x"})
    fig = plots.decode_speed_figure(points)
    axis = fig.layout.xaxis
    assert axis.tickmode == "array" and list(axis.tickvals) == [512, 2048]  # not the failed 8192
    assert list(axis.ticktext) == ["512", "2,048"]
    single = plots.decode_speed_figure([p for p in points if p["prompt_tokens"] == 512]).layout.xaxis
    assert list(single.tickvals) == [512]
    # The legend sits at the bottom of the figure, anchored to it (Plotly reserves its rows, however many a narrow
    # screen wraps it into), the title at the top; the figure grows by a row per recipe so the plot keeps its room.
    legend = fig.layout.legend
    assert (legend.yref, legend.y, legend.yanchor, legend.orientation) == ("container", 0, "bottom", "h")
    assert fig.layout.height - fig.layout.margin.t - fig.layout.margin.b - 6 * 20 >= 250


def test_placeholders_wrap_for_a_phone():
    (note,) = plots.message_figure("Run a comparison to see where the time goes.").layout.annotations
    assert max(len(line) for line in note.text.split("<br>")) <= 30
    assert (note.x, note.xanchor) == (0, "left")


def test_tradeoff_times_are_relative_to_full_attention():
    points = [
        {"label": "Full attention", "accuracy": 1.0, "time_s": 4.0, "is_full": True},
        {"label": "SWA", "accuracy": 0.25, "time_s": 1.0},
    ]
    full, swa, paper = plots.tradeoff_figure(points).data
    assert (full.name, full.x[0], full.y[0]) == ("Full attention", 1.0, 100.0)
    assert (swa.name, swa.x[0], swa.y[0]) == ("SWA", 0.25, 25.0)
    assert paper.x[0] == 1.0 and paper.y[0] == 62  # the paper's full-attention point


def test_needle_heatmap_labels_cells_in_percent():
    acc = np.array([[1.0, 0.5], [np.nan, 0.0]])
    (trace,) = plots.needle_heatmap_figure([("SWA", [256, 512], [0.0, 1.0], acc)]).data
    assert [list(row) for row in trace.text] == [["100%", "50%"], ["", "0%"]]


def test_attention_figure_marks_window_sinks_and_fact():
    probs = torch.softmax(torch.randn(2, 40, 40), -1)
    pooled = maps.pool_attention(probs)
    fig = maps.attention_figure(
        pooled, pooled, head=None, layer=3, window=8, sinks=2, swaa_label="SWA 8", layer_slides=True,
        needle_tokens=(10, 14),
    )  # fmt: skip
    edge = next(t for t in fig.data if t.type == "scatter")
    assert edge.x[1] - edge.x[0] == pytest.approx(40 - 8 + 1)  # the band's edge runs parallel to the diagonal
    texts = [a.text for a in fig.layout.annotations]
    assert any("2 sinks" in t for t in texts) and any("fact" in t for t in texts)


@pytest.mark.parametrize("n, window", [(512, 256), (512, 400), (4096, 256), (40, 8)])
def test_the_window_edge_label_stays_inside_its_own_map(n, window):
    """The label grows away from its anchor; it must not reach left past key 0 into the full-attention map."""
    pooled = maps.pool_attention(torch.softmax(torch.randn(1, n, n), -1), max_cells=64)
    fig = maps.attention_figure(
        pooled, pooled, head=None, layer=0, window=window, sinks=0, swaa_label="SWA", layer_slides=True
    )
    (label,) = [a for a in fig.layout.annotations if a.text.startswith("window edge")]
    assert label.xref == "x2"  # the right map
    room_left = label.x + 0.5 if label.xanchor == "right" else n - label.x
    assert room_left >= maps.EDGE_LABEL_SHARE * n  # the side it grows into holds the label's width


def test_the_layer_plan_leaves_the_toolbar_its_band():
    fig = maps.layer_plan_figure([("SWA", [False] * 4, [False] * 4)])
    assert fig.layout.margin.t >= 36  # Plotly's toolbar is about 30 px tall, at the figure's top right


def _every_figure() -> dict[str, object]:
    """One of each figure the app draws, with long recipe names, as a phone would get them."""
    long = "Recommended: 1/2 FA layers + FA decode + sinks (W=256, 10 sinks)"
    probs = torch.softmax(torch.randn(2, 40, 40), -1)
    pooled = maps.pool_attention(probs)
    columns = [ColumnSpec("Full attention", None), ColumnSpec(long, SWAAConfig(sliding_window_size=8, keep_first=2))]
    speed = [{"label": label, "prompt_tokens": n, "tokens_per_s": 10.0, "new_tokens": 32, "error": None}
             for label in ("Full attention", long) for n in (512, 1024)]  # fmt: skip
    return {
        "latency": plots.latency_figure([_timed("Full attention", 2.0, 3.0, 9.0), _timed(long, 1.0, 1.5, 12.0)]),
        "tradeoff": plots.tradeoff_figure(
            [{"label": long, "accuracy": 0.5, "time_s": 1.0}],
            time_label="time for the prompt + 32 tokens (dynamic cache)",
        ),
        "heatmap": plots.needle_heatmap_figure([(label, [256], [0.0, 1.0], np.ones((2, 1))) for label in ("FA", long)]),
        "decode speed": plots.decode_speed_figure(speed),
        "attention": maps.attention_figure(
            pooled, pooled, head=None, layer=0, window=8, sinks=2, swaa_label=long, layer_slides=True
        ),
        "masks": mask_figure(columns * 2, 40, 4, 0),
        "layer plan": maps.layer_plan_figure([(long, [False, True], [True, True])]),
    }


def _lines(text: str) -> list[str]:
    import re

    return re.sub(r"<span[^>]*>|</span>", "", text).split("<br>")


def test_every_figure_reads_on_a_phone():
    """Titles and subplot titles in lines short enough for a 390 px screen, every legend in rows below the plot,
    every axis growing its margin for its labels (Plotly's automargin), the title clear of Gradio's label badge."""
    for name, fig in _every_figure().items():
        layout = fig.layout
        if layout.title.text:
            assert max(map(len, _lines(layout.title.text))) <= plots.TITLE_CHARS + 8, name
            assert layout.title.pad.t == plots.LABEL_BAND and layout.margin.t > plots.LABEL_BAND, name
        legend = layout.legend
        assert (legend.orientation, legend.yref, legend.y, legend.yanchor) == ("h", "container", 0, "bottom"), name
        axes = [layout[key] for key in layout if key.startswith(("xaxis", "yaxis"))]
        assert axes and all(axis.automargin for axis in axes), name
        subplots = [a.text for a in layout.annotations if a.yref == "paper" and a.y == 1.0]
        for text in subplots:
            assert max(map(len, _lines(text))) <= 20, (name, text)


def test_titles_give_their_units_and_the_paper_points_keep_their_labels():
    figures = _every_figure()
    units = {"latency": "(s)", "tradeoff": "(%)", "heatmap": "(tokens)", "decode speed": "(tokens/s)"}
    for name, unit in units.items():
        assert unit in " ".join(_lines(figures[name].layout.title.text)), name
    *_, paper = figures["tradeoff"].data  # beside a live point, the paper's points are still named
    assert paper.mode == "markers+text" and len(paper.text) == len(plots.PAPER_POINTS)
    assert list(paper.customdata) == [p[0] for p in plots.PAPER_POINTS]  # full names on hover
    # the sweep's axis title is short; how the time was measured is under the title
    assert figures["tradeoff"].layout.xaxis.title.text == "time (full attention = 1)"
    assert "32 tokens (dynamic cache)" in " ".join(_lines(figures["tradeoff"].layout.title.text))
