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
