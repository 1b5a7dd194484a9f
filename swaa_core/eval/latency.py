"""Like-for-like latency: decode speed from equal token counts, and decode speed against prompt length.

Runs of one comparison stop at different points (a column that lost the needle may ramble on, another answers in
three tokens), so timing each run's own answer compares unlike things. Here every compared run is timed over the
same number of generated tokens (a timing budget, EOS ignored for the timing part only), prefill is timed on its
own, and a decode speed measured over fewer than :data:`MIN_DECODE_TOKENS` steps is labelled as such instead of
being ranked.

:func:`decode_speed_curve` measures decode tokens/s at several prompt lengths per config (full attention slows
down as its cache grows; a sliding cache stays the same size). The app and ``benchmarks/cpu_decode.py`` use it.
"""

from __future__ import annotations

import contextlib
import copy
import numbers
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from ..engine.config import SWAAConfig
from .harness import CancelCriteria, ContextOverflowError, check_context, error_text
from .timing import DEFAULT_TIMING_TOKENS, MIN_DECODE_TOKENS, pin_threads, remember_start_threads

remember_start_threads()  # before a library or a worker thread changes it: every timed path pins this count

TOO_FEW = "too few tokens to compare"
DYNAMIC_CACHE = "dynamic cache"  # transformers' generate with a growing cache (the default decode path)
FIXED_BUFFERS = "fixed buffers"  # swaa_core.fast_generate: static buffers, eager steps


def decode_path(static_cache: bool, cuda_graph: bool = False) -> str:
    """The words tables and plots use for the decode path that produced a timing."""
    if not static_cache:
        return DYNAMIC_CACHE
    return FIXED_BUFFERS + (" + CUDA graph" if cuda_graph else "")


def greedy_generation_config(model, max_new_tokens: int, pad_token_id: int | None = None):
    """The model's generation config, greedy and nothing else (sampling knobs a checkpoint ships with would only
    raise warnings), returning a dict, with a pad token."""
    gen = copy.deepcopy(model.generation_config)
    gen.update(do_sample=False, num_beams=1, temperature=None, top_p=None, top_k=None, min_p=None)
    gen.max_new_tokens = max_new_tokens
    gen.return_dict_in_generate = True
    if gen.pad_token_id is None:
        gen.pad_token_id = pad_token_id if pad_token_id is not None else gen.eos_token_id
    if gen.pad_token_id is None:
        gen.pad_token_id = 0  # only read for finished rows of a batch; batch 1 never has any
    return gen


def shared_cache(model) -> dict:
    """``generate`` keyword arguments that give every timed run, full attention included, the same kind of cache
    (:func:`swaa_core.engine.cache.growing_cache`), so decode times differ by attention only. They also override a
    checkpoint's ``cache_implementation``, which transformers refuses beside a cache object and which ("static")
    would send SWAA runs down the fixed-buffer path unasked: that path is chosen explicitly (``static_cache``)."""
    from ..engine.cache import growing_cache

    kwargs = dict(past_key_values=growing_cache(model))
    if getattr(model.generation_config, "cache_implementation", None) is not None:
        # only then: generate fills every unset option from the model's config, and warns about this keyword
        kwargs["cache_implementation"] = None
    return kwargs


@contextlib.contextmanager
def decode_kernels(model, device: torch.device | str | None = None):
    """A context for every timed ``generate`` on the growing cache: on CUDA, the decode steps (forwards of one token
    per row) of transformers' own attention run with cuDNN left out of SDPA's choice; prefill keeps it. cuDNN (SDPA's
    first choice on Hopper) builds an execution graph for every new key length: 41-55 ms of host time per decode step
    of a growing cache on an H200 (torch 2.11, docs/benchmarks.md), which made transformers' full attention 2.9x
    slower per token than a sliding window for a reason that has nothing to do with attention. Under this context
    the full-attention column's steps take the flash kernel, as SWAA's own decode step does
    (:func:`swaa_core.engine.kernels.sdpa._flash_decode`). A model running SWAA's attention is left alone: its
    dispatcher avoids new cuDNN shapes itself, and a masked step needs cuDNN for its bucketed keys. A prefill meets
    one new shape per prompt, and cuDNN's kernel is the fastest there, so prefill times stay those of SDPA's own
    choice. Not for the fixed-buffer path, whose shapes never change. A no-op off CUDA (``device``: where the model
    runs, by default ``model.device``)."""
    if torch.device(device if device is not None else model.device).type != "cuda":
        yield
        return
    from ..engine.attention import NAME
    from ..engine.families import text_config
    from ..engine.kernels.sdpa import CudnnSdpaOff

    held = False

    def per_forward(module, args, kwargs):
        nonlocal held
        tokens = kwargs.get("input_ids")
        tokens = kwargs.get("inputs_embeds") if tokens is None else tokens
        tokens = args[0] if tokens is None and args else tokens
        decode = tokens is not None and tokens.shape[1] == 1
        decode = decode and text_config(module)._attn_implementation != NAME
        if decode and not held:
            CudnnSdpaOff.acquire()
        elif held and not decode:
            CudnnSdpaOff.release()
        held = decode

    # a peft wrapper's generate calls the wrapped model's forward, never its own: the hook goes on the model that runs
    runs = model.get_base_model() if hasattr(model, "get_base_model") else model
    handle = runs.register_forward_pre_hook(per_forward, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
        if held:
            CudnnSdpaOff.release()


def without_eos(gen) -> set[int]:
    """Make ``gen`` generate past EOS tokens; return the EOS ids it had. (generate fills an eos_token_id of None
    from the model's own generation config; an empty list means none.)"""
    eos = gen.eos_token_id
    gen.eos_token_id = []
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}


class TokenClock(BaseStreamer):
    """Notes when ``generate`` hands over each generated token (``perf_counter`` seconds). generate copies every
    token to the host before handing it over, so on CUDA the time is after the device finished it."""

    def __init__(self):
        self.times: list[float] = []
        self._prompt_seen = False

    def put(self, value):
        if not self._prompt_seen:  # generate hands over the prompt first
            self._prompt_seen = True
            return
        self.times.append(time.perf_counter())

    def end(self):
        pass


class AnswerThenBudget(StoppingCriteria):
    """Stop once the natural answer has ended (an EOS token or ``max_new_tokens``) and at least ``budget`` tokens
    were generated: greedy tokens up to the first EOS are the same whether or not generation goes on after it."""

    def __init__(self, prompt_tokens: int, max_new_tokens: int, budget: int, eos: set[int]):
        self.prompt_tokens, self.max_new_tokens, self.budget, self.eos = prompt_tokens, max_new_tokens, budget, eos
        self.answer_ended = False

    def __call__(self, input_ids, scores, **kwargs):
        generated = input_ids.shape[1] - self.prompt_tokens
        if not self.answer_ended:
            self.answer_ended = generated >= self.max_new_tokens or int(input_ids[0, -1]) in self.eos
        stop = self.answer_ended and generated >= self.budget
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


@dataclass(frozen=True)
class DecodeTiming:
    """Times of one generation, in seconds from ``start``: first token, and the first ``tokens`` generated tokens."""

    tokens: int  # generated tokens covered, the first included: the decode speed comes from tokens - 1 steps
    ttft_s: float
    total_s: float  # start to the last covered token

    @property
    def decode_tokens(self) -> int:
        return max(0, self.tokens - 1)

    @property
    def decode_s(self) -> float:
        return self.total_s - self.ttft_s

    @property
    def tokens_per_s(self) -> float:
        return self.decode_tokens / self.decode_s if self.decode_tokens and self.decode_s > 0 else 0.0

    @classmethod
    def from_times(cls, start: float, times: list[float], tokens: int) -> DecodeTiming:
        tokens = min(tokens, len(times))
        if tokens == 0:
            return cls(0, 0.0, 0.0)
        return cls(tokens, times[0] - start, times[tokens - 1] - start)


# ---------------------------------------------------------------------- comparing runs


def _get(obj, name: str, default=None):
    return obj.get(name, default) if isinstance(obj, Mapping) else getattr(obj, name, default)


def decode_note(run) -> str | None:
    """Why ``run``'s decode speed must not be ranked (too few decode steps), or None. ``run``: a RunResult or a row
    with ``decode_tokens``."""
    steps = _get(run, "decode_tokens")
    steps = int(steps) if isinstance(steps, numbers.Real) and steps == steps else 0  # None or NaN: nothing timed
    if steps < MIN_DECODE_TOKENS:
        return f"{TOO_FEW} ({steps} decode step{'s' if steps != 1 else ''})"
    return None


def comparable(base, run, *, what: str = "decode") -> str | None:
    """None when ``base`` and ``run`` may be compared on ``what`` ("decode": tokens/s; "timed": time to the first
    ``timed_tokens`` tokens), else the reason in words: too few tokens, or unequal token counts."""
    key = "decode_tokens" if what == "decode" else "timed_tokens"
    for r in (base, run):
        note = decode_note(r)
        if note is not None:
            return note
    if (_get(base, key) or 0) != (_get(run, key) or 0):
        return "token counts differ"
    return None


# ---------------------------------------------------------------------- decode speed against prompt length


@dataclass
class DecodePoint:
    """Decode speed of one config at one prompt length: ``new_tokens`` decode steps after the first token, timed
    ``repeats`` times in turns with the other configs."""

    label: str
    prompt_tokens: int
    new_tokens: int
    ms_per_token: float = 0.0  # median over the repeats
    best_ms_per_token: float = 0.0
    prefill_s: float = 0.0  # median time to the first token
    kv_cache_bytes: int = 0  # held after the last repeat
    repeats: int = 0
    error: str | None = None
    decode_path: str = DYNAMIC_CACHE  # see decode_path()
    runs_ms_per_token: list[float] = field(default_factory=list)  # every repeat, in turn order: the spread
    threads: int = 0  # torch intra-op threads it was timed with (timing.pin_threads)
    setup_s: float = 0.0  # fixed buffers only: median first-call cost (buffers, warm-up steps, graph capture)

    @property
    def tokens_per_s(self) -> float:
        return 1000.0 / self.ms_per_token if self.ms_per_token else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "tokens_per_s": self.tokens_per_s}


def time_decode(model, input_ids, config: SWAAConfig | None, new_tokens: int, *, backend: str = "auto",
                cancel: threading.Event | None = None) -> tuple[DecodeTiming, int]:  # fmt: skip
    """Generate ``new_tokens + 1`` greedy tokens after ``input_ids`` (EOS ignored) under ``config``; return the timing
    (``decode_tokens == new_tokens`` unless cancelled) and the KV cache bytes held at the end."""
    from ..engine.patch import kv_cache_bytes, swaa

    gen = greedy_generation_config(model, new_tokens + 1)
    without_eos(gen)  # a fixed token count: the decode speed of every config comes from the same work
    clock = TokenClock()
    criteria = StoppingCriteriaList([CancelCriteria(cancel)] if cancel is not None else [])
    with swaa(model, config, backend=backend), decode_kernels(model):
        start = time.perf_counter()
        out = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            generation_config=gen,
            streamer=clock,
            **shared_cache(model),
            stopping_criteria=criteria,
        )
    held = int(sum(kv_cache_bytes(getattr(out, "past_key_values", None))))
    return DecodeTiming.from_times(start, clock.times, new_tokens + 1), held


@dataclass(frozen=True)
class StaticTiming:
    """One generation through the fixed-buffer decoder: ``timing`` covers the steady decode steps only (the setup
    between the first token and them is ``setup_s``), ``kv_cache_bytes`` what its buffers hold."""

    timing: DecodeTiming
    kv_cache_bytes: int
    setup_s: float
    cuda_graph: bool


def time_static_decode(model, input_ids, config: SWAAConfig | None, new_tokens: int, *, backend: str = "auto",
                       cancel: threading.Event | None = None) -> StaticTiming:  # fmt: skip
    """:func:`time_decode` through :func:`swaa_core.fast_generate` (a CUDA graph on a GPU, eager fixed-buffer
    steps on a CPU). On a GPU the decoder's warm-up steps before the capture are added, so ``new_tokens`` steps
    are still timed (``decode_tokens == new_tokens`` unless cancelled). Times come from the decoder's own device
    synchronisations (no host read per token unless ``cancel`` is given)."""
    from ..engine.fast_decode import WARMUP_STEPS, fast_generate
    from ..engine.patch import swaa

    warm = WARMUP_STEPS if input_ids.is_cuda and new_tokens > 1 else 0  # fast_generate captures only then
    criteria = StoppingCriteriaList([CancelCriteria(cancel)] if cancel is not None else [])
    with swaa(model, config, backend=backend):
        out = fast_generate(model, input_ids, max_new_tokens=new_tokens + 1 + warm, eos_token_id=[],
                            stopping_criteria=criteria)  # fmt: skip
    timing = DecodeTiming(out.decode_steps + 1, out.prefill_s, out.prefill_s + out.decode_s)
    return StaticTiming(timing, int(sum(out.kv_cache_bytes_per_layer)), out.setup_s, out.cuda_graph)


def decode_speed_curve(
    loaded,
    configs: Mapping[str, SWAAConfig | dict | None],
    lengths: Iterable[int],
    *,
    new_tokens: int = DEFAULT_TIMING_TOKENS,
    repeats: int = 1,
    backend: str = "auto",
    cancel: threading.Event | None = None,
    on_point: Callable[[DecodePoint], None] | None = None,
    seed: int = 0,
    static_cache: bool = False,
) -> list[DecodePoint]:
    """Decode speed (ms per token over ``new_tokens`` steps) of every config at every prompt length.

    ``loaded``: what :func:`swaa_core.load_model` returns (or an object with ``.model``; ``.lock`` is held while
    timing). ``configs``: {label: config or None for full attention}. Prompts are random token ids (the speed does
    not depend on the text); each length is measured ``repeats`` times with the configs taking turns, so drift
    of a busy machine spreads over all of them. One untimed warm-up generation per config comes first. A length
    the model's context cannot hold, or that runs out of memory, becomes that point's ``error``; a cancel returns
    the points finished so far. ``static_cache`` times every config through the fixed-buffer decoder
    (:func:`time_static_decode`; each point's ``decode_path`` and ``setup_s`` say so) instead of ``generate``.
    Returns one :class:`DecodePoint` per (length, config), lengths in the given order.
    """
    from ..models.memory import check_run_fits

    model = getattr(loaded, "model", loaded)
    lock = getattr(loaded, "lock", None) or contextlib.nullcontext()
    configs = {label: SWAAConfig.from_dict(c) if isinstance(c, dict) else c for label, c in configs.items()}
    if not configs:
        raise ValueError("configs is empty: give at least one {label: config}.")
    if not isinstance(new_tokens, int) or new_tokens < 1 or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"new_tokens and repeats must be whole numbers >= 1, got {new_tokens!r} and {repeats!r}.")
    lengths = [int(n) for n in lengths]
    if not lengths or min(lengths) < 1:
        raise ValueError(f"lengths must be positive token counts, got {lengths!r}.")
    device = next(model.parameters()).device
    info = getattr(loaded, "info", None)
    vocab = model.config.get_text_config(decoder=True).vocab_size
    threads = pin_threads()
    gen = torch.Generator().manual_seed(seed)
    points: list[DecodePoint] = []
    warm: set[str] = set()

    def measure(ids, cfg, steps, stop) -> tuple[DecodeTiming, int, tuple[float, str]]:
        """(timing, KV bytes held, (setup seconds, decode path)) of one generation on the chosen path."""
        if not static_cache:
            timing, held = time_decode(model, ids, cfg, steps, backend=backend, cancel=stop)
            return timing, held, (0.0, DYNAMIC_CACHE)
        out = time_static_decode(model, ids, cfg, steps, backend=backend, cancel=stop)
        return out.timing, out.kv_cache_bytes, (out.setup_s, decode_path(True, out.cuda_graph))

    for n in lengths:
        ids = torch.randint(min(10, vocab - 1), vocab, (1, n), generator=gen).to(device)
        row = {label: DecodePoint(label, n, new_tokens, decode_path=decode_path(static_cache), threads=threads)
               for label in configs}  # fmt: skip
        runs: dict[str, list[DecodeTiming]] = {label: [] for label in configs}
        setups: dict[str, list[tuple[float, str]]] = {label: [] for label in configs}
        for label, cfg in configs.items():
            try:
                try:
                    check_context(model, n, new_tokens + 1, info=info)
                except ContextOverflowError as e:  # the runner's rule, worded for one point of the curve
                    raise ValueError(
                        f"{n:,} + {new_tokens + 1} tokens exceed the model's {e.limit:,}-token context."
                    ) from None
                check_run_fits(model, n + new_tokens + 1, cfg)
                if label not in warm and not (cancel is not None and cancel.is_set()):
                    with lock:
                        measure(ids[:, : min(n, 320)], cfg, 4 if static_cache else 2, None)
                    warm.add(label)
            except Exception as exc:  # noqa: BLE001 - one failing point must not hide the others
                row[label].error = error_text(exc, device)
        for _ in range(repeats):
            for label, cfg in configs.items():
                if row[label].error is not None or (cancel is not None and cancel.is_set()):
                    continue
                try:
                    with lock:
                        timing, row[label].kv_cache_bytes, setup = measure(ids, cfg, new_tokens, cancel)
                except Exception as exc:  # noqa: BLE001
                    row[label].error = error_text(exc, device)
                    continue
                if timing.decode_tokens == new_tokens:  # a cancelled run is not a measurement
                    runs[label].append(timing)
                    setups[label].append(setup)
        for label, point in row.items():
            per_token = [1000.0 * t.decode_s / t.decode_tokens for t in runs[label]]
            if per_token:
                point.ms_per_token, point.best_ms_per_token = statistics.median(per_token), min(per_token)
                point.prefill_s = statistics.median(t.ttft_s for t in runs[label])
                point.repeats, point.runs_ms_per_token = len(per_token), per_token
                point.setup_s = statistics.median(s for s, _ in setups[label])
                point.decode_path = setups[label][-1][1]
            elif point.error is None:
                point.error = "Cancelled."
            points.append(point)
            if on_point is not None:
                on_point(point)
        if cancel is not None and cancel.is_set():
            break
    return points
