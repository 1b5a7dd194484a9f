"""Sliding Window Attention Adaptation (SWAA) for Hugging Face causal LMs."""

from .engine.config import SWAAConfig, load_upstream_settings
from .engine.fast_decode import DecodeResult, fast_generate
from .engine.patch import apply_swaa, capture_attention, kv_cache_bytes, remove_swaa, swaa


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
