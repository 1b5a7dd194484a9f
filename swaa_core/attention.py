"""The attention function and mask function registered in transformers under the name "swaa".

Each attention module carries a small :class:`LayerPlan` (set by :func:`swaa_core.apply_swaa`) and, during a call,
the cache layer it writes to (set by a forward pre-hook). From the layer index, the 2-D padding mask and the cache
slots, the function builds the mask geometry and hands it to a backend.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .backends import attend, reference
from .cache import SWAACacheLayer
from .masks import NO_FULL, MaskGeometry

NAME = "swaa"


@dataclass(frozen=True)
class LayerPlan:
    layer_idx: int
    window: int | None  # None: this layer keeps full attention
    keep_first: int
    fa_decode: bool
    backend: str

    @property
    def evicts(self) -> bool:
        """Only a sliding layer whose decode steps also slide can forget old keys."""
        return self.window is not None and not self.fa_decode


def swaa_mask(batch_size, q_length, kv_length, q_offset=0, kv_offset=0, mask_function=None, attention_mask=None, **kw):
    """Hand the 2-D padding mask through untouched (None when nothing is padded): no (q, kv) mask is ever built here."""
    if attention_mask is None or bool(attention_mask.all()):
        return None
    return attention_mask


def swaa_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    plan: LayerPlan | None = getattr(module, "_swaa_plan", None)
    if plan is None:
        raise RuntimeError(
            "The 'swaa' attention is selected but this layer has no SWAA plan; use swaa_core.apply_swaa(model, config)."
        )
    if kwargs.get("softcap") is not None:
        raise ValueError("SWAA backends do not implement attention logit soft-capping (Gemma 2 style models).")
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    cache_layer = getattr(module, "_swaa_cache_layer", None)
    g = geometry(plan, query, key, attention_mask, cache_layer, kwargs.get("swaa_prompt_lengths"))
    recorder = getattr(module, "_swaa_recorder", None)
    if recorder is not None:
        out, probs = reference(query, key, value, g, scaling)
        recorder.append(probs.detach())
    else:
        out = attend(plan.backend, query, key, value, g, scaling, dropout if module.training else 0.0)
    if plan.evicts and isinstance(cache_layer, SWAACacheLayer):
        cache_layer.evict(_sink_slots(attention_mask, plan.keep_first, cache_layer), plan.window)
    return out, None


def geometry(plan: LayerPlan, query, key, mask2d, cache_layer, prompt_lengths=None) -> MaskGeometry:
    B, _, Q, _ = query.shape
    KV = key.shape[2]
    device = query.device
    if isinstance(cache_layer, SWAACacheLayer) and cache_layer.slots is not None:
        slots, total, held = cache_layer.slots, cache_layer.total, cache_layer.held
    else:
        slots, total, held = torch.arange(KV, device=device), KV, [(0, KV)]
    if slots.numel() != KV:
        raise RuntimeError(
            f"SWAA cache bookkeeping is out of sync in layer {plan.layer_idx} ({slots.numel()} != {KV})."
        )
    hints = {}
    if mask2d is not None:
        if mask2d.dim() != 2:
            raise ValueError(
                "SWAA builds its own masks from the 2-D padding mask; a custom 4-D attention_mask is not supported."
            )
        if mask2d.shape[1] != total:
            raise ValueError(
                f"attention_mask covers {mask2d.shape[1]} tokens but the model has seen {total}; pass the full mask."
            )
        mask2d = mask2d.to(device=device, dtype=torch.bool)
        real = mask2d.long().cumsum(-1) - 1
        kv_pos, kv_valid = real[:, slots], mask2d[:, slots]
        q_pos = real[:, total - Q :]
    else:
        kv_pos = slots[None].expand(B, KV)
        kv_valid = torch.ones(B, KV, dtype=torch.bool, device=device)
        q_pos = torch.arange(total - Q, total, device=device)[None].expand(B, Q)
        hints.update(keys_all_valid=True, reach=total - 1 - held[0][0] if held else 0)
    if plan.fa_decode and plan.window is not None and prompt_lengths is not None:
        q_full = q_pos >= torch.as_tensor(prompt_lengths, device=device).view(-1, 1)
        hints["full_from"] = _same_prompt_length(prompt_lengths)
    else:
        every = plan.window is None or (plan.fa_decode and Q == 1 and total > 1)
        q_full = torch.full((B, Q), every, dtype=torch.bool, device=device)
        hints["queries_all_full"] = every
        hints["full_from"] = total - Q if every else NO_FULL
        if mask2d is None and Q == 1:
            hints["sees_all_keys"] = every or _held_in_view(held, total, plan.window, plan.keep_first)
    if mask2d is None and len(held) == 1:
        hints["offsets"] = (total - Q, held[0][0])
    return MaskGeometry(q_pos, kv_pos, kv_valid, q_full, plan.window, plan.keep_first, **hints)


def _same_prompt_length(prompt_lengths) -> int | None:
    """The prompt length shared by every row, read on the host (None when rows differ). A tensor on the GPU costs
    one sync here: this runs for training and scoring batches, never in a decode step."""
    lengths = prompt_lengths.tolist() if isinstance(prompt_lengths, torch.Tensor) else prompt_lengths
    lengths = lengths if isinstance(lengths, list) else [lengths]
    return int(lengths[0]) if lengths and all(n == lengths[0] for n in lengths) else None


def _held_in_view(held: list[tuple[int, int]], total: int, window: int, keep_first: int) -> bool:
    """Whether the newest token (slot total - 1, no padding) sees every held slot: an evicting cache holds exactly
    the sinks and the window, so its decode steps need no mask."""
    window_start = total - window
    return keep_first >= window_start or all(end <= keep_first or start >= window_start for start, end in held)


def _sink_slots(mask2d, keep_first: int, cache_layer: SWAACacheLayer) -> int:
    """Slots to keep at the start so every row keeps its first keep_first real tokens (rows differ by left padding).

    Settled, and remembered by the cache layer, once every row has that many real tokens: no later token is a sink."""
    if keep_first == 0 or mask2d is None:
        return keep_first
    if cache_layer.sink_slots is not None:
        return cache_layer.sink_slots
    real_before = mask2d.long().cumsum(-1)
    slots = int(torch.searchsorted(real_before, torch.full_like(real_before[:, :1], keep_first)).max()) + 1
    if slots <= cache_layer.total:
        cache_layer.sink_slots = slots
    return slots
