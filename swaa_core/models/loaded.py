"""What a load gives back and how it fails: LoadedModel (model, tokenizer, facts, the lock a run holds), ModelInfo,
and the one error class (ModelTooLargeError when memory is short) that every loader and the model cache raise.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from .memory import InsufficientMemoryError, ModelShape, dtype_name

__all__ = ["LoadedModel", "ModelInfo", "ModelLoadError", "ModelTooLargeError"]


class ModelLoadError(ValueError):
    """A model that cannot be loaded, with a message that says what to do about it."""


class ModelTooLargeError(ModelLoadError, InsufficientMemoryError):
    """The model (or the requested context) would not fit in the free memory; refused before loading."""


@dataclass
class ModelInfo:
    """What a load found: the model's name, source and kind, its :class:`ModelShape` (layers, heads, widths,
    parameters, dtype and every layer's own sliding window: the one description the memory and capacity models read,
    ``model_shape(info)``), and how it was loaded. The shape's numbers read as attributes too (``info.num_layers``)."""

    name: str
    source: str  # "embedded", "hub" or "local"
    model_type: str
    architecture: str
    shape: ModelShape
    context_length: int | None
    has_thinking_mode: bool
    is_chat: bool
    device: str
    device_map: str | None
    attn_implementation: str
    load_seconds: float
    from_cache: bool
    path: str | None = None

    num_layers = property(lambda self: self.shape.num_layers)
    num_kv_heads = property(lambda self: self.shape.num_kv_heads)
    head_dim = property(lambda self: self.shape.head_dim)
    hidden_size = property(lambda self: self.shape.hidden_size)
    intermediate_size = property(lambda self: self.shape.intermediate_size)
    vocab_size = property(lambda self: self.shape.vocab_size)
    num_parameters = property(lambda self: self.shape.num_parameters)
    native_windows = property(lambda self: self.shape.native_windows)

    @property
    def num_heads(self) -> int:
        return self.shape.num_heads or self.shape.hidden_size // self.shape.head_dim

    @property
    def dtype(self) -> str:
        return dtype_name(self.shape.dtype)

    @property
    def native_sliding_layers(self) -> list[int]:
        """Layers the model slides in itself (``native_windows`` says each one's window)."""
        return [i for i, w in enumerate(self.native_windows) if w is not None]

    @property
    def native_sliding_window(self) -> int | None:
        """The widest of those layers' windows (they differ only in models with per-layer windows); None: none."""
        return max((w for w in self.native_windows if w is not None), default=None)

    @property
    def weight_bytes(self) -> int:
        return self.num_parameters * torch.empty((), dtype=self.shape.dtype).element_size()

    def to_dict(self) -> dict[str, Any]:
        """The facts as JSON values: the fields, the shape's numbers beside them (not nested) and the derived ones."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "shape"}
        out.update({f.name: getattr(self.shape, f.name) for f in fields(self.shape)})
        out.update(native_windows=list(self.native_windows), num_heads=self.num_heads, dtype=self.dtype,
                   native_sliding_layers=self.native_sliding_layers, native_sliding_window=self.native_sliding_window,
                   weight_bytes=self.weight_bytes)  # fmt: skip
        return out

    def summary(self) -> str:
        counts: dict[int, int] = {}
        for w in self.native_windows:
            if w is not None:
                counts[w] = counts.get(w, 0) + 1
        parts = [f"{w} in {k} layers" for w, k in sorted(counts.items())]
        sliding = f", native sliding window{'s' * (len(parts) > 1)} {', '.join(parts)}" if parts else ""
        return (
            f"{self.name} ({self.architecture}, {self.num_parameters / 1e6:,.0f}M parameters): {self.num_layers} layers, "
            f"{self.num_heads} query / {self.num_kv_heads} KV heads x {self.head_dim}, context {self.context_length}"
            f"{sliding}; {self.dtype} on {self.device}, attention {self.attn_implementation}; "
            f"loaded in {self.load_seconds:.1f} s{' from cache' if self.from_cache else ''}"
        )


@dataclass(eq=False)
class LoadedModel:
    """A model with its tokenizer and facts. Hold ``lock`` while running it: SWAA keeps per-call state on it."""

    model: Any
    tokenizer: Any
    info: ModelInfo
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def shape(self) -> ModelShape:
        return self.info.shape


def refuse_as_load_error(check: Callable[[], Any]) -> Any:
    """``check()``'s result; a memory refusal comes out as ModelTooLargeError, so a caller catches one error class."""
    try:
        return check()
    except InsufficientMemoryError as e:
        raise ModelTooLargeError(str(e)) from None


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its class name when empty), for messages that quote a cause."""
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
