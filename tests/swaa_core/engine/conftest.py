"""Fixtures shared by the engine's tests."""

from __future__ import annotations

import pytest
import torch

import swaa_core.engine.decode_path as dp


@pytest.fixture
def as_if_cuda(monkeypatch):
    """The routing decision as on a CUDA device; the fixed path still runs (eagerly) on the CPU."""
    monkeypatch.setattr(dp, "model_device", lambda model: torch.device("cuda"))
