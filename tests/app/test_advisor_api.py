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
        (dict(budget_kind="watts"), "budget_kind must be one of"),
        (dict(samples=0), "samples must be a whole number >= 1"),
    ],
)
def test_advise_refuses_bad_budgets_by_name(client, tiny_folder, change, says):
    args = dict(model=tiny_folder, length=300, window=16, sinks=2, budget_kind="full layers", budget=2, samples=1,
                held_out=1, task="needle")  # fmt: skip
    with pytest.raises(AppError, match=says):
        client.predict(**{**args, **change}, api_name="/advise")
