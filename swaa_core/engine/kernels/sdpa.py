"""SDPA-based kernels that run anywhere: the reference (every pair, materialised mask, probabilities returned), plain
causal SDPA, the one-query decode step, and the blocked O(n * W) backend (query blocks against their sinks + window
span only). Shapes as in :mod:`swaa_core.engine.backends`: q (B, H, Q, D), k/v (B, Hkv, KV, D), out (B, Q, H, D).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import threading
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend

from ..masks import MaskGeometry, materialize

BLOCK = 128
GROUP = 8


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
def causal_sdpa(q, k, v, g: MaskGeometry, scaling: float, dropout: float):
    """A call whose mask is plain causal attention over valid keys (:attr:`MaskGeometry.plain_causal`): SDPA's own
    causal kernel when the queries are exactly the keys' positions, else :func:`blocked`. Shapes as in the module's
    docstring; ``dropout`` as SDPA's ``dropout_p``."""
    Q, KV = q.shape[2], k.shape[2]
    if Q == KV and _is_aligned(g):
        out = F.scaled_dot_product_attention(
            q, k, v, is_causal=Q > 1, scale=scaling, dropout_p=dropout, enable_gqa=q.shape[1] != k.shape[1]
        )
        return out.transpose(1, 2).contiguous()
    return blocked(q, k, v, g, scaling, dropout)


def decode_sdpa(q, k, v, mask, scaling: float, *, fixed_shape: bool = False):
    """One query token: q (B, H, 1, D), k/v (B, Hkv, KV, D), mask None or a bool (B, 1, 1, KV) -> (B, 1, H, D).

    On CPU, fold the query heads of each KV group into the query axis so SDPA reads every key once (enable_gqa
    measured ~25x slower there, torch 2.13). On CUDA the fold leaves most SMs idle (enable_gqa was 7-10x faster at
    32K keys on an H100, torch 2.11), so:

    - an unmasked step goes straight to the flash kernel (:func:`_flash_decode`);
    - a masked one with ``fixed_shape`` (the fixed-buffer path: one shape for every step) to SDPA's own choice;
    - a masked step whose key length changes from step to step must not meet cuDNN, SDPA's first choice on Hopper,
      at a new length each time: it builds a graph per new shape (54-805 ms of host time on an H200 with a mask). The
      fold with cuDNN left out lets the memory-efficient kernel take it (it takes a mask, but not fewer key heads).
      Keys with room in their buffer take :func:`bucketed_decode` first (see ``attention._padded_decode_step``)."""
    B, H, _, D = q.shape
    Hkv = k.shape[1]
    if q.is_cuda:
        if mask is None and _flash_decodes(q.device, q.dtype, D):
            return _flash_decode(q, k, v, scaling)
        if mask is None or fixed_shape:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling, enable_gqa=Hkv != H)
            return out.transpose(1, 2)
        with without_cudnn_sdpa():
            return _folded_decode(q, k, v, mask, scaling)
    return _folded_decode(q, k, v, mask, scaling)


def bucketed_decode(q, k, v, mask, scaling: float):
    """A masked decode step over keys read past their real length to a fixed bucket of slots (a multiple of
    ``cache.KEY_BUCKET``; ``mask`` False past the real keys, whose values must be finite): q (B, H, 1, D), k/v
    (B, Hkv, S, D), mask bool (B, 1, 1, S) -> (B, 1, H, D), run by SDPA when it would choose cuDNN for it, else None.
    cuDNN then builds one graph per bucket instead of one per step: 0.19 ms per call at new lengths and 0.09 ms of GPU
    time at 32K keys and batch 2 on an H200, against 1.4 ms for the fold (docs/benchmarks.md). The choice is SDPA's
    own (``torch._fused_sdp_choice``), asked at every call: it follows the backend switches, deterministic mode and
    the GPU (cuDNN comes first only on some architectures; elsewhere the padded call would reach the math kernel)."""
    if mask.dtype != torch.bool or not q.is_cuda:
        return None
    gqa = q.shape[1] != k.shape[1]
    if torch._fused_sdp_choice(q, k, v, mask, 0.0, False, scale=scaling, enable_gqa=gqa) != _CUDNN:
        return None
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling, enable_gqa=gqa).transpose(1, 2)


_CUDNN = SDPBackend.CUDNN_ATTENTION.value


def _folded_decode(q, k, v, mask, scaling: float):
    B, H, _, D = q.shape
    Hkv = k.shape[1]
    out = F.scaled_dot_product_attention(q.reshape(B, Hkv, H // Hkv, D), k, v, attn_mask=mask, scale=scaling)
    return out.reshape(B, 1, H, D)


class CudnnSdpaOff:
    """Leaves cuDNN out of SDPA's choice while anyone holds it (cuDNN builds a graph per new shape: 41-55 ms of host
    time for each new key length on an H200, torch 2.11). Only cuDNN's switch is touched, so backends a caller
    turned off stay off. torch's switches are process-wide: holders are counted under a lock, and the switch goes
    back to what it was when the last one lets go, whatever the order in which threads or nested contexts leave."""

    _lock = threading.Lock()
    _holders = 0
    _was_on = True

    @classmethod
    def acquire(cls) -> None:
        with cls._lock:
            if cls._holders == 0:
                cls._was_on = torch.backends.cuda.cudnn_sdp_enabled()
                torch.backends.cuda.enable_cudnn_sdp(False)
            cls._holders += 1

    @classmethod
    def release(cls) -> None:
        with cls._lock:
            cls._holders -= 1
            if cls._holders == 0:
                torch.backends.cuda.enable_cudnn_sdp(cls._was_on)


@contextlib.contextmanager
def without_cudnn_sdpa():
    """A context in which SDPA may choose any kernel but cuDNN's (:class:`CudnnSdpaOff`)."""
    CudnnSdpaOff.acquire()
    try:
        yield
    finally:
        CudnnSdpaOff.release()


def _flash_decode(q, k, v, scaling: float):
    """SDPA's flash kernel, called directly (it takes fewer key heads than query heads). SDPA's own choice on Hopper
    is cuDNN, which builds an execution graph for every new key length: 41-55 ms of host time per new length on an
    H200 (torch 2.11, docs/benchmarks.md), paid once per step by a cache that grows, where the flash kernel costs
    30-60 us of host time at any length."""
    return torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, scale=scaling)[0].transpose(1, 2)


@functools.cache
def _flash_decodes(device: torch.device, dtype: torch.dtype, head_dim: int) -> bool:
    """Whether :func:`_flash_decode` takes these inputs: half precision, a head size flash-attn 2 builds (multiple of
    8, at most 256), an Ampere or newer GPU."""
    return (
        dtype in (torch.float16, torch.bfloat16)
        and head_dim % 8 == 0
        and head_dim <= 256
        and torch.cuda.get_device_capability(device) >= (8, 0)
    )


def _is_aligned(g: MaskGeometry) -> bool:
    """Keys and queries are the same tokens in order (a prefill without padding or eviction)."""
    if g.offsets is not None:
        return g.offsets[0] == g.offsets[1]
    return g.q_pos.shape == g.kv_pos.shape and bool((g.q_pos == g.kv_pos).all())


# --------------------------------------------------------------------------- blocked (CPU / portable)
def blocked(q, k, v, g: MaskGeometry, scaling: float, dropout: float = 0.0, block: int = BLOCK, group: int = GROUP):
    """Query blocks of ``block`` tokens, each against its sinks + window span only; ``group`` blocks share one SDPA
    call (batched), which keeps the kernel busy while bounding extra memory to group * block * (K + W + block).

    With gradients on, :class:`_BlockedAttention` keeps only q, k, v and the positions for the backward pass."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        out = _BlockedAttention.apply(
            q, k, v, g.q_pos, g.kv_pos, g.kv_valid, g.q_full, g, scaling, dropout, block, group
        )
    else:
        out = _blocked_forward(_BlockedCall(q, k, v, g, scaling, dropout), block, group)
    if not g.all_valid:  # left-padding queries see no key: NaN on CPU, arbitrary on CUDA; make them 0
        out = torch.where((g.q_pos >= 0)[:, :, None, None], out.nan_to_num(0.0), 0.0)
    return out


def _blocked_forward(call: _BlockedCall, block: int, group: int) -> torch.Tensor:
    B, H, Q, D = call.q.shape
    call.out = call.q.new_empty(B, Q, H, D)
    for q_start, blocks, size in _block_groups(call, block, group):
        call.out[:, q_start : q_start + blocks * size] = _blocks_out(call, q_start, blocks, size)
    return call.out


def _block_groups(call: _BlockedCall, block: int, group: int):
    """(first query, blocks, block size) of each SDPA call, in order (dropout draws its masks in this order)."""
    Q = call.q.shape[2]
    sinks_below = call.g.kind.sinks_below if call.g.kind is not None else 0
    if sinks_below > 0:
        limit = torch.full_like(call.kv_pos[:, :1], sinks_below)
        call.sink_end = int(torch.searchsorted(call.kv_pos, limit).max())
    n_full = Q // block
    groups = [(first * block, min(group, n_full - first), block) for first in range(0, n_full, group)]
    return groups + ([(n_full * block, 1, Q % block)] if Q % block else [])


class _BlockedAttention(torch.autograd.Function):
    """The blocked attention with a backward that rebuilds each group's gathered keys, values and mask.

    Autograd would otherwise hold, per query, its (W + K + block) gathered keys and values and a float mask of as many
    columns (SDPA's own copy of the boolean one) until the backward pass, several times what full attention keeps
    (q, k, v, out). Tensors go through ``save_for_backward`` only, so gradient checkpointing around the layer still
    frees them (a nested ``torch.utils.checkpoint`` would hold its inputs past the outer one)."""

    @staticmethod
    def forward(ctx, q, k, v, q_pos, kv_pos, kv_valid, q_full, g, scaling, dropout, block, group):
        ctx.save_for_backward(q, k, v, q_pos, kv_pos, kv_valid, q_full)
        ctx.settings = (dataclasses.replace(g, q_pos=None, kv_pos=None, kv_valid=None, q_full=None), scaling, dropout)
        ctx.blocks = (block, group)
        ctx.rng = _rng_state(q.device) if dropout > 0 else None
        return _blocked_forward(_BlockedCall(q, k, v, g, scaling, dropout), block, group)

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, q_pos, kv_pos, kv_valid, q_full = ctx.saved_tensors
        shell, scaling, dropout = ctx.settings
        g = dataclasses.replace(shell, q_pos=q_pos, kv_pos=kv_pos, kv_valid=kv_valid, q_full=q_full)
        inputs = [t.detach().requires_grad_(need) for t, need in zip((q, k, v), ctx.needs_input_grad[:3], strict=True)]
        wanted = [t for t in inputs if t.requires_grad]
        grads = [torch.zeros_like(t) for t in wanted]
        call = _BlockedCall(*inputs, g, scaling, dropout)
        with torch.enable_grad(), torch.random.fork_rng(_rng_devices(q.device), enabled=ctx.rng is not None):
            if ctx.rng is not None:
                _set_rng_state(q.device, ctx.rng)
            for q_start, blocks, size in _block_groups(call, *ctx.blocks):
                out = _blocks_out(call, q_start, blocks, size)
                part = torch.autograd.grad(out, wanted, grad_out[:, q_start : q_start + blocks * size])
                for total, p in zip(grads, part, strict=True):
                    total += p
        found = iter(grads)
        return (*(next(found) if t.requires_grad else None for t in inputs), *([None] * 9))


def _rng_devices(device: torch.device) -> list:
    return [device] if device.type == "cuda" else []


def _rng_state(device: torch.device):
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _set_rng_state(device: torch.device, state) -> None:
    torch.set_rng_state(state[0])
    if device.type == "cuda":
        torch.cuda.set_rng_state(state[1], device)


@dataclass
class _BlockedCall:
    """What every group of query blocks of one :func:`blocked` call shares; ``out`` (B, Q, H, D) is filled in."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    g: MaskGeometry
    scaling: float
    dropout: float
    out: torch.Tensor | None = None
    sink_end: int = 0  # keys [0, sink_end) hold every sink

    def __post_init__(self):
        self.kv_pos = self.g.kv_pos.contiguous()  # for searchsorted


def _blocks_out(call: _BlockedCall, q_start: int, blocks: int, size: int) -> torch.Tensor:
    """``blocks`` query blocks of ``size`` tokens from ``q_start``, each against its sinks + window span, in one
    SDPA call: their output (B, blocks * size, H, D)."""
    q, k, v, g, sink_end = call.q, call.k, call.v, call.g, call.sink_end
    B, H, _, D = q.shape
    Hkv = k.shape[1]
    device = q.device
    q_index = q_start + torch.arange(blocks * size, device=device).view(blocks, size)
    q_pos = g.q_pos[:, q_index]  # (B, blocks, size)
    hi = torch.searchsorted(call.kv_pos, q_pos.amax(-1), right=True).amax(0)
    if g.kind is None:
        lo = torch.zeros_like(hi)
    else:
        lo = torch.searchsorted(call.kv_pos, g.kind.span_start(q_pos.amin(-1))).amin(0)
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
        scale=call.scaling,
        dropout_p=call.dropout,
        enable_gqa=Hkv != H,
    )
    return o.view(B, blocks, H, size, D).permute(0, 1, 3, 2, 4).reshape(B, blocks * size, H, D)
