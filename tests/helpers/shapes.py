"""Model shapes the memory and capacity tests compute by hand."""

from __future__ import annotations

from swaa_core.models.memory import ModelShape

# Llama-3.1-8B's config numbers
LLAMA_8B = ModelShape(
    num_layers=32,
    num_kv_heads=8,
    head_dim=128,
    hidden_size=4096,
    intermediate_size=14336,
    vocab_size=128256,
    num_parameters=8_030_261_248,
    native_windows=(None,) * 32,
    num_heads=32,
)
