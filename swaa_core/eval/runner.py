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
import math
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextStreamer

from ..engine.config import SWAAConfig, SWAAConfigError
from ..engine.patch import attention_modules, kv_cache_bytes, native_windows, swaa
from ..models.memory import check_run_fits
from .cot import render_prompt, split_reasoning
from .latency import (
    DEFAULT_TIMING_TOKENS,
    AnswerThenBudget,
    DecodeTiming,
    greedy_generation_config,
    without_eos,
)
from .scoring import answer_loglik, reference_text, score_sample
from .tasks import TaskSample, count_tokens

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
    ttft_s: float = 0.0
    prefill_s: float = 0.0
    decode_tokens_per_s: float = 0.0  # over the first `timed_tokens` generated tokens (decode_tokens steps)
    total_s: float = 0.0  # prompt handed over -> last token of the answer (runs of unequal lengths differ here)
    peak_memory_bytes: int = 0  # process RSS high-water on CPU, max allocated on CUDA, during the run
    kv_cache_bytes: int = 0
    backend: str = ""
    error: str | None = None
    # beyond the contract
    timed_tokens: int = 0  # generated tokens the timing covers, the first included: equal for every compared run
    decode_tokens: int = 0  # decode steps the decode speed comes from (timed_tokens - 1)
    timed_total_s: float = 0.0  # prompt handed over -> token number `timed_tokens`: comparable across runs
    timing_extra_tokens: int = 0  # tokens generated past the answer only to reach `timed_tokens` (not shown)
    memory_delta_bytes: int = 0  # peak minus what was held when the run started (activations + KV cache)
    kv_cache_bytes_per_layer: list[int] = field(default_factory=list)
    answer_logprob_tokens: int = 0
    reasoning_tokens: int = 0  # the extra tokens CoT costs
    reasoning_s: float = 0.0  # the time those tokens took at this run's decode speed
    cot: bool = False
    cancelled: bool = False
    reference: str | list[str] | None = None
    notes: list[str] = field(default_factory=list)
    device: str = ""
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


class RunCancelled(Exception):
    """Raised inside the model's forward pass to stop a prefill that the user cancelled."""


# ---------------------------------------------------------------------- measuring helpers


class _Streamer(TextStreamer):
    """Decodes the answer's tokens into text pieces for ``on_token``, notes when each generated token arrived, and
    stays silent for tokens generated past the answer (EOS or ``max_new_tokens``) that only serve the timing."""

    def __init__(self, tokenizer, on_token: Callable[[str], None] | None, *, eos: set[int], max_new_tokens: int):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.on_token, self.eos, self.max_new_tokens = on_token, eos, max_new_tokens
        self.times: list[float] = []
        self.answer_tokens = 0
        self.answer_ended = False

    @property
    def first_token_at(self) -> float | None:
        return self.times[0] if self.times else None

    def put(self, value):
        if self.next_tokens_are_prompt:
            super().put(value)
            return
        self.times.append(time.perf_counter())
        if self.answer_ended:
            return
        self.answer_tokens += 1
        self.answer_ended = self.answer_tokens >= self.max_new_tokens or int(value.reshape(-1)[0]) in self.eos
        super().put(value)

    def on_finalized_text(self, text: str, stream_end: bool = False):
        if text and self.on_token is not None:
            self.on_token(text)


class _CancelCriteria(StoppingCriteria):
    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class _ForwardTimer:
    """Times each top-level forward pass of the model (the first one during generate is the prefill)."""

    def __init__(self, model, device: torch.device):
        self.model, self.cuda = model, device.type == "cuda"
        self.durations: list[float] = []
        self._start = 0.0
        self._handles = []

    def _sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def __enter__(self):
        def pre(module, args):
            self._sync()
            self._start = time.perf_counter()

        def post(module, args, output):
            self._sync()
            self.durations.append(time.perf_counter() - self._start)

        self._handles = [self.model.register_forward_pre_hook(pre), self.model.register_forward_hook(post)]
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()


@contextlib.contextmanager
def _cancel_between_layers(model, event: threading.Event | None):
    """Stop a long prefill within one layer's time: each attention module checks the event before it runs."""
    if event is None:
        yield
        return

    def check(module, args):
        if event.is_set():
            raise RunCancelled

    handles = [m.register_forward_pre_hook(check) for m in attention_modules(model)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


_HWM = re.compile(r"VmHWM:\s+(\d+)\s+kB")
_RSS = re.compile(r"VmRSS:\s+(\d+)\s+kB")


class PeakMemory:
    """Peak memory during a block: ``torch.cuda.max_memory_allocated`` on CUDA; on CPU the kernel's RSS high-water
    mark (reset through /proc/self/clear_refs), or psutil RSS sampled every millisecond where that is unavailable."""

    def __init__(self, device: torch.device):
        self.device = device
        self.start = self.peak = 0
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        elif _reset_hwm():
            self.start = _proc_status(_RSS)
        else:
            self._start_sampler()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        elif self._thread is None:
            self.peak = _proc_status(_HWM)
        else:
            self._stop.set()
            self._thread.join()

    @property
    def delta(self) -> int:
        return max(0, self.peak - self.start)

    def _start_sampler(self):
        import psutil

        proc = psutil.Process()
        self.start = self.peak = proc.memory_info().rss
        self._stop = threading.Event()

        def sample():
            while not self._stop.wait(0.001):
                self.peak = max(self.peak, proc.memory_info().rss)
            self.peak = max(self.peak, proc.memory_info().rss)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _proc_status(_HWM) > 0
    except OSError:
        return False


def _proc_status(pattern: re.Pattern) -> int:
    with open("/proc/self/status") as f:
        m = pattern.search(f.read())
    return int(m.group(1)) * 1024 if m else 0


# ---------------------------------------------------------------------- the model side


def _parts(loaded):
    model = getattr(loaded, "model", None)
    tokenizer = getattr(loaded, "tokenizer", None)
    if model is None and isinstance(loaded, (tuple, list)) and len(loaded) == 2:
        model, tokenizer = loaded
    if model is None or tokenizer is None:
        raise TypeError("Pass the object returned by swaa_core.load_model() (it has .model and .tokenizer).")
    return model, tokenizer, getattr(loaded, "info", None), getattr(loaded, "lock", None)


def context_length(model, info=None) -> int | None:
    for name in ("context_length", "max_context", "max_position_embeddings"):
        value = getattr(info, name, None)
        if isinstance(value, int) and value > 0:
            return value
    value = getattr(model.config.get_text_config(decoder=True), "max_position_embeddings", None)
    return value if isinstance(value, int) and value > 0 else None


def _generation_config(model, tokenizer, max_new_tokens: int):
    return greedy_generation_config(model, max_new_tokens, tokenizer.pad_token_id)


def _warm_up(model, tokenizer, config: SWAAConfig | None, backend: str, device: torch.device) -> None:
    """One short untimed generation per (config, backend): first calls pay for allocator growth, thread pools and,
    on CUDA, kernel compilation. The prompt is longer than the window so the sliding path itself is exercised."""
    key = (None if config is None else config.to_json(), backend)
    done = model.__dict__.setdefault("_swaa_runner_warm", set())
    if key in done:
        return
    window = config.sliding_window_size if config is not None and config.sliding_window_size else 0
    n = min(window + 64, 1024 if device.type == "cuda" else 320)
    ids = torch.arange(n, device=device)[None] % max(2, model.config.get_text_config(decoder=True).vocab_size - 1)
    ids = ids + 1
    gen = _generation_config(model, tokenizer, 2)
    without_eos(gen)
    with swaa(model, config, backend=backend):
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=gen)
    done.add(key)


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(exc).lower()
    return "out of memory" in text or "can't allocate memory" in text or "not enough memory" in text


def _error_text(exc: BaseException, device: torch.device) -> str:
    if _is_oom(exc):
        return (
            f"Out of memory on {device.type}: {str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__}. "
            "Try a shorter prompt, a smaller window, fewer full-attention layers, or a smaller model."
        )
    if isinstance(exc, SWAAConfigError):
        return f"Bad SWAA config: {exc}"
    message = str(exc).strip() or type(exc).__name__
    return message if isinstance(exc, ValueError) else f"{type(exc).__name__}: {message}"


# ---------------------------------------------------------------------- public API


def run_one(
    loaded,
    sample_or_prompt: TaskSample | str,
    config: SWAAConfig | dict | None,
    *,
    label: str | None = None,
    max_new_tokens: int = 32,
    cot: bool = False,
    on_token: Callable[[str], None] | None = None,
    cancel: threading.Event | None = None,
    system: str | None = None,
    backend: str = "auto",
    warmup: bool = True,
    score_logprob: bool = True,
    timing_tokens: int = DEFAULT_TIMING_TOKENS,
) -> RunResult:
    """Generate greedily for one prompt under ``config`` (None: full attention) and measure the run.

    ``sample_or_prompt``: a :class:`TaskSample` (scored against its answer, with its answer prefix pre-filled) or
    plain user text (not scored). ``cot`` switches chain-of-thought on (see :mod:`swaa_core.eval.cot`).
    ``score_logprob`` adds the teacher-forced log-likelihood of the reference answer (one more prefill, untimed).
    ``timing_tokens``: the run generates at least this many tokens (past the answer's end if need be, EOS ignored,
    never shown) so that decode speed and ``timed_total_s`` cover the same tokens in every run; fewer if the
    model's context ends first; 0 times the answer's own tokens only (then runs of unequal lengths differ).
    """
    sample = sample_or_prompt if isinstance(sample_or_prompt, TaskSample) else None
    if isinstance(config, dict):
        config = SWAAConfig.from_dict(config)
    if config is not None and config.is_full_attention:
        config = None
    result = RunResult(
        label=label or (BASELINE_LABEL if config is None else config.describe()),
        config=None if config is None else config.to_dict(),
        cot=bool(cot),
        reference=sample.answer if sample is not None and sample.references else None,
        meta=_sample_meta(sample),
    )
    try:
        model, tokenizer, info, lock = _parts(loaded)
        device = next(model.parameters()).device
        result.device = str(device)
        with lock if lock is not None else contextlib.nullcontext():
            _run(model, tokenizer, info, sample_or_prompt, sample, config, result, max_new_tokens, cot, on_token,
                 cancel, system, backend, warmup, score_logprob, device, timing_tokens=timing_tokens)  # fmt: skip
    except RunCancelled:
        result.cancelled = True
        result.error = "Cancelled before the first token."
    except Exception as exc:  # every failure becomes a readable result: the app shows it in the run's column
        log.debug("run %r failed", result.label, exc_info=True)
        result.error = _error_text(exc, torch.device(result.device or "cpu"))
    return result


def _run(model, tokenizer, info, prompt_in, sample, config, result, max_new_tokens, cot, on_token, cancel, system,
         backend, warmup, score_logprob, device, *, timing_tokens):  # fmt: skip
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a whole number >= 1, got {max_new_tokens!r}.")
    if not isinstance(timing_tokens, int) or timing_tokens < 0:
        raise ValueError(f"timing_tokens must be a whole number >= 0, got {timing_tokens!r}.")
    user_text = sample.prompt if sample is not None else prompt_in
    if not isinstance(user_text, str):
        raise TypeError(f"Expected a TaskSample or prompt text, got {type(prompt_in).__name__}.")
    if cancel is not None and cancel.is_set():
        raise RunCancelled
    if config is not None:
        config.validate(len(attention_modules(model)))
    if warmup:
        _warm_up(model, tokenizer, config, backend, device)
    prefix = sample.answer_prefix if sample is not None else ""

    t0 = time.perf_counter()
    rendered = render_prompt(tokenizer, user_text, cot=cot, answer_prefix=prefix, system=system)
    ids = tokenizer(rendered, add_special_tokens=False, return_tensors="pt")["input_ids"].to(device)
    result.prompt_tokens = n_prompt = ids.shape[1]
    limit = context_length(model, info)
    if limit is not None and n_prompt + max_new_tokens > limit:
        raise ValueError(
            f"The prompt has {n_prompt} tokens and {max_new_tokens} new tokens were asked for, but the model's context "
            f"is {limit} tokens. Shorten the prompt or lower max_new_tokens."
        )
    budget = timing_tokens if limit is None else min(timing_tokens, limit - n_prompt)
    to_generate = max(max_new_tokens, budget)
    check_run_fits(model, n_prompt + to_generate, config)  # refuse now rather than run out of memory mid-way
    if config is not None:
        result.notes = config.notes(n_prompt, native_windows=native_windows(model))
    if sample is not None:
        distance = needle_distance(tokenizer, rendered, sample)
        if distance is not None:
            result.meta["needle_distance"] = distance
    gen = _generation_config(model, tokenizer, to_generate)
    eos = without_eos(gen)  # AnswerThenBudget finds the answer's end and lets the timing run on
    streamer = _Streamer(tokenizer, on_token, eos=eos, max_new_tokens=max_new_tokens)
    criteria = [AnswerThenBudget(n_prompt, max_new_tokens, budget, eos)]
    criteria = StoppingCriteriaList(criteria + ([_CancelCriteria(cancel)] if cancel is not None else []))
    with (
        PeakMemory(device) as memory,
        _ForwardTimer(model, device) as timer,
        _cancel_between_layers(model, cancel),
        swaa(model, config, backend=backend) as state,
    ):
        result.backend = state.backend if state is not None else str(model.config._attn_implementation)
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            generation_config=gen,
            streamer=streamer,
            stopping_criteria=criteria,
        )
    t_end = time.perf_counter()

    new_ids = out.sequences[0, n_prompt : n_prompt + streamer.answer_tokens]
    result.generated_tokens = int(new_ids.numel())
    result.timing_extra_tokens = int(out.sequences.shape[1] - n_prompt) - result.generated_tokens
    result.output_text = tokenizer.decode(new_ids, skip_special_tokens=True)
    per_layer = kv_cache_bytes(getattr(out, "past_key_values", None))
    result.kv_cache_bytes_per_layer, result.kv_cache_bytes = per_layer, int(sum(per_layer))
    result.peak_memory_bytes, result.memory_delta_bytes = int(memory.peak), int(memory.delta)
    _set_times(result, t0, streamer.times, budget or result.generated_tokens)
    result.prefill_s = timer.durations[0] if timer.durations else result.ttft_s
    result.total_s = (streamer.times[result.generated_tokens - 1] if result.generated_tokens else t_end) - t0
    if cancel is not None and cancel.is_set():
        result.cancelled = True
        result.error = f"Cancelled after {result.generated_tokens} generated tokens."

    result.reasoning_text, result.answer_text = split_reasoning(result.output_text, marker=cot)
    if result.reasoning_text:
        result.reasoning_tokens = count_tokens(tokenizer, result.reasoning_text)
        if result.decode_tokens_per_s:
            result.reasoning_s = result.reasoning_tokens / result.decode_tokens_per_s
    if sample is not None:
        result.correct = score_sample(result.answer_text, sample)
        if score_logprob and sample.references and not result.cancelled:
            plain = render_prompt(tokenizer, user_text, cot=False, answer_prefix=prefix, system=system)
            lik = answer_loglik(model, tokenizer, plain, reference_text(sample), config)
            result.answer_logprob, result.answer_logprob_tokens = lik.logprob, lik.tokens


def _set_times(result: RunResult, t0: float, times: list[float], tokens: int) -> None:
    """Time to first token, and decode speed and time over the first ``tokens`` generated tokens."""
    timing = DecodeTiming.from_times(t0, times, tokens)
    result.ttft_s = timing.ttft_s
    result.timed_tokens, result.decode_tokens = timing.tokens, timing.decode_tokens
    result.timed_total_s, result.decode_tokens_per_s = timing.total_s, timing.tokens_per_s


def needle_distance(tokenizer, rendered: str, sample: TaskSample) -> int | None:
    """Tokens from the needle's first token to the end of the rendered prompt: with a window of W, the last prompt
    token (and an answer decoded without FA decode) can see the needle only when this is at most W."""
    if sample.needle_char_span is None:
        return None
    offset = rendered.rfind(sample.prompt)
    if offset < 0:
        return None
    return count_tokens(tokenizer, rendered[offset + sample.needle_char_span[0] :])


def _sample_meta(sample: TaskSample | None) -> dict[str, Any]:
    if sample is None:
        return {"task": "prompt"}
    meta = {"task": sample.task, "depth": sample.depth, "seed": sample.seed, "context_tokens": sample.context_tokens}
    for key in ("length_target", "actual_depth", "source", "index"):
        if key in sample.meta:
            meta[key] = sample.meta[key]
    return meta


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
    cancel: threading.Event | None = None,
    **kw,
) -> list[RunResult]:
    """Run the full-attention baseline ("Full attention", first) and every config of ``configs`` on one prompt.

    A full-attention entry in ``configs`` is not run twice. ``on_start`` gets each run's label before it starts,
    ``on_result`` each result as it finishes. Nothing raises: failures and cancellations are in each result's
    ``error``. Other keywords go to :func:`run_one`.
    """
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
            try:
                result = run_one(loaded, sample_or_prompt, cfg, label=label, cancel=cancel, **kw)
            except Exception as exc:  # bad keywords or configs: reported per run, never raised
                result = _failed(label, cfg, exc)
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


def _failed(label: str, cfg, exc: BaseException | None) -> RunResult:
    config = cfg.to_dict() if isinstance(cfg, SWAAConfig) else (cfg if isinstance(cfg, dict) else None)
    return RunResult(label=label, config=config, error=None if exc is None else _error_text(exc, torch.device("cpu")))


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


def accuracy_table(results: Iterable[RunResult]):
    """Per config: runs, accuracy, mean answer log-likelihood per token, mean prefill time, decode speed (and the
    fewest decode steps it came from), time to the first ``timed_tokens`` tokens, answer time (pandas)."""
    import pandas as pd

    rows = [r.to_dict() for r in results]
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rows)
    df["correct_num"] = df["correct"].map(lambda v: math.nan if v is None else float(v))
    grouped = df.groupby("label", sort=False)
    return pd.DataFrame(
        {
            "runs": grouped.size(),
            "errors": grouped["error"].apply(lambda s: int(s.notna().sum())),
            "accuracy": grouped["correct_num"].mean(),
            "logprob_per_token": grouped["answer_logprob_per_token"].mean(),
            "prefill_s": grouped["prefill_s"].mean(),
            "decode_tokens_per_s": grouped["decode_tokens_per_s"].mean(),
            "decode_tokens": grouped["decode_tokens"].min(),  # fewer than MIN_DECODE_TOKENS: do not rank
            "timed_total_s": grouped["timed_total_s"].mean(),
            "total_s": grouped["total_s"].mean(),
            "kv_cache_bytes": grouped["kv_cache_bytes"].mean(),
        }
    ).reset_index()
