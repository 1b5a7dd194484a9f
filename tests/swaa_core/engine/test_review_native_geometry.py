"""Review of f84e065: geometry() counts slots in natively sliding layers whatever the layer's SWAA kind."""

from __future__ import annotations

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
        alone = model.generate(b[None], cache_implementation="dynamic", **kw)[0, len(b):]
        dynamic = model.generate(batch, attention_mask=mask, cache_implementation="dynamic", **kw)[1, 21:]
        static = model.generate(batch, attention_mask=mask, cache_implementation="static", **kw)[1, 21:]
    assert torch.equal(static, alone)
    assert torch.equal(dynamic, alone)


def test_row_prefill_with_a_masked_token_inside_the_prompt_gives_generates_tokens():
    """fast_generate promises the same tokens for prefill="row"; put_row maps slot = real position + (T - mask.sum()),
    true only when every masked slot is left padding. Batch prefill passes; row prefill does not (also at f60a175)."""
    model = build_tiny_model("llama", eos_token_id=None)
    x = ids(22, 1)
    mask = torch.ones_like(x)
    mask[0, [9, 13, 16]] = 0
    apply_swaa(model, SWAAConfig(sliding_window_size=6, keep_first=2))
    kw = dict(attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        expected = model.generate(x, cache_implementation="dynamic", **kw)
        batch = fast_generate(model, x, prefill="batch", **kw).sequences
        row = fast_generate(model, x, prefill="row", **kw).sequences
    remove_swaa(model)
    assert torch.equal(batch, expected)
    assert torch.equal(row, expected)
