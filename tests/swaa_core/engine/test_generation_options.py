"""Every generation option on the fixed-buffer decoder, against transformers' own ``generate`` with the same seed:
the same tokens, or a ValueError naming the option, whether it comes from keywords, a passed GenerationConfig or the
model's generation_config. The reference is always ``generate`` on the unmodified model or on the eager SWAA path."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from helpers.sampling import ForceTokens, assert_drawn_from
from helpers.tiny_models import build_tiny_model, build_tiny_tokenizer
from transformers import GenerationConfig, LogitsProcessorList, WatermarkingConfig
from transformers.generation.configuration_utils import CompileConfig, ContinuousBatchingConfig

from swaa_core import SWAAConfig, apply_swaa, remove_swaa
from swaa_core.engine.fast_decode import fast_generate

PROMPT, NEW = 7, 5
SWAA = SWAAConfig(sliding_window_size=4, keep_first=2)


@pytest.fixture(scope="module")
def model():
    return build_tiny_model("llama", eos_token_id=2)


@pytest.fixture(scope="module")
def one_layer():
    return build_tiny_model("llama", layers=1, eos_token_id=2)


def prompt(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 97, (batch, PROMPT), generator=torch.Generator().manual_seed(seed))


def seeded(seed: int, run, *args, **kwargs):
    """(run(*args, **kwargs), None) after seeding the global RNG, or (None, message) when it raises ValueError."""
    torch.manual_seed(seed)
    try:
        return run(*args, **kwargs), None
    except ValueError as error:
        return None, str(error)


def sequences(out):
    return out.sequences if hasattr(out, "sequences") else out


def assert_same(expected, got, what) -> None:
    assert torch.equal(sequences(got), sequences(expected)), f"{what}: tokens differ from generate's"
    for name in ("scores", "logits"):
        mine, theirs = getattr(got, name, None), getattr(expected, name, None)
        assert (mine is None) == (theirs is None), f"{what}: {name} returned by one path only"
        if theirs is not None:
            assert len(mine) == len(theirs) and all(
                torch.allclose(a, b, atol=1e-5) for a, b in zip(mine, theirs, strict=True)
            )


# --------------------------------------------------------------------------- sampling, seeds 0-9
SAMPLERS = {
    "sampling, nothing else": dict(do_sample=True),
    "temperature + top_k": dict(do_sample=True, temperature=0.7, top_k=20),
    "top_p alone (generate adds top_k=50)": dict(do_sample=True, top_p=0.8),
    "min_p + repetition_penalty": dict(do_sample=True, min_p=0.02, repetition_penalty=1.3),
    "typical_p + epsilon_cutoff": dict(do_sample=True, typical_p=0.7, epsilon_cutoff=3e-3),
    "eta_cutoff + no_repeat_ngram_size": dict(do_sample=True, eta_cutoff=3e-3, no_repeat_ngram_size=2),
}


@pytest.mark.parametrize("options", SAMPLERS)
def test_sampled_tokens_equal_generate_for_seeds_0_to_9(one_layer, options):
    """The unmodified model: transformers' generate against fast_generate (every layer full), one seed at a time."""
    model = one_layer
    kw = dict(max_new_tokens=NEW, **SAMPLERS[options])
    x = prompt()
    for seed in range(10):
        expected, _ = seeded(seed, model.generate, x, **kw)
        got, error = seeded(seed, _fast, model, x, **kw)
        assert error is None, error
        assert_same(expected, got, f"{options}, seed {seed}")


@pytest.mark.parametrize("source", ["keywords", "generation_config", "model.generation_config"])
def test_sampled_tokens_equal_the_eager_swaa_path(one_layer, source):
    """Under SWAA: generate with the dynamic SWAA cache against generate(cache_implementation='static'), the options
    arriving by each route."""
    model = one_layer
    x = prompt()
    apply_swaa(model, SWAA)
    saved = copy.deepcopy(model.generation_config)
    try:
        for options in SAMPLERS.values():
            kw = dict(max_new_tokens=NEW, **options)
            if source == "generation_config":
                kw = {"generation_config": GenerationConfig(**kw)}
            elif source == "model.generation_config":
                model.generation_config.update(**kw)
                kw = {}
            for seed in range(2):
                expected, _ = seeded(seed, model.generate, x, **kw)
                got, error = seeded(seed, model.generate, x, cache_implementation="static", **kw)
                assert error is None, error
                assert_same(expected, got, f"{options} from {source}, seed {seed}")
            model.generation_config = copy.deepcopy(saved)
    finally:
        model.generation_config = saved
        remove_swaa(model)


def test_first_token_distribution_is_the_softmax(model):
    """2,000 rows of one prompt, one sampled token each (top_k=0: no truncation), against softmax(logits) of the
    unmodified model's forward. The greedy answer (every draw on one token) fails it."""
    n = 2000
    x = prompt(batch=1).expand(n, PROMPT).contiguous()
    with torch.no_grad():
        p = model(x[:1]).logits[0, -1].float().softmax(-1)
    torch.manual_seed(0)
    got = fast_generate(model, x, max_new_tokens=1, do_sample=True, top_k=0).sequences[:, -1]
    assert_drawn_from(got, p)


def test_a_decode_step_samples_from_the_softmax(model):
    """The first free token after 4 pinned ones comes from a fixed-buffer decode step (not the prefill): 2,000 rows
    against softmax(logits) of the unmodified model's forward over the prompt and the pinned tokens."""
    n, pinned = 2000, [11, 12, 13, 14]
    x = prompt(batch=1)
    with torch.no_grad():
        p = model(torch.cat([x, torch.tensor([pinned])], 1)).logits[0, -1].float().softmax(-1)
    force = LogitsProcessorList([ForceTokens(PROMPT, pinned)])
    apply_swaa(model, SWAA)
    try:
        torch.manual_seed(0)
        out = fast_generate(model, x.expand(n, PROMPT), max_new_tokens=5, do_sample=True, top_k=0,
                            logits_processor=force, eos_token_id=[])  # fmt: skip
    finally:
        remove_swaa(model)
    assert out.decode_steps >= 1 and bool((out.sequences[:, PROMPT:-1] == torch.tensor(pinned)).all())
    assert_drawn_from(out.sequences[:, -1], p)


# --------------------------------------------------------------------------- every GenerationConfig field
def _values(vocab: int) -> dict:
    """A non-default value for every field of GenerationConfig."""
    return {
        "max_length": PROMPT + 3, "max_new_tokens": 3, "min_length": PROMPT + 4, "min_new_tokens": 4,
        "early_stopping": True, "max_time": 1e-9, "stop_strings": ["x"], "do_sample": True, "num_beams": 2,
        "use_mtp": True, "use_cache": False, "cache_implementation": "offloaded", "cache_config": {"nbits": 4},
        "max_cache_len": 64, "temperature": 0.5, "top_k": 5, "top_p": 0.7, "min_p": 0.05, "top_h": 0.5,
        "typical_p": 0.6, "epsilon_cutoff": 0.01, "eta_cutoff": 0.01, "repetition_penalty": 1.5,
        "encoder_repetition_penalty": 1.5, "length_penalty": 2.0, "no_repeat_ngram_size": 1,
        "bad_words_ids": [[5], [7, 8]], "renormalize_logits": True, "forced_bos_token_id": 5,
        "forced_eos_token_id": 6, "remove_invalid_values": True, "exponential_decay_length_penalty": (2, 1.5),
        "suppress_tokens": [5, 6, 7], "begin_suppress_tokens": [5, 6], "sequence_bias": {(9,): 5.0},
        "token_healing": True, "guidance_scale": 1.5, "watermarking_config": WatermarkingConfig(),
        "num_return_sequences": 2, "output_attentions": True, "output_hidden_states": True, "output_scores": True,
        "output_logits": True, "return_dict_in_generate": True, "pad_token_id": 3, "bos_token_id": 4,
        "eos_token_id": [5, 9], "encoder_no_repeat_ngram_size": 2, "decoder_start_token_id": 3, "is_assistant": True,
        "num_assistant_tokens": 5, "num_assistant_tokens_schedule": "heuristic", "assistant_confidence_threshold": 0.5,
        "prompt_lookup_num_tokens": 3, "max_matching_ngram_size": 3, "assistant_early_exit": 2,
        "assistant_lookbehind": 5, "target_lookbehind": 5, "assistant_ensemble_weight": 0.5,
        "speculation_type": "dflash", "compile_config": CompileConfig(), "disable_compile": True,
        "continuous_batching_config": ContinuousBatchingConfig(), "low_memory": True, "penalty_alpha": 0.6,
        "dola_layers": "low", "diversity_penalty": 0.5, "num_beam_groups": 2, "constraints": [[5]],
        "force_words_ids": [[5]], "prefill_chunk_size": 3, "_from_model_config": True,
        "transformers_version": "0.0.0",
    }  # fmt: skip


FIELDS = sorted(GenerationConfig().to_dict())
# per-step logits transforms and stopping rules transformers applies in greedy / sampled decoding
MUST_APPLY = {
    "max_length", "max_new_tokens", "min_length", "min_new_tokens", "max_time", "do_sample", "temperature", "top_k",
    "top_p", "min_p", "top_h", "typical_p", "epsilon_cutoff", "eta_cutoff", "repetition_penalty",
    "encoder_repetition_penalty", "no_repeat_ngram_size", "bad_words_ids", "renormalize_logits",
    "forced_bos_token_id", "forced_eos_token_id", "remove_invalid_values", "exponential_decay_length_penalty",
    "suppress_tokens", "begin_suppress_tokens", "sequence_bias", "watermarking_config", "num_return_sequences",
    "output_scores", "output_logits", "return_dict_in_generate", "pad_token_id", "bos_token_id", "eos_token_id",
    "prefill_chunk_size",
}  # fmt: skip


def test_every_field_has_a_value_here():
    missing = sorted(set(FIELDS) - set(_values(97)))
    assert not missing, (
        f"GenerationConfig fields {missing} are new in this transformers: add a non-default value to _values() and "
        "classify them in swaa_core.engine.generation_options (APPLIED, INERT or REFUSED)"
    )


def _call(model, x, field, value, source):
    base = {"do_sample": True, "max_new_tokens": NEW}
    if field in ("max_length",):
        base.pop("max_new_tokens")
    options = {**base, field: value}
    if source == "keywords":
        return lambda run: run(x, **options)
    if source == "generation_config":
        return lambda run: run(x, generation_config=GenerationConfig(**options))

    def from_model(run):
        saved = copy.deepcopy(model.generation_config)
        try:
            for name, v in options.items():
                setattr(model.generation_config, name, v)
            return run(x)
        finally:
            model.generation_config = saved

    return from_model


@pytest.mark.parametrize("source", ["keywords", "generation_config", "model.generation_config"])
def test_every_generation_config_field_is_applied_or_refused_by_name(one_layer, source):
    """Fields the issue names must be applied, never refused; every other field either gives generate's tokens or
    is refused by name."""
    model, x, values = one_layer, prompt(), _values(97)
    failures = []
    for field in FIELDS:
        if field not in values:
            continue  # test_every_field_has_a_value_here names it
        call = _call(model, x, field, values[field], source)
        got, error = seeded(0, call, functools.partial(_fast, model))
        if error is not None:
            if field not in error or field in MUST_APPLY:
                failures.append(f"{field}: refused: {error}")
            continue
        expected, ref_error = seeded(0, call, model.generate)
        if ref_error is not None:
            failures.append(f"{field}: generate refuses it ({ref_error}) but the fixed-buffer path ran")
            continue
        try:
            assert_same(expected, got, field)
        except AssertionError as e:
            failures.append(str(e))
    assert not failures, "\n".join(failures)


def _fast(model, x, **kw):
    out = fast_generate(model, x, **kw)
    config = kw.get("generation_config") or model.generation_config
    if kw.get("return_dict_in_generate") or config.return_dict_in_generate:
        return out
    return out.sequences


# --------------------------------------------------------------------------- what generate takes beside the config
def test_stop_strings_with_a_tokenizer_as_generate():
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model("llama", vocab_size=len(tokenizer), eos_token_id=None)
    x = tokenizer(["The pass key is"], return_tensors="pt").input_ids
    free = model.generate(x, max_new_tokens=12, do_sample=False)
    stop = tokenizer.decode(free[0, x.shape[1] + 3])  # text the greedy answer produces early
    kw = dict(max_new_tokens=12, do_sample=False, stop_strings=[stop], tokenizer=tokenizer)
    expected = model.generate(x, **kw)
    assert expected.shape[1] < free.shape[1]
    assert torch.equal(fast_generate(model, x, **kw).sequences, expected)
    with pytest.raises(ValueError, match="stop_strings"):
        fast_generate(model, x, max_new_tokens=4, stop_strings=["x"])


def test_callers_processors_and_prefix_rule_as_generate(model):
    from transformers import SuppressTokensLogitsProcessor

    x = prompt()
    kw = dict(
        max_new_tokens=NEW, do_sample=True,
        logits_processor=LogitsProcessorList([SuppressTokensLogitsProcessor(list(range(40, 90)))]),
        prefix_allowed_tokens_fn=lambda batch, ids: list(range(3 + batch, 60, 2)),
    )  # fmt: skip
    for seed in range(3):
        expected, _ = seeded(seed, model.generate, x, **kw)
        got, error = seeded(seed, _fast, model, x, **kw)
        assert error is None, error
        assert_same(expected, got, f"seed {seed}")


@pytest.mark.parametrize(
    "name, value",
    [
        ("assistant_model", "model"), ("past_key_values", "cache"), ("negative_prompt_ids", "ids"),
        ("synced_gpus", True), ("custom_generate", lambda *a, **k: None), ("swaa_prompt_lengths", "ids"),
    ],
)  # fmt: skip
def test_generate_arguments_this_path_cannot_honour_are_refused_by_name(model, name, value):
    from transformers import DynamicCache

    x = prompt()
    value = {"model": model, "cache": DynamicCache(), "ids": torch.tensor([PROMPT, PROMPT])}.get(value, value)
    apply_swaa(model, SWAA)
    try:
        with pytest.raises(ValueError, match=name):
            model.generate(x, max_new_tokens=NEW, cache_implementation="static", **{name: value})
    finally:
        remove_swaa(model)
