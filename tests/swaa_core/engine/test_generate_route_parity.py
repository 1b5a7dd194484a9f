"""``model.generate(...)`` under the auto route on CUDA (simulated as in test_decode_path.py) returns what the eager
path asked for by name returns (``cache_implementation="dynamic"``), with the same side effects on the caller's
objects and the global RNG, or takes the eager path with a stated reason. The fixed path runs its eager steps on the
CPU, with real results. The first nine cases once diverged (a probe, 2026-12-06): generate's parameters passed by
position, transformers' config merge, rows made by num_return_sequences, and a caller's criteria and processors that
transformers lets replace or outlive its own; the guards after them agreed already."""

from __future__ import annotations

import pytest
import torch
from helpers.routing import X, eager, tiny
from helpers.streamers import Collect
from helpers.tiny_models import build_tiny_model, build_tiny_tokenizer, left_padded
from transformers import (
    GenerationConfig,
    LogitsProcessorList,
    MaxLengthCriteria,
    StoppingCriteria,
    StoppingCriteriaList,
    StopStringCriteria,
)
from transformers.generation.logits_process import SynthIDTextWatermarkLogitsProcessor

from swaa_core import SWAAConfig
from swaa_core.engine.decode_path import DecodePath


@pytest.fixture
def model():
    return tiny()


# ---------------------------------------------------------------------- once divergent


def test_a_positional_generation_config_with_beams_is_served_as_by_keyword(model, as_if_cuda):
    """generate's second parameter is ``generation_config``: by position, as by keyword, its beams take the eager
    path (once auto read only the keyword and the fixed path refused the beams)."""
    config = GenerationConfig(num_beams=2, max_new_tokens=5, do_sample=False)
    expected = eager(model, X, config)
    out = model.generate(X, config)  # once: ValueError "does not take: num_beams=2" instead of the beams' tokens
    assert torch.equal(out, expected)


def test_a_positional_generation_config_asking_for_a_dict_keeps_the_cache(model, as_if_cuda):
    """A config asking for a dict, by position: the eager path, whose dict holds the cache a second turn continues
    (once the fixed path, with past_key_values=None)."""
    config = GenerationConfig(return_dict_in_generate=True, max_new_tokens=5)
    expected = eager(model, X, config)
    out = model.generate(X, config)
    assert model._swaa_state.last_route.path is DecodePath.EAGER
    assert torch.equal(out.sequences, expected.sequences)
    assert out.past_key_values is not None


def test_a_positional_assistant_model_takes_assisted_decoding_as_by_keyword(model, as_if_cuda):
    """generate's seventh parameter is ``assistant_model``: by position, as by keyword, assisted decoding on the
    eager path (once the fixed path, which raised)."""
    assistant = build_tiny_model("llama", layers=1, seed=7)
    expected = model.generate(X, assistant_model=assistant, max_new_tokens=8)
    assert model._swaa_state.last_route.path is DecodePath.EAGER
    out = model.generate(X, None, None, None, None, None, assistant, max_new_tokens=8)
    assert torch.equal(out, expected)


def test_return_dict_in_the_models_config_with_a_passed_generation_config_keeps_the_cache(model, as_if_cuda):
    """transformers fills a passed GenerationConfig's unset fields from model.generation_config, so the call returns
    a dict with its cache (once auto read only the passed config and took the fixed path)."""
    model.generation_config.return_dict_in_generate = True
    expected = eager(model, X, generation_config=GenerationConfig(max_new_tokens=5))
    assert expected.past_key_values is not None
    out = model.generate(X, generation_config=GenerationConfig(max_new_tokens=5))
    assert torch.equal(out.sequences, expected.sequences)
    assert out.past_key_values is not None  # once: None


def test_a_streamer_with_num_return_sequences_is_served_or_routed_eager(model, as_if_cuda):
    """One prompt row, num_return_sequences=2: generate streams two rows (a BaseStreamer that takes them), so auto
    takes the eager path (once it counted one row and the fixed loop raised)."""
    torch.manual_seed(0)
    ref_stream = Collect()
    expected = eager(model, X, max_new_tokens=5, do_sample=True, num_return_sequences=2, streamer=ref_stream)
    expected_rng = torch.get_rng_state()
    torch.manual_seed(0)
    stream = Collect()
    out = model.generate(X, max_new_tokens=5, do_sample=True, num_return_sequences=2, streamer=stream)
    assert torch.equal(out, expected) and stream.tokens == ref_stream.tokens
    assert torch.equal(torch.get_rng_state(), expected_rng)


def test_a_positional_streamer_with_a_batch_is_served_or_routed_eager(model, as_if_cuda):
    """generate's eighth parameter is ``streamer``: a batch streamed, by position as by keyword, goes eager."""
    ids, mask = left_padded(torch.tensor([5, 9, 11, 30, 7, 64]), torch.tensor([12, 3, 40, 41, 42, 8, 50, 51, 52]))
    ref_stream = Collect()
    expected = model.generate(ids, streamer=ref_stream, attention_mask=mask, max_new_tokens=4)  # keyword: eager
    assert model._swaa_state.last_route.path is DecodePath.EAGER
    stream = Collect()
    out = model.generate(ids, None, None, None, None, None, None, stream, attention_mask=mask, max_new_tokens=4)
    assert torch.equal(out, expected) and stream.tokens == ref_stream.tokens


def test_a_callers_max_length_criteria_takes_precedence_as_in_generate(model, as_if_cuda):
    """transformers lets a caller's MaxLengthCriteria replace the one it builds from max_new_tokens (its merge rule:
    the custom criterion takes precedence), so generate runs to 40 tokens; the fixed loop once stopped at 32."""
    kw = dict(max_new_tokens=20, eos_token_id=[])
    expected = eager(model, X, stopping_criteria=StoppingCriteriaList([MaxLengthCriteria(40)]), **kw)
    assert expected.shape[1] == 40
    out = model.generate(X, stopping_criteria=StoppingCriteriaList([MaxLengthCriteria(40)]), **kw)
    assert torch.equal(out, expected)  # once: 32 tokens


def test_a_callers_stop_string_criteria_takes_precedence_over_stop_strings(as_if_cuda):
    """generate builds a StopStringCriteria from stop_strings and a caller's own StopStringCriteria replaces it (the
    fixed path once added its own beside the caller's, so both stopped the call)."""
    tok = build_tiny_tokenizer()
    model = tiny(vocab_size=len(tok))
    ids = tok("The pass key is 12345. What is", return_tensors="pt").input_ids

    def kw():
        return dict(max_new_tokens=20, stop_strings=["12345"], tokenizer=tok,
                    stopping_criteria=StoppingCriteriaList([StopStringCriteria(tok, ["rn"])]))  # fmt: skip

    expected = eager(model, ids, **kw())
    out = model.generate(ids, **kw())
    assert torch.equal(out, expected)  # once stopped 11 tokens earlier, at "12345"


def test_a_callers_stateful_transformers_processor_sees_the_calls_generate_makes(model, as_if_cuda):
    """A SynthID watermark processor of the caller's keeps state across calls (num_calls, context history): it sees
    the calls generate makes, none after the stop. (Once the fixed path read the stop every 16 steps here, since a
    transformers processor did not count as the caller's, and called it for steps generate never runs.)"""

    def synthid():
        return SynthIDTextWatermarkLogitsProcessor(ngram_len=3, keys=[11, 22, 33, 44], sampling_table_size=2**8,
                                                   sampling_table_seed=0, context_history_size=64, device="cpu")  # fmt: skip

    ref = synthid()
    expected = eager(model, X, max_new_tokens=40, eos_token_id=72, logits_processor=LogitsProcessorList([ref]))
    mine = synthid()
    out = model.generate(X, max_new_tokens=40, eos_token_id=72, logits_processor=LogitsProcessorList([mine]))
    assert torch.equal(out, expected)
    assert mine.state.num_calls == ref.state.num_calls  # once 16 against generate's 2
    assert torch.equal(mine.state.context_history, ref.state.context_history)


# ---------------------------------------------------------------------- guards: kinds checked that agree


class Count(StoppingCriteria):
    def __init__(self):
        self.n = 0

    def __call__(self, input_ids, scores, **kwargs):
        self.n += 1
        return torch.zeros(input_ids.shape[0], dtype=torch.bool)


def test_guard_a_stateful_criterion_and_a_one_row_streamer(model, as_if_cuda):
    results = []
    for by_name in (True, False):
        crit, stream = Count(), Collect()
        kw = dict(max_new_tokens=10, stopping_criteria=StoppingCriteriaList([crit]), streamer=stream)
        out = eager(model, X, **kw) if by_name else model.generate(X, **kw)
        results.append((out.tolist(), crit.n, stream.tokens, stream.ended))
    assert model._swaa_state.last_route.path is DecodePath.FIXED
    assert results[0] == results[1]


def test_guard_sampled_padded_batch_with_return_sequences_and_the_rng(model, as_if_cuda):
    ids, mask = left_padded(torch.tensor([5, 9, 11, 30, 7, 64]), torch.tensor([12, 3, 40, 41, 42, 8, 50, 51, 52]))
    kw = dict(attention_mask=mask, max_new_tokens=30, do_sample=True, num_return_sequences=3)
    torch.manual_seed(0)
    expected, expected_rng = eager(model, ids, **kw), torch.get_rng_state()
    torch.manual_seed(0)
    out = model.generate(ids, **kw)
    assert model._swaa_state.last_route.path is DecodePath.FIXED
    assert torch.equal(out, expected) and torch.equal(torch.get_rng_state(), expected_rng)


def test_guard_stop_strings_with_a_tokenizer(as_if_cuda):
    tok = build_tiny_tokenizer()
    model = tiny(vocab_size=len(tok))
    ids = tok("The pass key is 12345. What is", return_tensors="pt").input_ids
    for stop in ("e", "rn", "12345"):
        expected = eager(model, ids, max_new_tokens=20, stop_strings=[stop], tokenizer=tok)
        assert torch.equal(model.generate(ids, max_new_tokens=20, stop_strings=[stop], tokenizer=tok), expected)
        assert model._swaa_state.last_route.path is DecodePath.FIXED


@pytest.mark.parametrize("fa_decode", [False, True], ids=["swa", "fa-decode"])
def test_guard_chunked_prefill_and_an_inferred_mask(as_if_cuda, fa_decode):
    model = tiny(cfg=SWAAConfig(sliding_window_size=4, keep_first=1, force_fa_decode=fa_decode))
    trailing_pad = torch.tensor([[5, 9, 11, 30, 7, 64, 12, 0]])  # generate infers a mask that hides the last token
    for ids, kw in [(X, dict(prefill_chunk_size=5)), (trailing_pad, {})]:
        expected = eager(model, ids, max_new_tokens=12, **kw)
        assert torch.equal(model.generate(ids, max_new_tokens=12, **kw), expected)
        assert model._swaa_state.last_route.path is DecodePath.FIXED


def test_guard_gemma3_with_a_hybrid_cache_in_its_config(as_if_cuda):
    model = tiny("gemma3")
    model.generation_config.cache_implementation = "hybrid"
    expected = eager(model, X, max_new_tokens=20)
    assert torch.equal(model.generate(X, max_new_tokens=20), expected)
    assert model._swaa_state.last_route.path is DecodePath.FIXED


def test_guard_a_call_that_raises_leaves_the_model_usable(model, as_if_cuda):
    class Boom(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            if input_ids.shape[1] == X.shape[1] + 3:
                raise RuntimeError("boom")
            return torch.zeros(input_ids.shape[0], dtype=torch.bool)

    with pytest.raises(RuntimeError, match="boom"):
        model.generate(X, max_new_tokens=10, stopping_criteria=StoppingCriteriaList([Boom()]))
    assert model._swaa_state.last_route.path is DecodePath.FIXED
    out = model.generate(X, max_new_tokens=10)
    assert torch.equal(out, eager(tiny(), X, max_new_tokens=10))


def test_stop_strings_in_the_models_config_take_the_eager_path_and_stop_there(as_if_cuda):
    """stop_strings set in model.generation_config: the fixed path does not serve them (it cannot override the
    model's config for generate's own loop), so auto takes the eager path with that reason instead of raising."""
    tok = build_tiny_tokenizer()
    model = tiny(vocab_size=len(tok))
    ids = tok("The pass key is 12345. What is", return_tensors="pt").input_ids
    model.generation_config.stop_strings = ["rn"]
    expected = eager(model, ids, max_new_tokens=20, tokenizer=tok)
    out = model.generate(ids, max_new_tokens=20, tokenizer=tok)
    route = model._swaa_state.last_route
    assert route.path is DecodePath.EAGER and "stop_strings (this path needs the model's tokenizer" in route.reason
    assert torch.equal(out, expected)


def test_a_call_refused_while_routing_leaves_no_stale_route(model, as_if_cuda):
    model.generate(X, max_new_tokens=3)
    assert model._swaa_state.last_route.path is DecodePath.FIXED
    with pytest.raises(TypeError, match="multiple values for argument 'inputs'"):
        model.generate(X, inputs=X, max_new_tokens=3)
    assert model._swaa_state.last_route is None
