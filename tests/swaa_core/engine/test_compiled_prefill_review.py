"""Review of the compiled prefill (``compiled_prefill``) and of the compiled decode step it sits beside: faults a user
meets, each as a test that fails on the reviewed commit.

- The compiled norm/MLP function is kept per (class, backend), so a forward the class gets after a first compiled
  call (a hot-fix, a kernel library patching the class) never reaches the prefill, while the decode step runs it.
- In bfloat16, ``compile=True`` (inductor) changes the greedy tokens against ``generate``: inductor's fused norms and
  MLPs skip the bfloat16 roundings between the eager operations (``emulate_precision_casts=True`` removes the
  difference on the CPU); the decode step compiled alone keeps ``generate``'s tokens for the same call.
- (Before this change, in ``compiled_step.compiled_forward``) a deep copy of a model after a compiled call keeps the
  original's compiled bound ``forward``: the copy's compiled decode runs the original module.
"""

from __future__ import annotations

import copy

import pytest
import torch
from helpers.tiny_models import build_tiny_model, padded_batch

from swaa_core import SWAAConfig, swaa
from swaa_core.engine.compiled_prefill import fused_elementwise
from swaa_core.engine.fast_decode import fast_generate

CONFIG = SWAAConfig(sliding_window_size=6, keep_first=2, non_sliding_layers=[1])


def test_the_prefill_runs_a_norm_class_forward_replaced_after_a_first_compiled_call(monkeypatch):
    from transformers.models.llama import modeling_llama

    model = build_tiny_model("llama", eos_token_id=None)
    x = torch.randint(3, 97, (1, 25), generator=torch.Generator().manual_seed(1))
    with swaa(model, CONFIG), torch.no_grad():
        fast_generate(model, x, max_new_tokens=4, compile="eager")  # the norm class's forward compiled and kept
        original = modeling_llama.LlamaRMSNorm.forward

        def halved(self, hidden_states):
            return original(self, hidden_states) * 0.5

        monkeypatch.setattr(modeling_llama.LlamaRMSNorm, "forward", halved)
        eager = model(x).logits
        with fused_elementwise(model, "eager"):
            fused = model(x).logits
    assert torch.equal(fused, eager), "the prefill ran the norm's forward of before the class changed"
    # (the compiled decode step does not notice such a change: dynamo does not guard on a class's forward, as
    # compiled_step's module docstring says)


@pytest.mark.timeout(600)
def test_compile_true_in_bfloat16_gives_the_greedy_tokens_of_generate():
    """Inductor on the CPU (C++ kernels): one padded batch of three rows, 16 greedy tokens. The eager fixed-buffer
    loop and the compiled decode step alone both give generate's tokens here; the fused prefill does not."""
    model = build_tiny_model("qwen3", eos_token_id=None, dtype=torch.bfloat16)
    ids, mask = padded_batch()
    with swaa(model, CONFIG):
        expected = model.generate(ids, attention_mask=mask, max_new_tokens=16, do_sample=False)
        eager = fast_generate(model, ids, attention_mask=mask, max_new_tokens=16)
        compiled = fast_generate(model, ids, attention_mask=mask, max_new_tokens=16, compile=True)
    assert torch.equal(eager.sequences, expected)
    assert compiled.compiled
    assert torch.equal(compiled.sequences, expected), (compiled.sequences[:, -16:], expected[:, -16:])


def test_a_deep_copy_after_a_compiled_call_decodes_with_its_own_weights():
    """Pre-existing (compiled_step.compiled_forward keeps ``torch.compile(model.forward)``, bound to the model, in
    the model's __dict__; deepcopy copies the dict and shares the function)."""
    original = build_tiny_model("llama", eos_token_id=None)
    x = torch.randint(3, 97, (1, 25), generator=torch.Generator().manual_seed(1))
    with swaa(original, CONFIG):
        fast_generate(original, x, max_new_tokens=12, compile="eager")
    copied = copy.deepcopy(original)
    with torch.no_grad():
        for p in copied.parameters():
            p.mul_(-1.3)
    with swaa(copied, CONFIG):
        expected = fast_generate(copied, x, max_new_tokens=12).sequences
        compiled = fast_generate(copied, x, max_new_tokens=12, compile="eager").sequences
    assert torch.equal(compiled, expected)
