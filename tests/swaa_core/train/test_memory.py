"""What a training step through the public path (train_lora: peft wrapping, collator, Trainer step) keeps alive per
layer under SWAA, against full attention on the same model and example (issue 32)."""

from __future__ import annotations

import functools

import pytest
import torch
from helpers.live_tensors import LiveTensors
from helpers.tiny_models import build_tiny_model

from swaa_core import SWAAConfig
from swaa_core.train.lora import TrainSettings, make_example, train_lora

LAYERS, PROMPT, ANSWER = 3, 600, 8
CONFIGS = {
    "SWA + sinks": SWAAConfig(sliding_window_size=32, keep_first=4),
    "SWA + sinks + FA decode": SWAAConfig(sliding_window_size=32, keep_first=4, force_fa_decode=True),
}


@functools.cache
def layer_bytes(name: str, checkpointing: bool):
    """Bytes per layer that the forward allocated and that are alive when it ends (what the backward will read), and
    those still alive once train_lora has returned."""
    model = build_tiny_model("qwen3", layers=LAYERS)
    ids = torch.randint(3, 97, (PROMPT + ANSWER,), generator=torch.Generator().manual_seed(0)).tolist()
    settings = TrainSettings(max_steps=1, gradient_checkpointing=checkpointing)
    live = LiveTensors(model, model.model.layers)
    try:
        with live:
            train_lora(model, [make_example(ids[:PROMPT], ids[PROMPT:])], CONFIGS.get(name), settings, progress=False)
            after = live.alive_now()
    finally:
        live.close()
    return live.at_forward_end(), after


@pytest.mark.parametrize("checkpointing", [True, False], ids=["checkpointing", "no checkpointing"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_swaa_training_keeps_no_more_per_layer_than_full_attention(name, checkpointing):
    full, full_after = layer_bytes("full", checkpointing)
    swaa, swaa_after = layer_bytes(name, checkpointing)
    assert sorted(full) == list(range(LAYERS))  # every layer's forward was seen
    for layer in range(LAYERS):
        assert swaa[layer] <= full[layer], f"layer {layer}: {swaa[layer]} bytes under {name}, {full[layer]} under full"
    assert not swaa_after and not full_after  # nothing of a layer's forward outlives the step


def test_checkpointing_keeps_only_each_layers_input():
    """The counter sees what checkpointing frees: with it, a layer keeps its input hidden states (fp32, 32 wide, the
    prompt + answer long) and little else; without it, several times more."""
    kept, _ = layer_bytes("full", True)
    plain, _ = layer_bytes("full", False)
    hidden = (PROMPT + ANSWER) * 32 * 4
    for layer in range(LAYERS):
        assert hidden <= kept[layer] <= 1.1 * hidden
        assert plain[layer] > 5 * hidden


# --------------------------------------------------------------------------- on the GPU (the issue's own setting)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def cuda_backend(name: str):
    from swaa_core.engine.backends import backend_status

    problem = backend_status("cuda")[name] if torch.cuda.is_available() else "needs a CUDA GPU"
    return pytest.param(name, marks=pytest.mark.skipif(problem is not None, reason=str(problem)))


def forward_keeps_on_cuda(cfg, backend: str) -> int:
    """GPU bytes allocated when the model's forward ends minus when it starts, in the second of two train_lora steps
    (the first compiles kernels and fills block-mask caches); bf16 Qwen3 with head size 128 as the fast kernels need."""
    model = build_tiny_model(
        "qwen3", layers=4, hidden_size=256, num_attention_heads=8, num_key_value_heads=2, head_dim=128
    )
    model = model.to("cuda", torch.bfloat16)
    ids = torch.randint(3, 97, (4096 + 64,), generator=torch.Generator().manual_seed(0)).tolist()
    example = make_example(ids[:4096], ids[4096:])
    kept, start = [], [0]
    model.register_forward_pre_hook(lambda *_: start.__setitem__(0, torch.cuda.memory_allocated()))
    model.register_forward_hook(lambda *_: kept.append(torch.cuda.memory_allocated() - start[0]))
    train_lora(model, [example], cfg, TrainSettings(max_steps=2), progress=False, backend=backend)
    return kept[-1]


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("backend", [cuda_backend("flex"), cuda_backend("fa4")])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_swaa_training_forward_keeps_no_more_than_full_attention_on_cuda(name, backend):
    """Issue 32 on the GPU: through train_lora (gradient checkpointing on), a forward under SWAA leaves no more memory
    for the backward than full attention's (one query-sized tensor kept per layer would be 8 MiB in each of the 4)."""
    cfg = SWAAConfig(sliding_window_size=512, keep_first=16, force_fa_decode=CONFIGS[name].force_fa_decode)
    full = forward_keeps_on_cuda(None, backend)
    swaa = forward_keeps_on_cuda(cfg, backend)
    # Half of one layer's query-sized tensor, in all: any tensor of that kind kept per layer (8 MiB x 4) fails. The
    # H100 of 2026-12-05 measured a constant 1.5 MiB more under flex here (18.1 vs 16.6 MiB), and no difference at
    # the 36-layer, 16K/32K scale (docs/benchmarks.md), so it is not held per layer.
    assert swaa <= full + 4 * 2**20, (
        f"{name} ({backend}): forward keeps {swaa / 2**20:.1f} MiB, full {full / 2**20:.1f}"
    )
