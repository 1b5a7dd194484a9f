"""The pieces around one ``generate`` call that the runner and the latency curves share: a streamer that notes when
each token arrived, a timer of the forward passes (the first is the prefill), peak memory, cancellation (between
decode steps and between layers of a long prefill), the model's context length and the one check of a prompt
against it, and failures as readable text."""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Callable

import torch
from transformers import StoppingCriteria, TextStreamer

from ..engine.config import SWAAConfigError
from ..engine.families import attention_modules
from ..engine.install import replay_safe
from .tasks.base import decode_whole


class RunCancelled(Exception):
    """Raised inside the model's forward pass to stop a prefill that the user cancelled."""


# what a run stopped inside its prefill has not measured: no token came, no cache came back
UNMEASURED_BEFORE_FIRST_TOKEN = (
    "ttft_s", "prefill_s", "decode_tokens_per_s", "total_s", "timed_total_s", "setup_s", "kv_cache_bytes",
    "peak_memory_bytes", "memory_delta_bytes",
)  # fmt: skip


def not_measured(result, *names: str) -> None:
    """Mark figures of a stopped run (a RunResult) as not measured (None): no page, table or file shows them as 0."""
    for name in names:
        setattr(result, name, None)


def stopped_after_tokens(result) -> None:
    """A run (a RunResult) stopped between decode steps: what streamed stays; too few tokens leave figures unmeasured."""
    result.cancelled = True
    result.error = f"Cancelled after {result.generated_tokens} generated tokens."
    if not result.decode_tokens:
        not_measured(result, "decode_tokens_per_s")
    if not result.generated_tokens:
        not_measured(result, "ttft_s", "timed_total_s", "total_s")


class AnswerStreamer(TextStreamer):
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

    def end(self):
        """The last piece, without a character left unfinished by the token limit (TextStreamer's own end would
        send its U+FFFD): the pieces add up to the run's answer, whole characters only."""
        if self.token_cache:
            skip = self.decode_kwargs.get("skip_special_tokens", False)
            text = decode_whole(self.tokenizer, self.token_cache, skip_special_tokens=skip)
            self.token_cache, piece, self.print_len = [], text[self.print_len :], 0
        else:
            piece = ""
        self.next_tokens_are_prompt = True
        self.on_finalized_text(piece, stream_end=True)

    def on_finalized_text(self, text: str, stream_end: bool = False):
        if text and self.on_token is not None:
            self.on_token(text)


class CancelCriteria(StoppingCriteria):
    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class ForwardTimer:
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
def cancel_between_layers(model, event: threading.Event | None, *, until: Callable[[], object] | None = None):
    """Stop a long prefill within one layer's time: each attention module checks the event before it runs and
    raises :class:`RunCancelled`. ``until``: once it returns a value that is not None (the streamer's first token
    time), the layers stop checking: a stop then ends the run between decode steps (the stopping criteria), so
    the tokens already streamed and their counts come back instead of an exception."""
    if event is None:
        yield
        return

    def check(module, args):
        if event.is_set() and (until is None or until() is None):
            raise RunCancelled

    if until is not None:  # past the first token a stop ends the run through the stopping criteria, not this hook
        replay_safe(check)

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


def context_length(model, info=None) -> int | None:
    """Tokens the model reads at most (prompt plus generated): from ``info`` (a ModelInfo) when it says, else the
    text config's ``max_position_embeddings``; None when neither does."""
    for name in ("context_length", "max_context", "max_position_embeddings"):
        value = getattr(info, name, None)
        if isinstance(value, int) and value > 0:
            return value
    value = getattr(model.config.get_text_config(decoder=True), "max_position_embeddings", None)
    return value if isinstance(value, int) and value > 0 else None


class ContextOverflowError(ValueError):
    """A prompt plus the tokens asked for that the model's context cannot hold; ``limit`` is that context."""

    limit: int


def check_context(model, prompt_tokens: int, new_tokens: int, *, info=None) -> int | None:
    """Refuse a run whose prompt plus ``new_tokens`` exceeds the model's context (ContextOverflowError, before any
    forward); returns that context (None: unknown, nothing to check). One rule for every caller (the runner, the
    app); a caller that words it its own way catches the error and reads ``limit``."""
    limit = context_length(model, info)
    if limit is not None and prompt_tokens + new_tokens > limit:
        error = ContextOverflowError(
            f"The prompt has {prompt_tokens} tokens and {new_tokens} new tokens were asked for, but the model's "
            f"context is {limit} tokens. Shorten the prompt or ask for fewer new tokens (max_new_tokens; "
            "--max-new-tokens / -n in the swaa command)."
        )
        error.limit = limit
        raise error
    return limit


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(exc).lower()
    return "out of memory" in text or "can't allocate memory" in text or "not enough memory" in text


def error_text(exc: BaseException, device: torch.device) -> str:
    """A failed run's message for the user: out of memory with what to try, bad configs named as such, a
    ``ValueError``'s own message, the exception type before any other message."""
    if _is_oom(exc):
        return (
            f"Out of memory on {device.type}: {str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__}. "
            "Try a shorter prompt, a smaller window, fewer full-attention layers, or a smaller model."
        )
    if isinstance(exc, SWAAConfigError):
        return f"Bad SWAA config: {exc}"
    message = str(exc).strip() or type(exc).__name__
    return message if isinstance(exc, ValueError) else f"{type(exc).__name__}: {message}"
