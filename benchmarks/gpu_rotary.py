"""transformers' rotary embedding (``apply_rotary_pos_emb``) on an 8B-shaped Llama's q and k at 128K, bf16, on CUDA:
eager (five kernels each), compiled as ``fast_generate(compile=...)``'s prefill compiles it (inductor with emulated
precision casts, automatic dynamic shapes: a static kernel at the first length, the length as a symbol at the second)
and compiled with ``dynamic=True`` (every size a symbol, the prefill's setting before 2026-12-06). Prints ms per call
(mean of 10 after a warm-up), the bytes q and k move per ms, and whether the outputs equal eager's bit for bit.

    python benchmarks/gpu_rotary.py
"""

import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from swaa_core.engine.compiled_prefill import prefill_backend

H, Hk, D = 32, 8, 128


def inputs(T):
    g = torch.Generator("cuda").manual_seed(T)
    r = lambda *s: torch.randn(*s, device="cuda", dtype=torch.bfloat16, generator=g)  # noqa: E731
    return r(1, T, H * D), r(1, T, Hk * D), r(1, T, D), r(1, T, D)


def f(qf, kf, cos, sin):
    q = qf.view(*qf.shape[:-1], -1, 128).transpose(1, 2)
    k = kf.view(*kf.shape[:-1], -1, 128).transpose(1, 2)
    return apply_rotary_pos_emb(q, k, cos, sin)


def timed(fn, args, reps=10):
    fn(*args)
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(reps):
        fn(*args)
    e.record()
    torch.cuda.synchronize()
    return s.elapsed_time(e) / reps


backend = prefill_backend("inductor")
auto = torch.compile(f, backend=backend, dynamic=None)
every = torch.compile(f, backend=backend, dynamic=True)
for T in (131072, 131072 - 1024):
    x = inputs(T)
    ref = f(*x)
    for name, fn in (("eager", f), ("automatic dynamic (what compile= runs)", auto), ("dynamic=True (before)", every)):
        ms = timed(fn, x)
        same = all(torch.equal(a, b) for a, b in zip(fn(*x), ref, strict=True))
        gbs = 2 * 2 * T * (H + Hk) * D / ms / 1e6
        print(f"T={T} {name}: {ms:.3f} ms (q and k: {gbs:.0f} GB/s), equal to eager: {same}", flush=True)
