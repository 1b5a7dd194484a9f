"""The in-process model cache: one shared copy per (model, device, dtype, attention), LRU-evicted under a byte
budget, with a lock per model because the SWAA engine keeps per-call state on the model.

It is the only holder of loaded models: the app and the CLI get theirs through ``load_model`` and keep no
reference of their own, so an eviction here frees the memory.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable

import torch

from .loaded import LoadedModel, ModelLoadError

log = logging.getLogger(__name__)

__all__ = ["ModelCache", "model_cache"]

CACHE_BUDGET_ENV = "SWAA_MODEL_CACHE_GB"


class ModelCache:
    """One loaded copy per key, shared by all callers; a lock per key so concurrent requests load once.

    Bounded by ``max_bytes`` of weights (the newest model always stays); least recently used models go first,
    and models whose lock is held (running) only when nothing idle is left.
    """

    def __init__(self, max_bytes: int | None = None):
        self.max_bytes = max_bytes if max_bytes is not None else _default_budget()
        self._entries: OrderedDict[tuple, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self._key_locks: dict[tuple, threading.Lock] = {}

    def get_or_load(self, key: tuple, loader: Callable[[], LoadedModel]) -> LoadedModel:
        with self._lock:
            hit = self._touch(key)
            if hit is not None:
                return hit
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                hit = self._touch(key)
            if hit is not None:
                return hit
            loaded = loader()
            with self._lock:
                self._entries[key] = loaded
                evicted = self._evict_over_budget(keep=key)
            if evicted:
                release_memory()
            return loaded

    def _touch(self, key: tuple) -> LoadedModel | None:
        hit = self._entries.get(key)
        if hit is not None:
            self._entries.move_to_end(key)
        return hit

    @property
    def total_bytes(self) -> int:
        return sum(m.info.weight_bytes for m in self._entries.values())

    def _evict_over_budget(self, keep: tuple) -> int:
        count = 0
        while self.total_bytes > self.max_bytes and len(self._entries) > 1:
            self._pop_victim(exclude=keep)
            count += 1
        return count

    def _pop_victim(self, exclude: tuple | None = None) -> LoadedModel | None:
        candidates = [k for k in self._entries if k != exclude]
        if not candidates:
            return None
        idle = [k for k in candidates if _is_idle(self._entries[k])]
        victim = (idle or candidates)[0]
        log.info("Evicting %s from the model cache", self._entries[victim].name)
        return self._entries.pop(victim)

    def evict_one(self, on_gpu: bool = False) -> bool:
        """Drop the least recently used idle model held in RAM (or on a GPU) to make room; False when none is."""
        with self._lock:
            idle = [k for k, m in self._entries.items() if m.info.device.startswith("cuda") == on_gpu and _is_idle(m)]
            if not idle:
                return False
            self._entries.pop(idle[0])
            return True

    def evict_stale(self, key: tuple) -> int:
        """Drop the entries whose key equals ``key`` but in its last item (the content stamp of a local path): the
        path has been written to since they loaded. Returns how many went."""
        with self._lock:
            stale = [k for k in self._entries if k[:-1] == key[:-1] and k[-1] != key[-1]]
            for k in stale:
                log.info("%s changed on disk since it was loaded; dropping the old copy", self._entries[k].name)
                del self._entries[k]
        if stale:
            release_memory()
        return len(stale)

    def evict(self, key: tuple) -> bool:
        with self._lock:
            return self._entries.pop(key, None) is not None

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
        release_memory()

    def keys(self) -> list[tuple]:
        with self._lock:
            return list(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


def _is_idle(loaded: LoadedModel) -> bool:
    if loaded.lock.acquire(blocking=False):
        loaded.lock.release()
        return True
    return False


def _default_budget() -> int:
    """Half of RAM plus half of the GPUs' memory, or $SWAA_MODEL_CACHE_GB."""
    if os.environ.get(CACHE_BUDGET_ENV):
        try:
            return int(float(os.environ[CACHE_BUDGET_ENV]) * 1024**3)
        except ValueError:
            value = os.environ[CACHE_BUDGET_ENV]
            raise ModelLoadError(f"{CACHE_BUDGET_ENV} must be a number of GiB, got {value!r}.") from None
    import psutil

    total = psutil.virtual_memory().total
    if torch.cuda.is_available():
        total += sum(torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count()))
    return total // 2


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


_MODEL_CACHE: ModelCache | None = None
_MODEL_CACHE_LOCK = threading.Lock()


def model_cache() -> ModelCache:
    """The process-wide model cache shared by the app, the CLI and the runner."""
    global _MODEL_CACHE
    with _MODEL_CACHE_LOCK:
        if _MODEL_CACHE is None:
            _MODEL_CACHE = ModelCache()
        return _MODEL_CACHE
