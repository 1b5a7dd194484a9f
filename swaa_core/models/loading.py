"""load_model(): embedded GGUF models, any Hub id, any local folder; one loader, one error class.

This module is the public entry: it resolves what a name means (embedded name, existing folder or .gguf file, Hub
id), picks the device and dtype, and hands the request to the right source (``hub``, ``gguf``, ``request`` for a
local folder). Three layers of caching sit behind it: huggingface_hub's own cache for Hub downloads, the disk cache
of converted GGUF models (``gguf``), and the in-process cache of loaded models (``model_cache``).
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path

import torch

from ..engine.config import SWAAConfig
from ..runtime.stamp import path_stamp
from .gguf import gguf_config, load_gguf
from .hub import hub_config, hub_folder
from .loaded import LoadedModel, ModelInfo, ModelLoadError, refuse_as_load_error
from .memory import check_run_fits, dtype_name, model_shape, spans_devices, to_dtype
from .model_cache import model_cache
from .registry import DEFAULT_MODEL, find_model_entry, list_models
from .request import LoadRequest, Source, load_folder, read_config

log = logging.getLogger(__name__)

__all__ = ["load_model", "model_config", "resolve_device", "resolve_dtype"]

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def load_model(
    name_or_path: str | os.PathLike | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    attn_implementation: str | None = None,
    token: str | None = None,
    revision: str | None = None,
    context_tokens: int | None = None,
    swaa_config: SWAAConfig | dict | None = None,
    check_memory: bool = True,
    reuse: bool = True,
    device_map: str | None = None,
) -> LoadedModel:
    """Load an embedded model by name (None: SmolLM2-135M-Instruct), a Hub id, a local folder or a .gguf file.

    device: "cpu", "cuda", "cuda:1", "auto" (spread over all GPUs); default CUDA when present, else CPU.
    dtype: default bfloat16 on CUDA, float32 on CPU. token: for gated/private Hub models (else HF_TOKEN); never
    logged. context_tokens / swaa_config: also refuse when the KV cache for that context would not fit.
    reuse: share one loaded copy per (model, device, dtype, attention) in this process; a local folder or file
    written to since it was loaded is loaded again.
    device_map: "auto" is the same as device="auto": accelerate places whole decoder layers on the GPUs (filling
    them in order), and SWAA runs each layer where it sits, its KV cache on that layer's GPU. Without CUDA it means
    the CPU. Other maps are not accepted: give a device instead.
    """
    if device_map is not None:
        if device_map != "auto":
            raise ModelLoadError(f"device_map={device_map!r} is not supported; use device_map='auto' or a device.")
        if device is not None and str(device).strip().lower() != "auto":
            raise ModelLoadError(f"device={device!r} and device_map='auto' contradict each other; give one of them.")
        device = "auto"
    source = _resolve(name_or_path)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    attn = attn_implementation or "sdpa"
    token = token or os.environ.get("HF_TOKEN") or None
    request = LoadRequest(
        source=source,
        device=dev,
        dtype=dt,
        attn=attn,
        token=token,
        revision=revision,
        context_tokens=context_tokens,
        swaa_config=swaa_config,
        check_memory=check_memory,
    )
    if not reuse:
        loaded = _load(request)
    else:
        # a folder or file saved over since its load is another model: its stamp is in the key, and the copy
        # of what the path held before is dropped rather than left to the LRU
        key = (source.key, revision, dev, dtype_name(dt), attn, path_stamp(source.path))
        model_cache().evict_stale(key)
        loaded = model_cache().get_or_load(key, lambda: _load(request))
    if context_tokens is not None and check_memory:
        refuse_as_load_error(lambda: check_run_fits(loaded, context_tokens, swaa_config))
    return loaded


def model_config(
    name_or_path: str | os.PathLike | None = None, *, token: str | None = None, revision: str | None = None
):
    """A model's transformers config without loading its weights, for sizing it (layers, heads, context).

    Takes the names load_model takes, resolved the same way and refused with the same ModelLoadError messages (a
    missing folder, an unknown name, an unreachable Hub, an unsupported family). A folder's config.json; a Hub model's
    config.json alone (the cache when offline); an embedded model or a .gguf file: the converted copy's config, else
    the GGUF metadata.
    """
    source = _resolve(name_or_path)
    if source.kind == "local":
        return read_config(source.path, source.name)
    if source.kind == "hub":
        token = token or os.environ.get("HF_TOKEN") or None
        return hub_config(LoadRequest(source=source, token=token, revision=revision))
    return gguf_config(source)


def resolve_device(device: str | torch.device | None) -> str:
    """Default to CUDA when a GPU is present, else the CPU; validate explicit choices. The ``SWAA_DEVICE``
    environment variable changes the default (e.g. ``SWAA_DEVICE=auto python app.py`` spreads the app's models
    over every GPU)."""
    if device is None:
        device = os.environ.get("SWAA_DEVICE", "").strip() or None
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    text = str(device).strip().lower()
    if text == "auto":
        return "auto" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(text)
    except RuntimeError:
        raise ModelLoadError(f"Unknown device {device!r}; use 'cpu', 'cuda', 'cuda:N' or 'auto'.") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelLoadError(
                f"device={device!r} but CUDA is not available (torch {torch.__version__}); use device='cpu'."
            )
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ModelLoadError(f"device={device!r}, but only {torch.cuda.device_count()} GPU(s) are visible.")
    return text


def resolve_dtype(dtype, device: str) -> torch.dtype:
    """bfloat16 on CUDA (float16 on GPUs without bf16), float32 on CPU, unless asked otherwise."""
    if dtype is not None and str(dtype).lower() != "auto":
        try:
            return to_dtype(dtype)
        except ValueError as e:
            raise ModelLoadError(str(e)) from None
    if device.startswith("cuda") or device == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


# ================================================================================================ sources


def _resolve(name_or_path) -> Source:
    if name_or_path is None or (isinstance(name_or_path, str) and not name_or_path.strip()):
        name_or_path = DEFAULT_MODEL
    text = os.fspath(name_or_path).strip() if isinstance(name_or_path, (str, os.PathLike)) else None
    if text is None:
        raise ModelLoadError(f"A model is named by a string or a path, got {type(name_or_path).__name__}.")
    entry = find_model_entry(text)
    if entry is not None and entry.source == "embedded":
        return Source("embedded", entry.name, f"embedded:{entry.name}", entry)
    path = Path(text).expanduser()
    if path.exists():
        resolved = path.resolve()
        if resolved.is_file() and resolved.suffix.lower() == ".gguf":
            return Source("gguf", str(resolved), f"local:{resolved}", path=resolved)
        if resolved.is_dir():
            return Source("local", str(resolved), f"local:{resolved}", path=resolved)
        raise ModelLoadError(f"{text} is a file, not a model folder or a .gguf file.")
    if text.startswith((".", "/", "~")) or text.count("/") > 1 or "\\" in text:
        raise ModelLoadError(f"Folder not found: {text}. Give an existing model folder, a Hub id or an embedded name.")
    if HUB_ID.match(text):
        repo = entry.name if entry else text  # the curated spelling keeps one Hub cache folder per model
        return Source("hub", repo, f"hub:{repo}", entry)
    embedded = ", ".join(e.name for e in list_models("embedded"))
    raise ModelLoadError(
        f"{text!r} is not an embedded model ({embedded}), an existing folder, nor a Hub id of the form "
        "'owner/name' (e.g. 'Qwen/Qwen3-4B-Instruct-2507')."
    )


# ================================================================================================ loading


def _load(req: LoadRequest) -> LoadedModel:
    start = time.perf_counter()
    src = req.source
    if src.kind in ("embedded", "gguf"):
        model, tokenizer, folder, from_cache = load_gguf(req)
    else:
        folder, from_cache = hub_folder(req) if src.kind == "hub" else (src.path, False)
        model, tokenizer = load_folder(folder, req)
    model.eval()
    info = _make_info(src, model, tokenizer, folder, time.perf_counter() - start, from_cache)
    log.info("Loaded %s", info.summary())
    return LoadedModel(model, tokenizer, info)


def _make_info(src: Source, model, tokenizer, folder, seconds: float, from_cache: bool) -> ModelInfo:
    text = model.config.get_text_config(decoder=True)
    template = getattr(tokenizer, "chat_template", None) or ""
    entry = src.entry or find_model_entry(src.name)
    return ModelInfo(
        name=src.name,
        source="embedded" if src.kind == "embedded" else ("hub" if src.kind == "hub" else "local"),
        model_type=text.model_type,
        architecture=type(model).__name__,
        shape=model_shape(model),
        context_length=getattr(text, "max_position_embeddings", None),
        has_thinking_mode=entry.has_thinking_mode if entry else "<think>" in template,
        is_chat=entry.is_chat if entry else bool(template),
        device=str(next(model.parameters()).device),
        device_map="auto" if spans_devices(model) else None,
        attn_implementation=model.config._attn_implementation,
        load_seconds=seconds,
        from_cache=from_cache,
        path=str(folder) if folder is not None else None,
    )
