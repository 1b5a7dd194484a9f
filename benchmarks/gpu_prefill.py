"""GPU benchmark of SWAA prefill on a Llama-3.1-8B-shaped random model (bf16, no download).

    PYTHONUNBUFFERED=1 python benchmarks/gpu_prefill.py --model-lengths 32768 65536 131072

- prefill:     sdpa vs SWAA vs SWAA + 1/2 FA layers at --model-lengths, with a FLOP model's ideal speedup.
Decode (eager and CUDA-graph, end to end) is measured by gpu_decode.py.

A short Markdown table is printed last; full results go to $OUT/gpu_prefill.json (or --json).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import gpu_common as common  # noqa: E402
from gpu_common import SUMMARY, first_call_seconds, gib, llama8b, pairs_visited, sync, timed  # noqa: E402

from swaa_core import SWAAConfig, remove_swaa, swaa  # noqa: E402

ARGS = None


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


def parse(argv=None):
    p = common.base_parser(__doc__, ["prefill"])
    p.add_argument("--model-lengths", type=int, nargs="+", default=[32768, 65536, 131072])
    p.add_argument("--layers", type=int, default=32, help="layers of the 8B-shaped model (32 as in Llama-3.1-8B)")
    return p.parse_args(argv)


def main(argv=None):
    global ARGS
    ARGS = parse(argv)
    common.start(ARGS, "gpu_prefill")
    model = None
    with common.section("build 8B-shaped model") as out:
        start = time.perf_counter()
        model = llama8b(ARGS.layers)
        sync()
        out.update(
            seconds_to_build=round(time.perf_counter() - start, 1),
            params_b=round(model.num_parameters() / 1e9, 2),
            weights_gib=gib(torch.cuda.memory_allocated()),
        )
        print(out, flush=True)
    for name in ARGS.sections:
        if model is not None:
            with common.section(name) as out:
                run_prefill(out, model)
    if model is not None:
        remove_swaa(model)
    return common.finish()


if __name__ == "__main__":
    sys.exit(main())
