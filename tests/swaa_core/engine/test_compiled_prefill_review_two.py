"""Review two of the compiled prefill (``compiled_prefill``, commit ff12515: the attention modules SWAA runs compile
too): faults a user meets, each as a test that fails on the reviewed commit.

- A forward hook (``register_forward_hook`` / ``register_forward_pre_hook``) on an attention projection of any layer
  but the first is silently skipped in the compiled prefill: one compiled function per class serves every layer, the
  graph traced for layer 0 (no hook) is reused for the hooked layer, and dynamo does not guard on a module's hook
  dicts (``torch._dynamo.config.skip_nnmodule_hook_guards``). ``fusable`` checks only for a ``forward`` on the
  instance. Before ff12515 the attention modules ran eagerly and such hooks ran (activation steering, calibration and
  interpretability hooks sit on ``o_proj`` / ``q_proj``). The MLPs' Linears had the same fault before.

Siblings of the same kind (hooks silently not run), found after the review: a hook registered after a compiled call
was skipped by the reused compiled decode step, and a CUDA graph replays no hook's Python.
"""

from __future__ import annotations

import threading

import pytest
import torch
from helpers.compiling import CountingBackend
from helpers.tiny_models import build_tiny_model

from swaa_core import SWAAConfig, swaa
from swaa_core.engine.fast_decode import fast_generate
from swaa_core.eval.decoding import decode_kernels
from swaa_core.eval.harness import cancel_between_layers

CONFIG = SWAAConfig(sliding_window_size=6, keep_first=2, non_sliding_layers=[1])


@pytest.mark.parametrize("projection", ["self_attn.o_proj", "self_attn.q_proj", "mlp.down_proj"])
def test_a_forward_hook_on_an_attention_projection_runs_in_the_compiled_prefill(projection):
    """The reference is transformers' generate with the same hook: it calls the hook once per forward (the prompt,
    then each new token) and its greedy tokens carry the hook's scaling."""
    model = build_tiny_model("llama", eos_token_id=None)
    calls = []

    def scale(module, args, output):
        calls.append(args[0].shape[1])  # the tokens this forward ran
        return output * 3.0

    model.model.layers[2].get_submodule(projection).register_forward_hook(scale)
    x = torch.randint(3, 97, (1, 25), generator=torch.Generator().manual_seed(1))
    with swaa(model, CONFIG), torch.no_grad():
        expected = model.generate(x, max_new_tokens=6, do_sample=False)
        expected_calls, calls[:] = list(calls), []
        result = fast_generate(model, x, max_new_tokens=6, compile=CountingBackend())
    assert expected_calls == [25, 1, 1, 1, 1, 1]
    assert calls == expected_calls, "the hook did not run in the compiled prefill"
    assert torch.equal(result.sequences, expected)


def test_a_forward_pre_hook_on_a_q_and_k_norm_runs_in_the_compiled_prefill():
    """Gemma 3's q and k norms are traced inside its attention's graphs; a pre-hook on one (pruning, calibration)
    must run as it runs under transformers' generate."""
    model = build_tiny_model("gemma3", eos_token_id=None)
    calls = []

    def count(module, args):
        calls.append(args[0].shape[2])  # (B, heads, tokens, head size)

    model.model.layers[3].self_attn.k_norm.register_forward_pre_hook(count)
    x = torch.randint(3, 97, (1, 21), generator=torch.Generator().manual_seed(2))
    with swaa(model, CONFIG), torch.no_grad():
        model.generate(x, max_new_tokens=3, do_sample=False)
        expected_calls, calls[:] = list(calls), []
        fast_generate(model, x, max_new_tokens=3, compile=CountingBackend())
    assert expected_calls == [21, 1, 1] and calls == expected_calls


def test_a_hook_registered_after_a_compiled_call_runs_in_the_next_calls_decode_steps():
    """Dynamo skips guards on module hooks by default: the compiled step of the first call, reused by the second,
    ran without a hook registered in between (its calls [25], generate's [25, 1, 1, 1, 1, 1], other tokens). Removing
    the hook afterwards must not leave it running either."""
    model = build_tiny_model("llama", eos_token_id=None)
    calls = []

    def scale(module, args, output):
        calls.append(args[0].shape[1])
        return output * 3.0

    x = torch.randint(3, 97, (1, 25), generator=torch.Generator().manual_seed(1))
    backend = CountingBackend()
    with swaa(model, CONFIG), torch.no_grad():
        plain = fast_generate(model, x, max_new_tokens=6, compile=backend)
        hook = model.model.layers[2].self_attn.o_proj.register_forward_hook(scale)
        expected = model.generate(x, max_new_tokens=6, do_sample=False)
        expected_calls, calls[:] = list(calls), []
        hooked = fast_generate(model, x, max_new_tokens=6, compile=backend)
        assert calls == expected_calls == [25, 1, 1, 1, 1, 1] and torch.equal(hooked.sequences, expected)
        hook.remove()
        calls[:] = []
        again = fast_generate(model, x, max_new_tokens=6, compile=backend)
    assert calls == [] and torch.equal(again.sequences, plain.sequences)


def test_a_cuda_graph_is_not_captured_over_the_callers_hooks():
    """A CUDA graph replays kernels, not Python: a hook that counts calls or keeps activations would run once, at
    capture. cuda_graph=None captures only without such hooks (SWAA's own do not count); True with them is refused
    by the hooked module's name."""
    from swaa_core.engine.fast_decode import _use_graph

    model = build_tiny_model("llama")
    with swaa(model, CONFIG):
        assert _use_graph(model, None, on_cuda=True) and not _use_graph(model, None, on_cuda=False)
        handle = model.model.layers[1].mlp.down_proj.register_forward_pre_hook(lambda m, a: None)
        assert not _use_graph(model, None, on_cuda=True) and not _use_graph(model, False, on_cuda=True)
        with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.down_proj"):
            _use_graph(model, True, on_cuda=True)
        handle.remove()
        assert _use_graph(model, True, on_cuda=True)
        # the project's own hooks (the app's stop between layers, the runner's decode kernels) allow a graph
        with cancel_between_layers(model, threading.Event(), until=lambda: None), decode_kernels(model, "cuda"):
            assert sum(len(m._forward_pre_hooks) for m in model.modules()) > len(model._swaa_state.hooks)
            assert _use_graph(model, None, on_cuda=True)
        with cancel_between_layers(model, threading.Event()):  # without ``until`` the hook is the only stop
            assert not _use_graph(model, None, on_cuda=True)
        handle = model.model.layers[0].register_full_backward_hook(lambda m, gi, go: None)
        assert _use_graph(model, None, on_cuda=True)  # backward hooks never run in a decode step
        handle.remove()
