"""The fixed-buffer decoder (the path a CUDA graph captures) against transformers' own ``generate`` with the dynamic
SWAA cache, which test_generate_modes checks against a teacher-forced float reference: same tokens for padded batches,
FA-decode layers, hybrid models, end of sequence and sampling; no step reads a device value; the buffers keep sinks + W
slots per evicting layer."""

from __future__ import annotations

import functools

import pytest
import torch
from helpers.streamers import Collect
from helpers.tiny_models import build_tiny_model, padded_batch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import DynamicCache

from swaa_core import SWAAConfig, apply_swaa, remove_swaa
from swaa_core.engine.fast_decode import fast_generate
from swaa_core.engine.static_cache import StaticSWAACache

W, K = 6, 2
CONFIGS = {
    "full": None,
    "evicting": SWAAConfig(sliding_window_size=W, keep_first=K),
    "fa-decode": SWAAConfig(sliding_window_size=W, keep_first=K, force_fa_decode=True),
    "fa-layer + evicting": SWAAConfig(sliding_window_size=W, keep_first=K, non_sliding_layers=[1]),
}


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_padded_batch_equals_generate(family, config):
    model = build_tiny_model(family, eos_token_id=None)  # gemma3: its own local / global layer pattern
    ids, mask = padded_batch()
    apply_swaa(model, CONFIGS[config])
    with torch.no_grad():
        expected = model.generate(ids, attention_mask=mask, max_new_tokens=24, min_new_tokens=24, do_sample=False)
    got = fast_generate(model, ids, attention_mask=mask, max_new_tokens=24)
    assert torch.equal(got.sequences, expected)
    assert got.decode_steps == 23 and not got.cuda_graph


@pytest.mark.parametrize("pads", [(0, 9, 3), (9, 0, 3), (0, 28, 5), (0, 29, 5)], ids=str)
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_rows_prefilled_one_at_a_time_decode_as_generate(family, config, pads, monkeypatch):
    """prefill="row" (each request alone into the batch's buffers, a server's way) gives generate's tokens for the
    padded batch: the most padded row first or later, and rows with fewer real tokens than sinks (29 pads)."""
    model = build_tiny_model(family, eos_token_id=None)
    ids, mask = padded_batch(pads=pads)
    apply_swaa(model, CONFIGS[config])
    with torch.no_grad():
        expected = model.generate(ids, attention_mask=mask, max_new_tokens=24, min_new_tokens=24, do_sample=False)
    got = fast_generate(model, ids, attention_mask=mask, max_new_tokens=24, prefill="row")
    assert torch.equal(got.sequences, expected)
    batch = fast_generate(model, ids, attention_mask=mask, max_new_tokens=24)
    assert got.kv_cache_bytes_per_layer == batch.kv_cache_bytes_per_layer
    widened = []
    monkeypatch.setattr(
        StaticSWAACache,
        "for_rows",
        lambda self, rows, f=StaticSWAACache.for_rows: widened.append(rows) or f(self, rows),
    )
    one = fast_generate(model, ids, attention_mask=mask, max_new_tokens=1, prefill="row")
    assert torch.equal(one.sequences, expected[:, : ids.shape[1] + 1]) and widened == [len(pads)]  # by rows here too


def test_an_unknown_prefill_mode_is_refused_by_name():
    model = build_tiny_model("llama", eos_token_id=None)
    ids, _ = padded_batch(pads=(0,))
    with pytest.raises(ValueError, match="prefill must be one of .*'rows'"):
        fast_generate(model, ids, max_new_tokens=4, prefill="rows")


def test_short_prompt_fills_the_ring_while_decoding():
    """A prompt shorter than sinks + W: the ring is filled by decode steps, then wraps."""
    model = build_tiny_model("llama", eos_token_id=None)
    apply_swaa(model, CONFIGS["evicting"])
    ids = torch.randint(3, 97, (1, 4), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model.generate(ids, max_new_tokens=30, min_new_tokens=30, do_sample=False)
    assert torch.equal(fast_generate(model, ids, max_new_tokens=30).sequences, expected)


def test_end_of_sequence_and_min_new_tokens_as_generate():
    model = build_tiny_model("llama", eos_token_id=None)
    ids, mask = padded_batch(pads=(0, 5))
    apply_swaa(model, CONFIGS["evicting"])
    with torch.no_grad():
        free = model.generate(ids, attention_mask=mask, max_new_tokens=30, min_new_tokens=30, do_sample=False)
    eos = int(free[0, ids.shape[1] + 3])  # a token row 0 produces early: both rows must stop by its rule
    for min_new in (0, 8):
        kw = dict(attention_mask=mask, max_new_tokens=30, eos_token_id=eos, pad_token_id=1, min_new_tokens=min_new)
        with torch.no_grad():
            expected = model.generate(ids, do_sample=False, **kw)
        assert torch.equal(fast_generate(model, ids, **kw).sequences, expected)


def test_sampling_is_reproducible_and_top_k_1_is_greedy():
    model = build_tiny_model("llama", eos_token_id=None)
    apply_swaa(model, CONFIGS["evicting"])
    ids, _ = padded_batch(pads=(0,))

    def sample(seed, **kw):
        gen = torch.Generator().manual_seed(seed)
        return fast_generate(model, ids, max_new_tokens=20, do_sample=True, generator=gen, **kw).sequences

    assert torch.equal(sample(0, temperature=0.7, top_p=0.9), sample(0, temperature=0.7, top_p=0.9))
    assert not torch.equal(sample(0, temperature=5.0), sample(1, temperature=5.0))
    assert torch.equal(sample(3, top_k=1), fast_generate(model, ids, max_new_tokens=20).sequences)


class HostReads(TorchDispatchMode):
    """Records every op that copies a device value to the host (what a CUDA graph cannot capture)."""

    READS = {"_local_scalar_dense", "item", "is_nonzero", "nonzero", "equal", "tolist"}

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.__name__.split(".")[0] in self.READS:
            self.seen.append(func.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("config", ["evicting", "fa-decode", "full"])
def test_a_decode_step_reads_nothing_back_from_the_device(config):
    model = build_tiny_model("llama", eos_token_id=None)
    ids, mask = padded_batch()
    state = apply_swaa(model, CONFIGS[config] or SWAAConfig(sliding_window_size=64))
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask, past_key_values=cache)
        static = StaticSWAACache.from_dynamic(cache, state.plans, mask, ids.shape[1] + 8)
        token = torch.zeros(3, 1, dtype=torch.long)
        with HostReads() as reads:
            model(input_ids=token, position_ids=static.clock.positions, past_key_values=static)
            static.clock.advance()
    assert reads.seen == []


def test_evicting_layers_hold_sinks_plus_window_slots():
    model = build_tiny_model("llama", eos_token_id=None)
    ids, mask = padded_batch(pads=(0, 4))
    state = apply_swaa(model, CONFIGS["fa-layer + evicting"])
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask, past_key_values=cache)
    static = StaticSWAACache.from_dynamic(cache, state.plans, mask, 1000)
    # layer 1 keeps full attention (1000 slots); the others keep sinks + W, sinks covering both rows' first K tokens
    assert [layer.keys.shape[-2] for layer in static.layers] == [4 + K + W, 1000, 4 + K + W, 4 + K + W]
    # one table of positions per buffer geometry, refreshed once per step by its first layer
    assert len({id(layer.table) for layer in static.layers}) == 2


def test_refusals_name_the_problem():
    model = build_tiny_model("llama", eos_token_id=None)
    ids, mask = padded_batch(pads=(0,))
    with pytest.raises(ValueError, match="max_new_tokens >= 1"):
        fast_generate(model, ids, max_new_tokens=0)
    right = torch.ones_like(ids)
    right[0, -3:] = 0
    with pytest.raises(ValueError, match="Pad prompts on the left"):
        fast_generate(model, ids, attention_mask=right, max_new_tokens=4)
    apply_swaa(model, CONFIGS["evicting"])
    with pytest.raises(ValueError, match="does not take: use_cache=False"):
        model.generate(ids, max_new_tokens=4, cache_implementation="static", use_cache=False)
    with pytest.raises(ValueError, match="does not take: output_attentions=True"):
        model.generate(ids, max_new_tokens=4, cache_implementation="static", output_attentions=True)
    streamer = Collect()
    with pytest.raises(ValueError, match="A streamer follows one sequence"):
        fast_generate(model, torch.cat([ids, ids]), max_new_tokens=4, streamer=streamer)
    assert streamer.tokens == []  # refused before generate shows it the prompt
    remove_swaa(model)
    assert not hasattr(model, "_swaa_state")


def test_generate_options_at_their_defaults_and_lengths_as_generate():
    """Options spelled out at generate's neutral values pass; max_length and the 20-token default give the lengths
    plain generate gives; the length and temperature generate refuses are refused."""
    model = build_tiny_model("llama", eos_token_id=None)
    ids, _ = padded_batch(pads=(0,))
    apply_swaa(model, CONFIGS["evicting"])
    neutral = dict(num_beams=1, output_scores=False, repetition_penalty=1.0, logits_processor=[])
    for kwargs in (dict(max_new_tokens=5, **neutral), dict(max_length=ids.shape[1] + 7), {}):
        expected = model.generate(ids, **kwargs)
        assert torch.equal(model.generate(ids, cache_implementation="static", **kwargs), expected), kwargs
    for kwargs, message in (
        (dict(max_length=ids.shape[1]), "max_length"),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(max_new_tokens=3, do_sample=True, temperature=0.0), "temperature"),
    ):
        with pytest.raises(ValueError, match=message):
            model.generate(ids, **kwargs)
        with pytest.raises(ValueError, match=message):
            model.generate(ids, cache_implementation="static", **kwargs)
    remove_swaa(model)


def test_streamer_and_stopping_criteria_as_generate():
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StopAfterRepeat(StoppingCriteria):  # stops a row once its last two tokens are equal, or at 25 new tokens
        def __call__(self, input_ids, scores, **kwargs):
            return (input_ids[:, -1] == input_ids[:, -2]) | (input_ids.shape[1] >= 25 + 30)

    model = build_tiny_model("llama", eos_token_id=None)
    ids, _ = padded_batch(pads=(0,))
    apply_swaa(model, CONFIGS["evicting"])
    runs = {}
    for name, run in (("generate", model.generate), ("static", fast_generate)):
        streamer = Collect()
        kw = dict(max_new_tokens=40, streamer=streamer, stopping_criteria=StoppingCriteriaList([StopAfterRepeat()]))
        with torch.no_grad():
            out = run(ids, do_sample=False, **kw) if name == "generate" else run(model, ids, **kw).sequences
        runs[name] = (out, streamer)
    (expected, ref_stream), (got, stream) = runs["generate"], runs["static"]
    assert torch.equal(got, expected) and expected.shape[1] < ids.shape[1] + 40
    assert stream.tokens == ref_stream.tokens and stream.ended


def test_a_one_token_run_reports_the_kv_bytes_its_prefill_holds():
    """Stopping after the prefill's token still reports the cache it built (the prompt's keys and values)."""
    from swaa_core import kv_cache_bytes

    model = build_tiny_model("llama", eos_token_id=None)
    ids, _ = padded_batch(pads=(0,))
    apply_swaa(model, CONFIGS["evicting"])
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(input_ids=ids, past_key_values=cache)
    assert fast_generate(model, ids, max_new_tokens=1).kv_cache_bytes_per_layer == tuple(kv_cache_bytes(cache))


def test_no_end_of_sequence_without_a_pad_token():
    """eos_token_id=[] (never end early, as the runner and the timing code ask) on a model with no pad token: generate
    would take the first end-of-sequence id as the pad and has none; the tokens are those of a model without one."""
    model = build_tiny_model("llama", eos_token_id=None, pad_token_id=None)
    model.generation_config.pad_token_id = None
    ids, _ = padded_batch(pads=(0,))
    with torch.no_grad():
        expected = model.generate(ids, max_new_tokens=12, do_sample=False)
    assert torch.equal(fast_generate(model, ids, max_new_tokens=12, eos_token_id=[]).sequences, expected)


@pytest.mark.parametrize("prefill", ["batch", "row"])
@pytest.mark.parametrize("config", CONFIGS)
def test_token_0_in_a_prompt_is_a_token_when_no_end_of_sequence_is_asked(config, prefill):
    """eos_token_id=[] on a model without a pad token makes fast_generate pick pad id 0 for generate; without a mask of
    its own, generate then took every token 0 of the prompt for padding and the model never saw them (random
    prompts of 128K tokens hold a 0 two times in three). The tokens are generate's for the whole prompt."""
    model = build_tiny_model("llama", eos_token_id=None, pad_token_id=None)
    model.generation_config.pad_token_id = None
    ids = torch.randint(1, model.config.vocab_size, (1, 40), generator=torch.Generator().manual_seed(3))
    ids[0, [5, 33, 36, 38]] = 0  # inside the window of the last tokens too
    apply_swaa(model, CONFIGS[config])
    with torch.no_grad():
        expected = model.generate(ids, max_new_tokens=12, min_new_tokens=12, do_sample=False)
        hidden = model.generate(ids, attention_mask=(ids != 0).long(), max_new_tokens=12, do_sample=False)
    assert not torch.equal(hidden, expected)  # tokens 0 taken for padding change the answer: the check can fail
    got = fast_generate(model, ids, max_new_tokens=12, eos_token_id=[], prefill=prefill)
    assert torch.equal(got.sequences, expected)


@pytest.mark.parametrize("sampled", [False, True], ids=["greedy", "sampled"])
@pytest.mark.parametrize("config", CONFIGS)
def test_a_peft_lora_model_decodes_as_its_generate(config, sampled):
    """A peft-wrapped model (LoRA on q/v with non-zero B, unmerged) through the fixed path, called directly and
    through ``generate(cache_implementation="static")``, gives the tokens of peft's own ``generate`` on the eager
    path, for the same seed; the adapter changes the tokens, so a path that skipped it would fail."""
    from peft import LoraConfig, get_peft_model

    wrapped = get_peft_model(build_tiny_model(eos_token_id=None), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, param in wrapped.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5, generator=torch.Generator().manual_seed(5))
    ids, mask = padded_batch()
    kw = dict(attention_mask=mask, max_new_tokens=20, min_new_tokens=20, do_sample=sampled)
    apply_swaa(wrapped, CONFIGS[config])

    def seeded(run, **extra):
        torch.manual_seed(4)
        with torch.no_grad():
            out = run(ids, **kw, **extra)
        return out.sequences if hasattr(out, "sequences") else out

    expected = seeded(wrapped.generate, cache_implementation="dynamic")
    assert torch.equal(seeded(functools.partial(fast_generate, wrapped)), expected)
    assert torch.equal(seeded(wrapped.generate, cache_implementation="static"), expected)
    with wrapped.disable_adapter():
        assert not torch.equal(seeded(wrapped.generate, cache_implementation="static"), expected)
    remove_swaa(wrapped)
    assert not hasattr(wrapped, "_swaa_state") and not hasattr(wrapped.get_base_model(), "_swaa_state")
