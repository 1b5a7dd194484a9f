"""The app's bridge to swaa_core: the shared model cache, device facts, ZeroGPU, streamed side-by-side runs, and
turning exceptions into messages people can act on. No model mathematics here: every model call is swaa_core's.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

import swaa_core
from swaa_core.engine.config import SWAAConfig
from swaa_core.runtime.stamp import path_stamp

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


_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{20,}\b")


def redact(text: str) -> str:
    """``text`` with Hugging Face tokens (HF_TOKEN's value and anything shaped like hf_...) replaced by ***."""
    secret = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if secret:
        text = text.replace(secret, "***")
    return _TOKEN.sub("***", text)


def friendly_error(exc: BaseException) -> str:
    """One paragraph for the UI: what went wrong and what to try. Tracebacks go to the server log only, and no
    access token reaches either."""
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return (
            "Out of memory. Try a shorter prompt, fewer new tokens, fewer columns, a smaller window in more layers, "
            "or a smaller model."
        )
    if isinstance(exc, ValueError | KeyError | FileNotFoundError | TimeoutError):
        text = (exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)).strip()
        return redact(text or f"{type(exc).__name__} without a message.")
    if isinstance(exc, OSError):
        return redact(f"Could not read or fetch a file: {exc}")
    log.error("unexpected error in the app: %s", redact(f"{type(exc).__name__}: {exc}"))
    if log.isEnabledFor(logging.DEBUG):  # tracebacks only when asked for (SWAA_LOG_LEVEL=DEBUG): they may hold URLs
        log.debug("traceback", exc_info=exc)
    return redact(f"Unexpected error ({type(exc).__name__}): {exc}. The details are in the server log.")


# ---------------------------------------------------------------- where models may come from
ALLOWED_DIRS_ENV = "SWAA_ALLOWED_DIRS"
DEFAULT_ALLOWED_DIRS = ("adapters", "runs")


def check_source_allowed(name: str, what: str = "model") -> None:
    """On a Hugging Face Space (SPACE_ID set) local paths must lie inside the allowed folders ($SWAA_ALLOWED_DIRS,
    separated by the OS path separator; default adapters/ and runs/): visitors must not make the server read
    arbitrary files. Hub ids and embedded names pass everywhere; elsewhere (a local run) any path passes."""
    if not os.environ.get("SPACE_ID") or not name:
        return
    from swaa_core.models.registry import find_model_entry

    path = Path(name).expanduser()
    if find_model_entry(name) is not None or (not path.exists() and not name.startswith((".", "/", "~"))):
        return  # an embedded/curated name or a Hub id
    roots = [r for r in os.environ.get(ALLOWED_DIRS_ENV, os.pathsep.join(DEFAULT_ALLOWED_DIRS)).split(os.pathsep) if r]
    resolved = path.resolve()
    if not any(resolved.is_relative_to(Path(r).resolve()) for r in roots):
        raise ValueError(
            f"This Space loads a {what} from the Hugging Face Hub or from its folder(s) {', '.join(roots)}; "
            f"{name!r} is a local path outside them."
        )


# ---------------------------------------------------------------- models shared by all sessions
class ModelHub:
    """The app's door to swaa_core's model cache, shared by every browser session.

    It holds no model itself: swaa_core's LRU cache owns every loaded model, so when the cache evicts one its memory
    is freed. The hub only serialises loads per name (one load at a time, later requests then hit the cache) and
    remembers which names loaded, so the page can tell "ready" from "still loading" without waiting.
    """

    def __init__(self, load: Callable = swaa_core.load_model):
        self._load = load
        self._locks: dict[str, threading.Lock] = {}
        self._ready: set[str] = set()
        self._loading: set[str] = set()
        self._lock = threading.Lock()

    def preload(self, name: str) -> None:
        """Load ``name`` in a background thread (errors are logged; the first request re-raises them)."""

        def work() -> None:
            try:
                self.get(name)
            except Exception as e:  # noqa: BLE001 - a failed preload only logs; the page says it on first use
                log.warning("Preloading %s failed: %s", name, friendly_error(e))

        threading.Thread(target=work, name=f"load {name}", daemon=True).start()

    def get(self, name: str, timeout: float | None = None):
        """The loaded model from swaa_core's cache (waits while another request loads the same name); the load's
        own exception if it fails. ``timeout``: seconds to wait for another request's load (TimeoutError)."""
        with self._lock:
            lock = self._locks.setdefault(name, threading.Lock())
        if not lock.acquire(timeout=-1 if timeout is None else timeout):
            raise TimeoutError(f"{name} is still loading; try again in a moment.")
        try:
            with self._lock:
                self._loading.add(name)
            check_source_allowed(name)
            loaded = self._load(name)
            with self._lock:
                self._ready.add(name)
            return loaded
        finally:
            with self._lock:
                self._loading.discard(name)
            lock.release()

    def is_ready(self, name: str) -> bool:
        """True once ``name`` loaded and no load of it is under way (it may still need a reload after eviction)."""
        with self._lock:
            return name in self._ready and name not in self._loading


@dataclass
class ColumnSpec:
    label: str
    config: SWAAConfig | None  # None: full attention
    adapter: str = ""  # a LoRA adapter folder or Hub id this column runs with ("" = the base model)


class AdapterModels:
    """Base models with a LoRA adapter merged in, one private copy per (base model, adapter, adapter's content).

    load_adapter changes the model it is given, and the base model is shared by every session and by the
    full-attention column, so each adapter gets its own copy (memory: one more set of weights per adapter). The key
    holds the content stamps of a local base folder and of a local adapter folder: an adapter trained again into
    the same folder is merged again, never served stale.
    """

    def __init__(self, max_models: int = 2):
        self._models: dict[tuple, object] = {}
        self._lock = threading.Lock()
        self.max_models = max_models

    def get(self, loaded, adapter: str):
        if not adapter:
            return loaded
        check_source_allowed(adapter, "LoRA adapter")
        key = (loaded.name, path_stamp(loaded.name), adapter, path_stamp(adapter))
        with self._lock:
            for stale in [k for k in self._models if k[0] == key[0] and k[2] == adapter and k != key]:
                del self._models[stale]  # the base reloaded or the folder rewritten: this copy is out of date
            if key not in self._models:
                self._models[key] = self._build(loaded, adapter)
                while len(self._models) > self.max_models:
                    self._models.pop(next(iter(self._models)))
            return self._models[key]

    @staticmethod
    def _build(loaded, adapter: str):
        from swaa_core.train import load_adapter

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
    registry: CancelRegistry | None = None,
    decode_path: str = "auto",
) -> Iterator[list[ColumnView]]:
    """Run the columns one after the other in a worker thread; yield the board every ``interval`` seconds while
    tokens stream, and once more at the end. Setting ``cancel`` stops the running column and skips the rest.
    ``model_for(adapter)`` gives the loaded model a column runs on (the base model for ""). ``registry`` tracks
    the worker thread so a shutdown can wait for it. ``decode_path``: every column's (run_one's option: auto, fixed
    or eager), so their timings stay comparable."""
    if run_one is None:
        from swaa_core.eval.runner import run_one
    views = [
        ColumnView(c.label, c.config.describe() if c.config else "full attention", c.config is None) for c in columns
    ]
    finished = threading.Event()

    def _generate(spec: ColumnSpec, on_token: Callable[[str], None]):
        return run_one(
            model_for(spec.adapter), sample, spec.config, label=spec.label, max_new_tokens=max_new_tokens, cot=cot,
            on_token=on_token, cancel=cancel, decode_path=decode_path,
        )  # fmt: skip

    def work() -> None:
        try:
            for view, spec in zip(views, columns, strict=True):
                if cancel.is_set():
                    view.status = CANCELLED
                    continue
                torch.manual_seed(seed)  # greedy decoding is deterministic; this also pins anything sampled downstream
                _run_column(view, cancel, functools.partial(_generate, spec))
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


def elapsed(start: float) -> str:
    return f"{time.perf_counter() - start:.1f} s"
