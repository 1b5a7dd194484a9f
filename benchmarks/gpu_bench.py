"""GPU check of the SWAA engine: environment, correctness against float64, a small whole model, attention kernels.

    PYTHONUNBUFFERED=1 python benchmarks/gpu_bench.py --sections env correctness model kernels

Sections (each one guarded: a failure is recorded with its traceback and the next section still runs):
- env:         GPU, driver, torch / transformers / triton versions, measured matmul rate and copy bandwidth.
- correctness: the flex backend (and the dispatcher) vs an independent float64 attention on random bf16 inputs:
               GQA, odd lengths, W=1, W >= n, keep_first 0 / > W, padded batch, chunked queries, FA-decode queries.
- model:       a small random-weight Llama in bf16 on the GPU: SWAA logits (flex) vs the reference backend, and
               greedy generation with FA decode (fp32) vs a teacher-forced run of the reference backend.
- kernels:     SDPA full causal vs SWAA flex (W=2048, 128 sinks) at --lengths; bf16, head dim 128, 32/8 heads.
               With FA4: its causal kernel, its local kernel over W and over W + sinks keys (SWAA's work per row),
               and each kernel's % of the ideal of its own work against FA4 causal.
               Block masks: same tiles as torch's builder.
The 8B-shaped prefill and decode are in gpu_prefill.py, the LoRA training step in gpu_train.py, the CUDA-graph
decode in gpu_decode.py.

A short Markdown table is printed last; full results go to $OUT/gpu_bench.json (or --json).
"""

from __future__ import annotations

import contextlib
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import gpu_common as common  # noqa: E402
from gpu_common import (  # noqa: E402
    BF16_TOL,
    DEVICE,
    SUMMARY,
    first_call_seconds,
    float64_attention,
    gib,
    kernel_ms,
    make_case,
    pairs_visited,
    rel_err,
    versions,
)

from swaa_core import SWAAConfig, swaa  # noqa: E402
from swaa_core.engine import backends  # noqa: E402
from swaa_core.engine.kernels import flex as flex_kernels  # noqa: E402
from swaa_core.engine.masks import NO_FULL  # noqa: E402

ARGS = None


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
        q, k, v, g = make_case(**case, seed=seed, dtype=ARGS.dtype)
        scale = q.shape[-1] ** -0.5
        expected = float64_attention(q, k, v, g, scale)
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
    g = make_case(n=n, window=ARGS.window, keep_first=ARGS.sinks, H=1, Hkv=1, D=16, seed=1, dtype=ARGS.dtype)[3]
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
                + f" | % of own work's ideal vs FA4 {r.get('pct_own_ideal_vs_fa4')}"
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
    q, k, v, g = make_case(n=n, window=W, keep_first=K, H=H, Hkv=Hkv, D=D, seed=n, dtype=ARGS.dtype)
    # what the engine knows for an unpadded prefill (without these hints each call would wait on the GPU)
    g.offsets, g.full_from, g.keys_all_valid, g.extent, g.queries_all_full = (0, 0), NO_FULL, True, (0, n - 1), False
    scale = D**-0.5
    bm = flex_kernels._prefill_block_mask(n, g.kind, str(q.device))  # constants-only predicate: what FLASH accepts
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
        kernels["fa4_causal"] = lambda: backends.fa4_window(q, k, v, causal=True, window_left=None, scale=scale)[0]
        kernels["fa4_window_no_sinks"] = lambda: backends.fa4_window(
            q, k, v, causal=True, window_left=W - 1, scale=scale
        )[0]
        # FA4's own local kernel over a window as wide as SWAA's rows (W + sinks keys): the same work as ours
        kernels["fa4_window_same_work"] = lambda: backends.fa4_window(
            q, k, v, causal=True, window_left=W + K - 1, scale=scale
        )[0]
        kernels["ours_fa4"] = lambda: backends.attend("fa4", q, k, v, g, scale)
        kernels["ours_fa4_two_pass"] = lambda: backends.window_sink(q, k, v, g, scale, backends.fa4_window)
        tail = q[:, :, W + K :]
        kernels["part_sink_pass"] = lambda: backends.fa4_window(
            tail, k[:, :, :K], v[:, :, :K], causal=False, window_left=None, scale=scale
        )
        a, la = backends.fa4_window(tail, k, v, causal=True, window_left=W - 1, scale=scale)
        kernels["part_merge"] = lambda: backends.merge_lse(a, la, a, la)
    reference = backends.blocked(q, k, v, g, scale)  # an independent O(n*W) path: SDPA + masks
    errors, dead = {}, []
    for name, fn in kernels.items():
        try:
            first[name] = round(first_call_seconds(fn), 2)
            if not name.startswith(("sdpa_", "fa4_", "part_")):
                out = fn()
                out = out.transpose(1, 2) if out.shape[1] == H else out  # flex's own layout is (B, H, Q, D)
                errors[name] = rel_err(out, reference)
        except Exception as e:  # a kernel that cannot run here is reported, the others still run
            first[name] = f"{type(e).__name__}: {str(e)[:300]}"
            dead.append(name)
    for name in dead:
        kernels.pop(name)
    times = {name: [] for name in kernels}
    for _ in range(ARGS.reps):  # alternate, so drift shows up as spread rather than as a difference
        for name, fn in kernels.items():
            times[name].append(kernel_ms(fn))
    row_host = {name: round(host_ms(fn), 3) for name, fn in kernels.items()}
    causal_pairs, swaa_pairs = n * (n + 1) // 2, pairs_visited(n, W, K)
    ideal = causal_pairs / swaa_pairs
    med = {name: statistics.median(t) for name, t in times.items()}
    row = dict(n=n, ideal=round(ideal, 2), ms=times, first_call_s=first, rel_err_vs_blocked=errors)
    row["host_ms"] = row_host  # a kernel whose host time reaches its GPU time is launch-bound at this size
    row["spread_pct"] = {name: round(100 * (max(t) - min(t)) / min(t), 1) for name, t in times.items()}
    row["flash_failures"] = {str(k): e for k, e in flex_kernels._FLASH_FAILED.items()}
    for name in [name for name in med if name.startswith("part_")]:
        row[name] = med.pop(name)
    pairs = {"sdpa_causal": causal_pairs, "fa4_causal": causal_pairs, "fa4_window_no_sinks": pairs_visited(n, W, 0)}
    pairs["fa4_window_same_work"] = pairs_visited(n, W + K, 0)
    for name, ms in med.items():
        row.setdefault("tflops_useful", {})[name] = round(tflops(pairs.get(name, swaa_pairs), H * D, ms), 1)
        if name not in ("sdpa_causal", "fa4_causal"):
            row.setdefault("pct_ideal_vs_sdpa", {})[name] = round(100 * med["sdpa_causal"] / ms / ideal, 1)
            if "fa4_causal" in med:
                row.setdefault("pct_ideal_vs_fa4", {})[name] = round(100 * med["fa4_causal"] / ms / ideal, 1)
    if "fa4_causal" in med:
        # each kernel against the ideal of its own work: what FA4's local kernel itself reaches bounds what a
        # sink + window mask run on FA4's tiles can reach
        row["pct_own_ideal_vs_fa4"] = {
            name: round(100 * med["fa4_causal"] / med[name] * pairs.get(name, swaa_pairs) / causal_pairs, 1)
            for name in med
            if name not in ("sdpa_causal", "fa4_causal")
        }
    return row


def host_ms(fn, calls: int = 20) -> float:
    """Milliseconds of host time to issue one call (no synchronisation inside the loop; 20 calls stay far below the
    launch queue's depth, so the host is never held back by the GPU)."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize()
    return 1e3 * elapsed / calls


def tflops(pairs: int, head_width: int, ms: float) -> float:
    """Forward attention: two matrix products of 2 flops per (query, key, channel)."""
    return 4 * head_width * pairs / (ms * 1e-3) / 1e12


# --------------------------------------------------------------------------- main
def parse(argv=None):
    p = common.base_parser(__doc__, ["env", "correctness", "model", "kernels"])
    p.add_argument("--lengths", type=int, nargs="+", default=[8192, 32768, 131072])
    p.add_argument("--dtype", default="bfloat16")
    args = p.parse_args(argv)
    args.dtype = getattr(torch, args.dtype)
    return args


def main(argv=None):
    global ARGS
    ARGS = parse(argv)
    common.start(ARGS, "gpu_bench")
    runs = {"env": run_env, "correctness": run_correctness, "model": run_model_check, "kernels": run_kernels}
    for name in ARGS.sections:
        with common.section(name) as out:
            runs[name](out)
    return common.finish()


if __name__ == "__main__":
    sys.exit(main())
