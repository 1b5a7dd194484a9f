"""Runs and their Stop buttons: one cancel flag per browser session (or API client), the model's queue, and the
comparison's columns streamed from a worker thread. The model work itself is swaa_core's runner.run_one.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Callable, Iterator

import gradio as gr
import torch

from swaa_core.eval.run_spec import RunSpec

from .board import CANCELLED, DONE, ERROR, RUNNING, ColumnView
from .columns import ColumnSpec
from .errors import friendly_error

HEAVY = "model"  # the concurrency group (and Gradio queue) of everything that runs the model
STOPPED_BEFORE_START = "Stopped before it started: this run was still waiting for the model."


class CancelRegistry:
    """One cancel flag per browser session, so Stop reaches the run that session started; at shutdown, every flag
    at once, and a wait for the threads that run models."""

    def __init__(self):
        self._events: dict[str, threading.Event] = {}
        self._threads: set[threading.Thread] = set()
        self._lock = threading.Lock()

    def start(self, session: str) -> threading.Event:
        with self._lock:
            event = self._events[session] = threading.Event()
            return event

    def cancel(self, session: str) -> bool:
        with self._lock:
            event = self._events.get(session)
        if event is None:
            return False
        event.set()
        return True

    def finish(self, session: str, event: threading.Event) -> None:
        with self._lock:
            if self._events.get(session) is event:
                del self._events[session]

    def track(self, thread: threading.Thread) -> None:
        """A thread that runs the model; shutdown waits for it."""
        with self._lock:
            self._threads.add(thread)

    def untrack(self, thread: threading.Thread) -> None:
        with self._lock:
            self._threads.discard(thread)

    def shutdown(self, timeout: float) -> bool:
        """Cancel every run and wait up to ``timeout`` seconds for the model threads; False if some still run."""
        deadline = time.monotonic() + timeout
        with self._lock:
            events, threads = list(self._events.values()), list(self._threads)
        for event in events:
            event.set()
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in threads if t is not threading.current_thread())


CANCELS = CancelRegistry()  # Stop buttons -> the run of the same session


def session_id(request: gr.Request | None) -> str:
    """The browser session (or API client) a request comes from: its Stop button cancels that session's run."""
    return request.session_hash if request is not None and request.session_hash else "local"


@contextlib.contextmanager
def session_run(request: gr.Request | None) -> Iterator[threading.Event]:
    """A run in this thread under the session's cancel flag (yielded): its Stop ends it, and a shutdown waits
    for it."""
    session, thread = session_id(request), threading.current_thread()
    cancel = CANCELS.start(session)
    CANCELS.track(thread)
    try:
        yield cancel
    finally:
        CANCELS.finish(session, cancel)
        CANCELS.untrack(thread)


async def stop_session(request: gr.Request | None) -> bool:
    """Stop this session's runs: the running one ends at its next step (finished results stay), and the ones still
    waiting in Gradio's queue for the model are taken out of it, so they never run; each ends for its page or
    client with STOPPED_BEFORE_START. True if anything was stopped."""
    session = session_id(request)
    running = CANCELS.cancel(session)
    return await _drop_waiting(request, session) > 0 or running


async def _drop_waiting(request: gr.Request | None, session: str) -> int:
    """Take ``session``'s events out of the model's queue, as Gradio's own cancel route does (Gradio 6 keeps the
    waiting events per concurrency id); 0 when the queue cannot be reached."""
    from gradio.server_messages import ProcessCompletedMessage

    try:
        queue = request.request.app.get_blocks()._queue
        waiting = list(queue.event_queue_per_concurrency_id[HEAVY].queue)
    except (AttributeError, KeyError):  # no queue (a direct call) or another Gradio: nothing waits here
        return 0
    mine = [event for event in waiting if event.session_hash == session]
    for event in mine:
        await queue.remove_from_queue(event._id)
        message = ProcessCompletedMessage(output={"error": STOPPED_BEFORE_START}, title="Stopped", success=False)
        queue.send_message(event, message)
    return len(mine)


def stream_columns(
    model_for: Callable[[str], object],
    sample,
    columns: list[ColumnSpec],
    *,
    spec: RunSpec,
    seed: int,
    cancel: threading.Event,
    run_one: Callable | None = None,
    interval: float = 0.25,
    registry: CancelRegistry | None = None,
) -> Iterator[list[ColumnView]]:
    """Run the columns one after the other in a worker thread; yield the board every ``interval`` seconds while
    tokens stream, and once more at the end. Setting ``cancel`` stops the running column and skips the rest.
    ``model_for(adapter)`` gives the loaded model a column runs on (the base model for ""). ``registry`` tracks
    the worker thread so a shutdown can wait for it. ``spec``: the one run value every column runs under, so their
    outputs and timings stay comparable."""
    if run_one is None:
        from swaa_core.eval.runner import run_one
    views = [
        ColumnView(c.label, c.config.describe() if c.config else "full attention", c.config is None) for c in columns
    ]
    finished = threading.Event()

    def _generate(column: ColumnSpec, on_token: Callable[[str], None]):
        return run_one(model_for(column.adapter), sample, column.config, label=column.label, on_token=on_token,
                       cancel=cancel, spec=spec)  # fmt: skip

    def work() -> None:
        try:
            for view, column in zip(views, columns, strict=True):
                if cancel.is_set():
                    view.status = CANCELLED
                    continue
                torch.manual_seed(seed)  # greedy decoding is deterministic; this also pins anything sampled downstream
                _run_column(view, cancel, functools.partial(_generate, column))
        finally:
            finished.set()
            if registry is not None:
                registry.untrack(worker)

    worker = threading.Thread(target=work, name="swaa run", daemon=True)
    if registry is not None:
        registry.track(worker)
    worker.start()
    while not finished.wait(interval):
        yield views
    yield views


def _run_column(view: ColumnView, cancel: threading.Event, generate: Callable) -> None:
    """Run one column: ``generate(on_token)`` is swaa_core's run_one for it; its tokens and result go to ``view``."""
    view.status = RUNNING

    def on_token(piece: str) -> None:
        view.text += piece

    try:
        result = generate(on_token)
    except Exception as e:  # noqa: BLE001 - one failing column must not hide the others
        view.status, view.error = ERROR, friendly_error(e)
        return
    view.result = result
    if cancel.is_set():
        view.status = CANCELLED
    elif result.error:
        view.status, view.error = ERROR, result.error
    else:
        view.status = DONE
