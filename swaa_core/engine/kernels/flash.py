"""FlashAttention window kernels (FA4's ``flash_attn.cute`` and flash-attn 2), found by importing exactly the function
that will be called, and the sink + window composition over them: the window pass, a sink pass, merged by
log-sum-exp.
"""

from __future__ import annotations

import functools
import os

import torch

from ..masks import MaskGeometry

# FA4 compiles its kernels on first use (CuTe DSL JIT): about 10 s for the window and sink kernels of one head size,
# in every new process. Its own on-disk cache (flash_attn/cute/cache_utils.py, read once at import) makes that a
# one-off per machine; it stays off unless asked for, so SWAA asks, unless the user already chose (=0 keeps it off).
FA4_CACHE_SWITCH = "FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED"


@functools.cache
def fa4_func():
    """``flash_attn.cute.flash_attn_func`` (FlashAttention-4), or the reason it cannot be imported. Turns FA4's
    persistent compile cache on first, unless ``FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED`` is already set."""
    os.environ.setdefault(FA4_CACHE_SWITCH, "1")
    try:
        from flash_attn.cute import flash_attn_func
    except Exception as e:  # ImportError, or a CUDA / CuTe DSL install that fails while importing
        return f"flash_attn.cute.flash_attn_func cannot be imported ({type(e).__name__}: {str(e)[:120]})"
    return flash_attn_func if callable(flash_attn_func) else "flash_attn.cute.flash_attn_func is not callable"


@functools.cache
def fa2_func():
    """flash-attn 2's ``flash_attn.flash_attn_func``, or the reason it cannot be imported (flash-attn-4 alone
    installs a ``flash_attn`` namespace without it)."""
    try:
        from flash_attn import flash_attn_func
    except Exception as e:
        return f"flash_attn.flash_attn_func cannot be imported ({type(e).__name__}: {str(e)[:120]})"
    return flash_attn_func if callable(flash_attn_func) else "flash_attn.flash_attn_func is not callable"


# --------------------------------------------------------------------------- window kernels: FA4, flash-attn 2
# A window function takes q (B, H, Q, D) and k/v (B, Hkv, KV, D) with bottom-right causal alignment (query r is key
# r + KV - Q) and returns (out (B, Q, H, D), lse (B, H, Q) in float32). window_left=None: plain (causal) attention.
WINDOW_HEAD_DIMS = range(8, 257, 8)  # head sizes both FA4 (sm90) and flash-attn 2 build kernels for


def window_fn(backend: str, q):
    """The window function of ``backend`` ("fa4" or "flash") for queries like ``q``, or None where it has no kernel
    (another backend, a dtype other than fp16/bf16, a head size outside ``WINDOW_HEAD_DIMS``)."""
    if backend not in ("fa4", "flash") or q.dtype not in (torch.float16, torch.bfloat16):
        return None
    if q.shape[-1] not in WINDOW_HEAD_DIMS:
        return None
    return fa4_window if backend == "fa4" else flash_attn_2_window(fa2_func())


def fa4_window(q, k, v, *, causal: bool, window_left: int | None, scale: float):
    """FlashAttention-4's window function (the contract above): (out (B, Q, H, D), lse (B, H, Q) float32)."""
    out, lse = fa4_func()(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        softmax_scale=scale,
        causal=causal,
        window_size=(window_left, 0 if causal else None),
        return_lse=True,
    )
    return out, lse


def flash_attn_2_window(flash_attn_func):
    """A window function over flash-attn 2's ``flash_attn_func`` contract ((B, S, H, D) layout, ``window_size`` with -1
    for unbounded, ``return_attn_probs=True`` giving (out, lse, probs))."""

    def window(q, k, v, *, causal: bool, window_left: int | None, scale: float):
        out, lse, _ = flash_attn_func(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            softmax_scale=scale,
            causal=causal,
            window_size=(-1 if window_left is None else window_left, 0 if causal else -1),
            return_attn_probs=True,
        )
        return out, lse

    return window


def window_sink(q, k, v, g: MaskGeometry, scaling: float, fn):
    """Sliding window + sinks from a window kernel (flash-attn's ``window_size=(W-1, 0)``), for unpadded queries that
    are the newest keys. A second pass over the sink keys is merged by log-sum-exp into the queries whose window no
    longer holds them; queries whose window still reaches the sinks see plain causal attention (sinks and window
    overlap into one run). Differentiable: both kernels take the gradient of their LSE. Raises ValueError for a mask
    kind that no window kernel expresses (``MaskKind.window_kernel`` None)."""
    rule = g.kind.window_kernel
    if rule is None:
        raise ValueError(unexpressible(g.kind))
    W = rule.window
    Q, KV = q.shape[2], k.shape[2]
    q_first, kv_first = g.offsets if g.offsets is not None else (int(g.q_pos[0, 0]), int(g.kv_pos[0, 0]))
    sinks = rule.sink_count(kv_first, KV)  # key indices holding sink positions
    if sinks == 0:
        return fn(q, k, v, causal=True, window_left=rule.window_left, scale=scaling)[0]
    head = min(max(rule.single_run_below - q_first, 0), Q)  # these queries see [first key, themselves]
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        return _window_sink_out_of_place(q, k, v, rule.window_left, sinks, head, scaling, fn)
    out, lse = fn(q, k, v, causal=True, window_left=rule.window_left, scale=scaling)
    if head < Q:
        sink_out, sink_lse = fn(
            q[:, :, head:], k[:, :, :sinks], v[:, :, :sinks], causal=False, window_left=None, scale=scaling
        )
        out[:, head:].lerp_(sink_out, _sink_weight(lse[:, :, head:], sink_lse, out.dtype))
    fix_from = min(max(W + kv_first - q_first, 0), head)  # head queries whose window misses some sinks
    if fix_from < head:
        keys = head + KV - Q
        out[:, fix_from:head] = fn(
            q[:, :, fix_from:head], k[:, :, :keys], v[:, :, :keys], causal=True, window_left=None, scale=scaling
        )[0]
    return out


def unexpressible(kind) -> str:
    """Why the window kernels refuse ``kind``, naming it."""
    return (
        f"The {kind.name!r} mask kind ({kind.describe()}) cannot run on FlashAttention's window kernels (fa4, flash): "
        "their window_size is one band of keys before each query. Use the 'flex', 'blocked' or 'reference' backend, "
        "or 'auto', which picks one of them."
    )


def _window_sink_out_of_place(q, k, v, window_left: int, sinks: int, head: int, scaling: float, fn):
    """The same composition without writing into kernel outputs, which autograd saved for the backward pass."""
    Q, KV = q.shape[2], k.shape[2]
    parts = []
    if head:
        keys = head + KV - Q
        parts.append(
            fn(q[:, :, :head], k[:, :, :keys], v[:, :, :keys], causal=True, window_left=None, scale=scaling)[0]
        )
    if head < Q:
        tail = q[:, :, head:]
        out, lse = fn(tail, k, v, causal=True, window_left=window_left, scale=scaling)
        sink_out, sink_lse = fn(tail, k[:, :, :sinks], v[:, :, :sinks], causal=False, window_left=None, scale=scaling)
        parts.append(merge_lse(out, lse, sink_out, sink_lse))
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def _sink_weight(lse_window, lse_sinks, dtype):
    """Share of the sink pass in the merged softmax, sigmoid(lse_sinks - lse_window), as (B, Q, H, 1): small, laid
    out so the one elementwise lerp over (B, Q, H, D) reads it contiguously."""
    return torch.sigmoid(lse_sinks - lse_window).transpose(1, 2).unsqueeze(-1).to(dtype).contiguous()


def merge_lse(out_a, lse_a, out_b, lse_b):
    """Combine two softmax-normalised partial attentions over disjoint key sets. out: (B, Q, H, D); lse: (B, H, Q)."""
    return torch.lerp(out_a, out_b, _sink_weight(lse_a, lse_b, out_a.dtype))
