"""Attention backends. Each takes q (B, H, Q, D), k/v (B, Hkv, KV, D) and a MaskGeometry, returns (B, Q, H, D).

All of them compute softmax(q k^T * scale + mask) v for the mask of :mod:`swaa_core.masks`; they differ only in
which (query, key) pairs they touch:
- reference: every pair, materialised mask, eager softmax; returns the probabilities too (attention maps, tests).
- blocked:   query blocks against sinks + window span only: O(n * (W + K + block)) time, O(block * (W + K)) memory.
- flex:      PyTorch FlexAttention with a block-sparse mask (CUDA).
- flash:     flash-attn's native window plus a second pass over the sinks, merged by log-sum-exp (CUDA, if installed).
Full-attention calls (non-sliding layers, FA decode steps) go to SDPA when nothing needs masking beyond causality.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import warnings

import torch
import torch.nn.functional as F

from .masks import MaskGeometry, materialize, swaa_mask_mod

BACKENDS = ("auto", "reference", "blocked", "flex", "flash")
BLOCK = 128
GROUP = 8


def available_backends(device: torch.device | str) -> list[str]:
    device = torch.device(device)
    out = ["reference", "blocked"]
    if device.type == "cuda":
        if _has_flex():
            out.append("flex")
        if importlib.util.find_spec("flash_attn") is not None:
            out.append("flash")
    return out


def choose_backend(requested: str, device: torch.device | str) -> str:
    if requested not in BACKENDS:
        raise ValueError(f"Unknown attention backend {requested!r}; choose one of {', '.join(BACKENDS)}.")
    have = available_backends(device)
    if requested == "auto":
        for name in ("flash", "flex", "blocked"):
            if name in have:
                return name
    if requested not in have:
        raise ValueError(
            f"Attention backend {requested!r} is not available on {torch.device(device).type} "
            f"(available: {', '.join(have)})."
        )
    return requested


def attend(backend: str, q, k, v, g: MaskGeometry, scaling: float, dropout: float = 0.0):
    if backend == "reference":
        return reference(q, k, v, g, scaling)[0]
    if q.shape[2] == 1:  # a decode step: its whole mask is one short row, cheaper than any block machinery
        sees_all = g.sees_all_keys if g.sees_all_keys is not None else g.plain_causal
        if sees_all:
            return _decode_sdpa(q, k, v, None, scaling)
        return _decode_sdpa(q, k, v, materialize(g), scaling).nan_to_num(0.0)
    if g.plain_causal:
        return _causal_sdpa(q, k, v, g, scaling, dropout)
    if backend == "flex" and q.shape[2] >= 16:  # decode steps: a tiny masked SDPA beats a per-shape flex compile
        return flex(q, k, v, g, scaling)
    if backend == "flash":
        if _flash_applicable(q, g):
            return flash(q, k, v, g, scaling)
        if q.shape[2] >= 16 and _has_flex():  # padded batches or mixed masks: flash's index window does not apply
            return flex(q, k, v, g, scaling)
    return blocked(q, k, v, g, scaling, dropout)


# --------------------------------------------------------------------------- reference
def reference(q, k, v, g: MaskGeometry, scaling: float):
    groups = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(groups, dim=1)
    v = v.repeat_interleave(groups, dim=1)
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scaling
    scores = scores.masked_fill(~materialize(g), float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # a padding query sees nothing: zeros, not NaN
    out = torch.matmul(probs, v.float()).to(q.dtype)
    return out.transpose(1, 2).contiguous(), probs


# --------------------------------------------------------------------------- plain causal
def _causal_sdpa(q, k, v, g: MaskGeometry, scaling: float, dropout: float):
    Q, KV = q.shape[2], k.shape[2]
    if Q == KV and _is_aligned(g):
        out = F.scaled_dot_product_attention(
            q, k, v, is_causal=Q > 1, scale=scaling, dropout_p=dropout, enable_gqa=q.shape[1] != k.shape[1]
        )
        return out.transpose(1, 2).contiguous()
    return blocked(q, k, v, g, scaling, dropout)


def _decode_sdpa(q, k, v, mask, scaling: float):
    """One query token. On CPU, fold the query heads of each KV group into the query axis so SDPA reads every key
    once (enable_gqa measured ~25x slower there, torch 2.13). On CUDA the fold leaves most SMs idle: enable_gqa was
    7-10x faster at 32K keys on an H100 (53 vs 375 us, torch 2.11)."""
    B, H, _, D = q.shape
    Hkv = k.shape[1]
    if q.is_cuda:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling, enable_gqa=Hkv != H)
        return out.transpose(1, 2)
    out = F.scaled_dot_product_attention(q.reshape(B, Hkv, H // Hkv, D), k, v, attn_mask=mask, scale=scaling)
    return out.reshape(B, 1, H, D)


def _is_aligned(g: MaskGeometry) -> bool:
    """Keys and queries are the same tokens in order (a prefill without padding or eviction)."""
    return g.q_pos.shape == g.kv_pos.shape and bool((g.q_pos == g.kv_pos).all())


# --------------------------------------------------------------------------- blocked (CPU / portable)
def blocked(q, k, v, g: MaskGeometry, scaling: float, dropout: float = 0.0, block: int = BLOCK, group: int = GROUP):
    """Query blocks of ``block`` tokens, each against its sinks + window span only; ``group`` blocks share one SDPA
    call (batched), which keeps the kernel busy while bounding extra memory to group * block * (K + W + block)."""
    B, H, Q, D = q.shape
    out = q.new_empty(B, Q, H, D)
    kv_pos = g.kv_pos.contiguous()
    sink_end = 0
    if g.window is not None and g.keep_first > 0:
        limit = torch.full_like(kv_pos[:, :1], g.keep_first)
        sink_end = int(torch.searchsorted(kv_pos, limit).max())
    n_full = Q // block
    for first in range(0, n_full, group):
        blocks = min(group, n_full - first)
        _attend_blocks(q, k, v, g, scaling, dropout, first * block, blocks, block, sink_end, kv_pos, out)
    if Q % block:
        _attend_blocks(q, k, v, g, scaling, dropout, n_full * block, 1, Q % block, sink_end, kv_pos, out)
    if not g.all_valid:  # left-padding queries see no key: NaN on CPU, arbitrary on CUDA; make them 0
        out = torch.where((g.q_pos >= 0)[:, :, None, None], out.nan_to_num(0.0), 0.0)
    return out


def _attend_blocks(q, k, v, g, scaling, dropout, q_start, blocks, size, sink_end, kv_pos, out):
    B, H, _, D = q.shape
    Hkv = k.shape[1]
    device = q.device
    q_index = q_start + torch.arange(blocks * size, device=device).view(blocks, size)
    q_pos = g.q_pos[:, q_index]  # (B, blocks, size)
    hi = torch.searchsorted(kv_pos, q_pos.amax(-1), right=True).amax(0)
    if g.window is None:
        lo = torch.zeros_like(hi)
    else:
        lo = torch.searchsorted(kv_pos, q_pos.amin(-1) - g.window + 1).amin(0)
        lo = torch.where(g.q_full[:, q_index].any(-1).any(0), 0, lo)
    span = int((hi - lo).max())
    start = (hi - span).clamp(min=0)
    kv_index = start[:, None] + torch.arange(span, device=device)
    if sink_end:
        sinks = torch.arange(sink_end, device=device).expand(blocks, sink_end)
        kv_index = torch.cat([sinks, kv_index], dim=1)
    mask = materialize(g, q_index, kv_index)  # (B, blocks, size, L)
    if sink_end:  # a sink that also lies in the span must count once
        mask[..., :sink_end] &= (sinks < start[:, None])[None, :, None, :]
    L = kv_index.shape[1]

    def gather(t):
        return t.index_select(2, kv_index.flatten()).view(B, Hkv, blocks, L, D).transpose(1, 2).reshape(-1, Hkv, L, D)

    q_blk = q[:, :, q_start : q_start + blocks * size].reshape(B, H, blocks, size, D).transpose(1, 2)
    o = F.scaled_dot_product_attention(
        q_blk.reshape(-1, H, size, D),
        gather(k),
        gather(v),
        attn_mask=mask.reshape(-1, 1, size, L),
        scale=scaling,
        dropout_p=dropout,
        enable_gqa=Hkv != H,
    )
    out[:, q_start : q_start + blocks * size] = (
        o.view(B, blocks, H, size, D).permute(0, 1, 3, 2, 4).reshape(B, blocks * size, H, D)
    )


# --------------------------------------------------------------------------- flex (CUDA)
def _has_flex() -> bool:
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


_BLOCK_MASKS: dict = {}
# Each dtype, head size, grad mode, first dynamic shape and window value costs flex_attention one compiled graph.
# Past dynamo's default of 8 graphs per function it silently falls back to the eager flex_attention, which builds
# the full score matrix: seen on an H100 (torch 2.11) as 87 ms instead of 0.7 ms at 8K and out of memory at 32K.
FLEX_RECOMPILE_LIMIT = 64


def _flex_scope(*tensors) -> contextlib.ExitStack:
    """Settings for our flex calls only: more graphs allowed, an error instead of the eager fallback, and inference
    under grad mode sharing the no-grad graph (dynamo guards on grad mode)."""
    settings = {"recompile_limit": FLEX_RECOMPILE_LIMIT}
    if hasattr(torch._dynamo.config, "fail_on_recompile_limit_hit"):
        settings["fail_on_recompile_limit_hit"] = True
    stack = contextlib.ExitStack()
    stack.enter_context(torch._dynamo.config.patch(**settings))
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
    options = _main_kernel_options() if FLEX_AVOID_DECODE_KERNEL and q.is_cuda else None
    try:
        with _flex_scope(q, k, v):
            block_mask = block_mask_for(g, q.shape[0], q.shape[2], k.shape[2], q.device)
            out = _compiled_flex()(
                q,
                k,
                v,
                block_mask=block_mask,
                scale=scaling,
                enable_gqa=q.shape[1] != k.shape[1],
                kernel_options=options,
            )
    except Exception as e:  # dynamo's limit error class has been renamed across torch versions
        if "RecompileLimit" not in type(e).__name__ and "CacheLimit" not in type(e).__name__:
            raise
        _warn_flex_limit()
        return blocked(q, k, v, g, scaling)
    return out.transpose(1, 2).contiguous()


@functools.cache
def _warn_flex_limit() -> None:
    warnings.warn(
        f"FlexAttention reached {FLEX_RECOMPILE_LIMIT} compiled variants in this process; SWAA uses the blocked "
        "O(n*W) backend for new shapes/dtypes from now on (correct, but slower on GPU). Restart the process to reset.",
        RuntimeWarning,
        stacklevel=3,
    )


def block_mask_for(g: MaskGeometry, B: int, Q: int, KV: int, device):
    """Block-sparse mask for the geometry; cached per shape when positions are the plain 0..n-1 layout."""
    key = _plain_layout_key(g, B, Q, KV)
    if key is not None and key in _BLOCK_MASKS:
        return _BLOCK_MASKS[key]
    block_mask = _create_block_mask(g, B, Q, KV, device)
    if key is not None:
        if len(_BLOCK_MASKS) > 64:
            _BLOCK_MASKS.clear()
        _BLOCK_MASKS[key] = block_mask
    return block_mask


def _plain_layout_key(g: MaskGeometry, B: int, Q: int, KV: int):
    """Cache key when no token is padding or a full-attention query and every row holds consecutive positions.

    One device-to-host copy: every layer asks, and each copy leaves the GPU idle until Python launches the kernel."""
    start = g.kv_pos[:1, :1]
    plain = g.kv_valid.all() & ~g.q_full.any() & (g.kv_pos == start + torch.arange(KV, device=start.device)).all()
    is_plain, first_q, first_kv = torch.stack([plain.long(), g.q_pos[0, 0], g.kv_pos[0, 0]]).tolist()
    if not is_plain:
        return None
    return (B, Q, KV, first_q, first_kv, g.window, g.keep_first, str(start.device))


def _create_block_mask(g: MaskGeometry, B: int, Q: int, KV: int, device, block: int = BLOCK):
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
        kv_num, kv_indices, full_num, full_indices, BLOCK_SIZE=block, mask_mod=swaa_mask_mod(g), seq_lengths=(Q, KV)
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
    if g.window is None:
        lo = torch.zeros_like(hi)
    else:
        lo = torch.searchsorted(kv_pos, (g.q_pos[:, first] - g.window + 1).contiguous()).amin(0)
        any_full = F.pad(g.q_full, (0, nq * block - Q)).view(-1, nq, block).any(-1).any(0)
        lo = torch.where(any_full, 0, lo)
    lo_tile = lo // block
    count = torch.where(hi > lo, (hi - 1) // block - lo_tile + 1, 0)
    span = lo_tile[:, None] + torch.arange(int(count.max()), device=device)
    span = torch.where(span < (lo_tile + count)[:, None], span, -1)
    sink_end = 0
    if g.window is not None and g.keep_first > 0:
        sink_end = int(torch.searchsorted(kv_pos, torch.full_like(kv_pos[:, :1], g.keep_first)).max())
    sinks = torch.arange(-(-sink_end // block), device=device).expand(nq, -1)
    in_span = (sinks >= lo_tile[:, None]) & (sinks < (lo_tile + count)[:, None])
    return torch.cat([torch.where(in_span, -1, sinks), span], dim=1)


def _dense_to_ordered(dense: torch.Tensor):
    """(B, rows, cols) bool -> per-row counts and column indices, set columns first in ascending order (B, 1, ...)."""
    counts = dense.sum(-1, dtype=torch.int32)
    order = torch.argsort(dense.to(torch.int32), dim=-1, descending=True, stable=True).to(torch.int32)
    return counts[:, None].contiguous(), order[:, None].contiguous()


# --------------------------------------------------------------------------- flash-attn (CUDA, optional)
def _flash_applicable(q, g: MaskGeometry) -> bool:
    """flash-attn's window is index based: use it for unpadded prefill where index distance = position distance."""
    return q.dtype in (torch.float16, torch.bfloat16) and g.all_valid and not bool(g.q_full.any())


def flash(q, k, v, g: MaskGeometry, scaling: float, flash_fn=None):
    """Window pass by flash-attn (window_size=(W-1, 0)), then the sink keys outside each query's window, merged by LSE."""
    if flash_fn is None:
        from flash_attn import flash_attn_func as flash_fn
    W, K = g.window, g.keep_first
    Q = q.shape[2]
    q_first = int(g.q_pos[0, 0]) - int(g.kv_pos[0, 0])  # index of the first query among the keys
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    out, lse, _ = flash_fn(
        qt, kt, vt, softmax_scale=scaling, causal=True, window_size=(W - 1, 0), return_attn_probs=True
    )
    # queries whose window starts after the sinks: the sinks are a disjoint set of extra keys for them
    first_merged = max(0, K + W - 1 - q_first)
    if K == 0 or first_merged >= Q:
        return out if K == 0 else blocked(q, k, v, g, scaling)
    sink_out, sink_lse, _ = flash_fn(
        qt[:, first_merged:], kt[:, :K], vt[:, :K], softmax_scale=scaling, causal=False, return_attn_probs=True
    )
    merged = _merge_lse(out[:, first_merged:], lse[:, :, first_merged:], sink_out, sink_lse)
    if first_merged == 0:
        return merged
    head = blocked(q[:, :, :first_merged], k, v, _slice_queries(g, 0, first_merged), scaling)
    return torch.cat([head, merged], dim=1)


def _merge_lse(out_a, lse_a, out_b, lse_b):
    """Combine two softmax-normalised partial attentions over disjoint key sets. out: (B, Q, H, D); lse: (B, H, Q)."""
    lse = torch.logaddexp(lse_a, lse_b)
    wa = torch.exp(lse_a - lse).transpose(1, 2).unsqueeze(-1)
    wb = torch.exp(lse_b - lse).transpose(1, 2).unsqueeze(-1)
    return (out_a.float() * wa + out_b.float() * wb).to(out_a.dtype)


def _slice_queries(g: MaskGeometry, start: int, end: int) -> MaskGeometry:
    return MaskGeometry(g.q_pos[:, start:end], g.kv_pos, g.kv_valid, g.q_full[:, start:end], g.window, g.keep_first)
