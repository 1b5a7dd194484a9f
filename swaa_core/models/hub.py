"""Models from the Hugging Face Hub: the config first (checked before any weight is fetched), then the weights with
a progress bar; the offline probe; and every Hub error turned into a message that says what to do.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from .loaded import ModelLoadError, first_line
from .memory import model_shape
from .request import LoadRequest, check_weights, plan_placement, read_config

__all__ = ["hub_cache_dir", "hub_config", "hub_endpoint", "hub_folder", "hub_offline_reason"]

HUB_FILES = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken"]
HUB_BIN_FILES = ["*.json", "pytorch_model*.bin", "*.jinja", "*.txt", "*.model", "*.tiktoken"]


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
        return f"The Hugging Face Hub ({url}) cannot be reached ({first_line(e)})"
    return None


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment at call time (HF_HUB_CACHE, then HF_HOME)."""
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(constants.HF_HUB_CACHE)


def hub_folder(req: LoadRequest) -> tuple[Path, bool]:
    """Download (or find in the cache) a Hub model's config, check it, then fetch the rest with a progress bar."""
    from huggingface_hub import snapshot_download

    repo = req.source.name
    offline = hub_offline_reason()  # without network, the cache alone is used: no retries, one message
    common = _download_options(req, offline)
    config = _checked_config(req, common, offline)
    plan_placement(req, model_shape(config), f"Loading {repo}")
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
    check_weights(folder)
    return folder, cached is not None and cached == folder


def hub_config(req: LoadRequest):
    """A Hub model's config, its family checked: config.json alone, from the Hub or (offline) from the cache."""
    offline = hub_offline_reason()
    return _checked_config(req, _download_options(req, offline), offline)


def _download_options(req: LoadRequest, offline: str | None) -> dict:
    return dict(
        revision=req.revision,
        cache_dir=hub_cache_dir(),
        token=req.token,
        local_files_only=offline is not None,
        endpoint=os.environ.get("HF_ENDPOINT") or None,
    )


def _checked_config(req: LoadRequest, common: dict, offline: str | None):
    from huggingface_hub import hf_hub_download

    repo = req.source.name
    config_file = _hub_call(lambda: hf_hub_download(repo, "config.json", **common), req, offline)
    return read_config(Path(config_file).parent, repo)


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


def _hub_call(fn: Callable[[], str], req: LoadRequest, offline: str | None) -> str:
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
