"""The page's decode-path choice (Auto / Fixed-buffer / Eager) on a tiny random model (no embedded model): it reaches
the runner and the decode-speed curve (a spy on swaa_core's fast_generate counts the calls; only that path reports a
setup time and "fixed buffers"), the answers equal the eager path's greedy answers for full attention and a SWAA
config, each result says which path ran and why, and bad values of the option are refused with a message instead of
breaking anything."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest
from helpers.tiny_models import build_tiny_model, build_tiny_tokenizer

import swaa_core.engine.fast_decode as fast_decode
import swaa_core.eval.decoding as decoding
from app import comparison, sweep_runs
from app.board import render_board, summary_markdown
from app.plots import decode_speed_figure, latency_figure
from app.prompts import Prompt
from app.state import Strategy
from swaa_core.eval.decoding import WARM_UP_TOKENS
from swaa_core.eval.latency import DYNAMIC_CACHE, FIXED_BUFFERS

FIXED = "fixed-buffer: asked for (cpu, batch 1, greedy)"
EAGER = "eager: asked for"
CPU = "eager: the CPU default (both paths timed on this kind of machine: docs/benchmarks.md)"

LAYERS, W = 4, 32
# Plain SWA (every layer slides, evicting), so the fixed buffers really are rings of W slots.
STRATEGY = Strategy(window=W, sinks=4, fa_layers_mode="none", fa_decode_mode="off")


@pytest.fixture(scope="module")
def tiny():
    tok = build_tiny_tokenizer()
    model = build_tiny_model("llama", layers=LAYERS, vocab_size=len(tok), seed=3, max_position_embeddings=4096)
    info = SimpleNamespace(num_layers=LAYERS, num_heads=4, context_length=4096)
    return SimpleNamespace(name="tiny", model=model, tokenizer=tok, info=info, lock=threading.RLock())


@pytest.fixture
def spy(monkeypatch):
    """Counts the calls of swaa_core's fast_generate (the runner's and the curve's) and lets them through."""
    calls = []
    real = fast_decode.fast_generate

    def counting(*args, **kwargs):
        calls.append(kwargs.get("max_new_tokens"))
        return real(*args, **kwargs)

    monkeypatch.setattr(decoding, "fast_generate", counting)
    monkeypatch.setattr(fast_decode, "fast_generate", counting)
    return calls


def _compare(tiny, monkeypatch, decode_path) -> list:
    """The page's comparison request, built from the same values the widgets send; the finished column views."""
    monkeypatch.setattr(comparison, "loaded_model", lambda _name: tiny)
    prompt = Prompt(source="task", task="passkey", length=300, depth=0.4, seed=1)
    options = comparison.RunOptions(cot=False, adapter="", max_new_tokens=6, pinned=[], decode_path=decode_path)
    run = comparison.Comparison.build("tiny", STRATEGY, prompt, options)
    return list(run.stream(f"test-static-{decode_path}"))[-1]


def test_the_option_reaches_the_runner_and_keeps_the_answers(tiny, monkeypatch, spy):
    dynamic = _compare(tiny, monkeypatch, "Eager")
    assert spy == []  # the eager path never touches the fixed-buffer decoder
    fixed = _compare(tiny, monkeypatch, "fixed")
    assert len(spy) >= 2  # each column: (a warm-up and) the timed run
    assert [v.label for v in fixed] == [v.label for v in dynamic] and fixed[0].label == "Full attention"
    for d, f in zip(dynamic, fixed, strict=True):
        assert d.result.error is None and f.result.error is None, (d.result.error, f.result.error)
        assert f.result.output_text == d.result.output_text  # greedy: the same tokens on either path
        assert f.result.generated_tokens == d.result.generated_tokens
        assert (d.result.decode_path, d.result.setup_s) == (DYNAMIC_CACHE, 0.0)
        assert f.result.decode_path == FIXED_BUFFERS and f.result.setup_s > 0  # only fast_generate reports a setup
        assert (d.result.decode_reason, f.result.decode_reason) == (EAGER, FIXED)
        assert f.result.timed_tokens == d.result.timed_tokens  # like for like: the same tokens timed
    # The sliding column holds sinks + W slots in its fixed buffers; full attention every token.
    assert fixed[1].result.kv_cache_bytes < fixed[0].result.kv_cache_bytes
    board, summary = render_board(fixed), summary_markdown(fixed)
    assert board.count(FIXED_BUFFERS) == 2 and "setup" in board
    assert f"Decode path: {FIXED_BUFFERS} ({FIXED}) in every column" in summary
    assert f"Decode path: {DYNAMIC_CACHE} ({EAGER}) in every column" in summary_markdown(dynamic)
    rows = comparison.result_rows(fixed, {"decode_path_asked": "fixed"})
    assert [(r["decode_path"], r["decode_reason"]) for r in rows] == [(FIXED_BUFFERS, FIXED)] * 2
    assert all(r["setup_s"] > 0 for r in rows)
    assert FIXED_BUFFERS in latency_figure(rows).layout.xaxis.title.text


def test_the_curve_goes_through_the_fixed_buffers_when_asked(tiny, monkeypatch, spy):
    monkeypatch.setattr(sweep_runs, "loaded_model", lambda _name: tiny)
    lengths, steps = (64, 128), sweep_runs.DECODE_CURVE_TOKENS
    speed = sweep_runs.DecodeSpeedSettings(("full", "swa"), lengths, window=W, sinks=0, decode_path="fixed")
    rows, note = sweep_runs.decode_curve("tiny", speed, None, _no_progress)
    # one warm-up per recipe, then one timed generation per point: first token + `steps` steps on a CPU
    assert sorted(spy) == sorted([WARM_UP_TOKENS] * 2 + [steps + 1] * 4)
    assert [(r["prompt_tokens"], r["decode_path"]) for r in rows] == [(n, FIXED_BUFFERS) for n in lengths for _ in "ab"]
    assert all(r["error"] is None and r["ms_per_token"] > 0 and r["setup_s"] > 0 for r in rows)
    assert f"Decode path: {FIXED_BUFFERS} ({FIXED}); setup per run" in note
    per_token = 2 * 2 * 8 * 4  # keys and values, 2 KV heads x 8 dims, float32
    by = {(r["label"].split()[0], r["prompt_tokens"]): r["kv_cache_bytes"] for r in rows}
    for n in lengths:  # full layers get prompt + new slots; an evicting sliding layer a ring of W
        assert by["Full", n] == LAYERS * (n + steps + 1) * per_token
        assert by["SWA", n] == LAYERS * W * per_token
    assert FIXED_BUFFERS in decode_speed_figure(rows).layout.xaxis.title.text

    spy.clear()
    plain = sweep_runs.DecodeSpeedSettings(("swa",), (64,), window=W, sinks=0)  # auto: this CPU's default
    rows, note = sweep_runs.decode_curve("tiny", plain, None, _no_progress)
    assert spy == [] and rows[0]["decode_path"] == DYNAMIC_CACHE and f"Decode path: {DYNAMIC_CACHE} ({CPU})." in note


def _no_progress(*_args, **_kwargs) -> None:
    pass


@pytest.mark.parametrize("build", [
    lambda v: comparison.Comparison.build("tiny", STRATEGY, Prompt(length=200), comparison.RunOptions(decode_path=v)),
    lambda v: sweep_runs.DecodeSpeedSettings(("swa",), (64,), decode_path=v),
    lambda v: sweep_runs.RecipeSweepSettings(("swa",), decode_path=v),
], ids=["comparison", "decode-speed", "recipe-sweep"])  # fmt: skip
def test_a_bad_value_is_refused_with_a_message(tiny, monkeypatch, build):
    monkeypatch.setattr(comparison, "loaded_model", lambda _name: tiny)
    with pytest.raises(ValueError, match=r"Decode path must be one of auto \(Auto\), fixed \(Fixed-buffer\), eager"):
        build("maybe")
    made = [build(v) for v in ("Fixed-buffer", "eager", None)]
    assert [getattr(m, "spec", m).decode_path for m in made] == ["fixed", "eager", "auto"]  # a comparison: its RunSpec
