"""Which kernel runs a full-attention prefill layer, and what each would cost: one causal layer of the 8B attention shape
(32 query / 8 KV heads, head dim 128, bf16, batch 1) through SDPA with its own choice and with each of its kernels
forced, with GQA (``enable_gqa``) and with the KV heads expanded, and through FlashAttention-4 when it is installed;
then the 8B-shaped model's whole prefill (``model(ids, logits_to_keep=1)``, transformers' SDPA) with SDPA's choice and
with each kernel forced; and a profile of one prefill on a few layers, full and SWA (where the other time goes).

    PYTHONUNBUFFERED=1 python benchmarks/gpu_full_prefill.py --lengths 32768 131072
    PYTHONUNBUFFERED=1 python benchmarks/gpu_full_prefill.py --sections profile --model-lengths 131072
    PYTHONUNBUFFERED=1 python benchmarks/gpu_full_prefill.py --sections fused --model-lengths 32768 131072

Why: end to end at 128K on an H100 (2026-12-06), the full-attention prefill took 26-33 s, about 0.75 s a layer for
attention alone, where a FlashAttention-class kernel needs about 0.25 s. Results go to $OUT/gpu_full_prefill.json.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import gpu_common as common  # noqa: E402
from gpu_common import SUMMARY, llama8b  # noqa: E402

from swaa_core.engine.kernels.flash import fa4_func  # noqa: E402

ARGS = None
KERNELS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
}


def gpu_seconds(fn, reps: int) -> float:
    fn()  # warm-up: a cuDNN graph or a JIT build is not the kernel's cost
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return min(times)


def attempt(fn, reps: int):
    try:
        return round(gpu_seconds(fn, reps) * 1e3, 1)
    except Exception as e:  # a kernel that refuses this call: its reason is the result
        return f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"


def layer_row(L: int) -> dict:
    g = torch.Generator("cuda").manual_seed(0)
    q = torch.randn(1, 32, L, 128, device="cuda", dtype=torch.bfloat16, generator=g)
    k, v = (torch.randn(1, 8, L, 128, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(2))
    ke, ve = k.repeat_interleave(4, dim=1), v.repeat_interleave(4, dim=1)
    row = {"flop_tera": round(4 * 32 * 128 * L * L / 2 / 1e12, 1)}

    def gqa():
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

    def expanded():
        return F.scaled_dot_product_attention(q, ke, ve, is_causal=True)

    row["sdpa gqa, sdpa's choice"] = attempt(gqa, ARGS.reps)
    row["sdpa expanded, sdpa's choice"] = attempt(expanded, ARGS.reps)
    for name, kernel in KERNELS.items():
        for label, fn in (("gqa", gqa), ("expanded", expanded)):
            with sdpa_kernel([kernel]):
                row[f"sdpa {label}, {name}"] = attempt(fn, ARGS.reps)
    fa4 = fa4_func()
    if callable(fa4):
        qt, kt, vt = (t.transpose(1, 2).contiguous() for t in (q, k, v))
        row["fa4 causal"] = attempt(lambda: fa4(qt, kt, vt, causal=True), ARGS.reps)
    else:
        row["fa4 causal"] = f"not run: {fa4}"
    return row


def run_layer(out: dict):
    for L in ARGS.lengths:
        row = out[str(L)] = layer_row(L)
        print(L, row, flush=True)
        SUMMARY.append((f"causal layer {L // 1024}K, ms", str(row)))
        torch.cuda.empty_cache()


@torch.no_grad()
def run_model(out: dict):
    model = llama8b(ARGS.layers)
    for L in ARGS.model_lengths:
        ids = torch.randint(0, 128000, (1, L), device="cuda", generator=torch.Generator("cuda").manual_seed(1))
        row = out[str(L)] = {}

        def prefill(ids=ids):
            return model(ids, logits_to_keep=1)

        row["sdpa's choice"] = attempt(prefill, 1)
        for name, kernel in KERNELS.items():
            with sdpa_kernel([kernel]):
                row[name] = attempt(prefill, 1)
        print(L, row, flush=True)
        SUMMARY.append((f"model prefill {L // 1024}K, ms", str(row)))
        torch.cuda.empty_cache()


@torch.no_grad()
def run_profile(out: dict):
    """The kernels of one prefill at the longest --model-lengths on a --profile-layers model, by GPU time: the model's
    own forward, then under SWA (--window keys + --sinks) its forward and ``fast_generate``'s prefill of one new
    token, eager and compiled (--window 0: the model's own forward only)."""
    import time

    from torch.profiler import ProfilerActivity, profile

    from swaa_core import SWAAConfig, swaa
    from swaa_core.engine.fast_decode import fast_generate

    model = llama8b(ARGS.profile_layers)
    L = max(ARGS.model_lengths)
    ids = torch.randint(0, 128000, (1, L), device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    forward = lambda: model(ids, logits_to_keep=1)  # noqa: E731
    runs = [("model, full", None, forward)]
    if ARGS.window:
        cfg = SWAAConfig(sliding_window_size=ARGS.window, keep_first=ARGS.sinks)
        runs += [("model, swa", cfg, forward)]
        runs += [("fast_generate, swa", cfg, lambda: fast_generate(model, ids, max_new_tokens=1, eos_token_id=[]))]
        fused = lambda: fast_generate(model, ids, max_new_tokens=1, eos_token_id=[], compile=True)  # noqa: E731
        runs += [("fast_generate, swa, compile=True (fused prefill)", cfg, fused)]
    for name, cfg, run in runs:
        with swaa(model, cfg) if cfg else contextlib.nullcontext():
            run()  # warm-up: JIT builds and cuDNN graphs are not the prefill's cost
            torch.cuda.synchronize()
            start = time.perf_counter()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                run()
                torch.cuda.synchronize()
            wall = time.perf_counter() - start
        table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=20, max_name_column_width=90)
        print(f"{name}: {wall:.2f} s wall (profiled)\n{table}", flush=True)
        out[name] = {"wall_s": round(wall, 3), "table": table}


@torch.no_grad()
def run_fused(out: dict):
    """The --layers model's prefill at each --model-lengths, full (SWAA's like-for-like full attention) and SWA, in
    turns: eager, and with the norms, MLPs and attention modules compiled as ``fast_generate(compile=...)`` compiles
    them (inductor, precision casts emulated; min of --reps after a warm-up that compiles); then, in bf16 (a 4K
    prompt, 64 greedy tokens, SWA), ``generate``'s tokens against the eager fixed-buffer path and
    ``fast_generate(compile=True)``."""
    from swaa_core import SWAAConfig, swaa
    from swaa_core.engine.compiled_prefill import fused_elementwise, prefill_backend
    from swaa_core.engine.fast_decode import fast_generate

    model = llama8b(ARGS.layers)
    cfgs = {"full": None, "swa": SWAAConfig(sliding_window_size=ARGS.window, keep_first=ARGS.sinks)}
    variants = {"eager": None, "fused (emulated casts)": prefill_backend("inductor")}
    for L in ARGS.model_lengths:
        ids = torch.randint(0, 128000, (1, L), device="cuda", generator=torch.Generator("cuda").manual_seed(1))
        for label, cfg in cfgs.items():
            row = out[f"{label} {L // 1024}K, ms"] = {}
            with swaa(model, cfg):
                for name, backend in variants.items():

                    def prefill(backend=backend, ids=ids):
                        with fused_elementwise(model, backend):
                            return model(ids, logits_to_keep=1)

                    row[name] = attempt(prefill, ARGS.reps)
            print(L, label, row, flush=True)
            SUMMARY.append((f"fused prefill {label} {L // 1024}K, ms", str(row)))
            torch.cuda.empty_cache()
    x = torch.randint(0, 128000, (1, 4096), device="cuda", generator=torch.Generator("cuda").manual_seed(2))
    with swaa(model, cfgs["swa"]):
        runs = {
            "generate": model.generate(x, max_new_tokens=64, do_sample=False, cache_implementation="dynamic"),
            "fixed path, eager": fast_generate(model, x, max_new_tokens=64, eos_token_id=[]).sequences,
            "fixed path, compile=True": fast_generate(
                model, x, max_new_tokens=64, eos_token_id=[], compile=True
            ).sequences,
        }
    eager, compiled = "fixed path, eager", "fixed path, compile=True"
    for name, other in ((eager, "generate"), (compiled, "generate"), (compiled, eager)):
        differ = (runs[name][0, 4096:4160] != runs[other][0, 4096:4160]).nonzero()
        first = None if len(differ) == 0 else int(differ[0])
        out[f"bf16 tokens: {name} vs {other}"] = {"equal": first is None, "first_difference_at_new_token": first}
        print(f"bf16 tokens: {name} vs {other}, first difference at new token:", first, flush=True)


def main(argv=None):
    global ARGS
    p = common.base_parser(__doc__, ["layer", "model", "profile", "fused"])
    p.add_argument("--lengths", type=int, nargs="+", default=[32768, 131072])
    p.add_argument("--model-lengths", type=int, nargs="+", default=[131072])
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--profile-layers", type=int, default=4)
    p.set_defaults(reps=2)
    ARGS = p.parse_args(argv)
    common.start(ARGS, "gpu_full_prefill")
    if "layer" in ARGS.sections:
        with common.section("layer") as out:
            run_layer(out)
    if "model" in ARGS.sections:
        with common.section("model") as out:
            run_model(out)
    if "profile" in ARGS.sections:
        with common.section("profile") as out:
            run_profile(out)
    if "fused" in ARGS.sections:
        with common.section("fused") as out:
            run_fused(out)
    return common.finish()


if __name__ == "__main__":
    sys.exit(main())
