"""Serving capacity on one GPU: how many sequences of a context length fit next to the weights under a SWAA recipe,
and the decode tokens/s and time to serve N requests at that batch, from a memory model and a bandwidth roofline.

What is counted is what the fixed-buffer path (:func:`swaa_core.engine.fast_decode.fast_generate`) allocates:

* **weights**: every parameter once (:func:`~swaa_core.models.memory.estimate_memory`'s ``weight_bytes``).
* **KV buffers per sequence** (:mod:`swaa_core.engine.static_cache`): a layer whose decode steps slide (a sliding
  layer without FA decode, or a layer the model slides natively) keeps a ring of ``sinks + W`` slots, whatever the
  context; a full layer or an FA-decode layer keeps ``prompt + new`` slots (FA decode must see every key, so a sliding
  layer under FA decode is not capped). Left padding adds the widest row's padding to the sinks; rows here are
  unpadded. A prompt whose mask drops tokens inside it (not left padding) keeps every slot in a sliding layer whose
  window counts real tokens (``SWAACacheLayer.keeps_all``): such prompts are outside this model.
* **prefill** (:mod:`swaa_core.engine.cache`): the prompt fills a dynamic cache first, a full or FA-decode layer in a
  buffer of ``bucket_end(prompt + SPARE_SLOTS)`` slots, an evicting layer in its ring (after a transient buffer of that
  size while its own forward runs); then the layers move one at a time into the fixed buffers, so one layer is held
  twice. The activations are :func:`~swaa_core.models.memory.estimate_memory`'s ``activation_bytes``.
  ``prefill="batch"`` is what ``fast_generate`` does: one forward of every row, activations times the batch.
  ``prefill="row"`` is what a server does that prefills one request at a time into the batch's buffers: one row's
  activations next to the whole batch's buffers (``fast_generate(prefill="row")``: each row's dynamic cache moves
  into the batch's buffers before the next row runs).
* **decode**: per row the step's logits and one layer's temporaries (the CUDA graph's pool keeps them), and the
  tokens generated so far.
* **reserve**: ``RESERVE_FRACTION`` of the card for the CUDA context, library workspaces and allocator fragmentation.

Decode tokens/s is a roofline: a step reads every weight once and every row's whole KV buffers once (the fixed-buffer
step attends to the whole buffer under a mask, filled or not), at the card's bandwidth, unless the rows' FLOPs at the
matmul rate take longer. Prefill seconds are a FLOP roofline at the card's matmul rate. Both are lower bounds on
time; ``benchmarks/gpu_capacity.py`` measures them. A MoE model's step reads every expert (a large batch touches
nearly all).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

import torch

from ..engine.cache import SPARE_SLOTS, bucket_end
from ..engine.config import SWAAConfig
from ..engine.fast_decode import PREFILL_MODES
from ..engine.kinds import SinkWindow
from .memory import ModelShape, estimate_memory, model_shape, to_dtype

GiB = 2**30
RESERVE_FRACTION = 0.05


@dataclass(frozen=True)
class GPU:
    """One card: ``memory_bytes`` as torch reports it (``total_memory``), ``bandwidth`` in bytes/s, ``matmul_flops``
    in bf16 FLOP/s; ``source`` says where the figures come from."""

    name: str
    memory_bytes: int
    bandwidth: float
    matmul_flops: float
    source: str = ""
    devices: tuple[str, ...] = ()  # torch's names of the devices this entry describes (results are matched on them)


# Bandwidths: the copy rates measured on the project's machines (docs FACTS: ~4.25-4.3 TB/s on an H200, ~3.0 TB/s
# on an H100), not the spec sheets' 4.8 / 3.35 TB/s. Matmul: 680-790 TFLOP/s measured on the H200 (bf16); an H100 SXM
# has the same GH100 compute, so the same rate is assumed. Memory: what torch reports on these cards (about 79.1 and
# 139.8 GiB; nvidia-smi's figure less the driver's share).
GPUS = {
    "H100 80GB": GPU(
        "H100 80GB",
        int(79.1 * GiB),
        3.0e12,
        700e12,
        "measured copy 3.0 TB/s (H100, 2026-12-05)",
        ("NVIDIA H100 80GB HBM3",),
    ),  # the SXM card; a PCIe one copies at about 2 TB/s
    "H200 141GB": GPU(
        "H200 141GB", int(139.8 * GiB), 4.3e12, 700e12, "measured copy 4.3 TB/s (H200, 2026-11-29)", ("NVIDIA H200",)
    ),
}


def _real(value) -> bool:
    """A number (numpy's too), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _whole(value, name: str, minimum: int) -> int:
    """``value`` as an int (numpy integers too); ValueError naming ``name`` unless a whole number >= ``minimum``."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be a whole number >= {minimum}, got {value!r}.")
    return int(value)


def custom_gpu(memory_gib: float, bandwidth_tb_s: float = 3.0, matmul_tflops: float = 700.0) -> GPU:
    """A card of ``memory_gib`` GiB, ``bandwidth_tb_s`` TB/s and ``matmul_tflops`` TFLOP/s. Raises ValueError naming
    a figure that is not a positive finite number."""
    figures = {"memory_gib": memory_gib, "bandwidth_tb_s": bandwidth_tb_s, "matmul_tflops": matmul_tflops}
    _require_positive(figures, "A GPU's")
    memory_gib, bandwidth_tb_s, matmul_tflops = float(memory_gib), float(bandwidth_tb_s), float(matmul_tflops)
    return GPU(f"{memory_gib:g} GiB", int(memory_gib * GiB), bandwidth_tb_s * 1e12, matmul_tflops * 1e12, "given")


def _check_card(gpu: GPU) -> None:
    """ValueError naming a figure of ``gpu`` that is not a positive finite number (a GPU built by hand, not by
    :func:`custom_gpu`, which checks them as it builds)."""
    figures = {"memory_bytes": gpu.memory_bytes, "bandwidth": gpu.bandwidth, "matmul_flops": gpu.matmul_flops}
    _require_positive(figures, f"GPU {gpu.name!r}: its")


def _require_positive(figures: dict, whose: str) -> None:
    """ValueError "<whose> <name> must be a positive finite number" for the first figure that is not one."""
    for name, value in figures.items():
        if not _real(value) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"{whose} {name} must be a positive finite number, got {value!r}.")


def _rules(shape: ModelShape, config: SWAAConfig | None):
    """Per layer (mask kind or None, fa_decode) as the engine plans it (:mod:`swaa_core.engine.install`): full
    attention keeps only the model's own windows."""
    if config is None or config.is_full_attention:
        return [(None if native is None else SinkWindow(native), False) for native in shape.native_windows]
    config.validate(shape.num_layers)
    return [config.layer_rule(i, native) for i, native in enumerate(shape.native_windows)]


def static_kv_slots(shape, config: SWAAConfig | None, prompt_tokens: int, new_tokens: int) -> tuple[int, ...]:
    """Slots each layer's fixed buffers hold per sequence (``StaticSWAACache.from_dynamic``): ``sinks + W`` for a
    layer whose decode steps slide, ``prompt_tokens + new_tokens`` for the others."""
    shape = model_shape(shape)
    return tuple(
        kind.kept_slots() if kind is not None and not fa else prompt_tokens + new_tokens
        for kind, fa in _rules(shape, config)
    )


def prefill_kv_slots(shape, config: SWAAConfig | None, prompt_tokens: int) -> tuple[tuple[int, ...], int]:
    """(slots each layer's dynamic cache holds per sequence after the prompt's forward, the largest transient buffer
    an evicting layer holds besides its ring during its own forward). A growing buffer is ``bucket_end(prompt +
    SPARE_SLOTS)`` slots (``SWAACacheLayer._append``); an evicting layer moves to its ring once the prompt is longer
    than it (``_may_ring``)."""
    shape = model_shape(shape)
    grown = bucket_end(prompt_tokens + SPARE_SLOTS)
    held, transient = [], 0
    for kind, fa in _rules(shape, config):
        ring = kind.kept_slots() if kind is not None and not fa else None
        if ring is not None and prompt_tokens > ring:
            held.append(ring)
            transient = grown
        else:
            held.append(grown)
    return tuple(held), transient


@dataclass(frozen=True)
class Capacity:
    """The largest batch of one recipe on one card, and what it serves. Bytes are per card; ``*_per_seq`` per row.

    ``max_batch`` 0: not even one sequence fits. ``phase`` names the phase that limits the batch ("prefill",
    "move to fixed buffers", "decode")."""

    label: str
    config: SWAAConfig | None
    gpu: GPU
    prompt_tokens: int
    new_tokens: int
    prefill: str
    weight_bytes: int
    kv_bytes_per_seq: int
    reserve_bytes: int
    max_batch: int
    phase: str
    flops_per_seq: float  # one prompt's prefill
    step_flops_per_seq: float  # one decode step of one row
    # phase name -> (bytes independent of the batch, bytes per row)
    phases: dict[str, tuple[int, int]] = field(repr=False, default_factory=dict)

    @property
    def context_tokens(self) -> int:
        return self.prompt_tokens + self.new_tokens

    def peak_bytes(self, batch: int | None = None) -> int:
        """Predicted peak of allocated memory at ``batch`` rows (default ``max_batch``; any whole number >= 0, so
        also what a batch that does not fit would need), weights included, reserve not (compare with
        ``torch.cuda.max_memory_allocated``). Raises ValueError for a count that is not a whole number >= 0."""
        b = self.max_batch if batch is None else _whole(batch, "batch", 0)
        return self.weight_bytes + max(fixed + b * per for fixed, per in self.phases.values())

    def step_seconds(self, batch: int | None = None) -> float:
        """Roofline seconds of one decode step at ``batch`` rows (default ``max_batch``; any whole number >= 0): the
        weights and the rows' KV buffers read once at the bandwidth, or the rows' FLOPs at the matmul rate where
        those take longer (large batches). Raises ValueError for a count that is not a whole number >= 0."""
        b = self.max_batch if batch is None else _whole(batch, "batch", 0)
        read = (self.weight_bytes + b * self.kv_bytes_per_seq) / self.gpu.bandwidth
        return max(read, b * self.step_flops_per_seq / self.gpu.matmul_flops)

    def tokens_per_s(self, batch: int | None = None) -> float:
        """Roofline decode tokens/s of all rows together at ``batch`` rows (default ``max_batch``; 0 when nothing
        fits). Raises ValueError, as :meth:`serve_seconds` does, for a batch above ``max_batch`` and a count that is
        not a whole number >= 0 (:meth:`step_seconds` gives the step of any batch)."""
        b = self.max_batch if batch is None else _whole(batch, "batch", 0)
        if b > self.max_batch:
            raise ValueError(f"batch {b} does not fit: at most {self.max_batch} rows here.")
        return b / self.step_seconds(b) if b > 0 else 0.0

    def prefill_seconds(self, rows: int = 1) -> float:
        """FLOP-roofline seconds to prefill ``rows`` prompts at the card's matmul rate. Raises ValueError for a count
        that is not a whole number >= 0."""
        return _whole(rows, "rows", 0) * self.flops_per_seq / self.gpu.matmul_flops

    def serve_seconds(self, requests: int, batch: int | None = None) -> float:
        """Roofline seconds to serve ``requests`` requests of this prompt and ``new_tokens`` in waves of ``batch``
        rows (default ``max_batch``; static batching: a wave is prefilled, then decodes ``new_tokens - 1`` steps, the
        first token coming from the prefill). inf when nothing fits. Raises ValueError for a batch above
        ``max_batch`` and for a count that is not a whole number >= 0."""
        requests = _whole(requests, "requests", 0)
        b = self.max_batch if batch is None else _whole(batch, "batch", 0)
        if b > self.max_batch:
            raise ValueError(f"batch {b} does not fit: at most {self.max_batch} rows here.")
        if b < 1:
            return float("inf")
        full, rest = divmod(requests, b)
        waves = [b] * full + ([rest] if rest else [])
        return sum(self.prefill_seconds(w) + (self.new_tokens - 1) * self.step_seconds(w) for w in waves)

    def row(self, requests: int | None = None) -> dict:
        """The figures as one table row (GiB, tokens/s, seconds)."""
        out = {
            "recipe": self.label,
            "gpu": self.gpu.name,
            "context": self.context_tokens,
            "prefill": self.prefill,
            "max_batch": self.max_batch,
            "limited_by": self.phase,
            "kv_gib_per_seq": round(self.kv_bytes_per_seq / GiB, 3),
            "peak_gib": round(self.peak_bytes() / GiB, 2),
            "step_ms": round(1000 * self.step_seconds(), 2),
            "tokens_per_s": round(self.tokens_per_s(), 1),
            "tokens_per_s_batch1": round(self.tokens_per_s(1), 1) if self.max_batch else 0.0,
        }
        if requests:
            out[f"serve_{requests}_s"] = round(self.serve_seconds(requests), 1)
            out[f"serve_{requests}_s_batch1"] = round(self.serve_seconds(requests, min(1, self.max_batch)), 1)
        return out


def capacity(
    shape,
    config: SWAAConfig | dict | None,
    gpu: GPU | str,
    *,
    prompt_tokens: int,
    new_tokens: int,
    prefill: str = "batch",
    dtype=None,
    reserve_bytes: int | None = None,
    label: str | None = None,
) -> Capacity:
    """The largest batch of sequences of ``prompt_tokens + new_tokens`` that ``gpu`` holds under ``config`` (None:
    full attention), for a model ``shape`` (anything :func:`~swaa_core.models.memory.model_shape` takes).

    ``prefill``: "batch" (one forward of every row, as ``fast_generate`` does) or "row" (one request at a time).
    ``reserve_bytes``: default ``RESERVE_FRACTION`` of the card. ``dtype``: of weights and KV (None: the shape's
    own where it has one, as :func:`~swaa_core.models.memory.estimate_memory` takes it, else bfloat16; bfloat16,
    float16 or float32). Returns a
    :class:`Capacity` (``max_batch`` 0 when not one sequence fits). ``gpu``: a :class:`GPU` or a name in
    :data:`GPUS`. Raises ValueError naming a bad mode, token count, reserve or card, SWAAConfigError for a config
    that is none."""
    if prefill not in PREFILL_MODES:
        raise ValueError(f"prefill must be one of {PREFILL_MODES}, got {prefill!r}.")
    prompt_tokens, new_tokens = _whole(prompt_tokens, "prompt_tokens", 1), _whole(new_tokens, "new_tokens", 1)
    if reserve_bytes is not None:
        if not _real(reserve_bytes) or not math.isfinite(reserve_bytes) or reserve_bytes < 0:
            raise ValueError(
                f"reserve_bytes must be a finite number of bytes >= 0 (None: the default share), got {reserve_bytes!r}."
            )
        reserve_bytes = int(reserve_bytes)
    if isinstance(gpu, str):  # a card by its name in GPUS
        if gpu not in GPUS:
            raise ValueError(f"Unknown GPU {gpu!r}; name one of {', '.join(map(repr, GPUS))} or give custom_gpu(...).")
        gpu = GPUS[gpu]
    if not isinstance(gpu, GPU):
        raise ValueError(f"gpu must be a GPU (GPUS[name] or custom_gpu(...)) or its name, got {type(gpu).__name__}.")
    _check_card(gpu)
    config = SWAAConfig.coerce(config)
    shape = model_shape(shape)
    dt = to_dtype(dtype if dtype is not None else shape.dtype or torch.bfloat16)
    phases, kv_per_seq = _phases(shape, config, prompt_tokens, new_tokens, dt, prefill)
    weights = estimate_memory(shape, 0, dtype=dt).weight_bytes
    reserve = int(RESERVE_FRACTION * gpu.memory_bytes) if reserve_bytes is None else reserve_bytes
    room = gpu.memory_bytes - reserve - weights
    fits = {name: max(0, (room - fixed) // per) if room >= fixed else 0 for name, (fixed, per) in phases.items()}
    phase = min(fits, key=fits.get)
    return Capacity(
        label=label or ("Full attention" if config is None or config.is_full_attention else config.describe()),
        config=config,
        gpu=gpu,
        prompt_tokens=prompt_tokens,
        new_tokens=new_tokens,
        prefill=prefill,
        weight_bytes=weights,
        kv_bytes_per_seq=kv_per_seq,
        reserve_bytes=reserve,
        max_batch=int(fits[phase]),
        phase=phase,
        flops_per_seq=prefill_flops(shape, config, prompt_tokens),
        step_flops_per_seq=step_flops(shape, config, prompt_tokens, new_tokens),
        phases=phases,
    )


def _phases(shape: ModelShape, config, prompt: int, new: int, dt: torch.dtype, prefill: str):
    """({phase: (bytes independent of the batch, bytes per row)}, fixed KV buffer bytes per row) beside the weights."""
    elem = torch.empty((), dtype=dt).element_size()
    per_slot = 2 * shape.num_kv_heads * shape.head_dim * elem
    slots = static_kv_slots(shape, config, prompt, new)
    static = [per_slot * s for s in slots]
    held, transient = prefill_kv_slots(shape, config, prompt)
    dynamic = [per_slot * s for s in held]
    prefill_row = estimate_memory(shape, prompt, dtype=dt).activation_bytes + sum(dynamic) + per_slot * transient
    # layers move one at a time: layer i's fixed buffers exist before its dynamic ones are dropped
    moving = max(sum(static[: i + 1]) + sum(dynamic[i:]) for i in range(len(static)))
    # the step's temporaries, its logits kept by the graph and their float32 copy, the slot tables (int64
    # positions and a bool mask per slot of each buffer geometry) and the int64 tokens generated so far
    decode_row = sum(static) + estimate_memory(shape, 1, dtype=dt).activation_bytes + shape.vocab_size * (elem + 4)
    decode_row += 9 * sum(set(slots)) + 8 * new
    if prefill == "batch":
        phases = {"prefill": (0, prefill_row), "move to fixed buffers": (0, moving)}
    else:  # the batch's buffers exist while one more row is prefilled and moved in
        phases = {"prefill": (prefill_row, sum(static)), "move to fixed buffers": (moving, sum(static))}
    phases["decode"] = (0, decode_row)
    return phases, sum(static)


def prefill_flops(shape, config: SWAAConfig | None, prompt_tokens: int) -> float:
    """FLOPs of one prompt's forward: 2 per multiply-add of every layer's linear maps (q, k, v, o and the gated
    MLP's three) for each token, plus attention's 4 * query heads * head_dim per (query, key) pair the layer's prefill
    visits (a full causal triangle, or what the layer's mask kind shows: ``MaskKind.pairs_visited``). Logits of one
    token are left out."""
    shape = model_shape(shape)
    d, n = shape.head_dim, prompt_tokens
    heads = shape.num_heads or shape.hidden_size // d
    total = 2.0 * shape.num_layers * _linear_params(shape) * n
    for kind, _ in _rules(shape, config):
        total += 4.0 * heads * d * (n * (n + 1) // 2 if kind is None else kind.pairs_visited(n))
    return total


def step_flops(shape, config: SWAAConfig | None, prompt_tokens: int, new_tokens: int) -> float:
    """FLOPs of one row's decode step on the fixed buffers: the linear maps for one token, the logits, and attention
    over every slot of every buffer (the step reads the whole buffer under a mask)."""
    shape = model_shape(shape)
    h, d = shape.hidden_size, shape.head_dim
    heads = shape.num_heads or h // d
    slots = sum(static_kv_slots(shape, config, prompt_tokens, new_tokens))
    return 2.0 * shape.num_layers * _linear_params(shape) + 2.0 * shape.vocab_size * h + 4.0 * heads * d * slots


def _linear_params(shape: ModelShape) -> int:
    """Weights of one layer's q, k, v, o and gated-MLP maps (a dense layer; biases and norms left out)."""
    h, d = shape.hidden_size, shape.head_dim
    heads = shape.num_heads or h // d
    return 2 * h * heads * d + 2 * h * shape.num_kv_heads * d + 3 * h * shape.intermediate_size


def pairs_visited(n: int, window: int | None, sinks: int) -> int:
    """(query, key) pairs of an n-token causal prefill where query i sees key j iff ``i - j < window`` or
    ``j < sinks`` (``window`` None: every earlier key): i + 1 keys while i < window, then W, plus the
    ``min(sinks, i + 1 - window)`` sinks outside it."""
    return SinkWindow(window, sinks).pairs_visited(n)


def capacity_table(
    shape,
    configs: dict[str, SWAAConfig | None],
    gpu: GPU | str,
    *,
    prompt_tokens: int,
    new_tokens: int,
    prefill: str = "batch",
    dtype=None,
    requests: int | None = None,
) -> list[dict]:
    """One :meth:`Capacity.row` per ``{label: config}``, in order (see :func:`capacity`)."""
    return [
        capacity(shape, cfg, gpu, prompt_tokens=prompt_tokens, new_tokens=new_tokens, prefill=prefill, dtype=dtype,
                 label=label).row(requests)
        for label, cfg in configs.items()
    ]  # fmt: skip
