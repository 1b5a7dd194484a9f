"""The capacity model against hand-computed bytes (the 8B Llama shape, SmolLM2-135M), hand-worked batch sizes and
roofline arithmetic, and the bytes the fixed-buffer path really holds on a tiny model."""

from __future__ import annotations

import math

import pytest
import torch
from helpers.tiny_models import build_tiny_model

from swaa_core import SWAAConfig, apply_swaa, remove_swaa
from swaa_core.engine.fast_decode import fast_generate
from swaa_core.models.capacity import (
    GPUS,
    capacity,
    capacity_table,
    custom_gpu,
    prefill_flops,
    prefill_kv_slots,
    static_kv_slots,
)
from swaa_core.models.registry import get_model_entry

LLAMA = "meta-llama/Llama-3.1-8B-Instruct"
SMOL = "smollm2-135m"
W, K = 2048, 128
SWA = SWAAConfig(sliding_window_size=W, keep_first=K)
HALF = SWAAConfig(sliding_window_size=W, keep_first=K, non_sliding_layers=list(range(1, 32, 2)))
GiB = 2**30


def test_llama8b_kv_bytes_per_sequence_by_hand():
    entry = get_model_entry(LLAMA)
    # 32 layers, 8 KV heads x 128 dims, keys and values, bf16: 2 * 8 * 128 * 2 = 4096 bytes per slot and layer
    full = capacity(entry, None, GPUS["H200 141GB"], prompt_tokens=131072, new_tokens=512)
    assert full.kv_bytes_per_seq == 32 * 4096 * (131072 + 512)  # 17.24e9 bytes: the "17.2 GB of KV"
    swa = capacity(entry, SWA, GPUS["H200 141GB"], prompt_tokens=131072, new_tokens=512)
    assert swa.kv_bytes_per_seq == 32 * 4096 * (128 + 2048)  # the ring, whatever the context
    half = capacity(entry, HALF, GPUS["H200 141GB"], prompt_tokens=32768, new_tokens=512)
    assert half.kv_bytes_per_seq == 16 * 4096 * (32768 + 512) + 16 * 4096 * (128 + 2048)
    # FA decode keeps every key even in a sliding layer: no saving in the buffers
    fad = SWAAConfig(sliding_window_size=W, keep_first=K, force_fa_decode=True)
    assert static_kv_slots(entry, fad, 1000, 24) == (1024,) * 32
    assert full.weight_bytes == 2 * 8_030_261_248


def test_smollm2_kv_bytes_and_prefill_slots_by_hand():
    entry = get_model_entry(SMOL)
    # 30 layers, 3 KV heads x 64 dims, bf16: 2 * 3 * 64 * 2 = 768 bytes per slot and layer
    cfg = SWAAConfig(sliding_window_size=256, keep_first=4, non_sliding_layers=[1, 3])
    cap = capacity(entry, cfg, GPUS["H100 80GB"], prompt_tokens=4000, new_tokens=96)
    assert cap.kv_bytes_per_seq == 768 * (2 * 4096 + 28 * 260)
    held, transient = prefill_kv_slots(entry, cfg, 4000)
    # a growing buffer holds the prompt + 256 spare slots rounded up to 256: 4256 -> 4352
    assert held == tuple(4352 if i in (1, 3) else 260 for i in range(30)) and transient == 4352
    # a prompt shorter than the ring never moves to it
    assert prefill_kv_slots(entry, cfg, 200) == ((512,) * 30, 0)


def test_largest_batch_by_hand():
    entry = get_model_entry(LLAMA)
    gpu = custom_gpu(80)
    cap = capacity(entry, SWA, gpu, prompt_tokens=32768, new_tokens=512, prefill="row", reserve_bytes=4 * GiB)
    weights = 2 * 8_030_261_248
    ring = 32 * 4096 * 2176
    per_token = (4 * 4096 + 3 * 14336) * 2  # activation elements per token (memory.py), bf16
    dynamic = 32 * 4096 * 2176 + 4096 * (32768 + 256)  # rings + one layer's transient 33024-slot buffer
    one_prefill = 32768 * per_token + 128256 * 4 + dynamic
    room = 80 * GiB - 4 * GiB - weights
    # the prefill phase binds: one prompt's activations and cache beside every row's ring
    assert cap.max_batch == (room - one_prefill) // ring
    assert cap.phase == "prefill"
    assert cap.peak_bytes(cap.max_batch) <= 80 * GiB - 4 * GiB < cap.peak_bytes(cap.max_batch + 1)
    batch = capacity(entry, SWA, gpu, prompt_tokens=32768, new_tokens=512, prefill="batch", reserve_bytes=4 * GiB)
    assert batch.max_batch == room // one_prefill  # every row's activations at once
    assert batch.max_batch < cap.max_batch


def test_roofline_arithmetic_by_hand():
    entry = get_model_entry(LLAMA)
    gpu = custom_gpu(141, bandwidth_tb_s=4.0, matmul_tflops=500)
    cap = capacity(entry, None, gpu, prompt_tokens=4096, new_tokens=100)
    kv = 32 * 4096 * 4196
    weights = 2 * 8_030_261_248
    assert cap.step_seconds(3) == pytest.approx((weights + 3 * kv) / 4e12)
    assert cap.tokens_per_s(3) == pytest.approx(3 * 4e12 / (weights + 3 * kv))
    # linear maps: q, o 4096 x 4096; k, v 4096 x 1024; MLP 3 x 4096 x 14336; attention: the causal triangle
    linear = 2 * 32 * (2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336) * 4096
    attention = 32 * 4 * 32 * 128 * (4096 * 4097 / 2)
    assert prefill_flops(entry, None, 4096) == pytest.approx(linear + attention)
    # 7 requests in waves of 3: 3 + 3 + 1 rows, each wave its prefill then 99 steps
    expected = sum(w * (linear + attention) / 500e12 + 99 * cap.step_seconds(w) for w in (3, 3, 1))
    assert cap.serve_seconds(7, batch=3) == pytest.approx(expected)
    with pytest.raises(ValueError, match="does not fit"):
        cap.serve_seconds(7, batch=cap.max_batch + 1)


def test_a_large_batch_is_bound_by_compute():
    entry = get_model_entry(LLAMA)
    slow = custom_gpu(141, bandwidth_tb_s=4.0, matmul_tflops=1)  # 1 TFLOP/s: compute binds at any real batch
    cap = capacity(entry, SWA, slow, prompt_tokens=4096, new_tokens=100)
    linear = 32 * (2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336)
    per_row = 2 * linear + 2 * 128256 * 4096 + 4 * 32 * 128 * 32 * 2176  # one token's maps, logits, the rings
    assert cap.step_seconds(50) == pytest.approx(50 * per_row / 1e12)
    fast = capacity(entry, SWA, custom_gpu(141, bandwidth_tb_s=4.0), prompt_tokens=4096, new_tokens=100)
    assert fast.step_seconds(50) == pytest.approx((2 * 8_030_261_248 + 50 * 32 * 4096 * 2176) / 4e12)


def test_sliding_prefill_visits_window_and_sinks():
    entry = get_model_entry(SMOL)
    cfg = SWAAConfig(sliding_window_size=4, keep_first=2)
    heads_dims = 9 * 64
    # n = 10: queries 0..3 see 1..4 keys, 4..9 see 4; sinks outside the window: query 4 one, queries 5..9 two
    pairs = (1 + 2 + 3 + 4) + 6 * 4 + (1 + 5 * 2)
    assert prefill_flops(entry, cfg, 10) - prefill_flops(entry, None, 10) == pytest.approx(
        30 * 4 * heads_dims * (pairs - 55)
    )


def test_nothing_fits_and_bad_options():
    entry = get_model_entry(LLAMA)
    cap = capacity(entry, None, custom_gpu(16), prompt_tokens=1024, new_tokens=16)
    assert cap.max_batch == 0 and cap.tokens_per_s() == 0 and math.isinf(cap.serve_seconds(4))
    with pytest.raises(ValueError, match="prefill must be"):
        capacity(entry, None, GPUS["H100 80GB"], prompt_tokens=10, new_tokens=1, prefill="chunked")
    with pytest.raises(ValueError, match="new_tokens must be a whole number >= 1"):
        capacity(entry, None, GPUS["H100 80GB"], prompt_tokens=10, new_tokens=0)
    with pytest.raises(ValueError, match="positive"):
        custom_gpu(0)


def test_table_rows_agree_with_capacity():
    entry = get_model_entry(LLAMA)
    configs = {"Full attention": None, "SWA": SWA, "1/2 FA": HALF}
    rows = capacity_table(entry, configs, GPUS["H200 141GB"], prompt_tokens=131072, new_tokens=512, requests=16)
    assert [r["recipe"] for r in rows] == list(configs)
    for row, cfg in zip(rows, configs.values(), strict=True):
        cap = capacity(entry, cfg, GPUS["H200 141GB"], prompt_tokens=131072, new_tokens=512)
        assert row["max_batch"] == cap.max_batch
        assert row["tokens_per_s"] == round(cap.tokens_per_s(), 1)
        assert row["serve_16_s"] == round(cap.serve_seconds(16), 1)
    full, swa, half = rows
    assert full["max_batch"] <= half["max_batch"] <= swa["max_batch"]


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize(
    "config",
    [
        None,
        SWAAConfig(sliding_window_size=6, keep_first=2),
        SWAAConfig(sliding_window_size=6, keep_first=2, force_fa_decode=[0, 2]),
        SWAAConfig(sliding_window_size=5, non_sliding_layers=[1]),
    ],
    ids=["full", "evicting", "fa-decode-some", "fa-layer"],
)
@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_fixed_buffers_hold_what_the_model_predicts(family, config, batch):
    model = build_tiny_model(family, eos_token_id=None)  # gemma3: native sliding layers keep a ring of their own
    if config is not None:
        apply_swaa(model, config)
    prompt, new = 23, 5
    ids = torch.randint(3, 97, (batch, prompt), generator=torch.Generator().manual_seed(0))
    result = fast_generate(model, ids, max_new_tokens=new, cuda_graph=False)
    remove_swaa(model)
    cap = capacity(model, config, GPUS["H100 80GB"], prompt_tokens=prompt, new_tokens=new, dtype=torch.float32)
    per_slot = 2 * model.config.num_key_value_heads * model.config.head_dim * 4
    predicted = [batch * per_slot * s for s in static_kv_slots(model, config, prompt, new)]
    assert list(result.kv_cache_bytes_per_layer) == predicted
    assert sum(result.kv_cache_bytes_per_layer) == batch * cap.kv_bytes_per_seq


def _allocated_peak(fn) -> int:
    """Peak bytes allocated on the CPU while ``fn`` runs, from torch.profiler's allocation and free events (each
    op's own allocations, in time order), above what was held before."""
    with torch.profiler.profile(profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start)
    held = peak = 0
    for e in events:
        held += e.self_cpu_memory_usage
        peak = max(peak, held)
    return peak


@pytest.mark.parametrize(
    "config",
    [
        None,
        SWAAConfig(sliding_window_size=40, keep_first=3),
        SWAAConfig(sliding_window_size=40, non_sliding_layers=[1]),
    ],
    ids=["full", "evicting", "fa-layer"],
)
def test_peak_of_a_cpu_run_matches_the_prediction(config):
    """bf16, I / h = 3.5 as in Llama 8B: what fast_generate allocates at its peak (the batched prefill here) is what
    the model predicts on top of the weights, within a few percent."""
    model = build_tiny_model(hidden_size=256, intermediate_size=896, num_attention_heads=4, num_key_value_heads=2,
                             head_dim=64, vocab_size=4000, layers=2, eos_token_id=None,
                             dtype=torch.bfloat16)  # fmt: skip
    ids = torch.randint(3, 3900, (2, 768), generator=torch.Generator().manual_seed(0))
    if config is not None:
        apply_swaa(model, config)
    measured = _allocated_peak(lambda: fast_generate(model, ids, max_new_tokens=4, cuda_graph=False))
    remove_swaa(model)
    cap = capacity(model, config, custom_gpu(1), prompt_tokens=768, new_tokens=4, dtype=torch.bfloat16)
    predicted = cap.peak_bytes(2) - cap.weight_bytes
    assert 0.85 * predicted <= measured <= 1.05 * predicted, (measured, predicted)
