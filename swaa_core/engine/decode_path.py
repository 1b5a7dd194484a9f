"""Which decode path a generation takes, and why: one value shared by ``model.generate`` after ``apply_swaa``, the
eval runner, the decode-speed curve, the CLI and the app.

Two paths produce the same tokens: ``fixed`` (:func:`~swaa_core.engine.fast_decode.fast_generate`: the cache moved
into fixed buffers after the prefill, one decode step captured in a CUDA graph and replayed per token on CUDA, the
same steps eagerly elsewhere) and ``eager`` (transformers' ``generate`` over SWAA's dynamic cache, one Python forward
per token). ``auto`` picks the fixed path on CUDA whenever the request is one it serves (at batch 1 an eager step is
bound by the host launching kernels: 23-28 tokens/s where the graph gives 137 on an H200, docs/benchmarks.md) and
on a CPU the path measured faster there (:data:`CPU_DEFAULT`). :func:`resolve` says which path runs and why;
:func:`fixed_refusals` lists what of a ``generate`` call the fixed path does not serve, without running anything.
Importing this module imports no torch (the CLI's parser offers the path names).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class DecodePath(StrEnum):
    """What a caller asks for: ``auto`` (the default), ``fixed`` (fixed buffers; a CUDA graph on CUDA) or ``eager``
    (transformers' ``generate`` with the dynamic SWAA cache)."""

    AUTO = "auto"
    FIXED = "fixed"
    EAGER = "eager"

    @classmethod
    def of(cls, value=None, *, static_cache: bool | None = None) -> DecodePath:
        """``value`` (a DecodePath, its name, or None for auto) merged with the older ``static_cache`` spelling
        (True: fixed, False: eager, None: not given). Raises ValueError for another name, or when the two
        contradict each other."""
        if isinstance(value, cls):
            path = value
        elif value is None:
            path = cls.AUTO
        elif isinstance(value, str) and value.strip().lower() in {p.value for p in cls}:
            path = cls(value.strip().lower())
        else:
            names = ", ".join(repr(p.value) for p in cls)
            raise ValueError(f"decode_path must be one of {names}, got {value!r}.")
        if static_cache is None:
            return path
        if not isinstance(static_cache, bool):
            raise ValueError(f"static_cache must be True or False, got {static_cache!r}.")
        alias = cls.FIXED if static_cache else cls.EAGER
        if path not in (cls.AUTO, alias):
            raise ValueError(
                f"static_cache={static_cache} asks for the {alias.value} decode path, but decode_path asks for "
                f"{path.value!r}: give one of them."
            )
        return alias


# The CPU's choice under "auto", from timing both paths on the embedded SmolLM2-135M (docs/benchmarks.md, "Decode
# path on the CPU"): see there for the numbers this rests on.
CPU_DEFAULT = DecodePath.EAGER
CPU_REASON = "the CPU default (both paths timed on this kind of machine: docs/benchmarks.md)"

FIXED_WORDS = "fixed buffers"  # what tables and plots call the paths (results files keep these words)
EAGER_WORDS = "dynamic cache"


@dataclass(frozen=True)
class Route:
    """The decode path that runs (``fixed`` or ``eager``, never ``auto``), what was asked for, and why in words."""

    path: DecodePath
    requested: DecodePath
    reason: str

    @property
    def fixed(self) -> bool:
        return self.path is DecodePath.FIXED

    def words(self, cuda_graph: bool = False) -> str:
        """The path as tables and plots name it: "dynamic cache", "fixed buffers" or "fixed buffers + CUDA graph"."""
        if not self.fixed:
            return EAGER_WORDS
        return FIXED_WORDS + (" + CUDA graph" if cuda_graph else "")


def resolve(requested=None, device=None, *, refusals=(), request: str = "batch 1, greedy") -> Route:
    """Which path a generation on ``device`` takes when ``requested`` (a :class:`DecodePath` or its name; None:
    auto) is asked for. ``refusals``: what of the request the fixed path does not serve (:func:`fixed_refusals`;
    none for the runner's greedy single-row generation); ``request``: the request in a few words, for the reason.

    Raises ValueError naming the refusals when the fixed path is asked for and cannot serve the request; under
    auto such a request takes the eager path and the reason names them."""
    import torch

    requested = DecodePath.of(requested)
    kind = torch.device(device if device is not None else "cpu").type
    if requested is DecodePath.FIXED:
        if refusals:
            raise ValueError(
                "The fixed-buffer decode path (decode path 'fixed', --decode-path fixed, --static-cache or "
                f"cache_implementation='static') does not take: {', '.join(refusals)}. Ask for the eager path "
                "(decode path 'eager', or cache_implementation='dynamic') to run transformers' generate with the "
                "dynamic SWAA cache."
            )
        return Route(DecodePath.FIXED, requested, f"fixed-buffer: asked for ({kind}, {request})")
    if requested is DecodePath.EAGER:
        return Route(DecodePath.EAGER, requested, "eager: asked for")
    if refusals:
        return Route(DecodePath.EAGER, requested, f"eager: the fixed-buffer path does not take {', '.join(refusals)}")
    if kind == "cuda":
        return Route(DecodePath.FIXED, requested, f"fixed-buffer: CUDA, {request}")
    if kind == "cpu":
        return Route(CPU_DEFAULT, requested, f"{_short(CPU_DEFAULT)}: {CPU_REASON}")
    return Route(DecodePath.EAGER, requested, f"eager: the fixed-buffer path is the default on CUDA only, not {kind}")


def _short(path: DecodePath) -> str:
    return "fixed-buffer" if path is DecodePath.FIXED else "eager"


# ---------------------------------------------------------------------- model.generate's calls


# generate's parameters before ``**kwargs``, in order (transformers 5.x): a call may pass any of them by position.
GENERATE_POSITIONAL = ("inputs", "generation_config", "logits_processor", "stopping_criteria",
                       "prefix_allowed_tokens_fn", "synced_gpus", "assistant_model", "streamer",
                       "negative_prompt_ids", "negative_prompt_attention_mask", "custom_generate")  # fmt: skip


def by_keyword(args: tuple, kwargs: dict) -> dict:
    """A ``generate(*args, **kwargs)`` call's arguments all by keyword (``inputs`` for the first positional one).
    Raises TypeError, as Python would, for more positional arguments than generate has or one given both ways."""
    if len(args) > len(GENERATE_POSITIONAL):
        raise TypeError(f"generate takes at most {len(GENERATE_POSITIONAL)} positional arguments ({len(args)} given)")
    positional = dict(zip(GENERATE_POSITIONAL, args, strict=False))
    twice = [name for name in positional if name in kwargs]
    if twice:
        raise TypeError(f"generate() got multiple values for argument '{twice[0]}'")
    return {**positional, **kwargs}


def merged_generation_config(model, kwargs: dict):
    """The generation config a ``generate`` call (all by keyword: :func:`by_keyword`) runs with, merged as transformers
    merges it (:func:`~swaa_core.engine.generation_options.merged_config`)."""
    from .generation_options import merged_config

    return merged_config(model, kwargs.get("generation_config"), kwargs)[0]


# generate's output dict holds its cache, which a next turn continues (model.generate(turn2, past_key_values=...)); the
# fixed buffers give none, and a next turn prefilled from scratch is not the continued one (under FA decode, turn 1's
# answer was decoded with every key, but a prefill slides over it). Asked for by name, the fixed path still serves
# such a call (past_key_values None, as documented); auto does not pick it.
RETURNS_CACHE = (
    "return_dict_in_generate (generate's output holds its cache, past_key_values, which a next turn continues; the "
    "fixed buffers give none: cache_implementation='static' takes the fixed path without it)"
)


def fixed_refusals(model, args: tuple, kwargs: dict) -> list[str]:
    """What of ``model.generate(*args, **kwargs)`` the fixed path does not serve, by name, with why; empty when it
    serves the call. The options (keywords, a passed ``generation_config``, the model's) are checked by the fixed
    path's own classification (:func:`swaa_core.engine.generation_options.refusals`, what ``prepare`` refuses); beside
    them the inputs' shapes (one host read of the mask's last column) and an output dict with the cache in it
    (:data:`RETURNS_CACHE`). Runs no forward."""
    return _refusals(model, by_keyword(args, kwargs))[0]


def _refusals(model, kwargs: dict) -> tuple[list[str], object]:
    """(:func:`fixed_refusals` of a call given all by keyword, its merged generation config): one merge per call."""
    import torch

    from .generation_options import refusals

    options = {k: v for k, v in kwargs.items() if k not in ("inputs", "input_ids", "generation_config")}
    found, config = refusals(model, kwargs.get("generation_config"), options)
    found = ["; ".join(found)] if found else []  # the refused options, each with why, as the fixed path names them
    if config.return_dict_in_generate and config.use_cache is not False:
        found.append(RETURNS_CACHE)
    inputs = kwargs.get("input_ids", kwargs.get("inputs"))
    mask = kwargs.get("attention_mask")
    if not isinstance(inputs, torch.Tensor) or inputs.dim() != 2:
        found.append("inputs (token ids of shape (batch, length))")
    elif kwargs.get("streamer") is not None and inputs.shape[0] * (config.num_return_sequences or 1) != 1:
        rows = inputs.shape[0] * (config.num_return_sequences or 1)  # generate expands the rows before its loop
        found.append(f"streamer (a streamer with {rows} rows)")
    if isinstance(mask, torch.Tensor) and mask.dim() == 2 and mask.shape[1] and not bool(mask[:, -1].all()):
        found.append("attention_mask (right padding)")
    if not found and isinstance(inputs, torch.Tensor) and inputs.dim() == 2:
        found += buffers_beyond_free_memory(model, inputs, config, kwargs)
    return found, config


def free_bytes(device) -> int | None:
    """Memory a new tensor on ``device`` can take, in bytes: CUDA's free count plus what PyTorch's caching allocator
    holds reserved and unused (a previous call's buffers, freed to its cache); None where it cannot be read."""
    import torch

    if torch.device(device).type != "cuda" or not torch.cuda.is_available():
        return None
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return torch.cuda.mem_get_info(device)[0] + max(cached, 0)


def _bytes_per_slot(model) -> int:
    """Bytes of keys and values one cache slot of one layer holds (one row)."""
    from .families import text_config

    text = text_config(model)
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    return 2 * kv_heads * head_dim * next(model.parameters()).element_size()


def fixed_buffers_at_least(model, rows: int, slots: int) -> dict:
    """A lower bound of the bytes the fixed path's buffers take for ``rows`` rows of ``slots`` slots (prompt + new
    tokens, bucketed under compile), per device the layers' attention runs on ({device: bytes}): a sliding layer
    that evicts takes its ring of sinks + W slots (more with left padding) or, when it keeps every key (a masked
    token inside a prompt, a row that never settles its sinks), flat buffers of ``slots``: counted as the smaller;
    every other layer as ``slots``. Exact for unpadded rows longer than the ring."""
    from .families import attention_modules

    per_slot = rows * _bytes_per_slot(model)
    devices = {m.layer_idx: next(m.parameters()).device for m in attention_modules(model)}
    out: dict = {}
    for plan in model._swaa_state.plans:
        layer = min(plan.kind.kept_slots(), slots) if plan.evicts else slots
        device = devices.get(plan.layer_idx, model_device(model))
        out[device] = out.get(device, 0) + per_slot * layer
    return out


def buffers_beyond_free_memory(model, inputs, config, kwargs: dict, rows: int | None = None) -> list[str]:
    """The fixed path sizes its buffers to the prompt plus max_new_tokens before the first step; generate's growing
    cache holds only the tokens made, so a large max_new_tokens that an end of sequence cuts short is no problem
    there. One reason (empty: they fit, or the device's free memory cannot be read) when those buffers may exceed
    the device's free memory: auto then takes the eager path (the fixed path itself refuses only on
    :func:`fixed_buffers_at_least`). An upper bound: a sliding layer counts as its ring only for unpadded rows
    longer than it, else as the larger of flat buffers and the ring widened by a whole prompt (left padding adds
    sink slots, a masked token inside a prompt or a row that never settles its sinks gets flat buffers); a caller's
    MaxLengthCriteria may lengthen the run. ``rows``: the rows of the batch when ``inputs`` already holds
    ``num_return_sequences`` per prompt (default: inputs' rows times it)."""
    import math

    import torch
    from transformers.generation.stopping_criteria import MaxLengthCriteria

    free = free_bytes(model_device(model))
    state = getattr(model, "_swaa_state", None)
    # without max_new_tokens, transformers reads a default max_length as that many new tokens
    # (_prepare_generated_length) and a set one as the whole length: the upper bound counts it as new tokens
    new_tokens = config.max_length if config.max_new_tokens is None else config.max_new_tokens
    length = inputs.shape[1] + new_tokens if new_tokens is not None else None
    limits = [c.max_length for c in kwargs.get("stopping_criteria") or () if isinstance(c, MaxLengthCriteria)]
    length = max([length or 0, *limits])
    if free is None or state is None or not math.isfinite(length):
        return []
    rows = inputs.shape[0] * (config.num_return_sequences or 1) if rows is None else rows
    prompt = inputs.shape[1]
    new = max(math.ceil(length) - prompt, 1)
    mask, pad = kwargs.get("attention_mask"), config.pad_token_id
    if isinstance(mask, torch.Tensor):
        padded = not bool(mask.bool().all())
    else:  # generate infers a mask from the pad token where none is given
        padded = pad is not None and bool((inputs == pad).any())
    flat = prompt + new
    settled = not padded  # an unpadded row longer than the ring surely settles into it
    # else an evicting layer holds a ring widened by the row's padding (at most the prompt) or flat buffers
    evicting = [plan.kind.kept_slots() for plan in state.plans if plan.evicts]
    slots = sum(k if settled and prompt >= k else max(flat, k + prompt) for k in evicting)
    slots += (len(state.plans) - len(evicting)) * flat
    need = rows * _bytes_per_slot(model) * slots
    if need <= free:
        return []
    return [f"max_new_tokens={new} (the fixed buffers for {rows} x ({prompt} + {new}) tokens need {need / 2**30:.1f} "
            f"GiB, {free / 2**30:.1f} GiB are free; generate's growing cache holds only the tokens it makes)"]  # fmt: skip


def requested_by_call(model, kwargs: dict) -> DecodePath:
    """The path a ``generate`` call asks for: ``cache_implementation="static"`` (in the call, its config or the
    model's) the fixed path; another cache implementation named in the call or its config the eager path (a
    checkpoint's own choice, e.g. Gemma's "hybrid", asks for nothing); otherwise auto."""
    passed = kwargs.get("generation_config")
    if "cache_implementation" in kwargs:  # None there overrides the configs' choice (eval.latency.shared_cache)
        named = kwargs["cache_implementation"]
    else:
        named = getattr(passed, "cache_implementation", None)
        if named is None:
            own = getattr(model.generation_config, "cache_implementation", None)
            named = own if own in ("static", "dynamic") else None
    if named is None:
        return DecodePath.AUTO
    return DecodePath.FIXED if named == "static" else DecodePath.EAGER


def model_device(model):
    """Where the model's parameters live (the device its generation runs on)."""
    return next(model.parameters()).device


def route_generate(model, args: tuple, kwargs: dict) -> Route:
    """The path ``model.generate(*args, **kwargs)`` takes after ``apply_swaa``: :func:`resolve` with the call's
    refusals under auto. A call that asks for the fixed path takes it, and the fixed path
    (:func:`~swaa_core.engine.fast_decode.generate_static`) refuses by name, before running anything, what it cannot
    serve: its own check is the authority on what it applies, :func:`fixed_refusals` only keeps auto from routing a
    call there that it might refuse."""
    kwargs, args = by_keyword(args, kwargs), ()
    requested = requested_by_call(model, kwargs)
    if requested is DecodePath.EAGER:
        return resolve(requested)
    device = model_device(model)
    if requested is DecodePath.FIXED:  # the fixed path itself refuses by name what it cannot serve, before it runs
        return resolve(requested, device, request=_request_words(kwargs, merged_generation_config(model, kwargs)))
    if requested is DecodePath.AUTO and device.type != "cuda" and CPU_DEFAULT is DecodePath.EAGER:
        return resolve(requested, device)  # nothing to check: the default there is eager anyway
    refusals, config = _refusals(model, kwargs)
    return resolve(requested, device, refusals=refusals, request=_request_words(kwargs, config))


def _request_words(kwargs: dict, config) -> str:
    import torch

    inputs = kwargs.get("input_ids", kwargs.get("inputs"))
    rows = inputs.shape[0] if isinstance(inputs, torch.Tensor) and inputs.dim() == 2 else "?"
    return f"batch {rows}, {'sampled' if config.do_sample else 'greedy'}"
