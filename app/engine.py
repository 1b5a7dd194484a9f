"""The app's bridge to swaa_core: the shared model cache, device facts, ZeroGPU, streamed side-by-side runs, and
turning exceptions into messages people can act on. No model mathematics here: every model call is swaa_core's.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

import swaa_core
from swaa_core.config import SWAAConfig

from .board import CANCELLED, DONE, ERROR, RUNNING, ColumnView

log = logging.getLogger("swaa_app")

try:  # Hugging Face ZeroGPU: a GPU is attached only while a function decorated with spaces.GPU runs.
    import spaces  # type: ignore[import-not-found]
except ImportError:
    spaces = None


def on_gpu(duration: int = 120) -> Callable:
    """spaces.GPU(duration) on ZeroGPU Spaces, a no-op everywhere else (no import error without `spaces`)."""

    def wrap(fn):
        return spaces.GPU(duration=duration)(fn) if spaces is not None else fn

    return wrap


def device_summary() -> str:
    if spaces is not None and os.environ.get("SPACES_ZERO_GPU"):
        return "ZeroGPU (a GPU is attached while a run is in progress)"
    if torch.cuda.is_available():
        return f"CUDA: {torch.cuda.get_device_name(0)}"
    return f"CPU ({os.cpu_count()} cores)"


def friendly_error(exc: BaseException) -> str:
    """One paragraph for the UI: what went wrong and what to try. Tracebacks go to the server log only."""
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return (
            "Out of memory. Try a shorter prompt, fewer new tokens, fewer columns, a smaller window in more layers, "
            "or a smaller model."
        )
    if isinstance(exc, ValueError | KeyError | FileNotFoundError):
        text = str(exc).strip("'\" ")
        return text or f"{type(exc).__name__} without a message."
    if isinstance(exc, OSError):
        return f"Could not read or fetch a file: {exc}"
    log.exception("unexpected error in the app", exc_info=exc)
    return f"Unexpected error ({type(exc).__name__}): {exc}. The details are in the server log."


# ---------------------------------------------------------------- models shared by all sessions
class ModelHub:
    """Loaded models by name, shared by every browser session; the default one loads at start-up in the
    background so the page is up at once and the first run waits only for what is left."""

    def __init__(self, load: Callable = swaa_core.load_model):
        self._load = load
        self._models: dict[str, object] = {}
        self._errors: dict[str, BaseException] = {}
        self._events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def preload(self, name: str) -> None:
        threading.Thread(target=self._ensure, args=(name,), name=f"load {name}", daemon=True).start()

    def get(self, name: str, timeout: float | None = None):
        """The loaded model (waits while another request loads it); the load's own exception if it failed."""
        self._ensure(name, timeout)
        with self._lock:
            if name in self._errors:
                raise self._errors[name]
            return self._models[name]

    def is_ready(self, name: str) -> bool:
        with self._lock:
            return name in self._models

    def _ensure(self, name: str, timeout: float | None = None) -> None:
        with self._lock:
            event = self._events.get(name)
            owner = event is None or (event.is_set() and name in self._errors)
            if owner:  # first request, or a retry after a failed load
                event = self._events[name] = threading.Event()
                self._errors.pop(name, None)
        if not owner:
            if not event.wait(timeout):
                raise TimeoutError(f"{name} is still loading; try again in a moment.")
            return
        try:
            loaded = self._load(name)
            with self._lock:
                self._models[name] = loaded
        except BaseException as e:  # noqa: BLE001 - kept and re-raised to every waiting request
            with self._lock:
                self._errors[name] = e
        finally:
            event.set()


@dataclass
class ColumnSpec:
    label: str
    config: SWAAConfig | None  # None: full attention
    adapter: str = ""  # a LoRA adapter folder or Hub id this column runs with ("" = the base model)


class AdapterModels:
    """Base models with a LoRA adapter merged in, one private copy per (model, adapter).

    load_adapter changes the model it is given, and the base model is shared by every session and by the
    full-attention column, so each adapter gets its own copy (memory: one more set of weights per adapter).
    """

    def __init__(self, max_models: int = 2):
        self._models: dict[tuple[str, str], object] = {}
        self._lock = threading.Lock()
        self.max_models = max_models

    def get(self, loaded, adapter: str):
        if not adapter:
            return loaded
        key = (loaded.name, adapter)
        with self._lock:
            if key not in self._models:
                self._models[key] = self._build(loaded, adapter)
                while len(self._models) > self.max_models:
                    self._models.pop(next(iter(self._models)))
            return self._models[key]

    @staticmethod
    def _build(loaded, adapter: str):
        from swaa_core.finetune import load_adapter

        with loaded.lock:
            private = copy.deepcopy(loaded.model)
        merged, _config = load_adapter(private, adapter, merge=True)
        info = dataclasses.replace(loaded.info, name=f"{loaded.name} + {Path(adapter).name}")
        return dataclasses.replace(loaded, model=merged, info=info, lock=threading.RLock())


def stream_columns(
    model_for: Callable[[str], object],
    sample,
    columns: list[ColumnSpec],
    *,
    max_new_tokens: int,
    cot: bool,
    seed: int,
    cancel: threading.Event,
    run_one: Callable | None = None,
    interval: float = 0.25,
) -> Iterator[list[ColumnView]]:
    """Run the columns one after the other in a worker thread; yield the board every ``interval`` seconds while
    tokens stream, and once more at the end. Setting ``cancel`` stops the running column and skips the rest.
    ``model_for(adapter)`` gives the loaded model a column runs on (the base model for "")."""
    if run_one is None:
        from swaa_core.runner import run_one
    views = [
        ColumnView(c.label, c.config.describe() if c.config else "full attention", c.config is None) for c in columns
    ]
    finished = threading.Event()

    def work() -> None:
        try:
            for view, spec in zip(views, columns, strict=True):
                if cancel.is_set():
                    view.status = CANCELLED
                    continue
                _run_column(model_for, sample, spec, view, run_one, max_new_tokens, cot, seed, cancel)
        finally:
            finished.set()

    threading.Thread(target=work, name="swaa run", daemon=True).start()
    while not finished.wait(interval):
        yield views
    yield views


def _run_column(model_for, sample, spec, view, run_one, max_new_tokens, cot, seed, cancel) -> None:
    view.status = RUNNING

    def on_token(piece: str) -> None:
        view.text += piece

    torch.manual_seed(seed)  # greedy decoding is deterministic; this also pins anything sampled downstream
    try:
        result = run_one(
            model_for(spec.adapter),
            sample,
            spec.config,
            label=spec.label,
            max_new_tokens=max_new_tokens,
            cot=cot,
            on_token=on_token,
            cancel=cancel,
        )
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


class CancelRegistry:
    """One cancel flag per browser session, so Stop reaches the run that session started."""

    def __init__(self):
        self._events: dict[str, threading.Event] = {}
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


def elapsed(start: float) -> str:
    return f"{time.perf_counter() - start:.1f} s"
