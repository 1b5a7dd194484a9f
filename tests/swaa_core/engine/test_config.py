from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from swaa_core import SWAAConfig, load_upstream_settings
from swaa_core.engine.config import UPSTREAM_KEYS, SWAAConfigError
from swaa_core.engine.kinds import SinkWindow
from swaa_core.engine.masks import mask_picture


def test_round_trip_upstream_fields():
    data = {"sliding_window_size": 2048, "keep_first": 100, "force_fa_decode": [0, 2], "non_sliding_layers": [5, 1]}
    cfg = SWAAConfig.from_dict(data)
    assert cfg.non_sliding_layers == [1, 5]
    assert cfg.to_dict() == {**data, "non_sliding_layers": [1, 5]}  # mask_kind at its default is left out
    assert cfg.kind == SinkWindow(2048, 100)  # what an upstream config means
    assert SWAAConfig.from_json(cfg.to_json()) == cfg
    assert tuple(SWAAConfig().to_dict()) == UPSTREAM_KEYS


@pytest.mark.parametrize(
    "data, message",
    [
        ({"sliding_window_size": 0}, "at least 1"),
        ({"sliding_window_size": -5}, "at least 1"),
        ({"sliding_window_size": "big"}, "whole number or None"),
        ({"sliding_window_size": 8, "keep_first": -1}, "keep_first"),
        ({"sliding_window_size": 8, "non_sliding_layers": [-2]}, "negative layer index"),
        ({"sliding_window_size": 8, "force_fa_decode": "yes"}, "force_fa_decode"),
        ({"sliding_window_size": 8, "window": 3}, "Unknown SWAA config field"),
        ({"sliding_window_size": 8, "mask_kind": "dilated"}, "mask_kind must be one of 'sink_window'.*got 'dilated'"),
        ({"sliding_window_size": 8, "mask_kind": None}, "mask_kind must be one of 'sink_window'.*got None"),
    ],
)
def test_bad_configs_say_what_is_wrong(data, message):
    with pytest.raises(SWAAConfigError, match=message):
        SWAAConfig.from_dict(data)


def test_validate_against_model_depth():
    SWAAConfig(sliding_window_size=8, non_sliding_layers=[0, 29]).validate(30)
    with pytest.raises(SWAAConfigError, match="has 30 layers"):
        SWAAConfig(sliding_window_size=8, force_fa_decode=[30]).validate(30)


def test_notes_explain_legal_but_surprising_settings():
    cfg = SWAAConfig(sliding_window_size=256, keep_first=500)
    notes = " ".join(cfg.notes(prompt_tokens=200))
    assert "fits in the window" in notes and "covers the whole prompt" in notes and ">= window" in notes
    assert SWAAConfig(sliding_window_size=256).notes(prompt_tokens=4000) == []


def test_notes_speak_of_the_mask_kind_the_config_selects():
    cfg = SWAAConfig(sliding_window_size=256, keep_first=500, mask_kind="chunked")
    notes = cfg.notes(prompt_tokens=200)
    assert "keep_first=500 >= chunk 256: sinks extend past the chunk, so early tokens dominate." in notes
    assert (
        "The prompt (200 tokens) fits in the chunk (256): chunked 256 + 500 sinks equals full attention here." in notes
    )
    assert not any("window" in n for n in notes)
    # natively sliding layers: chunks of 4 narrow a window of 5, not one of 3 (layer_rule: MaskKind.within)
    (native,) = SWAAConfig(sliding_window_size=4, mask_kind="chunked").notes(native_windows=[5, None, 3, None])
    assert "2 layer(s) already slide natively (window 3, 5): there SWAA narrows them to chunked 4," in native
    (native,) = SWAAConfig(sliding_window_size=8, mask_kind="chunked").notes(native_windows=[5, None])
    assert "there SWAA keeps the model's own window," in native


@pytest.mark.parametrize(
    "pattern, n, expected",
    [
        ("1/2", 8, [1, 3, 5, 7]),
        ("1/4", 12, [3, 7, 11]),
        ("none", 8, []),
        ("all", 3, [0, 1, 2]),
        ("every 3 from 0", 8, [0, 3, 6]),
        ("5, 1,9", 12, [1, 5, 9]),
        ("0", 4, [0]),  # an index list, as in the app's links (it once also meant "none")
        ("every 2 layers starting at 1", 6, [1, 3, 5]),
        ([4, 2], 8, [2, 4]),
    ],
)
def test_fa_layer_patterns(pattern, n, expected):
    assert SWAAConfig.fa_layers(pattern, n) == expected


def test_unknown_pattern_is_explained():
    with pytest.raises(SWAAConfigError, match="FA layers must be 'none', 'all', '1/k'"):
        SWAAConfig.fa_layers("half of them", 8)


def test_upstream_settings_file(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text(
        json.dumps(
            [
                {"swaa_config": {"sliding_window_size": 2048, "keep_first": 100}, "model_list": ["Qwen/Qwen3-4B"]},
                {"swaa_config": {"sliding_window_size": None}, "model_list": []},
            ]
        )
    )
    (cfg_a, models_a), (cfg_b, _) = load_upstream_settings(path)
    assert cfg_a == SWAAConfig(sliding_window_size=2048, keep_first=100) and models_a == ["Qwen/Qwen3-4B"]
    assert cfg_b.is_full_attention
    path.write_text('[{"model_list": []}]')
    with pytest.raises(SWAAConfigError, match="no 'swaa_config'"):
        load_upstream_settings(path)
    with pytest.raises(SWAAConfigError, match="not found"):
        load_upstream_settings(tmp_path / "missing.json")


@given(
    n=st.integers(1, 40),
    window=st.integers(1, 45),
    keep_first=st.integers(0, 45),
    prompt=st.integers(1, 40),
    fa_decode=st.booleans(),
)
def test_mask_picture_is_the_rule(n, window, keep_first, prompt, fa_decode):
    """The predicate every backend derives from, checked cell by cell against docs/paper.md's rule."""
    cfg = SWAAConfig(sliding_window_size=window, keep_first=keep_first, force_fa_decode=fa_decode)
    pic = mask_picture(cfg, n, prompt_tokens=prompt)
    expected = torch.tensor(
        [
            [j <= i and (i - j < window or j < keep_first or (fa_decode and i >= prompt)) for j in range(n)]
            for i in range(n)
        ]
    )
    assert torch.equal(pic, expected)


def test_mask_picture_of_a_full_layer_is_causal():
    cfg = SWAAConfig(sliding_window_size=2, non_sliding_layers=[3])
    assert torch.equal(mask_picture(cfg, 6, layer_idx=3), torch.ones(6, 6, dtype=torch.bool).tril())


def test_describe_names_the_layer_lists_of_upstream_files_apart():
    half_of_30 = SWAAConfig(2048, non_sliding_layers=list(range(1, 30, 2)))
    assert SWAAConfig(2048, non_sliding_layers=[1, 3, 5]).describe() == "SWA 2048 + FA layers 1,3,5"
    assert half_of_30.describe() == "SWA 2048 + FA layers 1,3,...,29"
    assert SWAAConfig(8, force_fa_decode=[0, 4, 8, 12]).describe() == "SWA 8 + FA decode in 0,4,...,12"


layer_lists = st.lists(st.integers(0, 40), max_size=12).map(lambda xs: sorted(set(xs)))
configs = st.builds(
    SWAAConfig,
    sliding_window_size=st.integers(1, 4096),
    keep_first=st.integers(0, 64),
    force_fa_decode=st.one_of(st.booleans(), layer_lists),
    non_sliding_layers=layer_lists,
)


def _meaning(cfg: SWAAConfig) -> tuple:
    fa = cfg.force_fa_decode
    return cfg.sliding_window_size, cfg.keep_first, fa if fa is True else tuple(fa or ()), tuple(cfg.non_sliding_layers)


@given(configs, configs)
def test_describe_gives_different_configs_different_names(a, b):
    if _meaning(a) != _meaning(b):  # force_fa_decode=[] and False mean the same: no layer decodes with FA
        assert a.describe() != b.describe()


def test_fa_layers_refuses_an_index_the_model_does_not_have():
    """Given the layer count, a list naming a layer past it is refused, not handed on ([99] for a 12-layer model)."""
    assert SWAAConfig.fa_layers("3,11", 12) == [3, 11]
    with pytest.raises(SWAAConfigError, match=r"names layer\(s\) \[12, 99\], but the model has 12 layers \(0-11\)"):
        SWAAConfig.fa_layers("99,12,3", 12)


def test_a_mask_kind_without_a_size_is_refused_not_dropped():
    """sliding_window_size None is full attention, where a chunked kind would be silently meaningless."""
    with pytest.raises(SWAAConfigError, match="mask_kind 'chunked' needs sliding_window_size \\(its chunk size\\)"):
        SWAAConfig.from_dict({"sliding_window_size": None, "mask_kind": "chunked"})
    assert SWAAConfig.from_dict({"sliding_window_size": None, "keep_first": 4}).is_full_attention  # upstream's baseline


def test_a_null_nested_config_is_full_attention_and_other_values_are_refused():
    """{"swaa_config": null}, as upstream files write full attention, is full attention; a nested value that is no
    object is refused by name, not called an unknown field."""
    from swaa_core.engine.config import SWAAConfig, SWAAConfigError

    assert SWAAConfig.from_dict({"swaa_config": None}).is_full_attention
    with pytest.raises(SWAAConfigError, match="swaa_config must be an object"):
        SWAAConfig.from_dict({"swaa_config": "2048"})
