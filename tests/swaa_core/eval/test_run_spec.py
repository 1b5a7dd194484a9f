"""The run value: checked once when made (messages name the field), equal inputs give equal values, every field
reaches the runner, and compare / run_one take it or their old keywords alike."""

from __future__ import annotations

import threading
from dataclasses import FrozenInstanceError, fields
from types import SimpleNamespace

import pytest
from helpers.tiny_models import build_tiny_model, build_tiny_tokenizer

from swaa_core import SWAAConfig
from swaa_core.engine.decode_path import DecodePath
from swaa_core.eval.run_spec import RunSpec
from swaa_core.eval.runner import BASELINE_LABEL, compare, run_one
from swaa_core.eval.tasks import make_task

SWA = SWAAConfig(sliding_window_size=16)


@pytest.fixture(scope="module")
def loaded():
    tok = build_tiny_tokenizer()
    model = build_tiny_model("llama", layers=2, vocab_size=len(tok), seed=7)
    return SimpleNamespace(model=model, tokenizer=tok, lock=threading.Lock(), info=None)


@pytest.fixture(scope="module")
def sample(loaded):
    return make_task("passkey", loaded.tokenizer, length_tokens=180, depth=0.5, seed=1)


BAD = [
    ({"max_new_tokens": 0}, "max_new_tokens must be a whole number >= 1, got 0."),
    ({"max_new_tokens": 2.0}, "max_new_tokens must be a whole number >= 1, got 2.0."),
    ({"max_new_tokens": True}, "max_new_tokens must be a whole number >= 1, got True."),
    ({"timing_tokens": -1}, "timing_tokens must be a whole number >= 0, got -1."),
    ({"cot": "yes"}, "cot must be True or False, got 'yes'."),
    ({"warmup": 1}, "warmup must be True or False, got 1."),
    ({"score_logprob": None}, "score_logprob must be True or False, got None."),
    ({"system": 3}, "system must be text or None, got int."),
    ({"backend": "cuda"}, "backend must be one of 'auto', 'reference', 'blocked', 'flex', 'fa4', 'flash', got 'cuda'."),
    ({"decode_path": "graph"}, "decode_path must be one of 'auto', 'fixed', 'eager', got 'graph'."),
    ({"decode_path": "eager", "static_cache": True},
     "static_cache=True asks for the fixed decode path, but decode_path asks for 'eager': give one of them."),
]  # fmt: skip


@pytest.mark.parametrize(
    ("settings", "message"), BAD, ids=[next(iter(s)) + "=" + repr(s[next(iter(s))]) for s, _ in BAD]
)
def test_a_bad_setting_is_refused_when_the_value_is_made_naming_its_field(settings, message):
    with pytest.raises(ValueError) as info:
        RunSpec(**settings)
    assert str(info.value) == message


@pytest.mark.parametrize(("settings", "message"), BAD[:3] + BAD[-2:], ids=["n=0", "n=2.0", "n=True", "path", "both"])
def test_the_runner_reports_the_same_message_as_each_runs_error(loaded, sample, settings, message):
    assert message in run_one(loaded, sample, SWA, **settings).error
    results = compare(loaded, sample, {"swa": SWA}, **settings)
    assert [r.label for r in results] == [BASELINE_LABEL, "swa"] and all(message in r.error for r in results)


def test_equal_settings_make_equal_hashable_values():
    a = RunSpec(max_new_tokens=8, decode_path="FIXED")
    b = RunSpec(max_new_tokens=8, static_cache=True)
    assert a == b and hash(a) == hash(b) and a.decode_path is DecodePath.FIXED
    assert RunSpec(decode_path=None) == RunSpec() and RunSpec(static_cache=False).decode_path is DecodePath.EAGER
    assert "static_cache" not in {f.name for f in fields(RunSpec)}  # merged, never stored beside decode_path
    with pytest.raises(FrozenInstanceError):
        a.max_new_tokens = 9  # type: ignore[misc]


def test_keywords_that_are_no_setting_or_given_twice_are_refused_by_name(loaded, sample):
    with pytest.raises(TypeError, match=r"Unknown run setting\(s\) \['max_tokens'\]"):
        run_one(loaded, sample, SWA, max_tokens=3)
    with pytest.raises(TypeError, match=r"not both: \['cot'\]"):
        compare(loaded, sample, {"swa": SWA}, spec=RunSpec(), cot=True)
    with pytest.raises(TypeError, match="spec must be a RunSpec, got dict"):
        run_one(loaded, sample, SWA, spec={"max_new_tokens": 3})


def test_every_field_reaches_the_runner(loaded, sample):
    """Nothing accepted and ignored: a run reads every field of its RunSpec (the behaviour each one changes is
    tested where it lives: test_runner, test_decode_paths, test_cot)."""
    names = {f.name for f in fields(RunSpec)}
    read: set[str] = set()

    class Watched(RunSpec):
        def __getattribute__(self, name):
            if name in names:
                read.add(name)
            return super().__getattribute__(name)

    spec = Watched(max_new_tokens=2, timing_tokens=3, system="Be brief.")
    read.clear()  # what checking the value read
    result = run_one(loaded, sample, SWA, spec=spec)
    assert result.error is None and result.answer_logprob is not None
    assert read == names, f"the runner never reads {sorted(names - read)}"


def test_compare_takes_the_value_or_its_old_keywords_alike(loaded, sample):
    keywords = dict(max_new_tokens=3, timing_tokens=3, score_logprob=False, decode_path="eager")
    by_keywords = compare(loaded, sample, {"swa": SWA}, **keywords)
    by_value = compare(loaded, sample, {"swa": SWA}, spec=RunSpec(**keywords))
    for a, b in zip(by_keywords, by_value, strict=True):
        assert (a.label, a.output_text, a.generated_tokens, a.timed_tokens, a.decode_path, a.answer_logprob) == (
            b.label, b.output_text, b.generated_tokens, b.timed_tokens, b.decode_path, b.answer_logprob
        )  # fmt: skip
        assert a.error is None and a.answer_logprob is None and a.timed_tokens == 3
