"""The independent reference every attention backend is tested against, and the random cases it is run on.

``float64_attention`` spells out docs/paper.md's mask rule (each mask kind's own rule) in plain tensor comparisons from
the kind's fields (not via its methods or swaa_core.engine.masks) and computes masked softmax attention in float64.
benchmarks/gpu_common.py uses these too (the GPU benchmarks' correctness checks run against the same oracle and cases).
"""

from __future__ import annotations

import torch

from swaa_core.engine.kinds import ChunkedAttention, SinkWindow
from swaa_core.engine.masks import NO_FULL, MaskGeometry


def rule_mask(q_pos, kv_pos, kv_valid, q_full, kind):
    """(B, Q, KV) bool from (B, Q) query and (B, KV) key positions: a key is seen when it is real and not in the
    future, and (sliding layers only, ``kind`` not None) within the query's window (SinkWindow: fewer than W positions
    back; ChunkedAttention: in the query's chunk of C positions), one of the first ``keep_first`` positions, or the
    query is full."""
    i, j = q_pos[:, :, None], kv_pos[:, None, :]
    seen = kv_valid[:, None, :] & (j <= i)
    if kind is None:
        return seen
    if type(kind) is SinkWindow:
        own = i - j < kind.window
    elif type(kind) is ChunkedAttention:
        own = j.div(kind.chunk_size, rounding_mode="floor") == i.div(kind.chunk_size, rounding_mode="floor")
    else:
        raise TypeError(f"no reference rule for {kind!r}: spell it out here")
    return seen & (own | (j < kind.keep_first) | q_full[:, :, None])


def float64_attention(q, k, v, g: MaskGeometry, scale):
    """q (B, H, Q, D), k and v (B, Hkv, KV, D) -> (B, Q, H, D) float64; GQA by repetition; a query that sees no key
    gives zeros. Differentiable, so gradients can be compared too."""
    groups = q.shape[1] // k.shape[1]
    kk = k.double().repeat_interleave(groups, 1)
    vv = v.double().repeat_interleave(groups, 1)
    scores = (q.double() @ kk.transpose(-1, -2)) * scale
    mask = rule_mask(g.q_pos, g.kv_pos, g.kv_valid, g.q_full, g.kind)
    probs = torch.softmax(scores.masked_fill(~mask[:, None], float("-inf")), -1).nan_to_num(0.0)
    return (probs @ vv).transpose(1, 2)


def make_case(
    *,
    n=37,
    window=5,
    keep_first=0,
    B=1,
    H=4,
    Hkv=2,
    D=8,
    pads=(),
    q_len=None,
    full_tail=0,
    dtype=torch.float32,
    seed=0,
    device="cpu",
    kind=SinkWindow,
):
    """Random q, k, v of ``dtype`` for n slots and their MaskGeometry: row b of the batch is left-padded by
    ``pads[b]`` slots; the last ``q_len`` slots (default all) are the queries, the last ``full_tail`` of them full.
    The layer's mask kind is ``kind(window, keep_first)`` (``window``: the kind's size, W or C), or full attention
    when ``window`` is None."""
    gen = torch.Generator(device).manual_seed(seed)
    q_len = n if q_len is None else q_len

    def rand(*shape):
        return torch.randn(*shape, device=device, generator=gen).to(dtype)

    q, k, v = rand(B, H, q_len, D), rand(B, Hkv, n, D), rand(B, Hkv, n, D)
    valid = torch.ones(B, n, dtype=torch.bool, device=device)
    for b, pad in enumerate(pads):
        valid[b, :pad] = False
    real = valid.long().cumsum(-1) - 1
    q_full = torch.zeros(B, q_len, dtype=torch.bool, device=device)
    if full_tail:
        q_full[:, -full_tail:] = True
    layer = None if window is None else kind(window, keep_first)
    return q, k, v, MaskGeometry(real[:, n - q_len :], real, valid, q_full, layer)


def with_engine_hints(g: MaskGeometry, full_from: int | None = None) -> MaskGeometry:
    """Sets the host-known facts the engine sets for an unpadded call, which route it to the fast paths: first query
    and key positions, and ``full_from`` (queries at positions >= it are full; default: the case's full tail)."""
    assert bool(g.kv_valid.all()), "engine hints describe unpadded calls only"
    if full_from is None:
        full_from = int(g.q_pos[g.q_full].min()) if bool(g.q_full.any()) else NO_FULL
    g.q_full = g.q_pos >= full_from
    g.keys_all_valid, g.offsets, g.full_from = True, (int(g.q_pos[0, 0]), int(g.kv_pos[0, 0])), full_from
    return g


def case_id(case: dict) -> str:
    """A pytest id that names a case's settings: ``n=40,window=5``."""
    return ",".join(f"{k}={v}" for k, v in case.items())
