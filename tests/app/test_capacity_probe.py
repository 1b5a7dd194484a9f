"""A user's probe of the Capacity tab (issue 29): measured points are shown for the card they were measured on only,
a table where nothing fits still says so in every cell, and the README names the tab."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from app.tabs.capacity import CUSTOM, PREFILL, CapacitySettings, capacity_rows, show
from swaa_core.eval.recipes import resolve_recipe
from swaa_core.models.registry import get_model_entry

ROOT = Path(__file__).resolve().parents[2]
LLAMA = "meta-llama/Llama-3.1-8B-Instruct"
ROW = next(k for k, v in PREFILL.items() if v == "row")


def settings(**kw) -> CapacitySettings:
    values = dict(model=LLAMA, gpu="H100 80GB", memory_gib=80, bandwidth_tb_s=3.0, context="128K",
                  prompt_tokens=1000, new_tokens=512, prefill=ROW, window=2048, sinks=10, requests=16)  # fmt: skip
    return CapacitySettings(**(values | kw))


@pytest.fixture
def h100_results(tmp_path, monkeypatch):
    """One decode-section result of the 8B shape at 128K + 512, measured on an H100 (as gpu_capacity.py writes it)."""
    import app.tabs.capacity as view

    entry = get_model_entry(LLAMA)
    shape = dict(num_layers=32, num_kv_heads=8, head_dim=128, hidden_size=4096, intermediate_size=14336,
                 vocab_size=entry.vocab_size)  # fmt: skip
    swa = resolve_recipe("swa", 32, window=2048)
    rows = [{"recipe": "swa", "config": swa.to_dict(), "batch": 180, "context": 131072, "fits": True,
             "tokens_per_s": 6550.6, "model_max_batch": 180}]  # fmt: skip
    data = {"date": "2026-12-05 19:17:31 UTC",
            "capacity": {"machine": {"gpu": "NVIDIA H100 80GB HBM3", "memory_gib": 79.179, "bandwidth": 3.0e12},
                         "shape": shape, "new_tokens": 512},
            "sections": {"decode": {"rows": rows}}}  # fmt: skip
    (tmp_path / "gpu_capacity_h100_128k.json").write_text(json.dumps(data))
    monkeypatch.setattr(view, "RESULTS", tmp_path)
    return tmp_path


def _measured(rows) -> dict:
    return {r["name"]: [p["machine"] for p in r["measured"]] for r in rows if r["measured"]}


def test_h100_points_show_on_the_h100_view(h100_results):
    assert _measured(capacity_rows(settings(gpu="H100 80GB"))) == {"swa": ["NVIDIA H100 80GB HBM3 (2026-12-05)"]}


@pytest.mark.parametrize(
    "card", [dict(gpu="H200 141GB"), dict(gpu=CUSTOM, memory_gib=24, bandwidth_tb_s=1.0)], ids=["H200", "custom-24GiB"]
)
def test_measured_points_are_not_drawn_beside_another_card(h100_results, card):
    """measured_points() matches shape, config, prompt and new tokens but never the card: the H200 view (model: 410
    SWA sequences) and a 24 GiB custom card (model: 0 sequences fit) both carry the H100's "180 rows fit, 6,550.6
    tok/s" diamond and table cell, as if measured there."""
    assert _measured(capacity_rows(settings(**card))) == {}


def test_a_card_where_nothing_fits_says_so_in_every_cell():
    """On a 1 GiB card (the 8B weights alone are 15 GiB) the serve-time cells are math.inf; the page's JSON
    (orjson) sends inf as null, so the user sees empty cells instead of a value or "does not fit"."""
    _, table, _ = show(settings(gpu=CUSTOM, memory_gib=1, bandwidth_tb_s=1.0))
    assert all(row[1] == 0 for row in table)
    bad = [(row[0], v) for row in table for v in row if isinstance(v, float) and not math.isfinite(v)]
    assert bad == []


def test_the_readme_names_the_capacity_tab():
    """README's "## The app" says "Four tabs" and lists Compare, Why, Recipes & needles and the Guided tour; the app
    has six (app.tabs.TABS), and the Capacity tab of issue 29 is not mentioned anywhere in the README."""
    from app.tabs import TABS

    section = (ROOT / "README.md").read_text(encoding="utf-8").split("## The app", 1)[1].split("\n## ", 1)[0]
    assert "Capacity" in section
    assert f"{len(TABS)} tabs" in section or "Four tabs" not in section
