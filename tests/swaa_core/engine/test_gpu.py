"""CUDA backends (FlexAttention; FlashAttention-4 / flash-attn when installed) against float64 attention and CPU runs.

Tests marked ``gpu`` skip where torch sees no CUDA device; run them on a GPU machine with
``python -m pytest tests/swaa_core/engine/test_gpu.py -m gpu``. The block-mask builder test also runs on the CPU.
"""

from __future__ import annotations

import contextlib
import warnings

import pytest
import torch
from helpers.attention import case_id, float64_attention, make_case, with_engine_hints
from helpers.tiny_models import FAMILIES, build_tiny_model, left_padded

from swaa_core import SWAAConfig, apply_swaa, kv_cache_bytes, swaa
from swaa_core.engine import backends
from swaa_core.engine.kernels import flex as flex_kernels

CUDA = "cuda"
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (FlexAttention backend)")


def gpu_test(fn):
    return pytest.mark.gpu(needs_cuda(fn))


TOL = {torch.bfloat16: 1e-2, torch.float32: 1e-3}  # relative error: bf16 operands / fp32 (tf32 allowed)


# 8 query heads of 64 channels as in real models (test_backends.py runs the same builder at 4 heads of 8 on the CPU)
GPU_SIZES = dict(H=8, D=64, device=CUDA)


def gpu_case(**case):
    return make_case(**{**GPU_SIZES, **case})


def has(backend):
    return torch.cuda.is_available() and backends.backend_status(CUDA)[backend] is None


def rel_err(out, ref):
    assert torch.isfinite(out).all(), "non-finite values in the output"
    return float((out.double() - ref.double()).norm() / ref.double().norm())


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


# --------------------------------------------------------------------------- whole tiny models on the GPU
def gpu_model(family="llama", dtype=torch.float32, **kw):
    """head_dim 32: FlexAttention's Triton kernels need at least 16 channels (the CPU tests use 8)."""
    return build_tiny_model(family, hidden_size=128, head_dim=32, dtype=dtype, **kw).to(CUDA)


def ids(n, seed=0, batch=1):
    return torch.randint(3, 97, (batch, n), generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def flex_calls(monkeypatch):
    """Counts flex calls, so a model test cannot pass by silently running another backend."""
    calls = []
    real = flex_kernels._run_flex

    def spy(*a, **kw):
        calls.append(a[0].shape[2])
        return real(*a, **kw)

    monkeypatch.setattr(flex_kernels, "_run_flex", spy)  # looked up there by flex() and flex_simple()
    return calls


@gpu_test
def test_auto_backend_on_cuda():
    expected = next(name for name in ("fa4", "flash", "flex") if has(name))
    assert apply_swaa(gpu_model(), SWAAConfig(sliding_window_size=8)).backend == expected


@gpu_test
@pytest.mark.parametrize("fam", FAMILIES)
def test_model_logits_match_reference_backend_and_cpu(fam, flex_calls):
    cfg = SWAAConfig(sliding_window_size=37, keep_first=5, non_sliding_layers=[1])
    model = gpu_model(fam)
    x = ids(300, seed=1)
    with swaa(model, cfg, backend="flex"), torch.no_grad():
        got = model(x.to(CUDA)).logits
    assert flex_calls, "the flex backend was never called"
    with swaa(model, cfg, backend="reference"), torch.no_grad():
        ref = model(x.to(CUDA)).logits
    cpu = model.to("cpu")
    with swaa(cpu, cfg, backend="blocked"), torch.no_grad():
        cpu_logits = cpu(x).logits
    assert rel_err(got, ref) < 1e-4
    assert rel_err(got.cpu(), cpu_logits) < 1e-4


@gpu_test
def test_short_prompt_model_logits_match_reference_backend(flex_calls):
    """Prompts under 128 tokens: inductor may route these to a different (flex-decoding) kernel."""
    cfg = SWAAConfig(sliding_window_size=20, keep_first=3)
    model = gpu_model()
    x = ids(60, seed=9).to(CUDA)
    with swaa(model, cfg), torch.no_grad():
        got = model(x).logits
    assert flex_calls == [60] * 4
    with swaa(model, cfg, backend="reference"), torch.no_grad():
        ref = model(x).logits
    assert rel_err(got, ref) < 1e-4


@gpu_test
@pytest.mark.parametrize("backend", ["flex", "fa4"])
def test_bf16_model_matches_float64_reference_model(backend, monkeypatch):
    if not has(backend):
        pytest.skip(f"{backend} cannot run here: {backends.backend_status(CUDA)[backend]}")
    flex_calls = []
    # fa4: FlexAttention's FLASH single pass where it applies, else FA4's window kernel + the sink pass; each name is
    # patched in the module whose code calls it (flex_flash and window_sink: backends.simple_attention)
    spied = (
        [(flex_kernels, "_run_flex")] if backend == "flex" else [(backends, "flex_flash"), (backends, "window_sink")]
    )
    for module, name in spied:
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _real=real, **kw: flex_calls.append(1) or _real(*a, **kw))
    cfg = SWAAConfig(sliding_window_size=29, keep_first=3)
    model = gpu_model("qwen3")
    x = ids(260, seed=2).to(CUDA)
    with swaa(model.double(), cfg, backend="reference"), torch.no_grad():
        ref = model(x).logits
    with torch.no_grad():
        full_ref = model(x).logits  # full attention, to show the SWAA mask matters at this size
    with swaa(model.to(torch.bfloat16), cfg, backend=backend), torch.no_grad():
        got = model(x).logits
    assert flex_calls
    err = rel_err(got, ref)
    assert err < 2e-2
    assert err < 0.1 * rel_err(full_ref, ref), "bf16 error is not small against the SWA-vs-full difference"


@gpu_test
def test_chunked_prefill_equals_one_shot_on_gpu(flex_calls):
    model = gpu_model("mistral")
    x = ids(300, seed=8).to(CUDA)
    with swaa(model, SWAAConfig(sliding_window_size=40, keep_first=4)), torch.no_grad():
        whole = model(x).logits
        first = model(x[:, :120], use_cache=True)
        second = model(x[:, 120:], past_key_values=first.past_key_values, use_cache=True)
    assert 180 in flex_calls  # the second chunk ran through flex against the longer cache
    assert rel_err(torch.cat([first.logits, second.logits], 1), whole) < 1e-4


@gpu_test
def test_left_padded_batch_generation_matches_single_sequences(flex_calls):
    model = gpu_model()
    model.generation_config.pad_token_id = 0
    a, b = ids(300, seed=6)[0], ids(171, seed=7)[0]
    batch, mask = left_padded(a, b)
    with swaa(model, SWAAConfig(sliding_window_size=33, keep_first=2)), torch.no_grad():
        eager = dict(max_new_tokens=10, do_sample=False, cache_implementation="dynamic")  # the eager loop under test
        both = model.generate(batch.to(CUDA), attention_mask=mask.to(CUDA), **eager)
        alone_a = model.generate(a[None].to(CUDA), **eager)
        alone_b = model.generate(b[None].to(CUDA), **eager)
    assert flex_calls
    assert torch.equal(both[0, 300:], alone_a[0, 300:])
    assert torch.equal(both[1, 300:], alone_b[0, 171:])


@gpu_test
def test_fa_decode_generation_matches_teacher_forcing_and_cpu(flex_calls):
    """Greedy tokens on the GPU (flex prefill, full-cache decode) equal the argmax of one teacher-forced reference
    forward with the mixed mask, and the tokens the CPU (blocked backend) generates."""
    model = gpu_model(seed=4)
    prompt_len, new = 260, 16
    x = ids(prompt_len, seed=4)
    cfg = SWAAConfig(sliding_window_size=24, keep_first=3, force_fa_decode=True)
    with swaa(model, cfg), torch.no_grad():
        out = model.generate(
            x.to(CUDA), max_new_tokens=new, min_new_tokens=new, do_sample=False, cache_implementation="dynamic"
        )
    assert flex_calls
    with swaa(model, cfg, backend="reference"), torch.no_grad():
        logits = model(out, swaa_prompt_lengths=torch.tensor([prompt_len], device=CUDA)).logits
    assert torch.equal(logits[0, prompt_len - 1 : -1].argmax(-1), out[0, prompt_len:])
    cpu = model.to("cpu")
    with swaa(cpu, cfg, backend="blocked"), torch.no_grad():
        cpu_out = cpu.generate(x, max_new_tokens=new, min_new_tokens=new, do_sample=False)
    assert torch.equal(cpu_out, out.cpu())


@gpu_test
def test_sliding_layers_keep_bounded_kv_cache_on_gpu():
    model = gpu_model(layers=4)
    window, sinks = 30, 3
    cfg = SWAAConfig(sliding_window_size=window, keep_first=sinks, non_sliding_layers=[1], force_fa_decode=[2])
    with swaa(model, cfg), torch.no_grad():
        out = model.generate(
            ids(200).to(CUDA),
            max_new_tokens=40,
            min_new_tokens=40,
            do_sample=False,
            return_dict_in_generate=True,
            cache_implementation="dynamic",  # the dynamic SWAA cache, whose layers are under test
        )
    per_token = 2 * 2 * 32 * 4  # keys+values x kv heads x head dim x float32 bytes
    seen = out.sequences.shape[1] - 1
    held = [b // per_token for b in kv_cache_bytes(out.past_key_values)]
    assert held == [sinks + window, seen, seen, sinks + window]  # sliding layers: sinks + a ring of W slots


@gpu_test
@pytest.mark.parametrize("fa_decode", [False, True])
def test_cuda_graph_decode_equals_eager_static_and_generate(fa_decode):
    """The captured decode step replays the same kernels as the eager static step (identical tokens), and a left-
    padded batch decodes as transformers' generate with the dynamic SWAA cache does (fp32)."""
    from swaa_core.engine.fast_decode import fast_generate

    model = gpu_model(layers=4, seed=5, eos_token_id=None)
    batch, mask = ids(300, seed=8, batch=2).to(CUDA), torch.ones(2, 300, dtype=torch.long, device=CUDA)
    mask[1, :77] = 0
    cfg = SWAAConfig(sliding_window_size=40, keep_first=3, force_fa_decode=fa_decode, non_sliding_layers=[2])
    with swaa(model, cfg), torch.no_grad():
        graph = fast_generate(model, batch, attention_mask=mask, max_new_tokens=120, cuda_graph=True)
        eager = fast_generate(model, batch, attention_mask=mask, max_new_tokens=120, cuda_graph=False)
        expected = model.generate(batch, attention_mask=mask, max_new_tokens=120, min_new_tokens=120, do_sample=False,
                                  cache_implementation="dynamic")  # fmt: skip
    assert graph.cuda_graph and not eager.cuda_graph
    assert torch.equal(graph.sequences, eager.sequences)
    assert torch.equal(graph.sequences, expected)


@gpu_test
@pytest.mark.parametrize("fa_decode", [False, True])
def test_generate_after_apply_swaa_takes_the_fixed_buffer_path_by_default(fa_decode, monkeypatch):
    """On CUDA, plain ``model.generate`` after ``apply_swaa`` decodes from fixed buffers with one CUDA graph per token
    (issue 26: 23-28 tok/s eager vs >= 120 on an H200 for the 8B shape), with the greedy tokens of transformers' own
    loop over the dynamic SWAA cache; a call the path does not serve (beams) falls back to that loop and says why."""
    import swaa_core.engine.fast_decode as fast_decode
    from swaa_core.engine.decode_path import DecodePath

    graphs = []
    real_graph = torch.cuda.CUDAGraph

    def counting_graph(*args, **kwargs):
        graphs.append(1)
        return real_graph(*args, **kwargs)

    monkeypatch.setattr(torch.cuda, "CUDAGraph", counting_graph)
    served = []
    real = fast_decode.generate_static
    monkeypatch.setattr(fast_decode, "generate_static", lambda m, a, k: served.append(1) or real(m, a, k))
    model = gpu_model(layers=4, seed=6, eos_token_id=None)
    x = ids(300, seed=9).to(CUDA)
    cfg = SWAAConfig(sliding_window_size=40, keep_first=3, force_fa_decode=fa_decode, non_sliding_layers=[1])
    with swaa(model, cfg) as state, torch.no_grad():
        out = model.generate(x, max_new_tokens=64, min_new_tokens=64, do_sample=False)
        route = state.last_route
        assert (route.path, route.reason) == (DecodePath.FIXED, "fixed-buffer: CUDA, batch 1, greedy")
        assert served == [1] and graphs  # generate_static served it, through a captured graph
        expected = model.generate(x, max_new_tokens=64, min_new_tokens=64, do_sample=False,
                                  cache_implementation="dynamic")  # fmt: skip
        assert state.last_route.reason == "eager: asked for"
        beams = model.generate(x, max_new_tokens=4, num_beams=2, do_sample=False)
        assert state.last_route.reason.startswith("eager: the fixed-buffer path does not take num_beams=2 (beam")
    assert torch.equal(out, expected) and served == [1] and beams.shape == (1, 304)


@gpu_test
def test_compile_limit_falls_back_to_blocked_not_to_dense_flex(monkeypatch):
    """Past the allowed number of compiled flex variants, SWAA switches to the blocked path with a warning, never to
    the eager flex_attention that materialises n x n scores. (Last in this file: it exhausts a lowered limit.)"""
    monkeypatch.setattr(flex_kernels, "FLEX_RECOMPILE_LIMIT", 1)  # read by flex_kernels._flex_scope
    flex_kernels._warn_flex_limit.cache_clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for D in (32, 64):  # float16 with two head sizes: variants no other test compiles, so the 2nd is over
            q, k, v, g = gpu_case(n=300, window=20, keep_first=2, D=D, dtype=torch.float16, seed=D)
            out = backends.flex(q, k, v, g, 0.125)
            assert rel_err(out, float64_attention(q, k, v, g, 0.125)) < 1e-2
    assert any("compiled variants" in str(w.message) for w in caught)
