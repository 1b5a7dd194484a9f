"""The CLI's summary tables (swaa eval / sweep) as a reader sees them in a pipe."""

from __future__ import annotations

import pandas as pd

from swaa_core.cli.output import frame_table

LONG = "Recommended: 1/2 FA layers + FA decode + sinks (W=256, 10 sinks)"


def test_summary_table_keeps_every_header_and_label_whole(capsys, monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)  # a pipe: PIPED_WIDTH columns
    row = dict(runs=2, accuracy=1.0, logprob_per_token=-0.06, ttft_s=0.95, prefill_s=0.94, decode_tokens_per_s=16.2,
               decode_tokens=31, timed_total_s=2.87, total_s=1.31, kv_cache_bytes=2.5e7, errors=0)  # fmt: skip
    frame_table(pd.DataFrame([dict(label="Full attention", **row), dict(label=LONG, **row)]), "t")
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if "label" in line)
    cells = [c.strip() for c in header.strip("┃ ").split("┃")]
    assert cells == ["label"] + [name.replace("_", " ") for name in row]
    # the long label folds inside its column instead of being cut
    assert all(word in out for word in LONG.split()) and out.count("16.2 tok/s") == 2
