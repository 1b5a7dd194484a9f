"""Whole tiny models on CUDA: their logits and generations under SWAA against the reference backend, CPU runs and
teacher forcing, bounded KV caches, CUDA-graph decoding and the compile limit's fallback (test_gpu.py tests the kernels
one call at a time).

Tests marked ``gpu`` skip where torch sees no CUDA device; run them on a GPU machine with
``python -m pytest tests/swaa_core/engine/test_gpu_models.py -m gpu``.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from helpers.attention import float64_attention
from helpers.gpu import CUDA, gpu_case, gpu_test, has, rel_err
from helpers.tiny_models import FAMILIES, build_tiny_model, left_padded

from swaa_core import SWAAConfig, apply_swaa, kv_cache_bytes, swaa
from swaa_core.engine import backends
from swaa_core.engine.kernels import flex as flex_kernels


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
