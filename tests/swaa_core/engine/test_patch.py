"""Whole models under SWAA against independent references: transformers' own sliding-window models, eager attention
with hand-built 4-D masks, unpadded single-sequence runs, and the untouched original model."""

from __future__ import annotations

import pytest
import torch
from helpers.tiny_models import FAMILIES, build_tiny_model, left_padded

from swaa_core import SWAAConfig, apply_swaa, capture_attention, kv_cache_bytes, remove_swaa, swaa
from swaa_core.engine.config import SWAAConfigError
from swaa_core.engine.families import attention_modules as attention_modules_of


def ids(n, seed=0, batch=1):
    return torch.randint(3, 97, (batch, n), generator=torch.Generator().manual_seed(seed))


def hand_mask(n, window, keep_first, prompt_len=None, fa_decode=False):
    """Additive (1, 1, n, n) mask from the rule in docs/paper.md, written independently of swaa_core."""
    mask = torch.full((n, n), float("-inf"))
    for i in range(n):
        for j in range(i + 1):
            decode = prompt_len is not None and i >= prompt_len and fa_decode
            if window is None or decode or i - j < window or j < keep_first:
                mask[i, j] = 0.0
    return mask[None, None]


def eager_logits(model, input_ids, mask4d):
    """The unmodified model with eager attention and an explicit 4-D mask."""
    model.set_attn_implementation("eager")
    try:
        return model(input_ids=input_ids, attention_mask=mask4d).logits
    finally:
        model.set_attn_implementation("sdpa")


@pytest.mark.parametrize("backend", ["reference", "blocked"])
def test_logits_match_eager_with_hand_mask(family, backend):
    # Gemma 3's own local layers would keep their native window (SWAA never widens it): make every layer global here
    model = build_tiny_model(family, **({"layer_types": ["full_attention"] * 4} if family == "gemma3" else {}))
    x = ids(45)
    with swaa(model, SWAAConfig(sliding_window_size=7, keep_first=3), backend=backend):
        got = model(x).logits
        # the same 4-D mask reaches every layer of the eager run, so all layers must slide here
    expected = eager_logits(model, x, hand_mask(45, 7, 3))
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()
    with swaa(model, SWAAConfig(sliding_window_size=7, keep_first=3, non_sliding_layers=[1]), backend=backend):
        one_full_layer = model(x).logits
    assert not torch.allclose(one_full_layer, got, atol=1e-4), "making layer 1 full attention changed nothing"


def test_matches_transformers_native_sliding_window_mistral():
    """keep_first=0, no FA decode: identical to transformers' own Mistral sliding window implementation."""
    native = build_tiny_model("mistral", sliding_window=6)
    plain = build_tiny_model("mistral")
    plain.load_state_dict(native.state_dict())
    x = ids(50, seed=1)
    expected = native(x).logits
    apply_swaa(plain, SWAAConfig(sliding_window_size=6))
    assert torch.allclose(plain(x).logits, expected, atol=1e-5)
    gen_native = native.generate(x, max_new_tokens=12, do_sample=False)
    gen_swaa = plain.generate(x, max_new_tokens=12, do_sample=False)
    assert torch.equal(gen_native, gen_swaa)


def test_matches_gemma3_native_hybrid_layout():
    """Gemma 3 natively slides in 5 of 6 layers; the same layout as a SWAA config reproduces it."""
    model = build_tiny_model("gemma3", layers=6, sliding_window=5)
    full_layers = [i for i, t in enumerate(model.config.layer_types) if t == "full_attention"]
    assert full_layers == [5]
    x = ids(40, seed=2)
    expected = model(x).logits
    apply_swaa(model, SWAAConfig(sliding_window_size=5, non_sliding_layers=full_layers))
    assert torch.allclose(model(x).logits, expected, atol=1e-5)


def test_qwen2_native_sliding_layers():
    native = build_tiny_model("qwen2", use_sliding_window=True, sliding_window=6, max_window_layers=2)
    assert native.config.layer_types == ["full_attention"] * 2 + ["sliding_attention"] * 2
    x = ids(33, seed=3)
    expected = native(x).logits
    plain = build_tiny_model("qwen2")
    plain.load_state_dict(native.state_dict())
    apply_swaa(plain, SWAAConfig(sliding_window_size=6, non_sliding_layers=[0, 1]))
    assert torch.allclose(plain(x).logits, expected, atol=1e-5)


def test_remove_restores_bit_identical(family):
    model = build_tiny_model(family)
    x = ids(30)
    before = model(x).logits
    gen_before = model.generate(x, max_new_tokens=5, do_sample=False)
    apply_swaa(model, SWAAConfig(sliding_window_size=4, keep_first=1, force_fa_decode=True))
    apply_swaa(model, SWAAConfig(sliding_window_size=3))  # re-applying replaces
    assert not torch.allclose(model(x).logits, before)
    remove_swaa(model)
    assert torch.equal(model(x).logits, before)
    assert torch.equal(model.generate(x, max_new_tokens=5, do_sample=False), gen_before)
    assert model.config._attn_implementation == "sdpa"
    assert not model._forward_pre_hooks and all(not m._forward_pre_hooks for m in model.modules())


def test_none_window_is_the_original_model():
    model = build_tiny_model("qwen3")
    x = ids(20)
    before = model(x).logits
    assert apply_swaa(model, SWAAConfig(sliding_window_size=None, keep_first=4)) is None
    assert torch.equal(model(x).logits, before)


def test_reapply_replaces_config():
    model = build_tiny_model("llama")
    x = ids(40)
    apply_swaa(model, SWAAConfig(sliding_window_size=3))
    apply_swaa(model, SWAAConfig(sliding_window_size=9, keep_first=2))
    once = build_tiny_model("llama")
    apply_swaa(once, SWAAConfig(sliding_window_size=9, keep_first=2))
    assert torch.equal(model(x).logits, once(x).logits)


@pytest.mark.parametrize("fa_decode", [True, [0, 2]])
def test_generation_with_fa_decode_matches_teacher_forced_mixed_mask(fa_decode):
    """Greedy tokens under SWA prefill + FA decode equal the argmax of a teacher-forced eager run with the mixed mask.

    With a list, only layers 0 and 2 decode with full attention: checked by comparing to the all-layer and the
    no-FA-decode runs (it must differ from both)."""
    model = build_tiny_model("llama")
    prompt_len, new = 40, 10
    x = ids(prompt_len, seed=4)
    cfg = SWAAConfig(sliding_window_size=6, keep_first=2, force_fa_decode=fa_decode)
    with swaa(model, cfg):
        out = model.generate(x, max_new_tokens=new, do_sample=False)
    if fa_decode is True:
        n = out.shape[1]
        logits = eager_logits(model, out, hand_mask(n, 6, 2, prompt_len=prompt_len, fa_decode=True))
        teacher = logits[0, prompt_len - 1 : n - 1].argmax(-1)
        assert torch.equal(teacher, out[0, prompt_len:])
    else:
        with swaa(model, cfg):
            mixed = model(out, swaa_prompt_lengths=torch.tensor([prompt_len])).logits
        with swaa(model, SWAAConfig(sliding_window_size=6, keep_first=2, force_fa_decode=True)):
            all_fa = model(out, swaa_prompt_lengths=torch.tensor([prompt_len])).logits
        with swaa(model, SWAAConfig(sliding_window_size=6, keep_first=2)):
            none_fa = model(out).logits
        assert torch.equal(mixed[0, prompt_len - 1 : -1].argmax(-1), out[0, prompt_len:])
        assert not torch.allclose(mixed, all_fa) and not torch.allclose(mixed, none_fa)


def test_mixed_training_mask_equals_eager_reference():
    model = build_tiny_model("qwen2")
    x = ids(36, seed=5)
    cfg = SWAAConfig(sliding_window_size=5, keep_first=1, force_fa_decode=True)
    with swaa(model, cfg):
        got = model(x, swaa_prompt_lengths=torch.tensor([24])).logits
    expected = eager_logits(model, x, hand_mask(36, 5, 1, prompt_len=24, fa_decode=True))
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("keep_first", [2, 25])  # 25: row b's prompt is shorter, its sinks grow while decoding
def test_left_padded_batch_matches_single_sequences(keep_first):
    model = build_tiny_model("llama")
    model.generation_config.pad_token_id = 0
    a, b = ids(30, seed=6)[0], ids(21, seed=7)[0]
    batch, mask = left_padded(a, b)
    cfg = SWAAConfig(sliding_window_size=5, keep_first=keep_first)
    with swaa(model, cfg):
        out = model.generate(batch, attention_mask=mask, max_new_tokens=8, do_sample=False)
        alone_a = model.generate(a[None], max_new_tokens=8, do_sample=False)
        alone_b = model.generate(b[None], max_new_tokens=8, do_sample=False)
    assert torch.equal(out[0, 30:], alone_a[0, 30:])
    assert torch.equal(out[1, 30:], alone_b[0, 21:])


def test_chunked_prefill_equals_one_shot():
    model = build_tiny_model("mistral")
    x = ids(48, seed=8)
    cfg = SWAAConfig(sliding_window_size=7, keep_first=2)
    with swaa(model, cfg):
        whole = model(x).logits
        first = model(x[:, :20], use_cache=True)
        second = model(x[:, 20:], past_key_values=first.past_key_values, use_cache=True)
    assert torch.allclose(torch.cat([first.logits, second.logits], 1), whole, atol=1e-5)


def test_sliding_layers_keep_bounded_kv_cache():
    model = build_tiny_model("llama", layers=4)
    x = ids(50)
    window, sinks = 6, 3
    cfg = SWAAConfig(sliding_window_size=window, keep_first=sinks, non_sliding_layers=[1], force_fa_decode=[2])
    with swaa(model, cfg):
        out = model.generate(x, max_new_tokens=30, do_sample=False, return_dict_in_generate=True)
    per_token = 2 * 2 * 8 * 4  # keys+values x kv heads x head dim x float32 bytes
    seen = out.sequences.shape[1] - 1  # the last generated token was never fed back
    held = [b // per_token for b in kv_cache_bytes(out.past_key_values)]
    assert held == [sinks + window, seen, seen, sinks + window]  # a sliding layer: sinks + a ring of W slots


def eager_attentions(model, input_ids, mask4d, layer_idx):
    model.set_attn_implementation("eager")
    try:
        return model(input_ids=input_ids, attention_mask=mask4d, output_attentions=True).attentions[layer_idx][0]
    finally:
        model.set_attn_implementation("sdpa")


def test_capture_attention_equals_eager_attention_weights():
    model = build_tiny_model("llama")
    x = ids(30)
    upper = []
    attention_modules_of(model)[3].register_forward_hook(lambda *a: upper.append(1))
    full = capture_attention(model, x, layer_idx=2)
    slid = capture_attention(model, x, layer_idx=2, config=SWAAConfig(sliding_window_size=4, keep_first=2))
    assert full.shape == slid.shape == (4, 30, 30)
    assert torch.allclose(full, eager_attentions(model, x, hand_mask(30, None, 0), 2), atol=1e-6)
    assert torch.allclose(slid, eager_attentions(model, x, hand_mask(30, 4, 2), 2), atol=1e-6)
    assert full[:, 29, 10].min() > 0
    assert slid[:, 29, 10].max() == 0 and slid[:, 29, 1].min() > 0
    assert upper == [1, 1]  # only the two eager reference runs reached layer 3: capture stops at its layer
    assert model.config._attn_implementation == "sdpa"


def test_unsupported_architecture_is_named():
    import transformers as tf

    gpt2 = tf.GPT2LMHeadModel(tf.GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=50))
    with pytest.raises(SWAAConfigError, match="supported: Llama, Qwen2, Qwen3 \\(dense and MoE\\), Mistral, Gemma 3"):
        apply_swaa(gpt2, SWAAConfig(sliding_window_size=4))


def test_layer_index_out_of_range_is_explained():
    model = build_tiny_model("llama", layers=4)
    with pytest.raises(SWAAConfigError, match="this model has 4 layers"):
        apply_swaa(model, SWAAConfig(sliding_window_size=4, non_sliding_layers=[4]))


@pytest.mark.parametrize("fam", FAMILIES)
def test_every_family_generates_under_every_strategy(fam):
    model = build_tiny_model(fam)
    x = ids(25)
    for cfg in [
        SWAAConfig(sliding_window_size=4),
        SWAAConfig(sliding_window_size=4, keep_first=2, force_fa_decode=True, non_sliding_layers=[1, 3]),
    ]:
        with swaa(model, cfg):
            out = model.generate(x, max_new_tokens=6, min_new_tokens=6, do_sample=False)
        assert out.shape == (1, 31)


def test_qwen3_moe_matches_eager_hand_mask():
    import transformers as tf

    config = tf.Qwen3MoeConfig(
        vocab_size=97, hidden_size=32, intermediate_size=64, moe_intermediate_size=16, num_experts=4,
        num_experts_per_tok=2, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
    )  # fmt: skip
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = tf.Qwen3MoeForCausalLM(config).eval()
    x = ids(30)
    expected = eager_logits(model, x, hand_mask(30, 5, 2))
    with swaa(model, SWAAConfig(sliding_window_size=5, keep_first=2)):
        assert torch.allclose(model(x).logits, expected, atol=1e-5)


@pytest.mark.parametrize("keep_first", [0, 3])
def test_ring_wrapped_many_times_matches_teacher_forced_mask(keep_first):
    """5W generated tokens: the sliding layers' ring buffer wraps five times; every step's logits equal a
    teacher-forced eager run of the whole sequence with the hand-built mask, and the cache stays sinks + W."""
    model = build_tiny_model("llama", eos_token_id=None)
    window, prompt_len, new = 6, 17, 30
    x = ids(prompt_len, seed=9)
    with swaa(model, SWAAConfig(sliding_window_size=window, keep_first=keep_first)):
        out = model.generate(x, max_new_tokens=new, do_sample=False, return_dict_in_generate=True, output_logits=True)
    n = out.sequences.shape[1]
    teacher = eager_logits(model, out.sequences, hand_mask(n, window, keep_first))[0, prompt_len - 1 : n - 1]
    stepped = torch.cat(out.logits)
    assert torch.allclose(stepped, teacher, atol=1e-5), (stepped - teacher).abs().max()
    assert torch.equal(teacher.argmax(-1), out.sequences[0, prompt_len:])
    per_token = 2 * 2 * 8 * 4
    assert kv_cache_bytes(out.past_key_values) == [(keep_first + window) * per_token] * 4


MIXED = SWAAConfig(sliding_window_size=4, keep_first=2, force_fa_decode=[1], non_sliding_layers=[2])
GEMMA_LAYERS = dict(layer_types=["sliding_attention", "full_attention"] * 3)


@pytest.mark.parametrize(
    "family, overrides, config, per_step",
    [
        ("qwen3", {}, MIXED, 3),  # evicting layers 0 and 3, an FA-decode layer, a full layer
        # one kind of layer, but transformers hands Gemma 3's sliding and full layers a mask each: two builds, not six
        ("gemma3", GEMMA_LAYERS, SWAAConfig(sliding_window_size=4, keep_first=2), 2),
    ],
)
def test_a_padded_decode_step_builds_each_kind_of_layer_mask_once(family, overrides, config, per_step, monkeypatch):
    """A padded batch's decode step needs a mask; layers of one kind (same held slots, rule and full queries) share it
    within a forward, so it is built once per kind, and nothing of it outlives generate. The tokens stay those of the
    single sequences (test below)."""
    import swaa_core.engine.attention as attention

    built = []
    real = attention.materialize
    monkeypatch.setattr(attention, "materialize", lambda g: built.append(g.kind) or real(g))
    model = build_tiny_model(family, layers=len(overrides.get("layer_types", "1234")), eos_token_id=None, **overrides)
    a, b = ids(19, seed=10)[0], ids(11, seed=11)[0]
    batch, mask = left_padded(a, b)
    with swaa(model, config):
        model.generate(batch, attention_mask=mask, max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0)
        context = model._swaa_state.context
        assert context.masks_for == () and context.decode_masks == {}
    assert len(built) == 5 * per_step  # 5 decode steps after the prefill


def test_padded_batch_matches_single_sequences_after_wrapping():
    model = build_tiny_model("qwen3", eos_token_id=None)
    model.generation_config.pad_token_id = 0
    a, b = ids(19, seed=10)[0], ids(11, seed=11)[0]
    batch, mask = left_padded(a, b)
    cfg = SWAAConfig(sliding_window_size=4, keep_first=2, force_fa_decode=[1], non_sliding_layers=[2])
    kw = dict(max_new_tokens=20, do_sample=False)
    with swaa(model, cfg):
        out = model.generate(batch, attention_mask=mask, **kw)
        alone_a = model.generate(a[None], **kw)
        alone_b = model.generate(b[None], **kw)
    assert torch.equal(out[0, 19:], alone_a[0, 19:])
    assert torch.equal(out[1, 19:], alone_b[0, 11:])


# ---------------------------------------------------------------- training on a cached prefix
def _chunk_loss_and_grads(model, tokens, split, *, cache: bool):
    """Loss of the tokens after ``split`` and the gradients of every weight: with the prefix in a DynamicCache
    (filled without gradients), or as one sequence whose prefix labels are ignored."""
    from transformers import DynamicCache

    model.zero_grad()
    if cache:
        past = DynamicCache(config=model.config)
        with torch.no_grad():
            model(tokens[:, :split], past_key_values=past, use_cache=True)
        loss = model(tokens[:, split:], labels=tokens[:, split:], past_key_values=past, use_cache=True).loss
    else:
        labels = tokens.clone()
        labels[:, : split + 1] = -100  # the chunk's first token has nothing before it inside the chunk
        loss = model(tokens, labels=labels).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_a_cached_prefix_counts_in_training_and_checkpointing_refuses_it():
    """Reference: the same model over the whole sequence (loss), the same computation without checkpointing
    (gradients). transformers' checkpointed layers drop the cache in train mode: that is refused by name."""
    model = build_tiny_model("llama", layers=2, seed=3).train()
    tokens = ids(40, seed=5)
    with swaa(model, SWAAConfig(sliding_window_size=8, keep_first=2)):
        loss, _grads = _chunk_loss_and_grads(model, tokens, 24, cache=True)
        whole, _ = _chunk_loss_and_grads(model, tokens, 24, cache=False)
        assert torch.allclose(loss, whole, atol=1e-5)  # the prefix is there
        plain_loss, plain_grads = _chunk_loss_and_grads(model, tokens, 24, cache=False)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        with pytest.raises(ValueError, match="gradient checkpointing on"):
            _chunk_loss_and_grads(model, tokens, 24, cache=True)
        ckpt_loss, ckpt_grads = _chunk_loss_and_grads(model, tokens, 24, cache=False)  # no cache: trains as before
        assert torch.allclose(ckpt_loss, plain_loss, atol=1e-6) and ckpt_grads.keys() == plain_grads.keys()
        assert all(torch.allclose(ckpt_grads[n], plain_grads[n], atol=1e-6) for n in plain_grads)
        model.gradient_checkpointing_disable()
        assert torch.allclose(_chunk_loss_and_grads(model, tokens, 24, cache=True)[0], whole, atol=1e-5)
