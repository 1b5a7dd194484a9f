"""Sliding Window Attention Adaptation (SWAA) for Hugging Face causal LMs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .runtime.lazy import lazy_exports

# Public names and the modules that define them, imported on first use: `import swaa_core` (and the `swaa` command's
# --help and argument errors) then costs no torch / transformers import.
_EXPORTS = {
    "SWAAConfig": ".engine.config",
    "load_upstream_settings": ".engine.config",
    "DecodeResult": ".engine.fast_decode",
    "fast_generate": ".engine.fast_decode",
    "apply_swaa": ".engine.patch",
    "capture_attention": ".engine.patch",
    "kv_cache_bytes": ".engine.patch",
    "remove_swaa": ".engine.patch",
    "swaa": ".engine.patch",
}

if TYPE_CHECKING:
    from .engine.config import SWAAConfig, load_upstream_settings
    from .engine.fast_decode import DecodeResult, fast_generate
    from .engine.patch import apply_swaa, capture_attention, kv_cache_bytes, remove_swaa, swaa


__getattr__ = lazy_exports(__name__, _EXPORTS)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


def load_model(name_or_path=None, *, device=None, dtype=None, **kwargs):
    """Load a model by Hub id, local folder or embedded name (None: the embedded SmolLM2-135M-Instruct)."""
    from .models.loading import load_model as _load_model

    return _load_model(name_or_path, device=device, dtype=dtype, **kwargs)


__all__ = [
    "DecodeResult",
    "SWAAConfig",
    "apply_swaa",
    "capture_attention",
    "fast_generate",
    "kv_cache_bytes",
    "load_model",
    "load_upstream_settings",
    "remove_swaa",
    "swaa",
]
__version__ = "0.1.0"
