"""The SWAA mask on the tensors of one attention call; its rule is the layer's mask kind (:mod:`.kinds`).

Every backend derives from :func:`swaa_mask_mod`, a predicate ``(batch, head, q_idx, kv_idx) -> bool`` in the style of
transformers' ``masking_utils`` and PyTorch FlexAttention: the reference backend evaluates it on broadcast index
grids, the blocked CPU backend on one query block at a time, FlexAttention turns it into a block-sparse mask.

Indices address the query and key tensors; *real positions* (token positions in the unpadded sequence) come from the
2-D padding mask, so left padding and evicted caches need no special cases in the predicate.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import SWAAConfig
from .kinds import MaskKind

NO_FULL = 2**62  # a ``full_from`` beyond every position: no query is full


@dataclass
class MaskGeometry:
    """Where each query and key sits, for one attention call.

    q_pos: (B, Q) real positions of the queries.  kv_pos: (B, KV) real positions of the keys (non-decreasing). In a
    layer that runs the model's own sliding window unchanged, both are cache slots instead, padding included, as
    transformers counts that window.
    kv_valid: (B, KV) False for padding keys.  q_full: (B, Q) True for queries that attend to the whole causal past
    (decode tokens under FA decode, or every query of a full-attention layer). kind: the layer's mask kind, None in a
    full-attention layer.
    """

    q_pos: torch.Tensor
    kv_pos: torch.Tensor
    kv_valid: torch.Tensor
    q_full: torch.Tensor
    kind: MaskKind | None
    # Facts the caller may already know on the host. Each one spares a device-to-host copy per layer per token,
    # which on a GPU stalls the launch queue during decode. None: read them off the tensors.
    keys_all_valid: bool | None = None
    queries_all_full: bool | None = None
    extent: tuple[int, int] | None = None  # (smallest key position, largest query position)
    sees_all_keys: bool | None = None  # every query sees every key it is given (then no mask is needed at all)
    # (first query position, first key position) when no key is padding and every row's queries and keys are runs of
    # consecutive positions starting there: the mask is then arithmetic on indices, which the fast kernels use.
    offsets: tuple[int, int] | None = None
    full_from: int | None = None  # q_full is exactly q_pos >= full_from in every row (NO_FULL: no query is full)

    @property
    def simple(self) -> bool:
        """A sliding layer whose whole mask follows from host-known integers (offsets, its kind, full_from)."""
        return self.kind is not None and self.offsets is not None and self.full_from is not None

    @property
    def all_full(self) -> bool:
        if self.kind is None:
            return True
        return self.queries_all_full if self.queries_all_full is not None else bool(self.q_full.all())

    @property
    def all_valid(self) -> bool:
        return self.keys_all_valid if self.keys_all_valid is not None else bool(self.kv_valid.all())

    @property
    def window_covers_all(self) -> bool:
        """Every query sees every earlier key of the call (short prompts), so sliding attention is plain causal."""
        first_key, last_query = self.extent or (int(self.kv_pos.min()), int(self.q_pos.max()))
        return self.kind.causal_between(first_key, last_query)

    @property
    def plain_causal(self) -> bool:
        """The mask is ordinary causal attention over valid keys."""
        return (self.all_full or self.window_covers_all) and self.all_valid


def visible(kind: MaskKind | None, qp, kp, kv_valid, q_full):
    """The predicate on real positions (broadcastable tensors) in a layer of ``kind``: in a full-attention layer
    (None) every valid key at or before the query."""
    if kind is None:
        return kv_valid & (kp <= qp)
    return kind.visible(qp, kp, kv_valid, q_full)


def swaa_mask_mod(g: MaskGeometry):
    """Query i sees key j iff j is a real token, j <= i, and the layer's kind shows j to i (always, for a 'full'
    query)."""
    q_pos, kv_pos, kv_valid, q_full, kind = g.q_pos, g.kv_pos, g.kv_valid, g.q_full, g.kind

    def mask_mod(b, h, q_idx, kv_idx):
        return visible(kind, q_pos[b, q_idx], kv_pos[b, kv_idx], kv_valid[b, kv_idx], q_full[b, q_idx])

    return mask_mod


def materialize(g: MaskGeometry, q_index: torch.Tensor | None = None, kv_index: torch.Tensor | None = None):
    """Evaluate the predicate on a grid of query x key indices (default: all): a (B, 1, Q', KV') bool tensor.

    Batched index sets are allowed: q_index (G, Q') with kv_index (G, KV') gives (B, G, Q', KV')."""
    if q_index is None and kv_index is None:  # the whole grid by broadcasting: no gathers (built per layer per step)
        q, kv = (slice(None), None, slice(None), None), (slice(None), None, None, slice(None))
        return visible(g.kind, g.q_pos[q], g.kv_pos[kv], g.kv_valid[kv], g.q_full[q])
    B, Q = g.q_pos.shape
    KV = g.kv_pos.shape[1]
    device = g.q_pos.device
    q_index = torch.arange(Q, device=device) if q_index is None else q_index
    kv_index = torch.arange(KV, device=device) if kv_index is None else kv_index
    lead = q_index.dim() - 1
    b = torch.arange(B, device=device).view(B, *([1] * (lead + 2)))
    mask = swaa_mask_mod(g)(b, 0, q_index[None, ..., :, None], kv_index[None, ..., None, :])
    return mask if lead else mask[:, None]


def geometry_from_positions(
    q_pos: torch.Tensor,
    kv_pos: torch.Tensor,
    *,
    kind: MaskKind | None,
    kv_valid: torch.Tensor | None = None,
    q_full: torch.Tensor | bool = False,
) -> MaskGeometry:
    """The geometry of queries at ``q_pos`` (B, Q) and keys at ``kv_pos`` (B, KV) in a layer of ``kind`` (None:
    full attention); every key valid and no query full unless given."""
    if kv_valid is None:
        kv_valid = torch.ones_like(kv_pos, dtype=torch.bool)
    if isinstance(q_full, bool):
        q_full = torch.full_like(q_pos, q_full, dtype=torch.bool)
    return MaskGeometry(q_pos, kv_pos, kv_valid, q_full, kind)


def mask_picture(config: SWAAConfig | None, n_tokens: int, *, layer_idx: int = 0, prompt_tokens: int | None = None):
    """What each token may see in one layer, as an (n, n) bool tensor (rows: queries, columns: keys).

    Tokens at positions >= ``prompt_tokens`` are generated tokens: under FA decode they see the whole past.
    Used for teaching pictures; it is the same predicate the backends run.
    """
    cfg = config or SWAAConfig()
    prompt_tokens = n_tokens if prompt_tokens is None else prompt_tokens
    pos = torch.arange(n_tokens)[None]
    kind, fa_decode = cfg.layer_rule(layer_idx)
    g = geometry_from_positions(pos, pos, kind=kind, q_full=(pos >= prompt_tokens) & fa_decode)
    return materialize(g)[0, 0]
