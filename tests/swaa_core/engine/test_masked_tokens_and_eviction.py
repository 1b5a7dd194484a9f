"""Tokens masked inside a prompt and evicting layers (from a review, 2026-12-06): holes arriving in a one-token forward,
after a prefill that did not evict, or in a later chunk after the ring dropped keys (note_mask's argument that those
keys are never needed, under stress); a switch from the model's own window to a narrower one over holes is refused;
the question costs no device read of its own. Expected values from the float64 reference of
helpers/float64_reference.py."""

from __future__ import annotations

import itertools

import helpers.float64_reference as f64
import pytest
import torch

from swaa_core import SWAAConfig, apply_swaa

T, NEW = f64.T, f64.NEW


# A hole that arrives in a forward of ONE token (once never noted: only prompt forwards asked). Driven by
# hand with explicit real positions (transformers' generate gives positions 1, 2, ... after a right-padded prompt, which
# no reference reproduces): 19 prompt tokens as one chunk, then one masked token (a one-token last chunk, or a caller's
# masked filler), then decode steps. Without chunking (the 20 tokens in one forward) the same sequence is right.
def _manual(model, ids, mask, split):
    from transformers import DynamicCache

    cache, logits = DynamicCache(), []
    pos = f64.gen_positions(mask)
    cuts = [0, split, T] if split else [0, T]
    seq, full = ids, mask
    with torch.no_grad():
        for a, b in zip(cuts, cuts[1:], strict=False):
            out = model(
                input_ids=ids[:, a:b],
                attention_mask=mask[:, :b],
                position_ids=pos[:, a:b],
                past_key_values=cache,
                use_cache=True,
            )
        for _ in range(NEW):
            logits.append(out.logits[:, -1])
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], 1)
            full = torch.cat([full, torch.ones_like(nxt)], 1)
            p = f64.gen_positions(full)[:, -1:]
            out = model(input_ids=nxt, attention_mask=full, position_ids=p, past_key_values=cache, use_cache=True)
    return seq, full, torch.stack(logits, 1), cache


@pytest.mark.parametrize("split", [None, T - 1])
def test_hole_in_a_one_token_forward_reaches_the_ring(split):
    model = f64.model_for("llama")
    cfg = SWAAConfig(sliding_window_size=10)
    ref = f64.reference_model(model)
    ids = f64.make_ids(2)
    mask = torch.ones_like(ids)
    mask[1, T - 1] = 0
    apply_swaa(model, cfg)
    seq, full, got, cache = _manual(model, ids, mask, split)
    want = f64.ref_forward(ref, cfg, seq, full, position_ids=f64.gen_positions(full)).logits
    diff = (got.double() - want[:, T - 1 : T - 1 + NEW]).abs().amax(-1)
    diff[1, 0] = 0  # the masked query's own output is undefined
    assert float(diff.max()) < f64.ATOL, f"per-row, per-step max diff {diff}; keeps_all {cache.layers[0].keeps_all}"


# note_mask's argument: a ring that already dropped keys, then holes in a later chunk. Windows 1-3, sinks, left padding.
CASES = list(itertools.product([1, 2, 3], [0, 1], [False, True], [4, 6], ["dynamic", "batch"]))


@pytest.mark.parametrize(("window", "sinks", "left", "chunk", "path"), CASES)
def test_holes_in_a_later_chunk_after_the_ring_dropped_keys(window, sinks, left, chunk, path):
    model = f64.model_for("llama")
    cfg = SWAAConfig(sliding_window_size=window, keep_first=sinks)
    ref = f64.reference_model(model)
    ids = f64.make_ids(3)
    mask = torch.ones_like(ids)
    if left:
        mask[1, :2] = 0
        mask[2, :1] = 0
    mask[1, [13, 14, 16]] = 0  # holes only in the last chunks, long after the ring formed
    mask[2, [12, 17, 18]] = 0
    apply_swaa(model, cfg)
    out = f64.generated(model, ids, mask, path, prefill_chunk_size=chunk)
    f64.assert_decode_matches(ref, cfg, out, f64.then_real(mask, out.sequences))


# A layer that ran the model's own window (counts slots: its ring holds N slots) continued under a narrower SWAA
# window (counts real tokens): holes among the held slots leave that window short of keys, so with holes the switch
# is refused (it once decoded silently wrong).
def _mixed_ref(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kw):
    R = f64._REF
    layer = module.layer_idx
    native = f64._native(R["config"], layer)
    a = f64.ref_mask(R["cfg"], layer, native, R["mask"])
    b = f64.ref_mask(R["cfg_after"], layer, native, R["mask"])
    slot = torch.arange(R["mask"].shape[1])
    m = torch.where((slot >= R["switch"])[None, :, None], b, a)[:, -query.shape[2] :, -key.shape[2] :]
    g = query.shape[1] // key.shape[1]
    s = (query.double() @ key.double().repeat_interleave(g, 1).transpose(-1, -2)) * (scaling or query.shape[-1] ** -0.5)
    p = torch.softmax(s.masked_fill(~m[:, None], float("-inf")), -1).nan_to_num(0.0)
    return (p @ value.double().repeat_interleave(g, 1)).transpose(1, 2).to(query.dtype), None


def _switch_reference(model):
    """The float64 reference of a run whose config changes at slot T (:func:`_mixed_ref`)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register("float64_switch", _mixed_ref)
    AttentionMaskInterface.register("float64_switch", lambda *a, **k: None)
    ref = f64.reference_model(model)
    ref.set_attn_implementation("float64_switch")
    return ref


def _step(model, cache, nxt, full):
    """One decode step of token ``nxt`` (B, 1) over the mask ``full`` (B, slots so far + 1)."""
    return model(input_ids=nxt, attention_mask=full, position_ids=f64.gen_positions(full)[:, -1:],
                 past_key_values=cache, use_cache=True)  # fmt: skip


def _prefill_then_decode(model, ids, mask, after, *, refused: str | None = None):
    """The prompt through ``model`` as it is configured, then ``after`` applied and NEW greedy steps: (sequences,
    full mask, (B, NEW, V) logits after each step). ``refused``: the first step must raise ValueError matching it."""
    from transformers import DynamicCache

    cache, logits, seq, full = DynamicCache(), [], ids, mask
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, position_ids=f64.gen_positions(mask), past_key_values=cache,
                    use_cache=True)  # fmt: skip
        apply_swaa(model, after)
        for _ in range(NEW):
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            seq, full = torch.cat([seq, nxt], 1), torch.cat([full, torch.ones_like(nxt)], 1)
            if refused:
                with pytest.raises(ValueError, match=refused):
                    _step(model, cache, nxt, full)
                return None
            out = _step(model, cache, nxt, full)
            logits.append(out.logits[:, -1])
    return seq, full, torch.stack(logits, 1)


def _assert_switch_matches(ref, before, after, seq, full, logits):
    f64._REF.clear()  # FA decode leaves prompt queries to its window: before's rule up to slot T, after's from it
    f64._REF.update(cfg=before, cfg_after=after, config=ref.config, mask=full, switch=T)
    with torch.no_grad():
        want = ref(input_ids=seq, attention_mask=full, position_ids=f64.gen_positions(full), use_cache=False).logits
    diff = (logits.double() - want[:, T : T + NEW]).abs().amax(-1)
    assert float(diff.max()) < f64.ATOL, f"per-row, per-step max diff {diff}"


@pytest.mark.parametrize("holes", [[], [14, 16, 17]])
def test_native_window_then_narrower_swaa_window_over_holes(holes):
    """Without holes the switch decodes as the reference; with them, it is refused by name (the keys the narrower
    window, counted in real tokens, needs may be gone)."""
    model = f64.model_for("mistral")  # every layer slides natively, N = 8
    before, after = SWAAConfig(sliding_window_size=12), SWAAConfig(sliding_window_size=5)  # keeps N; then narrows
    ref = _switch_reference(model)
    ids = f64.make_ids(2)
    mask = torch.ones_like(ids)
    mask[1, holes] = 0  # three holes among the last 8 slots ([]: the control, which passes)
    apply_swaa(model, before)
    if holes:
        _prefill_then_decode(model, ids, mask, after, refused="dropped keys under the model's own sliding window")
        return
    _assert_switch_matches(ref, before, after, *_prefill_then_decode(model, ids, mask, after))


# The same gap once came from any prefill whose plan did not evict: a cache filled without SWAA, or under FA decode,
# then continued by a sliding SWAA window without FA decode, formed its ring over the holes.
@pytest.mark.parametrize("before", ["no_swaa", "fa_decode"])
def test_non_evicting_prefill_then_evicting_decode_over_holes(before):
    model = f64.model_for("llama")
    after = SWAAConfig(sliding_window_size=10)
    cfg_before = None if before == "no_swaa" else SWAAConfig(sliding_window_size=10, force_fa_decode=True)
    ref = _switch_reference(model)
    ids = f64.make_ids(2)
    mask = torch.ones_like(ids)
    mask[1, [13, 15, 17]] = 0
    if cfg_before is None:
        model.set_attn_implementation("sdpa")
    else:
        apply_swaa(model, cfg_before)
    _assert_switch_matches(ref, cfg_before, after, *_prefill_then_decode(model, ids, mask, after))


# The holes question costs no device read of its own: swaa_mask answers it in the read it makes anyway (whether the
# mask is all ones), once per mask transformers builds per forward (Gemma 3 builds one for its sliding layers and one
# for its full layers), and the cache layers read the answer off the mask they are handed.
def test_the_holes_question_is_answered_in_swaa_masks_own_read(monkeypatch):
    import swaa_core.engine.attention as attention
    import swaa_core.engine.cache as cache

    reads, syncs = [], []
    real = cache.masked_inside_rows
    monkeypatch.setattr(attention, "masked_inside_rows", lambda m: reads.append(id(m)) or real(m))
    monkeypatch.setattr(cache, "masked_inside_rows", lambda m: syncs.append(id(m)) or real(m))
    model = f64.model_for("gemma3")
    apply_swaa(model, SWAAConfig(sliding_window_size=5, keep_first=2))
    ids = f64.make_ids(2)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding: the mask reaches the layers
    mask[1, 12] = 0  # and a hole, which every layer's cache must learn of
    from transformers import DynamicCache

    past = DynamicCache()
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask, past_key_values=past, use_cache=True)
    assert 1 <= len(reads) <= 2 and syncs == []  # one per mask built, none in the layers
    assert all(layer.holes for layer in past.layers)
