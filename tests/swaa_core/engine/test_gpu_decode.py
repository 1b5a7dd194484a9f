"""The fixed-buffer decoder on CUDA (a captured decode step replayed per token): sampled tokens as the eager SWAA
path gives them under the same seeds, and the sampled distribution of a replayed step. Marked ``gpu``: skipped where
torch sees no CUDA device; run with ``python -m pytest tests/swaa_core/engine/test_gpu_decode.py -m gpu``."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers.sampling import ForceTokens, assert_drawn_from
from helpers.tiny_models import build_tiny_model
from transformers import LogitsProcessorList

from swaa_core import SWAAConfig, swaa
from swaa_core.engine.compiled_prefill import fused_elementwise
from swaa_core.engine.compiled_step import FROZEN_FUSED, inductor_backend
from swaa_core.engine.fast_decode import fast_generate

CUDA = "cuda"
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (captured decode steps)"),
]
CONFIG = SWAAConfig(sliding_window_size=40, keep_first=3, non_sliding_layers=[2])


def gpu_model(seed: int = 5):
    """float32, head_dim 32 (FlexAttention's Triton kernels need at least 16 channels), no end-of-sequence token."""
    return build_tiny_model("llama", hidden_size=128, head_dim=32, seed=seed, eos_token_id=None).to(CUDA)


def ids(n: int, seed: int = 0, batch: int = 1) -> torch.Tensor:
    return torch.randint(3, 97, (batch, n), generator=torch.Generator().manual_seed(seed)).to(CUDA)


@pytest.mark.parametrize(
    "options",
    [dict(do_sample=True), dict(do_sample=True, temperature=0.8, top_p=0.9, repetition_penalty=1.2)],
    ids=["sampling", "temperature+top_p+repetition_penalty"],
)
def test_sampled_tokens_equal_the_eager_swaa_path_for_seeds_0_to_9(options):
    """generate with the dynamic SWAA cache against generate(cache_implementation='static') (CUDA graph), 40 new
    tokens, seeds 0-9; the raw logits of every step agree (fp32 kernels), so a token can only differ by a bug."""
    model = gpu_model()
    x = ids(300, seed=8, batch=2)
    kw = dict(max_new_tokens=40, return_dict_in_generate=True, output_logits=True, **options)
    with swaa(model, CONFIG), torch.no_grad():
        for seed in range(10):
            torch.manual_seed(seed)
            expected = model.generate(x, cache_implementation="dynamic", **kw)  # the eager loop, by name
            torch.manual_seed(seed)
            got = model.generate(x, cache_implementation="static", **kw)
            assert torch.equal(got.sequences, expected.sequences), f"seed {seed}"
            worst = max(float((a - b).abs().max()) for a, b in zip(got.logits, expected.logits, strict=True))
            assert worst < 1e-3, f"seed {seed}: logits differ by {worst}"
    with swaa(model, CONFIG), torch.no_grad():
        assert fast_generate(model, x, max_new_tokens=8, do_sample=True).cuda_graph  # the path really captured


def test_replayed_step_samples_from_the_softmax():
    """1,000 rows of one prompt: 6 pinned tokens, then the first free token comes from a replayed CUDA graph (two
    eager warm-up steps precede the capture); its draws against softmax(logits) of the model's own forward without
    SWAA over the same context (W=40 exceeds it). The first token (prefill) is checked the same way."""
    model = gpu_model(seed=6)
    n, pinned = 1000, [11, 12, 13, 14, 15, 16]
    x = ids(30, seed=3)
    with torch.no_grad():
        first = model(x).logits[0, -1].float().softmax(-1)
        p = model(torch.cat([x, torch.tensor([pinned], device=CUDA)], 1)).logits[0, -1].float().softmax(-1)
    force = LogitsProcessorList([ForceTokens(x.shape[1], pinned)])
    with swaa(model, SWAAConfig(sliding_window_size=40, keep_first=2)), torch.no_grad():
        torch.manual_seed(0)
        free = fast_generate(model, x.expand(n, -1), max_new_tokens=1, do_sample=True, top_k=0)
        torch.manual_seed(1)
        out = fast_generate(model, x.expand(n, -1), max_new_tokens=len(pinned) + 1, do_sample=True, top_k=0,
                            logits_processor=force, eos_token_id=[])  # fmt: skip
    assert out.cuda_graph and out.decode_steps >= 1
    assert bool((out.sequences[:, x.shape[1] : -1] == torch.tensor(pinned, device=CUDA)).all())
    assert_drawn_from(free.sequences[:, -1], first)
    assert_drawn_from(out.sequences[:, -1], p)


@pytest.mark.parametrize("backend", ["inductor", "frozen"])
@pytest.mark.parametrize("fa_decode", [False, True])
def test_compiled_step_greedy_tokens_equal_the_eager_step_over_256_tokens(fa_decode, backend):
    """Inductor's compiled decode step (CUDA graph around it), with its default settings and with FROZEN_FUSED (the
    fastest measured), against the eager fixed-buffer step (CUDA graph too): the same 256 greedy tokens for a
    left-padded batch, logits within fp32 rounding, and a second prompt in the same bucket reuses the compiled step
    (its setup is a fraction of the first call's)."""
    compile_with = True if backend == "inductor" else inductor_backend(**FROZEN_FUSED)
    model = gpu_model(seed=7)
    x = ids(300, seed=9, batch=2)
    mask = torch.ones_like(x)
    mask[1, :50] = 0
    cfg = SWAAConfig(sliding_window_size=40, keep_first=3, non_sliding_layers=[2], force_fa_decode=fa_decode)
    kw = dict(attention_mask=mask, max_new_tokens=256, do_sample=False, eos_token_id=[], return_dict_in_generate=True,
              output_logits=True)  # fmt: skip
    strict = torch._dynamo.config.patch(recompile_limit=64, fail_on_recompile_limit_hit=True)  # never eager
    with swaa(model, cfg), torch.no_grad(), strict:
        compiled = fast_generate(model, x, compile=compile_with, **kw)
        eager = fast_generate(model, x, **kw)
        y, y_mask = ids(310, seed=10, batch=2), torch.ones(2, 310, dtype=torch.long, device=CUDA)
        y_mask[1, :50] = 0  # the same sink slots as x's: the same ring shapes
        again = fast_generate(model, y, compile=compile_with, **{**kw, "attention_mask": y_mask})
    assert compiled.compiled and compiled.cuda_graph and not eager.compiled
    worst = max(float((a - b).abs().max()) for a, b in zip(compiled.logits, eager.logits, strict=True))
    assert torch.equal(compiled.sequences, eager.sequences), f"logits differ by up to {worst}"
    assert worst < 1e-3
    assert again.compiled and again.setup_s < compiled.setup_s / 3, (again.setup_s, compiled.setup_s)


def test_a_frozen_compiled_step_follows_weights_changed_in_place():
    """FROZEN_FUSED bakes the weights into the compiled step (freezing); after an in-place change (load_adapter,
    a training step) the next call must decode with the new weights, as the eager step does, not the old ones.
    (On the CPU, 2026-12-06, it did: dynamo recompiled.)"""
    model = gpu_model(seed=11)
    x = ids(120, seed=12)
    frozen = inductor_backend(**FROZEN_FUSED)
    kw = dict(max_new_tokens=40, do_sample=False, eos_token_id=[])
    with swaa(model, CONFIG), torch.no_grad():
        before = fast_generate(model, x, compile=frozen, **kw).sequences
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(-3.0)
            layer.mlp.up_proj.weight.mul_(2.5)
        after = fast_generate(model, x, compile=frozen, **kw).sequences
        eager = fast_generate(model, x, **kw).sequences
    assert not torch.equal(before, eager) and torch.equal(after, eager)


def test_the_fused_bfloat16_prefill_is_as_close_to_float64_as_the_eager_prefill():
    """Inductor's norms and MLPs (compiled_prefill, dynamic shapes) in bfloat16 against the same SWAA model in
    float64 (the naive masked attention), at two prompt lengths of one compiled function: their error stays of the
    eager kernels' size."""
    model = build_tiny_model("llama", hidden_size=256, intermediate_size=704, head_dim=32, seed=13).to(CUDA)
    reference = copy.deepcopy(model).double()
    model = model.to(torch.bfloat16)
    for n in (3000, 4100):
        x = ids(n, seed=n)
        with swaa(model, CONFIG), swaa(reference, CONFIG, backend="reference"), torch.no_grad():  # flex: no float64
            exact = reference(x).logits[:, -256:]
            eager = model(x).logits[:, -256:].double()
            with fused_elementwise(model, "inductor"):
                fused = model(x).logits[:, -256:].double()
        eager_error, fused_error = float((eager - exact).abs().max()), float((fused - exact).abs().max())
        assert fused_error <= 1.5 * eager_error, (n, fused_error, eager_error)
        assert not torch.equal(fused, eager)  # inductor's kernels ran
