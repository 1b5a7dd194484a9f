"""A config's mask kind on every app surface that takes a config: a pinned column (the API's /compare, a link) runs
it as saved; the strategy controls, which set a sliding window, refuse any other kind by name wherever a config would
go into them (a pasted config, the API's /parse_config and /adapter_config); the maps outline only what the kind
draws."""

from __future__ import annotations

import json
import re

import gradio as gr
import pytest

from app import api
from app.sidebar.strategy import apply_config_json
from app.state import Strategy, from_query
from app.tabs.why import region_marks
from swaa_core.engine.config import SWAAConfig, SWAAConfigError

CHUNKED = {"sliding_window_size": 64, "keep_first": 1, "mask_kind": "chunked"}
REFUSED = re.escape(
    "This config's mask_kind is 'chunked' (chunked 64 + 1 sinks), but the strategy controls set a sliding window"
)


def test_a_pinned_chunked_column_runs_under_chunks(tiny_folder):
    """The chunked column and a sliding window of the same numbers read the same prompt: the chunked one reaches the
    run as saved and its answer scores differently, so a column that lost its kind would show."""
    window = {**CHUNKED, "mask_kind": "sink_window"}
    pinned = [{"label": "chunks", "config": CHUNKED}, {"label": "window", "config": window}]
    *_, last = api.compare(
        model=tiny_folder, window=256, sinks=10, fa_layers="none", fa_decode="off", cot=False, adapter="",
        source="task", task="needle", length=400, depth=0.25, seed=0, document="", question="", answer="",
        answer_prefix="", max_new_tokens=2, pinned=pinned, static_cache=False, decode_path="eager",
    )  # fmt: skip
    rows = {row["label"]: row for row in last[2]}
    assert not any(row["error"] for row in rows.values())
    configs = {label: json.loads(row["config"]) for label, row in rows.items() if row["config"]}
    assert configs["chunks"] == SWAAConfig.from_dict(CHUNKED).to_dict() and configs["chunks"]["mask_kind"] == "chunked"
    assert "mask_kind" not in configs["window"]
    assert rows["chunks"]["answer_logprob"] != pytest.approx(rows["window"]["answer_logprob"], abs=1e-4)


def test_a_link_pins_a_chunked_column_as_saved():
    settings, notes = from_query({"pin": json.dumps([{"label": "chunks", "config": CHUNKED}])})
    assert not notes and settings.pinned[0]["config"]["mask_kind"] == "chunked"


def test_the_strategy_controls_refuse_another_kind_by_name(tiny_folder, tmp_path):
    with pytest.raises(SWAAConfigError, match=REFUSED):
        Strategy.from_config(SWAAConfig.from_dict(CHUNKED), 4)
    text = json.dumps({"swaa_config": CHUNKED})
    with pytest.raises(gr.Error, match=REFUSED):  # the page's "apply pasted config": refused before it sets anything
        apply_config_json(None, text, tiny_folder)
    with pytest.raises(gr.Error, match=REFUSED):
        api.parse_config(text, tiny_folder)
    adapter = tmp_path / "adapter"  # an adapter trained under chunks: its sidecar names the kind
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "swaa_config.json").write_text(json.dumps({"swaa_config": CHUNKED, "model_list": []}))
    with pytest.raises(gr.Error, match=REFUSED):
        api.adapter_config(str(adapter), tiny_folder)
    # the window the controls do set still goes in
    assert (
        api.parse_config(json.dumps({"swaa_config": {**CHUNKED, "mask_kind": "sink_window"}}), tiny_folder)["window"]
        == 64
    )


def test_the_attention_map_outlines_a_window_band_and_no_band_for_chunks():
    window = SWAAConfig(sliding_window_size=64, keep_first=1, non_sliding_layers=[1])
    assert region_marks(window, 0) == dict(window=64, sinks=1, layer_slides=True)
    assert region_marks(window, 1) == dict(window=None, sinks=0, layer_slides=False)
    assert region_marks(SWAAConfig.from_dict(CHUNKED), 0) == dict(window=None, sinks=0, layer_slides=False)
