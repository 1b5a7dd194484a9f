"""Memory estimates made before loading or running: weights, and KV cache under full attention vs a SWAA config.

KV bytes follow what the caches really hold (measured against transformers' DynamicCache and the SWAA cache layer):
- a full-attention layer keeps every token;
- a layer with the model's own sliding window (Gemma 3, Mistral) keeps the last ``window - 1`` tokens;
- under SWAA, a sliding layer without FA decode keeps at most ``keep_first + W`` tokens (a buffer of the sink slots
  plus a ring of W slots, allocated once the layer holds more than that); a layer the model already slides keeps
  ``min(W, its own window)`` (see ``SWAAConfig.layer_rule``);
  FA layers and sliding layers with FA decode keep everything (decode queries must see the whole cache).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch

from ..engine.config import SWAAConfig
from ..engine.families import native_windows
from ..engine.kinds import MaskKind
from ..runtime.units import format_bytes


class InsufficientMemoryError(ValueError):
    """A load or a run that would not fit in the memory that is free, refused before it crashes."""


@dataclass(frozen=True)
class ModelShape:
    """The few numbers that decide memory use and FLOPs: the one description of a model's shape, which ModelInfo and
    registry entries carry as ``shape``."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    intermediate_size: int
    vocab_size: int
    num_parameters: int
    native_windows: tuple[int | None, ...]  # per layer: the model's own sliding window; None = full attention
    dtype: torch.dtype | None = None
    num_heads: int | None = None  # query heads; None: hidden_size // head_dim (prefill FLOPs in models.capacity)


@dataclass(frozen=True)
class MemoryEstimate:
    context_tokens: int
    batch_size: int
    dtype: str
    num_parameters: int
    weight_bytes: int
    activation_bytes: int  # rough peak of one layer's temporaries during prefill
    kv_full_per_layer: tuple[int, ...]
    kv_swaa_per_layer: tuple[int, ...]
    swaa: str | None  # the SWAA config in words; None: no SWAA config given

    @property
    def kv_full_bytes(self) -> int:
        return sum(self.kv_full_per_layer)

    @property
    def kv_swaa_bytes(self) -> int:
        return sum(self.kv_swaa_per_layer)

    @property
    def kv_saving(self) -> float:
        """Fraction of the full-attention KV cache that the SWAA config frees (0 without SWAA)."""
        return 1 - self.kv_swaa_bytes / self.kv_full_bytes if self.kv_full_bytes else 0.0

    def run_bytes(self, swaa: bool = True) -> int:
        """Memory a run needs on top of the loaded weights."""
        return (self.kv_swaa_bytes if swaa else self.kv_full_bytes) + self.activation_bytes

    def total_bytes(self, swaa: bool = True) -> int:
        return self.weight_bytes + self.run_bytes(swaa)

    def summary(self) -> str:
        text = (
            f"weights {format_bytes(self.weight_bytes)} ({self.num_parameters / 1e9:.2f}B parameters, {self.dtype}); "
            f"KV cache at {self.context_tokens:,} tokens x {self.batch_size}: full attention "
            f"{format_bytes(self.kv_full_bytes)}"
        )
        if self.swaa is not None:
            text += f", {self.swaa} {format_bytes(self.kv_swaa_bytes)} ({self.kv_saving:.0%} less)"
        return text

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(kv_full_bytes=self.kv_full_bytes, kv_swaa_bytes=self.kv_swaa_bytes, kv_saving=self.kv_saving)
        return out


def to_dtype(dtype) -> torch.dtype:
    """torch dtype from a dtype or a name ("bf16", "bfloat16", "float32", ...). Raises ValueError for anything that
    is not one of those three floating types (a bool, integer or complex dtype has no place in these models)."""
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.bfloat16, torch.float16, torch.float32):
            raise ValueError(f"Unsupported dtype {dtype}; use one of: bfloat16, float16, float32.")
        return dtype
    names = {
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "fp16": torch.float16,
        "float16": torch.float16,
        "half": torch.float16,
        "fp32": torch.float32,
        "float32": torch.float32,
        "float": torch.float32,
    }
    key = str(dtype).lower().removeprefix("torch.")
    if key not in names:
        raise ValueError(f"Unknown dtype {dtype!r}; use one of: bfloat16 (bf16), float16 (fp16), float32 (fp32).")
    return names[key]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def model_shape(obj) -> ModelShape:
    """The shape of a loaded model, its ModelInfo or a registry entry (each carries its ``shape``), a transformers
    config or a model."""
    if isinstance(obj, ModelShape):
        return obj
    shape = getattr(obj, "shape", None)
    if isinstance(shape, ModelShape):
        return shape
    if isinstance(obj, torch.nn.Module) and hasattr(obj, "config"):
        shape = config_shape(obj.config, num_parameters=sum(p.numel() for p in obj.parameters()))
        return replace(shape, dtype=next(obj.parameters()).dtype)
    from transformers import PretrainedConfig

    if isinstance(obj, PretrainedConfig):
        return config_shape(obj)
    raise TypeError(
        f"Cannot size {type(obj).__name__}: pass a loaded model, its .info, a registry entry or a transformers config."
    )


def config_shape(config, num_parameters: int | None = None) -> ModelShape:
    """The shape a transformers config describes, every layer's own sliding window included
    (:func:`swaa_core.engine.families.native_windows`); ``num_parameters`` None counts them on the meta device."""
    text = config.get_text_config(decoder=True)
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return ModelShape(
        num_layers=text.num_hidden_layers,
        num_kv_heads=getattr(text, "num_key_value_heads", None) or heads,
        head_dim=head_dim,
        hidden_size=text.hidden_size,
        intermediate_size=getattr(text, "intermediate_size", None) or 4 * text.hidden_size,
        vocab_size=text.vocab_size,
        num_parameters=count_parameters(config) if num_parameters is None else num_parameters,
        native_windows=native_windows(text),
        num_heads=heads,
    )


def count_parameters(config) -> int:
    """Exact parameter count of the model a config describes, built on the meta device (no memory, no download)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def estimate_memory(
    config_or_info,
    context_tokens: int,
    swaa_config: SWAAConfig | dict | None = None,
    batch_size: int = 1,
    dtype=None,
) -> MemoryEstimate:
    """Weight and KV-cache bytes at ``context_tokens`` (prompt + generated) for full attention and for SWAA."""
    if isinstance(context_tokens, bool) or not isinstance(context_tokens, int) or context_tokens < 0:
        raise ValueError(f"context_tokens must be a whole number >= 0, got {context_tokens!r}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a whole number >= 1, got {batch_size!r}.")
    swaa_config = SWAAConfig.coerce(swaa_config, "swaa_config")
    shape = model_shape(config_or_info)
    dt = to_dtype(dtype) if dtype is not None else (shape.dtype or torch.float32)
    elem = torch.empty((), dtype=dt).element_size()
    per_token = 2 * batch_size * shape.num_kv_heads * shape.head_dim * elem
    full = [per_token * _held_native(context_tokens, w) for w in shape.native_windows]
    if swaa_config is None or swaa_config.is_full_attention:
        swaa = full
    else:
        swaa_config.validate(shape.num_layers)
        swaa = [
            per_token * _held_swaa(context_tokens, swaa_config.layer_rule(i, native))
            for i, native in enumerate(shape.native_windows)
        ]
    activations = batch_size * context_tokens * activation_elements_per_token(shape) * elem
    return MemoryEstimate(
        context_tokens=context_tokens,
        batch_size=batch_size,
        dtype=dtype_name(dt),
        num_parameters=shape.num_parameters,
        weight_bytes=shape.num_parameters * elem,
        activation_bytes=activations + batch_size * shape.vocab_size * 4,
        kv_full_per_layer=tuple(full),
        kv_swaa_per_layer=tuple(swaa),
        swaa=None if swaa_config is None else swaa_config.describe(),
    )


def activation_elements_per_token(shape: ModelShape) -> int:
    """Elements per token of the peak of one layer's temporaries in an inference forward (no gradients): the gated
    MLP holds three ``intermediate_size``-wide tensors at once (act(gate), up and their product) beside about four
    ``hidden_size``-wide ones (the residual stream, the normed input, the embeddings the model's forward keeps, an
    output). Fitted on CPU with torch.profiler's allocation events for bf16 Llama layers of three width ratios
    (8.0 bytes per hidden unit and 6.0 per intermediate unit, within 1% of ``4 h + 3 I`` elements)."""
    return 4 * shape.hidden_size + 3 * shape.intermediate_size


def _held_native(n: int, window: int | None) -> int:
    return n if window is None else min(n, window - 1)


def _held_swaa(n: int, rule: tuple[MaskKind | None, bool]) -> int:
    kind, fa_decode = rule
    return n if kind is None or fa_decode else min(n, kind.kept_slots())


# ---------------------------------------------------------------------------------------------- what is free


def available_memory(device: str | torch.device = "cpu") -> int:
    """Bytes free for a new allocation: RAM for the CPU, free memory of one GPU, or of all GPUs for "auto"."""
    kind = str(device)
    if kind == "auto":
        if torch.cuda.is_available():
            return sum(torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count()))
        kind = "cpu"
    if kind.startswith("cuda"):
        index = torch.device(kind).index
        return torch.cuda.mem_get_info(torch.cuda.current_device() if index is None else index)[0]
    import psutil

    return psutil.virtual_memory().available


def check_fits(required_bytes: int, device, *, what: str, advice: str, headroom: float = 0.9) -> None:
    """Raise InsufficientMemoryError when ``required_bytes`` exceed ``headroom`` of the memory free on ``device``."""
    free = available_memory(device)
    if required_bytes > headroom * free:
        raise InsufficientMemoryError(
            f"{what} needs about {format_bytes(required_bytes)}, but only {format_bytes(free)} is free on {device}. "
            f"{advice}"
        )


def spans_devices(model) -> bool:
    """Whether accelerate spread the model over several devices (``device_map="auto"``)."""
    device_map = getattr(model, "hf_device_map", None)
    return device_map is not None and len(set(map(str, device_map.values()))) > 1


def check_run_fits(
    loaded, context_tokens: int, swaa_config: SWAAConfig | dict | None = None, batch_size: int = 1
) -> MemoryEstimate:
    """Refuse a run whose KV cache and activations would not fit next to the already loaded model.

    ``loaded``: what :func:`swaa_core.load_model` returns, or a transformers model."""
    estimate = estimate_memory(loaded, context_tokens, swaa_config, batch_size=batch_size)
    use_swaa = swaa_config is not None
    # A transformers model has a ``.model`` too (its decoder stack, without the device map): only unwrap a LoadedModel.
    model = loaded if isinstance(loaded, torch.nn.Module) else loaded.model
    name = getattr(loaded, "name", None) or getattr(model, "name_or_path", None) or type(model).__name__
    what = f"A run of {context_tokens:,} tokens x {batch_size} on {name} (KV cache and activations"
    advice = (
        "Use a shorter context, a smaller batch, or a SWAA config with fewer full-attention layers and "
        "without FA decode (only those sliding layers free their old keys)."
    )
    if not spans_devices(model):
        check_fits(estimate.run_bytes(use_swaa), next(model.parameters()).device, what=what + ")", advice=advice)
        return estimate
    # A spread model keeps each layer's KV cache on that layer's device; any one device may be the one that runs out.
    kv = estimate.kv_swaa_per_layer if use_swaa else estimate.kv_full_per_layer
    for device, kv_bytes in kv_bytes_per_device(layer_devices(model), kv).items():
        check_fits(kv_bytes + estimate.activation_bytes, device, what=f"{what} of its layers on {device})",
                   advice=advice)  # fmt: skip
    return estimate


def layer_devices(model) -> list[str]:
    """The device each attention layer computes on (several for a model spread with ``device_map="auto"``)."""
    from ..engine.families import attention_modules

    placement = getattr(model, "hf_device_map", None) or {}
    out = []
    for name, module in _named_attention_modules(model, attention_modules(model)):
        # The longest device-map prefix of the module's name is where accelerate runs it (weights offloaded to the
        # CPU or disk still compute on the map's device of the layer's execution hook).
        owner = max((k for k in placement if name == k or name.startswith(k + ".") or k == ""), key=len, default=None)
        device = placement[owner] if owner is not None else next(module.parameters()).device
        out.append(f"cuda:{device}" if isinstance(device, int) else str(device))
    return out


def _named_attention_modules(model, modules):
    names = {id(m): n for n, m in model.named_modules()}
    return [(names.get(id(m), ""), m) for m in modules]


def kv_bytes_per_device(devices: list[str], kv_per_layer) -> dict[str, int]:
    """KV-cache bytes each device holds, given each layer's device and KV bytes."""
    out: dict[str, int] = {}
    for device, kv_bytes in zip(devices, kv_per_layer, strict=True):
        out[device] = out.get(device, 0) + kv_bytes
    return out
