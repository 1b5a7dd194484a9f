"""Before/after scores for fine-tuning: held-out task samples answered under one config, through the eval runner.

The same prompts, scoring and SWAA path as ``swaa eval``, so a fine-tuning report's accuracies compare with the
evaluation commands' own; under a launcher each process answers its share of the samples.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from ..engine.config import SWAAConfig
from ..runtime.distributed import current, map_shared
from .distill import Progress, ProgressFn


@dataclass
class EvalSummary:
    """Accuracy of one config on a task set, with the graded signal (reference log-likelihood) beside it."""

    label: str
    samples: int
    correct: int
    scored: int
    errors: int
    mean_logprob_per_token: float | None

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.scored if self.scored else None

    def line(self) -> str:
        acc = "n/a" if self.accuracy is None else f"{self.correct}/{self.scored} = {self.accuracy:.0%}"
        lp = (
            ""
            if self.mean_logprob_per_token is None
            else f", reference log-prob/token {self.mean_logprob_per_token:.3f}"
        )
        err = f", {self.errors} errors" if self.errors else ""
        return f"{self.label}: accuracy {acc}{lp}{err}"


def evaluate_accuracy(
    loaded, samples, config: SWAAConfig | None, *, label: str, max_new_tokens: int = 24, cot: bool = False,
    on_progress: ProgressFn | None = None, cancel: threading.Event | None = None, progress: bool = True,
    backend: str = "auto",
) -> EvalSummary:  # fmt: skip
    """Greedy answers through the runner (same prompts, scoring and SWAA path as ``swaa eval``); ``backend`` is
    the attention kernel, as in :func:`swaa_core.apply_swaa`."""
    from tqdm.auto import tqdm

    from ..eval.runner import run_one

    def run(share):
        results, start = [], time.perf_counter()
        for i, sample in enumerate(tqdm(share, desc=f"eval: {label}", disable=not progress)):
            if cancel is not None and cancel.is_set():
                break
            # accuracy only: no extra tokens generated for like-for-like timing
            r = run_one(loaded, sample, config, max_new_tokens=max_new_tokens, cot=cot, warmup=i == 0,
                        timing_tokens=0, backend=backend)  # fmt: skip
            results.append(r)
            if on_progress is not None:
                right = sum(bool(r.correct) for r in results)
                msg = f"{label}: {i + 1}/{len(share)}, {right} right"
                on_progress(Progress("eval", i + 1, len(share), time.perf_counter() - start, message=msg))
        return results

    launch = current()  # under a launcher each process answers its share of the samples
    results = map_shared(launch, run, samples)
    scored = [r for r in results if r.correct is not None]
    lps = [r.answer_logprob_per_token for r in results if r.answer_logprob_per_token is not None]
    return EvalSummary(
        label=label,
        samples=len(results),
        correct=sum(bool(r.correct) for r in scored),
        scored=len(scored),
        errors=sum(r.error is not None for r in results),
        mean_logprob_per_token=sum(lps) / len(lps) if lps else None,
    )
