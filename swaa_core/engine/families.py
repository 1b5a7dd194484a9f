"""Which transformers models the engine runs, what it reads from their configs before touching them, and where their
attention modules are.

One owner for the supported-family check and for each layer's own sliding window: the loader (``models/``) asks
the same questions before it downloads weights, so the answers live here, below both, and take a model or a config.
The model introspection every layer above needs (:func:`attention_modules`) lives here too, not in the module that
installs SWAA.
"""

from __future__ import annotations

from .config import SWAAConfigError

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3", "qwen3_moe", "mistral", "gemma3", "gemma3_text")


def text_config(model_or_config):
    """The decoder's config of a model or of a transformers config (a multimodal config answers for its text part)."""
    config = getattr(model_or_config, "config", model_or_config)
    if not hasattr(config, "get_text_config"):
        raise SWAAConfigError(
            "SWAA works on a transformers causal LM (a PreTrainedModel, with its config) or such a config; got "
            f"{type(model_or_config).__name__}."
        )
    return config.get_text_config(decoder=True)


def model_type(model_or_config) -> str | None:
    """The decoder's ``model_type`` ("llama", "gemma3_text", ...); None when the config names none."""
    return getattr(text_config(model_or_config), "model_type", None)


def check_supported(model_or_config) -> None:
    """Raise SWAAConfigError naming the supported families unless SWAA can run this model type."""
    found = model_type(model_or_config)
    if found not in SUPPORTED_MODEL_TYPES:
        raise SWAAConfigError(
            f"SWAA does not support model type {found!r} yet; supported: Llama, Qwen2, Qwen3 (dense and MoE), "
            f"Mistral, Gemma 3 ({', '.join(SUPPORTED_MODEL_TYPES)})."
        )


def native_windows(model_or_config) -> tuple[int | None, ...]:
    """Per layer, the sliding window transformers' DynamicCache gives the layer (None: it keeps every token)."""
    text = text_config(model_or_config)
    try:
        from transformers.cache_utils import get_layer_types_and_kwargs

        types, kwargs = get_layer_types_and_kwargs(text)
    except ImportError:  # older transformers 5.x: read the config's own layer types
        types, kwargs = [], []
    if len(types) != len(kwargs) or len(types) != text.num_hidden_layers:  # its return shape varies by version
        types = getattr(text, "layer_types", None) or ["full_attention"] * text.num_hidden_layers
        window = getattr(text, "sliding_window", None)
        kwargs = [{"sliding_window": window}] * len(types)
    return tuple(
        kw.get("sliding_window") if t == "sliding_attention" else None for t, kw in zip(types, kwargs, strict=True)
    )


def attention_modules(model) -> list:
    """The self-attention modules (``torch.nn.Module``, one per decoder layer: those with an integer ``layer_idx``, a
    ``q_proj`` and an ``o_proj``, the layout of every supported family), in layer order."""
    found = {}
    for module in model.modules():
        idx = getattr(module, "layer_idx", None)
        if isinstance(idx, int) and hasattr(module, "q_proj") and hasattr(module, "o_proj"):
            found.setdefault(idx, module)
    return [found[i] for i in sorted(found)]
