"""CUDA attention backends one call at a time (FlexAttention; FlashAttention-4 / flash-attn when installed) against
float64 attention, and FlexAttention's block masks; whole models on CUDA are in test_gpu_models.py.

Tests marked ``gpu`` skip where torch sees no CUDA device; run them on a GPU machine with
``python -m pytest tests/swaa_core/engine/test_gpu.py -m gpu``. The block-mask builder test also runs on the CPU.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from helpers.attention import case_id, float64_attention, with_engine_hints
from helpers.gpu import CUDA, gpu_case, gpu_test, has, rel_err

from swaa_core.engine import backends
from swaa_core.engine.kernels import flex as flex_kernels

TOL = {torch.bfloat16: 1e-2, torch.float32: 1e-3}  # relative error: bf16 operands / fp32 (tf32 allowed)

CASES = [
    dict(n=333, window=40),
    dict(n=257, window=1),
    dict(n=200, window=512),  # W >= n: plain causal
    dict(n=301, window=30, keep_first=3),
    dict(n=301, window=20, keep_first=50),  # keep_first > W
    dict(n=129, window=16, keep_first=400),  # keep_first > n
    dict(n=301, window=32, keep_first=4, B=3, pads=(0, 45, 170)),  # left padding
    dict(n=400, window=64, keep_first=8, q_len=77),  # a later prefill chunk against a longer cache
    dict(n=77, window=16, keep_first=4),  # a short prompt: under 128 queries
    dict(n=256, window=24, keep_first=2, full_tail=60),  # training-style mixed mask (FA-decode tokens)
    dict(n=310, window=50, keep_first=5, H=6, Hkv=1, D=128),  # MQA, head dim 128
]


# every case in bf16; fp32 for a few (each dtype / head size is one more compiled kernel, ~10 s on an H100)
DTYPE_CASES = [(c, torch.bfloat16) for c in CASES] + [(CASES[i], torch.float32) for i in (3, 6, 9)]


@gpu_test
@pytest.mark.parametrize("case, dtype", DTYPE_CASES, ids=[f"{case_id(c)}-{str(d)[6:]}" for c, d in DTYPE_CASES])
def test_flex_matches_float64(case, dtype):
    q, k, v, g = gpu_case(**case, dtype=dtype, seed=len(case_id(case)))
    scale = q.shape[-1] ** -0.5
    expected = float64_attention(q, k, v, g, scale)
    out = backends.flex(q, k, v, g, scale)
    assert out.shape == expected.shape and out.dtype == dtype
    assert rel_err(out, expected) < TOL[dtype]


@pytest.mark.parametrize(
    "case", [dict(n=900, window=64, keep_first=4, q_len=1), dict(n=900, window=64, keep_first=4, q_len=1, full_tail=1)]
)
@gpu_test
def test_decode_queries_through_the_flex_dispatcher(case):
    """One-token queries leave flex for SDPA (FA decode) or the blocked path; the result must still be SWAA."""
    q, k, v, g = gpu_case(**case, dtype=torch.bfloat16, seed=7)
    expected = float64_attention(q, k, v, g, 0.125)
    assert rel_err(backends.attend("flex", q, k, v, g, 0.125), expected) < TOL[torch.bfloat16]


@gpu_test
@pytest.mark.parametrize(
    "H, Hkv, D, L, dtype",
    [
        (32, 8, 128, 5000, torch.bfloat16),  # GQA, an 8B model's heads
        (8, 1, 64, 777, torch.float16),  # MQA
        (12, 12, 80, 1500, torch.bfloat16),  # MHA, a head size that is not a power of two
        (4, 2, 256, 333, torch.bfloat16),  # the largest head size the flash kernel takes
        (8, 2, 64, 300, torch.float32),  # no flash kernel: SDPA chooses
    ],
)
def test_decode_step_on_cuda_matches_float64(H, Hkv, D, L, dtype, monkeypatch):
    """The unmasked decode step (straight to SDPA's flash kernel in half precision) over keys that are a view into a
    larger buffer, as a growing cache hands them out, against float64 softmax attention."""
    from swaa_core.engine.kernels import sdpa
    from swaa_core.engine.kernels.sdpa import decode_sdpa

    flash_calls = []
    real_flash = sdpa._flash_decode
    monkeypatch.setattr(sdpa, "_flash_decode", lambda *a: flash_calls.append(1) or real_flash(*a))
    gen = torch.Generator(CUDA).manual_seed(L)
    q = torch.randn(2, H, 1, D, device=CUDA, dtype=dtype, generator=gen)
    buf = torch.randn(2, 2 * Hkv, L + 256, D, device=CUDA, dtype=dtype, generator=gen)
    k, v = buf[:, :Hkv, :L], buf[:, Hkv:, 7 : L + 7]
    out = decode_sdpa(q, k, v, None, D**-0.5)
    k64, v64 = (t.double().repeat_interleave(H // Hkv, dim=1) for t in (k, v))
    expected = torch.softmax(q.double() @ k64.transpose(-1, -2) * D**-0.5, dim=-1) @ v64
    assert out.shape == (2, 1, H, D)
    assert rel_err(out, expected.transpose(1, 2)) < TOL.get(dtype, 1e-2)
    assert len(flash_calls) == (dtype != torch.float32)  # half precision takes the flash kernel, float32 SDPA's choice


@gpu_test
@pytest.mark.parametrize("cudnn", [True, False])
def test_padded_decode_step_on_cuda_matches_float64(cudnn, monkeypatch):
    """A left-padded batch's decode step over a growing layer's keys, as eager generation of a padded batch runs it
    (``attention._padded_decode_step``). Where SDPA would run it on cuDNN (H100, H200, B200), the keys are read to the
    next multiple of KEY_BUCKET slots of the layer's buffer, the extra ones masked out, so that cuDNN builds one graph
    per bucket; with cuDNN off, the folded step runs. Both against float64 attention over the real keys only."""
    from swaa_core.engine import attention
    from swaa_core.engine.attention import LayerPlan, _padded_decode_step
    from swaa_core.engine.cache import SWAACacheLayer
    from swaa_core.engine.kernels.sdpa import without_cudnn_sdpa

    H, Hkv, D, L, pad = 32, 8, 128, 5000, 1234
    bucketed = []
    real = attention.bucketed_decode
    monkeypatch.setattr(attention, "bucketed_decode", lambda *a: bucketed.append(real(*a)) or bucketed[-1])
    gen = torch.Generator(CUDA).manual_seed(5)

    def randn(*shape):
        return torch.randn(*shape, device=CUDA, dtype=torch.bfloat16, generator=gen)

    layer = SWAACacheLayer(0)
    with torch.no_grad():
        layer.update(randn(2, Hkv, L - 1, D), randn(2, Hkv, L - 1, D))  # the prompt
        k, v = layer.update(randn(2, Hkv, 1, D), randn(2, Hkv, 1, D))  # the step's own key
    q = randn(2, H, 1, D)
    mask2d = torch.ones(2, L, dtype=torch.long, device=CUDA)
    mask2d[1, :pad] = 0  # row 1 is left-padded
    plan = LayerPlan(0, None, False, "flex")  # a full layer: only padding is masked
    with contextlib.nullcontext() if cudnn else without_cudnn_sdpa():
        out = _padded_decode_step(plan, None, layer, q, k, v, mask2d, layer.view, True, D**-0.5)
    k64, v64 = (t.double().repeat_interleave(H // Hkv, dim=1) for t in (k, v))
    scores = q.double() @ k64.transpose(-1, -2) * D**-0.5
    scores = scores.masked_fill(~mask2d.bool()[:, None, None, :], -torch.inf)
    expected = (torch.softmax(scores, dim=-1) @ v64).transpose(1, 2)
    assert out.shape == (2, 1, H, D) and torch.isfinite(out).all()
    assert rel_err(out, expected) < TOL[torch.bfloat16]
    cudnn_first = torch.cuda.get_device_capability(CUDA) in ((9, 0), (10, 0))  # where SDPA tries cuDNN first
    assert [result is not None for result in bucketed] == [cudnn and cudnn_first]
    assert torch.backends.cuda.cudnn_sdp_enabled()


@gpu_test
def test_padding_queries_stay_finite_and_zero():
    """A padded query sees no key; NaN there would leak into real rows through the next layer's values."""
    q, k, v, g = gpu_case(n=200, window=16, keep_first=2, B=2, pads=(0, 90), dtype=torch.bfloat16, seed=3)
    out = backends.flex(q, k, v, g, 0.125)
    assert torch.isfinite(out).all()
    assert out[1, :90].abs().max() == 0


@gpu_test
def test_long_prefill_block_mask_is_sparse_cached_and_never_n_by_n():
    """At 32K x 32K: building the block mask costs far less than the 1 GiB of an n x n bool (its evaluation chunks
    are bounded), it is cached and visits only sink and window tiles; the attention call does not hold n x n scores
    either (dynamo's eager fallback would: 16 GiB)."""
    flex_kernels._simple_block_mask.cache_clear()
    n = 32768
    q, k, v, g = gpu_case(n=n, window=512, keep_first=16, H=4, Hkv=1, dtype=torch.bfloat16, seed=11)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    with_engine_hints(g)
    mask = backends.block_mask_for(g, 1, n, n, q.device)
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated() - base < n * n // 8
    assert backends.block_mask_for(g, 1, n, n, q.device) is mask
    assert int(mask.kv_num_blocks.sum() + mask.full_kv_num_blocks.sum()) < (n // 128) * (512 // 128 + 3)
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = backends.flex_simple(q, k, v, g, 0.125)
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated() - base < n * n // 8
    assert rel_err(out, backends.blocked(q, k, v, g, 0.125)) < TOL[torch.bfloat16]


def _tiles(num, indices, n_cols):
    """(B, H, rows) counts + ordered indices -> (B, H, rows, n_cols) bool of the listed tiles."""
    listed = torch.arange(indices.shape[-1], device=indices.device) < num[..., None]
    cols = torch.where(listed, indices.long(), n_cols)
    dense = torch.zeros(*indices.shape[:-1], n_cols + 1, dtype=torch.bool, device=indices.device)
    return dense.scatter_(-1, cols, True)[..., :n_cols]


BUILDER_CASES = CASES + [
    dict(n=5000, window=129, keep_first=130, B=2, pads=(7, 0)),  # tiles shared by sinks and windows
    dict(n=300, window=None, B=2, pads=(0, 100)),  # full attention with padding
    dict(n=4097, window=1000, keep_first=128),
]


@pytest.mark.parametrize("case", BUILDER_CASES, ids=case_id)
def test_block_mask_equals_torchs_builder(case):
    """Our tile-wise builder lists exactly the partial and full tiles torch's create_block_mask finds on the whole
    grid (small sizes, where the whole grid is affordable). Runs on the CPU too."""
    from torch.nn.attention.flex_attention import create_block_mask

    from swaa_core.engine.masks import swaa_mask_mod

    device = CUDA if torch.cuda.is_available() else "cpu"
    g = gpu_case(**case, dtype=torch.float32, seed=1, device=device)[3]
    B, Q = g.q_pos.shape
    KV = g.kv_pos.shape[1]
    ours = flex_kernels._create_block_mask(g, B, Q, KV, device)
    ref = create_block_mask(swaa_mask_mod(g), B, None, Q, KV, device=device)
    n_kv, n_q = -(-KV // 128), -(-Q // 128)
    assert torch.equal(
        _tiles(ours.kv_num_blocks, ours.kv_indices, n_kv), _tiles(ref.kv_num_blocks, ref.kv_indices, n_kv)
    )
    assert torch.equal(
        _tiles(ours.full_kv_num_blocks, ours.full_kv_indices, n_kv),
        _tiles(ref.full_kv_num_blocks, ref.full_kv_indices, n_kv),
    )
    assert torch.equal(_tiles(ours.q_num_blocks, ours.q_indices, n_q), _tiles(ref.q_num_blocks, ref.q_indices, n_q))


SIMPLE_CASES = [c for c in CASES if not c.get("pads")]


@gpu_test
@pytest.mark.parametrize("backend", ["flex", "fa4", "flash"])
@pytest.mark.parametrize("case", SIMPLE_CASES, ids=case_id)
def test_fast_paths_match_float64(case, backend):
    """Unpadded calls with the engine's hints: flex's arithmetic predicate, FA4 (FLASH one pass or window + sink
    pass) and flash-attn 2 (window + sink pass), with FA-decode rows split off, against float64."""
    if not has(backend):
        pytest.skip(f"{backend} cannot run here: {backends.backend_status(CUDA)[backend]}")
    q, k, v, g = gpu_case(**case, dtype=torch.bfloat16, seed=5)
    with_engine_hints(g)
    scale = q.shape[-1] ** -0.5
    assert rel_err(backends.attend(backend, q, k, v, g, scale), float64_attention(q, k, v, g, scale)) < 1e-2


@gpu_test
@pytest.mark.skipif(not has("fa4"), reason="FlashAttention-4 (flash_attn.cute) is not installed for this GPU")
def test_fa4_gradients_match_float64():
    """The backward of the window + sink composition (FA4's backward takes the LSE gradient of the merge)."""
    case = dict(n=700, window=96, keep_first=8, full_tail=40, H=8, Hkv=2, D=128)
    q, k, v, g = gpu_case(**case, dtype=torch.bfloat16, seed=6)
    with_engine_hints(g)
    weights = torch.randn(1, 700, 8, 128, device=CUDA, dtype=torch.float64)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    (backends.attend("fa4", q, k, v, g, 0.088).double() * weights).sum().backward()
    got = [t.grad.double() for t in (q, k, v)]
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    (float64_attention(q64, k64, v64, g, 0.088) * weights).sum().backward()
    for a, b in zip(got, (q64.grad, k64.grad, v64.grad), strict=True):
        assert rel_err(a, b) < 2e-2
