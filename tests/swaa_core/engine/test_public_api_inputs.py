"""The documented Python API's inputs, as a new user gives them (README "Using swaa_core from Python",
docs/architecture.md "Public API contract"): SWAAConfig, apply_swaa / remove_swaa / swaa, capture_attention,
kv_cache_bytes, fast_generate and the memory / capacity models.

Expected values come from independent references: transformers without SWAA (its own generate and caches), the
float64 masked attention of helpers/float64_reference.py (written from SWAA.md's rule), hand arithmetic, and the
project's own standard that every input is applied or refused by name with a clear message (never a raw
AttributeError / TypeError from deep inside, never accepted and ignored).

A probe of 2026-12-06 found the faults whose tests say "once" (each failed then); the others pin kinds of behaviour
that were checked and found right."""

from __future__ import annotations

import math

import pytest
import torch
from helpers.float64_reference import _REF, ref_forward, reference_model
from helpers.shapes import LLAMA_8B as SHAPE_8B
from helpers.tiny_models import build_tiny_model, left_padded

from swaa_core import SWAAConfig, apply_swaa, capture_attention, fast_generate, kv_cache_bytes, remove_swaa, swaa
from swaa_core.engine.config import SWAAConfigError
from swaa_core.models.capacity import GPUS, capacity, custom_gpu, prefill_flops
from swaa_core.models.memory import estimate_memory

IDS = torch.randint(3, 97, (1, 20), generator=torch.Generator().manual_seed(0))


@pytest.fixture
def model():
    m = build_tiny_model("llama", eos_token_id=None)
    m.generation_config.pad_token_id = 0
    return m


# ===================================================================================================== SWAAConfig
def test_from_dict_nested_form_refuses_sibling_keys_it_does_not_read():
    """Once: from_dict refuses an unknown field at the top level ("Unknown SWAA config field"), but beside a nested
    "swaa_config" every other key is dropped silently: a typo (keep_frist) or a second, conflicting
    sliding_window_size is accepted and ignored."""
    with pytest.raises(SWAAConfigError, match="keep_frist"):
        SWAAConfig.from_dict({"swaa_config": {"sliding_window_size": 8}, "keep_frist": 4})
    with pytest.raises(SWAAConfigError, match="sliding_window_size"):
        SWAAConfig.from_dict({"swaa_config": {"sliding_window_size": 8}, "sliding_window_size": 4})


@pytest.mark.parametrize(
    "field, value",
    [
        ("sliding_window_size", 0),  # applied: a window of no keys
        ("keep_first", -3),  # applied: a deep RuntimeError in the cache at the first forward
        ("non_sliding_layers", [-1]),  # applied: silently no full layer at all
        ("force_fa_decode", "yes"),  # TypeError '>=' between str and int
        ("mask_kind", "dilated"),  # KeyError 'dilated'
    ],
)
def test_apply_swaa_rechecks_a_config_changed_after_construction(model, field, value):
    """Once: SWAAConfig is a mutable dataclass; its checks run only in __post_init__. A field set afterwards to a value
    the constructor refuses by name is taken by apply_swaa (or fails with a raw error from inside)."""
    with pytest.raises(SWAAConfigError) as refused:
        SWAAConfig(**{"sliding_window_size": 8, field: value})
    cfg = SWAAConfig(sliding_window_size=8)
    setattr(cfg, field, value)
    try:
        with pytest.raises(SWAAConfigError, match=field):
            apply_swaa(model, cfg)
            model(IDS)
    finally:
        remove_swaa(model)
    assert field in str(refused.value)


def test_config_round_trips_and_upstream_keys():
    for cfg in (
        SWAAConfig(),
        SWAAConfig(sliding_window_size=2048, keep_first=100, force_fa_decode=[3, 0], non_sliding_layers=[5, 1, 5]),
        SWAAConfig(sliding_window_size=16, keep_first=2, force_fa_decode=True, mask_kind="chunked"),
    ):
        assert SWAAConfig.from_dict(cfg.to_dict()) == cfg
        assert SWAAConfig.from_json(cfg.to_json()) == cfg
        assert SWAAConfig.from_dict({"swaa_config": cfg.to_dict()}) == cfg
    upstream = {"sliding_window_size": 2048, "keep_first": 10, "force_fa_decode": True, "non_sliding_layers": [1, 3]}
    assert SWAAConfig.from_dict(upstream).to_dict() == upstream
    for bad in ({"sliding_window_size": 8.0}, {"sliding_window_size": 8, "keep_first": "4"},
                {"sliding_window_size": 8, "force_fa_decode": 1},
                {"sliding_window_size": 8, "non_sliding_layers": [True]}):  # fmt: skip
        with pytest.raises(SWAAConfigError):
            SWAAConfig.from_dict(bad)


# ===================================================================================================== apply_swaa
@pytest.mark.parametrize("config", ["swa", '{"sliding_window_size": 8}', 8])
def test_apply_swaa_refuses_a_config_of_the_wrong_type_by_name(model, config):
    """Once: apply_swaa takes a SWAAConfig, a dict or None; anything else ends in "AttributeError: 'str' object has no
    attribute 'is_full_attention'" instead of a message saying what it takes."""
    with pytest.raises((TypeError, SWAAConfigError), match="SWAAConfig"):
        apply_swaa(model, config)
    remove_swaa(model)


@pytest.mark.parametrize("config", [None, SWAAConfig()])
def test_apply_swaa_refuses_an_unknown_backend_also_for_full_attention(model, config):
    """Once: backend="nonsense" is refused by name with a sliding config, but accepted and ignored with a full-attention
    one (None or sliding_window_size=None); so is the context manager's."""
    with pytest.raises(ValueError, match="Unknown attention backend 'nonsense'"):
        apply_swaa(model, config, backend="nonsense")
    with (
        pytest.raises(ValueError, match="Unknown attention backend 'nonsense'"),
        swaa(model, config, backend="nonsense"),
    ):
        pass


def test_apply_swaa_on_something_that_is_not_a_transformers_model_says_so():
    """Once: A plain torch module ends in "AttributeError: 'Linear' object has no attribute 'get_text_config'"."""
    with pytest.raises((TypeError, SWAAConfigError), match="(?i)model"):
        apply_swaa(torch.nn.Linear(2, 2), SWAAConfig(sliding_window_size=8))


def test_context_manager_nesting_exceptions_and_reapplying_restore_exactly(model):
    base = model(IDS).logits
    outer, inner = (
        SWAAConfig(sliding_window_size=4, keep_first=2),
        SWAAConfig(sliding_window_size=6, force_fa_decode=True),
    )
    apply_swaa(model, outer, backend="reference")
    with pytest.raises(KeyError), swaa(model, inner):
        assert model._swaa_state.config == inner
        raise KeyError("inside")
    assert (model._swaa_state.config, model._swaa_state.backend) == (outer, "reference")
    bad = SWAAConfig(sliding_window_size=4, non_sliding_layers=[99])
    with pytest.raises(SWAAConfigError), swaa(model, bad):  # a config that does not fit leaves the outer one in place
        pass
    assert model._swaa_state.config == outer
    for cfg in (inner, outer, inner):
        apply_swaa(model, cfg)
    assert len(model._swaa_state.hooks) == 5  # one per attention module + the decoder's, not one set per apply
    remove_swaa(model)
    assert "generate" not in model.__dict__ and not hasattr(model, "_swaa_state")
    assert torch.equal(model(IDS).logits, base)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_on_cpu_a_window_wider_than_the_prompt_is_transformers_own(model, dtype):
    model = model.to(dtype)
    want = model.generate(IDS, max_new_tokens=6, do_sample=False)
    logits = model(IDS).logits
    with swaa(model, SWAAConfig(sliding_window_size=10**6, keep_first=3)):
        assert torch.equal(model(IDS).logits, logits)
        assert torch.equal(model.generate(IDS, max_new_tokens=6, do_sample=False), want)
    with swaa(model, SWAAConfig(sliding_window_size=4, keep_first=2, force_fa_decode=True)):
        eager = model.generate(IDS, max_new_tokens=6, do_sample=False)
        assert torch.equal(fast_generate(model, IDS, max_new_tokens=6).sequences, eager)


def test_peft_wrapped_model_runs_the_float64_rule_and_is_restored(model):
    from peft import LoraConfig, get_peft_model

    pm = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)).eval()
    cfg = SWAAConfig(sliding_window_size=4, keep_first=2, non_sliding_layers=[2])
    base = pm(input_ids=IDS).logits
    ref = reference_model(pm)
    with torch.no_grad(), swaa(pm, cfg):
        got = pm(input_ids=IDS).logits
        probs = capture_attention(pm, IDS, 1, cfg)
        eager = pm.generate(input_ids=IDS, max_new_tokens=5, do_sample=False)
        assert torch.equal(fast_generate(pm, IDS, max_new_tokens=5).sequences, eager)
    want = ref_forward(ref, cfg, IDS, None).logits
    assert float((got.double() - want).abs().max()) < 2e-4
    assert float((probs.double() - _REF["probs"][1][0]).abs().max()) < 1e-5
    assert torch.equal(pm(input_ids=IDS).logits, base)


# ===================================================================================================== capture
def test_capture_attention_takes_a_dict_config_as_apply_swaa_does(model):
    """Once: apply_swaa and swaa take a config as a dict; capture_attention(config=dict) raises "AttributeError: 'dict'
    object has no attribute 'is_full_attention'"."""
    want = capture_attention(model, IDS, 0, SWAAConfig(sliding_window_size=4, keep_first=1))
    got = capture_attention(model, IDS, 0, {"sliding_window_size": 4, "keep_first": 1})
    assert torch.equal(got, want)


def test_capture_attention_refuses_unbatched_ids_by_name(model):
    """Once: 1-D input_ids end in a RuntimeError from inside LlamaAttention's rotary embedding (tensor a (4) vs b (8))."""
    try:
        got = capture_attention(model, IDS[0], 0, SWAAConfig(sliding_window_size=4))
    except ValueError as e:
        assert "input_ids" in str(e)
    else:
        assert torch.equal(got, capture_attention(model, IDS, 0, SWAAConfig(sliding_window_size=4)))


@pytest.mark.parametrize("layer", [0, 2])
@pytest.mark.parametrize(
    "cfg",
    [None, SWAAConfig(sliding_window_size=4, keep_first=2), SWAAConfig(sliding_window_size=3, non_sliding_layers=[2])],
)
def test_capture_attention_equals_the_float64_rule(model, cfg, layer):
    ids, mask = left_padded(torch.arange(3, 23), torch.arange(3, 15))
    ref = reference_model(model)
    got = capture_attention(model, ids, layer, cfg, attention_mask=mask)
    ref_forward(ref, cfg, ids, mask)
    assert float((got.double() - _REF["probs"][layer][0]).abs().max()) < 1e-5


# ===================================================================================================== kv_cache_bytes
def test_kv_cache_bytes_refuses_what_is_not_a_cache_by_name(model):
    """Once: kv_cache_bytes(model) (an easy slip for kv_cache_bytes(out.past_key_values)) raises "AttributeError:
    'LlamaForCausalLM' object has no attribute 'layers'"."""
    with pytest.raises(TypeError, match="Cache"):
        kv_cache_bytes(model)


def test_kv_cache_bytes_against_hand_counts(model):
    per_slot = 2 * 2 * 8 * 4  # keys and values, 2 KV heads, head_dim 8, float32
    out = model.generate(IDS, max_new_tokens=5, do_sample=False, return_dict_in_generate=True)
    assert kv_cache_bytes(out.past_key_values) == [24 * per_slot] * 4  # transformers' DynamicCache: 20 + 4 tokens
    with swaa(model, SWAAConfig(sliding_window_size=4, keep_first=2, non_sliding_layers=[1])):
        out = model.generate(IDS, max_new_tokens=5, do_sample=False, return_dict_in_generate=True)
        assert kv_cache_bytes(out.past_key_values) == [6 * per_slot, 24 * per_slot, 6 * per_slot, 6 * per_slot]
        fixed = fast_generate(model, IDS, max_new_tokens=5)  # fixed buffers: sinks + W, or prompt + new slots
        assert fixed.kv_cache_bytes_per_layer == (6 * per_slot, 25 * per_slot, 6 * per_slot, 6 * per_slot)


# ===================================================================================================== fast_generate
def test_fast_generate_refuses_cuda_graph_true_without_cuda(model):
    """Once: cuda_graph=True on a CPU model is accepted and ignored (DecodeResult.cuda_graph is False)."""
    with pytest.raises(ValueError, match="cuda_graph"):
        fast_generate(model, IDS, max_new_tokens=3, cuda_graph=True)


def test_fast_generate_refuses_an_attention_mask_of_another_width(model):
    """Once: transformers' generate refuses a (1, 10) mask for a (1, 20) prompt; fast_generate generates with it."""
    short = torch.ones(1, 10, dtype=torch.long)
    with pytest.raises(RuntimeError):
        model.generate(IDS, attention_mask=short, max_new_tokens=3)
    with pytest.raises(ValueError, match="attention_mask"):
        fast_generate(model, IDS, attention_mask=short, max_new_tokens=3)


def test_fast_generate_max_new_tokens_not_a_whole_number(model):
    """Once: generate(max_new_tokens=2.5) gives 3 tokens; fast_generate raises a TypeError from new_zeros() inside the
    static cache, and max_new_tokens="4" a TypeError from a comparison."""
    want = model.generate(IDS, max_new_tokens=2.5, do_sample=False)
    try:
        got = fast_generate(model, IDS, max_new_tokens=2.5)
    except ValueError as e:
        assert "max_new_tokens" in str(e)
    else:
        assert torch.equal(got.sequences, want)
    with pytest.raises(ValueError, match="max_new_tokens"):
        fast_generate(model, IDS, max_new_tokens="4")


@pytest.mark.parametrize("ids", [IDS[0], IDS[0].tolist()], ids=["1-D tensor", "list"])
def test_fast_generate_refuses_unbatched_input_ids_by_name(model, ids):
    """Once: A 1-D tensor raises "not enough values to unpack", a list "'list' object has no attribute 'shape'"."""
    with pytest.raises(ValueError, match="input_ids"):
        fast_generate(model, ids, max_new_tokens=3)


def test_fast_generate_refuses_a_compile_value_that_is_no_backend(model):
    """Once: compile=5 ends in torch._dynamo's BackendCompilerFailed ("'int' object is not callable")."""
    with pytest.raises(ValueError, match="compile"):
        fast_generate(model, IDS, max_new_tokens=3, compile=5)


@pytest.mark.parametrize(
    "cfg", [None, SWAAConfig(sliding_window_size=4, keep_first=2, force_fa_decode=[0, 1], non_sliding_layers=[3])]
)
def test_fast_generate_gives_generates_tokens(model, cfg):
    ids, mask = left_padded(torch.arange(3, 15), torch.arange(3, 23))
    with swaa(model, cfg):
        want = model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False,
                              cache_implementation="dynamic" if cfg else None)  # fmt: skip
        got = fast_generate(model, ids, attention_mask=mask, max_new_tokens=8)
    assert torch.equal(got.sequences, want)
    with pytest.raises(ValueError, match="num_beams"):
        fast_generate(model, IDS, max_new_tokens=3, num_beams=2)
    with pytest.raises(ValueError, match="prefill"):
        fast_generate(model, IDS, max_new_tokens=3, prefill="rows")


# ===================================================================================================== memory / capacity
P, N = 8192, 256
CFG_8B = SWAAConfig(sliding_window_size=2048, keep_first=128, non_sliding_layers=list(range(3, 32, 4)))
PER_SLOT_BF16 = 2 * 8 * 128 * 2  # keys + values, 8 KV heads, head_dim 128, bf16


def test_memory_and_capacity_against_hand_arithmetic():
    hand_kv = PER_SLOT_BF16 * (24 * (2048 + 128) + 8 * (P + N))  # 24 sliding rings, 8 full layers of P + N
    cap = capacity(SHAPE_8B, CFG_8B, GPUS["H100 80GB"], prompt_tokens=P, new_tokens=N)
    assert cap.kv_bytes_per_seq == hand_kv == 490_733_568
    assert cap.weight_bytes == 2 * 8_030_261_248
    est = estimate_memory(SHAPE_8B, P + N, CFG_8B, dtype="bf16")
    assert (est.kv_full_bytes, est.kv_swaa_bytes) == (32 * (P + N) * PER_SLOT_BF16, hand_kv)
    pairs_sw = sum(min(i + 1, 2048) + (min(128, i + 1 - 2048) if i >= 2048 else 0) for i in range(P))
    linear = 2 * 4096 * 32 * 128 + 2 * 4096 * 8 * 128 + 3 * 4096 * 14336
    hand_flops = 2 * 32 * linear * P + 4 * 32 * 128 * (24 * pairs_sw + 8 * P * (P + 1) // 2)
    assert prefill_flops(SHAPE_8B, CFG_8B, P) == hand_flops
    full = capacity(SHAPE_8B, None, GPUS["H100 80GB"], prompt_tokens=P, new_tokens=N)
    assert full.step_seconds(1) == pytest.approx((full.weight_bytes + 32 * (P + N) * PER_SLOT_BF16) / 3.0e12)
    room = GPUS["H100 80GB"].memory_bytes - cap.reserve_bytes
    assert cap.peak_bytes() <= room < cap.peak_bytes(cap.max_batch + 1)


def test_capacity_kv_equals_what_fast_generate_allocates():
    model = build_tiny_model("gemma3", eos_token_id=None, layer_types=["sliding_attention", "full_attention"] * 2)
    ids = torch.randint(3, 97, (1, 24), generator=torch.Generator().manual_seed(0))
    for cfg in (None, SWAAConfig(sliding_window_size=5, keep_first=2, force_fa_decode=[1], non_sliding_layers=[3])):
        with swaa(model, cfg):
            real = fast_generate(model, ids, max_new_tokens=6, pad_token_id=0).kv_cache_bytes_per_layer
        cap = capacity(model, cfg, GPUS["H100 80GB"], prompt_tokens=24, new_tokens=6, dtype=torch.float32)
        assert cap.kv_bytes_per_seq == sum(real)


def test_serve_seconds_refuses_negative_requests_and_batches():
    """Once: serve_seconds(-5) returns about 9.7 s for serving minus five requests; a negative batch returns inf."""
    cap = capacity(SHAPE_8B, CFG_8B, GPUS["H100 80GB"], prompt_tokens=P, new_tokens=N)
    with pytest.raises(ValueError, match="requests"):
        cap.serve_seconds(-5)
    with pytest.raises(ValueError, match="batch"):
        cap.serve_seconds(10, batch=-2)


def test_capacity_refuses_a_negative_reserve():
    """Once: reserve_bytes=-1e12 is taken as extra memory: 4835 rows fit on an 80 GB card instead of 43."""
    with pytest.raises(ValueError, match="reserve_bytes"):
        capacity(SHAPE_8B, CFG_8B, GPUS["H100 80GB"], prompt_tokens=P, new_tokens=N, reserve_bytes=-(10**12))


def test_capacity_token_counts_are_checked_under_their_own_names():
    """Once: prompt_tokens=100.5 is refused as "context_tokens must be a whole number" (a parameter the caller did not
    pass); new_tokens=2.5 or True is accepted."""
    gpu = GPUS["H100 80GB"]
    with pytest.raises(ValueError, match="prompt_tokens"):
        capacity(SHAPE_8B, CFG_8B, gpu, prompt_tokens=100.5, new_tokens=2)
    for bad in (2.5, True):
        with pytest.raises(ValueError, match="new_tokens"):
            capacity(SHAPE_8B, None, gpu, prompt_tokens=100, new_tokens=bad)


def test_custom_gpu_refuses_nan_figures():
    """Once: custom_gpu(80, bandwidth_tb_s=nan) is accepted (every tokens/s is then nan); custom_gpu(nan) fails with
    "cannot convert float NaN to integer", custom_gpu(inf) with an OverflowError."""
    with pytest.raises(ValueError, match="(?i)bandwidth"):
        custom_gpu(80, bandwidth_tb_s=math.nan)
    for memory in (math.nan, math.inf):
        with pytest.raises(ValueError, match="(?i)memory"):
            custom_gpu(memory)


def test_capacity_takes_a_card_by_its_name_or_refuses_it_by_name():
    """Once: capacity(..., "H100 80GB", ...) (a key of GPUS) raises "AttributeError: 'str' object has no attribute
    'memory_bytes'"."""
    want = capacity(SHAPE_8B, CFG_8B, GPUS["H100 80GB"], prompt_tokens=P, new_tokens=N)
    try:
        got = capacity(SHAPE_8B, CFG_8B, "H100 80GB", prompt_tokens=P, new_tokens=N)
    except (TypeError, ValueError) as e:
        assert "gpu" in str(e).lower()
    else:
        assert got.max_batch == want.max_batch


@pytest.mark.parametrize(
    "call",
    [
        lambda: capacity(SHAPE_8B, "swa", GPUS["H100 80GB"], prompt_tokens=100, new_tokens=2),
        lambda: estimate_memory(SHAPE_8B, 100, "swa"),
    ],
    ids=["capacity", "estimate_memory"],
)
def test_memory_models_refuse_a_config_of_the_wrong_type_by_name(call):
    """Once: A config that is neither SWAAConfig, dict nor None ends in "AttributeError: 'str' object has no attribute
    'is_full_attention'"."""
    with pytest.raises((TypeError, SWAAConfigError), match="SWAAConfig"):
        call()


# ===================================================================================================== the embedded model
@pytest.mark.embedded
def test_embedded_smollm2_under_a_window_covering_everything_is_transformers_generate():
    from swaa_core import load_model

    llm = load_model()
    m, tok = llm.model, llm.tokenizer
    msgs = [{"role": "user", "content": "Tell me a short story about a cat named Tom and his friend the dog. " * 6}]
    inputs = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    want = m.generate(**inputs, max_new_tokens=10, do_sample=False)
    n = inputs["input_ids"].shape[1]
    for cfg in (
        SWAAConfig(sliding_window_size=10**6),
        SWAAConfig(sliding_window_size=64, keep_first=n),  # sinks cover the prompt, the window the answer
        SWAAConfig(sliding_window_size=64, non_sliding_layers=list(range(llm.info.shape.num_layers))),
    ):
        with swaa(m, cfg):
            assert torch.equal(m.generate(**inputs, max_new_tokens=10, do_sample=False), want), cfg.describe()
