"""``model.generate(...)`` under the auto route on CUDA (simulated) against the eager path asked for by name
(``cache_implementation="dynamic"``) or transformers' own generate without SWAA: arguments given twice, and a caller's
criteria of transformers' types or their subclasses, which generate's merge replaces by exact type only. The first
tests failed once (a review, 2026-12-06); the guards after them agreed already."""

from __future__ import annotations

import pytest
import torch
from helpers.routing import X, eager, tiny
from helpers.tiny_models import build_tiny_model, build_tiny_tokenizer, left_padded
from transformers import (
    GenerationConfig,
    LogitsProcessorList,
    MaxLengthCriteria,
    MinLengthLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    StoppingCriteriaList,
    StopStringCriteria,
    TemperatureLogitsWarper,
)
from transformers.generation.stopping_criteria import EosTokenCriteria, MaxTimeCriteria

from swaa_core import SWAAConfig
from swaa_core.engine.decode_path import DecodePath
from swaa_core.engine.fast_decode import fast_generate

EOS = 80  # greedy from X on tiny() emits it as its 12th new token (never earlier)


@pytest.fixture
def model():
    return tiny()


def route(model):
    return model._swaa_state.last_route.path


# ---------------------------------------------------------------------- faults (fail on 1bc8d12)


@pytest.mark.parametrize("twice", ["generation_config", "inputs"])
def test_an_argument_given_by_position_and_by_name_raises_typeerror_as_generate_does(model, as_if_cuda, twice):
    """generate(X, config, generation_config=other) or generate(X, inputs=X) is a TypeError for the real function
    (the eager path, and transformers without SWAA), on every path (once the keyword silently won and auto's fixed
    path served the call: 19 or 15 tokens)."""
    if twice == "generation_config":
        args, kwargs = (
            (X, GenerationConfig(max_new_tokens=5)),
            dict(generation_config=GenerationConfig(max_new_tokens=7)),
        )
    else:
        args, kwargs = (X,), dict(inputs=X, max_new_tokens=3)
    with pytest.raises(TypeError, match="multiple values"):
        eager(model, *args, **kwargs)
    with pytest.raises(TypeError):
        model.generate(*args, **kwargs)


def test_a_callers_stop_string_criteria_subclass_does_not_replace_the_one_from_stop_strings(as_if_cuda):
    """transformers replaces a criterion it builds only with a caller's one of the same type (``type(c) is``); a
    subclass of StopStringCriteria goes beside the one built from stop_strings, so generate stops at "12345" (the
    fixed path once dropped its own on ``isinstance`` and ran on to the subclass's "rn": 27 tokens against 16)."""
    tok = build_tiny_tokenizer()
    model = tiny(vocab_size=len(tok))
    ids = tok("The pass key is 12345. What is", return_tensors="pt").input_ids

    class MyStop(StopStringCriteria):
        pass

    def kw():
        return dict(max_new_tokens=20, stop_strings=["12345"], tokenizer=tok,
                    stopping_criteria=StoppingCriteriaList([MyStop(tok, ["rn"])]))  # fmt: skip

    expected = eager(model, ids, **kw())
    out = model.generate(ids, **kw())
    assert model._swaa_state.last_route.path is DecodePath.FIXED
    assert out.shape == expected.shape and torch.equal(out, expected)


class Counting:
    """A caller's subclass of a transformers criterion that counts its calls (``n``)."""

    n = 0

    def __call__(self, input_ids, scores, **kwargs):
        self.n += 1
        return super().__call__(input_ids, scores, **kwargs)


class CountingEos(Counting, EosTokenCriteria):
    pass


class CountingMax(Counting, MaxLengthCriteria):
    pass


@pytest.mark.parametrize("make", [lambda: CountingEos(EOS), lambda: CountingMax(100)], ids=["eos", "max-length"])
def test_a_callers_stateful_criteria_subclass_sees_only_the_calls_generate_makes(model, as_if_cuda, make):
    """A caller's subclass of EosTokenCriteria / MaxLengthCriteria is the caller's object (it may count): generate
    stops after 12 tokens and calls it 12 times (once the fixed loop took it for a device criterion, read the stop
    every 16 steps and called it 16 times)."""
    ref, mine = make(), make()
    expected = eager(model, X, max_new_tokens=40, eos_token_id=EOS, stopping_criteria=StoppingCriteriaList([ref]))
    out = model.generate(X, max_new_tokens=40, eos_token_id=EOS, stopping_criteria=StoppingCriteriaList([mine]))
    assert model._swaa_state.last_route.path is DecodePath.FIXED
    assert torch.equal(out, expected)
    assert mine.n == ref.n == 12  # fixed: 16


# ---------------------------------------------------------------------- guards: kinds checked that agree


def same(model, make_kwargs, ids=X):
    torch.manual_seed(0)
    expected, expected_rng = eager(model, ids, **make_kwargs()), torch.get_rng_state()
    torch.manual_seed(0)
    out, rng = model.generate(ids, **make_kwargs()), torch.get_rng_state()
    assert out.shape == expected.shape and torch.equal(out, expected)
    assert torch.equal(rng, expected_rng)


@pytest.mark.parametrize(
    "criteria, kw",
    [
        ([MaxLengthCriteria(100)], dict(max_new_tokens=5)),  # longer than the config's
        ([MaxLengthCriteria(5)], dict(max_new_tokens=10)),  # shorter than the prompt: one token
        ([MaxLengthCriteria(40), MaxLengthCriteria(30)], dict(max_new_tokens=5)),  # several: the shortest
        ([MaxLengthCriteria(30)], dict(max_length=20)),
        ([MaxLengthCriteria(30)], {}),
    ],
    ids=["longer", "below-prompt", "several", "with-max_length", "no-length"],
)
def test_guard_a_callers_max_length_criteria(model, as_if_cuda, criteria, kw):
    same(model, lambda: dict(eos_token_id=[], stopping_criteria=StoppingCriteriaList(criteria), **kw))
    assert route(model) is DecodePath.FIXED


def test_guard_max_length_criteria_past_the_models_positions_with_fa_decode(as_if_cuda):
    model = tiny(cfg=SWAAConfig(sliding_window_size=4, keep_first=1, force_fa_decode=True), max_position_embeddings=32)
    ids, mask = left_padded(torch.tensor([5, 9, 11, 30, 7, 64]), torch.tensor([12, 3, 40, 41, 42, 8, 50, 51, 52]))
    same(model, lambda: dict(attention_mask=mask, max_new_tokens=5, do_sample=True, num_return_sequences=2,
                             eos_token_id=EOS, stopping_criteria=StoppingCriteriaList([MaxLengthCriteria(60)])), ids)  # fmt: skip
    assert route(model) is DecodePath.FIXED


@pytest.mark.parametrize(
    "kw",
    [
        lambda: dict(do_sample=True, temperature=0.7, logits_processor=LogitsProcessorList([TemperatureLogitsWarper(0.3)])),
        lambda: dict(repetition_penalty=1.3, logits_processor=LogitsProcessorList([RepetitionPenaltyLogitsProcessor(3.0)])),
        lambda: dict(min_new_tokens=3, eos_token_id=EOS, logits_processor=LogitsProcessorList([MinLengthLogitsProcessor(25, EOS)])),
        lambda: dict(do_sample=True, eos_token_id=EOS, logits_processor=LogitsProcessorList()),
        lambda: dict(eos_token_id=[], stopping_criteria=StoppingCriteriaList([EosTokenCriteria(EOS)])),
        lambda: dict(do_sample=True, eos_token_id=[], stopping_criteria=StoppingCriteriaList([EosTokenCriteria(EOS)])),
        lambda: dict(do_sample=True, eos_token_id=EOS, stopping_criteria=StoppingCriteriaList([EosTokenCriteria(24)])),
        lambda: dict(stopping_criteria=StoppingCriteriaList([MaxTimeCriteria(100.0)])),
    ],
    ids=["temperature", "repetition", "min-length", "empty-list", "eos", "eos-sampled", "eos-replaced", "max-time"],
)  # fmt: skip
def test_guard_a_callers_processors_and_criteria_replacing_generates(model, as_if_cuda, kw):
    same(model, lambda: dict(max_new_tokens=30, **kw()))
    assert route(model) is DecodePath.FIXED


def test_guard_legacy_generation_parameters_on_model_config_raise_as_in_transformers(as_if_cuda):
    plain = build_tiny_model("llama", layers=3, seed=5)
    model = tiny()
    for m in (plain, model):
        m.config.temperature, m.config.do_sample = 0.5, True
    with pytest.raises(ValueError) as want:
        plain.generate(X, max_new_tokens=3)
    for call in (lambda: model.generate(X, max_new_tokens=3), lambda: eager(model, X, max_new_tokens=3)):
        with pytest.raises(ValueError) as got:
            call()
        assert str(got.value) == str(want.value)


def test_guard_return_dict_variants(model, as_if_cuda):
    model.generation_config.return_dict_in_generate = True
    passed = GenerationConfig(max_new_tokens=5, return_dict_in_generate=False)  # explicit False outranks the model's
    expected = eager(model, X, generation_config=passed)
    out = model.generate(X, generation_config=passed)
    assert isinstance(out, torch.Tensor) and torch.equal(out, expected)
    expected = eager(model, X, max_new_tokens=5, use_cache=False)
    out = model.generate(X, max_new_tokens=5, use_cache=False)
    assert route(model) is DecodePath.EAGER
    assert torch.equal(out.sequences, expected.sequences) and out.past_key_values is None
    model.generation_config.return_dict_in_generate = False
    model.config.use_cache = False
    out = model.generate(X, max_new_tokens=5, return_dict_in_generate=True)
    assert route(model) is DecodePath.EAGER and out.past_key_values is not None


def test_guard_fast_generate_compiled_with_a_callers_max_length_criteria(model):
    for length in (80, 8):
        kw = dict(
            max_new_tokens=5, eos_token_id=[], stopping_criteria=StoppingCriteriaList([MaxLengthCriteria(length)])
        )
        expected = eager(model, X, **kw)
        result = fast_generate(model, X, compile="eager", **kw)
        assert torch.equal(result.sequences, expected)
        assert result.compiled == (length == 80)  # one token (below the prompt): no decode step to compile
