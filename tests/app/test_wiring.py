"""Widget groups reach handlers as one value, built in one place, and Gradio still injects gr.Request; the strategy
widgets map to a Strategy and back; the cached preset match agrees with rebuilding every preset (no model needed)."""

from __future__ import annotations

import inspect
import warnings

import gradio as gr
import pytest
from helpers.components import Names
from hypothesis import given, settings
from hypothesis import strategies as st

from app.columns import matching_recipe
from app.events import Group, flatten
from app.sidebar.strategy import STRATEGY, strategy_updates
from app.state import Strategy
from swaa_core.engine.config import SWAAConfig, SWAAConfigError
from swaa_core.eval.recipes import list_recipes


class Box:
    """Stands in for a component: Group and flatten only pass it through."""

    def __init__(self, name: str):
        self.name = name


def test_groups_arrive_as_one_value_and_special_parameters_keep_their_place():
    seen = {}

    def handler(model, strategy: Strategy, layer, request: gr.Request = None, progress=gr.Progress()):
        seen.update(model=model, strategy=strategy, layer=layer, request=request)
        return "done"

    widgets = {name: Box(name) for name in STRATEGY}
    fn, components = flatten(handler, [Box("model"), Group(Strategy.from_widgets, widgets), Box("layer")])
    assert [c.name for c in components] == ["model", *STRATEGY, "layer"]
    # What Gradio reads: one input per component, then gr.Request (by annotation) and gr.Progress (by default).
    from gradio import utils

    assert len(utils.get_positional_input_parameters(fn)) == len(components)
    assert list(inspect.signature(fn).parameters)[-2:] == ["request", "progress"]
    assert utils.get_type_hints(fn)["request"] is gr.Request

    values = ["m", 128.0, 4, "custom", [9, "3"], "layers", [2], 5]
    assert fn(*values, "the request") == "done"
    assert seen == {
        "model": "m",
        "strategy": Strategy(window=128, sinks=4, fa_layers_mode="custom", fa_layers=(3, 9), fa_decode_mode="layers",
                             fa_decode_layers=(2,)),
        "layer": 5,
        "request": "the request",
    }  # fmt: skip


def test_nested_groups_and_generators():
    inner = Group(lambda a, b: (a, b), {"a": Box("a"), "b": Box("b")})
    outer = Group(lambda pair, c: {"pair": pair, "c": c}, {"pair": inner, "c": Box("c")})

    def stream(x, value):
        yield x
        yield value

    fn, components = flatten(stream, [Box("x"), outer])
    assert [c.name for c in components] == ["x", "a", "b", "c"]
    assert inspect.isgeneratorfunction(fn)
    assert list(fn(0, 1, 2, 3)) == [0, {"pair": (1, 2), "c": 3}]


def test_without_groups_the_handler_is_left_alone():
    def handler(a, b):
        return a + b

    inputs = [Box("a"), Box("b")]
    assert flatten(handler, inputs) == (handler, inputs)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"window": 12.5}, "window: expected a whole number, got '12.5'"),
        ({"window": "abc"}, "window: expected a whole number, got 'abc'"),
        ({"window": 0}, "window: must be a whole number from 1 to 16,777,216, got 0"),
        ({"sinks": -1}, "sinks: must be a whole number from 0 to 16,777,216, got -1"),
        ({"fa_layers_mode": "most"}, "FA layers must be one of none, 1/4, 1/2, custom"),
        ({"fa_decode_mode": "sometimes"}, "FA decode must be one of off, all, layers"),
        ({"fa_layers": [-1]}, "negative layer index"),
    ],
)
def test_a_strategy_is_checked_once_when_it_is_built(change, message):
    with pytest.raises(SWAAConfigError) as excinfo:
        Strategy(**change)
    assert message in str(excinfo.value)


def test_a_bad_widget_value_is_a_toast_that_leaves_every_output():
    from app.errors import toast_errors

    fn, _ = flatten(lambda strategy: pytest.fail("the handler must not run"), [Group(Strategy.from_widgets,
                                                                                    {n: Box(n) for n in STRATEGY})])  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = toast_errors(fn, 2)(12.5, 10, "1/2", [], "all", [])
    assert [str(w.message) for w in caught] == ["window: expected a whole number, got '12.5'"]
    assert result == {"__type__": "update"}  # one skip: Gradio leaves every output as it was


def test_strategy_widgets_round_trip():
    s = Strategy(window=96, sinks=3, fa_layers_mode="custom", fa_layers=[2, 9], fa_decode_mode="layers",
                 fa_decode_layers=[0, 5])  # fmt: skip
    values = strategy_updates(Names(), s)
    assert list(values) == list(STRATEGY)
    strip = values["fa_decode_layers"]  # the decode strip is an update: its value and visibility
    assert Strategy.from_widgets(**{**values, "fa_decode_layers": strip.value}) == s
    assert strip.visible is True


def test_the_quick_page_events_return_only_their_own_outputs(loaded):
    """Every quick page event (those that never wait in the model's queue: opening the page, the controls, the
    prompt count, the config and its pictures) called with the values a fresh page sends: Gradio takes what each
    handler returns, whose dicts name only output components of that very event (Gradio's conversion refuses any
    other component)."""
    import asyncio
    from types import SimpleNamespace

    from gradio.blocks import Block

    from app.page import build_demo

    demo = build_demo()
    request = SimpleNamespace(query_params={}, session_hash="test-quick-events", request=None)
    by_component = 0
    for event in demo.fns.values():
        quick = event.api_visibility == "private" and event.concurrency_limit is None
        if not quick or event.fn is None or inspect.iscoroutinefunction(event.fn):
            continue  # an API endpoint, a model run, a script in the browser, a Stop
        takes_request = "request" in inspect.signature(event.fn).parameters
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # toasts of values a fresh page never sends (an empty JSON to apply)
            result = event.fn(*(c.value for c in event.inputs), **({"request": request} if takes_request else {}))
            results = list(result) if inspect.isgenerator(result) else [result]
        for value in results:
            asyncio.run(demo.postprocess_data(event, value, None))
            by_component += isinstance(value, dict) and bool(value) and all(isinstance(k, Block) for k in value)
    assert by_component >= 10


# ---------------------------------------------------------------- presets
def _rebuilt_match(cfg: SWAAConfig, n_layers: int):
    """Reference: build every preset at the config's own window and sinks, and compare."""
    for recipe in list_recipes():
        if recipe.sliding and recipe.config is None:
            built = recipe.build(n_layers, window=cfg.sliding_window_size, keep_first=cfg.keep_first or 1)
            if built.to_dict() == cfg.to_dict():
                return recipe
    return None


N_LAYERS = st.integers(1, 40)
presets = [r for r in list_recipes() if r.sliding]


@settings(max_examples=150, deadline=None)
@given(N_LAYERS, st.integers(1, 8192), st.integers(0, 300), st.sampled_from(presets), st.data())
def test_the_cached_preset_match_agrees_with_rebuilding_every_preset(n, window, sinks, recipe, data):
    built = recipe.build(n, window=window, keep_first=sinks)
    other = SWAAConfig(
        sliding_window_size=window,
        keep_first=sinks,
        force_fa_decode=data.draw(st.one_of(st.booleans(), st.lists(st.integers(0, n - 1), min_size=1, max_size=4))),
        non_sliding_layers=data.draw(st.lists(st.integers(0, n - 1), max_size=8)),
    )
    for cfg in (built, other):
        assert matching_recipe(cfg, n) == _rebuilt_match(cfg, n)
    assert matching_recipe(built, n) is not None


def test_every_sweep_has_a_stop_that_cancels_the_sessions_run_without_queueing():
    """Each sweep's Run button has a Stop beside it that reaches the run's cancel flag at once (a queued Stop would
    wait behind the very run it should end)."""
    import asyncio
    import inspect
    from types import SimpleNamespace

    from app.page import build_demo
    from app.runs import CANCELS
    from app.tabs.sweeps import SWEEP_STOPS

    demo = build_demo()
    ui = demo.ui
    events = {target: f for f in demo.fns.values() for target, _ in f.targets}
    runs = {"stop_sweep": ui.run_sweep, "stop_heat": ui.run_heat, "stop_decode_speed": ui.run_decode_speed}
    assert set(SWEEP_STOPS) == set(runs)
    for name, run in runs.items():
        stop = getattr(ui, name)
        assert stop.variant == "stop" and stop.visible is not False
        assert run._id in events and events[run._id].queue  # the run itself goes through the queue
        event = events[stop._id]
        assert event.queue is False and event.concurrency_limit is None
        cancel = CANCELS.start("session-a")
        other = CANCELS.start("session-b")
        try:
            stopped = event.fn(request=SimpleNamespace(session_hash="session-a"))
            if inspect.isawaitable(stopped):  # the stops are async: they also take waiting runs out of the queue
                asyncio.run(stopped)
            assert cancel.is_set() and not other.is_set(), name  # only the clicking session's run
        finally:
            CANCELS.finish("session-a", cancel)
            CANCELS.finish("session-b", other)
