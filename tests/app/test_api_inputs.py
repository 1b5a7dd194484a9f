"""The public API's inputs (app/api.py) and the settings values behind the tabs: every input is applied, or refused
with a message that names it; none is silently truncated, replaced or dropped.

Each test states the independent expectation: a whole-number field refuses 1.5 as Max new tokens already does
(state.whole_in_range), a NaN/inf/text field is refused by name, a choice outside its list is refused.
"""

from __future__ import annotations

import math

import gradio as gr
import pytest

from app import api
from app.comparison import Comparison, RunOptions
from app.prompts import Prompt
from app.state import DEFAULT_PINNED, MAX_PINNED, Strategy, parse_pinned
from app.sweep_runs import NeedleSweepSettings, RecipeSweepSettings
from app.tabs.advisor import AdvisorSettings

SWA = Strategy(window=256, sinks=0, fa_layers_mode="none", fa_decode_mode="off")
OPTIONS = RunOptions(max_new_tokens=10, pinned=[])


def _build(**prompt):
    base = dict(source="task", task="needle", length=512, depth=0.25, seed=0)
    return Comparison.build("smollm2-135m", SWA, Prompt(**(base | prompt)), OPTIONS)


def _api_message(fn, *args) -> str:
    with pytest.raises(gr.Error) as info:
        fn(*args)
    return info.value.message


# ---------------------------------------------------------------- depth: the builders' rule, as links read it
@pytest.mark.embedded
@pytest.mark.parametrize("depth", ["abc", None, math.nan, 1.5, -0.1])
def test_compare_names_the_depth_by_the_rule_links_use(loaded, depth):
    # once: "could not convert string to float: 'abc'", a TypeError for None
    with pytest.raises(ValueError) as info:
        _build(depth=depth)
    assert str(info.value) == f"depth must be between 0 (start of the context) and 1 (end), got {depth!r}."


# ---------------------------------------------------------------- seeds: whole numbers, refused by name
@pytest.mark.embedded
@pytest.mark.parametrize("seed", [1.5, 2.9])
def test_compare_refuses_a_fractional_seed_instead_of_truncating_it(loaded, seed):
    # once: built with seed int(seed) (1 / 2), a different sample than asked for, without a word
    with pytest.raises(ValueError, match="(?i)seed"):
        _build(seed=seed)


@pytest.mark.embedded
@pytest.mark.parametrize("seed", [math.nan, math.inf, "abc"])
def test_compare_names_the_seed_when_it_is_not_a_number(loaded, seed):
    # once: "cannot convert float NaN to integer" / OverflowError / "invalid literal for int()"
    with pytest.raises(ValueError, match="(?i)seed"):
        _build(seed=seed)


@pytest.mark.parametrize("seed", [math.nan, math.inf, "abc"])
def test_recipe_sweep_names_the_seed(seed):
    message = _api_message(api.recipe_sweep, "", ["full"], 1, 512, seed, 256, 10, False)
    assert "seed" in message.lower(), message


@pytest.mark.parametrize("seed", [1.5, -2.5])
def test_sweeps_refuse_a_fractional_seed(seed):
    with pytest.raises(ValueError, match="(?i)seed"):
        RecipeSweepSettings(("full",), 1, 512, seed, 256, 10)
    with pytest.raises(ValueError, match="(?i)seed"):
        NeedleSweepSettings((256,), 2, 1, seed, "needle")


# ---------------------------------------------------------------- the task length
@pytest.mark.embedded
def test_compare_refuses_a_fractional_length_instead_of_truncating_it(loaded):
    # once: a 600-token task is built for length=600.5 (prompts.task_sample: int(length))
    with pytest.raises(ValueError, match="(?i)length"):
        _build(length=600.5)


@pytest.mark.embedded
@pytest.mark.parametrize("length", [math.nan, math.inf])
def test_compare_names_the_length_when_it_is_not_a_number(loaded, length):
    with pytest.raises(ValueError, match="(?i)length"):
        _build(length=length)


@pytest.mark.embedded
def test_a_length_beyond_the_context_is_refused_before_the_haystack_is_built(loaded, monkeypatch):
    # once: make_task builds a 10**9-token haystack (minutes, GBs) before check_context refuses it
    import app.prompts

    def no_huge_build(kind, tokenizer, *, length_tokens, **kw):
        raise AssertionError(f"built a {length_tokens:,}-token sample for an 8,192-token model")

    monkeypatch.setattr(app.prompts, "make_task", no_huge_build)
    with pytest.raises(ValueError, match="(?i)(too long|context|length)"):
        _build(length=10**9)


# ---------------------------------------------------------------- choices outside their list
def test_needle_sweep_settings_refuse_an_unknown_task_instead_of_sweeping_the_needle():
    # once: sweep_runs.NeedleSweepSettings swaps any other task for "needle"
    with pytest.raises(ValueError, match="multi_value|task"):
        NeedleSweepSettings((256,), 2, 1, 0, "multi_value")


@pytest.mark.embedded
@pytest.mark.parametrize("source", ["tasks", "Task", None])
def test_an_unknown_prompt_source_is_refused_by_name(loaded, source):
    # once: any source other than "task" reads as "text": "The text box is empty: paste a document ..."
    with pytest.raises(ValueError, match="(?i)source"):
        Prompt(source=source).sample(loaded.tokenizer)


# ---------------------------------------------------------------- pinned columns
def test_pinned_columns_beyond_the_limit_are_refused_not_dropped():
    # once: parse_pinned keeps data[:MAX_PINNED]; the 4th column is silently not run
    with pytest.raises(ValueError, match="(?i)pinned"):
        parse_pinned([dict(DEFAULT_PINNED)] * (MAX_PINNED + 1))


def test_a_pinned_column_refuses_keys_it_does_not_apply():
    # once: {"cot": true} in a pinned column is accepted and ignored
    with pytest.raises(ValueError, match="cot"):
        parse_pinned([{"label": "x", "config": {"sliding_window_size": 64}, "cot": True}])


# ---------------------------------------------------------------- the advisor
@pytest.mark.parametrize("value", [math.nan, math.inf, "abc"])
@pytest.mark.parametrize("name", ["length", "samples"])
def test_advise_names_a_number_that_is_not_one(name, value):
    args = dict(length=512, window=256, sinks=10, budget_kind="full layers", budget=8, samples=1, held_out=1)
    args[name] = value
    # once: "cannot convert float NaN to integer", "Unexpected error (OverflowError) ...", "could not convert ..."
    message = _api_message(api.advise, "", *args.values(), "needle")
    assert name in message and "Unexpected error" not in message, message


def test_advisor_names_a_nan_budget():
    with pytest.raises(ValueError, match="(?i)budget|full layers"):
        AdvisorSettings(512, 256, 10, "full layers", math.nan, 1, 1).to_budget()


# ---------------------------------------------------------------- config JSON
@pytest.mark.embedded
def test_a_null_swaa_config_is_not_called_an_unknown_field(loaded):
    # once: 'Unknown SWAA config field(s) ['swaa_config']' for the upstream spelling of full attention
    message = _api_message(api.parse_config, '{"swaa_config": null}', "")
    assert "Unknown SWAA config field" not in message, message


@pytest.mark.embedded
def test_an_adapter_name_of_spaces_is_no_adapter(loaded):
    """A blank adapter field (spaces only, as pasted) runs no adapter and labels no column "+ LoRA"; it once
    labelled the column and failed only when that column ran."""
    request = Comparison.build("smollm2-135m", SWA, Prompt(source="task", task="needle", length=512, depth=0.25),
                               RunOptions(max_new_tokens=10, pinned=[], adapter="   "))  # fmt: skip
    assert [c.adapter for c in request.columns] == ["", ""]
    assert not any("LoRA" in c.label for c in request.columns)
    assert parse_pinned([dict(DEFAULT_PINNED, adapter="  ")])[0]["adapter"] == ""


# ---------------------------------------------------------------- config JSON: top-level keys beside swaa_config
UPSTREAM_FILE = (
    '{"swaa_config": {"sliding_window_size": 64, "keep_first": 4}, "model_list": ["Qwen/Qwen3-4B"], "note": 1}'
)


def test_parse_config_names_the_top_level_keys_it_does_not_apply(tiny_folder):
    """An upstream file's entry carries keys beside swaa_config (model_list). They are not refused (drop-in
    compatibility), but no longer dropped in silence: the response names them. Reference: a fresh parse of the text."""
    import json

    beside = sorted(set(json.loads(UPSTREAM_FILE)) - {"swaa_config"})
    out = api.parse_config(UPSTREAM_FILE, tiny_folder)
    assert (out["window"], out["sinks"]) == (64, 4)
    assert out["not_applied"] == beside == ["model_list", "note"]
    assert all(repr(key) in out["note"] for key in beside), out["note"]


def test_parse_config_has_an_empty_note_when_every_key_applies(tiny_folder):
    for text in ('{"swaa_config": {"sliding_window_size": 64}}', '{"sliding_window_size": 64}'):
        out = api.parse_config(text, tiny_folder)
        assert (out["not_applied"], out["note"]) == ([], "")


def test_parse_config_still_refuses_unknown_fields_inside_swaa_config(tiny_folder):
    message = _api_message(api.parse_config, '{"swaa_config": {"sliding_window_size": 64, "window": 3}}', tiny_folder)
    assert "Unknown SWAA config field(s) ['window']" in message, message


def test_the_pasted_config_warns_of_the_keys_it_does_not_apply(tiny_folder):
    from types import SimpleNamespace

    from app.sidebar.strategy import STRATEGY, apply_config_json

    ui = SimpleNamespace(**{name: name for name in STRATEGY})
    with pytest.warns(UserWarning, match="'model_list', 'note'"):
        updates = apply_config_json(ui, UPSTREAM_FILE, tiny_folder)
    assert (updates["window"], updates["sinks"]) == (64, 4)
