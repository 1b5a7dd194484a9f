"""The compiled fixed-buffer decode step (``fast_generate(compile=...)``): bucketed buffer sizes, the same tokens as
the eager fixed-buffer step and as ``generate``, one compilation per bucket kept across calls. On the CPU the
compiler runs with dynamo's ``eager`` backend (tracing, guards and caching as under inductor, without code generation,
which takes minutes here); test_gpu_decode.py runs inductor on CUDA."""

from __future__ import annotations

import warnings

import pytest
import torch
from helpers.tiny_models import build_tiny_model
from torch._dynamo.utils import counters
from transformers import GenerationConfig

from swaa_core import SWAAConfig, apply_swaa, remove_swaa, swaa
from swaa_core.engine.compiled_step import COMPILE_BUCKET, FROZEN_FUSED, bucket_slots, inductor_backend
from swaa_core.engine.fast_decode import fast_generate

W, K = 6, 2
CONFIG = SWAAConfig(sliding_window_size=W, keep_first=K, non_sliding_layers=[1])


def test_bucket_slots_rounds_up_to_the_bucket():
    assert COMPILE_BUCKET == 256
    assert [bucket_slots(n) for n in (1, 255, 256, 257, 512, 513)] == [256, 256, 256, 512, 512, 768]
    assert bucket_slots(1000, 300) == 1200
    for bad in ((0, 256), (5, 0)):
        with pytest.raises(ValueError, match="positive"):
            bucket_slots(*bad)


def graphs() -> int:
    return counters["stats"]["unique_graphs"]


def test_compiled_step_equals_the_eager_step_and_compiles_once_per_bucket():
    model = build_tiny_model("llama", eos_token_id=None)
    apply_swaa(model, CONFIG)
    per_slot = 2 * 2 * 8 * 4  # keys + values x KV heads x head dim x float32 bytes
    try:
        counts = []
        for T in (20, 41, 33):  # 20 + 24, 41 + 24 and 33 + 24 slots: one bucket of 256
            x = torch.randint(3, 97, (1, T), generator=torch.Generator().manual_seed(T))
            compiled = fast_generate(model, x, max_new_tokens=24, compile="eager")
            eager = fast_generate(model, x, max_new_tokens=24)
            with torch.no_grad():
                expected = model.generate(x, max_new_tokens=24, do_sample=False)
            assert compiled.compiled and not eager.compiled
            assert torch.equal(compiled.sequences, eager.sequences) and torch.equal(compiled.sequences, expected)
            # layer 1 keeps full attention in a buffer of a whole bucket, the sliding layers sinks + W slots
            assert [b // per_slot for b in compiled.kv_cache_bytes_per_layer] == [K + W, 256, K + W, K + W]
            assert [b // per_slot for b in eager.kv_cache_bytes_per_layer] == [K + W, T + 24, K + W, K + W]
            counts.append(graphs())
        # the second length compiled the prefill's modules with the length as a symbol (compiled_prefill); the third
        # compiled nothing: the bucket's step and the prefill were reused
        assert counts[2] == counts[1]
        x = torch.randint(3, 97, (1, 250), generator=torch.Generator().manual_seed(3))
        fast_generate(model, x, max_new_tokens=24, compile="eager")  # 274 slots: the next bucket
        assert graphs() - counts[2] == 1
        off = fast_generate(model, x, max_new_tokens=8, compile="eager", generation_config=GenerationConfig(
            disable_compile=True))  # fmt: skip
        assert not off.compiled
    finally:
        remove_swaa(model)


def test_inductor_backends_with_equal_settings_are_one_backend():
    """Dynamo keeps compiled graphs apart per backend object: equal settings must give the same one, or every
    fast_generate call with them would compile again."""
    assert inductor_backend(**FROZEN_FUSED) is inductor_backend(coordinate_descent_tuning=True, freezing=True)
    assert inductor_backend(**FROZEN_FUSED) is not inductor_backend(freezing=True)
    with pytest.raises(TypeError):
        inductor_backend(some_setting=[1, 2])


def test_past_the_recompile_limit_the_step_runs_eagerly_says_so_and_gives_the_same_tokens(monkeypatch):
    """Every transformers model's forward is one wrapper function, so dynamo's per-function graph limit counts the
    compiled steps of every model, bucket and batch size in a process. Before, the ninth ran eagerly in silence
    while the result said it was compiled (seen on the CPU, torch 2.13)."""
    import swaa_core.engine.compiled_step as compiled_step

    monkeypatch.setattr(compiled_step, "COMPILED_RECOMPILE_LIMIT", 1)
    model = build_tiny_model("llama", eos_token_id=None)
    results = []
    with swaa(model, CONFIG):
        for T in (10, 300, 600):  # three buckets: three graphs of one function
            x = torch.randint(3, 97, (1, T), generator=torch.Generator().manual_seed(T))
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                compiled = fast_generate(model, x, max_new_tokens=12, compile="eager")
            eager = fast_generate(model, x, max_new_tokens=12)
            assert torch.equal(compiled.sequences, eager.sequences)
            results.append((compiled.compiled, [str(w.message) for w in caught if "compiled decode" in str(w.message)]))
    assert results[-1][0] is False and any(said for _, said in results)
    assert all(said == [] for done, said in results if done)
