"""Installing SWAA on a loaded model and taking it off: the one place that sets layer plans and hooks.

:func:`install` registers SWAA's attention and mask functions in transformers' ``AttentionInterface`` /
``AttentionMaskInterface`` under "swaa" and selects them, gives each attention module its :class:`LayerPlan` and the
shared :class:`RunContext`, and adds a forward pre-hook per attention module (turning the dynamic KV cache into SWAA
cache layers) and one on the decoder (refusing a cached prefix under gradient checkpointing). :func:`remove_swaa`
undoes all of it. Both decode paths build on this module: :mod:`.patch` (``apply_swaa``, which also routes
``model.generate``) and :mod:`.fast_decode` (which installs full-attention plans on a model without SWAA for its
baseline), so it sits below both.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

from .attention import NAME, LayerPlan, RunContext, swaa_attention_forward, swaa_mask
from .backends import explain_backend
from .cache import SWAACacheLayer, swaa_layer
from .config import SWAAConfig
from .decode_path import Route
from .families import attention_modules, check_supported, native_windows, text_config
from .kinds import SinkWindow
from .static_cache import StaticSWAACache

__all__ = ["SWAAState", "install", "remove_swaa", "swaa_owner"]


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


_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks")  # backward hooks never run in a decode step (no grad)


def replay_safe(hook):
    """Mark ``hook`` (a module hook of this project's) as one a replayed CUDA graph may skip: what it does at
    capture holds for every step, or it has nothing to do in a decode step. :func:`foreign_hooks` ignores it."""
    hook.swaa_replay_safe = True
    return hook


def foreign_hooks(model) -> list[str]:
    """The names of ``model``'s modules that carry forward hooks not marked :func:`replay_safe` (a caller's:
    counting calls, keeping activations, steering) or accelerate's hooks, and "every module" for torch's global
    module hooks. A CUDA graph replays kernels without running their Python."""
    names = [
        name or type(model).__name__
        for name, module in model.named_modules()
        if hasattr(module, "_hf_hook")  # accelerate's hooks replace the forward instead of registering a torch hook
        or any(not getattr(h, "swaa_replay_safe", False) for d in _HOOK_DICTS for h in getattr(module, d, {}).values())
    ]
    if global_module_hooks():
        names.append("every module (torch's global module hooks)")
    return names


def global_module_hooks() -> bool:
    """Whether torch's global module hooks (``register_module_forward_hook`` and its siblings) are set: dynamo guards
    on none of them, so a compiled forward would keep running as they were when it was traced."""
    names = (
        "_global_forward_hooks",
        "_global_forward_pre_hooks",
        "_global_backward_hooks",
        "_global_backward_pre_hooks",
    )
    return any(getattr(torch.nn.modules.module, name, None) for name in names)


def swaa_owner(model):
    """The model whose layers SWAA changes and which keeps its state: the transformers model inside a peft wrapper
    (``get_base_model()``), else ``model``. One owner whichever object a call is given, so that SWAA applied before
    wrapping is found and removed through the wrapper, and survives ``merge_and_unload`` (which returns that model and
    discards the wrapper) with its state, not as hooks without one."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _register() -> None:
    AttentionInterface.register(NAME, swaa_attention_forward)
    AttentionMaskInterface.register(NAME, swaa_mask)


@replay_safe  # a captured step's layers are the fixed buffers it binds at capture
def _cache_hook(module, args, kwargs):
    cache = kwargs.get("past_key_values")
    last = module._swaa_cache_layer
    if type(last) is SWAACacheLayer and last.bound is module._swaa_plan and last.settled:
        # the common decode step: this module's layer of this cache, already configured for its plan
        layers = getattr(cache, "layers", None)
        if layers is not None and module.layer_idx < len(layers) and layers[module.layer_idx] is last:
            last.plan = last.bound
            last.note_mask(kwargs.get("attention_mask"))  # a host value: swaa_mask read it with its own check
            return
    if cache is None or isinstance(cache, StaticSWAACache):
        module._swaa_cache_layer = None if cache is None else cache.layers[module.layer_idx]
        return
    layer = swaa_layer(cache, module.layer_idx)
    if layer.bound is None and module._swaa_ctx.assisted:  # transformers asked the plain layer it replaced to record
        layer.activate_past_recording()
    layer.note_mask(kwargs.get("attention_mask"))
    layer.bind(module._swaa_plan, kwargs.get("attention_mask"), module.layer_idx)
    module._swaa_cache_layer = layer


@replay_safe  # refuses before a prefill, never in a decode step
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
        kind, fa_decode = config.layer_rule(i, native[i])
        if all_full:
            kind, fa_decode = (None if native[i] is None else SinkWindow(native[i])), False
        plans.append(LayerPlan(i, kind, fa_decode, backend, native[i]))
    return plans


def install(model, config: SWAAConfig, backend: str, all_full: bool = False) -> SWAAState:
    """Put ``config``'s layer plans on ``model`` (or replace them, keeping the hooks), run by ``backend`` ("auto" or a
    name): every layer full when ``all_full`` (the like-for-like baseline and full-attention probes). Leaves
    ``model.generate`` alone (:func:`swaa_core.engine.patch.apply_swaa` routes it). Returns the state, also kept as
    ``model._swaa_state``.

    Raises SWAAConfigError for an unsupported model type or a config that does not fit its layers, ValueError for
    a backend that cannot run on the model's device."""
    model = swaa_owner(model)
    check_supported(model)
    modules = attention_modules(model)
    config.validate(len(modules))
    device = next(model.parameters()).device
    chosen, notes = explain_backend(backend, device, None if all_full else config.kind)
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
    model = swaa_owner(model)
    state: SWAAState | None = getattr(model, "_swaa_state", None)
    if state is None:
        return
    for hook in state.hooks:
        hook.remove()
    for module in attention_modules(model):
        for attr in ("_swaa_plan", "_swaa_cache_layer", "_swaa_recorder", "_swaa_ctx"):
            if attr in module.__dict__:
                delattr(module, attr)
    if getattr(model.__dict__.get("generate"), "_swaa_wrapped", False):  # apply_swaa's wrapper marks itself
        del model.generate
    model.set_attn_implementation(state.original_attn_implementation)
    del model._swaa_state
