"""The auto route's free-memory check (decode_path.buffers_beyond_free_memory) never estimates below what the fixed
path really allocates (its own kv_cache_bytes_per_layer), and runtime.files.write_new keeps both outputs of two
writers of one process. A review of 2026-12-06 found these cases underestimated (up to 5.3x) or lost; each failed."""

from __future__ import annotations

import threading

import pytest
import torch
from helpers.tiny_models import build_tiny_model, left_padded, padded_batch
from transformers import GenerationConfig, MaxLengthCriteria, StoppingCriteriaList

import swaa_core.engine.decode_path as dp
import swaa_core.engine.fast_decode as fast_decode
from swaa_core import SWAAConfig, apply_swaa
from swaa_core.engine.decode_path import DecodePath
from swaa_core.runtime.files import write_new

X = torch.tensor([[5, 9, 11, 30, 7, 64, 12, 3, 40, 41, 42, 8]])
INSIDE = torch.ones_like(X)
INSIDE[0, 5] = 0
PADDED, PADDED_MASK = padded_batch()
ONE_REAL, ONE_REAL_MASK = left_padded(torch.tensor([7]), X[0])
SW = SWAAConfig(sliding_window_size=4, keep_first=2)


@pytest.mark.parametrize(
    ("config", "inputs", "kw"),
    [
        (SW, PADDED, dict(attention_mask=PADDED_MASK)),  # sinks in slots: keep_first + 9 pads (real 2.5x the estimate)
        (SWAAConfig(sliding_window_size=3, keep_first=2, force_fa_decode=[0]), PADDED, dict(attention_mask=PADDED_MASK)),
        (SW, X, dict(attention_mask=INSIDE)),  # a masked token inside: keeps_all, every slot (3.5x)
        (SW, ONE_REAL, dict(attention_mask=ONE_REAL_MASK, max_new_tokens=20)),  # sinks never settle: flat (5.3x)
        (SWAAConfig(sliding_window_size=4, keep_first=2, non_sliding_layers=[1]), X,
         dict(max_new_tokens=5, stopping_criteria=StoppingCriteriaList([MaxLengthCriteria(40)]))),  # caller's limit
    ],
    ids=["left padding", "left padding, FA decode", "masked token inside", "row shorter than keep_first",
         "caller's MaxLengthCriteria"],
)  # fmt: skip
def test_auto_route_estimate_covers_the_fixed_paths_real_allocation(monkeypatch, config, inputs, kw):
    model = build_tiny_model("llama", layers=3, seed=5)
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    apply_swaa(model, config)
    kw = {"max_new_tokens": 9, "do_sample": False, **kw}
    need = sum(fast_decode.fast_generate(model, inputs, **kw).kv_cache_bytes_per_layer)
    monkeypatch.setattr(dp, "model_device", lambda model: torch.device("cuda"))
    monkeypatch.setattr(dp, "free_bytes", lambda device: need - 1)
    model.generate(inputs, **kw)
    assert model._swaa_state.last_route.path is DecodePath.EAGER, f"fixed buffers need {need} B, {need - 1} free"


def test_gemma3_left_padded_estimate_covers_the_real_allocation(monkeypatch):
    model = build_tiny_model("gemma3", layers=6, seed=5)
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    apply_swaa(model, SW)
    kw = dict(attention_mask=PADDED_MASK, max_new_tokens=20, do_sample=False)
    need = sum(fast_decode.fast_generate(model, PADDED, **kw).kv_cache_bytes_per_layer)  # 13440 B, estimate 9984
    monkeypatch.setattr(dp, "model_device", lambda model: torch.device("cuda"))
    monkeypatch.setattr(dp, "free_bytes", lambda device: need - 1)
    model.generate(PADDED, **kw)
    assert model._swaa_state.last_route.path is DecodePath.EAGER


def test_write_new_two_writers_of_one_pid_keep_both_outputs(tmp_path):
    """Two writers with the same pid (threads of one process, or two containers sharing an output folder, both pid 1)
    share the temporary name .NAME.PID.partial: the first one's cleanup deletes the second's file."""
    target = tmp_path / "out.json"
    first_wrote, second_wrote = threading.Event(), threading.Event()
    results, errors = {}, {}

    def writer(tag, mine, other):
        def write(p):
            p.write_text(tag)
            mine.set()
            if tag == "A":
                second_wrote.wait(5)  # B has written its (same-named) temporary file
            else:
                first_done.wait(5)  # A has placed and cleaned up

        try:
            results[tag] = write_new(target, write)
        except Exception as e:  # noqa: BLE001
            errors[tag] = e

    first_done = threading.Event()
    a = threading.Thread(target=lambda: (writer("A", first_wrote, second_wrote), first_done.set()))
    b = threading.Thread(target=writer, args=("B", second_wrote, first_wrote))
    a.start()
    first_wrote.wait(5)
    b.start()
    a.join(10)
    b.join(10)
    assert not errors, errors
    assert sorted(p.read_text() for p in results.values()) == ["A", "B"]


@pytest.mark.parametrize("how", ["fast_generate", "generate, static by name"])
def test_the_fixed_path_refuses_buffers_beyond_free_memory_before_its_prefill(monkeypatch, how):
    """Asked for by name, the fixed path used to size its buffers to prompt + max_new_tokens after the prompt's
    forward and fail in the allocator (fast_generate(max_new_tokens=10**9)); now it names the sizes first. At
    exactly its own allocation it runs."""
    model = build_tiny_model("llama", layers=3, seed=5)
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    apply_swaa(model, SWAAConfig(sliding_window_size=4, keep_first=2, non_sliding_layers=[1]))
    kw = {"max_new_tokens": 9, "do_sample": False}
    need = sum(fast_decode.fast_generate(model, X, **kw).kv_cache_bytes_per_layer)
    forwards = []
    model.model.register_forward_pre_hook(lambda module, args: forwards.append(1))
    monkeypatch.setattr(dp, "model_device", lambda model: torch.device("cuda"))

    def call():
        if how == "fast_generate":
            return fast_decode.fast_generate(model, X, **kw).sequences
        return model.generate(X, cache_implementation="static", **kw)

    monkeypatch.setattr(dp, "free_bytes", lambda device: need - 1)
    with pytest.raises(
        ValueError,
        match=r"would not fit on \w+: 1 row\(s\) of 12 prompt \+ 9 new tokens .* need at least [\d,]+ bytes, [\d,]+ bytes are free",
    ):
        call()
    assert forwards == []  # refused before the prompt's forward
    monkeypatch.setattr(dp, "free_bytes", lambda device: need)
    assert call().shape == (1, X.shape[1] + 9)
