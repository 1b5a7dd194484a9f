"""Which decode path a generation takes and why (swaa_core.engine.decode_path), and ``model.generate`` after
``apply_swaa`` taking it: the rules against hand-written expectations, and the tokens of each path against
transformers' own ``generate`` over the dynamic SWAA cache. A CUDA device is stood in for only where the routing
decision is under test (``model_device``); the fixed path then runs its eager steps on the CPU, with real results."""

from __future__ import annotations

import pytest
import torch
from helpers.tiny_models import build_tiny_model
from transformers import DynamicCache, GenerationConfig, TextStreamer

import swaa_core.engine.decode_path as dp
import swaa_core.engine.fast_decode as fast_decode
import swaa_core.engine.patch as patch
from swaa_core import SWAAConfig, apply_swaa
from swaa_core.engine.decode_path import DecodePath, fixed_refusals, resolve

CPU_REASON = "the CPU default (both paths timed on this kind of machine: docs/benchmarks.md)"


@pytest.mark.parametrize(
    ("requested", "device", "refusals", "path", "reason"),
    [
        (None, "cuda", (), "fixed", "fixed-buffer: CUDA, batch 1, greedy"),
        ("auto", "cuda:0", (), "fixed", "fixed-buffer: CUDA, batch 1, greedy"),
        ("auto", "cuda", ("num_beams=2",), "eager", "eager: the fixed-buffer path does not take num_beams=2"),
        ("auto", "cpu", (), "eager", f"eager: {CPU_REASON}"),
        ("auto", "cpu", ("num_beams=2",), "eager", "eager: the fixed-buffer path does not take num_beams=2"),
        ("auto", "mps", (), "eager", "eager: the fixed-buffer path is the default on CUDA only, not mps"),
        ("fixed", "cpu", (), "fixed", "fixed-buffer: asked for (cpu, batch 1, greedy)"),
        ("FIXED", "cuda", (), "fixed", "fixed-buffer: asked for (cuda, batch 1, greedy)"),
        ("eager", "cuda", (), "eager", "eager: asked for"),
        (DecodePath.EAGER, "cpu", ("num_beams=2",), "eager", "eager: asked for"),
    ],
)
def test_resolution_rules(requested, device, refusals, path, reason):
    route = resolve(requested, device, refusals=refusals)
    assert (route.path.value, route.reason) == (path, reason)
    assert route.requested == DecodePath.of(requested)


def test_the_fixed_path_refuses_by_name_what_it_cannot_serve():
    with pytest.raises(ValueError, match=r"does not take: num_beams=2, output_scores=True\. Ask for the eager path"):
        resolve("fixed", "cuda", refusals=("num_beams=2", "output_scores=True"))


@pytest.mark.parametrize(
    ("value", "static_cache", "expected"),
    [(None, None, "auto"), ("Eager", None, "eager"), (None, True, "fixed"), (None, False, "eager"),
     ("fixed", True, "fixed"), ("auto", False, "eager")],
)  # fmt: skip
def test_the_path_and_its_older_spelling(value, static_cache, expected):
    assert DecodePath.of(value, static_cache=static_cache) == expected


@pytest.mark.parametrize(
    ("value", "static_cache", "message"),
    [("fast", None, "decode_path must be one of 'auto', 'fixed', 'eager', got 'fast'"),
     ("eager", True, "static_cache=True asks for the fixed decode path, but decode_path asks for 'eager'"),
     (None, "yes", "static_cache must be True or False, got 'yes'")],
)  # fmt: skip
def test_bad_paths_are_refused_by_name(value, static_cache, message):
    with pytest.raises(ValueError, match=message):
        DecodePath.of(value, static_cache=static_cache)


# ---------------------------------------------------------------------- what of a generate call the fixed path serves


@pytest.fixture
def model():
    m = build_tiny_model("llama", layers=3, seed=5)
    m.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return m


X = torch.tensor([[5, 9, 11, 30, 7, 64, 12, 3, 40, 41, 42, 8]])


BEAMS = "num_beams=2 (beam search needs another decoding loop than greedy / sampled decoding)"
RETURNS_CACHE = (
    "return_dict_in_generate (generate's output holds its cache, past_key_values, which a next turn continues; the "
    "fixed buffers give none: cache_implementation='static' takes the fixed path without it)"
)
NO_CACHE = (
    "use_cache=False (this path decodes from its cache; without one generate recomputes the whole sequence per token)"
)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        (dict(max_new_tokens=5), []),
        (dict(max_new_tokens=5, do_sample=True, temperature=0.7, top_k=5, top_p=0.9), []),
        (dict(max_new_tokens=5, output_attentions=False, num_beams=1, repetition_penalty=1.0), []),  # defaults
        (dict(generation_config=GenerationConfig(no_repeat_ngram_size=2, max_new_tokens=5)), []),  # applied there
        (dict(max_new_tokens=5, num_beams=2), [BEAMS]),
        (dict(generation_config=GenerationConfig(num_beams=2, max_new_tokens=5)), [BEAMS]),
        (dict(max_new_tokens=5, past_key_values=DynamicCache()),
         ["past_key_values (this path prefills the prompt into a cache of its own)"]),
        (dict(max_new_tokens=5, attention_mask=torch.tensor([[1] * 11 + [0]])), ["attention_mask (right padding)"]),
        (dict(max_new_tokens=5, return_dict_in_generate=True, output_scores=True), [RETURNS_CACHE]),
        (dict(generation_config=GenerationConfig(return_dict_in_generate=True, max_new_tokens=5)), [RETURNS_CACHE]),
        (dict(max_new_tokens=5, return_dict_in_generate=True, use_cache=False), [NO_CACHE]),  # no cache to return
    ],
    ids=["greedy", "sampled", "defaults", "config-ngram", "beams", "config-beams", "cache", "right-pad", "dict",
         "config-dict", "dict-no-cache"],
)  # fmt: skip
def test_fixed_refusals_of_a_call(model, kwargs, expected):
    assert fixed_refusals(model, (X,), kwargs) == expected


def test_the_models_own_config_and_a_multi_row_streamer_are_read(model):
    model.generation_config.num_beams = 2
    assert fixed_refusals(model, (X,), {"max_new_tokens": 4}) == [BEAMS]
    model.generation_config.num_beams = None
    streamer = TextStreamer(tokenizer=None)
    assert fixed_refusals(model, (X.repeat(2, 1),), {"streamer": streamer}) == ["streamer (a streamer with 2 rows)"]


# ---------------------------------------------------------------------- model.generate after apply_swaa

CFG = SWAAConfig(sliding_window_size=4, keep_first=1)


@pytest.fixture
def static_calls(monkeypatch):
    calls = []
    real = fast_decode.generate_static

    def spy(model, args, kwargs):
        calls.append(sorted(kwargs))
        return real(model, args, kwargs)

    monkeypatch.setattr(patch, "generate_static", spy)  # the name the generate wrapper calls
    return calls


def eager_reference(model, inputs=X, **kwargs):
    """transformers' generate over the dynamic SWAA cache (the path asked for by name)."""
    return model.generate(inputs, cache_implementation="dynamic", **kwargs)


def test_generate_on_cpu_keeps_the_eager_path_by_default(model, static_calls):
    """The CPU default: transformers' generate with the dynamic SWAA cache, exactly as before the routing existed."""
    apply_swaa(model, CFG)
    out = model.generate(X, max_new_tokens=12, do_sample=False)
    route = model._swaa_state.last_route
    assert (route.path, route.reason) == (DecodePath.EAGER, f"eager: {CPU_REASON}") and static_calls == []
    assert torch.equal(out, eager_reference(model, max_new_tokens=12, do_sample=False))
    assert model._swaa_state.last_route.reason == "eager: asked for"


def test_generate_on_cuda_takes_the_fixed_path_with_the_same_tokens(model, as_if_cuda, static_calls):
    apply_swaa(model, CFG)
    out = model.generate(X, max_new_tokens=12, do_sample=False)
    route = model._swaa_state.last_route
    assert (route.path, route.reason) == (DecodePath.FIXED, "fixed-buffer: CUDA, batch 1, greedy")
    assert len(static_calls) == 1
    assert torch.equal(out, eager_reference(model, max_new_tokens=12))
    assert len(static_calls) == 1  # cache_implementation="dynamic" forced the eager path


def test_generate_on_cuda_falls_back_with_the_reason(model, as_if_cuda, static_calls):
    apply_swaa(model, CFG)
    out = model.generate(X, max_new_tokens=6, num_beams=2, do_sample=False)
    route = model._swaa_state.last_route
    assert (route.path, route.reason) == (DecodePath.EAGER, f"eager: the fixed-buffer path does not take {BEAMS}")
    assert static_calls == [] and torch.equal(out, eager_reference(model, max_new_tokens=6, num_beams=2))


@pytest.mark.parametrize("fa_decode", [False, True], ids=["swa", "fa-decode"])
def test_an_output_dict_keeps_the_cache_a_second_turn_continues(model, as_if_cuda, static_calls, fa_decode):
    """generate's output dict carries its cache, and a chat's next turn continues it. The fixed buffers give none, so
    auto takes the eager path for such a call and says why; turn 2 then equals turn 2 on the eager path by name.
    Without the cache, turn 2 would prefill turn 1's answer, which under FA decode was decoded with every key."""
    apply_swaa(model, SWAAConfig(sliding_window_size=4, keep_first=1, force_fa_decode=fa_decode))
    kw = dict(max_new_tokens=8, do_sample=False, return_dict_in_generate=True, output_logits=True)
    first = model.generate(X, **kw)
    route = model._swaa_state.last_route
    assert (route.path, route.reason) == (
        DecodePath.EAGER,
        f"eager: the fixed-buffer path does not take {RETURNS_CACHE}",
    )
    assert static_calls == [] and first.past_key_values is not None
    turn2 = torch.cat([first.sequences, torch.tensor([[44, 45, 46, 47, 48]])], 1)
    second = model.generate(turn2, past_key_values=first.past_key_values, **kw)
    ref_first = eager_reference(model, **kw)
    assert torch.equal(first.sequences, ref_first.sequences)
    ref_second = model.generate(turn2, past_key_values=ref_first.past_key_values, **kw)  # a cache: eager, by rule
    assert torch.equal(second.sequences, ref_second.sequences)
    assert all(torch.equal(a, b) for a, b in zip(second.logits, ref_second.logits, strict=True))
    if fa_decode:  # what a turn 2 without the cache gives: other logits, so the cache is what the test rests on
        fresh = eager_reference(model, inputs=turn2, **kw)
        assert any(not torch.allclose(a, b, atol=1e-4) for a, b in zip(fresh.logits, ref_second.logits, strict=True))


def test_static_cache_implementation_forces_the_fixed_path_and_refuses_by_name(model, static_calls):
    apply_swaa(model, CFG)
    out = model.generate(X, max_new_tokens=8, cache_implementation="static")
    assert model._swaa_state.last_route.reason == "fixed-buffer: asked for (cpu, batch 1, greedy)"
    assert len(static_calls) == 1 and torch.equal(out, eager_reference(model, max_new_tokens=8))
    with pytest.raises(ValueError, match="does not take: num_beams=2"):
        model.generate(X, max_new_tokens=8, num_beams=2, cache_implementation="static")
    assert model._swaa_state.last_route.path is DecodePath.FIXED  # asked for, and refused by the path itself


@pytest.mark.parametrize(
    "config",
    [SWAAConfig(sliding_window_size=4, keep_first=1, non_sliding_layers=[1]),
     SWAAConfig(sliding_window_size=3, keep_first=2, force_fa_decode=[0]), SWAAConfig(sliding_window_size=5)],
    ids=["a full layer", "an FA-decode layer", "every layer evicting"],
)  # fmt: skip
def test_auto_keeps_calls_whose_fixed_buffers_exceed_free_memory_on_the_eager_path(
    model, as_if_cuda, monkeypatch, config
):
    """The fixed path sizes its buffers to prompt + max_new_tokens up front; generate's growing cache holds only the
    tokens made. Auto takes the fixed path while those buffers fit the free memory, to the byte, and the eager path
    (with the reason) once they do not, with generate's tokens either way. The bytes needed are what the fixed path
    really allocates (its own kv_cache_bytes_per_layer)."""
    apply_swaa(model, config)
    kw = dict(max_new_tokens=9, do_sample=False)
    need = sum(fast_decode.fast_generate(model, X, **kw).kv_cache_bytes_per_layer)
    expected = eager_reference(model, **kw)
    for free, path in ((need, DecodePath.FIXED), (need - 1, DecodePath.EAGER)):
        monkeypatch.setattr(dp, "free_bytes", lambda device, free=free: free)
        out = model.generate(X, **kw)
        route = model._swaa_state.last_route
        assert route.path is path and torch.equal(out, expected)
    assert "max_new_tokens=9 (the fixed buffers for 1 x (12 + 9) tokens need" in route.reason
