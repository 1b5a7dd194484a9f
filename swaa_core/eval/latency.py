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
from ..engine.decode_path import EAGER_WORDS, FIXED_WORDS, DecodePath
from .decoding import (  # noqa: F401 - the names callers know from here
    Decoder,
    decode_kernels,
    greedy_generation_config,
    shared_cache,
    without_eos,
)
from .harness import CancelCriteria, ContextOverflowError, check_context, error_text
from .timing import DEFAULT_TIMING_TOKENS, MIN_DECODE_TOKENS, pin_threads, remember_start_threads

remember_start_threads()  # before a library or a worker thread changes it: every timed path pins this count

TOO_FEW = "too few tokens to compare"
DYNAMIC_CACHE, FIXED_BUFFERS = EAGER_WORDS, FIXED_WORDS  # the decode paths in the words of tables and plots


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
    decode_path: str = EAGER_WORDS  # the path that ran, in words (Route.words())
    runs_ms_per_token: list[float] = field(default_factory=list)  # every repeat, in turn order: the spread
    threads: int = 0  # torch intra-op threads it was timed with (timing.pin_threads)
    setup_s: float = 0.0  # fixed buffers only: median first-call cost (buffers, warm-up steps, graph capture)
    decode_reason: str = ""  # why that path ran (Route.reason)

    @property
    def tokens_per_s(self) -> float:
        return 1000.0 / self.ms_per_token if self.ms_per_token else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "tokens_per_s": self.tokens_per_s}


@dataclass(frozen=True)
class PathTiming:
    """One timed generation: ``timing`` covers the first token and the steady decode steps after it; on the fixed
    path the setup between them (buffers, warm-up steps, graph capture) is ``setup_s``, outside the steps' time.
    ``kv_cache_bytes``: held at the end; ``decode_path``: the path in words (:meth:`Route.words`)."""

    timing: DecodeTiming
    kv_cache_bytes: int
    setup_s: float
    decode_path: str


def time_decode(model, input_ids, config: SWAAConfig | None, new_tokens: int, *, backend: str = "auto",
                cancel: threading.Event | None = None, decoder: Decoder | None = None) -> PathTiming:  # fmt: skip
    """Generate greedily after ``input_ids`` (1, T) (EOS ignored) under ``config`` on ``decoder``'s path (None: the
    eager path) and time ``new_tokens`` decode steps after the first token (``timing.decode_tokens == new_tokens``
    unless cancelled). The eager path is timed from a streamer's token times; the fixed path by its own device
    synchronisations (no host read per token unless ``cancel`` is given), with its capture warm-up steps added on
    CUDA so that ``new_tokens`` steady steps are still timed."""
    decoder = decoder or Decoder.for_device(DecodePath.EAGER, input_ids.device)
    criteria = StoppingCriteriaList([CancelCriteria(cancel)] if cancel is not None else [])
    if decoder.fixed:
        from ..engine.fast_decode import WARMUP_STEPS

        warm = WARMUP_STEPS if input_ids.is_cuda and new_tokens > 1 else 0  # fast_generate captures only then
        out = decoder.generate(model, input_ids, config, max_new_tokens=new_tokens + 1 + warm, backend=backend,
                               criteria=criteria)  # fmt: skip
        timing = DecodeTiming(out.decode_steps + 1, out.prefill_s, out.prefill_s + out.decode_s)
    else:
        clock = TokenClock()
        start = time.perf_counter()
        out = decoder.generate(model, input_ids, config, max_new_tokens=new_tokens + 1, backend=backend,
                               streamer=clock, criteria=criteria)  # fmt: skip
        timing = DecodeTiming.from_times(start, clock.times, new_tokens + 1)
    return PathTiming(timing, int(sum(out.kv_cache_bytes_per_layer)), out.setup_s, out.words)


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
    decode_path: DecodePath | str | None = None,
    static_cache: bool | None = None,
) -> list[DecodePoint]:
    """Decode speed (ms per token over ``new_tokens`` steps) of every config at every prompt length.

    ``loaded``: what :func:`swaa_core.load_model` returns (or an object with ``.model``; ``.lock`` is held while
    timing). ``configs``: {label: config or None for full attention}. Prompts are random token ids (the speed does
    not depend on the text); each length is measured ``repeats`` times with the configs taking turns, so drift
    of a busy machine spreads over all of them. One untimed warm-up generation per config comes first. A length
    the model's context cannot hold, or that runs out of memory, becomes that point's ``error``; a cancel returns
    the points finished so far. ``decode_path`` (:class:`~swaa_core.engine.decode_path.DecodePath` or its name;
    None: auto, the fixed-buffer decoder on CUDA) is the path every config, full attention included, is timed on
    (each point's ``decode_path``, ``decode_reason`` and ``setup_s`` say which and why); ``static_cache``, the older
    spelling, True: fixed, False: eager. Raises ValueError for bad settings, or for the fixed path where it cannot
    run.
    Returns one :class:`DecodePoint` per (length, config), lengths in the given order.
    """
    from ..models.memory import check_run_fits

    model = getattr(loaded, "model", loaded)
    lock = getattr(loaded, "lock", None) or contextlib.nullcontext()
    configs = {label: SWAAConfig.coerce(c, f"config {label!r}") for label, c in configs.items()}
    if not configs:
        raise ValueError("configs is empty: give at least one {label: config}.")
    if not isinstance(new_tokens, int) or new_tokens < 1 or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"new_tokens and repeats must be whole numbers >= 1, got {new_tokens!r} and {repeats!r}.")
    lengths = [int(n) for n in lengths]
    if not lengths or min(lengths) < 1:
        raise ValueError(f"lengths must be positive token counts, got {lengths!r}.")
    device = next(model.parameters()).device
    decoder = Decoder.for_device(DecodePath.of(decode_path, static_cache=static_cache), device)
    info = getattr(loaded, "info", None)
    vocab = model.config.get_text_config(decoder=True).vocab_size
    threads = pin_threads()
    gen = torch.Generator().manual_seed(seed)
    points: list[DecodePoint] = []
    warm: set[str] = set()

    for n in lengths:
        ids = torch.randint(min(10, vocab - 1), vocab, (1, n), generator=gen).to(device)
        row = {label: DecodePoint(label, n, new_tokens, decode_path=decoder.route.words(), threads=threads,
                                  decode_reason=decoder.route.reason)
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
                        decoder.warm_up(model, cfg, backend=backend)
                    warm.add(label)
            except Exception as exc:  # noqa: BLE001 - one failing point must not hide the others
                row[label].error = error_text(exc, device)
        for _ in range(repeats):
            for label, cfg in configs.items():
                if row[label].error is not None or (cancel is not None and cancel.is_set()):
                    continue
                try:
                    with lock:
                        out = time_decode(model, ids, cfg, new_tokens, backend=backend, cancel=cancel, decoder=decoder)
                except Exception as exc:  # noqa: BLE001
                    row[label].error = error_text(exc, device)
                    continue
                row[label].kv_cache_bytes = out.kv_cache_bytes
                if out.timing.decode_tokens == new_tokens:  # a cancelled run is not a measurement
                    runs[label].append(out.timing)
                    setups[label].append((out.setup_s, out.decode_path))
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
