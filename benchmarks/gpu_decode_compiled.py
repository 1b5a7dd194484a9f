"""Where a compiled decode step's time goes, against the memory-bandwidth floor, and which inductor settings move it.

    PYTHONUNBUFFERED=1 python benchmarks/gpu_decode_compiled.py --prompts 8192 32768 131072 --out $OUT/compiled.json

Llama-3.1-8B-shaped model with random weights (bf16, batch 1), W=2048, 128 sinks (issue 29's setting), greedy.
Per prompt length and configuration (SWA decode, full attention), the variants take turns inside every repeat:

- ``graph``: the fixed-buffer step eager, captured in a CUDA graph (``fast_generate(compile=False)``);
- ``compiled``: the same step under ``torch.compile`` (inductor defaults), then captured;
- ``frozen``: the same with ``compiled_step.FROZEN_FUSED`` (freezing, so q/k/v and gate/up run as one GEMV each, and
  coordinate descent tuning): ``fast_generate(compile=inductor_backend(**FROZEN_FUSED))``, opt-in (a second copy of
  the fused weights: about 9 GB for the 8B shape);
- one variant per ``--inductor NAME=K=V[,K=V]`` (``torch._inductor.config`` settings, e.g.
  ``cdt=coordinate_descent_tuning=True``), compiled by its own inductor backend, kept apart by dynamo.

Reported: ms per token (min / median / max over --reps), first-call setup (compilation included), greedy tokens
against the graph step's, and the share of the floor: bytes one step must read (every weight once, plus every
layer's whole KV buffer: the step attends to it under a mask) at this card's read bandwidth, measured here by summing
a 4 GiB tensor. ``--profile``: per variant, the device time of 10 decode steps by kernel (torch.profiler, stepped from
a stopping criterion, so the prefill and warm-up stay out of it), the kernel count per step, and dynamo's graph
breaks. Results stream to --out after every measurement.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_common import llama8b, tiny_llama  # noqa: E402
from transformers import StoppingCriteria, StoppingCriteriaList  # noqa: E402

from swaa_core import SWAAConfig, swaa  # noqa: E402
from swaa_core.engine.compiled_step import FROZEN_FUSED, inductor_backend  # noqa: E402
from swaa_core.engine.fast_decode import fast_generate  # noqa: E402

RESULTS: dict = {"rows": [], "profiles": [], "failures": []}
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def read_bandwidth(elements: int = 2**31) -> float:
    """Bytes/s of reading a bf16 tensor of ``elements`` (4 GiB by default) once (``sum``): the median of CUDA-event
    timings on a GPU, of 5 wall-clock timings on a CPU (--smoke)."""
    x = torch.ones(elements, dtype=torch.bfloat16, device=DEVICE)
    if DEVICE == "cuda":
        from triton.testing import do_bench

        seconds = do_bench(lambda: x.sum(), warmup=50, rep=500, return_mode="median") / 1000
        torch.cuda.empty_cache()
    else:
        times = []
        for _ in range(5):
            start = time.perf_counter()
            x.sum()
            times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
    return x.numel() * x.element_size() / seconds


def step_bytes(model, kv_bytes: int) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters()) + kv_bytes


def settings(spec: str) -> tuple[str, dict]:
    name, _, rest = spec.partition("=")
    out = {}
    for item in rest.split(","):
        key, _, value = item.partition("=")
        out[key] = {"True": True, "False": False}.get(value, int(value) if value.isdigit() else value)
    return name, out


class Profiled(StoppingCriteria):
    """Steps a torch.profiler once per generated token; never stops a row."""

    def __init__(self, prof):
        self.prof = prof

    def __call__(self, input_ids, scores, **kwargs):
        self.prof.step()
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


BACKENDS: dict = {"graph": False, "compiled": True, "frozen": inductor_backend(**FROZEN_FUSED)}  # -> compile=
OPT_IN = {"frozen"}


def run(model, ids, variant: str, new: int, **extra):
    return fast_generate(model, ids, max_new_tokens=new, eos_token_id=[], do_sample=False, compile=BACKENDS[variant],
                         **extra)  # fmt: skip


def profile(model, ids, variant: str) -> dict:
    from torch.profiler import ProfilerActivity, schedule

    sched = schedule(wait=20, warmup=2, active=10)
    activity = ProfilerActivity.CUDA if DEVICE == "cuda" else ProfilerActivity.CPU
    with torch.profiler.profile(activities=[activity], schedule=sched) as prof:
        run(model, ids, variant, 40, cuda_graph=False, stopping_criteria=StoppingCriteriaList([Profiled(prof)]))
    kind = torch.autograd.DeviceType.CUDA if DEVICE == "cuda" else torch.autograd.DeviceType.CPU
    events = [e for e in prof.key_averages() if e.device_type == kind]
    total = sum(e.self_device_time_total for e in events) / 10 / 1000
    top = sorted(events, key=lambda e: -e.self_device_time_total)[:25]
    return {
        "device_ms_per_step": round(total, 3),
        "kernels_per_step": round(sum(e.count for e in events) / 10, 1),
        "top": [(e.key[:90], round(e.self_device_time_total / 10 / 1000, 4), e.count // 10) for e in top],
    }


def save(path: Path | None):
    if path:
        path.write_text(json.dumps(RESULTS, indent=1, default=str))


@torch.no_grad()
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=int, nargs="+", default=[32768])
    p.add_argument("--configs", nargs="+", default=["SWA decode", "full"], choices=["SWA decode", "full"])
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--window", type=int, default=2048)
    p.add_argument("--sinks", type=int, default=128)
    p.add_argument("--inductor", nargs="*", default=[], help="NAME=key=value[,key=value]: one variant each")
    p.add_argument(
        "--variants",
        nargs="*",
        default=None,
        help="variants to run (default: graph, compiled and every --inductor one; frozen on request)",
    )
    p.add_argument("--profile", action="store_true")
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--smoke", action="store_true", help="tiny model on the CPU: a check that the script runs")
    args = p.parse_args(argv)
    torch._dynamo.config.recompile_limit = 64
    inductor = dict(settings(s) for s in args.inductor)
    BACKENDS.update({name: inductor_backend(**patches) for name, patches in inductor.items()})
    variants = args.variants or [name for name in BACKENDS if name not in OPT_IN]
    unknown = sorted(set(variants) - set(BACKENDS))
    if unknown:
        p.error(f"unknown variants {unknown}: the known ones are {list(BACKENDS)}")
    gpu = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu (smoke)"
    RESULTS["machine"] = {"gpu": gpu, "torch": torch.__version__}
    RESULTS["read_bandwidth_tb_s"] = bw = round(read_bandwidth(2**24 if args.smoke else 2**31) / 1e12, 4)
    print("read bandwidth", bw, "TB/s", flush=True)
    model = tiny_llama(2) if args.smoke else llama8b(args.layers)
    configs = {"SWA decode": SWAAConfig(sliding_window_size=args.window, keep_first=args.sinks), "full": None}
    for n in args.prompts:
        ids = torch.randint(0, model.config.vocab_size - 1, (1, n), device=DEVICE,
                            generator=torch.Generator(DEVICE).manual_seed(7))  # fmt: skip
        for label in args.configs:
            with swaa(model, configs[label]):
                rows = {}
                for variant in variants:  # first calls: compilation, setup
                    start = time.perf_counter()
                    try:
                        r = run(model, ids, variant, args.new_tokens)
                    except Exception as e:  # an inductor setting this torch cannot run: recorded, next variant
                        RESULTS["failures"].append({"variant": variant, "error": repr(e)[:400]})
                        continue
                    rows[variant] = {"first_call_s": round(time.perf_counter() - start, 1), "setup_s": r.setup_s,
                                     "tokens": r.sequences[0, n:].tolist(), "ms": [],
                                     "kv_bytes": sum(r.kv_cache_bytes_per_layer)}  # fmt: skip
                    if args.profile:
                        prof = profile(model, ids, variant)
                        prof |= {"prompt": n, "config": label, "variant": variant}
                        prof["graph_breaks"] = dict(torch._dynamo.utils.counters["graph_break"])
                        RESULTS["profiles"].append(prof)
                        print(json.dumps(prof)[:3000], flush=True)
                        save(args.out)
                for _ in range(args.reps):
                    for variant, row in rows.items():
                        r = run(model, ids, variant, args.new_tokens)
                        row["ms"].append(round(1e3 * r.decode_s / r.decode_steps, 3))
            floor_ms = 1e3 * step_bytes(model, next(iter(rows.values()))["kv_bytes"]) / (bw * 1e12) if rows else 0
            for variant, row in rows.items():
                med = round(statistics.median(row["ms"]), 3)
                out = {"prompt": n, "config": label, "variant": variant, "ms_min": min(row["ms"]), "ms_median": med,
                       "ms_max": max(row["ms"]), "tok_s": round(1e3 / med, 1), "floor_ms": round(floor_ms, 3),
                       "pct_of_floor": round(100 * floor_ms / med, 1), "first_call_s": row["first_call_s"],
                       "setup_s": round(row["setup_s"], 2),
                       "tokens_equal_graph": row["tokens"] == rows["graph"]["tokens"] if "graph" in rows else None,
                       "same_first_32": row["tokens"][:32] == rows["graph"]["tokens"][:32] if "graph" in rows else None}  # fmt: skip
                RESULTS["rows"].append(out)
                print(json.dumps(out), flush=True)
            save(args.out)
            if DEVICE == "cuda":
                torch.cuda.empty_cache()
    print("\n| prompt | config | variant | ms/token min / median / max | tok/s | % of floor | first call s |")
    print("|---|---|---|---|---|---|---|")
    for r in RESULTS["rows"]:
        print(f"| {r['prompt'] // 1024}K | {r['config']} | {r['variant']} | {r['ms_min']} / {r['ms_median']} / "
              f"{r['ms_max']} | {r['tok_s']} | {r['pct_of_floor']} | {r['first_call_s']} |")  # fmt: skip
    save(args.out)
    return 1 if RESULTS["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
