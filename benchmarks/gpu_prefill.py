"""GPU benchmark of SWAA on a Llama-3.1-8B-shaped random model (bf16, no download): prefill and eager decode.

    PYTHONUNBUFFERED=1 python benchmarks/gpu_prefill.py --sections prefill decode

Sections (each one guarded: a failure is recorded with its traceback and the next section still runs):
- prefill:     sdpa vs SWAA vs SWAA + 1/2 FA layers at --model-lengths, with a FLOP model's ideal speedup.
- decode:      tokens/s and KV-cache bytes after generating --new-tokens with ``model.generate``, with and without
               FA decode; then one end-to-end run (--e2e-tokens). gpu_decode.py measures the CUDA-graph path.

A short Markdown table is printed last; full results go to $OUT/gpu_prefill.json (or --json).
"""

from __future__ import annotations

import functools
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import gpu_common as common  # noqa: E402
from gpu_common import SUMMARY, first_call_seconds, gib, llama8b, pairs_visited, sync, timed  # noqa: E402

from swaa_core import SWAAConfig, kv_cache_bytes, remove_swaa, swaa  # noqa: E402

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


def parse(argv=None):
    p = common.base_parser(__doc__, ["prefill", "decode"])
    p.add_argument("--model-lengths", type=int, nargs="+", default=[32768, 65536, 131072])
    p.add_argument("--layers", type=int, default=32, help="layers of the 8B-shaped model (32 as in Llama-3.1-8B)")
    p.add_argument("--decode-prompts", type=int, nargs="+", default=[8192, 32768, 131072])
    p.add_argument("--e2e-tokens", type=int, default=512, help="new tokens of the end-to-end run (0: skip it)")
    p.add_argument("--new-tokens", type=int, default=32)
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
                (run_prefill if name == "prefill" else run_decode)(out, model)
    if model is not None:
        remove_swaa(model)
    return common.finish()


if __name__ == "__main__":
    sys.exit(main())
