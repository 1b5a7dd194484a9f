"""Review of the free-memory refusal of the fixed path (decode_path.buffers_beyond_free_memory in
fast_decode._decode), of the capacity model's dtype default and of the Capacity tab's card match (2026-12-06).
Each test fails on the reviewed commit. CUDA is simulated as in engine/test_fixed_buffers_estimate.py: the routing
device and the free memory are monkeypatched, the generation itself runs on the CPU."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers.tiny_models import build_tiny_model, left_padded
from transformers import GenerationConfig, MaxLengthCriteria, StoppingCriteriaList

import swaa_core.engine.decode_path as dp
import swaa_core.engine.fast_decode as fast_decode
from swaa_core import SWAAConfig, apply_swaa
from swaa_core.engine.decode_path import DecodePath
from swaa_core.models.capacity import GPUS, capacity, capacity_table
from swaa_core.models.registry import get_model_entry

X = torch.tensor([[5, 9, 11, 30, 7, 64, 12, 3, 40, 41, 42, 8]])
MIXED = SWAAConfig(sliding_window_size=4, keep_first=2, non_sliding_layers=[1])
LLAMA = "meta-llama/Llama-3.1-8B-Instruct"


def tiny(config: SWAAConfig = MIXED):
    model = build_tiny_model("llama", layers=3, seed=5)
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    apply_swaa(model, config)
    return model


def allocation(model, inputs, **kw) -> int:
    """Bytes the fixed path's buffers really take for this call (run on the CPU, nothing simulated)."""
    return sum(fast_decode.fast_generate(model, inputs, **kw).kv_cache_bytes_per_layer)


def as_cuda(monkeypatch, free: int) -> None:
    monkeypatch.setattr(dp, "model_device", lambda model: torch.device("cuda"))
    monkeypatch.setattr(dp, "free_bytes", lambda device: free)


# ------------------------------------------------------------------ 1. the fixed path's free-memory refusal


def test_auto_route_and_fixed_path_agree_on_a_call_without_a_length(monkeypatch):
    """No max_new_tokens: generate makes 20 new tokens (transformers' _prepare_generated_length adds the prompt to
    the default max_length), but the auto route's estimate reads the merged config's max_length 20 as the whole
    length (20 - 12 = 8 new tokens; 1 for any prompt of 20 or more). Auto picks the fixed path, which then refuses
    its own 12 + 20 slots: a plain model.generate(ids) raises ValueError instead of running eagerly."""
    model = tiny()
    kw = dict(do_sample=False, eos_token_id=[])
    need = allocation(model, X, **kw)
    as_cuda(monkeypatch, need - 1)
    out = model.generate(X, **kw)  # raises: "... would not fit: max_new_tokens=20 ..."
    assert model._swaa_state.last_route.path is DecodePath.EAGER
    assert out.shape == (1, X.shape[1] + 20)


def test_compiled_fixed_path_refuses_its_bucketed_buffers(monkeypatch):
    """Under compile the buffers are bucket_slots(prompt + new) = 256 slots per full layer, not 12 + 9 = 21
    (fast_decode._generate); the check is not told the backend, so it compares 4,224 bytes with the free memory
    while the call allocates 34,304 (8x) and runs with one byte less free than that."""
    model = tiny()
    kw = dict(max_new_tokens=9, do_sample=False, compile="eager")
    need = allocation(model, X, **kw)
    as_cuda(monkeypatch, need - 1)
    with pytest.raises(ValueError, match="would not fit"):
        fast_decode.fast_generate(model, X, **kw)


def test_fixed_path_serves_a_left_padded_batch_whose_buffers_fit_twice_over(monkeypatch):
    """A padded batch is estimated as if every sliding layer kept prompt + new slots, while the fixed path keeps
    sinks + padding + W there: with twice its real allocation free, fast_generate on a left-padded batch (one pad
    token) under a window of 4 is refused (estimate 52,992 bytes, real buffers 5,376; the gap grows with prompt /
    window, so long padded prompts under SWA are refused far below the card's limit). Before the fix the call ran."""
    model = tiny(SWAAConfig(sliding_window_size=4, keep_first=2))
    long = torch.randint(3, 90, (60,), generator=torch.Generator().manual_seed(3))
    ids, mask = left_padded(long, long[1:])
    kw = dict(attention_mask=mask, max_new_tokens=9, do_sample=False)
    need = allocation(model, ids, **kw)
    as_cuda(monkeypatch, 2 * need)
    assert fast_decode.fast_generate(model, ids, **kw).sequences.shape == (2, 60 + 9)


def test_fixed_path_sizes_the_check_as_it_sizes_its_buffers_under_a_callers_max_length(monkeypatch):
    """A caller's MaxLengthCriteria replaces the one generate builds (_decode: max_new from the smallest caller
    limit); the check takes the largest of it and max_new_tokens. MaxLengthCriteria(15) with max_new_tokens=100:
    the call allocates 12 + 3 slots per full layer, the check counts 12 + 100 and refuses at that very allocation."""
    model = tiny()
    kw = dict(max_new_tokens=100, do_sample=False, eos_token_id=[],
              stopping_criteria=StoppingCriteriaList([MaxLengthCriteria(15)]))  # fmt: skip
    need = allocation(model, X, **kw)
    as_cuda(monkeypatch, need)
    assert fast_decode.fast_generate(model, X, **kw).sequences.shape == (1, 15)


def test_refusal_names_the_callers_max_length_not_a_max_new_tokens_never_passed(monkeypatch):
    """max_new_tokens=5 with MaxLengthCriteria(40): refused as "max_new_tokens=28 ... Pass a smaller
    max_new_tokens", although the caller passed 5 and a smaller one changes nothing; the length is the criterion's."""
    model = tiny()
    kw = dict(max_new_tokens=5, do_sample=False, eos_token_id=[],
              stopping_criteria=StoppingCriteriaList([MaxLengthCriteria(40)]))  # fmt: skip
    need = allocation(model, X, **kw)
    as_cuda(monkeypatch, need - 1)
    with pytest.raises(ValueError, match="would not fit") as refused:
        fast_decode.fast_generate(model, X, **kw)
    assert "max_new_tokens=28" not in str(refused.value), str(refused.value)


def test_fixed_path_counts_memory_the_caching_allocator_holds_free(monkeypatch):
    """free_bytes is CUDA's free count, which leaves out what PyTorch's caching allocator reserved and no tensor
    uses (the last call's buffers, freed to the cache). The fixed path now refuses on it: the same call twice in a
    row, on a card where the first call's buffers fit, is refused the second time. Simulated: CUDA reports half
    the buffers free, the allocator holds as much again reserved and unused."""
    model = tiny()
    kw = dict(max_new_tokens=9, do_sample=False)
    need = allocation(model, X, **kw)
    monkeypatch.setattr(dp, "model_device", lambda model: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (need // 2, 80 * 2**30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 10 * need)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 9 * need)
    assert fast_decode.fast_generate(model, X, **kw).sequences.shape == (1, X.shape[1] + 9)


# ------------------------------------------------------------------ 2. the capacity model's dtype


def test_capacity_table_takes_the_shapes_dtype_as_capacity_does():
    """capacity(dtype=None) now uses the shape's own dtype; capacity_table still passes dtype=torch.bfloat16 by
    default, so one float32 shape gets two answers: capacity's max_batch and capacity_table's row differ."""
    shape = dataclasses.replace(get_model_entry(LLAMA).shape, dtype=torch.float32)
    kw = dict(prompt_tokens=32768, new_tokens=512)
    alone = capacity(shape, None, "H100 80GB", **kw)
    row = capacity_table(shape, {"full": None}, "H100 80GB", **kw)[0]
    assert row["max_batch"] == alone.max_batch
    assert row["kv_gib_per_seq"] == round(alone.kv_bytes_per_seq / 2**30, 3)


# ------------------------------------------------------------------ 3. the Capacity tab's card match


@pytest.mark.parametrize(
    ("machine", "card"),
    [
        # same GH100 name and the same ~79.2 GiB, but PCIe: about 2.0 TB/s where GPUS["H100 80GB"] models 3.0
        ({"gpu": "NVIDIA H100 PCIe", "memory_gib": 79.18}, "H100 80GB"),
        # "H200" is a substring of "GH200": the name test is not a model-name test
        ({"gpu": "NVIDIA GH200 144G HBM3e", "memory_gib": 139.8}, "H200 141GB"),
    ],
    ids=["H100 PCIe as H100 80GB", "GH200 as H200 141GB"],
)
def test_same_card_does_not_match_another_model_of_card(machine, card):
    from app.tabs.capacity import same_card

    assert not same_card(machine, GPUS[card])
