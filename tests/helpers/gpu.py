"""What the CUDA tests share: the ``gpu`` marker that skips where torch sees no CUDA device, the attention cases at
real-model head sizes, which backends this GPU runs, and the relative error they are judged by."""

from __future__ import annotations

import pytest
import torch

from swaa_core.engine import backends

from .attention import make_case

CUDA = "cuda"
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (FlexAttention backend)")


def gpu_test(fn):
    return pytest.mark.gpu(needs_cuda(fn))


# 8 query heads of 64 channels as in real models (test_backends.py runs the same builder at 4 heads of 8 on the CPU)
GPU_SIZES = dict(H=8, D=64, device=CUDA)


def gpu_case(**case):
    return make_case(**{**GPU_SIZES, **case})


def has(backend):
    return torch.cuda.is_available() and backends.backend_status(CUDA)[backend] is None


def rel_err(out, ref):
    assert torch.isfinite(out).all(), "non-finite values in the output"
    return float((out.double() - ref.double()).norm() / ref.double().norm())
