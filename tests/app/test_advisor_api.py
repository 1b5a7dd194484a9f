"""The advisor's API endpoint through gradio_client, on the tiny Llama folder (the app loads any local folder off a
Space): what it returns is checked against the library's own rules (the budget's layer count, the periodic
patterns, the config round-trip), and bad input comes back as an AppError naming the input."""

from __future__ import annotations

import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from swaa_core import SWAAConfig
from swaa_core.eval.recommend import periodic_patterns


@pytest.fixture(scope="module")
def client(app_url):
    return Client(app_url, verbose=False)


def test_advise_returns_the_recommendation_and_its_check(client, tiny_folder):
    out = client.predict(model=tiny_folder, length=300, window=16, sinks=2, budget_kind="full layers", budget=2,
                         samples=1, held_out=1, task="needle", api_name="/advise")  # fmt: skip
    cfg = SWAAConfig.from_dict(out["swaa_config"])
    assert len(cfg.non_sliding_layers) == 2 and cfg.sliding_window_size == 16
    assert sorted(out["scores"]["order"][:2]) == cfg.non_sliding_layers
    assert len(out["scores"]["mean"]) == len(out["scores"]["spread"]) == 4
    labels = [c["label"] for c in out["candidates"]]
    assert labels == ["advisor", *periodic_patterns(4, 2), "SWA (no full layer)", "full attention"]
    assert SWAAConfig.fa_layers(out["controls"]["fa_layers"], 4) == cfg.non_sliding_layers  # "1/2" or "0,3"
    assert set(out["calibration_seeds"]).isdisjoint(out["held_out_seeds"])


@pytest.mark.parametrize(
    "change,says",
    [
        (dict(budget=0), "at least 1"),
        (dict(budget=4), "full attention"),
        (dict(budget_kind="prefill share", budget=0.01), "out of reach"),
        (dict(budget_kind="watts"), "not in the list of choices"),
        (dict(samples=0), "samples must be a whole number from 1 to 1000"),
    ],
)
def test_advise_refuses_bad_budgets_by_name(client, tiny_folder, change, says):
    args = dict(model=tiny_folder, length=300, window=16, sinks=2, budget_kind="full layers", budget=2, samples=1,
                held_out=1, task="needle")  # fmt: skip
    with pytest.raises(AppError, match=says):
        client.predict(**{**args, **change}, api_name="/advise")


def test_apply_sets_the_strategy_controls_to_the_recommendation(tiny_folder):
    from helpers.components import Names

    from app.sidebar.strategy import STRATEGY
    from app.tabs.advisor import apply_advice

    cfg = {"sliding_window_size": 16, "keep_first": 2, "force_fa_decode": True, "non_sliding_layers": [0, 3]}
    values = apply_advice(Names(), cfg, tiny_folder)
    assert set(values) == set(STRATEGY)
    assert (values["window"], values["sinks"], values["fa_layers_mode"]) == (16, 2, "custom")
    assert values["fa_layers"] == [0, 3] and values["fa_decode_mode"] == "all"
    with pytest.raises(ValueError, match="Run the advisor first"):
        apply_advice(Names(), None, tiny_folder)
    with pytest.raises(ValueError, match="this model has 4 layers"):
        apply_advice(Names(), {**cfg, "non_sliding_layers": [7]}, tiny_folder)


def test_the_score_bars_sit_on_the_layer_axis_and_mark_the_chosen_layers():
    from app.plots import FA_COLOR, SWA_COLOR
    from app.tabs.advisor import scores_figure
    from swaa_core.eval.advisor import LayerScores
    from swaa_core.eval.recommend import Advice

    scores = LayerScores("gain", {}, [[0.1, 0.5, -0.2, 0.3], [0.3, 0.7, 0.0, 0.1]])
    advice = Advice("m", 300, 16, "2 full-attention layers", 2, scores,
                    SWAAConfig(sliding_window_size=16, non_sliding_layers=[1, 3]), {})  # fmt: skip
    bars = scores_figure(advice).data[0]
    assert list(bars.x) == [0, 1, 2, 3] and list(bars.y) == pytest.approx([0.2, 0.6, -0.1, 0.2])
    assert list(bars.marker.color) == [SWA_COLOR, FA_COLOR, SWA_COLOR, FA_COLOR]
    assert list(bars.error_y.array) == pytest.approx([0.1414, 0.1414, 0.1414, 0.1414], abs=1e-4)
