"""Public entry points given a peft-wrapped model in the orders users reach it (SWAA applied on the base before
wrapping, on the wrapper before merging, prompt learning, training a wrapper that already runs SWAA, per-row adapters).
Each test compares against an independent reference: peft's own generate without SWAA, or a model that never ran
SWAA. (SWAA's state lives on the model inside the wrapper: ``install.swaa_owner``.)"""

from __future__ import annotations

import functools
import random

import pytest
import torch
from helpers.tiny_models import build_tiny_model, padded_batch

from swaa_core import SWAAConfig, apply_swaa, fast_generate, remove_swaa
from swaa_core.engine.families import attention_modules

CFG = SWAAConfig(sliding_window_size=6, keep_first=2)


def lora(model):
    """``model`` in a peft LoRA wrapper (q/v, non-zero B: the adapter changes the tokens)."""
    from peft import LoraConfig, get_peft_model

    wrapped = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, param in wrapped.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5, generator=torch.Generator().manual_seed(5))
    return wrapped.eval()


def greedy(generate, **extra):
    ids, mask = padded_batch()
    torch.manual_seed(4)
    with torch.no_grad():
        out = generate(ids, attention_mask=mask, max_new_tokens=12, min_new_tokens=12, do_sample=False, **extra)
    return out.sequences if hasattr(out, "sequences") else out


def test_remove_swaa_on_a_wrapper_of_a_model_that_runs_swaa_restores_it():
    """apply_swaa(model), then wrap it (get_peft_model / load_adapter): remove_swaa(wrapper) takes everything off the
    base, its state and generate wrapper included (it once raised AttributeError half-way)."""
    base = build_tiny_model(eos_token_id=None)
    apply_swaa(base, CFG)
    wrapped = lora(base)
    remove_swaa(wrapped)
    assert not hasattr(base, "_swaa_state") and "generate" not in base.__dict__
    plain = lora(build_tiny_model(eos_token_id=None))
    assert torch.equal(greedy(wrapped.generate), greedy(plain.generate))


def test_swaa_context_on_a_wrapper_of_a_model_that_runs_swaa():
    """swaa(wrapper, None) (what the runner's Decoder does for the full-attention column) on a wrapper whose base runs
    SWAA: full attention inside, as a wrapper that never ran SWAA."""
    from swaa_core import swaa

    base = build_tiny_model(eos_token_id=None)
    apply_swaa(base, CFG)
    wrapped = lora(base)
    with swaa(wrapped, None):
        full = greedy(wrapped.generate)
    assert torch.equal(full, greedy(lora(build_tiny_model(eos_token_id=None)).generate))


def test_merging_a_wrapper_that_runs_swaa_leaves_no_hidden_swaa():
    """apply_swaa(wrapper), then merge_and_unload(): the merged model keeps SWAA with its state (the merge discards
    only the wrapper), so remove_swaa(merged) restores the model's own attention, hooks and generate (once the state
    went with the wrapper and the hooks stayed, decoding with SWAA that nothing could remove)."""
    wrapped = lora(build_tiny_model(eos_token_id=None))
    apply_swaa(wrapped, CFG)
    merged = wrapped.merge_and_unload()
    remove_swaa(merged)
    reference = lora(build_tiny_model(eos_token_id=None)).merge_and_unload()  # never ran SWAA
    assert merged.config._attn_implementation == reference.config._attn_implementation
    assert all(not m._forward_pre_hooks for m in attention_modules(merged))
    assert torch.equal(greedy(merged.generate), greedy(reference.generate))


@pytest.mark.parametrize("kind", ["prompt", "prefix"])
@pytest.mark.parametrize("entry", ["fast_generate", "generate_static"])
def test_prompt_learning_is_decoded_with_its_virtual_tokens_or_refused(kind, entry):
    """A peft prompt-tuning / prefix-tuning model through the fixed path, with SWAA whose window covers everything
    (so the reference is peft's own generate without SWAA): the fixed loop's steps take token ids only, so it must
    refuse the virtual tokens by name (it once dropped them silently) or decode with them."""
    from peft import PrefixTuningConfig, PromptTuningConfig, TaskType, get_peft_model

    torch.manual_seed(0)
    config_class = PromptTuningConfig if kind == "prompt" else PrefixTuningConfig
    wrapped = get_peft_model(build_tiny_model(eos_token_id=None), config_class(task_type=TaskType.CAUSAL_LM,
                                                                               num_virtual_tokens=5))  # fmt: skip
    wrapped.eval()
    expected = greedy(wrapped.generate)  # peft's own generate, no SWAA
    with wrapped.disable_adapter():
        assert not torch.equal(greedy(wrapped.generate), expected)  # the virtual tokens matter
    apply_swaa(wrapped, SWAAConfig(sliding_window_size=4000, keep_first=0))
    assert torch.equal(greedy(wrapped.generate, cache_implementation="dynamic"), expected)  # the eager path: fine
    run = functools.partial(fast_generate, wrapped) if entry == "fast_generate" else functools.partial(
        wrapped.generate, cache_implementation="static")  # fmt: skip
    try:
        got = greedy(run)
    except ValueError as e:  # a refusal by name is acceptable
        assert "prompt" in str(e).lower() or "prefix" in str(e).lower()
        return
    assert torch.equal(got, expected)


def test_train_lora_on_a_wrapper_that_runs_swaa_leaves_it_working():
    """train_lora(wrapper) after apply_swaa(wrapper): training enters swaa(base, cfg) on the inner model and must hand
    the wrapper back running its SWAA (once it left hooks without plans, and the next generate raised)."""
    from swaa_core.train import TrainSettings, make_example, train_lora

    r = random.Random(0)
    examples = [make_example([r.randrange(3, 97) for _ in range(12)], [r.randrange(3, 97) for _ in range(4)])
                for _ in range(4)]  # fmt: skip
    wrapped = lora(build_tiny_model(eos_token_id=None))
    apply_swaa(wrapped, CFG)
    train_lora(wrapped, examples, CFG, TrainSettings(max_steps=1, batch_size=2, lora_dropout=0.0), progress=False)
    assert all(hasattr(m, "_swaa_plan") for m in attention_modules(wrapped))
    eager = greedy(wrapped.generate, cache_implementation="dynamic")
    assert torch.equal(greedy(functools.partial(fast_generate, wrapped)), eager)


@pytest.mark.parametrize("kind", ["prompt", "prefix"])
def test_auto_route_takes_the_eager_path_for_prompt_learning(kind, monkeypatch):
    """Where the fixed path is the default (CUDA; here the CPU default switched to it), generate on a prompt-learning
    wrapper goes eager, keeps its virtual tokens and says why."""
    from peft import PrefixTuningConfig, PromptTuningConfig, TaskType, get_peft_model

    from swaa_core.engine import decode_path

    torch.manual_seed(0)
    config_class = PromptTuningConfig if kind == "prompt" else PrefixTuningConfig
    wrapped = get_peft_model(build_tiny_model(eos_token_id=None), config_class(task_type=TaskType.CAUSAL_LM,
                                                                               num_virtual_tokens=5))  # fmt: skip
    wrapped.eval()
    expected = greedy(wrapped.generate)
    state = apply_swaa(wrapped, SWAAConfig(sliding_window_size=4000, keep_first=0))
    monkeypatch.setattr(decode_path, "CPU_DEFAULT", decode_path.DecodePath.FIXED)
    assert torch.equal(greedy(wrapped.generate), expected)
    assert not state.last_route.fixed and "prepare_inputs_for_generation" in state.last_route.reason


@pytest.mark.parametrize("config", [CFG, SWAAConfig(sliding_window_size=6, keep_first=2, force_fa_decode=True)],
                         ids=["evicting", "fa-decode"])  # fmt: skip
def test_per_row_adapters_decode_on_the_fixed_path_as_on_the_eager_path(config):
    """peft's mixed batches (adapter_names=, one adapter or the base per row) through generate: peft's forward hooks
    pick each row's adapter inside the layers, so the fixed path gives the eager path's tokens, which differ by row
    from a batch that runs one adapter."""
    from peft import LoraConfig

    wrapped = lora(build_tiny_model(eos_token_id=None))
    wrapped.add_adapter("other", LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, param in wrapped.named_parameters():
            if "lora_B.other" in name:
                param.normal_(0, 0.5, generator=torch.Generator().manual_seed(9))
    apply_swaa(wrapped, config)
    names = ["default", "other", "__base__"]
    eager = greedy(wrapped.generate, adapter_names=names, cache_implementation="dynamic")
    assert torch.equal(greedy(wrapped.generate, adapter_names=names, cache_implementation="static"), eager)
    one = greedy(wrapped.generate, cache_implementation="dynamic")
    assert torch.equal(eager[0], one[0]) and not torch.equal(eager[1:], one[1:])
