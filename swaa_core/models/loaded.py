"""What a load gives back and how it fails: LoadedModel (model, tokenizer, facts, the lock a run holds), ModelInfo,
and the one error class (ModelTooLargeError when memory is short) that every loader and the model cache raise.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .memory import InsufficientMemoryError, ModelShape, model_shape, to_dtype

__all__ = ["LoadedModel", "ModelInfo", "ModelLoadError", "ModelTooLargeError"]


class ModelLoadError(ValueError):
    """A model that cannot be loaded, with a message that says what to do about it."""


class ModelTooLargeError(ModelLoadError, InsufficientMemoryError):
    """The model (or the requested context) would not fit in the free memory; refused before loading."""


@dataclass
class ModelInfo:
    name: str
    source: str  # "embedded", "hub" or "local"
    model_type: str
    architecture: str
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    intermediate_size: int
    vocab_size: int
    num_parameters: int
    context_length: int | None
    has_thinking_mode: bool
    is_chat: bool
    native_sliding_window: int | None
    native_sliding_layers: list[int]
    dtype: str
    device: str
    device_map: str | None
    attn_implementation: str
    load_seconds: float
    from_cache: bool
    path: str | None = None

    @property
    def weight_bytes(self) -> int:
        return self.num_parameters * torch.empty((), dtype=to_dtype(self.dtype)).element_size()

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "weight_bytes": self.weight_bytes}

    def summary(self) -> str:
        sliding = (
            f", native sliding window {self.native_sliding_window} in {len(self.native_sliding_layers)} layers"
            if self.native_sliding_layers
            else ""
        )
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
        return model_shape(self.info)


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
