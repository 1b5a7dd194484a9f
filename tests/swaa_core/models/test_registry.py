"""The curated model list: facts checked against transformers' own model construction, recipes against docs/paper.md."""

from __future__ import annotations

import pytest

from swaa_core.models.memory import count_parameters
from swaa_core.models.registry import DEFAULT_MODEL, EMBEDDED_NAMES, get_model_entry, list_models

PAPER_MODELS = (
    "Qwen/Qwen3-4B-Instruct-2507",
    "Qwen/Qwen3-4B-Thinking-2507",
    "Qwen/Qwen3-30B-A3B-Instruct-2507",
    "meta-llama/Llama-3.1-8B-Instruct",
)


def test_list_holds_embedded_first_then_paper_models():
    names = [e.name for e in list_models()]
    assert names[:2] == ["smollm2-135m", "gemma3-270m"]
    assert set(PAPER_MODELS) <= set(names)
    assert DEFAULT_MODEL == "smollm2-135m" and DEFAULT_MODEL in EMBEDDED_NAMES
    assert [e.name for e in list_models("embedded")] == list(EMBEDDED_NAMES)
    assert all(e.source == "hub" for e in list_models("hub"))
    with pytest.raises(ValueError, match="source must be"):
        list_models("somewhere")


@pytest.mark.parametrize("entry", list_models(), ids=lambda e: e.name)
def test_parameter_count_matches_the_model_transformers_builds(entry):
    # Independent reference: transformers instantiates the architecture (on the meta device) from the entry's shape.
    assert count_parameters(entry.config()) == entry.num_parameters


@pytest.mark.parametrize("entry", list_models(), ids=lambda e: e.name)
def test_recipe_layers_follow_the_paper(entry):
    n = entry.num_layers
    assert entry.recipe_fa_layers["1/2"] == [i for i in range(n) if i % 2 == 1]  # the paper's figure: odd layers
    assert entry.recipe_fa_layers["1/4"] == [i for i in range(n) if i % 4 == 3]
    assert entry.to_dict()["num_layers"] == n


def test_known_facts_of_the_paper_models():
    assert get_model_entry("Qwen/Qwen3-4B-Thinking-2507").has_thinking_mode
    assert not get_model_entry("Qwen/Qwen3-4B-Instruct-2507").has_thinking_mode
    qwen = get_model_entry("qwen/qwen3-4b-instruct-2507")  # ids match case-insensitively, like the Hub
    assert (qwen.num_layers, qwen.num_kv_heads, qwen.head_dim, qwen.context_length) == (36, 8, 128, 262144)
    llama = get_model_entry("meta-llama/Llama-3.1-8B-Instruct")
    assert llama.gated and llama.context_length == 131072 and llama.num_layers == 32


def test_gemma_is_natively_hybrid():
    gemma = get_model_entry("gemma3-270m")
    assert gemma.native_sliding_window == 512
    assert [i for i in range(18) if i not in gemma.native_sliding_layers] == [5, 11, 17]
    # transformers reads the same layout from the config the entry builds
    assert gemma.config().layer_types.count("full_attention") == 3


def test_unknown_entry_says_any_model_still_loads():
    with pytest.raises(ValueError, match="not in the curated model list.*Any Hub id or local folder"):
        get_model_entry("someone/some-model")
