"""Every way of driving a model under SWAA, one row each, over the five families: exact against an independent
reference (eager attention with a 4-D mask built row by row from the rule, teacher-forced on the produced sequence),
or refused with a specific message. A new mode is one function plus one entry in MODES or REFUSALS."""

from __future__ import annotations

import pytest
import torch
from helpers.streamers import Collect
from helpers.tiny_models import FAMILIES, build_tiny_model, eager_logits_without_swaa
from transformers import DynamicCache, GenerationConfig, StaticCache

from swaa_core import SWAAConfig, apply_swaa, remove_swaa

W, K, PROMPT, NEW = 4, 2, 12, 6


def tiny(family: str, seed: int = 0):
    # Gemma 3's local layers keep their own window under SWAA (tested below); make them global so one mask fits all
    extra = {"layer_types": ["full_attention"] * 4} if family == "gemma3" else {}
    return build_tiny_model(family, seed=seed, eos_token_id=None, **extra)


def prompt(batch: int = 1, n: int = PROMPT, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 97, (batch, n), generator=torch.Generator().manual_seed(seed))


def rule_mask(n: int, row_rule) -> torch.Tensor:
    """Additive (1, 1, n, n) mask; ``row_rule(i)`` gives (window or None, keep_first) for query position i."""
    mask = torch.full((n, n), float("-inf"))
    for i in range(n):
        window, keep_first = row_rule(i)
        for j in range(i + 1):
            if window is None or i - j < window or j < keep_first:
                mask[i, j] = 0.0
    return mask[None, None]


def swaa_rows(prompt_end: int, window=W, keep_first=K, fa_decode=True, generated=None):
    """Rows under one config: prompt rows slide, generated rows (>= prompt_end, or in ``generated``) see everything
    under FA decode."""

    def row(i):
        gen = i >= prompt_end if generated is None else i in generated
        return (None, keep_first) if (fa_decode and gen) else (window, keep_first)

    return row


def teacher(model, seq: torch.Tensor, row_rule) -> torch.Tensor:
    """The model without SWAA, eager attention, the hand-built mask: logits (B, n, V)."""
    return eager_logits_without_swaa(model, seq, rule_mask(seq.shape[1], row_rule))


def assert_greedy(model, seq: torch.Tensor, start: int, row_rule) -> None:
    """Every token from ``start`` on is the argmax of the teacher-forced logits before it."""
    logits = teacher(model, seq, row_rule)
    assert torch.equal(logits[:, start - 1 : -1].argmax(-1), seq[:, start:]), "tokens depart from the reference"


CONFIGS = {
    "fa-decode": SWAAConfig(sliding_window_size=W, keep_first=K, force_fa_decode=True),
    "evicting": SWAAConfig(sliding_window_size=W, keep_first=K),
}


def greedy(model, x, fa, **kw):
    out = model.generate(x, max_new_tokens=NEW, do_sample=False, **kw)
    assert_greedy(model, out, PROMPT, swaa_rows(PROMPT, fa_decode=fa))


# --------------------------------------------------------------------------- exact modes
def mode_use_cache(model, x, fa):
    greedy(model, x, fa)


def mode_no_cache(model, x, fa):
    greedy(model, x, fa, use_cache=False)


def mode_dynamic_cache_without_config(model, x, fa):
    greedy(model, x, fa, past_key_values=DynamicCache())


def mode_dynamic_cache_with_config(model, x, fa):
    greedy(model, x, fa, past_key_values=DynamicCache(config=model.config))


def mode_forward_with_callers_cache(model, x, fa):
    got = model(input_ids=x, past_key_values=DynamicCache()).logits
    assert torch.allclose(got, teacher(model, x, swaa_rows(PROMPT, fa_decode=False)), atol=1e-5)


def mode_manual_decode_loop_with_marker(model, x, fa):
    """A caller's own loop says where the prompt ends with ``swaa_prompt_lengths``; the shape of a step does not."""
    cache, seq, marker = DynamicCache(), x, torch.tensor([PROMPT])
    out = model(input_ids=x, past_key_values=cache, swaa_prompt_lengths=marker)
    for _ in range(NEW):
        seq = torch.cat([seq, out.logits[:, -1:].argmax(-1)], 1)
        out = model(input_ids=seq[:, -1:], past_key_values=cache, swaa_prompt_lengths=marker)
    assert_greedy(model, seq, PROMPT, swaa_rows(PROMPT, fa_decode=fa))


def mode_ring_wraps_many_times(model, x, fa):
    """5W new tokens: the sliding layers' ring buffer is overwritten five times over."""
    out = model.generate(x, max_new_tokens=5 * W, do_sample=False)
    assert_greedy(model, out, PROMPT, swaa_rows(PROMPT, fa_decode=fa))


def mode_static_cache(model, x, fa):
    """Served by SWAA's fixed-buffer decoder (the path CUDA graphs capture), wrapping its ring five times over."""
    out = model.generate(x, max_new_tokens=5 * W, do_sample=False, cache_implementation="static")
    assert_greedy(model, out, PROMPT, swaa_rows(PROMPT, fa_decode=fa))


def mode_chunked_prefill(model, x, fa):
    greedy(model, x, fa, prefill_chunk_size=5)


def mode_prompt_lookup(model, x, fa):
    x = torch.cat([x, x[:, :6], x[:, :6]], 1)  # repeats give prompt lookup drafts to verify
    out = model.generate(x, max_new_tokens=NEW, do_sample=False, prompt_lookup_num_tokens=3)
    assert_greedy(model, out, x.shape[1], swaa_rows(x.shape[1], fa_decode=fa))


def mode_assistant_model(model, x, fa):
    assistant = build_tiny_model(model.config.model_type.replace("_text", ""), seed=1, eos_token_id=None)
    out = model.generate(x, max_new_tokens=NEW, do_sample=False, assistant_model=assistant)
    assert_greedy(model, out, PROMPT, swaa_rows(PROMPT, fa_decode=fa))


def mode_assistant_model_by_position(model, x, fa):
    """generate's seventh parameter, passed by position: the drafts' rollback must be armed all the same."""
    assistant = build_tiny_model(model.config.model_type.replace("_text", ""), seed=1, eos_token_id=None)
    out = model.generate(x, None, None, None, None, None, assistant, max_new_tokens=NEW, do_sample=False)
    assert_greedy(model, out, PROMPT, swaa_rows(PROMPT, fa_decode=fa))


def mode_prompt_lookup_from_the_models_config(model, x, fa):
    """A passed config without prompt lookup takes it from model.generation_config (transformers' merge)."""
    x = torch.cat([x, x[:, :6], x[:, :6]], 1)
    model.generation_config.prompt_lookup_num_tokens = 3
    out = model.generate(x, generation_config=GenerationConfig(max_new_tokens=NEW, do_sample=False))
    assert_greedy(model, out, x.shape[1], swaa_rows(x.shape[1], fa_decode=fa))


def mode_beams(model, x, fa):
    """Each returned beam's score is the sum of its tokens' log-probabilities under the reference."""
    out = model.generate(
        x, max_new_tokens=NEW, num_beams=3, num_return_sequences=3, do_sample=False, length_penalty=0.0,
        return_dict_in_generate=True, output_scores=True,
    )  # fmt: skip
    logp = teacher(model, out.sequences, swaa_rows(PROMPT, fa_decode=fa)).log_softmax(-1)[:, PROMPT - 1 : -1]
    expected = logp.gather(-1, out.sequences[:, PROMPT:, None]).sum((1, 2))
    assert torch.allclose(out.sequences_scores, expected, atol=1e-4), (out.sequences_scores, expected)


def mode_sampling_several_sequences(model, x, fa):
    torch.manual_seed(0)
    out = model.generate(
        x, max_new_tokens=NEW, do_sample=True, num_return_sequences=3, return_dict_in_generate=True, output_logits=True
    )
    got = torch.stack(out.logits, 1)
    expected = teacher(model, out.sequences, swaa_rows(PROMPT, fa_decode=fa))[:, PROMPT - 1 : -1]
    assert torch.allclose(got, expected, atol=1e-5)


def mode_streamer(model, x, fa):
    streamer = Collect()
    out = model.generate(x, max_new_tokens=NEW, do_sample=False, streamer=streamer)
    assert sum(streamer.tokens[1:], []) == out[0, PROMPT:].tolist()
    assert_greedy(model, out, PROMPT, swaa_rows(PROMPT, fa_decode=fa))


def mode_second_turn(model, x, fa):
    """Turn 2 continues turn 1's cache: the new user tokens are prompt again, the new answer is generated."""
    first = model.generate(x, max_new_tokens=NEW, do_sample=False, return_dict_in_generate=True)
    turn2 = torch.cat([first.sequences, prompt(n=5, seed=3)], 1)
    out = model.generate(turn2, max_new_tokens=NEW, do_sample=False, past_key_values=first.past_key_values)
    # turn 1's last token is first fed to the model by turn 2, as part of turn 2's prompt
    generated = set(range(PROMPT, PROMPT + NEW - 1)) | set(range(turn2.shape[1], out.shape[1]))
    assert_greedy(model, out, turn2.shape[1], swaa_rows(0, fa_decode=fa, generated=generated))


def mode_forward_with_labels(model, x, fa):
    loss = model(input_ids=x, labels=x).loss
    logits = teacher(model, x, swaa_rows(PROMPT, fa_decode=False))
    expected = torch.nn.functional.cross_entropy(logits[0, :-1], x[0, 1:])
    assert torch.allclose(loss, expected, atol=1e-5)


def mode_narrower_config_mid_conversation(model, x, fa):
    """Re-applying a window and sinks no wider than the cache holds continues exactly, under the new rule."""
    first = model.generate(x, max_new_tokens=NEW, do_sample=False, return_dict_in_generate=True)
    narrower = SWAAConfig(sliding_window_size=W - 1, keep_first=K - 1, force_fa_decode=fa)
    apply_swaa(model, narrower)
    turn2 = torch.cat([first.sequences, prompt(n=5, seed=3)], 1)
    out = model.generate(turn2, max_new_tokens=NEW, do_sample=False, past_key_values=first.past_key_values)
    end1, start2 = PROMPT + NEW - 1, turn2.shape[1]  # turn 1's last token is fed by turn 2, as prompt

    def row(i):
        if i < end1:
            return swaa_rows(PROMPT, fa_decode=fa)(i)
        return (None, K - 1) if (fa and i >= start2) else (W - 1, K - 1)

    assert_greedy(model, out, start2, row)


MODES = {
    "use_cache": mode_use_cache,
    "use_cache=False": mode_no_cache,
    "DynamicCache()": mode_dynamic_cache_without_config,
    "DynamicCache(config)": mode_dynamic_cache_with_config,
    "forward+DynamicCache()": mode_forward_with_callers_cache,
    "manual loop+marker": mode_manual_decode_loop_with_marker,
    "prefill_chunk_size": mode_chunked_prefill,
    "prompt_lookup": mode_prompt_lookup,
    "assistant_model": mode_assistant_model,
    "assistant_model by position": mode_assistant_model_by_position,
    "prompt lookup from the model's config": mode_prompt_lookup_from_the_models_config,
    "beams": mode_beams,
    "sampling x3": mode_sampling_several_sequences,
    "streamer": mode_streamer,
    "ring wraps 5x": mode_ring_wraps_many_times,
    "cache_implementation=static": mode_static_cache,
    "second turn": mode_second_turn,
    "labels": mode_forward_with_labels,
    "narrower config mid-conversation": mode_narrower_config_mid_conversation,
}


@pytest.mark.parametrize("config_name", CONFIGS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fam", FAMILIES)
def test_mode_is_exact(fam, mode, config_name):
    model = tiny(fam)
    config = CONFIGS[config_name]
    apply_swaa(model, config)
    with torch.no_grad():
        MODES[mode](model, prompt(), bool(config.force_fa_decode))


# --------------------------------------------------------------------------- refusals
def refuse_static_cache(model, x):
    model.generate(x, max_new_tokens=NEW, past_key_values=StaticCache(config=model.config, max_cache_len=32))


def refuse_static_implementation_with_beams(model, x):
    model.generate(x, max_new_tokens=NEW, cache_implementation="static", num_beams=2)


def refuse_quantized_cache(model, x):
    model.generate(x, max_new_tokens=NEW, cache_implementation="quantized", cache_config={"backend": "fp8"})


def _evicted(model, x):
    apply_swaa(model, CONFIGS["evicting"])
    return model.generate(x, max_new_tokens=NEW, do_sample=False, return_dict_in_generate=True)


def refuse_wider_config_after_eviction(model, x):
    first = _evicted(model, x)
    apply_swaa(model, SWAAConfig(sliding_window_size=W + 2, keep_first=K))
    model.generate(first.sequences, max_new_tokens=2, past_key_values=first.past_key_values)


def refuse_fa_decode_after_eviction(model, x):
    first = _evicted(model, x)
    apply_swaa(model, SWAAConfig(sliding_window_size=W, keep_first=K, force_fa_decode=True))
    model.generate(first.sequences, max_new_tokens=2, past_key_values=first.past_key_values)


def refuse_remove_swaa_after_eviction(model, x):
    first = _evicted(model, x)
    remove_swaa(model)
    model.generate(first.sequences, max_new_tokens=2, past_key_values=first.past_key_values)


def refuse_rollback_past_the_window(model, x):
    _evicted(model, x).past_key_values.crop(-3)


REFUSALS = {
    "StaticCache": (refuse_static_cache, "dynamic KV cache.*got StaticLayer"),
    "static cache with beams": (refuse_static_implementation_with_beams, "does not take: num_beams=2"),
    "quantized cache": (refuse_quantized_cache, "dynamic KV cache.*got Fp8QuantizedLayer"),
    "wider window after eviction": (refuse_wider_config_after_eviction, "dropped keys outside the SWAA window"),
    "FA decode after eviction": (refuse_fa_decode_after_eviction, "dropped keys outside the SWAA window"),
    "remove_swaa after eviction": (refuse_remove_swaa_after_eviction, "dropped keys outside the SWAA window"),
    "roll back past the window": (refuse_rollback_past_the_window, "already dropped"),
}


@pytest.mark.parametrize("refusal", REFUSALS)
@pytest.mark.parametrize("fam", FAMILIES)
def test_mode_is_refused_with_a_message(fam, refusal):
    model = tiny(fam)
    apply_swaa(model, CONFIGS["fa-decode"])
    run, message = REFUSALS[refusal]
    with torch.no_grad(), pytest.raises(ValueError, match=message):
        run(model, prompt())


def test_remove_swaa_before_any_eviction_continues_exactly():
    """A cache that dropped nothing (FA decode keeps every key) continues under the original model."""
    model = tiny("llama")
    x = prompt()
    apply_swaa(model, CONFIGS["fa-decode"])
    first = model.generate(x, max_new_tokens=NEW, do_sample=False, return_dict_in_generate=True)
    rows_first = swaa_rows(PROMPT)
    remove_swaa(model)
    out = model.generate(first.sequences, max_new_tokens=NEW, do_sample=False, past_key_values=first.past_key_values)
    end1 = PROMPT + NEW - 1  # turn 1's last token is fed by turn 2
    assert_greedy(model, out, end1 + 1, lambda i: rows_first(i) if i < end1 else (None, 0))


# --------------------------------------------------------------------------- models that already slide
NATIVE = {
    "mistral": dict(sliding_window=5),
    "qwen2": dict(use_sliding_window=True, sliding_window=5, max_window_layers=0),
    "gemma3": dict(sliding_window=5, layer_types=["sliding_attention"] * 4),
}


@pytest.mark.parametrize("swaa_window", [3, 8])
@pytest.mark.parametrize("fam", NATIVE)
def test_native_sliding_layers_are_narrowed_never_widened(fam, swaa_window):
    """Under SWAA a natively sliding layer keeps min(SWAA window, its own), without sinks or FA decode, even when
    listed as non-sliding: the reference is the native model itself with that window."""
    model = build_tiny_model(fam, eos_token_id=None, **NATIVE[fam])
    reference = build_tiny_model(fam, eos_token_id=None, **{**NATIVE[fam], "sliding_window": min(5, swaa_window)})
    reference.load_state_dict(model.state_dict())
    x = prompt(n=20)
    expected = reference.generate(x, max_new_tokens=NEW, do_sample=False)
    cfg = SWAAConfig(sliding_window_size=swaa_window, keep_first=2, force_fa_decode=True, non_sliding_layers=[1])
    apply_swaa(model, cfg)
    assert torch.equal(model.generate(x, max_new_tokens=NEW, do_sample=False), expected)
    assert torch.allclose(model(x).logits, reference(x).logits, atol=1e-5)
    (note,) = [n for n in cfg.notes(native_windows=[5] * 4) if "natively" in n]
    assert ("narrows them to SWA 3," in note) == (swaa_window == 3) and "without sinks or FA decode" in note
