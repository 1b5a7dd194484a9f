"""Generation whose decode steps run from fixed buffers, captured once in a CUDA graph and replayed per token.

At batch 1 an eager decode step of a large model is bound by the host launching kernels (tens of milliseconds of
Python per token), which hides what a sliding window saves. Here the prompt is prefilled through the usual SWAA
kernels, its cache is moved into a :class:`~swaa_core.engine.static_cache.StaticSWAACache` (sinks + W slots per
evicting layer, prompt + new slots per full or FA-decode layer), and one decode step, the model's own forward, is
captured with ``torch.cuda.graph`` after two eager warm-up steps. Each further token costs one graph replay plus the
token choice: the GPU's time, not the host's. On a CPU (or with ``cuda_graph=False``) the same static steps run
eagerly, which is what the CPU tests check against ``generate``.

Every generation option is transformers' own: the loop here is the decoding loop of transformers' ``generate``
(``custom_generate``), which builds the logits processors, warpers and stopping criteria from the merged generation
config; the loop applies them as ``GenerationMixin._sample`` does, so the same seed gives the same tokens.
:mod:`swaa_core.engine.generation_options` refuses by name what this loop cannot honour.

A model without SWAA decodes through the same machinery with every layer full (the like-for-like baseline).
Source: gpt-fast's CUDA-graph decode and transformers' static-cache generation, with SWAA's ring buffers.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import DynamicCache, PrefixConstrainedLogitsProcessor
from transformers.generation.configuration_utils import GenerationMode
from transformers.generation.stopping_criteria import EosTokenCriteria, MaxLengthCriteria

from . import decode_path
from .cache import kv_cache_bytes, masked_inside_rows
from .compiled_prefill import fused_elementwise, prefill_backend
from .compiled_step import (
    COMPILED_RECOMPILE_LIMIT,
    bind,
    bucket_slots,
    compile_scope,
    compiled_forward,
    recompile_limit_hit,
)
from .config import SWAAConfig
from .decode_path import by_keyword
from .generation_options import MODEL_KWARGS, prepare, refuse
from .install import foreign_hooks, global_module_hooks, install, remove_swaa, swaa_owner
from .static_cache import StaticSWAACache

WARMUP_STEPS = 2  # eager steps before capture: lazy kernel and library initialisation must not be captured
PREFILL_MODES = ("batch", "row")  # one forward of every row, or one request at a time into the batch's buffers
CALLERS_CODE = (PrefixConstrainedLogitsProcessor,)  # transformers' processors that call a function of the caller's
CHECK_EVERY = 16  # decode steps between host reads of "every row finished" (each read waits for the GPU)
LOOPS = (GenerationMode.GREEDY_SEARCH, GenerationMode.SAMPLE)  # the decoding modes this loop is
DEVICE_CRITERIA = (MaxLengthCriteria, EosTokenCriteria)  # stopping rules that never read the host's state


@dataclass(frozen=True)
class DecodeResult:
    """sequences: (B, T + new) prompt then generated tokens (``pad_token_id`` after a row's end of sequence), the
    same tokens transformers' ``generate`` returns for the same options and seed.

    Times in seconds, each measured between device synchronisations: ``prefill_s`` the prompt forward and first
    token; ``setup_s`` moving the cache into fixed buffers, the warm-up steps and the graph capture (the first-call
    cost); ``decode_s`` the ``decode_steps`` steps after that. ``scores`` / ``logits``: one (B, V) float32 tensor per
    new token (processed scores / raw logits), as ``generate`` returns them, when ``return_dict_in_generate`` and
    ``output_scores`` / ``output_logits`` are set; else None."""

    sequences: torch.Tensor
    prefill_s: float
    setup_s: float
    decode_s: float
    decode_steps: int
    cuda_graph: bool
    kv_cache_bytes_per_layer: tuple[int, ...] = ()  # bytes of keys and values each layer's fixed buffers hold
    scores: tuple[torch.Tensor, ...] | None = None
    logits: tuple[torch.Tensor, ...] | None = None
    # the decode step ran through torch.compile (its first-call compilation is in setup_s); False when compile was
    # asked for but torch's limit of compiled graphs was reached (a RuntimeWarning says so), and the eager step ran
    compiled: bool = False

    @property
    def tokens_per_s(self) -> float:
        """Steady decode speed per row (tokens/s), nan when no step was timed."""
        return self.decode_steps / self.decode_s if self.decode_steps and self.decode_s > 0 else float("nan")


@torch.no_grad()
def fast_generate(
    model,
    input_ids: torch.Tensor,
    *,
    max_new_tokens: int | None = None,
    attention_mask: torch.Tensor | None = None,
    do_sample: bool | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
    min_new_tokens: int | None = None,
    generator: torch.Generator | None = None,
    streamer=None,
    stopping_criteria=None,
    cuda_graph: bool | None = None,
    generation_config=None,
    logits_processor=None,
    compile: bool | str | Callable = False,
    prefill: str = "batch",
    **options,
) -> DecodeResult:
    """Generate after ``input_ids`` (B, T) under the model's SWAA configuration (or full attention when none is
    applied), with the tokens transformers' ``generate`` gives for the same options and seed.

    Every keyword is a ``generate`` option with its meaning there; None means "as ``generation_config``, else
    ``model.generation_config``, else transformers' default says" (so greedy unless one of them samples, and 20 new
    tokens unless a length is set). ``options``: any other ``generate`` option (``min_p``, ``repetition_penalty``,
    ``no_repeat_ngram_size``, ``num_return_sequences``, ``return_dict_in_generate`` with ``output_scores``, a
    ``tokenizer`` for ``stop_strings``, ...). ``eos_token_id=[]``: never end a row early.
    ``attention_mask``: (B, T) with left padding. ``cuda_graph``: None captures on CUDA only, and
    not over a caller's module hooks (:func:`~swaa_core.engine.install.foreign_hooks`: a replay runs no hook);
    True with such hooks raises ValueError. ``compile``: True (or
    a ``torch.compile`` backend: a name, or e.g. ``compiled_step.inductor_backend(**FROZEN_FUSED)``, the fastest
    measured) runs the decode step compiled (:mod:`swaa_core.engine.compiled_step`: buffers
    bucketed, one compilation per bucket and batch size, kept across calls; ``disable_compile`` in the generation
    config turns it off), and the prefill's norms, MLPs and attention modules (projections and rotary) compiled
    (:mod:`swaa_core.engine.compiled_prefill`, under inductor with emulated precision casts when the backend is
    inductor; the first call's ``prefill_s`` includes compiling them, and so does the first call at a second prompt
    length, which compiles the kernels that take the length as a symbol). Compiled kernels round differently from the
    eager ones (fused float32 arithmetic, other reduction orders): in float32 the tokens are ``generate``'s (tested
    over 256 greedy tokens on an H100), in bf16 a near tie can go the other way (an 8B model with random weights on
    an H100 left ``generate``'s greedy tokens at the 2nd new token, and so did the eager fixed path: three kernels'
    roundings, three sequences from there, 2026-12-06).
    ``prefill``: "batch" runs the prompt of every row in one forward; "row" prefills one
    row at a time and moves each into the batch's fixed buffers before the next (a server's way: the activations of
    one prompt at a time, not of the batch; ``prefill_s`` then includes the moves; same tokens). ``generator``: when
    given, the source of the sampling draws instead of the global RNG ``generate`` draws from (reproducible from its
    seed, but not the tokens ``generate`` gives). ``streamer`` / ``stopping_criteria`` behave as in ``generate``;
    each costs one host read per token, as do sampling from the global RNG with an end of sequence (extra steps
    after every row stopped would draw from it) and a logits processor or ``prefix_allowed_tokens_fn`` of the
    caller's own. Otherwise stopping is
    read from the device every ``CHECK_EVERY`` steps.

    Raises ValueError for an empty prompt, a non-positive ``max_new_tokens``, right padding, a streamer with more
    than one row, and, naming it, every option this path cannot honour (beam search, assisted decoding, attention
    outputs, a passed cache, ...: :mod:`swaa_core.engine.generation_options`)."""
    _check_ids(input_ids)
    if max_new_tokens is not None and (
        isinstance(max_new_tokens, bool)
        or not isinstance(max_new_tokens, (int, float))
        or not math.isfinite(max_new_tokens)
    ):
        raise ValueError(
            f"max_new_tokens must be a finite number of tokens (this path sizes its buffers to it), got "
            f"{max_new_tokens!r}."
        )
    B, T = input_ids.shape
    if T == 0 or (max_new_tokens is not None and max_new_tokens < 1):
        raise ValueError(
            "Generation needs a non-empty prompt and max_new_tokens >= 1 "
            f"(got a prompt of {T} tokens, max_new_tokens={max_new_tokens})."
        )
    if isinstance(eos_token_id, (list, tuple)) and not eos_token_id and pad_token_id is None:
        configs = (generation_config, model.generation_config)
        if all(c is None or c.pad_token_id is None for c in configs):
            pad_token_id = 0  # generate would take eos[0] as the pad: there is none
            if attention_mask is None:  # else generate infers padding wherever token 0 occurs: this pad is no token
                attention_mask = torch.ones_like(input_ids)
    given = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, top_k=top_k,
                 top_p=top_p, eos_token_id=eos_token_id, pad_token_id=pad_token_id, min_new_tokens=min_new_tokens,
                 attention_mask=attention_mask, streamer=streamer, stopping_criteria=stopping_criteria,
                 logits_processor=logits_processor)  # fmt: skip
    kwargs = {**{k: v for k, v in given.items() if v is not None}, **options}
    result, _ = run(model, input_ids, generation_config, kwargs, cuda_graph=cuda_graph, generator=generator,
                    compile=compile, prefill=prefill)  # fmt: skip
    return result


def run(
    model,
    input_ids,
    generation_config,
    kwargs: dict,
    *,
    cuda_graph=None,
    generator=None,
    compile=False,
    prefill: str = "batch",
):
    """One ``generate(input_ids, generation_config=..., **kwargs)`` call served by the fixed-buffer loop:
    (DecodeResult, the generation config ``generate`` prepared). Raises ValueError as :func:`fast_generate`."""
    _check_ids(input_ids)
    mask = kwargs.get("attention_mask")
    if mask is not None and (not isinstance(mask, torch.Tensor) or mask.shape != input_ids.shape):
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(
            f"attention_mask must be a tensor of input_ids' shape {tuple(input_ids.shape)}, one value per token; "
            f"got {shape}."
        )
    if mask is not None and not bool(mask[:, -1].all()):
        raise ValueError("Pad prompts on the left (tokenizer.padding_side = 'left') for generation.")
    if prefill not in PREFILL_MODES:
        raise ValueError(f"prefill must be one of {PREFILL_MODES}, got {prefill!r}.")
    if cuda_graph and not input_ids.is_cuda:
        raise ValueError(f"cuda_graph=True captures a CUDA graph: it needs the inputs on a CUDA device, not on "
                         f"{input_ids.device.type} (None captures where CUDA is used).")  # fmt: skip
    if not (compile is None or isinstance(compile, (bool, str)) or callable(compile)):
        raise ValueError(f"compile must be True/False, a torch.compile backend name or a backend, got {compile!r}.")
    if kwargs.get("streamer") is not None and input_ids.shape[0] != 1:  # before generate hands it the prompt
        raise ValueError("A streamer follows one sequence: pass a batch of one row.")
    config, kwargs = prepare(model, generation_config, kwargs)
    seen = {}
    backend = "inductor" if compile is True else (compile or None)
    owner = swaa_owner(model)  # a peft wrapper's LoRA layers run inside it; prepare refused what else a wrapper adds
    temporary = getattr(owner, "_swaa_state", None) is None
    if temporary:
        install(owner, SWAAConfig(sliding_window_size=1), "auto", all_full=True)
    callers = bool(kwargs.get("logits_processor")) or kwargs.get("prefix_allowed_tokens_fn") is not None
    loop = functools.partial(_decode, cuda_graph=cuda_graph, generator=generator, streamer=kwargs.get("streamer"),
                             seen=seen, backend=backend, prefill=prefill, callers=callers)  # fmt: skip
    try:
        # the class's generate: the instance's is SWAA's wrapper, which would route this call back here
        result = type(owner).generate(owner, input_ids, generation_config=config, custom_generate=loop, **kwargs)
    finally:
        if temporary:
            remove_swaa(owner)
    return result, seen["config"]


def _check_ids(input_ids) -> None:
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        shape = f" of shape {tuple(input_ids.shape)}" if isinstance(input_ids, torch.Tensor) else ""
        raise ValueError(
            f"input_ids must be a (batch, tokens) tensor of token ids, got {type(input_ids).__name__}{shape}; a single "
            "sequence is ids[None]."
        )


def _decode(model, input_ids, logits_processor, stopping_criteria, generation_config, *, cuda_graph, generator,
            streamer, seen: dict, backend: str | None, prefill: str, callers: bool,
            **model_kwargs) -> DecodeResult:  # fmt: skip
    """The decoding loop ``generate`` calls with what it prepared (mirrors ``GenerationMixin._sample``). ``callers``:
    the call brought processors of its own (objects that may count their calls)."""
    seen["config"] = generation_config
    mode = generation_config.get_generation_mode()
    extra = [f"{k} (a model input this path does not pass to its steps)" for k in model_kwargs if k not in MODEL_KWARGS]
    refuse(extra + ([] if mode in LOOPS else [f"generation mode {mode.value}"]))
    if streamer is not None and input_ids.shape[0] != 1:  # the rows generate made: batch x num_return_sequences
        raise ValueError(
            f"A streamer follows one sequence; this call generates {input_ids.shape[0]} (its batch times "
            "num_return_sequences): pass one row and num_return_sequences=1."
        )
    chooser = _Chooser(input_ids, logits_processor, stopping_criteria, generation_config, generator, streamer, callers)
    use_graph = _use_graph(model, cuda_graph, input_ids.is_cuda)
    plans = model._swaa_state.plans
    # a caller's MaxLengthCriteria replaces the one generate builds from the config (_merge_criteria_processor_list)
    limit = min((c.max_length for c in stopping_criteria if isinstance(c, MaxLengthCriteria)), default=None)
    # ceil: generate stops once the length reaches max_length, a float one included (max_new_tokens=2.5: 3 tokens)
    max_new = max(math.ceil((generation_config.max_length if limit is None else limit) - input_ids.shape[1]), 1)
    mask = model_kwargs.get("attention_mask")
    backend = None if generation_config.disable_compile else backend
    if backend is not None and global_module_hooks():
        warnings.warn(
            "torch's global module hooks are set, and compiled code does not notice when they change: this call runs "
            "its prefill and decode steps eagerly (DecodeResult.compiled is False).",
            RuntimeWarning,
            stacklevel=2,
        )
        backend = None
    _refuse_buffers_beyond_free_memory(model, input_ids, max_new, backend)
    try:
        return _generate(model, plans, input_ids, mask, max_new, chooser, generation_config, use_graph=use_graph,
                         backend=backend, prefill=prefill)  # fmt: skip
    finally:
        if streamer is not None:
            streamer.end()


def _use_graph(model, cuda_graph: bool | None, on_cuda: bool) -> bool:
    """Whether the decode steps run as a captured CUDA graph: ``cuda_graph`` None captures on CUDA unless a module
    carries hooks of the caller's (a graph replays kernels only: a hook's Python, counting calls or keeping
    activations, would run once, at capture); True with such hooks is refused by name."""
    if cuda_graph is None:  # the model's modules are walked only where a graph would be captured
        return on_cuda and not foreign_hooks(model)
    if not cuda_graph:
        return False
    hooked = foreign_hooks(model)
    if hooked:
        raise ValueError(
            f"cuda_graph=True replays the decode step's kernels without running Python, so the hooks on "
            f"{', '.join(hooked[:4])}{' ...' if len(hooked) > 4 else ''} would run once, at capture, not at every "
            "token. Pass cuda_graph=None or False (each step then runs the hooks), or remove the hooks."
        )
    return True


def _refuse_buffers_beyond_free_memory(model, input_ids, max_new: int, backend) -> None:
    """ValueError before the prefill when even the least the fixed buffers can take on a device
    (:func:`.decode_path.fixed_buffers_at_least`, sized as :func:`_generate` sizes them) exceeds its free memory:
    otherwise a long prompt's forward runs first and the allocator fails after it."""
    rows, prompt = input_ids.shape
    slots = bucket_slots(prompt + max_new) if backend else prompt + max_new
    for device, need in decode_path.fixed_buffers_at_least(model, rows, slots).items():
        free = decode_path.free_bytes(device)
        if free is None or need <= free:
            continue
        grows = any(not plan.evicts or plan.kind.kept_slots() > slots for plan in model._swaa_state.plans)
        advice = ["fewer rows"] + (["fewer new tokens (max_new_tokens, or a MaxLengthCriteria's max_length)"] if grows
                                   else ["a narrower window (every layer keeps a ring whatever the length)"])  # fmt: skip
        if backend:
            advice.append(f"compile off (it rounds each full layer's {prompt + max_new} slots up to {slots})")
        raise ValueError(
            f"The fixed-buffer path sizes its buffers before the first step and they would not fit on {device}: "
            f"{rows} row(s) of {prompt} prompt + {max_new} new tokens ({slots} slots per full layer) need at least "
            f"{need:,} bytes, {free:,} bytes are free ({need / 2**30:.2f} against {free / 2**30:.2f} GiB). Ask for "
            f"{', or '.join(advice)}"
            + ("" if not grows else ", or use the eager path (model.generate(..., cache_implementation='dynamic')), "
               "whose cache grows with the tokens it makes") + "."
        )  # fmt: skip


class _Chooser:
    """Token choice and stopping after each forward, step for step as ``GenerationMixin._sample`` does them: the
    processors on the float32 copy of the last logits and the sequences so far, ``torch.multinomial(softmax(...), 1)``
    on the global RNG (or argmax), finished rows padded, ``unfinished & ~stopping_criteria(sequences, scores)``."""

    def __init__(self, input_ids, processors, criteria, config, generator, streamer, callers: bool = False):
        self.sequences, self.processors, self.criteria = input_ids, processors, criteria
        self.prompt_length = input_ids.shape[1]
        self.sample, self.pad = bool(config.do_sample), config._pad_token_tensor
        self.generator, self.streamer = generator, streamer
        self.has_eos = any(hasattr(c, "eos_token_id") for c in criteria)
        self.unfinished = torch.ones(input_ids.shape[0], dtype=torch.long, device=input_ids.device)
        keep = bool(config.return_dict_in_generate)
        self.scores = () if keep and config.output_scores else None
        self.logits = () if keep and config.output_logits else None
        self.done_at = torch.zeros((), dtype=torch.long, device=input_ids.device)  # length once every row stopped
        host = streamer is not None or any(type(c) not in DEVICE_CRITERIA for c in criteria)  # subclasses: the caller's
        # Steps past the stop that generate never runs: each draw there moves the global RNG the caller's next call
        # starts from, and the caller's own objects (a processor, even one of transformers' such as a watermark, or a
        # prefix_allowed_tokens_fn) may count their calls or keep state across them. Both need the stop seen at once.
        draws = self.sample and generator is None and self.has_eos
        own = callers or any(
            isinstance(p, CALLERS_CODE) or not type(p).__module__.startswith("transformers.") for p in processors
        )
        self.check_every = 1 if host or draws or own else CHECK_EVERY

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, V) logits of the last position -> (B,) chosen tokens, appended to ``sequences``."""
        raw = logits.to(copy=True, dtype=torch.float32)
        scores = self.processors(self.sequences, raw)
        if self.scores is not None:
            self.scores += (scores,)
        if self.logits is not None:
            self.logits += (raw,)
        if self.sample:
            probs = torch.nn.functional.softmax(scores, dim=-1)
            token = torch.multinomial(probs, num_samples=1, generator=self.generator).squeeze(1)
        else:
            token = torch.argmax(scores, dim=-1)
        if self.has_eos:
            token = token * self.unfinished + self.pad * (1 - self.unfinished)
        self.sequences = torch.cat([self.sequences, token[:, None]], dim=-1)
        self.unfinished = self.unfinished & ~self.criteria(self.sequences, self.scores)
        if self.streamer is not None:
            self.streamer.put(token.cpu())
        stopped_now = (self.done_at == 0) & (self.unfinished.max() == 0)
        self.done_at = torch.where(stopped_now, self.sequences.shape[1], self.done_at)
        return token

    def stopped(self, produced: int) -> bool:
        """Whether every row has stopped (read from the device every ``check_every`` tokens only)."""
        return produced % self.check_every == 0 and bool(self.unfinished.max() == 0)

    def result(self) -> tuple:
        """(sequences, scores, logits) up to where ``generate`` stops: the step at which every row had stopped."""
        end = int(self.done_at) or self.sequences.shape[1]
        n = end - self.prompt_length
        return self.sequences[:, :end], *(None if kept is None else kept[:n] for kept in (self.scores, self.logits))


def _prefill(model, input_ids, mask, cache, chunk: int | None) -> torch.Tensor:
    """The prompt through the SWAA kernels into ``cache``, in chunks of ``chunk`` tokens when set (as ``generate``'s
    ``prefill_chunk_size``): the last position's logits (B, V)."""
    positions = None if mask is None else (mask.long().cumsum(-1) - 1).clamp(min=0)
    T = input_ids.shape[1]
    step = chunk or T
    for start in range(0, T, step):
        end = min(T, start + step)
        logits = model(
            input_ids=input_ids[:, start:end],
            attention_mask=None if mask is None else mask[:, :end],
            position_ids=None if positions is None else positions[:, start:end],
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        ).logits
    return logits[:, -1]


def _refuse_masked_tokens_inside(mask: torch.Tensor) -> None:
    """ValueError for a (B, T) mask that masks a token after a row's first real one: row prefill places each row's
    keys at real position + left padding, true only when every masked token is left padding."""
    inside = masked_inside_rows(mask)
    if bool(inside.any()):
        rows = inside.nonzero().flatten().tolist()
        raise ValueError(
            f"prefill='row' takes prompts padded on the left only; the attention mask of row(s) {rows} masks tokens "
            "inside the prompt (generate masks every pad token a prompt holds when no attention_mask is given). Pass "
            "prefill='batch', or an attention_mask that keeps those tokens."
        )


def _prefill_rows(model, plans, input_ids, mask, chunk: int | None, max_slots: int):
    """Each row's prompt through the SWAA kernels alone, moved into the batch's fixed buffers before the next row
    runs, the most padded row first (its cache's geometry is the batch's: StaticSWAACache.for_rows): ((B, V)
    last-position logits in row order, the filled StaticSWAACache)."""
    B, T = input_ids.shape
    pads = torch.zeros(B, dtype=torch.long) if mask is None else T - mask.long().sum(-1).cpu()
    static, logits = None, [None] * B
    for b in pads.argsort(descending=True, stable=True).tolist():
        row_mask = None if mask is None else mask[b : b + 1]
        cache = DynamicCache(config=model.config)
        logits[b] = _prefill(model, input_ids[b : b + 1], row_mask, cache, chunk)
        row = StaticSWAACache.from_dynamic(cache, plans, row_mask, max_slots)
        del cache
        static = row.for_rows(B) if static is None else static
        static.put_row(b, row, int(pads[b]))
        del row
    return torch.cat(logits), static


def _generate(model, plans, input_ids, mask, max_new: int, choose: _Chooser, config, *, use_graph: bool, backend,
              prefill: str = "batch"):  # fmt: skip
    B, T = input_ids.shape
    device = input_ids.device
    slots = bucket_slots(T + max_new) if backend else T + max_new
    start = _now(device)
    if prefill == "row" and mask is not None:
        _refuse_masked_tokens_inside(mask)
    scope = compile_scope(fail=False) if backend else contextlib.nullcontext()  # the norms' eager fallback is exact
    with scope, fused_elementwise(model, prefill_backend(backend)):
        if prefill == "row":  # each row moves into the fixed buffers as it is prefilled
            logits, cache = _prefill_rows(model, plans, input_ids, mask, config.prefill_chunk_size, slots)
        else:
            cache = DynamicCache(config=model.config)
            logits = _prefill(model, input_ids, mask, cache, config.prefill_chunk_size)
    ids = choose(logits).view(B, 1).clone()
    stopped = choose.stopped(1)
    prefill_s = _now(device) - start
    if max_new == 1 or stopped:
        return DecodeResult(*_finish(choose, prefill_s, 0.0, 0.0, 0, False, tuple(kv_cache_bytes(cache))))
    start = _now(device)
    static = cache if prefill == "row" else StaticSWAACache.from_dynamic(cache, plans, mask, slots)
    del cache
    held = tuple(kv_cache_bytes(static))
    clock = static.clock
    forward = model
    if backend:
        forward = compiled_forward(model, backend)
        bind(model, static)

    def step() -> torch.Tensor:
        nonlocal forward
        inputs = dict(input_ids=ids, position_ids=clock.positions, past_key_values=static, use_cache=True)
        if forward is model:
            logits = model(**inputs).logits
        else:
            try:
                with compile_scope(fail=True):
                    logits = forward(**inputs).logits
            except Exception as e:  # raised before the step ran: nothing was written
                if not recompile_limit_hit(e):
                    raise
                _warn_compile_limit()
                forward = model
                logits = model(**inputs).logits
        clock.advance()
        return logits[:, -1]

    def take(logits: torch.Tensor, i: int) -> bool:
        """Choose token i, feed it back for the next step; whether every row has stopped (checked now and then)."""
        ids.copy_(choose(logits).view(B, 1))
        clock.seen += 1
        return choose.stopped(i + 1)

    i = 1
    graph = None
    if (use_graph or backend) and max_new > WARMUP_STEPS + 2:  # compiling happens here, in setup_s
        side = torch.cuda.Stream(device) if use_graph else None
        if side is not None:
            side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
            for _ in range(WARMUP_STEPS):
                stopped = take(step(), i)
                i += 1
                if stopped:
                    break
        if side is not None:
            torch.cuda.current_stream(device).wait_stream(side)
        if use_graph and not stopped:
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
    decode = _now(device) - start
    return DecodeResult(
        *_finish(choose, prefill_s, setup, decode, steps, graph is not None, held), forward is not model
    )


def _warn_compile_limit() -> None:
    warnings.warn(
        f"torch.compile holds {COMPILED_RECOMPILE_LIMIT} compiled decode steps in this process (models, buckets and "
        "batch sizes together); new ones run the eager fixed-buffer step (the same tokens, slower; DecodeResult."
        "compiled is False). Restart the process to reset.",
        RuntimeWarning,
        stacklevel=4,
    )


def _finish(choose: _Chooser, *timings) -> tuple:
    sequences, scores, logits = choose.result()
    return (sequences, *timings, scores, logits)


def _now(device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def generate_static(model, args: tuple, kwargs: dict):
    """``model.generate(..., cache_implementation="static")`` under SWAA: the same call served by the fixed-buffer
    loop (:func:`run`). Returns what ``generate`` would: the sequences, or a ``GenerateDecoderOnlyOutput`` with
    ``sequences`` (and ``scores`` / ``logits`` when asked; ``past_key_values`` None: the fixed buffers cannot be
    continued) when ``return_dict_in_generate``. Raises ValueError naming any option this path cannot honour, and
    as ``generate`` does for invalid lengths or options."""
    from transformers.generation.utils import GenerateDecoderOnlyOutput

    kwargs = by_keyword(args, kwargs)
    input_ids = kwargs.pop("inputs", None)
    input_ids = kwargs.pop("input_ids", None) if input_ids is None else input_ids
    if input_ids is None:
        raise ValueError("SWAA's fixed-buffer decoder needs the prompt's token ids (inputs or input_ids).")
    result, config = run(model, input_ids, kwargs.pop("generation_config", None), kwargs)
    if config.return_dict_in_generate:
        return GenerateDecoderOnlyOutput(sequences=result.sequences, scores=result.scores, logits=result.logits)
    return result.sequences
