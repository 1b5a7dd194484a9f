"""The side-by-side comparison board: one card per column, streamed text, metrics, and the saved/lost summary.

Rendered as HTML (one Gradio component, any number of columns, updated many times a second while tokens stream).
Every piece of model or user text is escaped.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Any

from swaa_core.eval.latency import comparable, decode_note
from swaa_core.eval.timing import spread_verdict
from swaa_core.runtime.units import format_bytes

WAITING, RUNNING, DONE, ERROR, CANCELLED = "waiting", "running", "done", "error", "cancelled"


@dataclass
class ColumnView:
    label: str
    description: str
    is_full: bool
    status: str = WAITING
    text: str = ""
    result: Any = None  # a swaa_core.eval.runner.RunResult once the column finished
    error: str = ""


def format_seconds(s: float | None) -> str:
    if s is None:
        return "–"
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.2f} s"


def answer_probability(logprob: float | None) -> str:
    """The model's probability of the reference answer (teacher-forced): a graded signal beside right/wrong."""
    if logprob is None:
        return "–"
    p = math.exp(logprob)
    return "<0.01%" if p < 1e-4 else f"{p:.0%}" if p >= 0.01 else f"{p:.2%}"


ANSWER_PROBABILITY = "P(expected answer)"
TIPS = {
    ANSWER_PROBABILITY: "How likely the model finds the expected answer when it is fed in after the prompt (teacher "
    "forcing): a graded score that can be low even when the generated text contains the answer, since the verdict "
    "only checks the text.",
}


def verdict(correct: bool | None) -> tuple[str, str]:
    if correct is None:
        return "no reference answer", "neutral"
    return ("✓ correct", "good") if correct else ("✗ incorrect", "bad")


def render_board(columns: list[ColumnView]) -> str:
    if not columns:
        return '<div class="swaa-board swaa-empty">Press <b>Run comparison</b> to run the columns.</div>'
    cards = "".join(_card(c, i) for i, c in enumerate(columns))
    return f'<div class="swaa-board" style="--cols:{len(columns)}">{cards}</div>'


def _card(col: ColumnView, index: int) -> str:
    kind = "fa" if col.is_full else "swaa"
    status = {
        WAITING: "waiting…",
        RUNNING: "generating…",
        DONE: "done",
        ERROR: "error",
        CANCELLED: "stopped",
    }[col.status]
    body = _body(col)
    return (
        f'<section class="swaa-col swaa-{kind} is-{col.status}" data-column="{index}" data-testid="column-{index}">'
        f'<header><span class="swaa-badge">{"FA" if col.is_full else "SWAA"}</span>'
        f"<h4>{html.escape(col.label)}</h4>"
        f'<span class="swaa-status">{status}</span></header>'
        f'<p class="swaa-desc">{html.escape(col.description)}</p>'
        f"{body}{_metrics(col)}</section>"
    )


def _body(col: ColumnView) -> str:
    result = col.result
    if col.status == ERROR:
        return f'<div class="swaa-error" role="alert">{html.escape(col.error)}</div>'
    reasoning = getattr(result, "reasoning_text", "") if result is not None else ""
    text = col.text if result is None else (result.answer_text if reasoning else result.output_text)
    parts = []
    if reasoning:
        parts.append(
            f'<details class="swaa-reasoning"><summary>reasoning ({len(reasoning.split())} words)</summary>'
            f"<div>{html.escape(reasoning)}</div></details>"
        )
    cursor = '<span class="swaa-cursor">▍</span>' if col.status == RUNNING else ""
    placeholder = "" if text or col.status != WAITING else '<span class="swaa-muted">waits for the column before</span>'
    parts.append(f'<div class="swaa-output" data-testid="output">{html.escape(text)}{cursor}{placeholder}</div>')
    return "".join(parts)


def _metrics(col: ColumnView) -> str:
    r = col.result
    if r is None:
        return ""
    label, tone = verdict(r.correct)
    if r.error and col.status == CANCELLED:
        label, tone = "stopped before the end", "neutral"
    extra = f" (+{r.timing_extra_tokens} unseen, for timing)" if r.timing_extra_tokens else ""
    rows = [
        ("time to first token", format_seconds(r.ttft_s)),
        ("decode speed", decode_speed(r)),
        (f"time to token {r.timed_tokens}", format_seconds(r.timed_total_s) if r.timed_tokens else "–"),
        ("decode path", decode_path_text(r)),
        ("answer time", format_seconds(r.total_s)),
        ("KV cache", format_bytes(r.kv_cache_bytes, digits=1)),
        (ANSWER_PROBABILITY, answer_probability(r.answer_logprob)),
        ("tokens", f"{r.prompt_tokens} in / {r.generated_tokens} out{extra}"),
    ]
    cells = "".join(f'<dt title="{html.escape(TIPS.get(k, ""))}">{k}</dt><dd>{v}</dd>' for k, v in rows)
    backend = f'<span class="swaa-muted">kernel: {html.escape(r.backend)}</span>' if r.backend else ""
    return (
        f'<dl class="swaa-metrics" data-testid="metrics">{cells}</dl>'
        f'<footer><span class="swaa-verdict {tone}" data-testid="verdict">{label}</span>{backend}</footer>'
    )


def decode_speed(r) -> str:
    """Decode tokens/s and how many decode steps it comes from; a figure from too few steps says so."""
    if not r.decode_tokens_per_s:
        return "–"
    note = decode_note(r)
    if note is not None:
        return f"{r.decode_tokens_per_s:.1f} tok/s, {note}"
    return f"{r.decode_tokens_per_s:.1f} tok/s over {r.decode_tokens} steps"


def decode_path_text(r) -> str:
    """The decode path a run's timings come from, with the fixed buffers' one-off setup (counted in the time to
    token N, not in the decode speed)."""
    path = getattr(r, "decode_path", "") or "–"
    setup = getattr(r, "setup_s", 0.0)
    return f"{path}, setup {format_seconds(setup)} (in the time to token, not the decode speed)" if setup else path


def path_note(results: list) -> str:
    """One sentence on the decode path of a comparison's runs: the same for every column, or a warning."""
    paths = sorted({r.decode_path for r in results if getattr(r, "decode_path", "")})
    if len(paths) > 1:
        return f"Decode paths differ between columns ({', '.join(paths)}): their timings do not compare."
    if not paths:
        return ""
    setups = [r.setup_s for r in results if getattr(r, "setup_s", 0.0)]
    setup = (
        f"; its setup (fixed buffers, warm-up steps, graph capture) took {format_seconds(min(setups))}"
        f"–{format_seconds(max(setups))} per column, counted in the time to token, not in the decode speed"
        if setups
        else ""
    )
    reasons = sorted({r.decode_reason for r in results if getattr(r, "decode_reason", "")})
    why = f" ({'; '.join(reasons)})" if reasons else ""
    return f"Decode path: {paths[0]}{why} in every column{setup}."


def summary_markdown(columns: list[ColumnView]) -> str:
    """What each SWAA column saved and lost against the full-attention baseline, in plain words. Speeds are
    compared only between runs timed over the same number of tokens, enough of them."""
    base = next((c.result for c in columns if c.is_full and c.result is not None and not c.result.error), None)
    if base is None:
        return ""
    n = base.timed_tokens
    lines = [
        f"| config | time to first token | decode speed | time to token {n} | KV cache | answer |",
        "|---|---|---|---|---|---|",
    ]
    for col in columns:
        r = col.result
        if col.is_full or r is None or r.error:
            continue
        decode = comparable(base, r) or _versus(base.decode_tokens_per_s, r.decode_tokens_per_s, speed=True)
        timed = comparable(base, r, what="timed") or _versus(base.timed_total_s, r.timed_total_s)
        lines.append(
            f"| {_md(col.label)} | {_versus(base.ttft_s, r.ttft_s)} | {decode} | {timed} | "
            f"{_saving(base.kv_cache_bytes, r.kv_cache_bytes)} | {_answer_change(base, r)} |"
        )
    if len(lines) == 2:
        return ""
    notes = _notes(base, [c for c in columns if not c.is_full and c.result is not None and not c.result.error])
    notes.append(
        f"Every column is timed over its first {n} generated tokens (a column whose answer is shorter goes on "
        f"generating, unseen, for the timing): time to first token = reading the prompt; decode speed = the "
        f"{max(n - 1, 0)} steps from token 1 to token {n}; time to token {n} = both."
    )
    notes.append(path_note([c.result for c in columns if c.result is not None and not c.result.error]))
    text = "**What SWAA saved and what it lost** (against full attention)\n\n" + "\n".join(lines)
    return text + "".join(f"\n\n<small>{note}</small>" for note in notes if note)


def _versus(base: float, new: float, *, speed: bool = False) -> str:
    """One run of each column: the ratio, said to have no spread (the Decode speed tab repeats runs in turns)."""
    return spread_verdict([base], [new], higher_is_faster=speed)


def _notes(base, swaa_columns: list[ColumnView]) -> list[str]:
    """Explain results that surprise people who expect SWA to be faster and smaller at every setting."""
    notes = []
    if any(c.result.ttft_s > base.ttft_s * 1.05 for c in swaa_columns):
        notes.append(
            f"At {base.prompt_tokens:,} tokens the sliding-window kernel's overhead can outweigh what it skips; "
            "its O(n·W) cost wins on long prompts (try a few thousand tokens)."
        )
    if any(c.result.kv_cache_bytes >= base.kv_cache_bytes and (c.result.config or {}).get("force_fa_decode")
           for c in swaa_columns):  # fmt: skip
        notes.append(
            "With FA decode the cache must keep every token (generated tokens look at all of them), so only "
            "sliding layers without FA decode free memory."
        )
    return notes


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def _saving(base: int, new: int) -> str:
    if not base:
        return "–"
    saved = 1 - new / base
    if saved > 0.005:
        return f"{saved:.0%} smaller ({format_bytes(base - new, digits=1)} saved)"
    if saved < -0.005:
        return f"{-saved:.0%} larger"
    return "same"


def _answer_change(base, r) -> str:
    if base.correct is None or r.correct is None:
        same = base.answer_text.strip() == r.answer_text.strip()
        return "same answer" if same else "different answer"
    if base.correct and not r.correct:
        return "**lost** the answer"
    if not base.correct and r.correct:
        return "found the answer (baseline missed it)"
    return "kept it right" if r.correct else "both wrong"
