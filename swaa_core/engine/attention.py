"""The attention function and mask function registered in transformers under the name "swaa".

Each attention module carries a small :class:`LayerPlan` and a shared :class:`RunContext` (set by
:func:`swaa_core.apply_swaa`) and, during a call, the cache layer it writes to (set by a forward pre-hook). From the
plan, the 2-D padding mask and the slots the cache layer returned, the function builds the mask geometry and hands it
to a backend. A one-token step without padding whose every key is visible (a full layer, an FA-decode step, a sliding
ring) skips all of that: one SDPA call over the keys, no mask. A one-token step of a padded batch builds its mask once
per forward for all layers of one kind.

Which queries are *generated* (full attention under FA decode) comes from what the caller asked for, never from the
shape of one forward: inside ``generate`` every slot at or after the prompt's end (``RunContext.prompt_end``, set by
the wrapper :func:`swaa_core.apply_swaa` installs on ``model.generate``), or the ``swaa_prompt_lengths`` a caller
passes to a forward (per row, in real token positions). Without either, every query is a prompt query.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .backends import attend, reference
from .cache import MASKED_INSIDE, KeyView, SWAACacheLayer, bucket_end, masked_inside_rows
from .kernels.sdpa import bucketed_decode, decode_sdpa
from .kinds import MaskKind, SinkWindow
from .masks import NO_FULL, MaskGeometry, materialize
from .static_cache import StaticSlots

NAME = "swaa"


@dataclass(frozen=True)
class LayerPlan:
    layer_idx: int
    kind: MaskKind | None  # what this layer's sliding queries see; None: this layer keeps full attention
    fa_decode: bool
    backend: str

    native_window: int | None = None  # the model's own sliding window in this layer (SWAA never widens it)

    @property
    def evicts(self) -> bool:
        """Only a sliding layer whose decode steps also slide can forget old keys."""
        return self.kind is not None and not self.fa_decode

    @property
    def counts_slots(self) -> bool:
        """The layer runs the model's own sliding window unchanged, which counts cache slots (padding included) as
        transformers does; every other kind counts real tokens (:func:`geometry`)."""
        return self.native_window is not None and self.kind == SinkWindow(self.native_window)


@dataclass
class RunContext:
    """Per-model state shared by its attention modules: where the prompt of the running ``generate`` call ends, in
    slots (columns of the 2-D mask). None outside ``generate``."""

    prompt_end: int | None = None
    assisted: bool = False  # the running generate verifies drafts, then rolls rejected ones back
    # The last ``swaa_prompt_lengths`` object seen and its shared value read on the host: every layer of a forward
    # (and its recomputation under gradient checkpointing) gets the same tensor, so it is read once, not per layer.
    lengths_seen: object = None
    lengths_shared: int | None = None
    # The decode masks of a padded batch built in the running forward, by kind of layer (see _padded_decode_step),
    # and the 2-D padding masks they were built from (Gemma 3 hands its sliding and its full layers a copy each).
    masks_for: tuple = ()
    decode_masks: dict = field(default_factory=dict)

    def forget_forward(self) -> None:
        """Drop what the last forward kept for its layers (tensors that would otherwise live until the next one)."""
        self.lengths_seen, self.lengths_shared = None, None
        self.masks_for, self.decode_masks = (), {}


def swaa_mask(batch_size, q_length, kv_length, q_offset=0, kv_offset=0, mask_function=None, attention_mask=None, **kw):
    """Hand the 2-D padding mask through (None when nothing is padded): no (q, kv) mask is ever built here. The
    one device read per forward also answers whether a token inside a prompt is masked, for the cache layers
    (``SWAACacheLayer.note_mask``), attached to the view of the mask they are handed."""
    if attention_mask is None:
        return None
    all_real, inside = torch.stack([attention_mask.all(), masked_inside_rows(attention_mask).any()]).tolist()
    if all_real:
        return None
    view = attention_mask.view_as(attention_mask)  # the caller's tensor stays as it was
    setattr(view, MASKED_INSIDE, inside)
    return view


def swaa_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """The attention transformers calls as "swaa": (B, H, Q, D) queries and (B, H_kv, K, D) keys and values in,
    ((B, Q, H, D) output, None) out. A fixed-buffer decode step (the compiled step traces it) attends over its
    buffers; everything else runs :func:`_attention`, which ``torch.compile`` never traces."""
    if kwargs.get("softcap") is not None:
        raise ValueError("SWAA backends do not implement attention logit soft-capping (Gemma 2 style models).")
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    cache_layer = getattr(module, "_swaa_cache_layer", None)
    if type(cache_layer) is StaticSlots:  # a captured decode step; a type test, as isinstance on an ABC is slow
        return cache_layer.attend(query, key, value, scaling), None
    return _attention(module, query, key, value, attention_mask, dropout, scaling, cache_layer, **kwargs)


# Its host-side geometry (reads of the plan, the cache layer's counters and the padding mask) would cost a compiled
# caller one graph per layer and per prompt length; the prefill's compiled attention modules (compiled_prefill) call
# it between their graphs instead. Compiled kernels it calls (flex) still run compiled.
@torch.compiler.disable
def _attention(module, query, key, value, attention_mask, dropout, scaling, cache_layer, **kwargs):
    plan: LayerPlan | None = getattr(module, "_swaa_plan", None)
    if plan is None:
        raise RuntimeError(
            "The 'swaa' attention is selected but this layer has no SWAA plan; use swaa_core.apply_swaa(model, config)."
        )
    view = cache_layer.view if cache_layer is not None else KeyView(False, 0, 0, key.shape[2], None)
    Q = query.shape[2]
    recorder = module._swaa_recorder
    decode = Q == 1 and attention_mask is None and recorder is None and plan.backend != "reference"
    if decode and plan.evicts and view.in_window(plan.kind):  # the common SWA step, before any FA-decode bookkeeping
        return decode_sdpa(query, key, value, None, scaling), None
    full = _queries_full(plan, module._swaa_ctx, kwargs.get("swaa_prompt_lengths"), view.total, Q)
    if decode and (full is True or view.in_window(plan.kind)):
        return decode_sdpa(query, key, value, None, scaling), None
    if Q == 1 and attention_mask is not None and recorder is None and plan.backend != "reference":
        ctx = module._swaa_ctx
        step = _padded_decode_step(plan, ctx, cache_layer, query, key, value, attention_mask, view, full, scaling)
        return step.nan_to_num(0.0), None
    g = geometry(plan, query, key, attention_mask, view, full, module._swaa_ctx)
    if recorder is not None:
        out, probs = reference(query, key, value, g, scaling)
        recorder.append(probs.detach())
    else:
        out = attend(plan.backend, query, key, value, g, scaling, dropout if module.training else 0.0)
    return out, None


def _padded_decode_step(plan: LayerPlan, ctx, cache_layer, query, key, value, mask2d, view: KeyView, full, scaling):
    """One token per row of a padded batch: q (B, H, 1, D) -> (B, 1, H, D).

    Its mask follows from the padding mask, the slots the layer holds, its rule and which queries are full, so every
    layer of one kind in a forward shares it: built once per forward and kind instead of in every layer (a dozen small
    launches each, on the host's critical path of a batch decode step), and no layer asks the device whether the mask
    could be skipped (each question would wait for the GPU). On CUDA, keys a growing cache layer holds are read to the
    next multiple of ``KEY_BUCKET`` slots of its buffer (``SWAACacheLayer.room``, no copy), masked out past the real
    ones, so that SDPA's cuDNN kernel meets one key length per bucket (:func:`bucketed_decode`)."""
    memo, source = {}, 0
    if ctx is not None:
        if plan.layer_idx == 0 or len(ctx.masks_for) > 4:  # a new forward (or a caller's forwards that skip layer 0)
            ctx.forget_forward()
        source = next((i for i, seen in enumerate(ctx.masks_for) if seen is mask2d), len(ctx.masks_for))
        if source == len(ctx.masks_for):
            ctx.masks_for += (mask2d,)  # held, so that no other tensor takes its identity during the forward
        memo = ctx.decode_masks
    kind = (source, view, plan.kind, full if isinstance(full, (bool, int)) else id(full))
    mask = memo.get(kind)
    if mask is None:
        mask = memo[kind] = materialize(geometry(plan, query, key, mask2d, view, full, ctx))
    KV = key.shape[2]
    slots = bucket_end(KV)
    room = cache_layer.room(key, value, slots) if query.is_cuda and type(cache_layer) is SWAACacheLayer else None
    if room is not None:
        padded = memo.get((kind, slots))
        if padded is None:
            padded = memo[(kind, slots)] = F.pad(mask.expand(query.shape[0], 1, 1, KV), (0, slots - KV), value=False)
        out = bucketed_decode(query, *room, padded, scaling)
        if out is not None:
            return out
    return decode_sdpa(query, key, value, mask, scaling)


def _queries_full(plan: LayerPlan, ctx: RunContext | None, prompt_lengths, total: int, Q: int):
    """Which queries attend to the whole past: True / False for all, a slot (queries at or after it), or the
    per-row ``prompt_lengths`` tensor (queries at real positions at or after it)."""
    if plan.kind is None:
        return True
    if not plan.fa_decode:
        return False
    if prompt_lengths is not None:
        return prompt_lengths
    end = None if ctx is None else ctx.prompt_end
    if end is None or total <= end:
        return False
    return True if total - Q >= end else end


def geometry(plan: LayerPlan, query, key, mask2d, view: KeyView, full, ctx: RunContext | None = None) -> MaskGeometry:
    B, _, Q, _ = query.shape
    KV = key.shape[2]
    device = query.device
    total = view.total
    slots, live = view.slots(device)
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
        if plan.counts_slots:
            # as transformers' sliding masks count it; real positions would reach one token further back per slot
            # masked inside a prompt. SWAA's own kinds (a narrower window, chunks) count real tokens in every layer.
            real = torch.arange(total, device=device).expand(B, total)
        kv_pos, kv_valid = real[:, slots], mask2d[:, slots]
        q_pos = real[:, total - Q :]
    else:
        kv_pos = slots[None].expand(B, KV)
        kv_valid = torch.ones(B, KV, dtype=torch.bool, device=device)
        q_pos = torch.arange(total - Q, total, device=device)[None].expand(B, Q)
        hints.update(keys_all_valid=live is None, extent=(view.first, total - 1))
        if view.contiguous or (not view.ring and view.sinks == 0):  # keys are one run of consecutive positions
            hints["offsets"] = (total - Q, view.first)
    if live is not None:
        kv_valid = kv_valid & live
    if isinstance(full, bool):
        q_full = torch.full((B, Q), full, dtype=torch.bool, device=device)
        hints["queries_all_full"] = full
        hints["full_from"] = total - Q if full else NO_FULL
        if mask2d is None and Q == 1:
            hints["sees_all_keys"] = full or view.in_window(plan.kind)
    elif isinstance(full, int):
        q_full = (torch.arange(total - Q, total, device=device) >= full)[None].expand(B, Q)
        hints["full_from"] = full if mask2d is None else None  # a slot; equal to a position only without padding
    else:
        q_full = q_pos >= torch.as_tensor(full, device=device).view(-1, 1)
        hints["full_from"] = _shared_prompt_length(full, ctx)

    return MaskGeometry(q_pos, kv_pos, kv_valid, q_full, plan.kind, **hints)


def _shared_prompt_length(prompt_lengths, ctx: RunContext | None) -> int | None:
    """The prompt length shared by every row (None when rows differ), read on the host once per forward: a tensor on
    the GPU costs one sync, which per layer would stall the launch queue of every training step."""
    if ctx is not None and ctx.lengths_seen is prompt_lengths:
        return ctx.lengths_shared
    shared = _same_prompt_length(prompt_lengths)
    if ctx is not None:
        ctx.lengths_seen, ctx.lengths_shared = prompt_lengths, shared
    return shared


def _same_prompt_length(prompt_lengths) -> int | None:
    lengths = prompt_lengths.tolist() if isinstance(prompt_lengths, torch.Tensor) else prompt_lengths
    lengths = lengths if isinstance(lengths, list) else [lengths]
    return int(lengths[0]) if lengths and all(n == lengths[0] for n in lengths) else None
