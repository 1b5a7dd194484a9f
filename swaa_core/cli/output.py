"""What the ``swaa`` command prints: results on stdout (rich tables, or JSON lines with ``--json``), progress and
messages on stderr, so ``swaa run --json ... | jq`` works; run errors reported once each, with the exit code."""

from __future__ import annotations

import json
import math
import os
import sys

from ..eval.timing import MIN_DECODE_TOKENS
from ..runtime.units import format_bytes


def note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def print_json(obj) -> None:
    """One line of strict JSON (RFC 8259): a missing number (NaN) and an infinite one are null, NumPy scalars their
    Python values. Non-ASCII text goes out as is on a UTF-8 stdout and as \\u escapes elsewhere: the JSON stays
    lossless either way."""
    text = json.dumps(strict_json(obj), default=str, ensure_ascii=not _is_utf8(sys.stdout), allow_nan=False)
    print(text, flush=True)


def strict_json(obj):
    """``obj`` with every float that JSON cannot hold (NaN, infinities) and pandas' missing values as None, NumPy
    scalars as Python numbers, through dicts, lists and tuples."""
    if type(obj).__module__ == "numpy" and getattr(obj, "shape", None) == ():
        obj = obj.item()
    elif type(obj).__name__ in ("NAType", "NaTType"):  # pandas' missing values
        return None
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: strict_json(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(value) for value in obj]
    return obj


def _is_utf8(stream) -> bool:
    return (getattr(stream, "encoding", None) or "").lower().replace("-", "").replace("_", "") in ("utf8", "utf8sig")


def never_fail_on_encoding() -> None:
    """On a stdout/stderr that is not UTF-8 (e.g. PYTHONIOENCODING=latin-1), characters it cannot hold are
    written as \\u escapes rather than ending the command with UnicodeEncodeError."""
    for stream in (sys.stdout, sys.stderr):
        if not _is_utf8(stream) and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def shared_error(results) -> str | None:
    """The error every run ended with, when they all ended with the same one (a problem of the prompt, not of a
    recipe): it is printed once instead of a table with one failed row per config."""
    errors = {r.error for r in results}
    return next(iter(errors)) if len(errors) == 1 and results else None


def report_errors(results) -> int:
    """Each distinct run error once on stderr, with the runs it hit; the exit code (1 when any run failed)."""
    by_error: dict[str, list[str]] = {}
    for r in results:
        if r.error:
            by_error.setdefault(r.error, []).append(r.label)
    for error, labels in by_error.items():
        if len(labels) == len(results):
            where = "every run" if len(results) > 1 else "the run"
        else:
            where = ", ".join(dict.fromkeys(labels))
        print(f"swaa: error ({where}): {error}", file=sys.stderr)
    return 1 if by_error else 0


# ---------------------------------------------------------------------- tables


PIPED_WIDTH = 200  # columns for tables written to a pipe or file, where no terminal width exists


def console():
    """A rich Console; when stdout is not a terminal it is PIPED_WIDTH wide (rich would assume 80, folding a
    ten-column table into 4-letter cells) unless COLUMNS says otherwise. Tables still take only the width they need."""
    from rich.console import Console

    console = Console()
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        console = Console(width=PIPED_WIDTH)
    return console


def results_table(results, title: str) -> None:
    from rich.table import Table

    timed = {r.timed_tokens for r in results if not r.error}
    timed_head = f"to token {timed.pop()}" if len(timed) == 1 else "to token N"
    table = Table(title=title, caption=f"{_timing_caption(results)}\n{path_caption(results)}")
    table.add_column("config", overflow="fold", min_width=16, max_width=48)
    table.add_column("output", overflow="fold", min_width=24, max_width=72)
    for col in ("ok", "TTFT", "prefill", "decode", "path", timed_head, "answer", "peak mem", "KV cache", "kernel"):
        table.add_column(col, no_wrap=True)
    for r in results:
        if r.error:
            table.add_row(r.label, "(failed: the error is printed below)", "error", *["–"] * 8, r.backend or "–")
            continue
        table.add_row(
            r.label,
            r.output_text.strip(),
            {True: "✓", False: "✗", None: "–"}[r.correct],
            _seconds(r.ttft_s),
            _seconds(r.prefill_s),
            _decode_cell(r.decode_tokens_per_s, r.decode_tokens),
            r.decode_path or "–",
            _seconds(r.timed_total_s),
            f"{_seconds(r.total_s)} / {r.generated_tokens} tok",
            format_bytes(r.peak_memory_bytes),
            format_bytes(r.kv_cache_bytes),
            r.backend,
        )
    console().print(table)


def _seconds(value: float | None) -> str:
    """Seconds with two decimals; "–" for a figure the run did not measure (None)."""
    return "–" if value is None else f"{value:.2f} s"


def _decode_cell(tokens_per_s, decode_tokens) -> str:
    steps = int(decode_tokens) if decode_tokens == decode_tokens and decode_tokens is not None else 0
    if steps < MIN_DECODE_TOKENS:
        return f"too few tokens ({steps})"
    return f"{tokens_per_s:.1f} tok/s"


def path_caption(runs) -> str:
    """The decode path(s) that ran and why, one clause per distinct path: "decode path: fixed buffers + CUDA graph
    (fixed-buffer: CUDA, batch 1, greedy)". ``runs``: RunResults or result rows (dicts)."""
    seen = {}
    for r in runs:
        path, reason = (_value(r, "decode_path"), _value(r, "decode_reason"))
        if isinstance(path, str) and path:
            seen.setdefault(path, reason if isinstance(reason, str) else "")
    if not seen:
        return "decode path: none ran"
    return "decode path: " + "; ".join(f"{p} ({why})" if why else p for p, why in seen.items())


def _value(run, name: str):
    return run.get(name) if isinstance(run, dict) else getattr(run, name, None)


def _timing_caption(results) -> str:
    """Says what the timing columns cover, so nobody ranks runs by their answers' unequal lengths."""
    timed = {r.timed_tokens for r in results if not r.error}
    if len(timed) > 1:
        return "decode speeds come from different token counts: do not compare them"
    n = timed.pop() if timed else 0
    return (
        f"decode and 'to token {n}': every run timed over its first {n} generated tokens (past the answer where it is "
        "shorter); 'answer': the time and length of each run's own answer"
    )


# Summary columns as a reader names them (the JSON keeps the column names); others print with spaces for underscores.
HEADERS = {
    "length_target": "length",
    "logprob_per_token": "log-lik. per token",
    "ttft_s": "TTFT s",
    "prefill_s": "prefill s",
    "decode_tokens_per_s": "decode",
    "decode_tokens": "decode steps",
    "timed_total_s": "timed total s",
    "total_s": "answer s",
    "kv_cache_bytes": "KV cache",
}


def frame_table(df, title: str, caption: str | None = None) -> None:
    """Print a DataFrame: numbers never fold (each column is at least as wide as its widest value), headers wrap
    at their underscores and text columns fold. When the columns do not fit the terminal, the table continues in
    further tables that repeat the first column, rather than losing its right-hand columns or breaking words.
    ``caption`` goes under each printed table."""
    import pandas as pd
    from rich.table import Table

    rows = [[_frame_cell(col, value, row) for col, value in row.items()] for row in df.to_dict(orient="records")]
    heads = [HEADERS.get(str(col), str(col).replace("_", " ")) for col in df.columns]
    roomy, compact = [], []  # headers on one line / wrapped at their spaces
    for i, col in enumerate(df.columns):
        text = not pd.api.types.is_numeric_dtype(df[col])  # pandas 3 holds text as "str", not object
        widest = max((len(cells[i]) for cells in rows), default=0)
        word = max((len(w) for w in heads[i].split()), default=1)
        roomy.append(min(32, max(12, len(heads[i]), widest)) if text else max(widest, len(heads[i])))
        compact.append(min(32, max(12, word, widest)) if text else max(widest, word))
    out = console()
    # fixed widths: rich would otherwise widen columns to unwrapped headers and then crop the right-hand ones
    widths = roomy if len(_column_groups(roomy, out.width)) == 1 else compact
    for k, group in enumerate(_column_groups(widths, out.width)):
        table = Table(title=title if k == 0 else f"{title} (continued)", caption=caption)
        for i in group:
            table.add_column(heads[i], overflow="fold", width=widths[i])
        for cells in rows:
            table.add_row(*(cells[i] for i in group))
        out.print(table)


def _column_groups(min_widths: list[int], total: int) -> list[list[int]]:
    """Column indices per printed table: as many columns as fit in ``total`` characters, each table starting with
    column 0 (the row's name). A rich cell costs its width plus 3 (padding and border)."""
    first = min_widths[0] + 4
    groups, current, used = [], [0], first
    for i, w in enumerate(min_widths[1:], start=1):
        if used + w + 3 > total and len(current) > 1:
            groups.append(current)
            current, used = [0], first
        current.append(i)
        used += w + 3
    groups.append(current)
    return groups


def _frame_cell(col, value, row: dict) -> str:
    if "bytes" in str(col):
        return format_bytes(value)
    if col == "accuracy" and isinstance(value, float) and value == value:
        return f"{value:.0%}"
    if col == "decode_tokens_per_s" and "decode_tokens" in row:
        return _decode_cell(value, row["decode_tokens"])
    if isinstance(value, float):
        return "–" if value != value else f"{value:.3g}"
    return str(value)
