"""Review of the fixed path's free-memory refusal as fixed on 2026-12-06 (decode_path.fixed_buffers_at_least, called
by fast_decode._refuse_buffers_beyond_free_memory before the prefill; the auto route's upper bound
decode_path.buffers_beyond_free_memory). Each test fails on the reviewed commit. CUDA is simulated as in
engine/test_review_two.py: the routing device and the free memory are monkeypatched, the generation runs on the CPU
and its real buffers are DecodeResult.kv_cache_bytes_per_layer."""

from __future__ import annotations

import re

import pytest
import torch
from helpers.tiny_models import build_tiny_model, left_padded
from transformers import GenerationConfig

import swaa_core.engine.decode_path as dp
import swaa_core.engine.fast_decode as fast_decode
from swaa_core import SWAAConfig, apply_swaa
from swaa_core.engine.cache import SPARE_SLOTS, bucket_end
from swaa_core.engine.decode_path import DecodePath
from swaa_core.models.memory import kv_bytes_per_device, layer_devices

X = torch.tensor([[5, 9, 11, 30, 7, 64, 12, 3, 40, 41, 42, 8]])
HOLE = torch.ones_like(X)
HOLE[0, 5] = 0  # a masked token inside the prompt: an evicting layer keeps every slot (SWAACacheLayer.keeps_all)
ONE_REAL, ONE_REAL_MASK = left_padded(torch.tensor([7]), X[0])  # row 0 has 1 real token < keep_first: never settles
WIDE = SWAAConfig(sliding_window_size=1024, keep_first=4)  # a ring of 1,028 slots; these calls need 21 per layer


def tiny(family: str = "llama", config: SWAAConfig | None = WIDE, layers: int = 3):
    model = build_tiny_model(family, layers=layers, seed=5)
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if config is not None:
        apply_swaa(model, config)
    return model


def as_cuda(monkeypatch, free: int) -> None:
    monkeypatch.setattr(dp, "model_device", lambda model: torch.device("cuda"))
    monkeypatch.setattr(dp, "free_bytes", lambda device: free)


def refusal(call) -> str:
    with pytest.raises(ValueError, match="would not fit") as refused:
        call()
    return str(refused.value)


# ------------------------------------------------------------------ 1. the lower bound above the real allocation


@pytest.mark.parametrize(
    ("family", "config", "inputs", "kw"),
    [
        ("llama", WIDE, X, dict(attention_mask=HOLE)),
        ("llama", WIDE, ONE_REAL, dict(attention_mask=ONE_REAL_MASK)),
        ("qwen3", WIDE, X, dict(attention_mask=HOLE, num_return_sequences=2, do_sample=True)),
        ("mistral", WIDE, ONE_REAL, dict(attention_mask=ONE_REAL_MASK, prefill="row")),
        ("llama", SWAAConfig(sliding_window_size=1024, keep_first=4, mask_kind="chunked"), X, dict(attention_mask=HOLE)),
        ("gemma3", SWAAConfig(sliding_window_size=4096, keep_first=4), ONE_REAL,
         dict(attention_mask=ONE_REAL_MASK)),  # layer 5 is global: SWAA slides it (layers 0-4: their own window of 8)
    ],
    ids=["masked token inside", "row shorter than keep_first", "qwen3, num_return_sequences=2", "mistral, row prefill",
         "chunked kind", "gemma3 global layer"],
)  # fmt: skip
def test_fixed_path_serves_a_call_whose_buffers_fall_back_to_flat_below_the_ring(
    monkeypatch, family, config, inputs, kw
):
    """fixed_buffers_at_least counts every evicting layer as its ring (sinks + W) and claims that a masked token
    inside a prompt or left padding "only adds to it". But an evicting layer whose cache keeps every key (a hole in the
    mask) or never settled its sinks (a row with fewer real tokens than keep_first) gets flat buffers of prompt + new
    slots (static_cache._static_layer), far below a wide ring: here 12 + 9 = 21 slots against 1,028 (4,100). Free
    memory as large as the prefill's growing cache at its full capacity (bucket_end(prompt + SPARE_SLOTS) = 512 slots
    per layer, which the call holds during its prefill anyway; 24x its fixed buffers) is refused."""
    model = tiny(family, config, layers=6 if family == "gemma3" else 3)
    kw = {"max_new_tokens": 9, "do_sample": False, "eos_token_id": [], **kw}
    torch.manual_seed(0)
    result = fast_decode.fast_generate(model, inputs, **kw)
    rows, per_slot = result.sequences.shape[0], 2 * 2 * 8 * 4  # 2 KV heads of dim 8, float32 keys and values
    most = rows * per_slot * len(result.kv_cache_bytes_per_layer) * bucket_end(inputs.shape[1] + SPARE_SLOTS)
    assert sum(result.kv_cache_bytes_per_layer) < most
    as_cuda(monkeypatch, most)
    assert fast_decode.fast_generate(model, inputs, **kw).sequences.shape == result.sequences.shape


# ------------------------------------------------------------------ 2. the upper bound below the lower bound


@pytest.mark.parametrize("free", ["just below the fixed path's least", "just below the real buffers"])
def test_auto_route_does_not_send_a_short_padded_batch_to_buffers_beyond_free_memory(monkeypatch, free):
    """A left-padded batch is estimated by buffers_beyond_free_memory with every layer flat (prompt + new = 13 slots),
    but its sinks settle and each evicting layer gets a ring of sinks (2 + 3 pads) + W = 1,029 slots: the "upper
    bound" is 79x below the real buffers and below fixed_buffers_at_least (1,026). Auto picks the fixed path, which
    then refuses the plain model.generate call (free below its least) or, one byte short of its buffers, runs into
    the allocator on a GPU."""
    model = tiny(config=SWAAConfig(sliding_window_size=1024, keep_first=2))
    ids, mask = left_padded(X[0, :5], X[0, :8])
    kw = dict(attention_mask=mask, max_new_tokens=5, do_sample=False, eos_token_id=[])
    real = sum(fast_decode.fast_generate(model, ids, **kw).kv_cache_bytes_per_layer)
    least = sum(dp.fixed_buffers_at_least(model, 2, ids.shape[1] + 5).values())
    assert least <= real
    as_cuda(monkeypatch, least - 1 if free.startswith("just below the fixed") else real - 1)
    model.generate(ids, **kw)  # raises "would not fit" under the first
    assert model._swaa_state.last_route.path is DecodePath.EAGER


# ------------------------------------------------------------------ 3. a model spread over several GPUs


def test_fixed_path_compares_each_gpus_share_with_that_gpus_free_memory(monkeypatch):
    """device_map="auto" puts each decoder layer, and its fixed buffers, on its own GPU (README: "each layer's masks
    and KV cache live on its GPU"; models.memory.check_run_fits counts each GPU's own layers). The refusal sums every
    layer and compares the sum with the free memory of the first parameter's GPU: two GPUs each with room for their
    half are refused."""
    model = tiny(config=SWAAConfig(sliding_window_size=4, keep_first=2, non_sliding_layers=[1, 2]), layers=4)
    kw = dict(max_new_tokens=9, do_sample=False, eos_token_id=[])
    per_layer = fast_decode.fast_generate(model, X, **kw).kv_cache_bytes_per_layer
    model.hf_device_map = {"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": 0, "model.layers.2": 1,
                           "model.layers.3": 1, "model.norm": 1, "model.rotary_emb": 1, "lm_head": 1}  # fmt: skip
    shares = kv_bytes_per_device(layer_devices(model), per_layer)
    assert sorted(shares) == ["cuda:0", "cuda:1"]
    each = max(shares.values())  # every GPU has room for the larger share
    assert each < sum(per_layer)
    monkeypatch.setattr(dp, "model_device", lambda model: torch.device("cuda", 0))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (each, 80 * 2**30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 0)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 0)
    assert fast_decode.fast_generate(model, X, **kw).sequences.shape == (1, X.shape[1] + 9)


# ------------------------------------------------------------------ 4. the refusal's words


def test_refusal_shows_need_above_free(monkeypatch):
    """The figures are rounded to 0.01 GiB: a need just above the free memory reads "need at least 0.00 GiB, 0.00 GiB
    are free" (on a card, any shortfall under 5 MiB reads e.g. "1.00 GiB, 1.00 GiB"): a refusal that shows no
    shortfall."""
    model = tiny(config=SWAAConfig(sliding_window_size=4, keep_first=2, non_sliding_layers=[1]))
    kw = dict(max_new_tokens=9, do_sample=False, eos_token_id=[])
    need = sum(fast_decode.fast_generate(model, X, **kw).kv_cache_bytes_per_layer)
    as_cuda(monkeypatch, need - 1)
    text = refusal(lambda: fast_decode.fast_generate(model, X, **kw))
    figures = re.search(r"need at least (\S+) (\S+), (\S+) (\S+) are free", text)
    assert figures is not None, text
    assert figures.group(1, 2) != figures.group(3, 4), text


def test_refusal_does_not_ask_for_fewer_new_tokens_than_one(monkeypatch):
    """Every layer evicts: the least the buffers take is sinks + W per layer whatever the number of new tokens, so
    "Ask for fewer new tokens" cannot help (max_new_tokens=1 is refused at the same need), nor can the eager path,
    whose cache keeps the same rings; only fewer rows (or a narrower window) would. The message advises exactly
    those two."""
    model = tiny(config=SWAAConfig(sliding_window_size=4, keep_first=2))
    kw = dict(max_new_tokens=1, do_sample=False, eos_token_id=[])
    as_cuda(monkeypatch, sum(dp.fixed_buffers_at_least(model, 1, X.shape[1] + 1).values()) - 1)
    text = refusal(lambda: fast_decode.fast_generate(model, X, **kw))
    assert "fewer new tokens" not in text, text


def test_compiled_refusal_names_the_bucketed_slots_it_counted(monkeypatch):
    """Under compile the refusal counts bucket_slots(12 + 9) = 256 slots per flat layer but names "(12 prompt + 9 new
    tokens)" and advises fewer new tokens, which changes nothing down to 1; compile=False (21 slots) is the remedy
    that works, and the message never mentions the compilation."""
    model = tiny(config=SWAAConfig(sliding_window_size=4, keep_first=2, non_sliding_layers=[1]))
    kw = dict(max_new_tokens=9, do_sample=False, eos_token_id=[])
    compiled = sum(fast_decode.fast_generate(model, X, compile="eager", **kw).kv_cache_bytes_per_layer)
    as_cuda(monkeypatch, compiled - 1)
    text = refusal(lambda: fast_decode.fast_generate(model, X, compile="eager", **kw))
    assert "compile" in text or "256" in text, text
    assert fast_decode.fast_generate(model, X, **kw).sequences.shape == (1, X.shape[1] + 9)  # eager step: it fits
