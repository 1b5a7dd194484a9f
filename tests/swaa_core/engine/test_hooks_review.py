"""Review of fa2570d (hooks are never silently skipped): faults a user meets, each as a test that fails on it.

- A forward hook on the model itself (the top-level ``*ForCausalLM``: counting forwards, editing logits) runs in the
  prefill and in the eager fixed-buffer steps, but not in the compiled decode steps: ``compiled_forward`` compiles
  ``model.forward``, and calling a module's ``forward`` skips that module's own hooks.
- torch's global module hooks (``register_module_forward_hook``) registered after a compiled call are skipped by the
  compiled prefill modules and by the compiled decode step of the earlier call: ``skip_nnmodule_hook_guards=False``
  guards on each module's hook dicts, not on the global ones.
- The project's own LoRA fine-tune (``train_lora``, gradient checkpointing on by default) leaves transformers'
  ``enable_input_require_grads`` hook on the input embedding; ``foreign_hooks`` counts it as a caller's hook, so on
  CUDA every later fixed-path generation of the fine-tuned model runs without its CUDA graph (and cuda_graph=True is
  refused), for a hook that does nothing under the decode's ``no_grad``.
- accelerate's ``add_hook_to_module`` (a ``ModelHook`` of the caller's: counting, steering) replaces the module's
  forward instead of registering a torch hook: ``foreign_hooks`` does not see it, and a CUDA graph is captured over it
  (its Python would run once, at capture).
"""

from __future__ import annotations

import pytest
import torch
from helpers.compiling import CountingBackend
from helpers.tiny_models import build_tiny_model

from swaa_core import SWAAConfig, swaa
from swaa_core.engine.fast_decode import _use_graph, fast_generate
from swaa_core.engine.install import swaa_owner

CONFIG = SWAAConfig(sliding_window_size=6, keep_first=2, non_sliding_layers=[1])


def _prompt(n: int = 25) -> torch.Tensor:
    return torch.randint(3, 97, (1, n), generator=torch.Generator().manual_seed(1))


def test_a_forward_hook_on_the_model_itself_runs_in_the_compiled_decode_steps():
    """The reference is transformers' generate with the same hook: one call per forward (the prompt, then each new
    token), its greedy tokens those of the biased logits. The eager fixed path agrees with it; the compiled step
    (``torch.compile(model.forward)``) ran the hook for the prompt only ([25]) and chose unbiased tokens."""
    model = build_tiny_model("llama", eos_token_id=None)
    bias = 4.0 * torch.randn(97, generator=torch.Generator().manual_seed(3))
    calls = []

    def steer(module, args, kwargs, output):
        calls.append(kwargs["input_ids"].shape[1])
        output.logits = output.logits + bias
        return output

    x = _prompt()
    with swaa(model, CONFIG), torch.no_grad():
        plain = model.generate(x, max_new_tokens=6, do_sample=False)
        model.register_forward_hook(steer, with_kwargs=True)
        expected = model.generate(x, max_new_tokens=6, do_sample=False)
        expected_calls, calls[:] = list(calls), []
        eager = fast_generate(model, x, max_new_tokens=6)
        eager_calls, calls[:] = list(calls), []
        compiled = fast_generate(model, x, max_new_tokens=6, compile=CountingBackend())
    assert expected_calls == eager_calls == [25, 1, 1, 1, 1, 1]
    assert not torch.equal(expected, plain)  # the hook matters
    assert torch.equal(eager.sequences, expected)
    assert compiled.compiled
    assert calls == expected_calls, "the model's own hook did not run in the compiled decode steps"
    assert torch.equal(compiled.sequences, expected)


def test_a_global_module_hook_registered_after_a_compiled_call_runs_in_the_next_call():
    """A global forward hook counting every Linear call and scaling one ``o_proj``'s output, registered between two
    compiled calls. transformers' generate runs it 7 times per layer per forward (4 layers x 6 forwards) and once per
    forward on lm_head: 174 calls. The second compiled call ran it once (the prefill's eager lm_head), with other
    tokens. Registered before the first compiled call, the same hook runs all 174 times."""
    model = build_tiny_model("llama", eos_token_id=None)
    target = model.model.layers[2].self_attn.o_proj
    calls = []

    def hook(module, args, output):
        if isinstance(module, torch.nn.Linear):
            calls.append(args[0].shape[1])
        if module is target:
            return output * 3.0

    x = _prompt()
    backend = CountingBackend()
    with swaa(model, CONFIG), torch.no_grad():
        plain = fast_generate(model, x, max_new_tokens=6, compile=backend)
        handle = torch.nn.modules.module.register_module_forward_hook(hook)
        try:
            expected = model.generate(x, max_new_tokens=6, do_sample=False)
            expected_calls, calls[:] = list(calls), []
            hooked = fast_generate(model, x, max_new_tokens=6, compile=backend)
        finally:
            handle.remove()
    assert len(expected_calls) == 4 * 7 * 6 + 6 and not torch.equal(expected, plain.sequences)
    assert sorted(calls) == sorted(expected_calls), f"{len(calls)} of {len(expected_calls)} hook calls ran"
    assert torch.equal(hooked.sequences, expected)


def test_the_projects_own_fine_tune_leaves_the_cuda_graph_on():
    """``train_lora`` with its default settings (gradient checkpointing) leaves transformers' input-grad hook on
    ``model.embed_tokens``: ``output.requires_grad_(True)``, nothing that changes a no-grad decode step's kernels.
    Before the fine-tune ``_use_graph`` captures on CUDA; after it, the same model's graph was dropped (and
    cuda_graph=True refused with "model.embed_tokens")."""
    from swaa_core.train.lora import TrainSettings, make_example, train_lora

    model = build_tiny_model("llama")
    g = torch.Generator().manual_seed(0)
    examples = [make_example(torch.randint(3, 97, (20,), generator=g).tolist(), [5, 6, 7]) for _ in range(2)]
    with swaa(model, CONFIG):
        assert _use_graph(model, None, on_cuda=True)
    result = train_lora(model, examples, CONFIG, TrainSettings(max_steps=1), progress=False)
    owner = swaa_owner(result.model)
    with swaa(result.model, CONFIG):
        assert _use_graph(owner, None, on_cuda=True), "the fine-tuned model's decode lost its CUDA graph"
        assert _use_graph(owner, True, on_cuda=True)


def test_an_accelerate_hook_of_the_callers_keeps_the_cuda_graph_off():
    """A counting ``ModelHook`` placed with accelerate's ``add_hook_to_module`` runs its Python at every forward (6
    calls for 6 tokens on the fixed path, as under generate): a replayed graph would run it once, at capture, exactly
    as for the torch hook the reviewed commit refuses. ``_use_graph`` captured over it."""
    from accelerate.hooks import ModelHook, add_hook_to_module

    calls = []

    class Count(ModelHook):
        def post_forward(self, module, output):
            calls.append(1)
            return output

    model = build_tiny_model("llama", eos_token_id=None)
    add_hook_to_module(model.model.layers[2].self_attn.o_proj, Count())
    with swaa(model, CONFIG), torch.no_grad():
        fast_generate(model, _prompt(), max_new_tokens=6)
        assert len(calls) == 6
        assert not _use_graph(model, None, on_cuda=True), "a CUDA graph would be captured over the caller's hook"
        with pytest.raises(ValueError, match=r"model\.layers\.2\.self_attn\.o_proj"):
            _use_graph(model, True, on_cuda=True)
