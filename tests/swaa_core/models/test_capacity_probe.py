"""A user's probe of the serving-capacity model (issue 29): hand arithmetic for two more shapes (Qwen3-4B and
Gemma-3-270M with its own sliding layers), which holds, and inputs that are accepted and then ignored, or accepted
and then crash later, which fail."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from swaa_core.eval.recipes import resolve_recipe
from swaa_core.models.capacity import GPU, capacity
from swaa_core.models.registry import get_model_entry

LLAMA = "meta-llama/Llama-3.1-8B-Instruct"
QWEN = "Qwen/Qwen3-4B-Instruct-2507"
GEMMA = "gemma3-270m"
GiB = 2**30
PROMPT, NEW = 131072, 512


# ---------------------------------------------------------------------------------------- what holds (passes)


def test_qwen3_4b_weights_kv_and_roofline_by_hand():
    """36 layers x 8 KV heads x 128 head_dim, bf16: 147,456 bytes per token for full attention, 2,048 slots per
    layer under SWA; tokens/s = batch / ((weights + batch x KV) / 3.0 TB/s) on an H100."""
    entry = get_model_entry(QWEN)
    per_token = 2 * 36 * 8 * 128 * 2
    full = capacity(entry, None, "H100 80GB", prompt_tokens=PROMPT, new_tokens=NEW, prefill="row")
    swa = capacity(entry, resolve_recipe("swa", 36, window=2048), "H100 80GB", prompt_tokens=PROMPT, new_tokens=NEW,
                   prefill="row")  # fmt: skip
    assert full.weight_bytes == entry.shape.num_parameters * 2
    assert full.kv_bytes_per_seq == per_token * (PROMPT + NEW)
    assert swa.kv_bytes_per_seq == per_token * 2048
    b = swa.max_batch
    assert swa.tokens_per_s() == pytest.approx(b / ((swa.weight_bytes + b * swa.kv_bytes_per_seq) / 3.0e12))


def test_gemma3_native_sliding_layers_by_hand():
    """18 layers, 1 KV head x 256, 5 of every 6 layers slide natively over 512 tokens: full attention keeps 512
    slots there and prompt + new in the 3 global layers; SWA at W=2048 keeps min(W, 512) in the native ones."""
    entry = get_model_entry(GEMMA)
    per_slot = 2 * 1 * 256 * 2
    full = capacity(entry, None, "H100 80GB", prompt_tokens=PROMPT, new_tokens=NEW, prefill="row")
    swa = capacity(entry, resolve_recipe("swa", 18, window=2048), "H100 80GB", prompt_tokens=PROMPT, new_tokens=NEW,
                   prefill="row")  # fmt: skip
    assert full.kv_bytes_per_seq == per_slot * (15 * 512 + 3 * (PROMPT + NEW))
    assert swa.kv_bytes_per_seq == per_slot * (15 * 512 + 3 * 2048)


# ---------------------------------------------------------------------------------------- faults (fail now)


def test_a_float32_shape_is_sized_at_four_bytes_a_weight():
    """model_shape() of a loaded model carries its dtype (estimate_memory honours it when no dtype is given), but
    capacity() defaults ``dtype`` to bfloat16 and silently sizes a float32 model at 2 bytes a weight: half its
    weights and KV. Expected: the shape's own dtype unless one is passed."""
    shape = dataclasses.replace(get_model_entry(LLAMA).shape, dtype=torch.float32)
    cap = capacity(shape, None, "H100 80GB", prompt_tokens=1000, new_tokens=10)
    assert cap.weight_bytes == shape.num_parameters * 4


@pytest.mark.parametrize(
    ("card", "figure"),
    [
        (GPU("no bandwidth", 80 * GiB, 0.0, 700e12), "bandwidth"),
        (GPU("no compute", 80 * GiB, 3.0e12, 0.0), "matmul"),
        (GPU("NaN memory", float("nan"), 3.0e12, 700e12), "memory"),
        (GPU("infinite memory", float("inf"), 3.0e12, 700e12), "memory"),
    ],
    ids=["bandwidth-0", "matmul-0", "memory-nan", "memory-inf"],
)
def test_an_odd_card_is_refused_by_the_figure_it_lacks(card, figure):
    """capacity() says it raises ValueError naming a bad card, and custom_gpu() checks every figure, but a GPU built
    directly is only type-checked: zero bandwidth or matmul rate is accepted and crashes later with
    ZeroDivisionError in tokens_per_s(); NaN or infinite memory fails with a bare float-to-int conversion error."""
    with pytest.raises(ValueError, match=figure):
        cap = capacity(get_model_entry(LLAMA), None, card, prompt_tokens=1000, new_tokens=10)
        cap.tokens_per_s()
        cap.serve_seconds(4)


def test_rates_at_a_batch_that_does_not_fit_are_refused_like_serve_seconds():
    """serve_seconds(n, batch) refuses a batch above max_batch, but tokens_per_s(batch) gives a roofline for the
    same impossible batch (10x what fits)."""
    swa = resolve_recipe("swa", 32, window=2048)
    cap = capacity(get_model_entry(LLAMA), swa, "H100 80GB", prompt_tokens=PROMPT, new_tokens=NEW, prefill="row")
    with pytest.raises(ValueError, match="does not fit"):
        cap.serve_seconds(16, 10 * cap.max_batch)  # holds
    with pytest.raises(ValueError, match="does not fit"):
        cap.tokens_per_s(10 * cap.max_batch)


@pytest.mark.parametrize("method", ["step_seconds", "prefill_seconds", "peak_bytes"])
def test_a_negative_batch_or_row_count_is_refused(method):
    """step_seconds(-5) returns a positive time, prefill_seconds(-2) a negative one, peak_bytes(-3) bytes below the
    weights: the counts are used unchecked (serve_seconds checks its own)."""
    cap = capacity(get_model_entry(LLAMA), None, "H100 80GB", prompt_tokens=1000, new_tokens=10)
    with pytest.raises(ValueError):
        getattr(cap, method)(-2)


@pytest.mark.parametrize("dtype", [torch.bool, torch.int64, torch.complex64])
def test_a_dtype_that_is_not_a_float_is_refused(dtype):
    """to_dtype refuses "int8" by name (bfloat16, float16, float32 only) but passes any torch.dtype through:
    capacity(dtype=torch.bool) sizes the model at 1 byte a weight and answers."""
    with pytest.raises(ValueError, match="dtype"):
        capacity(get_model_entry(LLAMA), None, "H100 80GB", prompt_tokens=1000, new_tokens=10, dtype=dtype)


def test_the_model_table_of_the_capacity_benchmark_refuses_options_it_would_ignore():
    """``benchmarks/gpu_capacity.py --model-table`` prints the 8B shape's tables for both prefill modes: a --layers,
    --prefill or --out beside it used to be accepted and ignored. Its own options still apply (--contexts)."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[3] / "benchmarks" / "gpu_capacity.py"
    for extra in (["--layers", "4"], ["--prefill", "batch"], ["--out", "x.json"]):
        done = subprocess.run([sys.executable, str(script), "--model-table", *extra], capture_output=True, text=True)
        assert done.returncode == 2 and f"not {extra[0]}" in done.stderr, (extra, done.stderr[-300:])
    done = subprocess.run([sys.executable, str(script), "--model-table", "--contexts", "32768"], capture_output=True,
                          text=True, check=True)  # fmt: skip
    assert "32K: seqs" in done.stdout and "128K" not in done.stdout
