"""Every backend against float64 attention whose mask is docs/paper.md's rule written out (helpers/attention.py), not via
swaa_core.engine.masks."""

from __future__ import annotations

import math
import sys

import pytest
import torch
from helpers.attention import case_id, float64_attention, make_case, with_engine_hints
from hypothesis import given, settings
from hypothesis import strategies as st

from swaa_core.engine import backends
from swaa_core.engine.kinds import KINDS, SinkWindow
from swaa_core.engine.masks import materialize

CASES = [
    dict(window=5),
    dict(window=1),
    dict(window=64),  # W >= n: equals causal attention
    dict(window=5, keep_first=3),
    dict(window=5, keep_first=9),  # keep_first > W
    dict(window=5, keep_first=50),  # keep_first > n
    dict(window=None),
    dict(window=4, keep_first=2, n=31, B=3, pads=(0, 5, 11)),  # left padding, rows of different length
    dict(window=6, keep_first=2, n=23, q_len=1),  # one decode step against a cache
    dict(window=6, keep_first=2, n=23, q_len=1, full_tail=1),  # FA decode step
    dict(window=4, keep_first=1, n=29, full_tail=7),  # training-style mixed mask: answer tokens full
    dict(window=3, keep_first=2, n=40, H=6, Hkv=1),  # MQA
]


every_kind = pytest.mark.parametrize("kind", list(KINDS.values()), ids=list(KINDS))


@every_kind
@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("backend", ["reference", "blocked", "blocked-small"])
def test_backend_matches_naive_float64(case, backend, kind):
    """Every mask kind (``window``: its size, W or C) on the backends that run anywhere."""
    q, k, v, g = make_case(kind=kind, **case)
    scale = 1 / math.sqrt(q.shape[-1])
    expected = float64_attention(q, k, v, g, scale)
    if backend == "blocked-small":  # many blocks, so block edges, sink gathering and window spans are exercised
        out = backends.blocked(q, k, v, g, scale, block=4, group=3)
    else:
        out = backends.attend(backend, q, k, v, g, scale)
    assert out.shape == expected.shape
    assert torch.allclose(out.double(), expected, atol=2e-5, rtol=1e-4), (out.double() - expected).abs().max()


FLASH_CASES = [c for c in CASES if c.get("window") and not c.get("pads") and not c.get("full_tail")]


@pytest.mark.parametrize("case", FLASH_CASES, ids=case_id)
def test_flash_composition_matches_naive_float64(case):
    """The flash path (window pass + sink pass merged by LSE) with flash-attn's contract emulated in float64."""
    q, k, v, g = make_case(**case)
    scale = 1 / math.sqrt(q.shape[-1])
    expected = float64_attention(q, k, v, g, scale)
    out = backends.window_sink(q, k, v, g, scale, emulated_window_fn)
    assert torch.allclose(out.double(), expected, atol=2e-5, rtol=1e-4), (out.double() - expected).abs().max()


@every_kind
def test_window_kernels_run_a_kind_or_refuse_it_by_name(kind, monkeypatch):
    """A kind with a window kernel runs on the window-kernel composition; one without is refused by window_sink and,
    named as a backend, by explain_backend, naming the kind and the backend; "auto" passes over fa4 and flash."""
    q, k, v, g = make_case(n=30, window=5, keep_first=2, kind=kind)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(backends, "backend_status", lambda device: dict.fromkeys(backends.BACKENDS[1:]))
    if g.kind.window_kernel is not None:
        out = backends.window_sink(q, k, v, g, 0.3, emulated_window_fn)
        assert torch.allclose(out.double(), float64_attention(q, k, v, g, 0.3), atol=2e-5, rtol=1e-4)
        assert backends.explain_backend("fa4", "cuda", g.kind) == ("fa4", [])
        return
    with pytest.raises(ValueError, match=f"{kind.name!r} mask kind .* window kernels"):
        backends.window_sink(q, k, v, g, 0.3, emulated_window_fn)
    for name in ("fa4", "flash"):
        with pytest.raises(ValueError, match=f"backend {name!r} refused: The {kind.name!r} mask kind"):
            backends.explain_backend(name, "cuda", g.kind)
    chosen, notes = backends.explain_backend("auto", "cuda", g.kind)
    assert chosen == "flex" and notes == [f"{name}: its window kernel cannot express the {kind.name!r} mask kind"
                                           for name in ("fa4", "flash")]  # fmt: skip


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


@every_kind
def test_blocked_never_builds_a_quadratic_mask(monkeypatch, kind):
    """A long prefill must only ever hand SDPA group x block x (sinks + span + block) masks."""
    n, window, keep_first, block, group = 4096, 128, 16, 128, 4
    q, k, v, g = make_case(n=n, H=2, Hkv=1, D=8, window=window, keep_first=keep_first, kind=kind)
    sizes = []
    real_sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(query, key, value, attn_mask=None, **kw):
        sizes.append(attn_mask.numel())
        return real_sdpa(query, key, value, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    backends.blocked(q, k, v, g, 0.3, block=block, group=group)
    assert max(sizes) <= group * block * (keep_first + window + block)
    assert len(sizes) == n // (block * group)


PREFILL_32K = """
import resource, sys
import torch
from helpers.tiny_models import build_tiny_model
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
    tests_dir = pathlib.Path(__file__).resolve().parents[2]
    root = tests_dir.parent
    env = {"PYTHONPATH": f"{root}:{tests_dir}", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "2"}
    proc = subprocess.run([sys.executable, str(script), backend], capture_output=True, text=True, env=env, timeout=600)
    assert ("prefill ok" in proc.stdout) == fits, proc.stderr[-2000:]


# --------------------------------------------------------------------------- fast paths: FA4 / flash-attn composition
# The window-kernel contract of backends.window_sink, through the real flash-attn 2 adapter over the float64 emulation
emulated_window_fn = backends.flash_attn_2_window(emulated_flash_attn)


def simple_case(*, full_from=None, **case):
    """Unpadded consecutive positions with the host-known hints the engine sets (offsets, full_from)."""
    q, k, v, g = make_case(**case)
    return q, k, v, with_engine_hints(g, full_from)


SIMPLE_CASES = [
    dict(n=40, window=5, keep_first=0),
    dict(n=40, window=5, keep_first=3),
    dict(n=40, window=1, keep_first=2),
    dict(n=40, window=6, keep_first=9),  # keep_first > W
    dict(n=20, window=4, keep_first=30),  # keep_first > n: every query sees its whole past
    dict(n=41, window=7, keep_first=2, q_len=13),  # a prefill chunk against a cache
    dict(n=41, window=7, keep_first=2, q_len=3),  # a short chunk inside the sink + window head
    dict(n=37, window=4, keep_first=2, full_from=30),  # training mask: answer tokens full
    dict(n=37, window=4, keep_first=2, full_from=0),  # every query full
    dict(n=37, window=4, keep_first=2, q_len=12, full_from=31),  # chunk with full tail
    dict(n=33, window=3, keep_first=1, H=6, Hkv=1, B=2),  # MQA, batch
]


@pytest.mark.parametrize("case", SIMPLE_CASES, ids=case_id)
def test_window_kernel_composition_matches_naive_float64(case):
    """simple_attention with a window kernel (what fa4 / flash run): head rows causal, tail window + sinks merged by
    LSE, full rows split off; against the loop-by-loop float64 rule."""
    q, k, v, g = simple_case(**case)
    scale = 1 / math.sqrt(q.shape[-1])
    expected = float64_attention(q, k, v, g, scale)
    out = backends.simple_attention(q, k, v, g, scale, emulated_window_fn)
    assert out.shape == expected.shape
    assert torch.allclose(out.double(), expected, atol=2e-5, rtol=1e-4), (out.double() - expected).abs().max()


def test_window_kernel_composition_gradients_match_naive_float64():
    """The LSE merge is differentiable: gradients of q, k, v equal those of the float64 rule."""
    q, k, v, g = simple_case(n=29, window=4, keep_first=3, full_from=25)
    q, k, v = (t.double().requires_grad_() for t in (q, k, v))
    scale = 0.4
    weights = torch.randn(1, 29, 4, 8, dtype=torch.float64)
    (backends.simple_attention(q, k, v, g, scale, emulated_window_fn) * weights).sum().backward()
    got = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    naive = float64_attention(q, k, v, g, scale)
    (naive * weights).sum().backward()
    for a, b in zip(got, (q.grad, k.grad, v.grad), strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5), (a - b).abs().max()  # the LSE merge runs in float32


@settings(max_examples=200, deadline=None)
@given(
    q_len=st.integers(1, 40),
    extra_keys=st.integers(0, 40),
    kv_first=st.sampled_from([0, 0, 3, 17, 30]),
    window=st.integers(1, 50),
    keep_first=st.integers(0, 60),
)
def test_arithmetic_mask_mod_equals_the_general_predicate(q_len, extra_keys, kv_first, window, keep_first):
    """The fast path's index arithmetic (window_mask_mod) against masks.materialize on the same positions."""
    from swaa_core.engine.masks import geometry_from_positions

    n = q_len + extra_keys
    q_first = kv_first + extra_keys
    q_pos = torch.arange(q_first, q_first + q_len)[None]
    kv_pos = torch.arange(kv_first, kv_first + n)[None]
    g = geometry_from_positions(q_pos, kv_pos, kind=SinkWindow(window, keep_first))
    mod = backends.window_mask_mod(torch.tensor([q_first, kv_first]), window, keep_first)
    grid = torch.arange(q_len)[:, None], torch.arange(n)[None, :]
    assert torch.equal(mod(0, 0, *grid), materialize(g)[0, 0])
    if q_first == 0 and kv_first == 0:  # a whole prefill: the constants-only predicate FLASH runs
        assert torch.equal(backends.prefill_mask_mod(window, keep_first)(0, 0, *grid), materialize(g)[0, 0])


# --------------------------------------------------------------------------- detection by callable
def test_a_flash_attn_package_without_flash_attn_func_is_not_flash_attn_2(tmp_path, monkeypatch):
    """flash-attn-4 installs a ``flash_attn`` namespace with only ``flash_attn.cute``: neither the package name nor a
    ``cute`` without the function may make a backend look available."""
    (tmp_path / "flash_attn" / "cute").mkdir(parents=True)
    (tmp_path / "flash_attn" / "cute" / "__init__.py").write_text("")  # no flash_attn_func in it either
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m == "flash_attn" or m.startswith("flash_attn.")]:
        monkeypatch.delitem(sys.modules, name)
    backends.fa2_func.cache_clear()
    backends.fa4_func.cache_clear()
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(backends, "has_flex", lambda: True)
    try:
        status = backends.backend_status("cuda")
        assert "flash_attn.flash_attn_func cannot be imported" in status["flash"]
        assert "flash_attn.cute.flash_attn_func cannot be imported" in status["fa4"]
        chosen, notes = backends.explain_backend("auto", "cuda")
        assert chosen == "flex"
        assert any(note.startswith("fa4:") for note in notes) and any(note.startswith("flash:") for note in notes)
        with pytest.raises(ValueError, match="'flash' cannot run here: flash_attn.flash_attn_func"):
            backends.choose_backend("flash", "cuda")
    finally:
        backends.fa2_func.cache_clear()
        backends.fa4_func.cache_clear()


@pytest.mark.parametrize("preset", [None, "0", "1"])
def test_fa4_is_imported_with_its_persistent_compile_cache_on_unless_the_user_chose(preset, tmp_path, monkeypatch):
    """FA4 reads FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED once, when ``flash_attn.cute`` is imported: the fake package
    records what it saw then."""
    package = tmp_path / "flash_attn" / "cute"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        "import os\nSEEN = os.environ.get('FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED')\n"
        "def flash_attn_func(*args, **kwargs):\n    raise NotImplementedError\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m == "flash_attn" or m.startswith("flash_attn.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setenv("FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED", "-")  # teardown restores the variable as it was
    if preset is None:
        monkeypatch.delenv("FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED")
    else:
        monkeypatch.setenv("FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED", preset)
    backends.fa4_func.cache_clear()
    try:
        assert callable(backends.fa4_func())
        assert (preset or "1") == sys.modules["flash_attn.cute"].SEEN
    finally:
        backends.fa4_func.cache_clear()
        for name in [m for m in sys.modules if m == "flash_attn" or m.startswith("flash_attn.")]:
            del sys.modules[name]


def test_fa4_needs_hopper_or_blackwell(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(backends, "has_flex", lambda: True)
    assert "compute capability 9.x or 10.x" in backends.backend_status("cuda")["fa4"]


def test_cpu_backends_and_reasons():
    status = backends.backend_status("cpu")
    assert status["reference"] is None and status["blocked"] is None
    assert all("CUDA" in status[name] for name in ("flex", "fa4", "flash"))
    assert backends.explain_backend("auto", "cpu") == ("blocked", [])


@pytest.mark.parametrize("window, keep_first", [(1, 0), (1, 4), (5, 0), (5, 3), (6, 9), (40, 2), (64, 70)])
def test_prefill_mask_mod_equals_the_general_predicate(window, keep_first):
    """The constants-only predicate FlexAttention's FLASH backend runs for a whole prefill (index = position)."""
    from swaa_core.engine.masks import geometry_from_positions

    pos = torch.arange(50)[None]
    g = geometry_from_positions(pos, pos, kind=SinkWindow(window, keep_first))
    got = backends.prefill_mask_mod(window, keep_first)(0, 0, torch.arange(50)[:, None], torch.arange(50)[None, :])
    assert torch.equal(got, materialize(g)[0, 0])


def _tiles(block_mask, full: bool) -> torch.Tensor:
    """(query tiles, key tiles) bool: which tiles the block mask lists as full (or as partial)."""
    num, idx = (block_mask.full_kv_num_blocks, block_mask.full_kv_indices) if full else (
        block_mask.kv_num_blocks, block_mask.kv_indices)  # fmt: skip
    out = torch.zeros(idx.shape[-2], idx.shape[-1], dtype=torch.bool)
    for row in range(idx.shape[-2]):
        out[row, idx[0, 0, row, : num[0, 0, row]]] = True
    return out


@every_kind
@pytest.mark.parametrize(("Q", "KV", "q_first", "kv_first"), [(300, 300, 0, 0), (77, 400, 323, 0), (64, 190, 500, 374)])
def test_cached_flex_block_masks_equal_torchs_builder_on_the_rule(Q, KV, q_first, kv_first, kind):
    """The block masks the fast paths cache (a whole prefill, a chunk at offsets) list the same full and partial
    tiles as torch's own create_block_mask over the rule's predicate (built on the CPU here, used on the GPU)."""
    from torch.nn.attention.flex_attention import create_block_mask

    from swaa_core.engine.kernels import flex as flex_kernels

    rule = kind(32, 4)
    if q_first == kv_first == 0:
        ours = flex_kernels._prefill_block_mask(Q, rule, "cpu")
        mask_mod = rule.prefill_mask_mod()
    else:
        ours = flex_kernels._simple_block_mask(Q, KV, q_first, kv_first, rule, "cpu")
        mask_mod = rule.offsets_mask_mod(torch.tensor([q_first, kv_first]))
    ref = create_block_mask(mask_mod, 1, 1, Q, KV, device="cpu")
    assert torch.equal(_tiles(ours, full=True), _tiles(ref, full=True))
    assert torch.equal(_tiles(ours, full=False), _tiles(ref, full=False))


def test_cudnn_sdpa_switch_is_restored_across_nesting_threads_and_user_settings():
    """Only cuDNN's SDPA switch is touched, held by a count: nested and interleaved holders (threads leaving in any
    order) leave it as it was, and backends a caller turned off stay off."""
    import threading

    from swaa_core.engine.kernels.sdpa import CudnnSdpaOff, without_cudnn_sdpa

    cuda = torch.backends.cuda
    flags = (cuda.cudnn_sdp_enabled(), cuda.flash_sdp_enabled(), cuda.mem_efficient_sdp_enabled())
    try:
        cuda.enable_flash_sdp(False)  # a caller's own choice
        with without_cudnn_sdpa():
            assert not cuda.cudnn_sdp_enabled() and not cuda.flash_sdp_enabled()
            with without_cudnn_sdpa():
                assert not cuda.cudnn_sdp_enabled()
            assert not cuda.cudnn_sdp_enabled()  # the outer holder still holds it
        assert cuda.cudnn_sdp_enabled() and not cuda.flash_sdp_enabled()

        # two threads: A takes it, B takes it, A lets go first, then B
        a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
        during = []

        def a():
            CudnnSdpaOff.acquire()
            a_in.set()
            b_in.wait()
            CudnnSdpaOff.release()
            a_out.set()

        def b():
            a_in.wait()
            CudnnSdpaOff.acquire()
            b_in.set()
            a_out.wait()
            during.append(cuda.cudnn_sdp_enabled())  # A has gone, B still holds it
            CudnnSdpaOff.release()

        threads = [threading.Thread(target=a), threading.Thread(target=b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert during == [False] and cuda.cudnn_sdp_enabled()

        cuda.enable_cudnn_sdp(False)  # a caller who turned cuDNN off keeps it off
        with without_cudnn_sdpa():
            pass
        assert not cuda.cudnn_sdp_enabled()
    finally:
        cuda.enable_cudnn_sdp(flags[0])
        cuda.enable_flash_sdp(flags[1])
        cuda.enable_mem_efficient_sdp(flags[2])


@every_kind
@pytest.mark.parametrize("case", [CASES[3], CASES[7], CASES[10]], ids=case_id)
def test_blocked_gradients_match_naive_float64(case, kind):
    """The blocked backend's backward (which rebuilds each group of query blocks instead of keeping its gathered keys)
    gives the gradients of the float64 rule, with sinks, left padding and a mixed mask; several groups of blocks."""
    q, k, v, g = make_case(dtype=torch.float64, kind=kind, **case)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    weights = torch.randn(q.shape[0], q.shape[2], q.shape[1], q.shape[3], dtype=torch.float64)
    (backends.blocked(q, k, v, g, 0.3, block=4, group=2) * weights).sum().backward()
    got = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    (float64_attention(q, k, v, g, 0.3) * weights).sum().backward()
    for a, b in zip(got, (q.grad, k.grad, v.grad), strict=True):
        assert torch.allclose(a, b, atol=1e-10), (a - b).abs().max()


def test_blocked_backward_replays_the_forward_dropout():
    """With attention dropout the backward draws the forward's masks again: its gradients are those of the same
    computation differentiated by plain autograd (same seed), and not those of another seed."""
    from swaa_core.engine.kernels import sdpa

    q, k, v, g = make_case(n=30, window=5, keep_first=2, dtype=torch.float64)
    weights = torch.randn(1, 30, 4, 8, dtype=torch.float64)

    def grads(run, seed):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        torch.manual_seed(seed)
        (run(*leaves) * weights).sum().backward()
        return torch.cat([t.grad.flatten() for t in leaves])

    def plain(q, k, v):  # the group loop without the Function: autograd keeps every gathered copy
        return sdpa._blocked_forward(sdpa._BlockedCall(q, k, v, g, 0.3, 0.5), 4, 2)

    def function(q, k, v):
        return backends.blocked(q, k, v, g, 0.3, 0.5, block=4, group=2)

    expected = grads(plain, seed=1)
    torch.testing.assert_close(grads(function, seed=1), expected)
    assert not torch.allclose(grads(function, seed=2), expected)
