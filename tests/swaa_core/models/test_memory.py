"""Memory estimates against what tiny real models allocate: KV caches after a forward, weight tensors."""

from __future__ import annotations

import json

import pytest
import torch
from helpers.tiny_models import build_tiny_model
from transformers import DynamicCache

from swaa_core import SWAAConfig, apply_swaa, kv_cache_bytes
from swaa_core.engine.config import SWAAConfigError
from swaa_core.models.memory import InsufficientMemoryError, check_fits, estimate_memory, model_shape
from swaa_core.models.registry import get_model_entry
from swaa_core.runtime.units import format_bytes

SWAA_CONFIGS = {
    "swa-only": SWAAConfig(sliding_window_size=8),
    "sinks": SWAAConfig(sliding_window_size=8, keep_first=4),
    "half-fa-layers": SWAAConfig(sliding_window_size=6, keep_first=2, non_sliding_layers=[1, 3, 5]),
    "fa-decode-some": SWAAConfig(sliding_window_size=8, keep_first=3, force_fa_decode=[0, 2]),
    "fa-decode-all": SWAAConfig(sliding_window_size=8, force_fa_decode=True),
    "window-over-prompt": SWAAConfig(sliding_window_size=64, keep_first=4),
}


def _held_bytes(cache: DynamicCache) -> list[int]:
    """Bytes of the key and value tensors each layer holds, read straight from the cache."""
    return [
        layer.keys.numel() * layer.keys.element_size() + layer.values.numel() * layer.values.element_size()
        for layer in cache.layers
    ]


def _prefill(model, batch: int, tokens: int, decode_steps: int = 0):
    torch.manual_seed(1)
    ids = torch.randint(3, 90, (batch, tokens))
    with torch.no_grad():
        out = model(ids, use_cache=True)
        cache = out.past_key_values
        for _ in range(decode_steps):
            nxt = out.logits[:, -1:].argmax(-1)
            out = model(nxt, past_key_values=cache, use_cache=True)
    return cache


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch", [1, 2])
def test_full_attention_kv_matches_the_real_cache(family, batch, dtype):
    model = build_tiny_model(family, layers=6, dtype=dtype)
    cache = _prefill(model, batch, tokens=37, decode_steps=2)
    estimate = estimate_memory(model.config, 37 + 2, batch_size=batch, dtype=dtype)
    # gemma3 (sliding window 8 in most layers) keeps only the last 7 tokens there: the estimate must know that
    assert list(estimate.kv_full_per_layer) == _held_bytes(cache)
    assert estimate.kv_swaa_bytes == estimate.kv_full_bytes and estimate.kv_saving == 0


@pytest.mark.parametrize("name", SWAA_CONFIGS)
def test_swaa_kv_matches_the_real_cache(family, name):
    config = SWAA_CONFIGS[name]
    model = build_tiny_model(family, layers=6)
    apply_swaa(model, config)
    cache = _prefill(model, batch=1, tokens=40, decode_steps=3)
    estimate = estimate_memory(model, 43, config)
    assert list(estimate.kv_swaa_per_layer) == kv_cache_bytes(cache)
    if family != "gemma3":  # gemma3's own window (8) is smaller than these SWAA layouts hold, elsewhere SWAA saves
        assert estimate.kv_swaa_bytes <= estimate.kv_full_bytes


def test_weight_bytes_match_the_parameters():
    model = build_tiny_model("llama", layers=3)
    expected = sum(p.numel() * p.element_size() for p in model.parameters())
    assert estimate_memory(model, 0).weight_bytes == expected
    assert estimate_memory(model.config, 0).weight_bytes == expected  # from the config alone (meta-device count)
    assert estimate_memory(model.config, 0, dtype="bf16").weight_bytes == expected // 2


def test_paper_model_at_32k_saves_kv_with_half_fa_layers():
    entry = get_model_entry("Qwen/Qwen3-4B-Instruct-2507")
    cfg = SWAAConfig(sliding_window_size=2048, keep_first=100, non_sliding_layers=entry.fa_layers("1/2"))
    est = estimate_memory(entry, 32768, cfg, dtype=torch.bfloat16)
    per_token_layer = 2 * 8 * 128 * 2  # keys + values, 8 KV heads x 128 dims, bf16
    assert est.kv_full_bytes == 36 * 32768 * per_token_layer
    assert est.kv_swaa_bytes == 18 * 32768 * per_token_layer + 18 * (100 + 2048) * per_token_layer
    assert est.weight_bytes == entry.num_parameters * 2
    assert "less" in est.summary() and format_bytes(est.kv_full_bytes) in est.summary()


def test_shape_of_a_registry_entry_equals_shape_of_its_config():
    entry = get_model_entry("gemma3-270m")
    assert model_shape(entry) == model_shape(entry.config())


def test_bad_inputs_are_refused_with_clear_messages():
    model = build_tiny_model("llama", layers=4)
    with pytest.raises(ValueError, match="context_tokens must be a whole number"):
        estimate_memory(model, -1)
    with pytest.raises(ValueError, match="batch_size"):
        estimate_memory(model, 10, batch_size=0)
    with pytest.raises(ValueError, match="Unknown dtype"):
        estimate_memory(model, 10, dtype="int3")
    with pytest.raises(SWAAConfigError, match="this model has 4 layers"):
        estimate_memory(model, 10, SWAAConfig(sliding_window_size=4, non_sliding_layers=[7]))
    with pytest.raises(TypeError, match="Cannot size"):
        estimate_memory("not a model", 10)


def test_check_fits_uses_the_real_free_memory():
    check_fits(1024, "cpu", what="A small thing", advice="")
    with pytest.raises(InsufficientMemoryError, match=r"A huge thing needs about .* GiB, but only .* is free on cpu"):
        check_fits(10**15, "cpu", what="A huge thing", advice="Use less.")


def test_a_model_with_two_native_windows_keeps_both_from_load_to_shape(tmp_path):
    """Layer 1 of this Gemma 3 has its own window (16, the others 8): the ModelInfo of the load, the shape rebuilt
    from it and the KV estimate know every layer's window, as the config states it and transformers' cache keeps it."""
    from dataclasses import replace

    from helpers.tiny_models import build_tiny_tokenizer

    from swaa_core import load_model

    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model("gemma3", layers=6, vocab_size=len(tokenizer), per_layer_config={1: {"sliding_window": 16}},
                             allow_global_per_layer_attribute_access=True)  # fmt: skip
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path), reuse=False)
    config = loaded.model.config
    own = tuple(c.sliding_window if t == "sliding_attention" else None
                for t, c in zip(config.layer_types, config.per_layer_config, strict=True))  # fmt: skip
    assert own == (8, 16, 8, 8, 8, None)
    info = loaded.info
    assert info.native_windows == model_shape(info).native_windows == model_shape(loaded).native_windows == own
    assert (info.native_sliding_layers, info.native_sliding_window) == ([0, 1, 2, 3, 4], 16)
    assert "native sliding windows 8 in 4 layers, 16 in 1 layers" in info.summary()
    assert estimate_memory(info, 30).kv_full_per_layer == tuple(_held_bytes(_prefill(loaded.model, 1, 30)))
    assert model_shape(replace(info, name="renamed")) == model_shape(info)
    facts = json.loads(json.dumps(info.to_dict()))
    assert facts["native_windows"] == list(own) and facts["num_heads"] == 4 and facts["dtype"] == "float32"
