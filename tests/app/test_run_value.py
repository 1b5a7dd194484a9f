"""One run value and one set of words from every surface: the same settings through the command line, the API's
/compare and the page's handler make equal RunSpecs, and a bad window or layer list is refused in the same words
(after each surface's name for the field) by each."""

from __future__ import annotations

import gradio as gr
import pytest

from app import api
from app.comparison import Comparison, RunOptions
from app.prompts import Prompt
from app.state import Strategy, from_query
from app.tabs.compare import run_comparison
from swaa_core.cli import main
from swaa_core.engine.config import SWAAConfig, SWAAConfigError
from swaa_core.eval import runner
from swaa_core.eval.run_spec import RunSpec

EXPECTED = RunSpec(max_new_tokens=20, cot=True, decode_path="fixed")
STRATEGY = dict(window=256.0, sinks=10.0, fa_layers_mode="1/2", fa_layers=[], fa_decode_mode="all", fa_decode_layers=[])


class Reached(Exception):
    """Raised by a stand-in where the run value has been made: nothing needs to load or run."""


@pytest.fixture
def reached(monkeypatch):
    got: list[RunSpec] = []

    def take(spec):
        got.append(spec)
        raise Reached

    monkeypatch.setattr(Comparison, "build", staticmethod(lambda model, strategy, prompt, o: take(o.spec())))
    monkeypatch.setattr(runner, "compare", lambda *a, spec=None, **k: take(spec))
    return got


def api_compare(**change):
    """The /compare endpoint's first message (its inputs as a client sends them, the page's defaults)."""
    values = dict(model="", window=256, sinks=10, fa_layers="1/2", fa_decode="all", cot=False, adapter="",
                  source="task", task="needle", length=512, depth=0.25, seed=0, document="", question="", answer="",
                  answer_prefix="", max_new_tokens=12, pinned=None, static_cache=False, decode_path="auto")  # fmt: skip
    return next(api.compare(**{**values, **change}))


def page_compare(options: RunOptions, **strategy):
    """The page's Compare handler, with the values its widgets send (sliders send floats, the choice its value)."""
    return next(run_comparison(None, "", Strategy.from_widgets(**{**STRATEGY, **strategy}), Prompt(), options, 0))


def test_the_same_settings_make_equal_run_values_on_every_surface(reached, tiny_folder):
    with pytest.raises(Reached):
        main(["run", "Q?", "--model", tiny_folder, "--cot", "-n", "20", "--decode-path", "fixed", "--answer", "A"])
    for old_spelling in ({"decode_path": "fixed"}, {"static_cache": True}):
        with pytest.raises(gr.Error):  # the endpoint turns every exception into a message
            api_compare(cot=True, max_new_tokens=20, **old_spelling)
    with pytest.raises(Reached):
        page_compare(RunOptions(cot=True, adapter="", max_new_tokens=20.0, pinned=[], decode_path="Fixed-buffer"))
    assert reached == [EXPECTED] * 4


def _cli_error(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit):
        main(argv)
    return capsys.readouterr().err


def _api_error(**change) -> str:
    with pytest.raises(gr.Error) as info:
        api_compare(**change)
    return info.value.message


def _page_error(**strategy) -> str:
    with pytest.raises(SWAAConfigError) as info:
        page_compare(RunOptions(), **strategy)
    return str(info.value)


def _link_note(**params) -> str:
    _settings, notes = from_query(params)
    return " ".join(notes)


@pytest.mark.parametrize(
    ("cli", "api_window", "words"),
    [("0", 0, "must be a whole number from 1 to 16,777,216, got 0"),
     ("99999999", 99999999, "must be a whole number from 1 to 16,777,216, got 99999999"),
     ("12.5", 12.5, "expected a whole number, got '12.5'")],
)  # fmt: skip
def test_a_bad_window_gets_the_same_words_from_every_surface(cli, api_window, words, capsys):
    assert f"argument --window/-w: {words}" in _cli_error(["run", "Q?", "--window", cli], capsys)
    assert _api_error(window=api_window) == f"window: {words}"
    assert _page_error(window=api_window) == f"window: {words}"
    assert f"window: {words}" in _link_note(w=cli)


NEGATIVE = "holds a negative layer index (-3); layers are numbered from 0."
UNREADABLE = "must be 'none', 'all', '1/k' (such as '1/2'), 'every k from s' or layer indices such as '1,5,9'"


def test_a_bad_layer_list_gets_the_same_words_from_every_surface(capsys):
    config = '{"sliding_window_size": 64, "non_sliding_layers": [1, -3]}'
    assert f"argument --config: non_sliding_layers {NEGATIVE}" in _cli_error(["run", "Q?", "--config", config], capsys)
    with pytest.raises(gr.Error) as info:
        api.parse_config(config, "")
    assert info.value.message == f"non_sliding_layers {NEGATIVE}"
    assert _api_error(fa_layers="1,-3") == f"fa_layers {NEGATIVE}"
    assert _page_error(fa_layers_mode="custom", fa_layers=[1, -3]) == f"fa_layers {NEGATIVE}"
    assert f"fa_layers {NEGATIVE}" in _link_note(fal="1,-3")
    # text the grammar cannot read: the library (recipes), the API and links say the same
    with pytest.raises(SWAAConfigError) as info:
        SWAAConfig.fa_layers("1,x", 30)
    assert str(info.value) == f"FA layers {UNREADABLE}; got '1,x'."
    assert _api_error(fa_layers="1,x") == f"fa_layers {UNREADABLE}; got '1,x'."
    assert _api_error(fa_decode="1,x") == f"fa_decode {UNREADABLE}; got '1,x'."
    assert f"fa_layers {UNREADABLE}; got '1,x'." in _link_note(fal="1,x")


@pytest.mark.parametrize(("given", "on"), [("false", False), ("0", False), ("off", False), ("", False), (None, False),
                                           (False, False), ("true", True), ("1", True), ("on", True), (True, True)])  # fmt: skip
def test_chain_of_thought_reads_words_as_the_page_means_them(given, on):
    """The API and links hand the checkbox a word ('false' is truthy as a Python string): every surface reads it by
    the one rule, the page's sweeps too."""
    from app.sweep_runs import RecipeSweepSettings

    assert RunOptions(cot=given).spec().cot is on
    assert RecipeSweepSettings(recipes=("swa",), cot=given).cot is on
    if given is not None and not isinstance(given, bool):
        settings, notes = from_query({"cot": given})
        assert (settings.cot, notes) == (on, [])


def test_a_word_that_is_no_answer_is_refused_by_the_checkbox_name():
    from app.sweep_runs import RecipeSweepSettings

    with pytest.raises(ValueError, match="Chain of thought must be on or off"):
        RunOptions(cot="maybe").spec()
    with pytest.raises(ValueError, match="Chain of thought must be on or off"):
        RecipeSweepSettings(recipes=("swa",), cot="maybe")
    settings, notes = from_query({"cot": "maybe"})
    assert settings.cot is False and "Chain of thought must be on or off" in notes[0]
