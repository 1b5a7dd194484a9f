"""Every path that builds attention through ``attention.geometry`` against the float64 reference of
helpers/float64_reference.py (SWAA.md's mask rule), and that reference against transformers' own forward where a layer
runs the model's own window."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers.float64_reference import (
    _REF,
    CONFIGS,
    FAMILIES,
    MASKS,
    T,
    _close,
    assert_decode_matches,
    gen_positions,
    generated,
    make_ids,
    make_mask,
    model_for,
    ref_forward,
    reference_model,
    then_real,
)

from swaa_core import SWAAConfig, apply_swaa, capture_attention


# ----------------------------------------------------------------------------------------------------- eager prefill
@pytest.mark.parametrize("backend", ["reference", "blocked"])
@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("cfg_name", list(CONFIGS))
@pytest.mark.parametrize("family", list(FAMILIES))
def test_prefill_matches_float64_reference(family, cfg_name, mask_kind, backend):
    model = model_for(family)
    cfg = CONFIGS[cfg_name]
    ref = reference_model(model)
    ids, mask = make_ids(), make_mask(mask_kind)
    pos = gen_positions(mask)
    apply_swaa(model, cfg, backend=backend)
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=None if mask_kind == "none" else mask, position_ids=pos).logits
    want = ref_forward(ref, cfg, ids, mask, position_ids=pos).logits
    _close(got, want, mask, f"{family} {cfg_name} {mask_kind} {backend}")


# ----------------------------------------------------------------------------------------------------- native reference
@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("family", ["gemma3", "mistral", "qwen2"])
def test_reference_equals_transformers_own_window(family, mask_kind):
    """The reference's native rule (slots) is transformers' own sdpa forward (checks the reference itself)."""
    model = model_for(family)
    ref = reference_model(model)
    ids, mask = make_ids(), make_mask(mask_kind)
    pos = gen_positions(mask)
    model.set_attn_implementation("sdpa")  # eager gives NaN rows after fully masked pad queries
    with torch.no_grad():
        own = model.double()(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    want = ref_forward(ref, None, ids, mask, position_ids=pos).logits
    _close(own, want, mask, f"reference vs transformers {family} {mask_kind}")


# ----------------------------------------------------------------------------------------------------- decode paths
@pytest.mark.parametrize("path", ["dynamic", "static", "batch", "row"])
@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("cfg_name", list(CONFIGS))
@pytest.mark.parametrize("family", list(FAMILIES))
def test_decode_matches_float64_reference(family, cfg_name, mask_kind, path):
    model = model_for(family)
    cfg = CONFIGS[cfg_name]
    ref = reference_model(model)
    ids, mask = make_ids(), make_mask(mask_kind)
    apply_swaa(model, cfg, backend="auto")
    if path == "row" and mask_kind in ("holes", "both"):
        with pytest.raises(ValueError, match="prefill='row' takes prompts padded on the left only"):
            generated(model, ids, mask, path)
        return
    out = generated(model, ids, mask, path)
    assert_decode_matches(ref, cfg, out, then_real(mask, out.sequences), f"{family} {cfg_name} {mask_kind} {path}")


# ----------------------------------------------------------------------------------------------------- holes + eviction
@pytest.mark.parametrize("keep_first", [0, 2])
@pytest.mark.parametrize("path", ["dynamic", "static", "batch"])
def test_evicting_window_across_holes_inside_the_prompt(path, keep_first):
    """A sliding SWAA layer without FA decode keeps a ring of W cache slots, but its window counts W *real* positions:
    with masked tokens inside the prompt the window of a decode query reaches further back than W slots, to keys
    the ring already dropped (prefill, which sees every key, matches the reference)."""
    model = model_for("llama")
    cfg = SWAAConfig(sliding_window_size=10, keep_first=keep_first)
    ref = reference_model(model)
    ids = make_ids(2)
    mask = torch.ones_like(ids)
    mask[1, [13, 15, 17]] = 0  # three holes among the last 10 slots
    apply_swaa(model, cfg)
    out = generated(model, ids, mask, path)
    assert_decode_matches(ref, cfg, out, then_real(mask, out.sequences))


# ----------------------------------------------------------------------------------------------------- teacher forcing
def _right_padded_mask(kind):
    m = torch.ones(3, T, dtype=torch.long)
    m[1, -4:] = 0  # collate's right padding
    if kind == "holes":
        m[2, [6, 9]] = 0
    if kind == "left":
        m[2, :3] = 0
    return m


@pytest.mark.parametrize("backend", ["reference", "blocked"])
@pytest.mark.parametrize("mask_kind", ["none", "right", "holes", "left"])
@pytest.mark.parametrize("cfg_name", ["sw4fadec", "sw6falayers", "chunk4", "sw12k2", "sw5k2"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_teacher_forced_prompt_lengths_match_reference(family, cfg_name, mask_kind, backend):
    """answer_loglik / advisor / LoRA batches: swaa_prompt_lengths marks generated tokens in real positions."""
    model = model_for(family)
    cfg = CONFIGS[cfg_name]
    ref = reference_model(model)
    ids = make_ids()
    mask = torch.ones_like(ids) if mask_kind == "none" else _right_padded_mask(mask_kind)
    lengths = torch.tensor([12, 9, 14])
    apply_swaa(model, cfg, backend=backend)
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=mask, swaa_prompt_lengths=lengths, use_cache=False).logits
    want = ref_forward(ref, cfg, ids, mask, prompt_lengths=lengths).logits
    _close(got, want, mask, f"{family} {cfg_name} {mask_kind} {backend}")


# ----------------------------------------------------------------------------------------------------- attention maps
@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("cfg_name", ["full", "sw5k2", "chunk4", "sw12k2", "sw6falayers"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_capture_attention_matches_reference_probs(family, cfg_name, mask_kind):
    model = model_for(family)
    cfg = CONFIGS[cfg_name]
    ref = reference_model(model)
    ids, mask = make_ids(), make_mask(mask_kind)
    ids, mask = ids[[1, 0]], mask[[1, 0]]  # the padded / holed row first: capture_attention returns row 0
    ref_forward(ref, cfg, ids, mask)
    for layer in range(4):
        got = capture_attention(model, ids, layer, cfg, attention_mask=None if mask_kind == "none" else mask)
        want = _REF["probs"][layer][0]
        rows = mask[0].bool()
        diff = (got.double() - want)[:, rows].abs().max()
        assert float(diff) < 1e-5, f"layer {layer}: {float(diff):.3g}"


# ----------------------------------------------------------------------------------------------------- training
@pytest.mark.parametrize("mask_kind", ["right", "holes"])
@pytest.mark.parametrize("cfg_name", ["sw4fadec", "sw6falayers", "chunk4", "sw12k2"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_lora_gradients_match_float64_reference(family, cfg_name, mask_kind):
    from peft import LoraConfig, get_peft_model

    base = model_for(family)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj"]))
    for name, p in model.named_parameters():  # B = 0 at init would hide A's gradient
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1, generator=torch.Generator().manual_seed(hash(name) % 1000))
    ref = copy.deepcopy(model).double()
    ref.get_base_model().set_attn_implementation("float64_ref")
    cfg = CONFIGS[cfg_name]
    ids, mask = make_ids(), _right_padded_mask(mask_kind)
    lengths = torch.tensor([12, 9, 14])
    labels = ids.masked_fill(mask == 0, -100)
    labels[torch.arange(T)[None] < lengths[:, None]] = -100
    apply_swaa(model, cfg, backend="auto")
    model.train()
    model(input_ids=ids, attention_mask=mask, labels=labels, swaa_prompt_lengths=lengths).loss.backward()
    ref.train()
    _REF.clear()
    _REF.update(cfg=cfg, config=ref.config, mask=mask, prompt_lengths=lengths)
    ref(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    grads = dict(ref.named_parameters())
    worst = max(
        float((p.grad.double() - grads[n].grad).abs().max() / (grads[n].grad.abs().max() + 1e-12))
        for n, p in model.named_parameters()
        if p.requires_grad
    )
    assert worst < 1e-4, f"relative grad diff {worst:.3g}"


# ----------------------------------------------------------------------------------------------------- chunked prefill
@pytest.mark.parametrize("path", ["dynamic", "batch", "row"])
@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("cfg_name", ["full", "sw5k2", "sw4fadec", "chunk4", "sw12k2"])
@pytest.mark.parametrize("family", ["llama", "gemma3", "mistral"])
def test_chunked_prefill_matches_reference(family, cfg_name, mask_kind, path):
    model = model_for(family)
    cfg = CONFIGS[cfg_name]
    ref = reference_model(model)
    ids, mask = make_ids(), make_mask(mask_kind)
    apply_swaa(model, cfg)
    if path == "row" and mask_kind in ("holes", "both"):
        with pytest.raises(ValueError, match="prefill='row' takes prompts padded on the left only"):
            generated(model, ids, mask, path, prefill_chunk_size=6)
        return
    out = generated(model, ids, mask, path, prefill_chunk_size=6)
    assert_decode_matches(ref, cfg, out, then_real(mask, out.sequences))


def test_pad_token_inside_a_prompt_without_a_mask_reaches_the_ring():
    """The same divergence from plain user input: generate infers a mask with holes where the prompt holds the pad
    id (no attention_mask given), and a sliding SWAA layer's ring drops keys its window still covers."""
    model = model_for("llama")
    cfg = SWAAConfig(sliding_window_size=10)
    ref = reference_model(model)
    ids = make_ids(1)
    ids[0, [13, 15, 17]] = 0  # the pad id, inside the prompt
    apply_swaa(model, cfg)
    out = generated(model, ids, None, "dynamic")
    assert_decode_matches(ref, cfg, out, then_real((ids != 0).long(), out.sequences), "per-step max diff")
