"""Run one prompt or task sample under several SWAA configs side by side, with honest metrics.

Every run is greedy (deterministic), preceded by a warm-up that is not timed, and measured from the moment the
prompt is handed to the tokenizer: time to first token, prefill time (the first forward pass, timed by hooks),
decode tokens/s, total latency, peak memory, the KV cache actually held at the end, and token counts. Tokens
stream through ``on_token``; a ``threading.Event`` cancels a run between layers or decode steps. Failures (a
prompt longer than the context, out of memory, a config the model cannot take) come back as ``RunResult.error``.

Like for like: the answer is the model's natural greedy answer (up to EOS or ``max_new_tokens``), but every run
goes on generating, unseen, until it has made at least ``timing_tokens`` tokens; decode speed and
``timed_total_s`` come from exactly the first ``timing_tokens`` tokens, the same work in every compared run (see
:mod:`swaa_core.eval.latency`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from transformers import StoppingCriteriaList

from ..engine.config import SWAAConfig
from ..engine.families import attention_modules, native_windows
from ..models.memory import check_run_fits
from ..runtime.distributed import Launch
from .cot import render_prompt, split_reasoning
from .decoding import Decoder, greedy_generation_config, without_eos
from .harness import (
    UNMEASURED_BEFORE_FIRST_TOKEN,
    AnswerStreamer,
    CancelCriteria,
    PeakMemory,
    RunCancelled,
    check_context,
    error_text,
    not_measured,
    stopped_after_tokens,
)
from .latency import AnswerThenBudget, DecodeTiming
from .run_spec import RunSpec, check_keywords
from .scoring import answer_loglik, reference_text, score_sample
from .tasks import TaskSample, count_tokens, needle_distance, run_meta
from .tasks.base import decode_whole
from .timing import pin_threads

log = logging.getLogger(__name__)
BASELINE_LABEL = "Full attention"


@dataclass
class RunResult:
    label: str
    config: dict | None
    output_text: str = ""
    answer_text: str = ""
    reasoning_text: str = ""
    correct: bool | None = None
    answer_logprob: float | None = None  # log P(reference | prompt), teacher-forced under this config
    prompt_tokens: int = 0  # tokens the model read (chat template and answer prefix included)
    generated_tokens: int = 0
    # figures a stopped run did not measure are None (shown as "–", never as 0)
    ttft_s: float | None = 0.0
    prefill_s: float | None = 0.0
    decode_tokens_per_s: float | None = 0.0  # over the first `timed_tokens` generated tokens (decode_tokens steps)
    total_s: float | None = 0.0  # prompt handed over -> last token of the answer (runs of unequal lengths differ)
    peak_memory_bytes: int | None = 0  # process RSS high-water on CPU, max allocated on CUDA, during the run
    kv_cache_bytes: int | None = 0
    backend: str = ""
    error: str | None = None
    # beyond the contract
    timed_tokens: int = 0  # generated tokens the timing covers, the first included: equal for every compared run
    decode_tokens: int = 0  # decode steps the decode speed comes from (timed_tokens - 1)
    timed_total_s: float | None = 0.0  # prompt handed over -> token number `timed_tokens`: comparable across runs
    timing_extra_tokens: int = 0  # tokens generated past the answer only to reach `timed_tokens` (not shown)
    decode_path: str = ""  # the path that ran, in words: "dynamic cache" (eager) or "fixed buffers" (+ " + CUDA graph")
    decode_reason: str = ""  # why it ran (engine.decode_path.resolve), e.g. "fixed-buffer: CUDA, batch 1, greedy"
    setup_s: float | None = 0.0  # fixed buffers only: their first-call cost (buffers, warm-up steps, graph capture),
    # spent between the first generated token and the steady steps: inside timed_total_s, not the decode speed
    memory_delta_bytes: int | None = 0  # peak minus what was held when the run started (activations + KV cache)
    kv_cache_bytes_per_layer: list[int] = field(default_factory=list)
    answer_logprob_tokens: int = 0
    reasoning_tokens: int = 0  # the extra tokens CoT costs
    reasoning_s: float = 0.0  # the time those tokens took at this run's decode speed
    cot: bool = False
    cancelled: bool = False
    reference: str | list[str] | None = None
    notes: list[str] = field(default_factory=list)
    device: str = ""
    threads: int = 0  # torch intra-op threads the run was timed with (timing.pin_threads)
    meta: dict[str, Any] = field(default_factory=dict)  # task, depth, seed, ... of the sample

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def answer_logprob_per_token(self) -> float | None:
        if self.answer_logprob is None or not self.answer_logprob_tokens:
            return None
        return self.answer_logprob / self.answer_logprob_tokens

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["answer_logprob_per_token"] = self.answer_logprob_per_token
        return out


# ---------------------------------------------------------------------- the model side


@dataclass(frozen=True)
class _Model:
    """What a run needs of a loaded model: the model, its tokenizer, its info (context length), the lock that keeps
    one run at a time on it, and the device its parameters live on."""

    model: Any
    tokenizer: Any
    info: Any
    lock: Any
    device: torch.device

    @classmethod
    def of(cls, loaded) -> _Model:
        model = getattr(loaded, "model", None)
        tokenizer = getattr(loaded, "tokenizer", None)
        if model is None and isinstance(loaded, (tuple, list)) and len(loaded) == 2:
            model, tokenizer = loaded
        if model is None or tokenizer is None:
            raise TypeError("Pass the object returned by swaa_core.load_model() (it has .model and .tokenizer).")
        device = next(model.parameters()).device
        return cls(model, tokenizer, getattr(loaded, "info", None), getattr(loaded, "lock", None), device)

    def generation_config(self, max_new_tokens: int):
        return greedy_generation_config(self.model, max_new_tokens, self.tokenizer.pad_token_id)


def _warm_up(m: _Model, config: SWAAConfig | None, backend: str, decoder: Decoder) -> None:
    """One short untimed generation per (config, backend, decode path) (:meth:`Decoder.warm_up`)."""
    key = (None if config is None else config.to_json(), backend, decoder.route.path)
    done = m.model.__dict__.setdefault("_swaa_runner_warm", set())
    if key not in done:
        decoder.warm_up(m.model, config, backend=backend)
        done.add(key)


# ---------------------------------------------------------------------- public API


def run_one(
    loaded,
    sample_or_prompt: TaskSample | str,
    config: SWAAConfig | dict | None,
    *,
    label: str | None = None,
    on_token: Callable[[str], None] | None = None,
    cancel: threading.Event | None = None,
    spec: RunSpec | None = None,
    **settings,
) -> RunResult:
    """Generate greedily for one prompt under ``config`` (None: full attention) and measure the run.

    ``sample_or_prompt``: a :class:`TaskSample` (scored against its answer, with its answer prefix pre-filled) or
    plain user text (not scored). How it runs is ``spec`` (:class:`~swaa_core.eval.run_spec.RunSpec`), or the same
    settings as keywords: ``max_new_tokens`` (32), ``cot``, ``system``, ``backend`` ("auto"), ``warmup``,
    ``score_logprob``, ``timing_tokens``, ``decode_path`` and its older spelling ``static_cache`` (meanings there).
    ``decode_path`` "auto" takes the fixed-buffer decoder on CUDA and
    :data:`~swaa_core.engine.decode_path.CPU_DEFAULT` on a CPU; the result's ``decode_path`` and ``decode_reason``
    say which ran and why; full attention and every SWAA configuration resolve the same path on the same device.
    Tokens stream through ``on_token``; ``cancel`` stops the run between layers or decode steps.

    TypeError for a keyword that is no setting (or settings beside ``spec``); every other failure, a bad setting
    value included, comes back as the result's ``error``.
    """
    check_keywords(spec, settings)
    sample = sample_or_prompt if isinstance(sample_or_prompt, TaskSample) else None
    config = SWAAConfig.coerce(config)
    if config is not None and config.is_full_attention:
        config = None
    result = RunResult(
        label=label or (BASELINE_LABEL if config is None else config.describe()),
        config=None if config is None else config.to_dict(),
        reference=sample.answer if sample is not None and sample.references else None,
        meta=run_meta(sample),
    )
    try:
        spec = RunSpec.of(spec, **settings)
        result.cot = spec.cot
        m = _Model.of(loaded)
        result.device = str(m.device)
        with m.lock if m.lock is not None else contextlib.nullcontext():
            _run(m, sample_or_prompt, config, spec, result, _Watch(on_token, cancel))
    except RunCancelled:  # raised only before the first token: once tokens stream, a stop ends between steps
        result.cancelled = True
        result.error = "Cancelled before the first token."
        not_measured(result, *UNMEASURED_BEFORE_FIRST_TOKEN)
    except Exception as exc:  # every failure becomes a readable result: the app shows it in the run's column
        log.debug("run %r failed", result.label, exc_info=True)
        result.error = error_text(exc, torch.device(result.device or "cpu"))
    return result


@dataclass(frozen=True)
class _Watch:
    """What watches a run without shaping it: where its tokens stream, and the event that stops it."""

    on_token: Callable[[str], None] | None = None
    cancel: threading.Event | None = None

    @property
    def cancelled(self) -> bool:
        return self.cancel is not None and self.cancel.is_set()


def _run(m: _Model, target: TaskSample | str, config: SWAAConfig | None, spec: RunSpec, result: RunResult,
         watch: _Watch) -> None:  # fmt: skip
    sample = target if isinstance(target, TaskSample) else None
    user_text = sample.prompt if sample is not None else target
    if not isinstance(user_text, str):
        raise TypeError(f"Expected a TaskSample or prompt text, got {type(target).__name__}.")
    if watch.cancelled:
        raise RunCancelled
    if config is not None:
        config.validate(len(attention_modules(m.model)))
    result.threads = pin_threads()  # the same threads in the main thread, a Gradio worker or a run's own thread
    decoder = Decoder.for_device(spec.decode_path, m.device)
    result.decode_path, result.decode_reason = decoder.route.words(), decoder.route.reason
    if spec.warmup:
        _warm_up(m, config, spec.backend, decoder)
    prefix = sample.answer_prefix if sample is not None else ""

    t0 = time.perf_counter()
    rendered = render_prompt(m.tokenizer, user_text, cot=spec.cot, answer_prefix=prefix, system=spec.system)
    ids = m.tokenizer(rendered, add_special_tokens=False, return_tensors="pt")["input_ids"].to(m.device)
    budget = _plan(m, ids.shape[1], config, spec, result)
    if sample is not None:
        distance = needle_distance(m.tokenizer, rendered, sample)
        if distance is not None:
            result.meta["needle_distance"] = distance
    _generate(m, ids, config, spec, result, watch, t0=t0, budget=budget, decoder=decoder)
    result.reasoning_text, result.answer_text = split_reasoning(result.output_text, marker=spec.cot)
    if result.reasoning_text:
        result.reasoning_tokens = count_tokens(m.tokenizer, result.reasoning_text)
        if result.decode_tokens_per_s:
            result.reasoning_s = result.reasoning_tokens / result.decode_tokens_per_s
    if sample is not None:
        result.correct = score_sample(result.answer_text, sample)
        if spec.score_logprob and sample.references and not result.cancelled:
            plain = render_prompt(m.tokenizer, user_text, cot=False, answer_prefix=prefix, system=spec.system)
            lik = answer_loglik(m.model, m.tokenizer, plain, reference_text(sample), config)
            result.answer_logprob, result.answer_logprob_tokens = lik.logprob, lik.tokens


def _plan(m: _Model, n_prompt: int, config: SWAAConfig | None, spec: RunSpec, result: RunResult) -> int:
    """Check that the run fits the context and the memory before it starts; return its timing budget in tokens."""
    result.prompt_tokens = n_prompt
    limit = check_context(m.model, n_prompt, spec.max_new_tokens, info=m.info)
    budget = spec.timing_tokens if limit is None else min(spec.timing_tokens, limit - n_prompt)
    check_run_fits(m.model, n_prompt + max(spec.max_new_tokens, budget), config)  # refuse now, not mid-way
    if config is not None:
        result.notes = config.notes(n_prompt, native_windows=native_windows(m.model))
    return budget


def _generate(m: _Model, ids, config: SWAAConfig | None, spec: RunSpec, result: RunResult, watch: _Watch, *,
              t0: float, budget: int, decoder: Decoder):  # fmt: skip
    """The timed generation on ``decoder``'s path: streams the answer, measures it into ``result`` and decodes its
    text."""
    n_prompt = ids.shape[1]
    eos = without_eos(m.generation_config(1))  # AnswerThenBudget finds the answer's end and lets the timing run on
    streamer = AnswerStreamer(m.tokenizer, watch.on_token, eos=eos, max_new_tokens=spec.max_new_tokens)
    criteria = [AnswerThenBudget(n_prompt, spec.max_new_tokens, budget, eos)]
    criteria = StoppingCriteriaList(criteria + ([CancelCriteria(watch.cancel)] if watch.cancel is not None else []))
    with PeakMemory(m.device) as memory:
        # the fixed path times its own prefill (a captured step must not synchronise), the eager one by a timer; a
        # stop ends the prefill between layers until the first token, then between steps (the stopping criteria)
        out = decoder.generate(m.model, ids, config, max_new_tokens=max(spec.max_new_tokens, budget),
                               backend=spec.backend, streamer=streamer, criteria=criteria, cancel=watch.cancel,
                               until=lambda: streamer.first_token_at, time_prefill=True)  # fmt: skip
    t_end = time.perf_counter()
    result.backend, result.decode_path, result.setup_s = out.backend, out.words, out.setup_s

    sequences = out.sequences
    new_ids = sequences[0, n_prompt : n_prompt + streamer.answer_tokens]
    result.generated_tokens = int(new_ids.numel())
    result.timing_extra_tokens = int(sequences.shape[1] - n_prompt) - result.generated_tokens
    result.output_text = decode_whole(m.tokenizer, new_ids)  # a token limit may stop inside a character
    per_layer = list(out.kv_cache_bytes_per_layer)
    result.kv_cache_bytes_per_layer, result.kv_cache_bytes = per_layer, int(sum(per_layer))
    result.peak_memory_bytes, result.memory_delta_bytes = int(memory.peak), int(memory.delta)
    _set_times(result, t0, streamer.times, budget or result.generated_tokens)
    if decoder.fixed and out.decode_steps:
        # the fixed-buffer decoder moves the cache and captures its graph between two tokens: its own replay
        # timing keeps that one-off setup (reported as setup_s) out of the decode speed
        result.decode_tokens, result.decode_tokens_per_s = out.decode_steps, out.tokens_per_s
    result.prefill_s = out.prefill_s if out.prefill_s is not None else result.ttft_s
    result.total_s = (streamer.times[result.generated_tokens - 1] if result.generated_tokens else t_end) - t0
    if watch.cancelled:
        stopped_after_tokens(result)


def _set_times(result: RunResult, t0: float, times: list[float], tokens: int) -> None:
    """Time to first token, and decode speed and time over the first ``tokens`` generated tokens."""
    timing = DecodeTiming.from_times(t0, times, tokens)
    result.ttft_s = timing.ttft_s
    result.timed_tokens, result.decode_tokens = timing.tokens, timing.decode_tokens
    result.timed_total_s, result.decode_tokens_per_s = timing.total_s, timing.tokens_per_s


def _is_full(config) -> bool:
    if config is None:
        return True
    if isinstance(config, dict):
        return config.get("sliding_window_size") is None
    return bool(getattr(config, "is_full_attention", False))


def compare(
    loaded,
    sample_or_prompt: TaskSample | str,
    configs: dict[str, SWAAConfig | dict | None],
    *,
    on_start: Callable[[str], None] | None = None,
    on_result: Callable[[RunResult], None] | None = None,
    on_token: Callable[[str], None] | None = None,
    cancel: threading.Event | None = None,
    spec: RunSpec | None = None,
    **settings,
) -> list[RunResult]:
    """Run the full-attention baseline ("Full attention", first) and every config of ``configs`` on one prompt.

    A full-attention entry in ``configs`` is not run twice. ``on_start`` gets each run's label before it starts,
    ``on_result`` each result as it finishes. Every run is made under one :class:`RunSpec`: ``spec``, or the
    settings of :func:`run_one` as keywords. Nothing raises but a keyword that is no setting (TypeError): failures,
    bad setting values included, and cancellations are in each result's ``error``.
    """
    check_keywords(spec, settings)
    try:
        run: RunSpec | Exception = RunSpec.of(spec, **settings)
    except ValueError as exc:  # every run would fail alike: each result says why
        run = exc
    if not isinstance(configs, dict):
        return [_failed(BASELINE_LABEL, None, TypeError("configs must be a dict {label: SWAAConfig or None}."))]
    plan: list[tuple[str, Any]] = [(BASELINE_LABEL, None)]
    plan += [(label, cfg) for label, cfg in configs.items() if not _is_full(cfg)]
    results = []
    for label, cfg in plan:
        if cancel is not None and cancel.is_set():
            result = _failed(label, cfg, None)
            result.cancelled, result.error = True, "Cancelled before it started."
        else:
            if on_start is not None:
                on_start(label)
            if isinstance(run, Exception):
                result = _failed(label, cfg, run)
            else:
                try:
                    result = run_one(loaded, sample_or_prompt, cfg, label=label, on_token=on_token, cancel=cancel,
                                     spec=run)  # fmt: skip
                except Exception as exc:  # bad configs: reported per run, never raised
                    result = _failed(label, cfg, exc)
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


def _failed(label: str, cfg, exc: BaseException | None) -> RunResult:
    config = cfg.to_dict() if isinstance(cfg, SWAAConfig) else (cfg if isinstance(cfg, dict) else None)
    return RunResult(label=label, config=config, error=None if exc is None else error_text(exc, torch.device("cpu")))


def evaluate(
    loaded,
    samples: Iterable[TaskSample],
    configs: dict[str, SWAAConfig | dict | None],
    *,
    progress: bool = True,
    cancel: threading.Event | None = None,
    **kw,
) -> list[RunResult]:
    """:func:`compare` over a task set; each result's ``meta["sample_index"]`` says which sample it ran."""
    from tqdm.auto import tqdm

    samples = list(samples)
    out: list[RunResult] = []
    bar = tqdm(total=len(samples) * (1 + sum(not _is_full(c) for c in configs.values())), disable=not progress)
    try:
        for i, sample in enumerate(samples):
            for result in compare(loaded, sample, configs, cancel=cancel, on_result=lambda _r: bar.update(), **kw):
                result.meta["sample_index"] = i
                out.append(result)
    finally:
        bar.close()
    return out


def evaluate_shared(launch: Launch, loaded, samples: list[TaskSample], configs: dict, **kw) -> list[RunResult]:
    """:func:`evaluate` with the samples shared out between the processes of ``launch``
    (:func:`swaa_core.runtime.distributed.current`); every process gets all results, in the order one process would
    produce them (``meta["sample_index"]`` indexes ``samples``). Keywords go to :func:`evaluate`."""
    mine = launch.share(list(range(len(samples))))
    results = evaluate(loaded, [samples[i] for i in mine], configs, **kw)
    for result in results:
        result.meta["sample_index"] = mine[result.meta["sample_index"]]
    merged = [r for part in launch.gather(results) for r in part]
    merged.sort(key=lambda r: r.meta["sample_index"])  # stable: each sample's runs keep their config order
    return merged
