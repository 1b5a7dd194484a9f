"""A float64 reference for SWAA's attention, written from the mask rule of SWAA.md independently of swaa_core's
kernels: a transformers attention function of its own ("float64_ref") on a float64 copy of a model, run without a
cache over the whole sequence, its mask built from the 2-D padding mask:

* a layer the model slides natively with window N: SWAA narrows it (window min(W, N) without sinks, or chunks C <= N)
  or keeps it (N, counted in cache *slots*, padding included, as transformers counts it); no FA decode there;
* every other layer: full (None, non_sliding_layers) or SWAA's kind in *real* positions (cumsum of the mask), sinks
  = the first keep_first real positions, FA-decode queries (slot >= prompt end, or real position >= prompt length)
  see their whole causal past;
* always: a key is seen only when it is a real token at or before the query (slots).

Used by tests/swaa_core/engine/test_masks_against_float64.py and test_masked_tokens_and_eviction.py."""

from __future__ import annotations

import copy

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

from helpers.tiny_models import build_tiny_model
from swaa_core import SWAAConfig, remove_swaa

T = 20
NEW = 5
ATOL = 2e-4

# ----------------------------------------------------------------------------------------------------- the reference
_REF: dict = {}


def _native(config, layer):
    types = getattr(config, "layer_types", None)
    window = getattr(config, "sliding_window", None)
    if types is not None:
        return window if types[layer] == "sliding_attention" else None
    return window


def _rule(cfg: SWAAConfig | None, layer: int, native):
    """(kind name, size, sinks, counts slots?, fa_decode) or None for full attention."""
    w = None if cfg is None else cfg.sliding_window_size
    chunked = cfg is not None and cfg.mask_kind == "chunked"
    if native is not None:
        if w is not None and w < native and not chunked:
            return ("window", w, 0, False, False)
        if w is not None and w <= native and chunked:
            return ("chunk", w, 0, False, False)
        return ("window", native, 0, True, False)
    if w is None or layer in cfg.non_sliding_layers:
        return None
    fa = cfg.force_fa_decode if isinstance(cfg.force_fa_decode, bool) else layer in cfg.force_fa_decode
    return ("chunk" if chunked else "window", w, cfg.keep_first, False, fa)


def ref_mask(cfg, layer, native, mask2d, prompt_end=None, prompt_lengths=None):
    """(B, T, T) bool: query slot i sees key slot j."""
    B, n = mask2d.shape
    valid = mask2d.bool()
    slot = torch.arange(n)[None].expand(B, n)
    real = valid.long().cumsum(-1) - 1
    seen = valid[:, None, :] & (slot[:, None, :] <= slot[:, :, None])
    rule = _rule(cfg, layer, native)
    if rule is None:
        return seen
    name, size, sinks, slots, fa = rule
    pos = slot if slots else real
    i, j = pos[:, :, None], pos[:, None, :]
    own = (
        (i - j < size)
        if name == "window"
        else (torch.div(i, size, rounding_mode="floor") == torch.div(j, size, rounding_mode="floor"))
    )
    full = torch.zeros(B, n, dtype=torch.bool)
    if fa and prompt_end is not None:
        full = slot >= prompt_end
    if fa and prompt_lengths is not None:
        full = real >= torch.as_tensor(prompt_lengths).view(-1, 1)
    return seen & (own | (real[:, None, :] < sinks) | full[:, :, None])


def _ref_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kw):
    B, H, Q, D = query.shape
    scaling = D**-0.5 if scaling is None else scaling
    g = H // key.shape[1]
    k = key.double().repeat_interleave(g, 1)
    v = value.double().repeat_interleave(g, 1)
    layer = module.layer_idx
    m = ref_mask(_REF["cfg"], layer, _native(_REF["config"], layer), _REF["mask"], _REF.get("prompt_end"),
                 _REF.get("prompt_lengths"))  # fmt: skip
    m = m[:, -Q:, -key.shape[2] :]
    s = (query.double() @ k.transpose(-1, -2)) * scaling
    p = torch.softmax(s.masked_fill(~m[:, None], float("-inf")), -1).nan_to_num(0.0)
    _REF.setdefault("probs", {})[layer] = p
    return (p @ v).transpose(1, 2).to(query.dtype), None


AttentionInterface.register("float64_ref", _ref_attention)
AttentionMaskInterface.register("float64_ref", lambda *a, **k: None)


def reference_model(model):
    ref = copy.deepcopy(model).double()
    remove_swaa(ref)
    ref.set_attn_implementation("float64_ref")
    return ref


def ref_forward(ref, cfg, ids, mask, *, position_ids=None, prompt_end=None, prompt_lengths=None, grad=False):
    mask = torch.ones_like(ids) if mask is None else mask
    _REF.clear()
    _REF.update(cfg=cfg, config=ref.config, mask=mask, prompt_end=prompt_end, prompt_lengths=prompt_lengths)
    with torch.set_grad_enabled(grad):
        return ref(input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=False)


def gen_positions(mask):
    return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)


# ----------------------------------------------------------------------------------------------------- cases
def make_mask(kind, B=3):
    m = torch.ones(B, T, dtype=torch.long)
    if kind in ("left", "both"):
        m[1, :5], m[2, :2] = 0, 0
    if kind in ("holes", "both"):
        m[1, [8, 12]] = 0
        m[2, [6]] = 0
    return m


def make_ids(B=3):
    return torch.randint(3, 97, (B, T), generator=torch.Generator().manual_seed(7))


CONFIGS = {
    "full": None,
    "sw5k2": SWAAConfig(sliding_window_size=5, keep_first=2),
    "sw4fadec": SWAAConfig(sliding_window_size=4, keep_first=1, force_fa_decode=True),
    "sw6falayers": SWAAConfig(sliding_window_size=6, keep_first=1, non_sliding_layers=[1], force_fa_decode=[0, 2]),
    "chunk4": SWAAConfig(sliding_window_size=4, keep_first=1, mask_kind="chunked", force_fa_decode=True),
    "sw12k2": SWAAConfig(sliding_window_size=12, keep_first=2),  # wider than the native window of 8
    "chunk12": SWAAConfig(sliding_window_size=12, mask_kind="chunked"),
}
FAMILIES = {
    "llama": dict(),
    "gemma3": dict(),  # sliding_window=8; layer_types from transformers' default pattern
    "mistral": dict(sliding_window=8),
    "qwen2": dict(use_sliding_window=True, sliding_window=8, max_window_layers=2),
}
MASKS = ("none", "left", "holes", "both")


def model_for(family):
    kw = dict(FAMILIES[family], eos_token_id=None)
    if family == "gemma3":
        kw["layer_types"] = ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]
    return build_tiny_model(family, **kw)


def _close(a, b, valid, what):
    diff = (a.double() - b.double()).abs().amax(-1)[valid.bool()]
    assert float(diff.max()) < ATOL, f"{what}: max |diff| {float(diff.max()):.3g}"


# ----------------------------------------------------------------------------------------------------- decode checks
def generated(model, ids, mask, path: str, **extra):
    """NEW greedy tokens with their logits: ``path`` "dynamic" / "static" through ``generate`` with that cache,
    "batch" / "row" through ``fast_generate`` with that prefill; ``extra``: more generate options."""
    from swaa_core import fast_generate

    kw = dict(max_new_tokens=NEW, do_sample=False, pad_token_id=0, return_dict_in_generate=True, output_logits=True)
    kw.update(extra)
    with torch.no_grad():
        if path in ("dynamic", "static"):
            return model.generate(ids, attention_mask=mask, cache_implementation=path, **kw)
        return fast_generate(model, ids, attention_mask=mask, prefill=path, **kw)


def then_real(mask, sequences):
    """The prompt's (B, T) mask followed by ones for every generated token of ``sequences``."""
    new = sequences.shape[1] - mask.shape[1]
    return torch.cat([mask, torch.ones(sequences.shape[0], new, dtype=mask.dtype)], 1)


def assert_decode_matches(ref, cfg, out, full_mask, what: str = "per-row, per-step max diff"):
    """Every step's logits of ``out`` (a generate result over a T-token prompt) equal the reference's forward over
    its sequences under ``full_mask`` (B, T + new), FA decode from slot T on."""
    seq = out.sequences
    want = ref_forward(ref, cfg, seq, full_mask, position_ids=gen_positions(full_mask), prompt_end=T).logits
    got = torch.stack([lg.double() for lg in out.logits], 1)  # (B, NEW, V): step t predicts token T + t
    diff = (got - want[:, T - 1 : T - 1 + NEW]).abs().amax(-1)
    assert float(diff.max()) < ATOL, f"{what}: {diff}"
