"""What a number of full-attention layers costs, and how many a budget allows: prefill FLOPs and KV-cache bytes.

Prefill cost model (the one benchmarks/gpu_prefill.py checks against H200 timings, where SWA reached about 93% of
its ideal): 2 FLOPs per weight per token in the attention projections and the MLP, plus 4 * query width FLOPs per
(query, key) pair attention visits (scores and the weighted sum); the LM head is left out (a prefill keeps one
token's logits). A full layer visits n(n+1)/2 pairs, a sliding one what its mask kind shows
(``MaskKind.pairs_visited``); both counts are :func:`swaa_core.models.capacity.prefill_flops`, which the capacity model
shares. On a CPU, where
the window kernel is less efficient than one big SDPA call, measured times fall short of this model; the advisor
reports both.

KV bytes come from :func:`swaa_core.models.memory.estimate_memory`: a sliding layer without FA decode keeps its mask
kind's ``kept_slots`` (sinks + W, or sinks + C for chunks), every other layer every token, so with FA decode a KV cap
cannot be met by sliding layers at all.

Every count asks the base config's mask kind, so a budget is right for any kind: the base config travels whole
(:func:`layered` replaces only the full layers).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..engine.config import SWAAConfig
from ..models.capacity import prefill_flops
from ..models.memory import estimate_memory, model_shape
from ..runtime.units import format_bytes

GIB = 2**30


class BudgetError(ValueError):
    """A budget that cannot be met or makes no sense for this model and length, with what would work."""


@dataclass(frozen=True)
class Budget:
    """Exactly one of: ``full_layers`` (how many layers keep full attention), ``prefill`` (prefill FLOPs as a
    fraction of full attention's, e.g. 0.7) or ``kv_gib`` (KV cache at the context length, GiB)."""

    full_layers: int | None = None
    prefill: float | None = None
    kv_gib: float | None = None

    def __post_init__(self):
        given = [k for k in ("full_layers", "prefill", "kv_gib") if getattr(self, k) is not None]
        if len(given) != 1:
            raise BudgetError(
                "Give exactly one budget: a number of full layers, a prefill share or a KV-cache cap"
                + (f" (got {', '.join(given)})." if given else ".")
            )

    def describe(self) -> str:
        if self.full_layers is not None:
            return f"{self.full_layers} full-attention layers"
        if self.prefill is not None:
            return f"prefill at most {self.prefill:.0%} of full attention's FLOPs"
        return f"KV cache at most {self.kv_gib:g} GiB"


@dataclass(frozen=True)
class CostModel:
    """Per-model constants of the prefill FLOP model and the KV estimate (see the module docstring)."""

    num_layers: int
    shape: object  # ModelShape, for prefill_flops and estimate_memory

    @classmethod
    def of(cls, model_or_config) -> CostModel:
        """From a transformers model (or its config)."""
        shape = model_shape(model_or_config)
        return cls(shape.num_layers, shape)

    def prefill_flops(self, n: int, cfg: SWAAConfig | None) -> float:
        """FLOPs of an ``n``-token prefill under ``cfg`` (None: full attention)."""
        return prefill_flops(self.shape, cfg, n)

    def prefill_share(self, n: int, cfg: SWAAConfig | None) -> float:
        """Prefill FLOPs under ``cfg`` as a fraction of full attention's."""
        return self.prefill_flops(n, cfg) / self.prefill_flops(n, None)

    def kv_bytes(self, n: int, cfg: SWAAConfig | None, dtype=None) -> int:
        return estimate_memory(self.shape, n, cfg, dtype=dtype).kv_swaa_bytes


def layered(base: SWAAConfig, num_layers: int, layers) -> SWAAConfig:
    """``base`` (window or chunk, sinks, FA decode, mask kind) with exactly ``layers`` keeping full attention."""
    return replace(base, non_sliding_layers=sorted(layers)).validate(num_layers)


def full_layer_count(budget: Budget, cost: CostModel, n: int, base: SWAAConfig, *, dtype=None) -> int:
    """How many layers may keep full attention under ``budget`` at ``n`` tokens, every other layer sliding under
    ``base`` (every such layer costs the same, so the count does not depend on which). Raises :class:`BudgetError`
    with the reachable range, ValueError for a full-attention ``base``."""
    if base.is_full_attention:
        raise ValueError("A budget of full layers needs a sliding base config; this one is full attention.")
    L = cost.num_layers
    if budget.full_layers is not None:
        k = budget.full_layers
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise BudgetError(
                f"The number of full layers must be at least 1 (0 is plain SWA, nothing to choose); got {k!r}."
            )
        if k >= L:
            raise BudgetError(
                f"This model has {L} layers: {k} full layers "
                + ("is full attention" if k == L else "is more than it has")
                + f". Ask for 1 to {L - 1}."
            )
        return k
    shares = [_cost(budget, cost, n, layered(base, L, range(k)), dtype) for k in range(L + 1)]
    limit = budget.prefill if budget.prefill is not None else budget.kv_gib * GIB
    fits = [k for k in range(L + 1) if shares[k] <= limit]
    what = _what(budget, shares, n, base)
    if not fits or max(fits) < 1:
        raise BudgetError(f"{budget.describe()} is out of reach: {what}.")
    if max(fits) >= L:
        raise BudgetError(f"{budget.describe()} allows full attention in every layer at {n} tokens ({what}).")
    return max(fits)


def _cost(budget: Budget, cost: CostModel, n: int, cfg: SWAAConfig, dtype) -> float:
    return cost.prefill_share(n, cfg) if budget.prefill is not None else cost.kv_bytes(n, cfg, dtype)


def _what(budget: Budget, shares: list[float], n: int, base: SWAAConfig) -> str:
    under = f"with {base.kind.describe()} at {n} tokens"
    if budget.prefill is not None:
        return (f"{under}, every layer sliding costs {shares[0]:.1%} of full attention's prefill, one full layer "
                f"{shares[1]:.1%}, each further one {shares[2] - shares[1]:.1%}")  # fmt: skip
    return (f"{under}, the KV cache holds {format_bytes(int(shares[0]))} with every layer sliding, "
            f"{format_bytes(int(shares[1]))} with one full layer, {format_bytes(int(shares[-1]))} with all")  # fmt: skip
