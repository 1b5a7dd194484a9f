"""The capacity tab: its table agrees with swaa_core's capacity model recipe by recipe, measured points are read only
for the same shape, config, prompt and new tokens, and bad widget values are refused by name."""

from __future__ import annotations

import json

import pytest

from app.tabs.capacity import CUSTOM, PREFILL, CapacitySettings, capacity_figure, capacity_rows, measured_points, show
from swaa_core.eval.recipes import list_recipes, resolve_recipe
from swaa_core.models.capacity import GPUS, capacity, custom_gpu
from swaa_core.models.memory import model_shape
from swaa_core.models.registry import get_model_entry

LLAMA = "meta-llama/Llama-3.1-8B-Instruct"
H100 = GPUS["H100 80GB"]
ROW, BATCH = list(PREFILL)


def settings(**kw) -> CapacitySettings:
    values = dict(model=LLAMA, gpu="H200 141GB", memory_gib=80, bandwidth_tb_s=3.0, context="128K",
                  prompt_tokens=1000, new_tokens=512, prefill=ROW, window=2048, sinks=10, requests=16)  # fmt: skip
    return CapacitySettings(**(values | kw))


@pytest.mark.parametrize("prefill", [ROW, BATCH])
def test_rows_are_the_model_s_figures_per_recipe(prefill):
    rows = capacity_rows(settings(prefill=prefill))
    entry = get_model_entry(LLAMA)
    assert [r["name"] for r in rows] == [r.name for r in list_recipes()]
    for row, recipe in zip(rows, list_recipes(), strict=True):
        cfg = resolve_recipe(recipe, 32, window=2048, keep_first=10)
        cap = capacity(entry, cfg, GPUS["H200 141GB"], prompt_tokens=131072, new_tokens=512, prefill=PREFILL[prefill])
        assert row["sequences per GPU"] == cap.max_batch
        assert row["decode tok/s (all rows)"] == round(cap.tokens_per_s(), 1)
        assert row["serve N requests (s)"] == round(cap.serve_seconds(16, min(16, cap.max_batch)), 1)
    by_name = {r["name"]: r for r in rows}
    # what a sliding window buys: only evicting layers free their keys; FA decode keeps every key. Prefilled a row
    # at a time, the buffers decide (the target: >= 10x at 128K on an H200); a whole batch at once, every
    # row's activations do
    ratio = 10 if PREFILL[prefill] == "row" else 2
    assert by_name["swa"]["sequences per GPU"] >= ratio * by_name["full"]["sequences per GPU"]
    assert by_name["swa-fa-decode"]["sequences per GPU"] == by_name["full"]["sequences per GPU"]
    assert by_name["full"]["sequences per GPU"] < by_name["swa-half-fa"]["sequences per GPU"]


def test_custom_card_and_context():
    s = settings(gpu=CUSTOM, memory_gib=48, bandwidth_tb_s=1.0, context=CUSTOM, prompt_tokens=20000, new_tokens=100)
    rows = capacity_rows(s)
    cap = capacity(
        get_model_entry(LLAMA), None, custom_gpu(48, 1.0), prompt_tokens=20000, new_tokens=100, prefill="row"
    )
    assert rows[0]["sequences per GPU"] == cap.max_batch and rows[0]["tok/s at batch 1"] == round(
        cap.tokens_per_s(1), 1
    )
    figure, table, note = show(s)
    assert len(table) == len(rows) and "48 GiB" in note and "1.0 TB/s" in note


def _results(tmp_path, *, context=131072, new=512, hidden=4096, config=None, machine="NVIDIA H100 80GB HBM3"):
    entry = get_model_entry(LLAMA)
    shape = dict(num_layers=32, num_kv_heads=8, head_dim=128, hidden_size=hidden, intermediate_size=14336,
                 vocab_size=entry.vocab_size)  # fmt: skip
    rows = [
        {"recipe": "swa", "config": config, "batch": b, "context": context, "fits": True, "tokens_per_s": 10.0 * b,
         "model_max_batch": 169}
        for b in (169, 16, 1)
    ]  # fmt: skip
    data = {"date": "2026-12-06 10:00:00 UTC", "capacity": {"machine": {"gpu": machine, "memory_gib": 79.18}, "shape": shape,
            "new_tokens": new}, "sections": {"decode": {"rows": rows}}}  # fmt: skip
    (tmp_path / "gpu_capacity_h100.json").write_text(json.dumps(data))
    return tmp_path


def test_measured_points_only_for_the_same_run(tmp_path):
    shape = model_shape(get_model_entry(LLAMA))
    swa = resolve_recipe("swa", 32, window=2048)
    configs = {"swa": swa, "full": None}
    folder = _results(tmp_path, config=swa.to_dict())
    got = measured_points(shape, configs, 131072, 512, "row", H100, folder)
    assert got == {"swa": [{"machine": "NVIDIA H100 80GB HBM3 (2026-12-06)", "batch": 169, "fits": True,
                            "tokens_per_s": 1690.0, "model_max_batch": 169}]}  # fmt: skip
    assert measured_points(shape, configs, 32768, 512, "row", H100, folder) == {}  # another prompt
    assert measured_points(shape, configs, 131072, 512, "batch", H100, folder) == {}  # another section
    other = resolve_recipe("swa", 32, window=1024)
    assert measured_points(shape, {"swa": other}, 131072, 512, "row", H100, folder) == {}  # another window
    assert measured_points(shape, configs, 131072, 512, "row", GPUS["H200 141GB"], folder) == {}  # another card
    folder = _results(tmp_path, config=swa.to_dict(), hidden=2048)
    assert measured_points(shape, configs, 131072, 512, "row", H100, folder) == {}  # another shape


@pytest.mark.parametrize("where", ["row", "args"])
def test_a_batched_run_prefilled_row_by_row_is_no_batch_prefill_point(tmp_path, where):
    """The "batch" view shows the batched section's largest batch as batch prefill's capacity; a batched run
    prefilled row by row (its prefill in each row, or only in the run's arguments in older files) measured another
    thing and is left out, while the same run with batch prefill is shown."""
    shape = model_shape(get_model_entry(LLAMA))
    swa = resolve_recipe("swa", 32, window=2048)
    folder = _results(tmp_path, config=swa.to_dict())
    path = folder / "gpu_capacity_h100.json"
    data = json.loads(path.read_text())
    rows = data["sections"].pop("decode")["rows"]
    data["sections"]["batched"] = {"rows": rows}
    for prefill, expected in (("row", {}), ("batch", {"swa": [169]})):
        if where == "row":
            for r in rows:
                r["prefill"] = prefill
        else:
            data["args"] = {"prefill": prefill}
        path.write_text(json.dumps(data))
        got = measured_points(shape, {"swa": swa}, 131072, 512, "batch", H100, folder)
        assert {k: [p["batch"] for p in v] for k, v in got.items()} == expected


def test_figure_draws_model_bars_and_measured_diamonds(tmp_path, monkeypatch):
    import app.tabs.capacity as view

    swa = resolve_recipe("swa", 32, window=2048)
    monkeypatch.setattr(view, "RESULTS", _results(tmp_path, config=swa.to_dict()))
    rows = capacity_rows(settings(gpu="H100 80GB"))
    fig = capacity_figure(rows, "t")
    bars = [t for t in fig.data if t.type == "bar"]
    diamonds = [t for t in fig.data if t.type == "scatter"]
    assert [list(b.x) for b in bars] == [
        [r["sequences per GPU"] for r in rows],
        [r["decode tok/s (all rows)"] for r in rows],
    ]
    assert [list(d.x) for d in diamonds] == [[169], [1690.0]] and list(diamonds[0].y) == ["SWA only"]
    assert "measured: NVIDIA H100 80GB HBM3" in diamonds[0].name.replace("<br>", " ")
    _, table, _ = show(settings(gpu="H100 80GB"))
    assert "169 rows fit, 1,690.0 tok/s" in table[1][-1]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(gpu="A100"), "Choose a GPU"),
        (dict(context="64K"), "Choose a context"),
        (dict(prefill="chunked"), "prefilled"),
        (dict(gpu=CUSTOM, memory_gib=0), "GPU memory"),
        (dict(gpu=CUSTOM, bandwidth_tb_s=None), "Bandwidth"),
        (dict(context=CUSTOM, prompt_tokens=None), "Prompt tokens"),
        (dict(new_tokens=0), "New tokens"),
        (dict(requests=2.5), "Requests"),
        (dict(window=0), "window: must be a whole number from 1"),
        (dict(model="my/model"), "curated"),
    ],
)
def test_bad_values_are_refused_by_name(change, message):
    with pytest.raises(ValueError, match=message):
        settings(**change)


def test_fields_of_unchosen_options_are_not_checked():
    s = settings(prompt_tokens=None, memory_gib=None, bandwidth_tb_s=None)  # 128K on an H200: no custom fields
    assert s.prompt == 131072 and s.card == GPUS["H200 141GB"]
