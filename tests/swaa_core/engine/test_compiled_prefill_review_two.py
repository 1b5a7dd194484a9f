"""Review two of the compiled prefill (``compiled_prefill``, commit ff12515: the attention modules SWAA runs compile
too): faults a user meets, each as a test that fails on the reviewed commit.

- A forward hook (``register_forward_hook`` / ``register_forward_pre_hook``) on an attention projection of any layer
  but the first is silently skipped in the compiled prefill: one compiled function per class serves every layer, the
  graph traced for layer 0 (no hook) is reused for the hooked layer, and dynamo does not guard on a module's hook
  dicts (``torch._dynamo.config.skip_nnmodule_hook_guards``). ``fusable`` checks only for a ``forward`` on the
  instance. Before ff12515 the attention modules ran eagerly and such hooks ran (activation steering, calibration and
  interpretability hooks sit on ``o_proj`` / ``q_proj``). The MLPs' Linears had the same fault before.
"""

from __future__ import annotations

import pytest
import torch
from helpers.tiny_models import build_tiny_model

from swaa_core import SWAAConfig, swaa
from swaa_core.engine.fast_decode import fast_generate

CONFIG = SWAAConfig(sliding_window_size=6, keep_first=2, non_sliding_layers=[1])


class Counting:
    """A torch.compile backend that runs each graph as traced and counts the graphs."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return gm.forward


@pytest.mark.parametrize("projection", ["o_proj", "q_proj"])
def test_a_forward_hook_on_an_attention_projection_runs_in_the_compiled_prefill(projection):
    """The reference is transformers' generate with the same hook: it calls the hook once per forward (the prompt,
    then each new token) and its greedy tokens carry the hook's scaling."""
    model = build_tiny_model("llama", eos_token_id=None)
    calls = []

    def scale(module, args, output):
        calls.append(args[0].shape[1])  # the tokens this forward ran
        return output * 3.0

    model.model.layers[2].self_attn.get_submodule(projection).register_forward_hook(scale)
    x = torch.randint(3, 97, (1, 25), generator=torch.Generator().manual_seed(1))
    with swaa(model, CONFIG), torch.no_grad():
        expected = model.generate(x, max_new_tokens=6, do_sample=False)
        expected_calls, calls[:] = list(calls), []
        result = fast_generate(model, x, max_new_tokens=6, compile=Counting())
    assert expected_calls == [25, 1, 1, 1, 1, 1]
    assert calls == expected_calls, "the hook did not run in the compiled prefill"
    assert torch.equal(result.sequences, expected)
