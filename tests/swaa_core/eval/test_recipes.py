"""Recipes: the paper presets resolve to the configs docs/paper.md describes; user recipes round-trip through JSON and
upstream settings files are accepted."""

from __future__ import annotations

import json
import re

import pytest

from swaa_core.engine.config import SWAAConfig, SWAAConfigError, load_upstream_settings
from swaa_core.eval.recipes import (
    default_window,
    get_recipe,
    list_recipes,
    load_user_recipes,
    resolve_recipe,
    save_user_recipes,
    unused_settings,
)

ODD = list(range(1, 30, 2))  # the paper's "1/2": odd layers of a 30-layer model
EVERY_4TH = list(range(3, 30, 4))  # "1/4": layers 3, 7, 11, ...

# name -> (keep_first, force_fa_decode, non_sliding_layers) for a 30-layer model, window 256, 10 sinks
EXPECTED = {
    "swa": (0, False, []),
    "swa-fa-decode": (0, True, []),
    "swa-sinks": (10, False, []),
    "swa-sinks-fa-decode": (10, True, []),
    "swa-quarter-fa-fa-decode": (0, True, EVERY_4TH),
    "swa-half-fa": (0, False, ODD),
    "swa-half-fa-fa-decode": (0, True, ODD),
    "recommended": (10, True, ODD),
}


def test_presets_are_the_papers_with_full_attention_first():
    names = [r.name for r in list_recipes()]
    assert names[0] == "full"
    assert set(names) == {"full", *EXPECTED}
    assert len(set(names)) == len(names)
    assert all(r.title and r.description for r in list_recipes())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_presets_resolve_for_a_model(name):
    cfg = resolve_recipe(name, 30, window=256)
    keep_first, fa_decode, layers = EXPECTED[name]
    assert cfg.to_dict() == {
        "sliding_window_size": 256,
        "keep_first": keep_first,
        "force_fa_decode": fa_decode,
        "non_sliding_layers": layers,
    }


def test_full_attention_resolves_to_none():
    assert resolve_recipe("full", 30) is None
    assert resolve_recipe("Full Attention", 30) is None  # names are forgiving about case and spaces


def test_layer_patterns_follow_the_model_depth():
    assert resolve_recipe("swa-half-fa", 8, window=64).non_sliding_layers == [1, 3, 5, 7]
    assert resolve_recipe("swa-quarter-fa-fa-decode", 36, window=64).non_sliding_layers == list(range(3, 36, 4))


@pytest.mark.parametrize("context, window", [(None, 2048), (1024, 256), (2048, 256), (4096, 512), (24_000, 2048)])
def test_default_window_scales_with_the_context(context, window):
    assert default_window(context) == window
    assert resolve_recipe("swa", 30, context_tokens=context).sliding_window_size == window


def test_keep_first_applies_to_sink_recipes_only():
    assert resolve_recipe("recommended", 30, window=512, keep_first=4).keep_first == 4
    assert resolve_recipe("swa-fa-decode", 30, window=512, keep_first=4).keep_first == 0


def test_unknown_recipe_lists_the_known_ones():
    with pytest.raises(SWAAConfigError, match="Known recipes: full, swa,"):
        get_recipe("swa-everything")


def test_inline_json_and_config_objects_resolve_as_given():
    cfg = resolve_recipe('{"sliding_window_size": 128, "keep_first": 4}', 30, window=999)
    assert (cfg.sliding_window_size, cfg.keep_first) == (128, 4)
    same = SWAAConfig(sliding_window_size=64, non_sliding_layers=[2])
    assert resolve_recipe(same, 30) is same
    with pytest.raises(SWAAConfigError, match="names layer"):
        resolve_recipe(SWAAConfig(sliding_window_size=64, non_sliding_layers=[40]), 30)


def test_user_recipes_round_trip_and_are_upstream_settings(tmp_path):
    mine = {
        "tight": SWAAConfig(sliding_window_size=128, keep_first=4, force_fa_decode=True),
        "layers": SWAAConfig(sliding_window_size=512, non_sliding_layers=[0, 5]),
    }
    path = save_user_recipes(tmp_path / "recipes.json", mine)
    loaded = load_user_recipes(path)
    assert {k: v.to_dict() for k, v in loaded.items()} == {k: v.to_dict() for k, v in mine.items()}
    # upstream's own loader reads the same file
    assert [cfg.to_dict() for cfg, _ in load_upstream_settings(path)] == [v.to_dict() for v in mine.values()]
    assert resolve_recipe("tight", 30, window=2048, user_recipes=loaded).sliding_window_size == 128


def test_upstream_settings_file_loads_with_descriptive_names(tmp_path):
    upstream = [
        {"swaa_config": {"sliding_window_size": 2000, "keep_first": 10, "force_fa_decode": True}, "model_list": ["a"]},
        {"swaa_config": {"sliding_window_size": None, "keep_first": 0}, "model_list": ["a"]},
        {"swaa_config": {"sliding_window_size": 2000, "keep_first": 10, "force_fa_decode": True}, "model_list": ["b"]},
    ]
    path = tmp_path / "non_sft_settings.json"
    path.write_text(json.dumps(upstream))
    loaded = load_user_recipes(path)
    assert list(loaded) == ["SWA 2000 + 10 sinks + FA decode", "full attention", "SWA 2000 + 10 sinks + FA decode (2)"]
    assert loaded["full attention"].is_full_attention


def test_bare_config_lists_and_objects_load_with_their_names(tmp_path):
    """A file holding the configs themselves (no upstream "swaa_config" wrapper): a list, named or not, or one."""
    listed = tmp_path / "list.json"
    listed.write_text(
        json.dumps(
            [
                {"sliding_window_size": 512, "keep_first": 4},
                {"name": "fad", "sliding_window_size": 256, "force_fa_decode": True},
            ]
        )
    )
    loaded = load_user_recipes(listed)
    assert {k: v.to_dict() for k, v in loaded.items()} == {
        "SWA 512 + 4 sinks": SWAAConfig(sliding_window_size=512, keep_first=4).to_dict(),
        "fad": SWAAConfig(sliding_window_size=256, force_fa_decode=True).to_dict(),
    }
    single = tmp_path / "one.json"
    single.write_text(json.dumps({"sliding_window_size": 64, "non_sliding_layers": [1]}))
    assert [v.to_dict() for v in load_user_recipes(single).values()] == [
        SWAAConfig(sliding_window_size=64, non_sliding_layers=[1]).to_dict()
    ]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"sliding_window_size": 64, "sinks": 4}]))
    with pytest.raises(SWAAConfigError, match="Unknown SWAA config field"):
        load_user_recipes(bad)


@pytest.mark.parametrize(
    "name, window, keep_first, says",
    [
        ("swa", None, 4, "'swa' keeps no sink tokens, so 4 sinks are not used"),
        ("swa-half-fa-fa-decode", 512, 4, "keeps no sink tokens"),
        ("swa-sinks", 512, 4, None),
        ("recommended", None, 4, None),
        ("swa", 512, None, None),
        ("full", 512, 4, "'full' is full attention: the window 512 and 4 sinks you chose are not used"),
        (
            "mine",
            512,
            None,
            "'mine' is a saved config and runs as saved (SWA 64): the window 512 you chose is not used",
        ),
        ("mine", None, None, None),
    ],
)
def test_unused_settings_name_what_a_recipe_ignores(name, window, keep_first, says):
    """Every (recipe, setting) pair where resolve_recipe drops the setting gets a note, and only those: checked
    against the config resolve_recipe actually builds."""
    user = {"mine": SWAAConfig(sliding_window_size=64)}
    notes = unused_settings(name, window=window, keep_first=keep_first, user_recipes=user)
    cfg = resolve_recipe(name, 30, window=window, keep_first=keep_first, user_recipes=user)
    dropped = (window is not None and (cfg is None or cfg.sliding_window_size != window)) or (
        bool(keep_first) and (cfg is None or cfg.keep_first != keep_first)
    )
    assert bool(notes) == dropped
    if says:
        assert len(notes) == 1 and says in notes[0]
    if notes and "sink tokens" in notes[0]:
        assert "swa-sinks, swa-sinks-fa-decode, recommended" in notes[0]


def test_recipe_file_errors_name_the_file_and_the_recipe(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps([{"name": "my-mix", "swaa_config": {"sliding_window_size": 512, "keep_frist": 4}}]))
    with pytest.raises(SWAAConfigError) as caught:
        load_user_recipes(path)
    assert str(caught.value).startswith(f"Recipe file {path}: Entry 0 ('my-mix'): Unknown SWAA config field(s)")
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps([{"name": "tight", "sliding_window_size": 64, "keep_frist": 4}]))
    with pytest.raises(SWAAConfigError, match=rf"^Recipe file {re.escape(str(bare))}: Recipe 'tight': Unknown"):
        load_user_recipes(bare)
    with pytest.raises(SWAAConfigError, match="is a folder"):
        load_user_recipes(tmp_path)
    binary = tmp_path / "weights.json"
    binary.write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(SWAAConfigError, match="is not text"):
        load_user_recipes(binary)


def test_an_unknown_name_lists_the_files_recipes_and_the_closest_one():
    mine = {"my-mix": SWAAConfig(sliding_window_size=64), "other": SWAAConfig(sliding_window_size=32)}
    with pytest.raises(SWAAConfigError) as caught:
        resolve_recipe("my-mx", 8, user_recipes=mine)
    message = str(caught.value)
    assert "Known recipes: full, swa" in message and "Your recipes file has: 'my-mix', 'other'." in message
    assert message.endswith("Did you mean 'my-mix'?")
    with pytest.raises(SWAAConfigError) as caught:
        resolve_recipe("zzz", 8)
    assert "recipes file" not in str(caught.value)  # no file, no mention of one


def test_name_to_config_objects_load_too(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"narrow": {"sliding_window_size": 32}}))
    assert load_user_recipes(path)["narrow"].sliding_window_size == 32


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"narrow": {"sliding_window": 32}}), "Unknown SWAA config field"),
        (json.dumps([{"model_list": []}]), "no 'swaa_config'"),
    ],
)
def test_bad_recipe_files_are_explained(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(SWAAConfigError, match=message):
        load_user_recipes(path)
    with pytest.raises(SWAAConfigError, match="not found"):
        load_user_recipes(tmp_path / "missing.json")
