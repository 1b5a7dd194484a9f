"""What the tests of ``model.generate``'s route share: a prompt, a tiny model under SWAA, and the reference call (the
eager path asked for by name)."""

from __future__ import annotations

import torch
from transformers import GenerationConfig

from swaa_core import SWAAConfig, apply_swaa

from .tiny_models import build_tiny_model

X = torch.tensor([[5, 9, 11, 30, 7, 64, 12, 3, 40, 41, 42, 8]])
CFG = SWAAConfig(sliding_window_size=4, keep_first=1)


def tiny(family="llama", cfg=CFG, **overrides):
    """A 3-layer tiny model with a plain generation config (bos 1, eos 2, pad 0), under ``cfg``."""
    m = build_tiny_model(family, layers=3, seed=5, **overrides)
    m.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    apply_swaa(m, cfg)
    return m


def eager(model, *args, **kwargs):
    """transformers' generate over the dynamic SWAA cache (the path asked for by name)."""
    return model.generate(*args, cache_implementation="dynamic", **kwargs)
