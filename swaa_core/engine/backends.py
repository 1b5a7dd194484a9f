"""Attention backends. Each takes q (B, H, Q, D), k/v (B, Hkv, KV, D) and a MaskGeometry, returns (B, Q, H, D).

All of them compute softmax(q k^T * scale + mask) v for the mask of :mod:`swaa_core.engine.masks`; they differ only in
which (query, key) pairs they touch:
- reference: every pair, materialised mask, eager softmax; returns the probabilities too (attention maps, tests).
- blocked:   query blocks against sinks + window span only: O(n * (W + K + block)) time, O(block * (W + K)) memory.
- flex:      PyTorch FlexAttention with a block-sparse mask (CUDA, Triton kernels).
- fa4:       FlashAttention-4 (``flash_attn.cute``, Hopper/Blackwell): its native window, plus a pass over the sinks
             merged by log-sum-exp.
- flash:     the same composition on flash-attn 2 (``flash_attn.flash_attn_func``).
Full-attention calls (non-sliding layers, FA decode steps) go to SDPA when nothing needs masking beyond causality.

Where a fast kernel cannot express a call (left padding, evicted caches read by several queries, per-row prompt
lengths), that call takes the next backend that can: fa4/flash -> flex -> blocked. A mask kind that no window kernel
expresses (``MaskKind.window_kernel`` None) is refused by fa4 and flash when named, and passed over by "auto".
Whether a kernel exists is decided by importing exactly the function that will be called, never by a package name.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import AUTO_ORDER, BACKENDS

# The kernel families live in .kernels; the names below are the ones this dispatcher calls (a test that spies on one
# of them patches it here) and the public entry points other modules and benchmarks import from here.
from .kernels.flash import (
    fa2_func,
    fa4_func,
    fa4_window,
    flash_attn_2_window,
    merge_lse,
    unexpressible,
    window_fn,
    window_sink,
)
from .kernels.flex import block_mask_for, flex, flex_flash, flex_simple, has_flex, prefill_mask_mod, window_mask_mod
from .kernels.sdpa import blocked, causal_sdpa, decode_sdpa, reference
from .kinds import MaskKind
from .masks import MaskGeometry, materialize

WINDOW_BACKENDS = ("fa4", "flash")  # backends whose kernels are FlashAttention's window kernels

__all__ = [
    "AUTO_ORDER",
    "BACKENDS",
    "attend",
    "available_backends",
    "backend_status",
    "block_mask_for",
    "blocked",
    "choose_backend",
    "explain_backend",
    "flash_attn_2_window",
    "flex",
    "flex_flash",
    "flex_simple",
    "merge_lse",
    "prefill_mask_mod",
    "reference",
    "simple_attention",
    "window_mask_mod",
    "window_sink",
]


def backend_status(device: torch.device | str) -> dict[str, str | None]:
    """Each backend mapped to None when it can run on ``device``, else to the reason it cannot."""
    device = torch.device(device)
    status: dict[str, str | None] = {"reference": None, "blocked": None}
    on_cuda = None if device.type == "cuda" else f"needs a CUDA GPU (this model is on {device.type})"
    status["flex"] = on_cuda or (None if has_flex() else "torch.nn.attention.flex_attention is missing")
    status["fa4"] = on_cuda or _fa4_problem(device)
    status["flash"] = on_cuda or _fa2_problem(device)
    return status


def available_backends(device: torch.device | str) -> list[str]:
    return [name for name, problem in backend_status(device).items() if problem is None]


def check_backend_name(requested) -> None:
    """Raise ValueError unless ``requested`` is "auto" or a backend's name."""
    if not isinstance(requested, str) or requested not in BACKENDS:
        raise ValueError(f"Unknown attention backend {requested!r}; choose one of {', '.join(BACKENDS)}.")


def choose_backend(requested: str, device: torch.device | str, kind: MaskKind | None = None) -> str:
    return explain_backend(requested, device, kind)[0]


def explain_backend(requested: str, device: torch.device | str, kind: MaskKind | None = None) -> tuple[str, list[str]]:
    """The backend to run for ``requested`` ("auto" or a name) and notes on faster ones that were passed over, for
    sliding layers of ``kind`` (None: any kind).

    Raises ValueError for an unknown name, a backend that cannot run here (with the reason), or a window-kernel
    backend named for a kind no window kernel expresses (naming both)."""
    check_backend_name(requested)
    status = backend_status(device)
    if kind is not None and kind.window_kernel is None:
        for name in WINDOW_BACKENDS:
            status[name] = status[name] or f"its window kernel cannot express the {kind.name!r} mask kind"
        if requested in WINDOW_BACKENDS:
            raise ValueError(f"Attention backend {requested!r} refused: {unexpressible(kind)}")
    if requested != "auto":
        if status[requested] is not None:
            raise ValueError(f"Attention backend {requested!r} cannot run here: {status[requested]}.")
        return requested, []
    notes = []
    for name in AUTO_ORDER:
        if status[name] is None:
            return name, notes
        if torch.device(device).type == "cuda":
            notes.append(f"{name}: {status[name]}")
    return "blocked", notes


FA4_ARCHS = (9, 10)  # Hopper (sm90) and Blackwell (sm100): the architectures FlashAttention-4 builds kernels for


def _fa4_problem(device: torch.device) -> str | None:
    major = torch.cuda.get_device_capability(device)[0]
    if major not in FA4_ARCHS:
        return f"FlashAttention-4 needs compute capability 9.x or 10.x (this GPU: {major}.x)"
    fn = fa4_func()
    return fn if isinstance(fn, str) else None


def _fa2_problem(device: torch.device) -> str | None:
    if torch.cuda.get_device_capability(device)[0] < 8:
        return "flash-attn 2 needs compute capability 8.0 or newer"
    fn = fa2_func()
    return fn if isinstance(fn, str) else None


# --------------------------------------------------------------------------- dispatch
def attend(backend: str, q, k, v, g: MaskGeometry, scaling: float, dropout: float = 0.0):
    if backend == "reference":
        return reference(q, k, v, g, scaling)[0]
    if q.shape[2] == 1:  # a decode step: its whole mask is one short row, cheaper than any block machinery
        sees_all = g.sees_all_keys if g.sees_all_keys is not None else g.plain_causal
        if sees_all:
            return decode_sdpa(q, k, v, None, scaling)
        return decode_sdpa(q, k, v, materialize(g), scaling).nan_to_num(0.0)
    if g.plain_causal:
        return causal_sdpa(q, k, v, g, scaling, dropout)
    if backend != "blocked" and q.is_cuda and dropout == 0.0 and g.simple:
        fn = window_fn(backend, q) if g.kind.window_kernel is not None else None
        return simple_attention(q, k, v, g, scaling, fn)
    if backend in ("flex", "fa4", "flash") and q.shape[2] >= 16:  # decode-sized calls: a masked SDPA beats a compile
        return flex(q, k, v, g, scaling)
    return blocked(q, k, v, g, scaling, dropout)


def simple_attention(q, k, v, g: MaskGeometry, scaling: float, fn=None):
    """A :attr:`MaskGeometry.simple` call: no padding, consecutive positions, and queries that turn 'full' from one
    host-known position on (FA-decode answer tokens in training and scoring). Sliding rows and full rows go to
    separate kernel calls: ``fn`` (a window kernel, see :func:`window_sink`) when given, else FlexAttention."""
    Q, KV = q.shape[2], k.shape[2]
    q_first, kv_first = g.offsets
    split = min(max(g.full_from - q_first, 0), Q)
    aligned = q_first - kv_first == KV - Q  # the queries are the newest keys: bottom-right causal alignment holds
    if split == Q:
        # FLASH's backward through a block mask was not verified on the H200 (torch 2.11): training takes the two-pass
        # composition, whose FA4 backward was (tests/swaa_core/engine/test_gpu.py)
        inference = not (torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)))
        if fn is fa4_window and inference and (q_first, kv_first) == (0, 0) and g.kind.sinks_below > 0:
            out = flex_flash(q, k, v, g, scaling)  # one pass over sinks + window
            if out is not None:
                return out
        if fn is not None and aligned:
            return window_sink(q, k, v, g, scaling, fn)
        return flex_simple(q, k, v, g, scaling)
    full_rows = _full_rows(q[:, :, split:], k, v, scaling, fn if aligned else None, q_first + split, kv_first)
    if split == 0:
        return full_rows
    keys = split + KV - Q if aligned else KV
    head = simple_attention(q[:, :, :split], k[:, :, :keys], v[:, :, :keys], _slice_queries(g, 0, split), scaling, fn)
    return torch.cat([head, full_rows], dim=1)


def _full_rows(q, k, v, scaling: float, fn, q_first: int, kv_first: int):
    """Queries that see every earlier key: bottom-right causal by the window kernel, else SDPA with a built mask."""
    if fn is not None:
        return fn(q, k, v, causal=True, window_left=None, scale=scaling)[0]
    q_abs = q_first + torch.arange(q.shape[2], device=q.device)
    kv_abs = kv_first + torch.arange(k.shape[2], device=q.device)
    mask = kv_abs[None, :] <= q_abs[:, None]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling, enable_gqa=q.shape[1] != k.shape[1])
    return out.transpose(1, 2)


def _slice_queries(g: MaskGeometry, start: int, end: int) -> MaskGeometry:
    offsets = None if g.offsets is None else (g.offsets[0] + start, g.offsets[1])
    return MaskGeometry(
        g.q_pos[:, start:end],
        g.kv_pos,
        g.kv_valid,
        g.q_full[:, start:end],
        g.kind,
        keys_all_valid=g.keys_all_valid,
        offsets=offsets,
        full_from=g.full_from,
    )
