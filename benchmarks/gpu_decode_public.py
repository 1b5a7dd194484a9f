"""gpu_decode.py's "public" section: what a user gets from ``model.generate`` after ``apply_swaa``, now routed to the
fixed-buffer path by default on CUDA, beside the eager path forced with ``cache_implementation="dynamic"`` and
``fast_generate``; greedy and sampled.

    PYTHONUNBUFFERED=1 python benchmarks/gpu_decode.py --sections public --prompts 32768 131072 --reps 2

The SWA configuration (W, sinks) on the 8B-shaped model, batch 1, through the public API only. Per call: per-token
decode from a streamer's timestamps (the median gap between consecutive tokens: prefill and the fixed path's one-off
setup after the first token, which the gap after token 1 holds, stay out of it), that first gap ("setup gap"), the
call's wall time, and the path the call took and why (``model._swaa_state.last_route``). Every mode's first call in
the process is reported apart (it pays for kernel compilation, the first graph capture, allocator growth); then
``--reps`` rounds with the modes in turns, best and median per mode. Targets (issue 26): >= 120 tok/s on an H200,
>= 100 on an H100, at 32K and 128K, greedy and sampled.
"""

from __future__ import annotations

import statistics
import time

import torch
from gpu_common import Stamps  # gpu_decode.py, which runs this section, puts benchmarks/ on the path

from swaa_core import SWAAConfig, apply_swaa, fast_generate, remove_swaa

SAMPLING = dict(do_sample=True, temperature=0.7, top_k=50, top_p=0.9)
MODES = {  # name -> (how the call is made, its options)
    "generate (default route), greedy": ("generate", dict(do_sample=False)),
    "generate (default route), sampled": ("generate", SAMPLING),
    "generate forced eager (cache_implementation='dynamic'), greedy": (
        "generate",
        dict(do_sample=False, cache_implementation="dynamic"),
    ),
    "fast_generate, greedy": ("fast_generate", dict(do_sample=False)),
    "fast_generate, sampled": ("fast_generate", SAMPLING),
}


@torch.no_grad()
def one_call(model, ids, mode: str, new_tokens: int, seed: int) -> dict:
    how, options = MODES[mode]
    stamps = Stamps()
    torch.manual_seed(seed)
    torch.cuda.synchronize()
    mask = torch.ones_like(ids)  # with pad 0 and no mask, generate would take every token 0 in the prompt for padding
    start = time.perf_counter()
    if how == "generate":
        model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0,
                       streamer=stamps, **options)  # fmt: skip
        route = model._swaa_state.last_route
        path = f"{route.path.value} ({route.reason})"
    else:
        result = fast_generate(model, ids, attention_mask=mask, max_new_tokens=new_tokens, eos_token_id=[],
                               pad_token_id=0, streamer=stamps, **options)  # fmt: skip
        path = "fast_generate" + (" + CUDA graph" if result.cuda_graph else "")
    torch.cuda.synchronize()
    gaps = stamps.gaps_ms()
    return dict(
        ms_per_token=round(statistics.median(gaps), 2),
        setup_gap_ms=round(gaps[0], 1),
        wall_s=round(time.perf_counter() - start, 2),
        path=path,
    )


def run_public(out: dict, model, args, summary: list, prompt) -> None:
    """Fill ``out["rows"]`` {prompt tokens: {mode: first call, rounds, best, median}}; append the summary lines.
    ``prompt(n)``: the (1, n) token ids of a prompt on the model's device."""
    cfg = SWAAConfig(sliding_window_size=args.window, keep_first=args.sinks)
    apply_swaa(model, cfg)
    rows = out["rows"] = {}
    try:
        for n in args.prompts:
            ids = prompt(n)
            row = rows[n] = {mode: {"first_call": one_call(model, ids, mode, args.new_tokens, 0)} for mode in MODES}
            for rep in range(args.reps):
                for mode in MODES:
                    row[mode].setdefault("rounds", []).append(one_call(model, ids, mode, args.new_tokens, rep + 1))
                    torch.cuda.empty_cache()
            for mode, r in row.items():
                ms = [x["ms_per_token"] for x in r["rounds"]]
                r["best_ms"], r["median_ms"] = min(ms), round(statistics.median(ms), 2)
                r["best_tok_s"] = round(1e3 / r["best_ms"], 1)
                first = r["first_call"]
                summary.append((
                    f"public API decode, {n:,}-token prompt (SWA W={args.window}, {args.sinks} sinks)",
                    f"{mode}: {r['best_tok_s']} tok/s (best; median {r['median_ms']} ms/token, "
                    f"{len(ms)} rounds); first call {first['ms_per_token']} ms/token, setup gap "
                    f"{first['setup_gap_ms']} ms, {first['wall_s']} s; path {r['rounds'][-1]['path']}",
                ))  # fmt: skip
            print(n, row, flush=True)
            del ids
    finally:
        remove_swaa(model)
