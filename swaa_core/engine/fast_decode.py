"""Generation whose decode steps run from fixed buffers, captured once in a CUDA graph and replayed per token.

At batch 1 an eager decode step of a large model is bound by the host launching kernels (tens of milliseconds of
Python per token), which hides what a sliding window saves. Here the prompt is prefilled through the usual SWAA
kernels, its cache is moved into a :class:`~swaa_core.engine.static_cache.StaticSWAACache` (sinks + W slots per
evicting layer, prompt + new slots per full or FA-decode layer), and one decode step, the model's own forward, is
captured with ``torch.cuda.graph`` after two eager warm-up steps. Each further token costs one graph replay plus the
sampling kernels: the GPU's time, not the host's. On a CPU (or with ``cuda_graph=False``) the same static steps run
eagerly, which is what the CPU tests check against ``generate``.

A model without SWAA decodes through the same machinery with every layer full (the like-for-like baseline).
Source: gpt-fast's CUDA-graph decode and transformers' static-cache generation, with SWAA's ring buffers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from transformers import DynamicCache
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from .cache import kv_cache_bytes
from .config import SWAAConfig
from .patch import _install, remove_swaa
from .static_cache import StaticSWAACache

WARMUP_STEPS = 2  # eager steps before capture: lazy kernel and library initialisation must not be captured
CHECK_EVERY = 16  # decode steps between host reads of "every row finished" (each read waits for the GPU)


@dataclass(frozen=True)
class DecodeResult:
    """sequences: (B, T + new) prompt then generated tokens (``pad_token_id`` after a row's end of sequence).

    Times in seconds, each measured between device synchronisations: ``prefill_s`` the prompt forward and first
    token; ``setup_s`` moving the cache into fixed buffers, the warm-up steps and the graph capture (the first-call
    cost); ``decode_s`` the ``decode_steps`` steps after that."""

    sequences: torch.Tensor
    prefill_s: float
    setup_s: float
    decode_s: float
    decode_steps: int
    cuda_graph: bool
    kv_cache_bytes_per_layer: tuple[int, ...] = ()  # bytes of keys and values each layer's fixed buffers hold

    @property
    def tokens_per_s(self) -> float:
        """Steady decode speed per row (tokens/s), nan when no step was timed."""
        return self.decode_steps / self.decode_s if self.decode_steps and self.decode_s > 0 else float("nan")


@torch.no_grad()
def fast_generate(
    model,
    input_ids: torch.Tensor,
    *,
    max_new_tokens: int,
    attention_mask: torch.Tensor | None = None,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
    min_new_tokens: int = 0,
    generator: torch.Generator | None = None,
    streamer=None,
    stopping_criteria=None,
    cuda_graph: bool | None = None,
) -> DecodeResult:
    """Generate ``max_new_tokens`` tokens after ``input_ids`` (B, T) under the model's SWAA configuration (or full
    attention when none is applied), greedy or sampled with temperature / top-k / top-p.

    ``attention_mask``: (B, T) with left padding, as for ``generate``. ``cuda_graph``: None captures on CUDA only.
    ``streamer`` (transformers' streamer protocol: the prompt, then each token, then ``end()``) and
    ``stopping_criteria`` (called with the sequences so far; a row stops where it returns True) behave as in
    ``generate``; each costs one host read per token. Stops early once every row produced an end-of-sequence token
    (and ``min_new_tokens`` are out) or was stopped. Raises ValueError for an empty prompt, a non-positive
    ``max_new_tokens``, right padding, or a streamer with more than one row."""
    B, T = input_ids.shape
    if T == 0 or max_new_tokens < 1:
        raise ValueError(
            "Generation needs a non-empty prompt and max_new_tokens >= 1 "
            f"(got a prompt of {T} tokens, max_new_tokens={max_new_tokens})."
        )
    if attention_mask is not None and not bool(attention_mask[:, -1].all()):
        raise ValueError("Pad prompts on the left (tokenizer.padding_side = 'left') for generation.")
    if streamer is not None and B != 1:
        raise ValueError("A streamer follows one sequence: pass a batch of one row.")
    eos = _token_set(eos_token_id, model, input_ids.device)
    pad = pad_token_id if pad_token_id is not None else _default_pad(model, eos)
    warpers = _warpers(do_sample, temperature, top_k, top_p)
    use_graph = input_ids.is_cuda if cuda_graph is None else cuda_graph
    temporary = getattr(model, "_swaa_state", None) is None
    state = (
        _install(model, SWAAConfig(sliding_window_size=1), "auto", all_full=True) if temporary else model._swaa_state
    )
    watch = _Watch(streamer, stopping_criteria, input_ids)
    choice = _Choice(max_new_tokens, min_new_tokens, warpers, generator, eos, pad)
    try:
        return _generate(model, state.plans, input_ids, attention_mask, choice, use_graph=use_graph, watch=watch)
    finally:
        if temporary:
            remove_swaa(model)


@dataclass(frozen=True)
class _Choice:
    """How tokens are chosen and when a row ends (the settings of :func:`fast_generate`, checked)."""

    max_new: int
    min_new: int
    warpers: list
    generator: torch.Generator | None
    eos: torch.Tensor | None  # end-of-sequence ids on the device, None: never ends
    pad: int


class _Watch:
    """The caller's streamer and stopping criteria, fed after each token (host reads; nothing when neither is given)."""

    def __init__(self, streamer, criteria, input_ids):
        self.streamer, self.criteria, self.input_ids = streamer, criteria, input_ids
        self.active = streamer is not None or bool(criteria)
        if streamer is not None:
            streamer.put(input_ids.cpu())

    def after(self, token: torch.Tensor, out: torch.Tensor, i: int, finished: torch.Tensor) -> bool:
        """Called with token i (B,): whether every row is now finished."""
        if self.streamer is not None:
            self.streamer.put(token.cpu())
        if self.criteria:
            sequences = torch.cat([self.input_ids, out[:, : i + 1]], 1)
            finished.logical_or_(self.criteria(sequences, None))
        return bool(finished.all())

    def end(self) -> None:
        if self.streamer is not None:
            self.streamer.end()


def _generate(model, plans, input_ids, mask, choice: _Choice, *, use_graph: bool, watch: _Watch):
    max_new, min_new, warpers, generator, eos, pad = (
        choice.max_new,
        choice.min_new,
        choice.warpers,
        choice.generator,
        choice.eos,
        choice.pad,
    )
    B, T = input_ids.shape
    device = input_ids.device
    out = torch.full((B, max_new), pad, dtype=torch.long, device=device)
    finished = torch.zeros(B, dtype=torch.bool, device=device)

    no_eos = (
        None
        if eos is None
        else torch.zeros(model.config.get_text_config().vocab_size, dtype=torch.bool, device=device).index_fill_(
            0, eos, True
        )
    )

    def choose(logits: torch.Tensor, i: int) -> torch.Tensor:
        logits = logits.float()
        if eos is not None and i < min_new:
            logits = logits.masked_fill(no_eos[: logits.shape[-1]], -torch.inf)
        token = torch.where(finished, pad, _pick(logits, warpers, generator))
        if eos is not None:
            finished.logical_or_(torch.isin(token, eos))
        out[:, i] = token
        return token

    start = _now(device)
    cache = DynamicCache(config=model.config)
    positions = None if mask is None else (mask.long().cumsum(-1) - 1).clamp(min=0)
    logits = model(
        input_ids=input_ids,
        attention_mask=mask,
        position_ids=positions,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    ).logits[:, -1]
    ids = choose(logits, 0).view(B, 1).clone()
    stopped = watch.active and watch.after(ids[:, 0], out, 0, finished)
    prefill = _now(device) - start
    if max_new == 1 or stopped:
        watch.end()
        sequences = _trim(torch.cat([input_ids, out[:, :1]], 1), T, finished, eos, pad)
        return DecodeResult(sequences, prefill, 0.0, 0.0, 0, False, tuple(kv_cache_bytes(cache)))

    start = _now(device)
    static = StaticSWAACache.from_dynamic(cache, plans, mask, T + max_new)
    del cache
    held = tuple(kv_cache_bytes(static))
    clock = static.clock

    def step() -> torch.Tensor:
        logits = model(input_ids=ids, position_ids=clock.positions, past_key_values=static, use_cache=True).logits
        clock.advance()
        return logits[:, -1]

    def take(logits: torch.Tensor, i: int) -> bool:
        """Choose token i, feed it back for the next step; whether every row is now stopped by the caller's watch."""
        ids.copy_(choose(logits, i).view(B, 1))
        clock.seen += 1
        return watch.active and watch.after(ids[:, 0], out, i, finished)

    i = 1
    graph, stopped = None, False
    if use_graph and max_new > WARMUP_STEPS + 2:
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                stopped = take(step(), i)
                i += 1
                if stopped:
                    break
        torch.cuda.current_stream(device).wait_stream(side)
        if not stopped:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                graph_logits = step()
    setup = _now(device) - start

    start = _now(device)
    steps = 0
    while i < max_new and not stopped:
        if graph is not None:
            graph.replay()
            logits = graph_logits
        else:
            logits = step()
        stopped = take(logits, i)
        i, steps = i + 1, steps + 1
        if eos is not None and i >= min_new and i % CHECK_EVERY == 0 and bool(finished.all()):
            break
    decode = _now(device) - start
    watch.end()
    sequences = torch.cat([input_ids, out[:, :i]], 1)
    return DecodeResult(_trim(sequences, T, finished, eos, pad), prefill, setup, decode, steps, graph is not None, held)


def _trim(sequences, T, finished, eos, pad):
    """Drop the trailing columns in which every row had already finished by its end-of-sequence token (what
    ``generate`` returns); a loop stopped by the caller's criteria ends where it stopped."""
    if eos is None or not bool(finished.all()):
        return sequences
    new = sequences[:, T:]
    ended = torch.isin(new, eos)
    if not bool(ended.any(1).all()):  # some row was stopped by a criterion, not by its end of sequence
        return sequences
    done_after = ended.long().argmax(1)  # index of each row's first end-of-sequence token
    return sequences[:, : T + int(done_after.max()) + 1]


def _pick(logits: torch.Tensor, warpers, generator) -> torch.Tensor:
    if not warpers:
        return logits.argmax(-1)
    for warp in warpers:
        logits = warp(None, logits)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(1)


def _warpers(do_sample: bool, temperature: float, top_k, top_p) -> list:
    if not do_sample:
        return []
    warpers = [TemperatureLogitsWarper(temperature)] if temperature != 1.0 else []
    if top_k:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p is not None and top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    return warpers


def _token_set(eos_token_id, model, device) -> torch.Tensor | None:
    if eos_token_id is None:
        eos_token_id = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos_token_id is None:
        return None
    ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    return torch.tensor(ids, dtype=torch.long, device=device) if ids else None


def _default_pad(model, eos) -> int:
    pad = getattr(getattr(model, "generation_config", None), "pad_token_id", None)
    if pad is None and eos is not None:
        pad = int(eos[0])
    return 0 if pad is None else int(pad)


def _now(device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


SUPPORTED_KWARGS = {
    "input_ids", "inputs", "attention_mask", "max_new_tokens", "max_length", "min_new_tokens", "do_sample",
    "temperature", "top_k", "top_p", "eos_token_id", "pad_token_id", "cache_implementation", "generation_config",
    "return_dict_in_generate", "streamer", "stopping_criteria",
}  # fmt: skip
# Values of other generate options that ask for nothing this path lacks, so callers passing defaults explicitly pass.
NEUTRAL_KWARGS = {
    "num_beams": 1, "num_return_sequences": 1, "repetition_penalty": 1.0, "output_scores": False,
    "output_logits": False, "output_attentions": False, "output_hidden_states": False, "use_cache": True,
}  # fmt: skip
DEFAULT_NEW_TOKENS = 20  # generate's own default when neither max_new_tokens nor max_length is set


def _neutral(name: str, value) -> bool:
    if value is None or (isinstance(value, (list, tuple)) and not value):  # e.g. logits_processor=[]
        return True
    return name in NEUTRAL_KWARGS and value == NEUTRAL_KWARGS[name]


def generate_static(model, args: tuple, kwargs: dict):
    """``model.generate(..., cache_implementation="static")`` under SWAA: the same call served by
    :func:`fast_generate` (fixed buffers, CUDA-graph decode). Returns what ``generate`` would: the sequences, or an
    output object with ``sequences`` when ``return_dict_in_generate``. Raises ValueError naming any argument this
    path does not implement (beam search, custom logits processors, scores, ...), and as ``generate`` does for a
    ``max_length`` no longer than the prompt or a non-positive ``max_new_tokens`` or temperature."""
    from transformers.generation.utils import GenerateDecoderOnlyOutput

    config = kwargs.get("generation_config") or model.generation_config
    given = {k: v for k, v in kwargs.items() if k not in SUPPORTED_KWARGS and not _neutral(k, v)}
    for name in ("num_beams", "repetition_penalty", "num_return_sequences", "output_scores", "output_logits"):
        if not _neutral(name, getattr(config, name, None)):
            given.setdefault(name, getattr(config, name))
    unsupported = [f"{k}={v}" if isinstance(v, (bool, int, float, str)) else k for k, v in sorted(given.items())]
    if unsupported:
        raise ValueError(
            "SWAA's static-cache generation (cache_implementation='static') supports greedy and sampled decoding "
            f"with temperature / top-k / top-p only; it does not take: {', '.join(unsupported)}. Drop "
            "cache_implementation='static' to use transformers' generate with the dynamic SWAA cache."
        )

    def get(name, default=None):
        value = kwargs.get(name)
        return getattr(config, name, default) if value is None else value

    input_ids = args[0] if args else kwargs.get("input_ids", kwargs.get("inputs"))
    max_new, T = get("max_new_tokens"), input_ids.shape[1]
    if max_new is None and get("max_length") is not None:
        max_new = get("max_length") - T
        if max_new < 1:
            raise ValueError(
                f"max_length ({get('max_length')}) must exceed the prompt's {T} tokens; set max_new_tokens."
            )
    elif max_new is None:
        max_new = DEFAULT_NEW_TOKENS
    result = fast_generate(
        model,
        input_ids,
        max_new_tokens=max_new,
        attention_mask=kwargs.get("attention_mask"),
        do_sample=bool(get("do_sample", False)),
        temperature=1.0 if get("temperature") is None else get("temperature"),
        top_k=get("top_k"),
        top_p=get("top_p"),
        eos_token_id=get("eos_token_id"),
        pad_token_id=get("pad_token_id"),
        min_new_tokens=get("min_new_tokens", 0) or 0,
        streamer=kwargs.get("streamer"),
        stopping_criteria=kwargs.get("stopping_criteria"),
    )
    if get("return_dict_in_generate", False):
        return GenerateDecoderOnlyOutput(sequences=result.sequences)
    return result.sequences
