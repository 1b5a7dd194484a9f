"""The decode path through the runner, the decode-speed curve and the sweep on a tiny random model: asking for each
path by every spelling reaches the generation, every column of a comparison (full attention included) takes the same
path, the path and the reason are in every result, row and export, and the answers do not depend on the path. A CUDA
device is stood in for only where the routing decision is under test; the fixed path then runs its eager steps on
the CPU, with real results."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from helpers.tiny_models import build_tiny_model, build_tiny_tokenizer

import swaa_core.eval.decoding as decoding
from swaa_core import SWAAConfig
from swaa_core.eval.latency import decode_speed_curve
from swaa_core.eval.results import export, to_frame
from swaa_core.eval.runner import BASELINE_LABEL, compare, run_one
from swaa_core.eval.sweep import SweepSpec, run_sweep
from swaa_core.eval.tasks import make_task

CPU_DEFAULT = ("dynamic cache", "eager: the CPU default (both paths timed on this kind of machine: docs/benchmarks.md)")
FIXED_ASKED = ("fixed buffers", "fixed-buffer: asked for (cpu, batch 1, greedy)")
EAGER_ASKED = ("dynamic cache", "eager: asked for")
SWA = SWAAConfig(sliding_window_size=32, keep_first=4)


@pytest.fixture(scope="module")
def loaded():
    tok = build_tiny_tokenizer()
    model = build_tiny_model("llama", layers=3, vocab_size=len(tok), seed=4, max_position_embeddings=4096)
    return SimpleNamespace(model=model, tokenizer=tok, lock=threading.Lock(), info=None)


@pytest.fixture(scope="module")
def sample(loaded):
    return make_task("passkey", loaded.tokenizer, length_tokens=240, depth=0.5, seed=3)


@pytest.fixture(scope="module")
def eager_answers(loaded, sample):
    results = compare(loaded, sample, {"swa": SWA}, max_new_tokens=5, decode_path="eager", score_logprob=False)
    return [r.output_text for r in results]


@pytest.mark.parametrize(
    ("asked", "expected"),
    [({}, CPU_DEFAULT), ({"decode_path": "auto"}, CPU_DEFAULT), ({"decode_path": "fixed"}, FIXED_ASKED),
     ({"static_cache": True}, FIXED_ASKED), ({"decode_path": "eager"}, EAGER_ASKED),
     ({"static_cache": False}, EAGER_ASKED)],
    ids=["default", "auto", "fixed", "static_cache=True", "eager", "static_cache=False"],
)  # fmt: skip
def test_every_column_takes_the_asked_path_and_says_so(loaded, sample, eager_answers, asked, expected):
    results = compare(loaded, sample, {"swa": SWA}, max_new_tokens=5, score_logprob=False, **asked)
    assert [r.label for r in results] == [BASELINE_LABEL, "swa"]
    assert all(r.error is None for r in results), [r.error for r in results]
    assert [(r.decode_path, r.decode_reason) for r in results] == [expected] * 2  # full attention alike
    assert [r.output_text for r in results] == eager_answers  # greedy: the path changes no token
    assert all((r.setup_s > 0) == (expected == FIXED_ASKED) for r in results)  # only the fixed path has a setup


def test_auto_on_cuda_decodes_every_column_from_fixed_buffers(loaded, sample, eager_answers, monkeypatch):
    real = decoding.resolve
    monkeypatch.setattr(decoding, "resolve", lambda requested, device: real(requested, "cuda"))
    results = compare(loaded, sample, {"swa": SWA}, max_new_tokens=5, score_logprob=False)
    assert [(r.decode_path, r.decode_reason) for r in results] == [
        ("fixed buffers", "fixed-buffer: CUDA, batch 1, greedy")
    ] * 2
    assert [r.output_text for r in results] == eager_answers
    assert all("static cache" in r.backend for r in results)


def test_a_contradiction_is_refused_by_name(loaded, sample):
    result = run_one(loaded, sample, SWA, max_new_tokens=3, decode_path="eager", static_cache=True)
    assert "static_cache=True asks for the fixed decode path, but decode_path asks for 'eager'" in result.error
    result = run_one(loaded, sample, SWA, max_new_tokens=3, decode_path="graph")
    assert "decode_path must be one of 'auto', 'fixed', 'eager', got 'graph'" in result.error


def test_results_rows_and_exports_carry_the_path_and_why(loaded, sample, tmp_path):
    results = compare(loaded, sample, {"swa": SWA}, max_new_tokens=3, decode_path="fixed", score_logprob=False)
    frame = to_frame([r.to_dict() for r in results])
    for path in (export(frame, tmp_path / "runs.csv"), export(frame, tmp_path / "runs.jsonl")):
        back = pd.read_csv(path) if path.suffix == ".csv" else pd.read_json(path, lines=True)
        assert list(zip(back["decode_path"], back["decode_reason"], strict=True)) == [FIXED_ASKED] * 2


@pytest.mark.parametrize("asked", [{"decode_path": "fixed"}, {"static_cache": True}, {"decode_path": "eager"}])
def test_the_curve_times_every_config_on_the_asked_path(loaded, asked):
    points = decode_speed_curve(loaded, {"full": None, "swa": SWA}, [64], new_tokens=4, **asked)
    expected = EAGER_ASKED if asked.get("decode_path") == "eager" else FIXED_ASKED
    assert [(p.error, p.decode_path, p.decode_reason) for p in points] == [(None, *expected)] * 2
    assert all(p.ms_per_token > 0 for p in points)


def test_a_sweep_passes_the_path_to_every_cell(loaded, tmp_path):
    spec = SweepSpec({"swa": SWA}, [200], depths=[0.5], max_new_tokens=3, score_logprob=False, static_cache=True)
    assert spec.decode_path == "fixed"
    rows = run_sweep(loaded, spec, tmp_path / "sweep.jsonl", progress=False)
    assert list(rows["label"]) == [BASELINE_LABEL, "swa"] and rows["error"].isna().all()
    assert list(zip(rows["decode_path"], rows["decode_reason"], strict=True)) == [FIXED_ASKED] * 2
    with pytest.raises(ValueError, match="decode_path must be one of"):
        SweepSpec({"swa": SWA}, [200], decode_path="static")


def test_the_paths_agree_when_the_prompt_holds_the_pad_id(loaded):
    """Chat templates end each turn with a token that is often also the pad id (SmolLM2's <|im_end|>). With EOS
    cleared for timing, generate infers padding wherever the pad id occurs unless a mask is passed, and the fixed path
    once answered a different question. Reference: the eager path (transformers' own generate loop)."""
    model = loaded.model
    pad = model.generation_config.pad_token_id if model.generation_config.pad_token_id is not None else 2
    ids = torch.arange(3, 60)[None] % (model.config.vocab_size - 3) + 3
    ids[0, ::7] = pad  # the pad id inside the prompt, as end-of-turn tokens are
    old = model.generation_config.pad_token_id
    model.generation_config.pad_token_id = pad
    try:
        runs = {path: decoding.Decoder.for_device(path, "cpu").generate(model, ids, SWA, max_new_tokens=8)
                for path in ("eager", "fixed")}  # fmt: skip
    finally:
        model.generation_config.pad_token_id = old
    assert torch.equal(runs["fixed"].sequences, runs["eager"].sequences)
