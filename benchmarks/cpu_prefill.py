"""CPU prefill: the embedded model with full attention vs SWAA (blocked O(n*W) backend), measured side by side.

    python benchmarks/cpu_prefill.py --lengths 1024 2048 4096 --window 512 --repeats 3
    python benchmarks/cpu_prefill.py --kernel --lengths 4096 16384 32768     # one attention layer only

Prints a Markdown table (median seconds of `repeats` runs after one warm-up, and the ratio full / SWAA measured in
the same process). Run on an otherwise idle machine; say which machine in anything you publish.
"""

from __future__ import annotations

import argparse
import functools
import platform
import statistics
import time

import torch

from swaa_core import SWAAConfig, load_model, swaa
from swaa_core.engine.backends import blocked
from swaa_core.engine.kinds import SinkWindow
from swaa_core.engine.masks import geometry_from_positions


def prefill_seconds(model, input_ids, repeats: int) -> float:
    with torch.no_grad():
        return median_seconds(functools.partial(model, input_ids, use_cache=False, logits_to_keep=1), repeats)


def median_seconds(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def kernel_table(lengths, window: int, sinks: int, repeats: int) -> None:
    """One attention layer of SmolLM2-135M's shape (9 query / 3 KV heads, head dim 64), float32."""
    print("| tokens | SDPA causal (ms) | SWAA blocked (ms) | speedup | ideal (pairs) |")
    print("|---|---|---|---|---|")
    for n in lengths:
        gen = torch.Generator().manual_seed(n)
        q = torch.randn(1, 9, n, 64, generator=gen)
        k, v = torch.randn(1, 3, n, 64, generator=gen), torch.randn(1, 3, n, 64, generator=gen)
        pos = torch.arange(n)[None]
        g = geometry_from_positions(pos, pos, kind=SinkWindow(window, sinks))
        sdpa = functools.partial(torch.nn.functional.scaled_dot_product_attention, is_causal=True, enable_gqa=True)
        full = median_seconds(functools.partial(sdpa, q, k, v), repeats)
        swa = median_seconds(functools.partial(blocked, q, k, v, g, 0.125), repeats)
        visible = sum(min(i + 1, window + min(sinks, max(0, i + 1 - window))) for i in range(n))
        ideal = (n * (n + 1) / 2) / visible
        print(f"| {n} | {full * 1e3:.1f} | {swa * 1e3:.1f} | {full / swa:.2f}x | {ideal:.2f}x |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model name/path (default: the embedded SmolLM2-135M)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--sinks", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--kernel", action="store_true", help="time one attention layer instead of the model")
    args = parser.parse_args(argv)
    if args.kernel:
        print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads; torch {torch.__version__}")
        kernel_table(args.lengths, args.window, args.sinks, args.repeats)
        return

    loaded = load_model(args.model, device="cpu", dtype=torch.float32)
    model = loaded.model
    vocab = model.config.vocab_size
    cfgs = {
        f"SWA {args.window}" + (f" + {args.sinks} sinks" if args.sinks else ""): SWAAConfig(
            sliding_window_size=args.window, keep_first=args.sinks
        ),
        f"SWA {args.window} + 1/2 FA layers": SWAAConfig(
            sliding_window_size=args.window,
            keep_first=args.sinks,
            non_sliding_layers=SWAAConfig.fa_layers("1/2", model.config.num_hidden_layers),
        ),
    }
    print(
        f"machine: {platform.machine()} {platform.processor() or ''}, {torch.get_num_threads()} threads; "
        f"torch {torch.__version__}; model {loaded.info.name}"
    )
    header = "| tokens | full attention (s) | " + " | ".join(f"{name} (s) | speedup" for name in cfgs) + " |"
    print(header)
    print("|" + "---|" * (2 + 2 * len(cfgs)))
    for n in args.lengths:
        ids = torch.randint(10, vocab, (1, n), generator=torch.Generator().manual_seed(n))
        full = prefill_seconds(model, ids, args.repeats)
        cells = []
        for cfg in cfgs.values():
            with swaa(model, cfg) as state:
                t = prefill_seconds(model, ids, args.repeats)
            cells.append(f"{t:.2f} | {full / t:.2f}x [{state.backend}]")
        print(f"| {n} | {full:.2f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
