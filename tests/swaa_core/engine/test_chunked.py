"""Chunked attention (Llama 4's attention_chunk_size, plus sinks) through whole models: prefill, chunked prefill and
decode on the eager dynamic cache and on the fixed-buffer static cache, exact against eager attention with a mask
built by hand from the rule; refused by name where FlashAttention's window kernels would have to run it; selected
from SWAAConfig without changing what upstream configs mean. The kind contract itself runs in test_kinds.py, the
kernels against float64 in test_backends.py (CPU) and here (flex, GPU)."""

from __future__ import annotations

import pytest
import torch
from helpers.attention import case_id, float64_attention, make_case, with_engine_hints
from helpers.tiny_models import build_tiny_model, eager_logits_without_swaa, left_padded
from transformers import DynamicCache

from swaa_core import SWAAConfig, apply_swaa, fast_generate, swaa
from swaa_core.engine import backends
from swaa_core.engine.config import SWAAConfigError
from swaa_core.engine.kinds import ChunkedAttention, SinkWindow

C, K, PROMPT = 4, 1, 13
NEW = 3 * C + 2  # the evicting layers' ring of C slots is overwritten three times over


def config(fa_decode=False, **kw) -> SWAAConfig:
    return SWAAConfig(sliding_window_size=C, keep_first=K, force_fa_decode=fa_decode, mask_kind="chunked", **kw)


def ids(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 97, (1, n), generator=torch.Generator().manual_seed(seed))


def hand_mask(n: int, full_from: int | None = None) -> torch.Tensor:
    """Additive (1, 1, n, n): query i sees key j <= i iff j // C == i // C, j < K, or i >= full_from (FA decode)."""
    mask = torch.full((n, n), float("-inf"))
    for i in range(n):
        for j in range(i + 1):
            if j // C == i // C or j < K or (full_from is not None and i >= full_from):
                mask[i, j] = 0.0
    return mask[None, None]


def teacher(model, seq: torch.Tensor, full_from: int | None = None) -> torch.Tensor:
    """Logits of the model without SWAA, eager attention under the hand-built mask."""
    return eager_logits_without_swaa(model, seq, hand_mask(seq.shape[1], full_from))


@pytest.mark.parametrize("backend", ["reference", "blocked"])
@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_prefill_and_chunked_prefill_equal_eager_with_the_hand_mask(family, backend):
    model = build_tiny_model(family)
    x = ids(23, seed=1)
    expected = teacher(model, x)
    with swaa(model, config(), backend=backend), torch.no_grad():
        whole = model(x).logits
        first = model(x[:, :10], use_cache=True)  # the second chunk starts inside a chunk of C
        second = model(x[:, 10:], past_key_values=first.past_key_values, use_cache=True)
    assert torch.allclose(whole, expected, atol=1e-5)
    assert torch.allclose(torch.cat([first.logits, second.logits], 1), expected, atol=1e-5)


DECODE_MODES = {
    "use_cache": lambda model: {},
    "DynamicCache(config)": lambda model: dict(past_key_values=DynamicCache(config=model.config)),
    "prefill_chunk_size": lambda model: dict(prefill_chunk_size=5),
    "cache_implementation=static": lambda model: dict(cache_implementation="static"),
}


@pytest.mark.parametrize("fa_decode", [False, True], ids=["evicting", "FA decode"])
@pytest.mark.parametrize("mode", DECODE_MODES)
def test_greedy_decoding_is_exact(mode, fa_decode):
    """Every generated token is the argmax of the teacher-forced logits before it; under FA decode generated tokens
    see the whole past, as under the sink window."""
    model = build_tiny_model("llama", eos_token_id=None)
    x = ids(PROMPT, seed=2)
    with swaa(model, config(fa_decode)), torch.no_grad():
        out = model.generate(x, max_new_tokens=NEW, do_sample=False, **DECODE_MODES[mode](model))
        if mode == "use_cache" and not fa_decode:  # the evicting layers hold the sinks and one chunk's slots only
            cache = model.generate(x, max_new_tokens=NEW, do_sample=False, return_dict_in_generate=True)
            assert [layer.keys.shape[2] for layer in cache.past_key_values.layers] == [K + C] * 4
    logits = teacher(model, out, PROMPT if fa_decode else None)
    assert torch.equal(logits[:, PROMPT - 1 : -1].argmax(-1), out[:, PROMPT:]), "tokens depart from the reference"


@pytest.mark.parametrize("mode", ["eager", "static", "rows one at a time"])
def test_left_padded_batch_counts_chunks_in_real_positions(mode):
    """Chunks start at each row's first real token (as transformers' chunked mask under left padding), on the
    dynamic cache, the fixed buffers, and the fixed buffers filled one request at a time."""
    model = build_tiny_model("qwen3", eos_token_id=None)
    a, b = ids(21, seed=3)[0], ids(14, seed=4)[0]
    batch, mask = left_padded(a, b)
    kwargs = dict(max_new_tokens=NEW, do_sample=False, pad_token_id=0)
    with swaa(model, config()), torch.no_grad():
        alone = [model.generate(row[None], **kwargs)[0, len(row) :] for row in (a, b)]
        if mode == "rows one at a time":
            out = fast_generate(model, batch, attention_mask=mask, max_new_tokens=NEW, prefill="row").sequences
        else:
            static = dict(cache_implementation="static") if mode == "static" else {}
            out = model.generate(batch, attention_mask=mask, **kwargs, **static)
    assert torch.equal(out[0, 21:], alone[0]) and torch.equal(out[1, 21:], alone[1])


def test_window_kernel_backends_are_refused_by_name():
    model = build_tiny_model("llama")
    for backend in ("fa4", "flash"):
        with pytest.raises(ValueError, match=f"backend {backend!r} refused: The 'chunked' mask kind \\(chunked 4"):
            apply_swaa(model, config(), backend=backend)
    assert getattr(model, "_swaa_state", None) is None  # nothing was half-applied


def test_the_config_selects_chunks_by_name():
    chunked = config()
    assert chunked.kind == ChunkedAttention(C, K) and chunked.to_dict()["mask_kind"] == "chunked"
    assert chunked.describe() == "chunked 4 + 1 sinks" and SWAAConfig.from_json(chunked.to_json()) == chunked
    with pytest.raises(SWAAConfigError, match="mask_kind must be one of 'sink_window', 'chunked', got 'dilated'"):
        SWAAConfig(sliding_window_size=C, mask_kind="dilated")
    with pytest.raises(ValueError, match="chunk size of at least 1"):
        ChunkedAttention(0)


@pytest.mark.parametrize("native, expected", [(5, ChunkedAttention(3, 0)), (2, SinkWindow(2, 0))])
def test_a_natively_sliding_layer_is_narrowed_never_widened(native, expected):
    """Chunks of 3 inside a native window of 5 narrow it; inside a window of 2 they would widen it: the layer keeps
    its own window. Sinks and FA decode never apply there."""
    cfg = SWAAConfig(sliding_window_size=3, keep_first=2, force_fa_decode=True, mask_kind="chunked")
    assert cfg.layer_rule(0, native) == (expected, False)
    model = build_tiny_model("mistral", sliding_window=native, eos_token_id=None)
    reference = build_tiny_model("mistral", sliding_window=native, eos_token_id=None)
    x = ids(17, seed=5)
    with swaa(model, cfg), torch.no_grad():
        got = model(x).logits
    if isinstance(expected, ChunkedAttention):
        reference.set_attn_implementation("eager")
        n = x.shape[1]
        i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
        mask = torch.where((j <= i) & (j // 3 == i // 3), 0.0, float("-inf"))[None, None]
        with torch.no_grad():
            want = reference(input_ids=x, attention_mask=mask).logits
    else:
        with torch.no_grad():
            want = reference(x).logits  # the model's own sliding window
    assert torch.allclose(got, want, atol=1e-5)


# --------------------------------------------------------------------------- flex on a GPU (skips without CUDA)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (FlexAttention backend)")
GPU_CASES = [
    dict(n=333, window=40),
    dict(n=301, window=30, keep_first=3),
    dict(n=301, window=32, keep_first=4, B=3, pads=(0, 45, 170)),  # left padding: chunks shift with each row
    dict(n=400, window=64, keep_first=8, q_len=77),  # a prefill chunk against a longer cache
    dict(n=256, window=24, keep_first=2, full_tail=60),  # FA-decode queries at the end
    dict(n=900, window=64, keep_first=4, q_len=1),  # a decode step
]


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("hints", [False, True], ids=["positions", "offsets"])
@pytest.mark.parametrize("case", GPU_CASES, ids=case_id)
def test_flex_runs_chunks_exactly_on_a_gpu(case, hints):
    """``hints``: the host-known offsets of an unpadded call, which route it to the cached arithmetic block mask."""
    if hints and case.get("pads"):
        pytest.skip("offsets describe unpadded calls only")
    q, k, v, g = make_case(kind=ChunkedAttention, H=8, D=64, dtype=torch.bfloat16, device="cuda", **case)
    if hints:
        g = with_engine_hints(g)
    scale = q.shape[-1] ** -0.5
    expected = float64_attention(q, k, v, g, scale)
    out = backends.attend("flex", q, k, v, g, scale)
    assert torch.isfinite(out).all()
    assert float((out.double() - expected).norm() / expected.norm()) < 1e-2
