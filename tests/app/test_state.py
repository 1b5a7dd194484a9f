"""Strategy controls <-> SWAAConfig and the shareable link's query string (no model needed)."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlparse

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.state import (
    DEFAULT_PINNED,
    Settings,
    Strategy,
    decode_path_choice,
    from_query,
    layer_pattern_name,
    to_query,
)
from swaa_core.engine.config import SWAAConfig, SWAAConfigError

N_LAYERS = 30


@pytest.mark.parametrize(
    "mode, expected",
    [("none", []), ("1/2", list(range(1, N_LAYERS, 2))), ("1/4", list(range(3, N_LAYERS, 4)))],
)
def test_fa_layer_modes_follow_the_paper(mode, expected):
    cfg = Strategy(window=64, sinks=0, fa_layers_mode=mode, fa_decode_mode="off").to_config(N_LAYERS)
    assert cfg.non_sliding_layers == expected
    assert layer_pattern_name(expected, N_LAYERS) == mode


def test_custom_layers_and_decode_layers_pass_through():
    s = Strategy(window=96, sinks=3, fa_layers_mode="custom", fa_layers=[2, 9], fa_decode_mode="layers",
                 fa_decode_layers=[0, 5])  # fmt: skip
    cfg = s.to_config(N_LAYERS)
    assert cfg.to_dict() == {
        "sliding_window_size": 96,
        "keep_first": 3,
        "force_fa_decode": [0, 5],
        "non_sliding_layers": [2, 9],
    }
    assert layer_pattern_name([2, 9], N_LAYERS) == "custom"


def test_layers_beyond_the_model_are_refused():
    s = Strategy(window=64, fa_layers_mode="custom", fa_layers=[3, 40])
    with pytest.raises(SWAAConfigError, match="this model has 30 layers"):
        s.to_config(N_LAYERS)


configs = st.builds(
    SWAAConfig,
    sliding_window_size=st.integers(1, 8192),
    keep_first=st.integers(0, 512),
    # An empty layer list means the same as False; the controls show it as "off".
    force_fa_decode=st.one_of(st.booleans(), st.lists(st.integers(0, N_LAYERS - 1), min_size=1, max_size=6)),
    non_sliding_layers=st.lists(st.integers(0, N_LAYERS - 1), max_size=12),
)


@given(configs)
def test_controls_reproduce_any_config(cfg):
    assert Strategy.from_config(cfg, N_LAYERS).to_config(N_LAYERS).to_dict() == cfg.to_dict()


link_settings = st.builds(
    Settings,
    model=st.sampled_from(["smollm2-135m", "Qwen/Qwen3-4B-Instruct-2507", "./my model"]),
    strategy=st.builds(
        Strategy,
        window=st.integers(1, 8192),
        sinks=st.integers(0, 256),
        fa_layers_mode=st.sampled_from(["none", "1/4", "1/2", "custom"]),
        fa_layers=st.lists(st.integers(0, 63), min_size=1, max_size=8, unique=True).map(sorted),
        fa_decode_mode=st.sampled_from(["off", "all", "layers"]),
        fa_decode_layers=st.lists(st.integers(0, 63), min_size=1, max_size=8, unique=True).map(sorted),
    ),
    cot=st.booleans(),
    source=st.sampled_from(["task", "text"]),
    task=st.sampled_from(["needle", "passkey"]),
    length=st.integers(128, 8192),
    depth=st.floats(0, 1).map(lambda d: round(d, 2)),
    seed=st.integers(0, 10**6),
    max_new_tokens=st.integers(1, 512),
    decode_path=st.sampled_from(["auto", "fixed", "eager"]),
    example=st.sampled_from(["", "lighthouse"]),
    pinned=st.lists(configs, max_size=3).map(
        lambda cs: [{"label": c.describe(), "config": c.to_dict(), "adapter": ""} for c in cs]
    ),
)


def _restored(settings_: Settings) -> Settings:
    query = to_query(settings_)
    params = dict(parse_qsl(urlparse(query).query, keep_blank_values=True))
    restored, notes = from_query(params)
    assert notes == []
    return restored


@settings(max_examples=40, deadline=None)
@given(link_settings)
def test_link_restores_what_matters(s):
    r = _restored(s)
    assert (r.model, r.cot, r.source, r.task, r.length, r.depth, r.seed, r.max_new_tokens, r.example,
            r.decode_path) == (
        s.model, s.cot, s.source, s.task, s.length, s.depth, s.seed, s.max_new_tokens, s.example, s.decode_path,
    )  # fmt: skip
    assert r.strategy.to_config(64).to_dict() == s.strategy.to_config(64).to_dict()
    assert [(p["config"], p["adapter"]) for p in r.pinned] == [(p["config"], p["adapter"]) for p in s.pinned]
    assert all(p["label"] == q["label"] or p["label"].endswith("…") for p, q in zip(r.pinned, s.pinned, strict=True))


def test_default_settings_make_an_empty_query():
    assert to_query(Settings()) == ""
    assert Settings().pinned == [DEFAULT_PINNED]


@pytest.mark.parametrize(
    "params, fragment",
    [
        ({"w": "abc"}, "window: expected a whole number, got 'abc'"),
        ({"depth": "1.5"}, "depth must be between 0 (start of the context) and 1 (end), got '1.5'"),
        ({"fal": "every 2 from 1"}, "depends on the model's layer count"),
        ({"fal": "1,x"}, "fa_layers must be 'none', 'all', '1/k' (such as '1/2'), 'every k from s'"),
        ({"src": "video"}, "expected one of task, text"),
        ({"pin": "[{]"}, "was not used"),
        ({"bogus": "1"}, "Ignored unknown link parameter(s): bogus"),
        ({"fixed": "maybe"}, "Fixed-buffer decode must be on or off (1 or 0), got 'maybe'"),
        ({"path": "graph"}, "Decode path must be one of auto (Auto), fixed (Fixed-buffer), eager (Eager), got 'graph'"),
    ],
)
def test_bad_link_parameters_become_notes_and_keep_defaults(params, fragment):
    restored, notes = from_query(params)
    assert any(fragment in note for note in notes), notes
    assert restored.strategy.to_config(N_LAYERS).to_dict() == Settings().strategy.to_config(N_LAYERS).to_dict()


# A value the API refuses, per link parameter: (link key, the API's field, value). The API's words are the
# reference: its own refusal of the same value, through the API endpoint's inputs (Prompt, RunOptions).
API_REFUSED = [
    ("seed", "seed", str(2**40)),
    ("seed", "seed", "-1"),
    ("len", "length", "200000"),
    ("len", "length", "0"),
    ("new", "max_new_tokens", "513"),
    ("new", "max_new_tokens", "2.5"),
    ("depth", "depth", "1.5"),
    ("task", "task", "doc_qa"),
    ("task", "task", "bogus"),
]


def _api_refusal(field: str, value: str) -> str:
    from app.comparison import RunOptions
    from app.prompts import Prompt

    with pytest.raises(ValueError) as refused:
        if field == "max_new_tokens":
            RunOptions(max_new_tokens=value).spec()
        elif field == "length":
            Prompt(length=value).task_length()
        else:  # a tokenizer is never reached: the value is refused first
            Prompt(**{field: value if field == "task" else float(value)}).sample(None)
    return str(refused.value)


@pytest.mark.parametrize("key, field, value", API_REFUSED)
def test_a_link_refuses_what_the_api_refuses_in_its_words(key, field, value):
    """A link's seed of 2**40 (and a length or Max new tokens beyond the API's range, a task the picker lacks) was
    restored and refused only when the comparison was built; now the link refuses it at once, as the API does."""
    restored, notes = from_query({key: value})
    api = _api_refusal(field, value)
    assert getattr(restored, field) == getattr(Settings(), field)
    assert any(api.rstrip(".").split(", got")[0] in note for note in notes), (api, notes)


def test_a_links_seed_has_the_apis_range():
    """Hand-computed bounds: 0 and 2**31 - 1 are seeds, 2**31 and 2**40 are not."""
    for seed in (0, 2**31 - 1):
        assert from_query({"seed": str(seed)}) == (Settings(seed=seed), [])
    for seed in (2**31, 2**40):
        restored, notes = from_query({"seed": str(seed)})
        assert restored.seed == 0
        assert notes == [f"Link parameter seed='{seed}' was not used: Seed must be a whole number from 0 to "
                         f"2147483647, got '{seed}'."]  # fmt: skip


def test_a_links_task_alias_and_example_are_checked():
    assert from_query({"task": "niah"})[0].task == "needle"  # swaa_core's alias, shown as the picker's kind
    restored, notes = from_query({"ex": "no-such-example"})
    assert restored.example == "" and any("no ready example 'no-such-example'" in n for n in notes), notes


def test_the_decode_path_travels_in_links_and_widgets():
    assert to_query(Settings(decode_path="fixed")) == "?path=fixed" and to_query(Settings(decode_path="auto")) == ""
    for word, value in (("eager", "eager"), ("Fixed-buffer", "fixed"), ("AUTO", "auto")):
        restored, notes = from_query({"path": word})
        assert (restored.decode_path, notes) == (value, [])
    # older links: the on/off "Fixed-buffer decode" box
    for word, value in (("1", "fixed"), ("on", "fixed"), ("true", "fixed"), ("0", "eager"), ("off", "eager")):
        restored, notes = from_query({"fixed": word})
        assert (restored.decode_path, notes) == (value, [])
    restored, _notes = from_query({"fixed": "2", "w": "64"})
    assert restored.decode_path == "auto" and restored.strategy.window == 64  # a bad value blocks nothing else
    widgets = dict(model="", strategy=Strategy(), cot=False, adapter=None, source="task", task="needle", length=512.0,
                   depth=0.25, seed=None, max_new_tokens=12.0, example=None, pinned=None)  # fmt: skip
    assert Settings.from_widgets(**widgets, decode_path="eager").decode_path == "eager"
    assert Settings.from_widgets(**widgets, decode_path=None).decode_path == "auto"


@pytest.mark.parametrize("window, sinks, option", [(1e9, 0, "--window"), (256, 2**25, "--keep-first")])
def test_the_page_and_the_api_take_the_command_lines_ranges(window, sinks, option, capsys):
    """One set of bounds for every surface. Reference: the `swaa` command's own refusal of the same value."""
    from app.state import window_and_sinks
    from swaa_core.cli import main

    value = window if option == "--window" else sinks
    with pytest.raises(SystemExit):
        main(["recipes", "show", "swa", "--layers", "4", option, str(int(value))])
    cli = capsys.readouterr().err
    with pytest.raises(ValueError) as refused:
        window_and_sinks(window, sinks)
    assert "must be a whole number from" in str(refused.value)
    assert str(refused.value).split("must be ", 1)[1] in cli  # the same range, in the same words


def test_the_api_results_carry_the_configs_notes():
    """sinks=100000 at window 256 is legal but surprising: the command line notes it, and so do the API's rows."""
    from app.board import ColumnView
    from app.comparison import result_rows
    from swaa_core import SWAAConfig
    from swaa_core.eval.runner import RunResult

    cfg = SWAAConfig(sliding_window_size=256, keep_first=100_000)
    result = RunResult(label="swa", config=cfg.to_dict(), notes=cfg.notes(512))
    rows = result_rows([ColumnView("swa", "", False, result=result)], {})
    assert rows[0]["notes"] == cfg.notes(512) and any("keep_first=100000" in n for n in rows[0]["notes"])


@pytest.mark.parametrize(
    ("value", "static_cache", "expected"),
    [(None, None, "auto"), ("Eager", None, "eager"), ("fixed", None, "fixed"), ("auto", True, "fixed"),
     ("auto", "1", "fixed"), ("eager", False, "eager")],
)  # fmt: skip
def test_decode_path_choice(value, static_cache, expected):
    assert decode_path_choice(value, static_cache) == expected


def test_decode_path_choice_refuses_by_name():
    with pytest.raises(ValueError, match=r"Fixed-buffer decode is on, but Decode path asks for eager"):
        decode_path_choice("eager", True)
    with pytest.raises(ValueError, match=r"Decode path must be one of auto \(Auto\), fixed \(Fixed-buffer\)"):
        decode_path_choice("static")
