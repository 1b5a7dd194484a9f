"""Calls where the fixed-buffer decode path (fast_generate, generate(cache_implementation="static") after apply_swaa)
once gave other tokens, logits or random draws than transformers' own ``generate`` (found by a probe, 2026-12-06):
a natively sliding layer with a masked token inside the prompt, position_ids given to generate, and the global RNG
after a sampled call that stops early. Every expected value comes from ``generate`` itself."""

from __future__ import annotations

import pytest
import torch
from helpers.tiny_models import build_tiny_model

from swaa_core import SWAAConfig, apply_swaa, remove_swaa
from swaa_core.engine.fast_decode import fast_generate

OUTPUTS = dict(return_dict_in_generate=True, output_logits=True)


def prompt(n: int = 20, seed: int = 7) -> torch.Tensor:
    return torch.randint(3, 97, (1, n), generator=torch.Generator().manual_seed(seed))


def assert_same_logits(got, expected) -> None:
    assert len(got) == len(expected)
    for step, (a, b) in enumerate(zip(got, expected, strict=True)):
        assert torch.allclose(a, b, atol=1e-5), f"step {step}: max |diff| {float((a - b).abs().max()):.3g}"


NATIVE_WINDOW = {"gemma3": {}, "mistral": dict(sliding_window=8)}  # both: layers with their own 8-token window


@pytest.mark.parametrize("inferred", [False, True], ids=["mask-given", "pad-token-in-prompt"])
@pytest.mark.parametrize("family", NATIVE_WINDOW)
def test_native_sliding_window_with_a_masked_token_inside_the_prompt_as_generate(family, inferred):
    """A model without SWAA whose own layers slide (Gemma3's local layers, Mistral's sliding_window): a prompt with
    a masked token inside it (an explicit mask, or the pad token inside the prompt, which generate turns into such a
    mask) gives generate's tokens and logits. transformers counts its window in cache slots (a masked slot takes one
    of the W places); the fixed path's full-attention plans count real positions (mask cumsum), so its window reaches
    one real token further back per hole, from the prefill on."""
    model = build_tiny_model(family, eos_token_id=None, **NATIVE_WINDOW[family])
    ids = prompt()
    holes = [3, 14, 17]
    kw = dict(max_new_tokens=6, **OUTPUTS)
    if inferred:
        ids[0, holes] = model.generation_config.pad_token_id  # generate infers mask = ids != pad
    else:
        mask = torch.ones_like(ids)
        mask[0, holes] = 0
        kw["attention_mask"] = mask
    with torch.no_grad():
        expected = model.generate(ids, do_sample=False, **kw)
        got = fast_generate(model, ids, **kw)
    assert_same_logits(got.logits, expected.logits)
    assert torch.equal(got.sequences, expected.sequences)


@pytest.mark.parametrize("config", [None, SWAAConfig(sliding_window_size=6, keep_first=2)], ids=["full", "evicting"])
def test_position_ids_given_to_generate_are_applied_or_refused(config):
    """generate takes ``position_ids`` for the prompt and continues them for each new token
    (_update_model_kwargs_for_generation); the fixed path accepts them (MODEL_KWARGS) and drops them: its prefill
    and steps use positions from the mask, so the logits are those of a call without them."""
    model = build_tiny_model("llama", eos_token_id=None)
    ids = prompt(12)
    positions = torch.arange(12)[None] * 3
    kw = dict(max_new_tokens=4, do_sample=False, **OUTPUTS)
    with torch.no_grad():
        if config is None:
            expected = model.generate(ids, position_ids=positions, **kw)
            without = model.generate(ids, **kw)
            run = lambda: fast_generate(model, ids, position_ids=positions, **kw)  # noqa: E731
        else:
            apply_swaa(model, config)
            expected = model.generate(ids, position_ids=positions, cache_implementation="dynamic", **kw)
            without = model.generate(ids, cache_implementation="dynamic", **kw)
            run = lambda: model.generate(ids, position_ids=positions, cache_implementation="static", **kw)  # noqa: E731
    assert not torch.allclose(without.logits[0], expected.logits[0], atol=1e-5)  # the positions matter: can fail
    try:
        got = run()
    except ValueError as e:  # refusing them by name is an acceptable answer too
        assert "position_ids" in str(e)
    else:
        assert_same_logits(got.logits, expected.logits)
    remove_swaa(model)


def test_global_rng_after_a_sampled_call_that_stops_early_is_generates():
    """One seed, then two sampled generate calls, the first ending early at an end-of-sequence token: the second
    call's tokens are those generate gives. On the fixed path the first call keeps sampling (and drawing from the
    global RNG) for up to CHECK_EVERY - 1 steps after every row has stopped (fast_decode._Chooser.stopped), so the
    second call starts from another RNG state. fast_generate's docstring says so; generate(cache_implementation=
    "static") promises generate's tokens and does not."""
    model = build_tiny_model("llama", eos_token_id=None)
    apply_swaa(model, SWAAConfig(sliding_window_size=6, keep_first=2))
    ids = prompt(12)
    first = dict(max_new_tokens=30, do_sample=True, eos_token_id=list(range(3, 97, 3)), pad_token_id=0)

    def two_calls(cache: str):
        torch.manual_seed(0)
        with torch.no_grad():
            a = model.generate(ids, cache_implementation=cache, **first)
            b = model.generate(ids, max_new_tokens=20, do_sample=True, cache_implementation=cache)
        return a, b

    (ref_a, ref_b), (a, b) = two_calls("dynamic"), two_calls("static")
    assert ref_a.shape[1] < ids.shape[1] + 16  # the first call stopped early, inside the first CHECK_EVERY steps
    assert torch.equal(a, ref_a)
    assert torch.equal(b, ref_b)
    remove_swaa(model)


def test_a_prefix_allowed_tokens_fn_is_called_as_often_as_generate_calls_it():
    """generate wraps the caller's prefix_allowed_tokens_fn in PrefixConstrainedLogitsProcessor (a transformers
    module), so the fixed path keeps calling the caller's function for up to CHECK_EVERY - 1 steps after every row
    has stopped: the same 'processor of the caller's own' case the commit fixes for logits_processor=."""
    model = build_tiny_model("llama", eos_token_id=None)
    apply_swaa(model, SWAAConfig(sliding_window_size=6, keep_first=2))
    ids = torch.randint(3, 97, (1, 12), generator=torch.Generator().manual_seed(7))
    calls = {"dynamic": 0, "static": 0}

    def run(cache):
        def allowed(batch_id, seq):
            calls[cache] += 1
            return list(range(model.config.vocab_size))

        with torch.no_grad():
            return model.generate(
                ids,
                max_new_tokens=30,
                do_sample=False,
                eos_token_id=list(range(3, 97, 2)),
                pad_token_id=0,
                prefix_allowed_tokens_fn=allowed,
                cache_implementation=cache,
            )

    ref, got = run("dynamic"), run("static")
    remove_swaa(model)
    assert ref.shape[1] < ids.shape[1] + 16  # stopped early
    assert torch.equal(got, ref)
    assert calls["static"] == calls["dynamic"]
