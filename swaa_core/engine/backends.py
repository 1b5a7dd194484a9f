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
lengths), that call takes the next backend that can: fa4/flash -> flex -> blocked. Whether a kernel exists is
decided by importing exactly the function that will be called, never by a package name.
"""

from __future__ import annotations

import contextlib
import functools
import warnings

import torch
import torch.nn.functional as F

from .masks import MaskGeometry, materialize, swaa_mask_mod

BACKENDS = ("auto", "reference", "blocked", "flex", "fa4", "flash")
AUTO_ORDER = ("fa4", "flash", "flex", "blocked")
BLOCK = 128
GROUP = 8


def backend_status(device: torch.device | str) -> dict[str, str | None]:
    """Each backend mapped to None when it can run on ``device``, else to the reason it cannot."""
    device = torch.device(device)
    status: dict[str, str | None] = {"reference": None, "blocked": None}
    on_cuda = None if device.type == "cuda" else f"needs a CUDA GPU (this model is on {device.type})"
    status["flex"] = on_cuda or (None if _has_flex() else "torch.nn.attention.flex_attention is missing")
    status["fa4"] = on_cuda or _fa4_problem(device)
    status["flash"] = on_cuda or _fa2_problem(device)
    return status


def available_backends(device: torch.device | str) -> list[str]:
    return [name for name, problem in backend_status(device).items() if problem is None]


def choose_backend(requested: str, device: torch.device | str) -> str:
    return explain_backend(requested, device)[0]


def explain_backend(requested: str, device: torch.device | str) -> tuple[str, list[str]]:
    """The backend to run for ``requested`` ("auto" or a name) and notes on faster ones that were passed over.

    Raises ValueError for an unknown name or a backend that cannot run here (with the reason)."""
    if requested not in BACKENDS:
        raise ValueError(f"Unknown attention backend {requested!r}; choose one of {', '.join(BACKENDS)}.")
    status = backend_status(device)
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


# --------------------------------------------------------------------------- optional kernels, found by callable
@functools.cache
def _fa4_func():
    """``flash_attn.cute.flash_attn_func`` (FlashAttention-4), or the reason it cannot be imported."""
    try:
        from flash_attn.cute import flash_attn_func
    except Exception as e:  # ImportError, or a CUDA / CuTe DSL install that fails while importing
        return f"flash_attn.cute.flash_attn_func cannot be imported ({type(e).__name__}: {str(e)[:120]})"
    return flash_attn_func if callable(flash_attn_func) else "flash_attn.cute.flash_attn_func is not callable"


@functools.cache
def _fa2_func():
    """flash-attn 2's ``flash_attn.flash_attn_func``, or the reason it cannot be imported (flash-attn-4 alone
    installs a ``flash_attn`` namespace without it)."""
    try:
        from flash_attn import flash_attn_func
    except Exception as e:
        return f"flash_attn.flash_attn_func cannot be imported ({type(e).__name__}: {str(e)[:120]})"
    return flash_attn_func if callable(flash_attn_func) else "flash_attn.flash_attn_func is not callable"


FA4_ARCHS = (9, 10)  # Hopper (sm90) and Blackwell (sm100): the architectures FlashAttention-4 builds kernels for


def _fa4_problem(device: torch.device) -> str | None:
    major = torch.cuda.get_device_capability(device)[0]
    if major not in FA4_ARCHS:
        return f"FlashAttention-4 needs compute capability 9.x or 10.x (this GPU: {major}.x)"
    fn = _fa4_func()
    return fn if isinstance(fn, str) else None


def _fa2_problem(device: torch.device) -> str | None:
    if torch.cuda.get_device_capability(device)[0] < 8:
        return "flash-attn 2 needs compute capability 8.0 or newer"
    fn = _fa2_func()
    return fn if isinstance(fn, str) else None


# --------------------------------------------------------------------------- dispatch
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
    if backend != "blocked" and q.is_cuda and dropout == 0.0 and g.simple:
        return simple_attention(q, k, v, g, scaling, _window_fn(backend, q))
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
        # composition, whose FA4 backward was (tests/swaa_core/test_gpu.py)
        inference = not (torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)))
        if fn is _fa4_window and inference and (q_first, kv_first) == (0, 0) and g.keep_first > 0:
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
    if g.offsets is not None:
        return g.offsets[0] == g.offsets[1]
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
    """Any geometry: the block mask and the predicate read the position tensors (padding, evicted caches)."""
    block_mask = _create_block_mask(g, q.shape[0], q.shape[2], k.shape[2], q.device)
    return _run_flex(q, k, v, block_mask, scaling, lambda: blocked(q, k, v, g, scaling))


def flex_simple(q, k, v, g: MaskGeometry, scaling: float):
    """Unpadded, consecutive positions, no full queries: an arithmetic predicate over two offsets held in a device
    tensor (one compiled graph serves every chunk offset) and a block mask cached on host-known facts."""
    q_first, kv_first = g.offsets
    block_mask = _simple_block_mask(q.shape[2], k.shape[2], q_first, kv_first, g.window, g.keep_first, str(q.device))
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
    block_mask = _prefill_block_mask(q.shape[2], g.window, g.keep_first, str(q.device))
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
    except Exception as e:  # dynamo's limit error class has been renamed across torch versions
        if "RecompileLimit" not in type(e).__name__ and "CacheLimit" not in type(e).__name__:
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
    offsets[1] + j. Same predicate as :func:`swaa_core.engine.masks.visible` with every key valid and no full query."""

    def mask_mod(b, h, q_idx, kv_idx):
        q_pos, kv_pos = q_idx + offsets[0], kv_idx + offsets[1]
        return (kv_pos <= q_pos) & ((q_pos - kv_pos < window) | (kv_pos < keep_first))

    return mask_mod


def prefill_mask_mod(window: int, keep_first: int):
    """The SWAA rule for a whole unpadded prefill (index = position), in constants only: the form FlexAttention's
    FLASH backend translates into FlashAttention-4's mask (it rejected a predicate reading a captured tensor)."""

    def mask_mod(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & ((q_idx - kv_idx < window) | (kv_idx < keep_first))

    return mask_mod


@functools.lru_cache(maxsize=64)
def _prefill_block_mask(n: int, window: int, keep_first: int, device: str):
    from .masks import geometry_from_positions

    pos = torch.arange(n, device=device)[None]
    g = geometry_from_positions(pos, pos, window=window, keep_first=keep_first)
    return _create_block_mask(g, 1, n, n, device, mask_mod=prefill_mask_mod(window, keep_first))


@functools.lru_cache(maxsize=64)
def _simple_block_mask(Q: int, KV: int, q_first: int, kv_first: int, window: int, keep_first: int, device: str):
    from .masks import geometry_from_positions

    q_pos = torch.arange(q_first, q_first + Q, device=device)[None]
    kv_pos = torch.arange(kv_first, kv_first + KV, device=device)[None]
    g = geometry_from_positions(q_pos, kv_pos, window=window, keep_first=keep_first)
    offsets = torch.tensor([q_first, kv_first], device=device)
    return _create_block_mask(g, 1, Q, KV, device, mask_mod=window_mask_mod(offsets, window, keep_first))


def block_mask_for(g: MaskGeometry, B: int, Q: int, KV: int, device):
    """The block mask a flex call uses for ``g`` (cached when the geometry is simple)."""
    if g.simple and g.full_from - g.offsets[0] >= Q:
        q_first, kv_first = g.offsets
        return _simple_block_mask(Q, KV, q_first, kv_first, g.window, g.keep_first, str(device))
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


# --------------------------------------------------------------------------- window kernels: FA4, flash-attn 2
# A window function takes q (B, H, Q, D) and k/v (B, Hkv, KV, D) with bottom-right causal alignment (query r is key
# r + KV - Q) and returns (out (B, Q, H, D), lse (B, H, Q) in float32). window_left=None: plain (causal) attention.
WINDOW_HEAD_DIMS = range(8, 257, 8)  # head sizes both FA4 (sm90) and flash-attn 2 build kernels for


def _window_fn(backend: str, q):
    if backend not in ("fa4", "flash") or q.dtype not in (torch.float16, torch.bfloat16):
        return None
    if q.shape[-1] not in WINDOW_HEAD_DIMS:
        return None
    return _fa4_window if backend == "fa4" else flash_attn_2_window(_fa2_func())


def _fa4_window(q, k, v, *, causal: bool, window_left: int | None, scale: float):
    out, lse = _fa4_func()(
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
    overlap into one run). Differentiable: both kernels take the gradient of their LSE."""
    W, K = g.window, g.keep_first
    Q, KV = q.shape[2], k.shape[2]
    q_first, kv_first = g.offsets if g.offsets is not None else (int(g.q_pos[0, 0]), int(g.kv_pos[0, 0]))
    sinks = min(max(K - kv_first, 0), KV)  # key indices holding sink positions
    if sinks == 0:
        return fn(q, k, v, causal=True, window_left=W - 1, scale=scaling)[0]
    head = min(max(K + W - 1 - q_first, 0), Q)  # queries at positions < K + W - 1 see [first key, themselves]
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        return _window_sink_out_of_place(q, k, v, W, sinks, head, scaling, fn)
    out, lse = fn(q, k, v, causal=True, window_left=W - 1, scale=scaling)
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


def _window_sink_out_of_place(q, k, v, W: int, sinks: int, head: int, scaling: float, fn):
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
        out, lse = fn(tail, k, v, causal=True, window_left=W - 1, scale=scaling)
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


def _slice_queries(g: MaskGeometry, start: int, end: int) -> MaskGeometry:
    offsets = None if g.offsets is None else (g.offsets[0] + start, g.offsets[1])
    return MaskGeometry(
        g.q_pos[:, start:end],
        g.kv_pos,
        g.kv_valid,
        g.q_full[:, start:end],
        g.window,
        g.keep_first,
        keys_all_valid=g.keys_all_valid,
        offsets=offsets,
        full_from=g.full_from,
    )
