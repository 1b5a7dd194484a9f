"""The prefill's norms, MLPs and attention modules compiled under ``fast_generate(compile=...)`` (``compiled_prefill``): the same tokens
as the eager path and ``generate`` in every family, one compiled function per module class shared by every layer
and prompt length, the model as it was after the prefill (even after an error), modules a hook library or LoRA
owns left alone, and inductor's fused kernels as close to a float64 forward as the eager kernels are."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers.compiling import CountingBackend
from helpers.tiny_models import FAMILIES, build_tiny_model, left_padded
from torch._dynamo.utils import counters
from transformers import GenerationConfig

from swaa_core import SWAAConfig, apply_swaa, remove_swaa, swaa
from swaa_core.engine.compiled_prefill import KEPT, fusable, fused_elementwise, prefill_backend
from swaa_core.engine.compiled_step import FROZEN_FUSED, inductor_backend
from swaa_core.engine.families import attention_modules
from swaa_core.engine.fast_decode import fast_generate

CONFIG = SWAAConfig(sliding_window_size=6, keep_first=2, non_sliding_layers=[1])


def graphs() -> int:
    return counters["stats"]["unique_graphs"]


def forwards_on_instances(model) -> list[str]:
    return [name for name, m in model.named_modules() if "forward" in m.__dict__]


@pytest.mark.parametrize("family", FAMILIES)
def test_fused_prefill_gives_the_eager_tokens_and_compiles_once_per_class(family):
    model = build_tiny_model(family, eos_token_id=None)
    backend = CountingBackend()
    assert not any(fusable(m) for m in attention_modules(model))  # only an attention SWAA runs
    with swaa(model, CONFIG), torch.no_grad():
        classes = {type(m) for m in model.modules() if fusable(m)}
        assert any(c.__name__.endswith("RMSNorm") for c in classes) and any(c.__name__.endswith("MLP") for c in classes)
        assert type(attention_modules(model)[0]) in classes
        after = []
        for T in (20, 33, 47):  # three lengths: one compiled function per class serves them all
            x = torch.randint(3, 97, (1, T), generator=torch.Generator().manual_seed(T))
            fused = fast_generate(model, x, max_new_tokens=10, compile=backend)
            eager = fast_generate(model, x, max_new_tokens=10)
            expected = model.generate(x, max_new_tokens=10, do_sample=False)
            assert torch.equal(fused.sequences, eager.sequences) and torch.equal(fused.sequences, expected)
            assert not forwards_on_instances(model)  # the decode step and other callers see the model as it was
            after.append(backend.graphs)
        assert after[0] < after[1] == after[2]  # the second length compiles the length as a symbol, the third reuses it
        x, mask = left_padded(torch.arange(3, 30), torch.arange(5, 20))  # batch 2: dynamo specializes size 1
        fast_generate(model, x, attention_mask=mask, max_new_tokens=10, compile=backend)
        assert backend.graphs - after[2] <= after[1]  # at most the batch-1 graphs again
    kept = model.__dict__[KEPT]
    assert {cls for cls, _, _ in kept} == classes and len(kept) == len(classes)


class SymbolicSizes(CountingBackend):
    """Counts the graphs and records the sizes each compiled graph takes as symbols (their values at compile time)."""

    def __init__(self):
        super().__init__()
        self.symbolic = set()

    def __call__(self, gm, example_inputs):
        for x in example_inputs:
            sizes = x.shape if isinstance(x, torch.Tensor) else [x]
            self.symbolic.update(int(s.node.hint) for s in sizes if isinstance(s, torch.SymInt))
        return super().__call__(gm, example_inputs)


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_only_the_prompt_length_is_a_symbol_of_the_prefills_kernels(family):
    """Compiled with every size symbolic, the head count and head size were symbols too: rotary's split at half the
    head size was computed per element with divisions, and the fused rotary kernel ran at 270 GB/s on an H100
    (7.7 ms a layer at 128K, slower than the eager kernels; 2026-12-06). Sizes that differ from another model of the
    same class, compiled before in this process (the tests before this one), must not become symbols either."""
    model = build_tiny_model(family, layers=3, hidden_size=48, intermediate_size=80, head_dim=12, eos_token_id=None)
    backend = SymbolicSizes()
    with swaa(model, SWAAConfig(sliding_window_size=6, keep_first=2)), torch.no_grad():
        for T in (21, 37):
            x = torch.randint(3, 97, (1, T), generator=torch.Generator().manual_seed(T))
            fast_generate(model, x, max_new_tokens=1, compile=backend)
    model_sizes = {48, 80, 12, 6, 4, 2, 4 * 12, 2 * 12}  # hidden, MLP, head size and half, heads, q and kv widths
    assert 37 in backend.symbolic and not backend.symbolic & model_sizes, backend.symbolic


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_the_prefills_graphs_do_not_grow_with_the_layers(family):
    """A layer's index read as a constant, or the cache's or SWAA's host-side code traced, would cost each layer its
    own graphs; Gemma 3's q and k norms run inside its attention's graphs."""
    counts = []
    for layers in (2, 5):
        model = build_tiny_model(family, layers=layers, eos_token_id=None)
        backend = CountingBackend()
        x = torch.randint(3, 97, (1, 30), generator=torch.Generator().manual_seed(2))
        with swaa(model, SWAAConfig(sliding_window_size=6, keep_first=2)), torch.no_grad():
            fast_generate(model, x, max_new_tokens=2, compile=backend)
        counts.append(backend.graphs)
    assert counts[0] == counts[1] and counts[0] > 0


def test_modules_run_their_own_forward_again_after_an_error_in_the_prefill():
    model = build_tiny_model("llama")
    with pytest.raises(RuntimeError, match="boom"), fused_elementwise(model, "eager"):
        assert forwards_on_instances(model)  # inside the block the norms and MLPs are swapped
        raise RuntimeError("boom")
    assert not forwards_on_instances(model)


def test_a_hook_librarys_forward_and_a_lora_mlp_are_left_alone():
    from accelerate.hooks import ModelHook, add_hook_to_module
    from peft import LoraConfig, get_peft_model

    model = build_tiny_model("llama")
    hooked = model.model.layers[0].input_layernorm
    add_hook_to_module(hooked, ModelHook())  # accelerate sets forward on the instance (offloading, device maps)
    own = hooked.forward
    assert not fusable(hooked) and fusable(model.model.layers[1].input_layernorm)
    with fused_elementwise(model, "eager"):
        assert hooked.forward is own
    assert hooked.forward is own
    lora = get_peft_model(build_tiny_model("llama"), LoraConfig(r=2, target_modules=["up_proj", "q_proj"]))
    base = lora.get_base_model()
    assert not fusable(base.model.layers[0].mlp) and fusable(base.model.layers[0].input_layernorm)


def test_disable_compile_keeps_the_prefill_eager_too():
    model = build_tiny_model("llama", eos_token_id=None)
    backend = CountingBackend()
    x = torch.randint(3, 97, (1, 25), generator=torch.Generator().manual_seed(1))
    with swaa(model, CONFIG):
        result = fast_generate(model, x, max_new_tokens=8, compile=backend,
                               generation_config=GenerationConfig(disable_compile=True))  # fmt: skip
    assert not result.compiled and backend.graphs == 0 and KEPT not in model.__dict__


def test_the_prefill_compiles_with_inductors_defaults_for_an_inductor_backend():
    """Freezing would fold a second copy of the MLP weights in for every prompt length, and without emulated casts a
    bf16 prefill's tokens moved; other backends are the caller's, as given."""
    custom = CountingBackend()
    assert prefill_backend(None) is None
    emulated = inductor_backend(emulate_precision_casts=True)  # rounds where the eager operations round
    assert prefill_backend("inductor") is emulated and prefill_backend(inductor_backend(**FROZEN_FUSED)) is emulated
    assert prefill_backend("aot_eager") == "aot_eager" and prefill_backend(custom) is custom


def test_inductors_fused_norms_and_mlps_are_as_close_to_float64_as_the_eager_kernels():
    """The independent reference: the same SWAA model in float64. Inductor's kernels (one per norm and activation,
    C++ on the CPU) reorder the float32 reductions; their error against float64 stays of the eager kernels' size."""
    model = build_tiny_model("qwen3", hidden_size=64, intermediate_size=160, head_dim=16, seed=3)
    reference = copy.deepcopy(model).double()
    x = torch.randint(3, 97, (2, 150), generator=torch.Generator().manual_seed(4))
    apply_swaa(model, CONFIG)
    apply_swaa(reference, CONFIG)
    try:
        with torch.no_grad():
            exact = reference(x).logits
            eager = model(x).logits.double()
            with fused_elementwise(model, "inductor"):
                fused = model(x).logits.double()
    finally:
        remove_swaa(model)
        remove_swaa(reference)
    eager_error, fused_error = float((eager - exact).abs().max()), float((fused - exact).abs().max())
    assert 0 < fused_error < max(4 * eager_error, 1e-5), (fused_error, eager_error)
    assert not torch.equal(fused, eager) or eager_error == 0  # inductor's kernels ran (not the eager ones)
