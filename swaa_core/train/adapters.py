"""LoRA adapters that carry their SWAA config: save, read, find and load them (local folders or Hub repos).

An adapter folder holds peft's files plus ``swaa_config.json``, one entry of an upstream settings file::

    {"swaa_config": {"sliding_window_size": 256, ...}, "model_list": ["<base model>"], "training": {...}}

so the attention an adapter was trained for travels with it, and a model card (README.md) that says how to use it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..engine.config import SWAAConfig, SWAAConfigError
from ..engine.families import attention_modules
from .lora import quiet_peft
from .settings import SWAA_FILE


class AdapterError(ValueError):
    """An adapter that cannot be saved or loaded, with the reason."""


def save_adapter(
    peft_model,
    path: str | Path,
    swaa_config: SWAAConfig | None,
    *,
    base_model: str | None = None,
    training: dict | None = None,
) -> Path:
    """Save the LoRA adapter (peft's files) and ``swaa_config.json`` beside it. ``base_model`` is the name users
    load the base with (a Hub id or the embedded model's name); it replaces peft's record of a local path."""
    from peft import PeftModel

    if not isinstance(peft_model, PeftModel):
        raise AdapterError("save_adapter needs the PeftModel returned by train_lora (result.model).")
    path = Path(path)
    peft_model.save_pretrained(str(path))
    adapter_file = path / "adapter_config.json"
    adapter = json.loads(adapter_file.read_text(encoding="utf-8"))
    if base_model is not None:  # after saving: peft looks the base up by this name while it saves
        adapter["base_model_name_or_path"] = base_model
        adapter_file.write_text(json.dumps(adapter, indent=2) + "\n", encoding="utf-8")
    base = adapter.get("base_model_name_or_path")
    config = swaa_config or SWAAConfig()
    entry = {"swaa_config": config.to_dict(), "model_list": [base] if base else [], "training": training or {}}
    (path / SWAA_FILE).write_text(json.dumps(entry, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (path / "README.md").write_text(_model_card(base, config, training or {}), encoding="utf-8")
    return path


def _model_card(base: str | None, config: SWAAConfig, training: dict) -> str:
    """A short Hub model card (replaces peft's template, which would record a local base-model path)."""
    head = ["---", "library_name: peft", "tags: [lora, swaa, sliding-window-attention]"]
    if base:
        head.append(f"base_model: {json.dumps(base)}")
    summary = {k: training[k] for k in ("steps", "examples", "first_loss", "last_loss") if k in training}
    return "\n".join(
        head
        + [
            "---",
            "",
            f"# LoRA adapter trained under SWAA ({config.describe()})",
            "",
            "Fine-tuned with sliding window attention active (Sliding Window Attention Adaptation, arXiv 2512.10411).",
            f"Use it under the same attention settings, stored in `{SWAA_FILE}`:",
            "",
            "```python",
            "from swaa_core import apply_swaa, load_model",
            "from swaa_core.train import load_adapter",
            "",
            "loaded = load_model(...)  # the base model",
            'model, cfg = load_adapter(loaded.model, "<this folder or Hub id>")',
            "apply_swaa(model, cfg)",
            "```",
            "",
            f"Training summary: `{json.dumps(summary)}`" if summary else "",
            "",
        ]
    )


@dataclass
class AdapterInfo:
    swaa_config: SWAAConfig | None  # None: the folder has no swaa_config.json (not trained by this tool)
    base_models: list[str]
    training: dict


def read_adapter_info(path_or_hub_id: str | Path) -> AdapterInfo:
    """The SWAA config, base model and training summary stored beside an adapter (local folder or Hub repo)."""
    text = _read_sidecar(str(path_or_hub_id))
    if text is None:
        return AdapterInfo(None, [], {})
    try:
        data = json.loads(text)
        config = SWAAConfig.from_dict(data["swaa_config"])
    except (json.JSONDecodeError, KeyError, TypeError, SWAAConfigError) as e:
        raise AdapterError(f"{SWAA_FILE} of adapter {path_or_hub_id} is unreadable: {e}") from None
    return AdapterInfo(config, [str(m) for m in data.get("model_list", [])], data.get("training", {}))


def _read_sidecar(where: str) -> str | None:
    local = Path(where)
    if local.is_dir():
        if not (local / "adapter_config.json").is_file():
            raise AdapterError(f"{local} is not a LoRA adapter folder (no adapter_config.json).")
        sidecar = local / SWAA_FILE
        return sidecar.read_text(encoding="utf-8") if sidecar.is_file() else None
    if local.exists() or where.count("/") != 1:
        raise AdapterError(f"Adapter {where!r} is neither a local adapter folder nor a Hub id such as 'user/name'.")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return Path(hf_hub_download(where, SWAA_FILE)).read_text(encoding="utf-8")
    except EntryNotFoundError:
        return None
    except Exception as e:  # offline, unknown repo, no access: all mean the same to the user
        raise AdapterError(f"Could not fetch adapter {where!r} from the Hugging Face Hub: {e}") from None


def find_adapters(root: str | Path) -> list[tuple[Path, AdapterInfo]]:
    """LoRA adapter folders under ``root`` (an adapter_config.json inside), with what each was trained for; for
    pickers in the app. Unreadable ones are skipped."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for config_file in sorted(root.rglob("adapter_config.json")):
        try:
            found.append((config_file.parent, read_adapter_info(config_file.parent)))
        except AdapterError:
            continue
    return found


def load_adapter(
    model, path_or_hub_id: str | Path, *, merge: bool = False, trainable: bool = False, adapter_name: str = "default"
):
    """Attach a LoRA adapter (local folder or Hub id) to ``model``; returns ``(model, swaa_config)``.

    ``swaa_config`` is the SWAAConfig the adapter was trained for (None when the adapter has no swaa_config.json).
    Apply it yourself: ``apply_swaa(model, cfg)``. With ``merge=True`` the LoRA weights are folded into the base
    weights and the plain transformers model comes back (faster; the adapter cannot be switched off then). Without
    merging, the LoRA layers live in ``model`` in place, so the original object runs with the adapter too.
    ``trainable=True`` keeps the LoRA weights trainable, to continue with :func:`train_lora`."""
    from peft import PeftModel

    info = read_adapter_info(path_or_hub_id)
    if info.swaa_config is not None:
        info.swaa_config.validate(len(attention_modules(model)))
    try:
        with quiet_peft():
            peft_model = PeftModel.from_pretrained(
                model, str(path_or_hub_id), adapter_name=adapter_name, is_trainable=trainable
            )
    except (ValueError, RuntimeError, OSError) as e:
        base = f" (trained on {', '.join(info.base_models)})" if info.base_models else ""
        raise AdapterError(f"Adapter {path_or_hub_id} does not fit this model{base}: {e}") from None
    peft_model.eval()
    return (peft_model.merge_and_unload() if merge else peft_model), info.swaa_config
