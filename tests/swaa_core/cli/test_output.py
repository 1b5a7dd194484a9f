"""The CLI's summary tables (swaa eval / sweep) as a reader sees them in a pipe."""

from __future__ import annotations

import pandas as pd

from swaa_core.cli.output import HEADERS, frame_table

LONG = "Recommended: 1/2 FA layers + FA decode + sinks (W=256, 10 sinks)"


def test_summary_table_keeps_every_header_and_label_whole(capsys, monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)  # a pipe: PIPED_WIDTH columns
    row = dict(runs=2, accuracy=1.0, logprob_per_token=-0.06, ttft_s=0.95, prefill_s=0.94, decode_tokens_per_s=16.2,
               decode_tokens=31, timed_total_s=2.87, total_s=1.31, kv_cache_bytes=2.5e7, errors=0)  # fmt: skip
    frame_table(pd.DataFrame([dict(label="Full attention", **row), dict(label=LONG, **row)]), "t")
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if "label" in line)
    cells = [c.strip() for c in header.strip("┃ ").split("┃")]
    assert cells == ["label"] + [HEADERS.get(name, name.replace("_", " ")) for name in row]
    assert "100%" in out  # accuracy reads as a share of runs
    # the long label folds inside its column instead of being cut
    assert all(word in out for word in LONG.split()) and out.count("16.2 tok/s") == 2


def test_a_narrow_terminal_gets_the_table_in_parts_without_losing_a_cell(capsys, monkeypatch):
    """At 60 columns a 12-column summary cannot fit: it continues in further tables that repeat the label, and
    every header word and every value still appears whole, with no line wider than the terminal."""
    monkeypatch.setenv("COLUMNS", "60")
    row = dict(runs=2, accuracy=0.5, logprob_per_token=-0.0625, ttft_s=0.95, prefill_s=0.94, decode_tokens_per_s=16.2,
               decode_tokens=31, timed_total_s=2.87, total_s=1.31, kv_cache_bytes=2.5e7, errors=0)  # fmt: skip
    frame_table(pd.DataFrame([dict(label="Full attention", **row), dict(label="SWA only (W=64)", **row)]), "t")
    lines = capsys.readouterr().out.splitlines()
    assert max(map(len, lines)) <= 60
    parts = sum(line.strip().startswith("t (continued)") for line in lines) + 1
    assert parts >= 2 and sum("label" in line for line in lines) == parts  # the label column heads every part
    text = "\n".join(lines)
    for value in ("0.0625", "0.95", "0.94", "16.2 tok/s", "2.87", "1.31", "23.84 MiB"):
        assert text.count(value) == 2, value  # one per row: nothing cropped, nothing repeated
    words = {w for name in row for w in HEADERS.get(name, name).replace("_", " ").split()}
    assert all(w in text for w in words)
