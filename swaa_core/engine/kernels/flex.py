"""PyTorch FlexAttention (CUDA, Triton kernels; FlashAttention-4 through its FLASH backend): the block-sparse mask
built from candidate tiles only, the block-mask caches keyed on host-known integers, the compile scope that keeps
dynamo from falling back to the dense eager path, and the arithmetic mask_mods of the fast paths.
"""

from __future__ import annotations

import contextlib
import functools
import warnings

import torch
import torch.nn.functional as F

from ..compiled_step import compile_scope, recompile_limit_hit
from ..kinds import MaskKind, SinkWindow
from ..masks import MaskGeometry, geometry_from_positions, materialize, swaa_mask_mod
from .sdpa import BLOCK, blocked


def has_flex() -> bool:
    """Whether this torch has ``torch.nn.attention.flex_attention`` (the name the flex backend calls)."""
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    # fullgraph: a graph break would run parts of flex_attention eagerly, which materialises all n x n scores
    return torch.compile(flex_attention, fullgraph=True)


# Each dtype, head size, grad mode, first dynamic shape and window value costs flex_attention one compiled graph.
# Past dynamo's default of 8 graphs per function it silently falls back to the eager flex_attention, which builds
# the full score matrix: seen on an H100 (torch 2.11) as 87 ms instead of 0.7 ms at 8K and out of memory at 32K.
FLEX_RECOMPILE_LIMIT = 64


def _flex_scope(*tensors) -> contextlib.ExitStack:
    """Settings for our flex calls only: more graphs allowed, an error instead of the eager fallback, and inference
    under grad mode sharing the no-grad graph (dynamo guards on grad mode)."""
    stack = contextlib.ExitStack()
    stack.enter_context(compile_scope(fail=True, limit=FLEX_RECOMPILE_LIMIT))
    if torch.is_grad_enabled() and not any(t.requires_grad for t in tensors):
        stack.enter_context(torch.no_grad())
    return stack


# Under 128 queries (short prompts, small prefill chunks) inductor may pick its flex-decoding kernel; on an H100
# (torch 2.11) that failed to compile once shapes were dynamic (NoValidChoicesError), so the main Triton kernel is
# requested for every call.
FLEX_AVOID_DECODE_KERNEL = True


@functools.cache
def _main_kernel_options() -> dict:
    from torch.nn.attention import flex_attention as fa

    if "BACKEND" in getattr(getattr(fa, "FlexKernelOptions", None), "__annotations__", {}):
        return {"BACKEND": "TRITON"}
    return {"FORCE_USE_FLEX_ATTENTION": True}


def flex(q, k, v, g: MaskGeometry, scaling: float):
    """Any geometry: the block mask and the predicate read the position tensors (padding, evicted caches)."""
    block_mask = _create_block_mask(g, q.shape[0], q.shape[2], k.shape[2], q.device)
    return _run_flex(q, k, v, block_mask, scaling, lambda: blocked(q, k, v, g, scaling))


def flex_simple(q, k, v, g: MaskGeometry, scaling: float):
    """Unpadded, consecutive positions, no full queries: an arithmetic predicate over two offsets held in a device
    tensor (one compiled graph serves every chunk offset) and a block mask cached on host-known facts."""
    q_first, kv_first = g.offsets
    block_mask = _simple_block_mask(q.shape[2], k.shape[2], q_first, kv_first, g.kind, str(q.device))
    return _run_flex(q, k, v, block_mask, scaling, lambda: blocked(q, k, v, g, scaling))


@functools.cache
def _compiled_flex_static():
    from torch.nn.attention.flex_attention import flex_attention

    # FlexAttention's FLASH backend (FA4 underneath) takes static shapes only: one graph per length
    return torch.compile(flex_attention, fullgraph=True, dynamic=False)


_FLASH_FAILED: dict = {}  # (head dim, dtype, GQA) -> the error that made flex's FLASH backend unusable for them


def flex_flash(q, k, v, g: MaskGeometry, scaling: float):
    """FlexAttention with ``BACKEND="FLASH"``: FlashAttention-4's kernel runs the sink + window mask of a whole
    unpadded prefill (queries = keys = positions 0..n-1) in one pass over the block-sparse tiles. None when it cannot
    (its first failure for a kind of input is remembered, and the caller takes the two-pass FA4 composition or Triton
    flex instead)."""
    kind = (q.shape[-1], q.dtype, q.shape[1] // k.shape[1])
    if kind in _FLASH_FAILED:
        return None
    block_mask = _prefill_block_mask(q.shape[2], g.kind, str(q.device))
    try:
        out = _call_flex(_compiled_flex_static(), q, k, v, block_mask, scaling, {"BACKEND": "FLASH"})
    except torch.OutOfMemoryError:
        raise  # the caller's problem, not a limit of the kernel
    except Exception as e:  # an inductor / CuTe DSL limitation for this input kind, or the recompile limit
        _FLASH_FAILED[kind] = f"{type(e).__name__}: {str(e)[:300]}"
        warnings.warn(
            f"FlexAttention's FLASH backend failed ({_FLASH_FAILED[kind][:200]}); SWAA uses FlashAttention-4's window "
            "kernel with a separate sink pass for such calls.",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    return out.transpose(1, 2)


def _call_flex(compiled, q, k, v, block_mask, scaling: float, options):
    with _flex_scope(q, k, v):
        return compiled(
            q, k, v, block_mask=block_mask, scale=scaling, enable_gqa=q.shape[1] != k.shape[1], kernel_options=options
        )


def _run_flex(q, k, v, block_mask, scaling: float, fallback):
    options = _main_kernel_options() if FLEX_AVOID_DECODE_KERNEL and q.is_cuda else None
    try:
        out = _call_flex(_compiled_flex(), q, k, v, block_mask, scaling, options)
    except Exception as e:
        if not recompile_limit_hit(e):
            raise
        _warn_flex_limit()
        return fallback()
    return out.transpose(1, 2)  # (B, Q, H, D) view: the model's reshape makes the one copy it needs anyway


@functools.cache
def _warn_flex_limit() -> None:
    warnings.warn(
        f"FlexAttention reached {FLEX_RECOMPILE_LIMIT} compiled variants in this process; SWAA uses the blocked "
        "O(n*W) backend for new shapes/dtypes from now on (correct, but slower on GPU). Restart the process to reset.",
        RuntimeWarning,
        stacklevel=3,
    )


def window_mask_mod(offsets: torch.Tensor, window: int, keep_first: int):
    """The SWAA rule for consecutive positions: query index i is at position offsets[0] + i, key index j at
    offsets[1] + j. Same predicate as :func:`swaa_core.engine.kinds.sink_window.visible` with every key valid and no full query."""
    return SinkWindow(window, keep_first).offsets_mask_mod(offsets)


def prefill_mask_mod(window: int, keep_first: int):
    """The SWAA rule for a whole unpadded prefill (index = position), in constants only: the form FlexAttention's
    FLASH backend translates into FlashAttention-4's mask (it rejected a predicate reading a captured tensor)."""
    return SinkWindow(window, keep_first).prefill_mask_mod()


@functools.lru_cache(maxsize=64)
def _prefill_block_mask(n: int, kind: MaskKind, device: str):
    pos = torch.arange(n, device=device)[None]
    g = geometry_from_positions(pos, pos, kind=kind)
    return _create_block_mask(g, 1, n, n, device, mask_mod=kind.prefill_mask_mod())


@functools.lru_cache(maxsize=64)
def _simple_block_mask(Q: int, KV: int, q_first: int, kv_first: int, kind: MaskKind, device: str):
    q_pos = torch.arange(q_first, q_first + Q, device=device)[None]
    kv_pos = torch.arange(kv_first, kv_first + KV, device=device)[None]
    g = geometry_from_positions(q_pos, kv_pos, kind=kind)
    offsets = torch.tensor([q_first, kv_first], device=device)
    return _create_block_mask(g, 1, Q, KV, device, mask_mod=kind.offsets_mask_mod(offsets))


def block_mask_for(g: MaskGeometry, B: int, Q: int, KV: int, device):
    """The block mask a flex call uses for ``g`` (cached when the geometry is simple)."""
    if g.simple and g.full_from - g.offsets[0] >= Q:
        q_first, kv_first = g.offsets
        return _simple_block_mask(Q, KV, q_first, kv_first, g.kind, str(device))
    return _create_block_mask(g, B, Q, KV, device)


def _create_block_mask(g: MaskGeometry, B: int, Q: int, KV: int, device, block: int = BLOCK, mask_mod=None):
    """The block-sparse mask, from the predicate evaluated on candidate tiles only: the sink tiles and the tiles each
    query tile's window spans. No compile, extra memory O(Q * (W + K)).

    torch's own builder either holds the Q x KV boolean (16 GiB at 128K tokens) or, with _compile=True, compiles per
    shape: on an H100 with torch 2.11 that compile ran past 80 s at 16K tokens and once ended in a segfault."""
    from torch.nn.attention.flex_attention import BlockMask

    nq, nk = -(-Q // block), -(-KV // block)
    tiles = _candidate_tiles(g, Q, block)  # (nq, C) kv tile indices, -1 where unused
    C = tiles.shape[1]
    partial = torch.zeros(B, nq, nk + 1, dtype=torch.bool, device=device)  # column nk absorbs the unused slots
    full = torch.zeros_like(partial)
    offsets = torch.arange(block, device=device)
    rows = max(1, 2**23 // (B * C * block * block))  # the predicate's int64 temporaries stay near 64 MiB a chunk
    for start in range(0, nq, rows):
        t = tiles[start : start + rows]
        r = t.shape[0]
        q_idx = torch.arange(start, start + r, device=device)[:, None] * block + offsets  # (r, block)
        kv_idx = t[..., None] * block + offsets  # (r, C, block)
        inside = (q_idx < Q)[:, None, :, None] & ((kv_idx < KV) & (t[..., None] >= 0))[:, :, None, :]
        q_grid = q_idx.clamp(max=Q - 1)[:, None].expand(r, C, block).reshape(r * C, block)
        seen = materialize(g, q_grid, kv_idx.clamp(0, KV - 1).reshape(r * C, block)).view(B, r, C, block, block)
        seen &= inside  # out-of-range rows/columns count as masked, as in torch's builder
        hit, whole = seen.flatten(-2).any(-1), seen.flatten(-2).all(-1)
        col = torch.where(t >= 0, t, nk).expand(B, r, C)
        partial[:, start : start + r].scatter_(-1, col, hit & ~whole)
        full[:, start : start + r].scatter_(-1, col, whole)
    kv_num, kv_indices = _dense_to_ordered(partial[..., :nk])
    full_num, full_indices = _dense_to_ordered(full[..., :nk])
    return BlockMask.from_kv_blocks(
        kv_num,
        kv_indices,
        full_num,
        full_indices,
        BLOCK_SIZE=block,
        mask_mod=mask_mod or swaa_mask_mod(g),
        seq_lengths=(Q, KV),
    )


def _candidate_tiles(g: MaskGeometry, Q: int, block: int) -> torch.Tensor:
    """KV tiles a query tile may see: its window span over all batch rows (everything up to its last key when a query
    is full), plus the tiles holding sinks. Positions are non-decreasing along each row, as in ``blocked``."""
    device = g.q_pos.device
    nq = -(-Q // block)
    kv_pos = g.kv_pos.contiguous()
    first = torch.arange(nq, device=device) * block
    last = (first + block).clamp(max=Q) - 1
    hi = torch.searchsorted(kv_pos, g.q_pos[:, last].contiguous(), right=True).amax(0)
    if g.kind is None:
        lo = torch.zeros_like(hi)
    else:
        lo = torch.searchsorted(kv_pos, g.kind.span_start(g.q_pos[:, first]).contiguous()).amin(0)
        any_full = F.pad(g.q_full, (0, nq * block - Q)).view(-1, nq, block).any(-1).any(0)
        lo = torch.where(any_full, 0, lo)
    lo_tile = lo // block
    count = torch.where(hi > lo, (hi - 1) // block - lo_tile + 1, 0)
    span = lo_tile[:, None] + torch.arange(int(count.max()), device=device)
    span = torch.where(span < (lo_tile + count)[:, None], span, -1)
    sink_end, sinks_below = 0, g.kind.sinks_below if g.kind is not None else 0
    if sinks_below > 0:
        sink_end = int(torch.searchsorted(kv_pos, torch.full_like(kv_pos[:, :1], sinks_below)).max())
    sinks = torch.arange(-(-sink_end // block), device=device).expand(nq, -1)
    in_span = (sinks >= lo_tile[:, None]) & (sinks < (lo_tile + count)[:, None])
    return torch.cat([torch.where(in_span, -1, sinks), span], dim=1)


def _dense_to_ordered(dense: torch.Tensor):
    """(B, rows, cols) bool -> per-row counts and column indices, set columns first in ascending order (B, 1, ...)."""
    counts = dense.sum(-1, dtype=torch.int32)
    order = torch.argsort(dense.to(torch.int32), dim=-1, descending=True, stable=True).to(torch.int32)
    return counts[:, None].contiguous(), order[:, None].contiguous()
