"""A natively sliding layer under SWAA's own kinds, and masked tokens inside a prompt under row prefill (found by a
review, 2026-12-06): chunks count real tokens in every layer, row prefill refuses what it cannot place."""

from __future__ import annotations

import pytest
import torch
from helpers.tiny_models import build_tiny_model, left_padded

from swaa_core import SWAAConfig, apply_swaa, remove_swaa, swaa
from swaa_core.engine.fast_decode import fast_generate

NEW = 6


def ids(n, seed):
    return torch.randint(3, 97, (1, n), generator=torch.Generator().manual_seed(seed))


def test_chunks_in_a_natively_sliding_layer_start_at_each_rows_first_real_token():
    """As test_chunked.test_left_padded_batch_counts_chunks_in_real_positions, on Mistral with its own window of 8,
    which chunks of 4 narrow (ChunkedAttention(4, 0)). Passed at f60a175; at f84e065 the padded row's chunks shift by
    its padding in the dynamic path (and disagree with the fixed path, which still uses real positions)."""
    model = build_tiny_model("mistral", sliding_window=8, eos_token_id=None)
    a, b = ids(21, 3)[0], ids(14, 4)[0]
    batch, mask = left_padded(a, b)
    kw = dict(max_new_tokens=NEW, do_sample=False, pad_token_id=0)
    with swaa(model, SWAAConfig(sliding_window_size=4, mask_kind="chunked")), torch.no_grad():
        alone = model.generate(b[None], cache_implementation="dynamic", **kw)[0, len(b) :]
        dynamic = model.generate(batch, attention_mask=mask, cache_implementation="dynamic", **kw)[1, 21:]
        static = model.generate(batch, attention_mask=mask, cache_implementation="static", **kw)[1, 21:]
    assert torch.equal(static, alone)
    assert torch.equal(dynamic, alone)


def test_row_prefill_refuses_a_masked_token_inside_the_prompt_by_name():
    """Row prefill places each row's keys at real position + left padding, which a mask with holes inside a prompt
    breaks (its tokens differed from generate's): it is refused by name, while batch prefill gives generate's
    tokens for the same mask."""
    model = build_tiny_model("llama", eos_token_id=None)
    x = ids(22, 1).expand(2, 22).clone()
    mask = torch.ones_like(x)
    mask[1, :3] = 0  # left padding: fine
    mask[1, [9, 13, 16]] = 0
    apply_swaa(model, SWAAConfig(sliding_window_size=6, keep_first=2))
    kw = dict(attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        expected = model.generate(x, cache_implementation="dynamic", **kw)
        batch = fast_generate(model, x, prefill="batch", **kw).sequences
        with pytest.raises(ValueError, match=r"prefill='row' takes prompts padded on the left only.*row\(s\) \[1\]"):
            fast_generate(model, x, prefill="row", **kw)
        left = mask.clone()
        left[1, [9, 13, 16]] = 1
        row = fast_generate(model, x, prefill="row", **(kw | {"attention_mask": left})).sequences
        expected_left = model.generate(x, cache_implementation="dynamic", **(kw | {"attention_mask": left}))
    remove_swaa(model)
    assert torch.equal(batch, expected)
    assert torch.equal(row, expected_left)
