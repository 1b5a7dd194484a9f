"""GPU check and benchmark of the SWAA engine: correctness first, then kernel, prefill and decode timings.

    PYTHONUNBUFFERED=1 python benchmarks/gpu_bench.py --sections env correctness model kernels prefill decode

Sections (each one guarded: a failure is recorded with its traceback and the next section still runs):
- env:         GPU, driver, torch / transformers / triton versions, measured matmul rate and copy bandwidth.
- correctness: the flex backend (and the dispatcher) vs an independent float64 attention on random bf16 inputs:
               GQA, odd lengths, W=1, W >= n, keep_first 0 / > W, padded batch, chunked queries, FA-decode queries.
- model:       a small random-weight Llama in bf16 on the GPU: SWAA logits (flex) vs the reference backend, and
               greedy generation with FA decode (fp32) vs a teacher-forced run of the reference backend.
- kernels:     SDPA full causal vs SWAA flex (W=2048, 128 sinks) at --lengths; bf16, head dim 128, 32/8 heads.
               Block masks: same tiles as torch's builder, build time, extra memory (never n x n); compile time.
- prefill:     Llama-3.1-8B-shaped random model (bf16, no download): sdpa vs SWAA vs SWAA + 1/2 FA layers.
- decode:      tokens/s and KV-cache bytes after generating --new-tokens, with and without FA decode.

A short Markdown table is printed last; full results go to $OUT/gpu_bench.json (or --json).
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import functools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from swaa_core import SWAAConfig, kv_cache_bytes, remove_swaa, swaa  # noqa: E402
from swaa_core.engine import backends  # noqa: E402
from swaa_core.engine.kernels import flex as flex_kernels  # noqa: E402
from swaa_core.engine.masks import NO_FULL, MaskGeometry  # noqa: E402

BF16_TOL = 1e-2  # METHOD.md: bf16 operands land between 1e-3 and 1e-2 relative error
RESULTS: dict = {"sections": {}, "failures": []}
SUMMARY: list[tuple[str, str]] = []


# --------------------------------------------------------------------------- helpers
def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, reps: int = 3, warmup: int = 1) -> tuple[float, list[float]]:
    """Median wall seconds of ``reps`` synchronised calls after ``warmup`` calls (for long, whole-model runs)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def kernel_ms(fn) -> float:
    """Median milliseconds of a GPU call, timed with CUDA events by triton.testing.do_bench (warm-up excluded).

    The time budget scales with the call, so a 270 ms kernel still gets about ten timed repeats."""
    from triton.testing import do_bench

    estimate_ms = 1000 * first_call_seconds(fn)
    return float(
        do_bench(fn, warmup=max(25.0, 2 * estimate_ms), rep=max(300.0, 10 * estimate_ms), return_mode="median")
    )


def first_call_seconds(fn) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    if not bool(torch.isfinite(out).all()):
        return float("nan")
    return float((out - ref).norm() / ref.norm().clamp_min(1e-30))


def pairs_visited(n: int, window: int, sinks: int) -> int:
    """(query, key) pairs SWAA computes for an n-token prefill: window keys plus the sinks outside it."""
    i = torch.arange(n, dtype=torch.float64)
    in_window = torch.clamp(i + 1, max=window)
    extra_sinks = torch.clamp(torch.clamp(i + 1 - window, min=0), max=sinks)
    return int((in_window + extra_sinks).sum())


def gib(x: float) -> float:
    return round(x / 2**30, 3)


@contextlib.contextmanager
def section(name: str):
    start = time.perf_counter()
    print(f"\n=== {name} ===", flush=True)
    RESULTS["sections"][name] = out = {}
    try:
        yield out
    except Exception as e:  # every section runs even if one breaks; the failure is kept with its traceback
        tb = traceback.format_exc()
        print(tb, flush=True)
        out["error"] = f"{type(e).__name__}: {e}"
        RESULTS["failures"].append({"section": name, "error": out["error"], "traceback": tb})
        SUMMARY.append((name, f"FAILED: {out['error'][:200]}"))
    finally:
        out["seconds"] = round(time.perf_counter() - start, 1)
        write_json()


def write_json():
    path = ARGS.json or (Path(os.environ["OUT"]) / "gpu_bench.json" if os.environ.get("OUT") else None)
    if path:
        Path(path).write_text(json.dumps(RESULTS, indent=1, default=str))


def versions() -> dict:
    import transformers

    out = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__}
    with contextlib.suppress(ImportError):
        import triton

        out["triton"] = triton.__version__
    out["kernels"] = backends.backend_status(DEVICE) if DEVICE == "cuda" else {}
    return out


# --------------------------------------------------------------------------- env
def run_env(out: dict):
    out.update(versions())
    out["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        out.update(sm=props.multi_processor_count, memory_gib=gib(props.total_memory), capability=props.major)
        with contextlib.suppress(Exception):
            smi = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.sm", "--format=csv,noheader"]
            out["nvidia_smi"] = subprocess.run(smi, capture_output=True, text=True, timeout=30).stdout.strip()
        a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
        out["matmul_bf16_tflops"] = round(2 * 8192**3 / kernel_ms(lambda: a @ b) / 1e9, 1)
        src = torch.randn(2**30 // 2, device="cuda", dtype=torch.bfloat16)
        dst = torch.empty_like(src)
        out["copy_tb_s"] = round(2 * 2**30 / kernel_ms(lambda: dst.copy_(src)) / 1e9, 2)
        del a, b, src, dst
    print(json.dumps(out, indent=1), flush=True)
    SUMMARY.append(("device", f"{out['device']}; torch {out['torch']}, transformers {out['transformers']}"))


# --------------------------------------------------------------------------- correctness
def rule_mask(q_pos, kv_pos, kv_valid, q_full, window, keep_first):
    """SWAA.md's rule, written here independently of swaa_core.engine.masks: (B, Q, KV) bool."""
    i, j = q_pos[:, :, None], kv_pos[:, None, :]
    seen = kv_valid[:, None, :] & (j <= i)
    if window is None:
        return seen
    return seen & ((i - j < window) | (j < keep_first) | q_full[:, :, None])


def float64_attention(q, k, v, mask, scale):
    """softmax(q k^T) v in float64 with GQA by repetition; rows that see no key give zeros. Returns (B, Q, H, D)."""
    groups = q.shape[1] // k.shape[1]
    kk = k.double().repeat_interleave(groups, 1)
    vv = v.double().repeat_interleave(groups, 1)
    scores = (q.double() @ kk.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~mask[:, None], float("-inf"))
    probs = torch.softmax(scores, -1).nan_to_num(0.0)
    return (probs @ vv).transpose(1, 2)


def make_case(*, n, window, keep_first=0, B=1, H=32, Hkv=8, D=128, pads=(), q_len=None, full_tail=0, seed=0):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator(device=device).manual_seed(seed)
    q_len = n if q_len is None else q_len

    def rand(*shape):
        return torch.randn(*shape, device=device, generator=gen, dtype=torch.float32).to(ARGS.dtype)

    q, k, v = rand(B, H, q_len, D), rand(B, Hkv, n, D), rand(B, Hkv, n, D)
    valid = torch.ones(B, n, dtype=torch.bool, device=device)
    for b, pad in enumerate(pads):
        valid[b, :pad] = False
    real = valid.long().cumsum(-1) - 1
    q_full = torch.zeros(B, q_len, dtype=torch.bool, device=device)
    if full_tail:
        q_full[:, -full_tail:] = True
    g = MaskGeometry(real[:, n - q_len :], real, valid, q_full, window, keep_first)
    if not pads:  # the host-known facts the engine sets for an unpadded call (they route to the fast paths)
        g.keys_all_valid, g.offsets = True, (n - q_len, 0)
        g.full_from = n - full_tail if full_tail else NO_FULL
    return q, k, v, g


ATTENTION_CASES = {
    "W256 n1000": dict(n=1000, window=256),
    "W1000 K128 n4097 (odd)": dict(n=4097, window=1000, keep_first=128),
    "W1 n777": dict(n=777, window=1),
    "W1 K4 n777": dict(n=777, window=1, keep_first=4),
    "W4096 >= n1500": dict(n=1500, window=4096),
    "W300 K700 > W n2049": dict(n=2049, window=300, keep_first=700),
    "K > n": dict(n=515, window=64, keep_first=600),
    "padded batch B3": dict(n=1200, window=256, keep_first=16, B=3, pads=(0, 137, 555)),
    "chunk: 300 queries vs 2000 keys": dict(n=2000, window=512, keep_first=64, q_len=300),
    "FA-decode tail (mixed mask)": dict(n=1024, window=128, keep_first=8, full_tail=200),
    "MQA H12/1 D64": dict(n=900, window=100, keep_first=3, H=12, Hkv=1, D=64),
    "short prompt Q=KV=77": dict(n=77, window=16, keep_first=4),
    "chunk: 77 queries vs 400 keys": dict(n=400, window=64, keep_first=8, q_len=77),
    "chunk: 77 vs 400, H8/2 D64": dict(n=400, window=64, keep_first=8, q_len=77, H=8, Hkv=2, D=64),
    "decode step Q=1": dict(n=3000, window=512, keep_first=32, q_len=1),
    "FA decode step Q=1": dict(n=3000, window=512, keep_first=32, q_len=1, full_tail=1),
}


def run_correctness(out: dict):
    decode_errors = out["decode kernel errors"] = {}
    for seed, (name, case) in enumerate(ATTENTION_CASES.items()):
        q, k, v, g = make_case(**case, seed=seed)
        scale = q.shape[-1] ** -0.5
        expected = float64_attention(
            q, k, v, rule_mask(g.q_pos, g.kv_pos, g.kv_valid, g.q_full, g.window, g.keep_first), scale
        )
        outputs = {"dispatch(flex)": backends.attend("flex", q, k, v, g, scale)}
        if backends.backend_status(q.device)["fa4"] is None:
            outputs["dispatch(fa4)"] = backends.attend("fa4", q, k, v, g, scale)
        if q.shape[2] >= 16:  # flex itself serves 16+ queries; decode steps go to SDPA / blocked
            outputs["flex"] = backends.flex(q, k, v, g, scale)
        outputs["blocked"] = backends.blocked(q, k, v, g, scale)
        if 16 <= q.shape[2] < 128:  # where inductor may choose its flex-decoding kernel: try it too
            flex_kernels.FLEX_AVOID_DECODE_KERNEL = False
            try:
                outputs["flex, decode kernel allowed"] = backends.flex(q, k, v, g, scale)
            except Exception as e:  # recorded: this is the variant the backend avoids
                decode_errors[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
            finally:
                flex_kernels.FLEX_AVOID_DECODE_KERNEL = True
        row = {name: rel_err(o, expected) for name, o in outputs.items()}
        if case.get("pads"):  # padding queries see no key: tell wrong real rows from non-zero padding rows
            real = g.kv_valid[:, g.kv_valid.shape[1] - q.shape[2] :]
            for label, o in outputs.items():
                row[f"{label} real rows"] = rel_err(o[real], expected[real])
                row[f"{label} max |pad row|"] = float(o[~real].abs().max())
        fast = ("flex", "dispatch(flex)", "dispatch(fa4)")
        row["ok"] = all(math.isfinite(row[b]) and row[b] < BF16_TOL for b in fast if b in row)
        row["blocked ok"] = math.isfinite(row["blocked"]) and row["blocked"] < BF16_TOL
        out[name] = row
        print(f"{name:36s} " + "  ".join(f"{k}={v:.2e}" for k, v in row.items() if isinstance(v, float)), flush=True)
    cases = [r for n, r in out.items() if isinstance(r, dict) and n != "decode kernel errors"]
    worst = max(max(v for k, v in r.items() if k in ("flex", "dispatch(flex)", "dispatch(fa4)")) for r in cases)
    named = {n: r for n, r in out.items() if isinstance(r, dict) and n != "decode kernel errors"}
    failed = [n for n, r in named.items() if not r["ok"]]
    blocked_failed = [n for n, r in named.items() if not r["blocked ok"]]
    decode_kernel = {
        n: f"{r['flex, decode kernel allowed']:.1e}" for n, r in named.items() if "flex, decode kernel allowed" in r
    }
    decode_kernel.update({n: "FAILED " + e[:60] for n, e in decode_errors.items()})
    out["worst_rel_err"] = worst
    SUMMARY.append(
        (
            "flex vs float64",
            f"{len(cases) - len(failed)}/{len(cases)} cases < {BF16_TOL}; worst rel err {worst:.1e}"
            + (f"; FAILED: {failed}" if failed else "")
            + (f"; blocked backend off in: {blocked_failed}" if blocked_failed else "")
            + f"; with inductor's flex-decoding kernel allowed: {decode_kernel}",
        )
    )


# --------------------------------------------------------------------------- small whole model
def small_llama(dtype, layers=4, seed=0):
    import transformers as tf

    cfg = tf.LlamaConfig(
        vocab_size=1024,
        hidden_size=512,
        intermediate_size=1024,
        num_hidden_layers=layers,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=8192,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        attn_implementation="sdpa",
    )
    torch.manual_seed(seed)
    with torch.device(DEVICE):
        model = tf.AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    model.generation_config.pad_token_id = 0
    return model.eval()


@torch.no_grad()
def run_model_check(out: dict):
    cfg = SWAAConfig(sliding_window_size=100, keep_first=8)
    model = small_llama(ARGS.dtype)
    x = torch.randint(3, 1024, (2, 777), device=DEVICE, generator=torch.Generator(DEVICE).manual_seed(1))
    with count_flex_calls() as calls, swaa(model, cfg) as state:
        out["auto_backend"] = state.backend
        flex_logits = model(x).logits
    with swaa(model, cfg, backend="reference"):
        ref_logits = model(x).logits
    with swaa(model, cfg, backend="blocked"):
        blocked_logits = model(x).logits
    out["logits_rel_err_flex_vs_reference"] = rel_err(flex_logits, ref_logits)
    out["logits_rel_err_blocked_vs_reference"] = rel_err(blocked_logits, ref_logits)
    out["flex_calls"] = calls["n"]
    out["generation_fa_decode"] = fa_decode_generation_check()
    out["padded_generation"] = padded_generation_check()
    ok = (
        out["auto_backend"] == "flex"
        and calls["n"] > 0
        and out["logits_rel_err_flex_vs_reference"] < BF16_TOL
        and out["generation_fa_decode"]["teacher_forced_equal"]
        and out["padded_generation"]["equal"]
    )
    print(json.dumps(out, indent=1), flush=True)
    SUMMARY.append(
        (
            "small Llama on GPU",
            f"{'OK' if ok else 'MISMATCH'}: backend {out['auto_backend']}, {str(ARGS.dtype)[6:]} logits rel err "
            f"{out['logits_rel_err_flex_vs_reference']:.1e} vs reference backend; FA-decode greedy == teacher-forced: "
            f"{out['generation_fa_decode']['teacher_forced_equal']}; padded batch == single: {out['padded_generation']['equal']}",
        )
    )


@contextlib.contextmanager
def count_flex_calls():
    """Count calls of backends.flex made through the dispatcher, so a check cannot pass on another backend."""
    calls = {"n": 0}
    real = backends.flex

    def spy(*a, **kw):
        calls["n"] += 1
        return real(*a, **kw)

    backends.flex = spy
    try:
        yield calls
    finally:
        backends.flex = real


def fa_decode_generation_check() -> dict:
    """fp32 so greedy argmax is stable: generated tokens must equal the argmax of one teacher-forced forward with the
    mixed mask (prompt under SWA, generated tokens full), computed by the reference backend."""
    model = small_llama(torch.float32, seed=2)
    prompt_len, new = 600, 24
    x = torch.randint(3, 1024, (1, prompt_len), device=DEVICE, generator=torch.Generator(DEVICE).manual_seed(3))
    cfg = SWAAConfig(sliding_window_size=64, keep_first=4, force_fa_decode=True)
    with swaa(model, cfg):
        gen = model.generate(x, max_new_tokens=new, min_new_tokens=new, do_sample=False)
    with swaa(model, cfg, backend="reference"):
        logits = model(gen, swaa_prompt_lengths=torch.tensor([prompt_len], device=DEVICE)).logits
    teacher = logits[0, prompt_len - 1 : -1].argmax(-1)
    with swaa(model, SWAAConfig(sliding_window_size=64, keep_first=4)):
        no_fa = model.generate(x, max_new_tokens=new, min_new_tokens=new, do_sample=False)
    return {
        "teacher_forced_equal": bool(torch.equal(teacher, gen[0, prompt_len:])),
        "differs_from_no_fa_decode": not bool(torch.equal(no_fa, gen)),
    }


def padded_generation_check() -> dict:
    model = small_llama(torch.float32, seed=4)
    g = torch.Generator(DEVICE).manual_seed(5)
    a, b = (
        torch.randint(3, 1024, (400,), device=DEVICE, generator=g),
        torch.randint(3, 1024, (263,), device=DEVICE, generator=g),
    )
    batch = torch.zeros(2, 400, dtype=torch.long, device=DEVICE)
    mask = torch.zeros_like(batch)
    batch[0], mask[0] = a, 1
    batch[1, 137:], mask[1, 137:] = b, 1
    with swaa(model, SWAAConfig(sliding_window_size=50, keep_first=4)):
        both = model.generate(batch, attention_mask=mask, max_new_tokens=12, do_sample=False)
        alone_a = model.generate(a[None], max_new_tokens=12, do_sample=False)
        alone_b = model.generate(b[None], max_new_tokens=12, do_sample=False)
    equal = torch.equal(both[0, 400:], alone_a[0, 400:]) and torch.equal(both[1, 400:], alone_b[0, 263:])
    return {"equal": bool(equal)}


# --------------------------------------------------------------------------- kernels
@contextlib.contextmanager
def spy_block_masks():
    """Record every block mask the flex backend builds: shape, time, extra GPU memory (vs an n x n bool)."""
    records: list[dict] = []
    real = flex_kernels._create_block_mask

    def spy(g, B, Q, KV, device, *a, **kw):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        bm = real(g, B, Q, KV, device, *a, **kw)
        torch.cuda.synchronize()
        records.append(
            dict(
                Q=Q,
                KV=KV,
                seconds=round(time.perf_counter() - start, 3),
                extra_gib=gib(torch.cuda.max_memory_allocated() - base),
                n_x_n_bool_gib=gib(Q * KV),
            )
        )
        return bm

    flex_kernels._create_block_mask = spy
    try:
        yield records
    finally:
        flex_kernels._create_block_mask = real


def same_tiles(a, b) -> bool:
    """Two BlockMasks list the same partial and full tiles (the order inside a row is free)."""

    def tiles(num, idx):
        cols = idx.shape[-1]
        listed = torch.arange(cols, device=idx.device) < num[..., None]
        dense = torch.zeros(*idx.shape[:-1], cols + 1, dtype=torch.bool, device=idx.device)
        return dense.scatter_(-1, torch.where(listed, idx.long(), cols), True)

    return torch.equal(tiles(a.kv_num_blocks, a.kv_indices), tiles(b.kv_num_blocks, b.kv_indices)) and torch.equal(
        tiles(a.full_kv_num_blocks, a.full_kv_indices), tiles(b.full_kv_num_blocks, b.full_kv_indices)
    )


def run_kernels(out: dict):
    from torch.nn.attention.flex_attention import create_block_mask

    from swaa_core.engine.masks import swaa_mask_mod

    kernel_rows(out)
    n = min(ARGS.lengths)  # torch's (uncompiled) builder holds the n x n bool: affordable at the shortest length
    g = make_case(n=n, window=ARGS.window, keep_first=ARGS.sinks, H=1, Hkv=1, D=16, seed=1)[3]
    ours = flex_kernels._create_block_mask(g, 1, n, n, g.q_pos.device)
    out["same_tiles_as_torch_builder"] = same_tiles(
        ours, create_block_mask(swaa_mask_mod(g), 1, None, n, n, device=g.q_pos.device)
    )
    for r in out["rows"]:
        best = {k: v for k, v in r["pct_ideal_vs_sdpa"].items() if k.startswith("ours")}
        SUMMARY.append(
            (
                f"attention {r['n'] // 1024}K (ideal {r['ideal']}x)",
                "; ".join(f"{k} {statistics.median(v):.2f} ms" for k, v in r["ms"].items())
                + f" | % of ideal vs SDPA {r['pct_ideal_vs_sdpa']} | vs FA4 {r.get('pct_ideal_vs_fa4')}"
                + f" | first call s {r['first_call_s']} | rel err {r['rel_err_vs_blocked']} | ours {best}",
            )
        )
    SUMMARY.append(
        ("block masks", f"same tiles as torch's builder at {n // 1024}K: {out['same_tiles_as_torch_builder']}")
    )


def kernel_rows(out: dict):
    out["rows"] = []
    for n in ARGS.lengths:
        torch.cuda.empty_cache()
        row = kernel_row(n)
        out["rows"].append(row)
        print(json.dumps(row), flush=True)


def kernel_row(n: int) -> dict:
    """One length, every kernel on the same q/k/v, timed in turns: SDPA causal, FA4 causal (the references), plain
    FlexAttention with an arithmetic sink+window mask (Triton, and FLASH = FA4 underneath), and swaa_core's paths."""
    from torch.nn.attention.flex_attention import flex_attention

    W, K, H, Hkv, D = ARGS.window, ARGS.sinks, 32, 8, 128
    q, k, v, g = make_case(n=n, window=W, keep_first=K, H=H, Hkv=Hkv, D=D, seed=n)
    # what the engine knows for an unpadded prefill (without these hints each call would wait on the GPU)
    g.offsets, g.full_from, g.keys_all_valid, g.reach, g.queries_all_full = (0, 0), NO_FULL, True, n - 1, False
    scale = D**-0.5
    bm = flex_kernels._prefill_block_mask(n, W, K, str(q.device))  # constants-only predicate: what FLASH accepts
    compiled = torch.compile(flex_attention, fullgraph=True, dynamic=False)

    def plain_flex(backend):
        def run():
            with torch._dynamo.config.patch(recompile_limit=flex_kernels.FLEX_RECOMPILE_LIMIT):
                return compiled(
                    q, k, v, block_mask=bm, scale=scale, enable_gqa=True, kernel_options={"BACKEND": backend}
                )

        return run

    kernels = {
        "sdpa_causal": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=True),
        "flex_triton": plain_flex("TRITON"),
        "flex_flash": plain_flex("FLASH"),
        "ours_flex": lambda: backends.flex_simple(q, k, v, g, scale),
    }
    first = {}
    if backends.backend_status(q.device)["fa4"] is None:
        kernels["fa4_causal"] = lambda: backends._fa4_window(q, k, v, causal=True, window_left=None, scale=scale)[0]
        kernels["fa4_window_no_sinks"] = lambda: backends._fa4_window(
            q, k, v, causal=True, window_left=W - 1, scale=scale
        )[0]
        kernels["ours_fa4"] = lambda: backends.attend("fa4", q, k, v, g, scale)
        kernels["ours_fa4_two_pass"] = lambda: backends.window_sink(q, k, v, g, scale, backends._fa4_window)
        tail = q[:, :, W + K :]
        kernels["part_sink_pass"] = lambda: backends._fa4_window(
            tail, k[:, :, :K], v[:, :, :K], causal=False, window_left=None, scale=scale
        )
        a, la = backends._fa4_window(tail, k, v, causal=True, window_left=W - 1, scale=scale)
        kernels["part_merge"] = lambda: backends.merge_lse(a, la, a, la)
    reference = backends.blocked(q, k, v, g, scale)  # an independent O(n*W) path: SDPA + masks
    errors, dead = {}, []
    for name, fn in kernels.items():
        try:
            first[name] = round(first_call_seconds(fn), 2)
            if name not in ("sdpa_causal", "fa4_causal", "fa4_window_no_sinks") and not name.startswith("part_"):
                out = fn()
                out = out.transpose(1, 2) if out.shape[1] == H else out  # flex's own layout is (B, H, Q, D)
                errors[name] = rel_err(out, reference)
        except Exception as e:  # a kernel that cannot run here is reported, the others still run
            first[name] = f"{type(e).__name__}: {str(e)[:300]}"
            dead.append(name)
    for name in dead:
        kernels.pop(name)
    times = {name: [] for name in kernels}
    for _ in range(2):  # alternate, so drift shows up as spread rather than as a difference
        for name, fn in kernels.items():
            times[name].append(kernel_ms(fn))
    causal_pairs, swaa_pairs = n * (n + 1) // 2, pairs_visited(n, W, K)
    ideal = causal_pairs / swaa_pairs
    med = {name: statistics.median(t) for name, t in times.items()}
    row = dict(n=n, ideal=round(ideal, 2), ms=times, first_call_s=first, rel_err_vs_blocked=errors)
    row["flash_failures"] = {str(k): e for k, e in flex_kernels._FLASH_FAILED.items()}
    for name in [name for name in med if name.startswith("part_")]:
        row[name] = med.pop(name)
    for name, ms in med.items():
        pairs = causal_pairs if name in ("sdpa_causal", "fa4_causal") else swaa_pairs
        row.setdefault("tflops_useful", {})[name] = round(tflops(pairs, H * D, ms), 1)
        if name not in ("sdpa_causal", "fa4_causal"):
            row.setdefault("pct_ideal_vs_sdpa", {})[name] = round(100 * med["sdpa_causal"] / ms / ideal, 1)
            if "fa4_causal" in med:
                row.setdefault("pct_ideal_vs_fa4", {})[name] = round(100 * med["fa4_causal"] / ms / ideal, 1)
    return row


def tflops(pairs: int, head_width: int, ms: float) -> float:
    """Forward attention: two matrix products of 2 flops per (query, key, channel)."""
    return 4 * head_width * pairs / (ms * 1e-3) / 1e12


# --------------------------------------------------------------------------- 8B-shaped model
def llama8b(layers: int):
    import transformers as tf

    cfg = tf.LlamaConfig(
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=layers,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=131072,
        attn_implementation="sdpa",
        bos_token_id=128000,
        eos_token_id=128001,
        pad_token_id=None,
    )
    torch.manual_seed(0)
    with torch.device("cuda"):
        return tf.AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).eval()


def prefill_configs(layers: int) -> dict:
    W, K = ARGS.window, ARGS.sinks
    return {
        "full (sdpa)": None,
        f"SWAA W{W} K{K}": SWAAConfig(sliding_window_size=W, keep_first=K),
        f"SWAA W{W} K{K} + 1/2 FA layers": SWAAConfig(
            sliding_window_size=W, keep_first=K, non_sliding_layers=SWAAConfig.fa_layers("1/2", layers)
        ),
    }


@torch.no_grad()
def run_prefill(out: dict, model):
    rows = out["rows"] = []
    for n in ARGS.model_lengths:
        ids = torch.randint(0, 128000, (1, n), device="cuda", generator=torch.Generator("cuda").manual_seed(n))
        row = {"n": n}
        for label, cfg in prefill_configs(model.config.num_hidden_layers).items():
            torch.cuda.empty_cache()
            row[label] = prefill_one(model, ids, cfg)
            print(n, label, row[label], flush=True)
        rows.append(row)
    summarise_prefill(rows, model.config.num_hidden_layers)


def prefill_one(model, ids, cfg) -> dict:
    def forward():
        return model(ids, use_cache=False, logits_to_keep=1)

    try:
        with swaa(model, cfg):
            first = first_call_seconds(forward)
            torch.cuda.reset_peak_memory_stats()
            median, times = timed(forward, reps=ARGS.reps, warmup=0)
    except torch.OutOfMemoryError as e:
        return dict(error=f"OOM: {str(e)[:200]}")
    return dict(
        seconds=round(median, 3),
        times=[round(t, 3) for t in times],
        first_call_s=round(first, 2),
        peak_gib=gib(torch.cuda.max_memory_allocated()),
    )


def prefill_flops(n: int, cfg: SWAAConfig | None, layers: int) -> float:
    """FLOP model of the 8B-shaped prefill: 2 flops per weight per token in the linear layers, 4 * heads * head dim
    per visible (query, key) pair in attention (lm_head only for the last token)."""
    hidden, kv_width, mlp = 4096, 1024, 14336
    linear = 2 * n * layers * (2 * hidden * hidden + 2 * hidden * kv_width + 3 * hidden * mlp)
    causal = n * (n + 1) // 2
    pairs = 0
    for i in range(layers):
        slides = cfg is not None and cfg.layer_slides(i)
        pairs += pairs_visited(n, cfg.sliding_window_size, cfg.keep_first) if slides else causal
    return linear + 4 * hidden * pairs


def summarise_prefill(rows, layers: int):
    for r in rows:
        full = r["full (sdpa)"].get("seconds")
        cells = []
        configs = prefill_configs(layers)
        for label in list(r)[1:]:
            s = r[label].get("seconds")
            if not s:
                cells.append(f"{label} {r[label].get('error', '?')[:40]}")
                continue
            cell = f"{label} {s} s"
            if full and label != "full (sdpa)":
                ideal = prefill_flops(r["n"], None, layers) / prefill_flops(r["n"], configs[label], layers)
                r[label]["flop_model_ideal"] = round(ideal, 2)
                r[label]["pct_of_ideal"] = round(100 * full / s / ideal, 1)
                cell += f" ({full / s:.2f}x; FLOP-model ideal {ideal:.2f}x: {100 * full / s / ideal:.0f}%)"
            cells.append(cell)
        SUMMARY.append((f"8B prefill {r['n'] // 1024}K", "; ".join(cells)))


def decode_configs(layers: int) -> dict:
    W, K = ARGS.window, ARGS.sinks
    return {
        "full (sdpa)": None,
        f"SWAA W{W} K{K}, SWA decode (evicting cache)": SWAAConfig(sliding_window_size=W, keep_first=K),
        f"SWAA W{W} K{K} + FA decode": SWAAConfig(sliding_window_size=W, keep_first=K, force_fa_decode=True),
        f"SWAA W{W} K{K} + 1/2 FA layers + FA decode": SWAAConfig(
            sliding_window_size=W,
            keep_first=K,
            force_fa_decode=True,
            non_sliding_layers=SWAAConfig.fa_layers("1/2", layers),
        ),
    }


def generate(model, ids, tokens):
    return model.generate(
        ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, return_dict_in_generate=True
    )


@torch.no_grad()
def run_decode(out: dict, model):
    """Decode speed is launch-bound at batch 1, so it drifts with the host: configs take turns within each repeat and
    the per-token time is (prefill + new tokens) - (prefill + 1 token), median and best over repeats. Then one
    end-to-end run per config: a long prompt plus --e2e-tokens new tokens, total seconds."""
    configs = decode_configs(model.config.num_hidden_layers)
    new = ARGS.new_tokens
    rows = out["rows"] = {}
    for n in ARGS.decode_prompts:
        ids = torch.randint(0, 128000, (1, n), device="cuda", generator=torch.Generator("cuda").manual_seed(7))
        for cfg in configs.values():
            with swaa(model, cfg):
                generate(model, ids, 2)  # warm-up: compile, block masks
        samples = {label: {"first": [], "all": []} for label in configs}
        for _ in range(ARGS.reps):
            for label, cfg in configs.items():
                with swaa(model, cfg):
                    for key, tokens in (("first", 1), ("all", new + 1)):
                        run = functools.partial(generate, model, ids, tokens)
                        samples[label][key].append(timed(run, reps=1, warmup=0)[0])
        rows[n] = {}
        for label, cfg in configs.items():
            with swaa(model, cfg):
                result = generate(model, ids, new + 1)
            per_layer = kv_cache_bytes(result.past_key_values)
            per_token = [(a - f) / new for f, a in zip(samples[label]["first"], samples[label]["all"], strict=True)]
            rows[n][label] = dict(
                ms_per_token_median=round(statistics.median(per_token) * 1e3, 2),
                ms_per_token_best=round(min(per_token) * 1e3, 2),
                ms_per_token=[round(t * 1e3, 2) for t in per_token],
                tokens_per_s=round(1 / statistics.median(per_token), 1),
                kv_total_gib=gib(sum(per_layer)),
                generated=result.sequences.shape[1] - n,
            )
            del result
        full = rows[n]["full (sdpa)"]["ms_per_token_median"]
        for label, r in rows[n].items():
            r["vs_full"] = round(r["ms_per_token_median"] / full, 3)
            print(n, label, r, flush=True)
            SUMMARY.append(
                (
                    f"decode {n // 1024}K +{new}",
                    f"{label}: {r['ms_per_token_median']} ms/token (best {r['ms_per_token_best']}; {r['vs_full']}x "
                    f"full's time), {r['tokens_per_s']} tok/s, KV {r['kv_total_gib']} GiB",
                )
            )
        del ids
        torch.cuda.empty_cache()
    if ARGS.e2e_tokens:
        run_end_to_end(out, model, configs)


def run_end_to_end(out: dict, model, configs: dict):
    n, new = max(ARGS.decode_prompts), ARGS.e2e_tokens
    ids = torch.randint(0, 128000, (1, n), device="cuda", generator=torch.Generator("cuda").manual_seed(8))
    e2e = out["end_to_end"] = {}
    for label, cfg in configs.items():
        with swaa(model, cfg):
            e2e[label] = round(timed(functools.partial(generate, model, ids, new), reps=1, warmup=0)[0], 2)
        torch.cuda.empty_cache()
    full = e2e["full (sdpa)"]
    SUMMARY.append(
        (
            f"end to end {n // 1024}K + {new} tokens",
            "; ".join(f"{label} {t} s ({full / t:.2f}x)" for label, t in e2e.items()),
        )
    )
    print(e2e, flush=True)


# --------------------------------------------------------------------------- LoRA training step (issue: fine-tuning)
def qwen3_4b(layers: int = 36):
    import transformers as tf

    cfg = tf.Qwen3Config(
        vocab_size=151936,
        hidden_size=2560,
        intermediate_size=9728,
        num_hidden_layers=layers,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=131072,
        attn_implementation="sdpa",
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    with torch.device("cuda"):
        return tf.AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)


def train_step(peft_model, opt, ids, labels, prompt_tokens, cfg):
    kwargs = dict(input_ids=ids, labels=labels)
    if cfg is not None and cfg.force_fa_decode:
        kwargs["swaa_prompt_lengths"] = torch.tensor([prompt_tokens])
    peft_model(**kwargs).loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def run_train(out: dict):
    """LoRA r=16 on q/k/v (swaa_core's defaults), gradient checkpointing, batch 1, one example of --train-prompts
    tokens + 64 answer tokens with labels on the answer; configurations in turns; seconds per optimizer step (median
    after warm-up) and peak GPU memory. Same attention path as swaa_core.train.lora.train_lora (which wraps it in a
    transformers Trainer)."""
    from peft import get_peft_model

    from swaa_core.train.lora import TrainSettings, _training_mode, lora_config

    model = qwen3_4b()
    peft_model = get_peft_model(model, lora_config(TrainSettings()))
    base = peft_model.get_base_model()
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-4)
    W, K, answer = ARGS.window, ARGS.sinks, 64
    configs = {
        "full (sdpa)": None,
        f"SWA W{W} K{K} + FA decode (mixed mask)": SWAAConfig(
            sliding_window_size=W, keep_first=K, force_fa_decode=True
        ),
        f"SWA W{W} K{K}": SWAAConfig(sliding_window_size=W, keep_first=K),
    }
    rows = out["rows"] = {}
    with _training_mode(base, True):
        peft_model.train()
        for n in ARGS.train_prompts:
            ids = torch.randint(0, 150000, (1, n + answer), device="cuda")
            labels = ids.clone()
            labels[:, :n] = -100

            step = functools.partial(train_step, peft_model, opt, ids, labels, n)

            samples = {label: [] for label in configs}
            peaks = {label: 0.0 for label in configs}
            for label, cfg in configs.items():
                with swaa(base, cfg):
                    first = first_call_seconds(functools.partial(step, cfg))
                    step(cfg)
                print(n, label, "first step", round(first, 1), "s", flush=True)
            for _ in range(ARGS.reps):
                for label, cfg in configs.items():
                    with swaa(base, cfg):
                        torch.cuda.empty_cache()
                        torch.cuda.reset_peak_memory_stats()
                        samples[label].append(timed(functools.partial(step, cfg), reps=1, warmup=0)[0])
                        peaks[label] = max(peaks[label], gib(torch.cuda.max_memory_allocated()))
            full = statistics.median(samples["full (sdpa)"])
            rows[n] = {
                label: dict(
                    s_per_step=round(statistics.median(t), 3),
                    times=[round(x, 3) for x in t],
                    speedup_vs_full=round(full / statistics.median(t), 2),
                    peak_gib=peaks[label],
                )
                for label, t in samples.items()
            }
            print(n, json.dumps(rows[n]), flush=True)
            for label, r in rows[n].items():
                SUMMARY.append(
                    (
                        f"LoRA step {n // 1024}K+{answer}",
                        f"{label}: {r['s_per_step']} s ({r['speedup_vs_full']}x), peak {r['peak_gib']} GiB",
                    )
                )
        if ARGS.profile_train:
            n = ARGS.train_prompts[0]
            ids = torch.randint(0, 150000, (1, n + answer), device="cuda")
            labels = ids.clone()
            labels[:, :n] = -100
            cfg = list(configs.values())[1]
            with swaa(base, cfg), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                peft_model(input_ids=ids, labels=labels, swaa_prompt_lengths=torch.tensor([n])).loss.backward()
                sync()
            table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=15)
            print(table, flush=True)
            out["profile_mixed"] = table
    del peft_model, base, model, opt
    torch.cuda.empty_cache()


# --------------------------------------------------------------------------- main
def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sections", nargs="+", default=["env", "correctness", "model", "kernels", "prefill", "decode"])
    p.add_argument("--lengths", type=int, nargs="+", default=[8192, 32768, 131072])
    p.add_argument("--model-lengths", type=int, nargs="+", default=[32768, 65536, 131072])
    p.add_argument("--layers", type=int, default=32, help="layers of the 8B-shaped model (32 as in Llama-3.1-8B)")
    p.add_argument("--window", type=int, default=2048)
    p.add_argument("--sinks", type=int, default=128)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--decode-prompts", type=int, nargs="+", default=[8192, 32768, 131072])
    p.add_argument("--e2e-tokens", type=int, default=512, help="new tokens of the end-to-end run (0: skip it)")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--train-prompts", type=int, nargs="+", default=[16384, 32768])
    p.add_argument("--profile-train", action="store_true")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--json", default=None)
    p.add_argument("--watchdog", type=float, default=0, help="print all stacks every N seconds (0: off)")
    args = p.parse_args(argv)
    args.dtype = getattr(torch, args.dtype)
    return args


def main(argv=None):
    global ARGS, DEVICE
    ARGS = parse(argv)
    if ARGS.watchdog:
        faulthandler.dump_traceback_later(ARGS.watchdog, repeat=True)
    DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
    RESULTS["args"] = {k: str(v) for k, v in vars(ARGS).items()}
    RESULTS["date"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    RESULTS["versions"] = versions()
    plain = {"env": run_env, "correctness": run_correctness, "model": run_model_check, "kernels": run_kernels}
    plain["train"] = run_train
    for name in ARGS.sections:
        if name in plain:
            with section(name) as out:
                plain[name](out)
    big = [s for s in ARGS.sections if s in ("prefill", "decode")]
    if big:
        model = None
        with section("build 8B-shaped model") as out:
            start = time.perf_counter()
            model = llama8b(ARGS.layers)
            sync()
            out.update(
                seconds_to_build=round(time.perf_counter() - start, 1),
                params_b=round(model.num_parameters() / 1e9, 2),
                weights_gib=gib(torch.cuda.memory_allocated()),
            )
            print(out, flush=True)
        for name in big:
            if model is not None:
                with section(name) as out:
                    (run_prefill if name == "prefill" else run_decode)(out, model)
        if model is not None:
            remove_swaa(model)
    print("\n| check | result |\n|---|---|")
    for name, text in SUMMARY:
        print(f"| {name} | {text} |")
    print(f"\nfailures: {len(RESULTS['failures'])}")
    return 1 if RESULTS["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
