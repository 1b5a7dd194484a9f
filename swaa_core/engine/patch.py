"""Switch a loaded transformers model to SWAA and back.

The model keeps its classes and methods. SWAA enters through transformers' extension points: the attention and mask
functions are registered in ``AttentionInterface`` / ``AttentionMaskInterface`` under "swaa" and selected with
``set_attn_implementation``; each attention module gets a :class:`LayerPlan` attribute and a forward pre-hook that
turns the dynamic KV cache into SWAA cache layers; ``model.generate`` is wrapped (on the instance) so that the
attention knows where the prompt ends, and so that each call takes the decode path :mod:`.decode_path` resolves for
it (fixed buffers and a CUDA graph on CUDA where the call allows it; the path and why in ``state.last_route``).
``remove_swaa`` undoes all of it.

The per-call state lives on the modules, so one model must not run two forwards at the same time (the app and the
runner serialise runs per model with a lock).
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

from .attention import NAME, LayerPlan, RunContext, swaa_attention_forward, swaa_mask
from .backends import explain_backend
from .cache import SWAACacheLayer, kv_cache_bytes, swaa_layer
from .config import SWAAConfig, SWAAConfigError
from .decode_path import Route, route_generate
from .families import check_supported, native_windows, text_config
from .static_cache import StaticSWAACache

__all__ = ["apply_swaa", "remove_swaa", "swaa", "capture_attention", "kv_cache_bytes", "SWAAState"]


@dataclass
class SWAAState:
    config: SWAAConfig
    backend: str
    original_attn_implementation: str
    plans: list[LayerPlan] = field(default_factory=list)
    hooks: list = field(default_factory=list, repr=False)
    backend_notes: list[str] = field(default_factory=list)  # faster kernels "auto" passed over, and why
    context: RunContext = field(default_factory=RunContext, repr=False)
    last_route: Route | None = None  # the decode path the last model.generate call took, and why

    def summary(self) -> str:
        return f"{self.config.describe()} [backend: {self.backend}]"


def _register() -> None:
    AttentionInterface.register(NAME, swaa_attention_forward)
    AttentionMaskInterface.register(NAME, swaa_mask)


def attention_modules(model) -> list[torch.nn.Module]:
    """The self-attention modules, in layer order."""
    found = {}
    for module in model.modules():
        idx = getattr(module, "layer_idx", None)
        if isinstance(idx, int) and hasattr(module, "q_proj") and hasattr(module, "o_proj"):
            found.setdefault(idx, module)
    return [found[i] for i in sorted(found)]


def _cache_hook(module, args, kwargs):
    cache = kwargs.get("past_key_values")
    last = module._swaa_cache_layer
    if type(last) is SWAACacheLayer and last.bound is module._swaa_plan and last.settled:
        # the common decode step: this module's layer of this cache, already configured for its plan
        layers = getattr(cache, "layers", None)
        if layers is not None and module.layer_idx < len(layers) and layers[module.layer_idx] is last:
            last.plan = last.bound
            return
    if cache is None or isinstance(cache, StaticSWAACache):
        module._swaa_cache_layer = None if cache is None else cache.layers[module.layer_idx]
        return
    layer = swaa_layer(cache, module.layer_idx)
    if layer.bound is None and module._swaa_ctx.assisted:  # transformers asked the plain layer it replaced to record
        layer.activate_past_recording()
    layer.bind(module._swaa_plan, kwargs.get("attention_mask"), module.layer_idx)
    module._swaa_cache_layer = layer


def _refuse_checkpointed_prefix(decoder, args, kwargs):
    """transformers' checkpointed decoder layers run without ``past_key_values`` in train mode (Gradient
    CheckpointingLayer drops it, under no_grad too): the cache is neither filled nor read, so a chunk that
    continues a cached prefix would be trained on alone, silently. Refused by name instead."""
    if not decoder.training or kwargs.get("past_key_values") is None:
        return
    if any(getattr(m, "gradient_checkpointing", False) for m in decoder.modules()):
        raise ValueError(
            "A KV cache (past_key_values) was passed to a model in train mode with gradient checkpointing on; "
            "transformers runs checkpointed layers without the cache, so a cached prefix would be neither stored "
            "nor read, and the chunk trained as if the prefix were not there. Turn checkpointing off "
            "(model.gradient_checkpointing_disable()), feed the prefix and the chunk as one sequence, or call "
            "model.eval() to fill the cache."
        )


def _plans(config: SWAAConfig, model, n_layers: int, backend: str, all_full: bool = False) -> list[LayerPlan]:
    native = native_windows(model)
    plans = []
    for i in range(n_layers):
        window, keep_first, fa_decode = config.layer_rule(i, native[i])
        if all_full:
            window, keep_first, fa_decode = native[i], 0, False
        plans.append(LayerPlan(i, window, keep_first, fa_decode, backend, native[i]))
    return plans


def _prompt_end(args, kwargs) -> int:
    """Where the prompt of a ``generate`` call ends, in slots: the full 2-D mask's width, else the (full) input's."""
    mask = kwargs.get("attention_mask")
    if mask is not None and mask.dim() == 2:
        return mask.shape[1]
    inputs = args[0] if args else kwargs.get("inputs", kwargs.get("input_ids"))
    if kwargs.get("inputs_embeds") is not None:
        inputs = kwargs["inputs_embeds"][..., 0]
    return 1 if inputs is None else inputs.shape[1]


def _assisted(model, kwargs) -> bool:
    """Whether this ``generate`` call verifies drafts (assistant model, prompt lookup, early exit) and rolls back."""
    config = kwargs.get("generation_config") or model.generation_config
    keys = ("assistant_model", "prompt_lookup_num_tokens", "assistant_early_exit")
    return any(kwargs.get(k, getattr(config, k, None)) is not None for k in keys)


def _wrap_generate(model, state: SWAAState) -> None:
    original, context = model.generate, state.context

    @functools.wraps(original)
    def generate(*args, **kwargs):
        route = state.last_route = route_generate(model, args, kwargs)
        if route.fixed:
            from .fast_decode import generate_static  # it builds on this module

            return generate_static(model, args, kwargs)
        previous = context.prompt_end, context.assisted
        context.prompt_end, context.assisted = _prompt_end(args, kwargs), _assisted(model, kwargs)
        try:
            out = original(*args, **kwargs)
        finally:
            context.prompt_end, context.assisted = previous
            context.forget_forward()  # what the last forward kept for its layers must not outlive the call
        cache = kwargs.get("past_key_values", getattr(out, "past_key_values", None))
        for layer in getattr(cache, "layers", ()):
            if isinstance(layer, SWAACacheLayer) and layer.record_past:  # assisted decoding leaves it on
                layer.record_past = False
                layer.crop(0)
        return out

    generate._swaa_wrapped = True
    model.generate = generate


def apply_swaa(model, config: SWAAConfig | dict | None, *, backend: str = "auto") -> SWAAState | None:
    """Switch ``model`` to SWAA in place. Re-applying replaces the config; ``sliding_window_size=None`` (or a None
    config) restores the original model. Returns the state, whose ``backend`` says which kernel runs."""
    if isinstance(config, dict):
        config = SWAAConfig.from_dict(config)
    if config is None or config.is_full_attention:
        remove_swaa(model)
        return None
    return _install(model, config, backend)


def _install(model, config: SWAAConfig, backend: str, all_full: bool = False) -> SWAAState:
    check_supported(model)
    modules = attention_modules(model)
    config.validate(len(modules))
    device = next(model.parameters()).device
    chosen, notes = explain_backend(backend, device)
    _register()
    state: SWAAState | None = getattr(model, "_swaa_state", None)
    if state is None:
        original = text_config(model)._attn_implementation or "sdpa"
        state = SWAAState(config, chosen, original)
        state.hooks = [m.register_forward_pre_hook(_cache_hook, with_kwargs=True) for m in modules]
        decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
        state.hooks.append(decoder.register_forward_pre_hook(_refuse_checkpointed_prefix, with_kwargs=True))
        model.set_attn_implementation(NAME)
        model._swaa_state = state
        _wrap_generate(model, state)
    state.config, state.backend, state.backend_notes = config, chosen, notes
    state.plans = _plans(config, model, len(modules), chosen, all_full)
    for module, plan in zip(modules, state.plans, strict=True):
        module._swaa_plan = plan
        module._swaa_ctx = state.context
        module._swaa_cache_layer = None
        module._swaa_recorder = None  # present: a missing attribute costs nn.Module.__getattr__'s miss in every step
    return state


def remove_swaa(model) -> None:
    """Restore the model's own attention exactly (no-op if SWAA is not applied)."""
    state: SWAAState | None = getattr(model, "_swaa_state", None)
    if state is None:
        return
    for hook in state.hooks:
        hook.remove()
    for module in attention_modules(model):
        for attr in ("_swaa_plan", "_swaa_cache_layer", "_swaa_recorder", "_swaa_ctx"):
            if attr in module.__dict__:
                delattr(module, attr)
    if getattr(model.__dict__.get("generate"), "_swaa_wrapped", False):
        del model.generate
    model.set_attn_implementation(state.original_attn_implementation)
    del model._swaa_state


def current_config(model) -> SWAAConfig | None:
    state = getattr(model, "_swaa_state", None)
    return None if state is None else state.config


@contextlib.contextmanager
def swaa(model, config: SWAAConfig | dict | None, *, backend: str = "auto"):
    """``with swaa(model, cfg): model.generate(...)`` -- restores whatever was applied before on exit."""
    previous = getattr(model, "_swaa_state", None)
    prev_config, prev_backend = (previous.config, previous.backend) if previous else (None, None)
    try:
        yield apply_swaa(model, config, backend=backend)
    finally:
        if prev_config is None:
            remove_swaa(model)
        else:
            apply_swaa(model, prev_config, backend=prev_backend)


class _LayerCaptured(Exception):
    """Raised after the captured layer ran: the layers above it cannot change what it saw."""


def _stop_forward(module, args, output):
    raise _LayerCaptured


@torch.no_grad()
def capture_attention(model, input_ids, layer_idx: int, config: SWAAConfig | None = None, attention_mask=None):
    """Attention probabilities (heads, q, k) of one layer for the first sequence, under ``config`` (None: full
    attention). That layer runs the reference backend, the layers below it the fast one, and the forward stops right
    after it. The model's previous SWAA state is restored afterwards."""
    modules = attention_modules(model)
    if not 0 <= layer_idx < len(modules):
        raise SWAAConfigError(f"Layer {layer_idx} does not exist; this model has {len(modules)} layers.")
    previous = getattr(model, "_swaa_state", None)
    prev = (previous.config, previous.backend) if previous else None
    full = config is None or config.is_full_attention
    probe = SWAAConfig(sliding_window_size=1) if full else config
    _install(model, probe, "auto", all_full=full)
    records: list[torch.Tensor] = []
    modules[layer_idx]._swaa_recorder = records
    stop = modules[layer_idx].register_forward_hook(_stop_forward)
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    except _LayerCaptured:
        pass
    finally:
        stop.remove()
        remove_swaa(model)
        if prev is not None:
            apply_swaa(model, prev[0], backend=prev[1])
    return records[0][0]
