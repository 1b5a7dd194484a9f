"""The app's plumbing without a model: ZeroGPU decoration, the shared model cache, streaming and Stop."""

from __future__ import annotations

import threading
import time
import types

import pytest

from app import engine
from app.board import CANCELLED, DONE, ERROR
from app.engine import ColumnSpec, ModelHub, stream_columns
from swaa_core.config import SWAAConfig
from swaa_core.runner import RunResult


def test_spaces_gpu_decorates_runs_when_zero_gpu_is_present(monkeypatch):
    calls = []

    def gpu(duration):
        def wrap(fn):
            calls.append((fn.__name__, duration))
            return fn

        return wrap

    monkeypatch.setattr(engine, "spaces", types.SimpleNamespace(GPU=gpu))

    @engine.on_gpu(duration=42)
    def run():
        return "ran"

    assert run() == "ran" and calls == [("run", 42)]


def test_without_spaces_the_decorator_changes_nothing():
    assert engine.spaces is None  # the package is not installed here, and importing app.engine did not fail

    def run():
        return 1

    assert engine.on_gpu(10)(run) is run


def test_model_hub_loads_once_and_retries_after_a_failure():
    attempts = []

    def load(name):
        attempts.append(name)
        if len(attempts) == 1:
            raise ValueError(f"{name} is not reachable")
        return f"model:{name}"

    hub = ModelHub(load)
    with pytest.raises(ValueError, match="not reachable"):
        hub.get("m")
    assert hub.get("m") == "model:m" and hub.get("m") == "model:m"
    assert attempts == ["m", "m"]


def test_concurrent_requests_share_one_load():
    started = threading.Event()

    def slow_load(name):
        started.set()
        time.sleep(0.3)
        return object()

    hub = ModelHub(slow_load)
    results = []
    threads = [threading.Thread(target=lambda: results.append(hub.get("m"))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and all(r is results[0] for r in results)


def _fake_run_one(tokens: int, delay: float):
    """Streams ``tokens`` pieces through on_token like swaa_core.runner.run_one and honours cancel."""

    def run_one(loaded, sample, config, *, label, max_new_tokens, cot, on_token, cancel):
        for i in range(tokens):
            if cancel.is_set():
                return RunResult(label=label, config=None, generated_tokens=i, error="Cancelled after some tokens.")
            on_token(f"t{i} ")
            time.sleep(delay)
        return RunResult(label=label, config=None, output_text="done", generated_tokens=tokens)

    return run_one


def test_columns_stream_in_order_and_finish():
    columns = [ColumnSpec("Full attention", None), ColumnSpec("SWA", SWAAConfig(sliding_window_size=8))]
    snapshots = []
    for views in stream_columns(lambda a: None, None, columns, max_new_tokens=5, cot=False, seed=0,
                                cancel=threading.Event(), run_one=_fake_run_one(5, 0.05), interval=0.05):  # fmt: skip
        snapshots.append([(v.status, v.text) for v in views])
    assert any(s[0][1] and not s[1][1] for s in snapshots), "the first column streamed before the second started"
    assert snapshots[-1] == [(DONE, "t0 t1 t2 t3 t4 "), (DONE, "t0 t1 t2 t3 t4 ")]


def test_cancel_stops_the_running_column_and_skips_the_rest():
    columns = [ColumnSpec("Full attention", None), ColumnSpec("SWA", SWAAConfig(sliding_window_size=8))]
    cancel = threading.Event()
    threading.Timer(0.2, cancel.set).start()
    *_, views = stream_columns(lambda a: None, None, columns, max_new_tokens=100, cot=False, seed=0, cancel=cancel,
                               run_one=_fake_run_one(100, 0.02), interval=0.05)  # fmt: skip
    assert [v.status for v in views] == [CANCELLED, CANCELLED]
    assert 0 < views[0].result.generated_tokens < 100 and views[1].result is None


def test_a_failing_column_shows_its_message_and_the_others_run():
    def run_one(loaded, sample, config, *, label, **kw):
        if config is not None:
            raise ValueError("this model has 30 layers")
        return RunResult(label=label, config=None, output_text="ok")

    columns = [ColumnSpec("Full attention", None), ColumnSpec("SWA", SWAAConfig(sliding_window_size=8))]
    *_, views = stream_columns(lambda a: None, None, columns, max_new_tokens=1, cot=False, seed=0,
                               cancel=threading.Event(), run_one=run_one, interval=0.01)  # fmt: skip
    assert views[0].status == DONE
    assert (views[1].status, views[1].error) == (ERROR, "this model has 30 layers")


def test_out_of_memory_reads_as_advice():
    text = engine.friendly_error(MemoryError())
    assert text.startswith("Out of memory") and "shorter prompt" in text
