"""Switch a loaded transformers model to SWAA and back.

The model keeps its classes and methods. SWAA enters through transformers' extension points: the attention and mask
functions are registered in ``AttentionInterface`` / ``AttentionMaskInterface`` under "swaa" and selected with
``set_attn_implementation``; each attention module gets a :class:`LayerPlan` attribute and a forward pre-hook that
turns the dynamic KV cache into SWAA cache layers (both set by :mod:`.install`); ``model.generate`` is wrapped (on
the instance) so that the attention knows where the prompt ends, and so that each call takes the decode path
:mod:`.decode_path` resolves for it (fixed buffers and a CUDA graph on CUDA where the call allows it; the path and why
in ``state.last_route``). ``remove_swaa`` undoes all of it. ``attention_modules`` (from :mod:`.families`) stays
importable from here for callers that used it.

The per-call state lives on the modules, so one model must not run two forwards at the same time (the app and the
runner serialise runs per model with a lock).
"""

from __future__ import annotations

import contextlib
import functools

import torch

from .backends import check_backend_name
from .cache import SWAACacheLayer, kv_cache_bytes
from .config import SWAAConfig, SWAAConfigError
from .decode_path import by_keyword, merged_generation_config, route_generate
from .families import attention_modules, text_config
from .fast_decode import generate_static
from .install import SWAAState, install, remove_swaa, swaa_owner

__all__ = ["apply_swaa", "remove_swaa", "swaa", "capture_attention", "kv_cache_bytes", "SWAAState"]


def _prompt_end(call: dict) -> int:
    """Where the prompt of a ``generate`` call (all by keyword: ``decode_path.by_keyword``) ends, in slots: the full
    2-D mask's width, else the (full) input's."""
    mask = call.get("attention_mask")
    if mask is not None and mask.dim() == 2:
        return mask.shape[1]
    inputs = call.get("inputs", call.get("input_ids"))
    if call.get("inputs_embeds") is not None:
        inputs = call["inputs_embeds"][..., 0]
    return 1 if inputs is None else inputs.shape[1]


def _assisted(model, call: dict) -> bool:
    """Whether this ``generate`` call (all by keyword) verifies drafts (assistant model, prompt lookup, early exit)
    and rolls back, with its options merged as generate merges them (a passed config's unset fields from the
    model's)."""
    config = merged_generation_config(model, call)
    keys = ("assistant_model", "prompt_lookup_num_tokens", "assistant_early_exit")
    return any(call.get(k, getattr(config, k, None)) is not None for k in keys)


def _wrap_generate(model, state: SWAAState) -> None:
    original, context = model.generate, state.context

    @functools.wraps(original)
    def generate(*args, **kwargs):
        state.last_route = None  # a call refused while routing has no route: not the last call's
        route = state.last_route = route_generate(model, args, kwargs)
        if route.fixed:
            return generate_static(model, args, kwargs)
        previous = context.prompt_end, context.assisted
        call = by_keyword(args, kwargs)  # generate's parameters may come by position
        context.prompt_end, context.assisted = _prompt_end(call), _assisted(model, call)
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
    model = swaa_owner(model)  # in a peft wrapper, the model it wraps: its generate is the one peft's calls
    config = SWAAConfig.coerce(config)
    check_backend_name(backend)  # also where full attention uses none: a misspelt name must not pass unseen
    text_config(model)  # refuses what is not a transformers model, before anything is changed
    if config is None or config.is_full_attention:
        remove_swaa(model)
        return None
    state = install(model, config, backend)
    if not getattr(model.__dict__.get("generate"), "_swaa_wrapped", False):
        _wrap_generate(model, state)
    return state


def current_config(model) -> SWAAConfig | None:
    state = getattr(swaa_owner(model), "_swaa_state", None)
    return None if state is None else state.config


@contextlib.contextmanager
def swaa(model, config: SWAAConfig | dict | None, *, backend: str = "auto"):
    """``with swaa(model, cfg): model.generate(...)`` -- restores whatever was applied before on exit."""
    previous = getattr(swaa_owner(model), "_swaa_state", None)
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
def capture_attention(model, input_ids, layer_idx: int, config: SWAAConfig | dict | None = None, attention_mask=None):
    """Attention probabilities (heads, q, k) of one layer for the first sequence, under ``config`` (None: full
    attention). That layer runs the reference backend, the layers below it the fast one, and the forward stops right
    after it. The model's previous SWAA state is restored afterwards."""
    config = SWAAConfig.coerce(config)
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        raise ValueError(
            f"input_ids must be a (batch, tokens) tensor of token ids, got {type(input_ids).__name__}"
            f"{' of shape ' + str(tuple(input_ids.shape)) if isinstance(input_ids, torch.Tensor) else ''}; "
            "a single sequence is ids[None]."
        )
    modules = attention_modules(model)
    if not 0 <= layer_idx < len(modules):
        raise SWAAConfigError(f"Layer {layer_idx} does not exist; this model has {len(modules)} layers.")
    previous = getattr(model, "_swaa_state", None)
    prev = (previous.config, previous.backend) if previous else None
    full = config is None or config.is_full_attention
    probe = SWAAConfig(sliding_window_size=1) if full else config
    install(model, probe, "auto", all_full=full)
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
