"""The comparison board and the saved/lost summary, from RunResult values (no model)."""

from __future__ import annotations

from app.board import DONE, RUNNING, ColumnView, answer_probability, render_board, summary_markdown
from swaa_core.eval.runner import RunResult


def _result(label, **kw):
    base = dict(output_text="42", answer_text="42", correct=True, prompt_tokens=1000, generated_tokens=5, ttft_s=2.0,
                prefill_s=2.0, decode_tokens_per_s=10.0, total_s=2.5, kv_cache_bytes=1000, backend="sdpa",
                timed_tokens=32, decode_tokens=31, timed_total_s=5.1, timing_extra_tokens=27)  # fmt: skip
    base.update(kw)
    return RunResult(label=label, config=None, **base)


def test_model_and_user_text_is_escaped():
    view = ColumnView("<b>label</b>", "desc", True, status=RUNNING, text="<script>alert(1)</script>")
    html = render_board([view])
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;b&gt;label&lt;/b&gt;" in html


def test_finished_columns_show_metrics_and_verdict():
    views = [
        ColumnView("Full attention", "full attention", True, status=DONE, result=_result("Full attention")),
        ColumnView("SWA", "SWA 64", False, status=DONE, result=_result("SWA", correct=False, answer_text="7")),
    ]
    html = render_board(views)
    assert html.count('data-testid="metrics"') == 2
    assert "✓ correct" in html and "✗ incorrect" in html


def test_summary_reports_speedups_savings_and_losses():
    full = _result("Full attention", ttft_s=4.0, timed_total_s=8.0, kv_cache_bytes=4 * 2**20)
    # a longer answer (more total time) must not count against SWA: speeds come from the same 32 tokens
    swa = _result("SWA", ttft_s=2.0, decode_tokens_per_s=15.0, timed_total_s=4.0, total_s=30.0, generated_tokens=32,
                  timing_extra_tokens=0, kv_cache_bytes=2**20, correct=False, answer_text="7")  # fmt: skip
    views = [
        ColumnView("Full attention", "", True, status=DONE, result=full),
        ColumnView("SWA", "", False, status=DONE, result=swa),
    ]
    text = summary_markdown(views)
    # the first column is the cards' "time to first token" row, under the same name
    assert "| config | time to first token | decode speed | time to token 32 | KV cache | answer |" in text
    one = "(one run each: no spread)"  # a comparison times each column once: the ratio says it has no spread
    row = f"| SWA | 2.00× faster {one} | 1.50× faster {one} | 2.00× faster {one} | 75% smaller (3.0 MiB saved) | **lost** the answer |"
    assert row in text and "first 32 generated tokens" in text
    assert "the 31 steps from token 1 to token 32" in text  # the cards' "over 31 steps"
    assert "time to first token" in render_board(views)


def test_speeds_from_too_few_or_unequal_tokens_are_not_ranked():
    full = _result("Full attention")
    few = _result("SWA", timed_tokens=6, decode_tokens=5, decode_tokens_per_s=99.0, timed_total_s=0.1)
    other = _result("SWA 2", timed_tokens=40, decode_tokens=39, decode_tokens_per_s=99.0, timed_total_s=0.1)
    views = [ColumnView(r.label, "", r is full, status=DONE, result=r) for r in (full, few, other)]
    text = summary_markdown(views)
    same = "within noise (one run each: no spread)"
    assert f"| SWA | {same} | too few tokens to compare (5 decode steps) | too few tokens" in text
    assert f"| SWA 2 | {same} | token counts differ | token counts differ |" in text
    assert "faster" not in text and "slower" not in text
    html = render_board(views)
    assert "99.0 tok/s, too few tokens to compare (5 decode steps)" in html
    assert "10.0 tok/s over 31 steps" in html and "(+27 unseen, for timing)" in html


def test_summary_explains_a_slower_short_prompt_and_fa_decode_memory():
    full = _result("Full attention", ttft_s=1.0, timed_total_s=1.2)
    slow = _result("SWA + FA decode", ttft_s=1.5, timed_total_s=1.8)
    slow.config = {"sliding_window_size": 64, "keep_first": 0, "force_fa_decode": True, "non_sliding_layers": []}
    views = [
        ColumnView("Full attention", "", True, status=DONE, result=full),
        ColumnView("SWA + FA decode", "", False, status=DONE, result=slow),
    ]
    text = summary_markdown(views)
    assert "1.50× slower" in text and "overhead can outweigh" in text and "cache must keep every token" in text


def test_answer_probability_reads_like_a_percentage():
    assert answer_probability(None) == "–"
    assert answer_probability(-0.3566749439) == "70%"
    assert answer_probability(-5.0) == "0.67%"
    assert answer_probability(-30.0) == "<0.01%"
