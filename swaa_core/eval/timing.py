"""How many tokens a run is timed over, and how many decode steps make a speed worth ranking: plain numbers that the
command line and the app read without importing the model stack (their meaning: :mod:`.latency`); the thread count
every timed path pins; verdicts that carry their spread and say "within noise" instead of ranking noise."""

import os
import statistics
from collections.abc import Sequence

DEFAULT_TIMING_TOKENS = 32  # generated tokens every compared run is timed over (the first one included)
MIN_DECODE_TOKENS = 16  # fewer decode steps than this: the figure is noise, shown but never ranked

THREADS_ENV = "SWAA_NUM_THREADS"  # intra-op threads every timed run uses; default: the process's count at start
NOISE = 0.05  # ratios within 5% of 1 are "about the same" even when every turn agrees
_START_THREADS: list[int] = []  # torch's intra-op thread count when this process first asked


def remember_start_threads() -> None:
    """Note torch's intra-op thread count now (at import of the timing code), the default of every timed run."""
    import torch

    if not _START_THREADS:
        _START_THREADS.append(torch.get_num_threads())


def timing_threads() -> int:
    """The intra-op thread count every timed path runs with: ``$SWAA_NUM_THREADS``, else torch's count the first
    time this process asked (before a library or a worker thread could change it). ValueError for a bad value."""
    remember_start_threads()
    text = os.environ.get(THREADS_ENV, "").strip()
    if not text:
        return _START_THREADS[0]
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{THREADS_ENV} must be a whole number of threads >= 1, got {text!r}.")
    return int(text)


def pin_threads() -> int:
    """Set torch's intra-op thread count to :func:`timing_threads` (process-wide, whichever thread calls: the
    main thread, a Gradio worker or a run's own thread) and return it. Every timed path calls it before timing,
    so the same work is timed with the same threads wherever it runs."""
    import torch

    n = timing_threads()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def spread_verdict(base: Sequence[float], new: Sequence[float], *, higher_is_faster: bool = False) -> str:
    """Words for ``new`` against ``base``, each measured in the same turns (turn i of one beside turn i of the
    other; seconds, or speeds if ``higher_is_faster``): the median of the per-turn ratios and their range.
    "within noise" when the range reaches both sides of 1 or the median is within 5% of it; one turn gives a
    ratio without a spread, and says so. "–" when a side has no positive measurement."""
    pairs = [(b, n) for b, n in zip(base, new, strict=False) if b and n and b > 0 and n > 0]
    if not pairs:
        return "–"
    factors = sorted((n / b) if higher_is_faster else (b / n) for b, n in pairs)  # > 1: new is faster
    mid, low, high = statistics.median(factors), factors[0], factors[-1]
    turns = len(factors)
    spread = f"{low:.2f}–{high:.2f}× over {turns} turns" if turns > 1 else "one run each: no spread"
    if (low < 1 < high) or abs(mid - 1) < NOISE:
        return f"within noise ({spread})"
    word = f"{mid:.2f}× faster" if mid > 1 else f"{1 / mid:.2f}× slower"
    return f"{word} ({spread})"
