"""What every loader shares: the request (source, device, dtype, ...), the memory check that decides where the
weights go (evicting idle cached models first), and reading a transformers folder: a config of a supported family,
weights, a tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..engine.config import SWAAConfig, SWAAConfigError
from ..engine.families import SUPPORTED_MODEL_TYPES, check_supported, model_type
from .loaded import ModelLoadError, ModelTooLargeError, first_line
from .memory import (
    InsufficientMemoryError,
    ModelShape,
    available_memory,
    check_fits,
    dtype_name,
    estimate_memory,
    model_shape,
)
from .model_cache import model_cache, release_memory
from .registry import ModelEntry

SUPPORTED_TEXT = "Llama, Qwen2, Qwen3, Mistral and Gemma 3 (model types: " + ", ".join(SUPPORTED_MODEL_TYPES) + ")"
SMALLER_ADVICE = (
    "Pick a smaller model (the embedded smollm2-135m runs anywhere), a lower precision (dtype='bfloat16'), "
    "or a machine with more memory."
)


@dataclass(frozen=True)
class Source:
    """What a name resolved to; ``key`` names it in the model cache (one key per file or repository)."""

    kind: str  # "embedded", "hub", "local", "gguf"
    name: str
    key: str
    entry: ModelEntry | None = None
    path: Path | None = None


@dataclass(frozen=True)
class LoadRequest:
    """One call of load_model, resolved: where the weights come from and where they go."""

    source: Source
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    attn: str = "sdpa"
    token: str | None = field(default=None, repr=False)
    revision: str | None = None
    context_tokens: int | None = None
    swaa_config: SWAAConfig | dict | None = None
    check_memory: bool = True


def plan_placement(req: LoadRequest, shape: ModelShape, what: str) -> dict[str, Any]:
    """from_pretrained placement kwargs; refuses (before loading) what will not fit."""
    estimate = estimate_memory(shape, req.context_tokens or 0, req.swaa_config, dtype=req.dtype)
    need = estimate.total_bytes(swaa=req.swaa_config is not None) if req.context_tokens else estimate.weight_bytes
    what = f"{what} ({estimate.summary()})" if req.context_tokens else f"{what} in {dtype_name(req.dtype)}"
    if req.device == "cpu" or not (req.device.startswith("cuda") or req.device == "auto"):
        ensure_room(need, "cpu", what, req.check_memory)
        return {} if req.device == "cpu" else {"device_map": {"": req.device}}
    if req.device != "auto":
        index = torch.device(req.device).index
        target = f"cuda:{torch.cuda.current_device() if index is None else index}"
        fits_one = not req.check_memory or need <= 0.9 * available_memory(target)
        if fits_one or index is not None or torch.cuda.device_count() < 2:
            ensure_room(need, target, what, req.check_memory)
            return {"device_map": {"": target}}
    ensure_room(need, "auto", what, req.check_memory)
    return {"device_map": "auto"}


def ensure_room(need: int, device: str, what: str, check: bool) -> None:
    """Check memory; when short, first evict idle models from the in-process cache, then refuse."""
    if not check:
        return
    while True:
        try:
            check_fits(need, device, what=what, advice=SMALLER_ADVICE)
            return
        except InsufficientMemoryError as e:
            if not model_cache().evict_one(on_gpu=device != "cpu"):
                raise ModelTooLargeError(str(e)) from None
            release_memory()


def load_folder(folder: Path, req: LoadRequest):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = read_config(folder, req.source.name)
    check_weights(folder)
    placement = plan_placement(req, model_shape(config), f"Loading {req.source.name}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, TypeError) as e:
        raise ModelLoadError(
            f"No usable tokenizer in {folder} ({first_line(e)}). A model folder needs the tokenizer files "
            "(tokenizer.json or tokenizer.model, tokenizer_config.json) next to config.json."
        ) from None
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=req.dtype, attn_implementation=req.attn, **placement)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ModelLoadError(f"transformers could not load the weights in {folder}: {first_line(e)}") from None
    return model, tokenizer


def read_config(folder: Path, name: str):
    from transformers import AutoConfig

    if not (folder / "config.json").is_file():
        ggufs = sorted(folder.glob("*.gguf"))
        hint = (
            f" It holds GGUF file(s) ({', '.join(p.name for p in ggufs)}): pass the path of the .gguf file itself."
            if ggufs
            else ""
        )
        raise ModelLoadError(
            f"No config.json in {folder}: not a transformers model folder (one holds config.json, weights "
            f"*.safetensors and tokenizer files, as save_pretrained writes them).{hint}"
        )
    try:
        config = AutoConfig.from_pretrained(folder)
    except (OSError, ValueError, KeyError) as e:
        raise ModelLoadError(
            f"transformers cannot read the config of {name}: {first_line(e)}. Supported: {SUPPORTED_TEXT}."
        ) from None
    check_architecture(config, name)
    return config


def check_architecture(config, name: str) -> None:
    """Refuse (ModelLoadError) a config whose family SWAA cannot run, before any weight is read."""
    try:
        check_supported(config)
    except SWAAConfigError:
        raise ModelLoadError(
            f"{name} is a {model_type(config)!r} model; SWAA supports {SUPPORTED_TEXT}. Pick a model of one of these "
            "families."
        ) from None


def check_weights(folder: Path) -> None:
    patterns = ("*.safetensors", "pytorch_model*.bin", "model*.bin")
    if not any(any(folder.glob(p)) for p in patterns):
        raise ModelLoadError(
            f"No weights found in {folder}: expected *.safetensors (or pytorch_model*.bin) next to config.json. "
            "Save a model with model.save_pretrained(folder), or download its weight files too."
        )
