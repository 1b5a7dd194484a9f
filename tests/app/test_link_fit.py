"""A shared link opened on a model that cannot take all of it: every value fitted to the model is named in a note
(nothing from the link changes without a word), and the widgets get the fitted values."""

from __future__ import annotations

import pytest

from app.sidebar.model import link_notes, model_updates
from app.state import from_query

pytestmark = pytest.mark.embedded


class _UI:
    """Stand-ins for the page's components: model_updates keys its result by them."""

    def __getattr__(self, name):
        return name


def test_a_link_beyond_the_model_is_fitted_and_every_change_named(loaded):
    n, limit = loaded.info.num_layers, loaded.info.context_length  # SmolLM2: 30 layers, 8,192 tokens
    longest = limit - 128  # the length slider keeps 128 tokens for the answer (app.prompts.LENGTH_HEADROOM)
    settings, notes = from_query(
        {"len": "100000", "w": str(limit + 1000), "fal": f"1,{n},{n + 3}", "fad": f"0,{n + 1}"}
    )
    assert notes == []
    got = link_notes(loaded, settings)
    assert got == [
        f"The link's length of 100,000 tokens is beyond the longest prompt {loaded.name} takes here ({longest:,}): "
        f"the length is set to {longest:,}.",
        f"The link's window of {limit + 1000:,} tokens is beyond {loaded.name}'s context ({limit:,}): the window is "
        f"set to {limit:,}.",
        f"The link's FA layers {n}, {n + 3} are beyond {loaded.name}'s {n} layers (0-{n - 1}) and were left out.",
        f"The link's FA decode layers {n + 1} are beyond {loaded.name}'s {n} layers (0-{n - 1}) and were left out.",
    ]
    out = model_updates(_UI(), loaded, settings.strategy, opened=settings)
    assert out["length"].value == longest and out["window"].value == limit
    assert out["fa_layers"].value == [1] and out["fa_decode_layers"].value == [0]


def test_a_link_the_model_takes_whole_gets_no_note(loaded):
    settings, _ = from_query({"len": "1000", "w": "512", "fal": "1,2", "fad": "0"})
    assert link_notes(loaded, settings) == []
