"""Inputs a reasonable caller gives, and files this project writes itself, through the public API's input checks
(a review of 2026-12-06 found the faults whose tests are named "fault": each failed then, refused or let through to a
raw error).

Expected values come from independent references: transformers' own ``generate``, the same call with plain Python
numbers, files written by the project's own writers (``save_adapter``, ``save_user_recipes``), and the commit's
own standard (every input applied or refused by name, never a raw AttributeError / OverflowError from inside).
The others are guards that held."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers.shapes import LLAMA_8B as SHAPE_8B
from helpers.tiny_models import build_tiny_model

from swaa_core import SWAAConfig, apply_swaa, fast_generate
from swaa_core.engine.config import SWAAConfigError
from swaa_core.models.capacity import capacity, custom_gpu

IDS = torch.randint(3, 97, (1, 20), generator=torch.Generator().manual_seed(0))

CFG_8B = {"sliding_window_size": 2048, "keep_first": 10}


@pytest.fixture
def model():
    m = build_tiny_model("llama", eos_token_id=None)
    m.generation_config.pad_token_id = 0
    return m


# ======================================================================= files this project writes, read back
def _adapter_sidecar(tmp_path, cfg: SWAAConfig):
    """swaa_config.json exactly as `swaa finetune` leaves it beside an adapter (train.adapters.save_adapter)."""
    from peft import LoraConfig, get_peft_model

    from swaa_core.train.adapters import save_adapter

    peft_model = get_peft_model(build_tiny_model("llama"), LoraConfig(r=2, target_modules=["q_proj"]))
    folder = save_adapter(peft_model, tmp_path / "adapter", cfg, base_model="tiny", training={"steps": 1})
    return folder / "swaa_config.json"


def test_fault_adapter_sidecar_written_by_save_adapter_is_refused_by_from_dict(tmp_path):
    """fault: save_adapter writes {"swaa_config": ..., "model_list": [...], "training": {...}} ("one entry of an
    upstream settings file", train/adapters.py; from_dict's own comment names "upstream files and adapters").
    Since 6901e03 from_dict refuses the "training" key beside swaa_config, so the project's own adapter file no
    longer loads as a config: SWAAConfig.from_dict, apply_swaa(model, that dict) and `swaa run --config
    <adapter>/swaa_config.json` (read_config_file) all fail. Before the commit they read the nested config."""
    cfg = SWAAConfig(sliding_window_size=16, keep_first=2)
    sidecar = _adapter_sidecar(tmp_path, cfg)
    data = json.loads(sidecar.read_text(encoding="utf-8"))
    assert SWAAConfig.from_dict(data) == cfg


def test_fault_adapter_sidecar_refused_as_run_config_file(tmp_path):
    """fault: the same file given to `swaa run --config FILE` (cli.common.read_config_file, which reads "one config
    ({"swaa_config": {...}} or the bare fields)")."""
    from swaa_core.cli.common import read_config_file

    cfg = SWAAConfig(sliding_window_size=16, keep_first=2)
    sidecar = _adapter_sidecar(tmp_path, cfg)
    assert SWAAConfig.from_json(read_config_file(str(sidecar))) == cfg


def test_fault_entry_of_a_saved_recipes_file_is_refused_by_from_dict(tmp_path):
    """fault: each entry save_user_recipes writes is {"name", "swaa_config", "model_list"}; one such entry (copied
    out, or given to apply_swaa as the dict it is) is refused since 6901e03 for its "name"."""
    from swaa_core.eval.recipes import save_user_recipes

    cfg = SWAAConfig(sliding_window_size=32, keep_first=4)
    path = save_user_recipes(tmp_path / "mine.json", {"mine": cfg})
    (entry,) = json.loads(path.read_text(encoding="utf-8"))
    assert SWAAConfig.from_dict(entry) == cfg


def test_guard_from_dict_still_refuses_a_second_window_beside_swaa_config():
    with pytest.raises(SWAAConfigError, match="sliding_window_size"):
        SWAAConfig.from_dict({"swaa_config": {"sliding_window_size": 8}, "sliding_window_size": 4})


# ======================================================================= SweepSpec: configs not coerced
def test_fault_sweepspec_dict_config_is_a_raw_attribute_error():
    """fault: apply_swaa, run_one, decode_speed_curve and the capacity model take a dict config (SWAAConfig.coerce);
    SweepSpec({"a": {...}}, ...) ends in "AttributeError: 'dict' object has no attribute 'is_full_attention'"
    (the new _refuse_same_configs reads it too). Should be taken as the config, or refused naming label 'a'."""
    from swaa_core.eval.sweep import SweepSpec

    try:
        spec = SweepSpec({"a": {"sliding_window_size": 8}}, [100])
    except ValueError as e:  # a refusal by name is fine
        assert "'a'" in str(e) or "config" in str(e)
    else:
        assert spec.configs["a"] == SWAAConfig(sliding_window_size=8)


# ======================================================================= fast_generate's max_new_tokens
def _eos_after_two(model) -> int:
    greedy = model.generate(IDS, max_new_tokens=3, do_sample=False)[0, IDS.shape[1] :]
    return int(greedy[1])  # the second greedy token: generate stops there


@pytest.mark.parametrize("limit", [float("inf")], ids=["inf"])
def test_fault_fast_generate_infinite_max_new_tokens_is_a_raw_overflow(model, limit):
    """fault: transformers' generate(max_new_tokens=inf, eos_token_id=e) decodes until the end token (hand check: 2
    tokens here). fast_generate's new check refuses NaN by name but lets inf through to math.ceil in run():
    "OverflowError: cannot convert float infinity to integer". Should be generate's tokens or a ValueError naming
    max_new_tokens. (generate(..., cache_implementation="static") under SWAA shares run(): same OverflowError.)"""
    eos = _eos_after_two(model)
    want = model.generate(IDS, max_new_tokens=limit, do_sample=False, eos_token_id=eos)
    assert want.shape[1] == IDS.shape[1] + 2
    apply_swaa(model, {"sliding_window_size": 64})  # wider than prompt + answer: the same tokens as full attention
    try:
        got = fast_generate(model, IDS, max_new_tokens=limit, eos_token_id=eos).sequences
    except ValueError as e:
        assert "max_new_tokens" in str(e)
    else:
        assert torch.equal(got, want)


@pytest.mark.parametrize("limit", [2.5, 3.0])
def test_guard_fast_generate_float_max_new_tokens_matches_generate(model, limit):
    """guard: generate stops once the length reaches a float max_length (2.5 -> 3 tokens); fast_generate too."""
    want = model.generate(IDS, max_new_tokens=limit, do_sample=False)
    got = fast_generate(model, IDS, max_new_tokens=limit).sequences
    assert got.shape[1] == IDS.shape[1] + 3
    assert torch.equal(got, want)


# ======================================================================= capacity: NumPy counts
def test_fault_capacity_refuses_numpy_integer_token_counts():
    """fault: capacity(..., prompt_tokens=np.int64(4096)) is refused "prompt_tokens must be a whole number >= 1, got
    np.int64(4096)" since 6901e03 (isinstance(v, int)); before it gave the same result as 4096. The project's own
    SweepSpec takes NumPy integers (sweep._whole_numbers, operator.index). Reference: the same call with ints."""
    want = capacity(SHAPE_8B, CFG_8B, "H100 80GB", prompt_tokens=4096, new_tokens=256)
    got = capacity(SHAPE_8B, CFG_8B, "H100 80GB", prompt_tokens=np.int64(4096), new_tokens=np.int32(256))
    assert got.max_batch == want.max_batch and got.kv_bytes_per_seq == want.kv_bytes_per_seq


def test_fault_capacity_reserve_refuses_numpy_int_but_takes_a_float():
    """fault: reserve_bytes=2.5e9 (a float) is taken, reserve_bytes=np.int64(10**9) is refused as "not a number of
    bytes". Reference: the same call with int 10**9."""
    want = capacity(SHAPE_8B, CFG_8B, "H100 80GB", prompt_tokens=4096, new_tokens=256, reserve_bytes=10**9)
    got = capacity(SHAPE_8B, CFG_8B, "H100 80GB", prompt_tokens=4096, new_tokens=256, reserve_bytes=np.int64(10**9))
    assert got.max_batch == want.max_batch


def test_fault_custom_gpu_refuses_numpy_numbers():
    """fault: custom_gpu(np.int64(80)) / custom_gpu(np.float32(80)) "must be a positive finite number, got
    np.int64(80)" (np.float64 passes, being a float subclass). Before 6901e03 all three gave the 80 GiB card."""
    want = custom_gpu(80, 3.35, 989)
    for memory in (np.int64(80), np.float32(80.0)):
        assert custom_gpu(memory, 3.35, 989).memory_bytes == want.memory_bytes


def test_fault_capacity_serve_seconds_refuses_numpy_request_count():
    """fault: Capacity.serve_seconds(np.int64(100)) refused; reference: serve_seconds(100)."""
    cap = capacity(SHAPE_8B, CFG_8B, "H100 80GB", prompt_tokens=4096, new_tokens=256)
    assert cap.serve_seconds(np.int64(100)) == cap.serve_seconds(100)


def test_fault_capacity_takes_an_infinite_reserve():
    """fault: reserve_bytes=float("inf") passes the new check ("a number of bytes >= 0") and silently gives
    max_batch 0, where custom_gpu refuses inf by name ("positive finite number"). Should be refused naming
    reserve_bytes."""
    with pytest.raises(ValueError, match="reserve_bytes"):
        capacity(SHAPE_8B, CFG_8B, "H100 80GB", prompt_tokens=4096, new_tokens=256, reserve_bytes=float("inf"))


def test_guard_capacity_still_refuses_a_fractional_token_count():
    with pytest.raises(ValueError, match="prompt_tokens"):
        capacity(SHAPE_8B, CFG_8B, "H100 80GB", prompt_tokens=100.5, new_tokens=2)


# ======================================================================= coerce
def test_guard_coerce_rechecks_a_mutated_config():
    cfg = SWAAConfig(sliding_window_size=8)
    cfg.sliding_window_size = 0
    with pytest.raises(SWAAConfigError, match="sliding_window_size"):
        SWAAConfig.coerce(cfg)
