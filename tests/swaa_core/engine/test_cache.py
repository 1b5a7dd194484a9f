"""The SWAA cache layer against a plain set of slots: which tokens it holds after any mix of appends, roll-backs and
past recording, that every key it hands to attention is that token's own row, that it hands every key the rule says
the new queries need, and that its buffer never exceeds sinks + W slots once it evicts."""

from __future__ import annotations

import itertools
import pickle
from unittest import mock

import pytest
import torch
from helpers.tiny_models import build_tiny_model
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from swaa_core import SWAAConfig, kv_cache_bytes, swaa
from swaa_core.engine import cache as cache_module
from swaa_core.engine.attention import LayerPlan
from swaa_core.engine.cache import SWAACacheLayer, growing_cache
from swaa_core.engine.kinds import KINDS, SinkWindow

append = st.tuples(st.just("append"), st.sampled_from([1, 1, 1, 2, 5, 9]))
crop = st.tuples(st.just("crop"), st.integers(0, 5))
record = st.tuples(st.just("record"), st.booleans())


def rows(first: int, n: int, stamp: int = 0) -> torch.Tensor:
    """(1, 2, n, 3) keys whose every entry is the token's slot number, so a held row names itself; head 0's middle
    feature is ``stamp`` (which write it came from: a slot written again after a roll-back gets another)."""
    out = torch.arange(first, first + n, dtype=torch.float32).view(1, 1, n, 1).expand(1, 2, n, 3).clone()
    out[0, 0, :, 1] = stamp
    return out


def live_slots(layer: SWAACacheLayer, keys: torch.Tensor) -> list[int]:
    slots, live = layer.view.slots("cpu")
    assert slots.numel() == keys.shape[2]
    keep = torch.ones_like(slots, dtype=torch.bool) if live is None else live
    assert keys[0, 1, keep, 2].tolist() == slots[keep].tolist(), "a key row is not its slot's own"
    assert (-layer.values[0, 0, :, 0] == layer.keys[0, 0, :, 0]).all()
    return slots[keep].tolist()


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 6),
    st.integers(0, 4),
    st.lists(st.one_of(append, crop, record), min_size=1, max_size=30),
    st.sampled_from(["evicting", "FA decode", "full"]),
    st.sampled_from([(1, 1), (3, 4), (256, 256)]),
    st.sampled_from(list(KINDS.values())),
)
def test_cache_holds_exactly_what_the_rules_say(window, sinks, ops, kind, room, mask):
    """Also for the layers that never evict (FA decode, full), which grow in place into spare room: a handed-out
    view must keep its rows whatever the layer does next (appends, roll-backs), with any amount of room (spare slots,
    buffers rounded up to a multiple of the bucket). For every mask kind (``window``: its size, W or C): an evicting
    layer keeps sinks + the newest ``window`` slots."""
    spare, bucket = room
    with (
        mock.patch.object(cache_module, "SPARE_SLOTS", spare),
        mock.patch.object(cache_module, "KEY_BUCKET", bucket),
        torch.no_grad(),  # as generate runs
    ):
        check_cache_against_slots(window, sinks, ops, kind, mask)


def sees(q: int, s: int, mask, window: int, sinks: int) -> bool:
    """Key slot s <= q seen by the query at slot q (no padding), spelled out per kind."""
    own = q - s < window if mask is SinkWindow else s // window == q // window
    return s < sinks or own


def check_cache_against_slots(window, sinks, ops, kind, mask=SinkWindow):
    plan = LayerPlan(0, None if kind == "full" else mask(window, sinks), kind == "FA decode", "reference")
    layer, held, total, recording = SWAACacheLayer(0), set(), 0, False
    handed_out = []  # (keys returned by a non-evicting layer, a copy taken then)

    def compact(slots, total):
        if recording or total <= sinks + window or not plan.evicts:
            return slots
        return {s for s in slots if s < sinks or s >= total - window}

    for step, (op, arg) in enumerate(ops):
        if op == "append":
            layer.bind(plan, None, 0)
            keys, _ = layer.update(rows(total, arg, step), -rows(total, arg, step))
            seen = held | set(range(total, total + arg))
            total += arg
            got = live_slots(layer, keys)
            if not plan.evicts:
                handed_out.append((keys, keys.clone()))
            for view, then in handed_out:
                assert torch.equal(view, then), "a later step overwrote rows of a view handed out before"
            needed = {s for q in range(total - arg, total) for s in range(q + 1) if sees(q, s, mask, window, sinks)}
            assert needed <= set(got) <= seen
            held = compact(seen, total)
        elif op == "crop" and total:
            new_total = max(0, total - arg)
            needed = set(range(min(sinks, new_total))) | set(range(max(0, new_total - window + 1), new_total))
            if not needed <= held:
                with pytest.raises(ValueError, match="already dropped"):
                    layer.crop(-arg)
                continue
            layer.crop(-arg)
            total = new_total
            held = {s for s in held if s < total}
            if plan.evicts and total > sinks + window:  # crop also shrinks a recording layer to sinks + W
                held = {s for s in held if s < sinks or s >= total - window}
        elif op == "record":
            recording = arg
            if arg:
                layer.activate_past_recording()
            else:
                layer.record_past = False
        if not layer.is_initialized:
            continue
        assert layer.get_seq_length() == total
        if layer.ring:
            assert layer.keys.shape[2] == sinks + window
            slots, live = layer.view.slots("cpu") if layer.view.ring else (None, None)
            stored = {s for s in range(total) if s < sinks or layer.lo <= s}
            assert stored == held
        else:
            assert layer.keys.shape[2] == len(held)
            assert set(layer.keys[0, 1, :, 2].tolist()) == held


@torch.no_grad()  # as generate runs: with gradients on, a step copies (tested below)
def test_decode_steps_write_in_place_without_reading_the_device():
    """Once the ring exists, a one-token step writes into the same buffer and returns all of it."""
    plan = LayerPlan(0, SinkWindow(4, 2), False, "reference")
    layer = SWAACacheLayer(0)
    layer.bind(plan, None, 0)
    layer.update(rows(0, 10), -rows(0, 10))
    buffer = layer.keys
    for t in range(10, 30):
        layer.bind(plan, None, 0)
        keys, _ = layer.update(rows(t, 1), -rows(t, 1))
        assert keys is buffer and keys.shape[2] == 6
        assert sorted(keys[0, 0, :, 0].tolist()) == [0, 1, *range(t - 3, t + 1)]
        assert layer.view.in_window(SinkWindow(4, 2))


@pytest.mark.parametrize("kind", ["FA decode", "full"])
@torch.no_grad()  # as generate runs: with gradients on, keys are concatenated (tested below)
def test_growing_layers_copy_their_cache_once_per_spare_slots(kind, monkeypatch):
    """A non-evicting layer's decode step writes one row into spare room; the cache is copied only when the room runs
    out (transformers' DynamicLayer copies all of it at every step)."""
    monkeypatch.setattr(cache_module, "SPARE_SLOTS", 8)
    monkeypatch.setattr(cache_module, "KEY_BUCKET", 4)
    plan = LayerPlan(0, None if kind == "full" else SinkWindow(4, 2), kind == "FA decode", "reference")
    layer = SWAACacheLayer(0)
    layer.bind(plan, None, 0)
    layer.update(rows(0, 10), -rows(0, 10))
    storages = [layer.keys.untyped_storage().data_ptr()]
    for t in range(10, 40):
        layer.bind(plan, None, 0)
        keys, values = layer.update(rows(t, 1), -rows(t, 1))
        assert keys[0, 1, :, 0].tolist() == list(range(t + 1)) and torch.equal(values, -keys)
        storages.append(keys.untyped_storage().data_ptr())
    moves = [t for t, (a, b) in enumerate(itertools.pairwise(storages), 10) if a != b]
    # 10 + 8 slots rounded up to a multiple of 4: 20 fit; the step at slot 20 moves to 21 + 8 -> 32, and so on
    assert moves == [20, 32]


@pytest.fixture
def fresh_memory_is_nan():
    """Uninitialised tensors filled with NaN (torch's deterministic mode), so room nobody filled shows."""
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    assert torch.empty(4).isnan().all(), "this torch does not fill uninitialised memory: the test would prove nothing"
    yield
    torch.use_deterministic_algorithms(was)


@pytest.mark.parametrize("kind", ["FA decode", "full"])
@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_growing_layers_hand_out_keys_with_finite_room_to_the_next_bucket(kind, mode, monkeypatch, fresh_memory_is_nan):
    """A masked decode step on CUDA reads a growing layer's keys and values up to the next multiple of KEY_BUCKET
    slots, masked out past the real ones (cuDNN then builds one graph per bucket): every slot it reads must be
    finite, since a masked-out NaN value still poisons probabilities @ values. Through room refills and roll-backs,
    and under inference mode, whose views do not record their base."""
    monkeypatch.setattr(cache_module, "SPARE_SLOTS", 3)
    monkeypatch.setattr(cache_module, "KEY_BUCKET", 4)
    plan = LayerPlan(0, None if kind == "full" else SinkWindow(4, 2), kind == "FA decode", "reference")
    layer = SWAACacheLayer(0)
    total, buffers = 0, set()
    with mode():
        for n in [10, *[1] * 12, "crop", 1, 1, 5, *[1] * 6]:
            if n == "crop":
                layer.crop(-4)
                total -= 4
                continue
            layer.bind(plan, None, 0)
            keys, values = layer.update(rows(total, n), -rows(total, n))
            total += n
            slots = -(-total // 4) * 4
            room = layer.room(keys, values, slots)
            assert room is not None
            k_room, v_room = room
            assert torch.equal(k_room[:, :, :total], keys) and torch.equal(v_room[:, :, :total], values)
            assert torch.isfinite(k_room).all() and torch.isfinite(v_room).all()
            assert layer.capacity % 4 == 0 and layer.room(keys, values, layer.capacity + 1) is None
            buffers.add(k_room.untyped_storage().data_ptr())
    assert len(buffers) >= 4  # the room ran out and was refilled, the roll-back copied: each new buffer was checked


@torch.no_grad()
def test_room_is_only_for_the_keys_the_layer_handed_out_last():
    layer = SWAACacheLayer(0)
    keys, values = layer.update(rows(0, 5), -rows(0, 5))
    assert layer.room(keys, values, layer.capacity) is not None
    assert layer.room(keys.clone(), values, 8) is None  # a copy (reordered for beams, offloaded, ...)
    assert layer.room(keys[:, :, :3], values[:, :, :3], 8) is None  # a cropped view
    later_keys, later_values = layer.update(rows(5, 1), -rows(5, 1))
    assert layer.room(keys, values, 8) is None  # an earlier step's views
    assert layer.room(later_keys, later_values, 8) is not None


@pytest.mark.parametrize("config", [None, SWAAConfig(sliding_window_size=6, keep_first=2, force_fa_decode=True)])
def test_growing_cache_generates_under_inference_mode_as_transformers_cache_does(config, monkeypatch):
    """Under ``torch.inference_mode`` views do not record their base: a layer that found its buffer through
    ``view._base`` failed at the second decode step. Room refills every other step."""
    monkeypatch.setattr(cache_module, "SPARE_SLOTS", 2)
    model = build_tiny_model("llama", layers=2, eos_token_id=None)
    ids = torch.randint(3, 97, (2, 11), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # a padded row: the masked decode step too
    kwargs = dict(attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=0)
    with swaa(model, config), torch.inference_mode():
        grown = model.generate(ids, past_key_values=growing_cache(model), **kwargs)
        plain = model.generate(ids, **kwargs)
    assert torch.equal(grown, plain)


@pytest.mark.parametrize(
    "config",
    [
        None,
        SWAAConfig(sliding_window_size=6, keep_first=2),
        SWAAConfig(sliding_window_size=6, keep_first=2, force_fa_decode=True),
    ],
)
def test_a_prompt_prefilled_under_inference_mode_decodes_outside_it(config, monkeypatch):
    """Tensors made under ``torch.inference_mode`` may not be written in place outside it, which transformers'
    concatenating cache never does: a prompt prefilled there, then decoded under ``no_grad``, must give the logits of
    a run under ``no_grad`` throughout (the ring, the growing layers' room, without SWAA too)."""
    monkeypatch.setattr(cache_module, "SPARE_SLOTS", 2)
    model = build_tiny_model("llama", layers=2, eos_token_id=None)
    ids = torch.randint(3, 97, (1, 40), generator=torch.Generator().manual_seed(2))
    runs = []
    for prefill_mode in (torch.inference_mode, torch.no_grad):
        with swaa(model, config):
            cache = growing_cache(model)
            with prefill_mode():
                out = model(ids, past_key_values=cache, use_cache=True)
            logits = [out.logits[:, -1]]
            with torch.no_grad():
                for _ in range(8):
                    out = model(logits[-1].argmax(-1, keepdim=True), past_key_values=cache, use_cache=True)
                    logits.append(out.logits[:, -1])
        runs.append(torch.stack(logits))
    assert torch.allclose(runs[0], runs[1], atol=1e-6)


@pytest.mark.parametrize("family", ["llama", "gemma3"])
@pytest.mark.parametrize("config", [None, SWAAConfig(sliding_window_size=6, keep_first=2, force_fa_decode=True)])
def test_growing_cache_generates_exactly_what_transformers_cache_does(family, config, monkeypatch):
    """The cache every timed column runs on: with or without SWAA, greedy tokens, their scores and the KV bytes equal
    those of transformers' own cache over many room refills; layers the model slides natively stay transformers'."""
    monkeypatch.setattr(cache_module, "SPARE_SLOTS", 5)
    monkeypatch.setattr(cache_module, "KEY_BUCKET", 2)  # buffers rounded up too, their room zeroed
    model = build_tiny_model(family, layers=6)  # Gemma 3: five local layers, then a global one
    ids = torch.randint(3, 97, (1, 23), generator=torch.Generator().manual_seed(1))
    kwargs = dict(attention_mask=torch.ones_like(ids), max_new_tokens=30, min_new_tokens=30, do_sample=False)
    kwargs.update(return_dict_in_generate=True, output_scores=True, pad_token_id=0)
    with swaa(model, config):
        plain = model.generate(ids, **kwargs)
        cache = growing_cache(model)
        grown = model.generate(ids, past_key_values=cache, **kwargs)
    assert torch.equal(grown.sequences, plain.sequences)
    assert all(torch.equal(a, b) for a, b in zip(grown.scores, plain.scores, strict=True))
    assert kv_cache_bytes(grown.past_key_values) == kv_cache_bytes(plain.past_key_values)
    kinds = {type(layer).__name__ for layer in cache.layers}
    native_sliding_kept = family == "gemma3" and config is None  # under SWAA its own layers replace them all
    assert kinds == ({"SWAACacheLayer", "DynamicSlidingWindowLayer"} if native_sliding_kept else {"SWAACacheLayer"})


def decode_with_loss(model, ids: torch.Tensor, cache) -> list[torch.Tensor]:
    """Prefill then one-token steps on ``cache`` with gradients on, one loss over every step: q_proj's gradients."""
    model.zero_grad()
    out = model(ids[:, :7], past_key_values=cache, use_cache=True)
    loss = out.logits.sum()
    for t in range(7, ids.shape[1]):
        out = model(ids[:, t : t + 1], past_key_values=out.past_key_values, use_cache=True)
        loss = loss + out.logits.sum()
    loss.backward()
    return [layer.self_attn.q_proj.weight.grad.clone() for layer in model.model.layers]


def test_growing_cache_backpropagates_through_decode_steps_like_transformers_cache(monkeypatch):
    """Training only the queries (keys and values need no gradient): attention saved the keys of every step for the
    backward pass, so a later step must not write into their buffer."""
    monkeypatch.setattr(cache_module, "SPARE_SLOTS", 4)
    monkeypatch.setattr(cache_module, "KEY_BUCKET", 2)  # buffers rounded up too, their room zeroed
    model = build_tiny_model("llama", layers=2)
    model.requires_grad_(False)
    for layer in model.model.layers:
        layer.self_attn.q_proj.weight.requires_grad_(True)
    ids = torch.randint(3, 97, (1, 11), generator=torch.Generator().manual_seed(0))
    expected = decode_with_loss(model, ids, DynamicCache(config=model.config))
    got = decode_with_loss(model, ids, growing_cache(model))
    assert all(torch.allclose(a, b) for a, b in zip(got, expected, strict=True))


def test_ring_backpropagates_through_decode_steps_like_one_forward():
    """Evicting layers without FA decode: a decode step sees what the same token sees in one forward over the whole
    sequence, so both give the same gradients; the ring's one-row writes must not touch keys saved for backward."""
    model = build_tiny_model("llama", layers=2)
    model.requires_grad_(False)
    for layer in model.model.layers:
        layer.self_attn.q_proj.weight.requires_grad_(True)
    ids = torch.randint(3, 97, (1, 16), generator=torch.Generator().manual_seed(0))
    with swaa(model, SWAAConfig(sliding_window_size=4, keep_first=1)):
        model.zero_grad()
        model(ids, use_cache=False).logits.sum().backward()
        expected = [layer.self_attn.q_proj.weight.grad.clone() for layer in model.model.layers]
        cache = DynamicCache(config=model.config)
        got = decode_with_loss(model, ids, cache)
    assert cache.layers[0].ring, "the decode steps did not reach the ring"
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(got, expected, strict=True))


def test_growing_cache_pickles_and_continues_like_transformers_cache():
    """torch.save / pickle of a filled cache (a weak reference cannot be pickled); the loaded copy continues exactly
    as transformers' cache does."""
    model = build_tiny_model("llama", layers=2)
    ids = torch.randint(3, 97, (1, 12), generator=torch.Generator().manual_seed(0))
    logits = []
    with torch.no_grad():
        for cache in (growing_cache(model), DynamicCache(config=model.config)):
            model(ids[:, :-1], past_key_values=cache, use_cache=True)
            loaded = pickle.loads(pickle.dumps(cache))
            assert kv_cache_bytes(loaded) == kv_cache_bytes(cache)
            logits.append(model(ids[:, -1:], past_key_values=loaded, use_cache=True).logits)
    assert torch.equal(logits[0], logits[1])


def test_growing_cache_under_autocast_holds_the_dtypes_transformers_cache_holds(monkeypatch):
    """Under autocast keys arrive in float32 (rotary) and values in bfloat16: transformers' cache concatenates both
    onto an empty tensor of the keys' dtype, so it holds float32 values; the growing cache must hold the same."""
    monkeypatch.setattr(cache_module, "SPARE_SLOTS", 3)
    monkeypatch.setattr(cache_module, "KEY_BUCKET", 2)  # buffers rounded up too, their room zeroed
    model = build_tiny_model("llama", layers=2, eos_token_id=None)
    ids = torch.randint(3, 97, (2, 12), generator=torch.Generator().manual_seed(1))
    kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=0, return_dict_in_generate=True, output_scores=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        grown = model.generate(ids, past_key_values=growing_cache(model), **kwargs)
        plain = model.generate(ids, **kwargs)
    assert torch.equal(grown.sequences, plain.sequences)
    assert all(torch.equal(a, b) for a, b in zip(grown.scores, plain.scores, strict=True))
    dtypes = [
        [(layer.keys.dtype, layer.values.dtype) for layer in out.past_key_values.layers] for out in (grown, plain)
    ]
    assert dtypes[0] == dtypes[1]
    assert kv_cache_bytes(grown.past_key_values) == kv_cache_bytes(plain.past_key_values)


REORDERING_MODES = {  # generate kwargs whose cache is reordered (beams), repeated (several sequences) or cropped
    "beams": dict(num_beams=3, num_return_sequences=2, do_sample=False),
    "sampled sequences": dict(do_sample=True, num_return_sequences=3, top_k=0),
    "prompt lookup": dict(do_sample=False, prompt_lookup_num_tokens=3),
    "assistant": dict(do_sample=False),
}


@pytest.mark.parametrize("mode", REORDERING_MODES)
@pytest.mark.parametrize("config", [None, SWAAConfig(sliding_window_size=8, keep_first=2, force_fa_decode=True)])
def test_growing_cache_follows_transformers_cache_through_reorders_and_rollbacks(mode, config, monkeypatch):
    """Room refilled every other step while generate reorders, repeats or crops the keys from outside: tokens,
    scores and KV bytes equal those of transformers' cache."""
    monkeypatch.setattr(cache_module, "SPARE_SLOTS", 2)
    monkeypatch.setattr(cache_module, "KEY_BUCKET", 2)  # buffers rounded up too, their room zeroed
    model = build_tiny_model("llama", layers=3, eos_token_id=None)
    ids = torch.randint(3, 97, (1, 13), generator=torch.Generator().manual_seed(1))
    kwargs = dict(max_new_tokens=16, pad_token_id=0, return_dict_in_generate=True, output_scores=True)
    if mode == "assistant":
        kwargs["assistant_model"] = build_tiny_model("llama", layers=1, seed=5, eos_token_id=None)
    outs = []
    with swaa(model, config):
        for cache in (growing_cache(model), None):
            torch.manual_seed(0)
            outs.append(model.generate(ids, past_key_values=cache, **REORDERING_MODES[mode], **kwargs))
    grown, plain = outs
    assert torch.equal(grown.sequences, plain.sequences)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grown.scores, plain.scores, strict=True))
    assert kv_cache_bytes(grown.past_key_values) == kv_cache_bytes(plain.past_key_values)


@pytest.mark.parametrize("kind", ["evicting", "FA decode", "full"])
def test_a_batch_the_cache_does_not_hold_is_refused_as_transformers_cache_refuses_it(kind):
    """Writing in place, one row would be broadcast into every held row without a word; concatenation fails."""
    plan = LayerPlan(0, None if kind == "full" else SinkWindow(4, 2), kind == "FA decode", "reference")
    ours, theirs = SWAACacheLayer(0), DynamicLayer()
    two = torch.cat([rows(0, 10), rows(0, 10)])
    ours.bind(plan, None, 0)
    with torch.no_grad():
        ours.update(two, -two)
        theirs.update(two, -two)
    with pytest.raises(RuntimeError):
        theirs.update(rows(10, 1), -rows(10, 1))
    ours.bind(plan, None, 0)
    with torch.no_grad(), pytest.raises(ValueError, match="holds 2 sequences in layer 0, but the forward feeds 1"):
        ours.update(rows(10, 1), -rows(10, 1))
