"""Every backend against a naive float64 attention whose mask is written out rule by rule, not via swaa_core.masks."""

from __future__ import annotations

import math

import pytest
import torch

from swaa_core import backends
from swaa_core.masks import MaskGeometry


def naive_attention(q, k, v, q_pos, kv_pos, kv_valid, q_full, window, keep_first, scale):
    """float64 loops over (batch, head, query): the mask rule of SWAA.md spelled out in plain Python."""
    B, H, Q, D = q.shape
    groups = H // k.shape[1]
    out = torch.zeros(B, Q, H, D, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            for i in range(Q):
                qi = int(q_pos[b, i])
                keys = []
                for j in range(k.shape[2]):
                    kj = int(kv_pos[b, j])
                    if not kv_valid[b, j] or kj > qi:
                        continue
                    if window is None or q_full[b, i] or qi - kj < window or kj < keep_first:
                        keys.append(j)
                if not keys:
                    continue
                kk = k[b, h // groups, keys].double()
                vv = v[b, h // groups, keys].double()
                w = torch.softmax(kk @ q[b, h, i].double() * scale, dim=0)
                out[b, i, h] = w @ vv
    return out


def make_case(*, B=1, H=4, Hkv=2, n=37, D=8, padding=(), window=5, keep_first=0, q_len=None, full_tail=0, seed=0):
    """Random q/k/v for n slots; rows of the batch may be left-padded; the last q_len slots are the queries."""
    g = torch.Generator().manual_seed(seed)
    q_len = n if q_len is None else q_len
    q = torch.randn(B, H, q_len, D, generator=g)
    k = torch.randn(B, Hkv, n, D, generator=g)
    v = torch.randn(B, Hkv, n, D, generator=g)
    valid = torch.ones(B, n, dtype=torch.bool)
    for b, pad in enumerate(padding):
        valid[b, :pad] = False
    real = valid.long().cumsum(-1) - 1
    q_pos = real[:, n - q_len :]
    q_full = torch.zeros(B, q_len, dtype=torch.bool)
    if full_tail:
        q_full[:, -full_tail:] = True
    geom = MaskGeometry(q_pos, real, valid, q_full, window, keep_first)
    return q, k, v, geom


CASES = [
    dict(window=5),
    dict(window=1),
    dict(window=64),  # W >= n: equals causal attention
    dict(window=5, keep_first=3),
    dict(window=5, keep_first=9),  # keep_first > W
    dict(window=5, keep_first=50),  # keep_first > n
    dict(window=None),
    dict(window=4, keep_first=2, n=31, B=3, padding=(0, 5, 11)),  # left padding, rows of different length
    dict(window=6, keep_first=2, n=23, q_len=1),  # one decode step against a cache
    dict(window=6, keep_first=2, n=23, q_len=1, full_tail=1),  # FA decode step
    dict(window=4, keep_first=1, n=29, full_tail=7),  # training-style mixed mask: answer tokens full
    dict(window=3, keep_first=2, n=40, H=6, Hkv=1),  # MQA
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("backend", ["reference", "blocked", "blocked-small"])
def test_backend_matches_naive_float64(case, backend):
    q, k, v, g = make_case(**case)
    scale = 1 / math.sqrt(q.shape[-1])
    expected = naive_attention(q, k, v, g.q_pos, g.kv_pos, g.kv_valid, g.q_full, g.window, g.keep_first, scale)
    if backend == "blocked-small":  # many blocks, so block edges, sink gathering and window spans are exercised
        out = backends.blocked(q, k, v, g, scale, block=4, group=3)
    else:
        out = backends.attend(backend, q, k, v, g, scale)
    assert out.shape == expected.shape
    assert torch.allclose(out.double(), expected, atol=2e-5, rtol=1e-4), (out.double() - expected).abs().max()


FLASH_CASES = [c for c in CASES if c.get("window") and not c.get("padding") and not c.get("full_tail")]


@pytest.mark.parametrize("case", FLASH_CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_flash_composition_matches_naive_float64(case):
    """The flash path (window pass + sink pass merged by LSE) with flash-attn's contract emulated in float64."""
    q, k, v, g = make_case(**case)
    scale = 1 / math.sqrt(q.shape[-1])
    expected = naive_attention(q, k, v, g.q_pos, g.kv_pos, g.kv_valid, g.q_full, g.window, g.keep_first, scale)
    out = backends.flash(q, k, v, g, scale, flash_fn=emulated_flash_attn)
    assert torch.allclose(out.double(), expected, atol=2e-5, rtol=1e-4), (out.double() - expected).abs().max()


def test_reference_probabilities_are_normalised_and_masked():
    q, k, v, g = make_case(window=4, keep_first=2, n=20)
    _, probs = backends.reference(q, k, v, g, 0.3)
    assert torch.allclose(probs.sum(-1), torch.ones(probs.shape[:-1]))
    i, j = 15, 5  # distance 10 >= W and j >= keep_first: invisible
    assert probs[0, :, i, j].abs().max() == 0
    assert probs[0, :, i, 1].min() > 0  # a sink stays visible


def emulated_flash_attn(q, k, v, softmax_scale, causal, window_size=(-1, -1), return_attn_probs=False):
    """flash_attn_func's contract (B, S, H, D layout, bottom-right causal alignment, window, LSE) in plain float64."""
    B, Sq, H, D = q.shape
    Sk = k.shape[1]
    groups = H // k.shape[2]
    kk = k.repeat_interleave(groups, dim=2).double()
    vv = v.repeat_interleave(groups, dim=2).double()
    scores = torch.einsum("bqhd,bkhd->bhqk", q.double(), kk) * softmax_scale
    qi = torch.arange(Sq)[:, None] + (Sk - Sq)
    kj = torch.arange(Sk)[None, :]
    allowed = torch.ones(Sq, Sk, dtype=torch.bool)
    if causal:
        allowed &= kj <= qi
    if window_size[0] >= 0:
        allowed &= qi - kj <= window_size[0]
    scores = scores.masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    out = torch.einsum("bhqk,bkhd->bqhd", torch.softmax(scores, -1), vv)
    return out.to(q.dtype), lse.float(), None


def test_blocked_never_builds_a_quadratic_mask(monkeypatch):
    """A long prefill must only ever hand SDPA group x block x (sinks + window + block) masks."""
    n, window, keep_first, block, group = 4096, 128, 16, 128, 4
    q, k, v, g = make_case(n=n, H=2, Hkv=1, D=8, window=window, keep_first=keep_first)
    sizes = []
    real_sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(query, key, value, attn_mask=None, **kw):
        sizes.append(attn_mask.numel())
        return real_sdpa(query, key, value, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(backends.F, "scaled_dot_product_attention", spy)
    backends.blocked(q, k, v, g, 0.3, block=block, group=group)
    assert max(sizes) <= group * block * (keep_first + window + block)
    assert len(sizes) == n // (block * group)


PREFILL_32K = """
import resource, sys
import torch
from conftest import build_tiny_model
from swaa_core import SWAAConfig, apply_swaa
model = build_tiny_model("llama", layers=2)
apply_swaa(model, SWAAConfig(sliding_window_size=512, keep_first=4), backend=sys.argv[1])
x = torch.randint(3, 97, (1, 32768))
limit = 700 * 2**20  # a 32K x 32K mask alone needs 1 GiB as bool, 4 GiB as float
resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
with torch.no_grad():
    model(x, use_cache=False, logits_to_keep=1)
print("prefill ok")
"""


@pytest.mark.parametrize("backend, fits", [("blocked", True), ("reference", False)])
def test_32k_prefill_fits_where_a_quadratic_mask_cannot(backend, fits, tmp_path):
    """A whole-model 32K-token prefill with W=512 under a 700 MiB data limit: the blocked backend fits; the
    reference backend, which materialises the n x n mask, does not (so the limit really bites)."""
    import pathlib
    import subprocess
    import sys

    script = tmp_path / "prefill.py"
    script.write_text(PREFILL_32K)
    tests_dir = pathlib.Path(__file__).resolve().parents[1]
    root = tests_dir.parent
    env = {"PYTHONPATH": f"{root}:{tests_dir}", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "2"}
    proc = subprocess.run([sys.executable, str(script), backend], capture_output=True, text=True, env=env, timeout=600)
    assert ("prefill ok" in proc.stdout) == fits, proc.stderr[-2000:]
