"""The app's models: swaa_core's model cache shared by every session (HUB), base models with a LoRA adapter merged in
(ADAPTERS), where models may load from on a Space, the device the app runs on, and ZeroGPU. No model mathematics
here: every model call is swaa_core's.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

import torch

import swaa_core
from swaa_core.models.registry import DEFAULT_MODEL
from swaa_core.runtime.stamp import path_stamp

from .errors import friendly_error

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


HUB = ModelHub()  # base models, shared by every session
ADAPTERS = AdapterModels()  # base models with a LoRA adapter merged in


def loaded_model(name: str | None):
    """The loaded model called ``name`` (None: the embedded default), loading it on first use."""
    return HUB.get(name or DEFAULT_MODEL)


def num_layers(loaded) -> int:
    return loaded.info.num_layers


def native_windows(loaded) -> dict[int, list[int]]:
    """{window: the layers that slide by it} for the model's own sliding layers, every window of every layer (the
    load's ModelInfo keeps each: a model may slide different layers by different widths); {} for none."""
    by_window: dict[int, list[int]] = {}
    for layer, window in enumerate(loaded.info.native_windows):
        if window:
            by_window.setdefault(window, []).append(layer)
    return by_window
