"""Host cost of an eager decode step: full attention vs SWAA, on a model too small for its kernels to matter.

    python benchmarks/host_overhead.py                       # 32 layers, 512-token prompt, 64 steps, 6 repeats
    python benchmarks/host_overhead.py --layers 4 --repeats 1 --new-tokens 8    # a quick check that it runs
    python benchmarks/host_overhead.py --batch 2     # a left-padded batch: every decode step carries a mask

At batch 1 an 8B model's eager decode step on an H200 is bound by the host launching about 1080 kernels, not by the
GPU (docs/benchmarks.md), so SWAA's eager speed there is set by the Python it adds per layer. This measures that on
the CPU, without a GPU: a Llama with 32 layers of hidden size 64 runs each op in microseconds, so a step's time is
mostly Python and dispatch. One thread; the configurations take turns inside every repeat; per-token time is the
median gap between generated tokens (the runner's token clock). "full" is transformers' own path and cache; "full,
shared cache" the cache every timed run of the runner gets (`swaa_core.eval.latency.shared_cache`). Ratios are
against "full" (< 1: cheaper).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
from pathlib import Path

import torch

from swaa_core import SWAAConfig, swaa
from swaa_core.eval.latency import TokenClock, shared_cache

# only now: with tests/ on the path first, its swaa_core/ folder would shadow the package
sys.path.append(str(Path(__file__).resolve().parents[1] / "tests"))
from helpers.tiny_models import build_tiny_model  # noqa: E402 - the tests' tiny models


def tiny_llama(layers: int):
    """Hidden size 64 (4 query / 2 KV heads of 16): every op runs in microseconds."""
    return build_tiny_model("llama", layers=layers, hidden_size=64, intermediate_size=128, head_dim=16, vocab_size=256)


def ms_per_token(model, ids, mask, new_tokens: int, extra: dict) -> float:
    clock = TokenClock()
    with torch.no_grad():
        model.generate(
            ids,
            attention_mask=mask,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
            streamer=clock,
            **extra,
        )
    return statistics.median(b - a for a, b in itertools.pairwise(clock.times)) * 1e3


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--prompt", type=int, default=512, help="prompt tokens (longer than the window)")
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--sinks", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--batch", type=int, default=1, help="rows; each later one a third shorter, left-padded")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    model = tiny_llama(args.layers)
    ids = torch.randint(3, 256, (args.batch, args.prompt), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    for row in range(1, args.batch):
        mask[row, : args.prompt - round(args.prompt * (2 / 3) ** row)] = 0
    ids = ids.masked_fill(mask == 0, 0)
    W, K = args.window, args.sinks
    runs = {
        "full": (None, False),
        "full, shared cache": (None, True),
        "SWA decode": (SWAAConfig(sliding_window_size=W, keep_first=K), True),
        "FA decode": (SWAAConfig(sliding_window_size=W, keep_first=K, force_fa_decode=True), True),
    }
    samples = {label: [] for label in runs}
    for rep in range(args.repeats + 1):  # the first round warms up
        for label, (config, shared) in runs.items():
            with swaa(model, config):
                ms = ms_per_token(model, ids, mask, args.new_tokens, shared_cache(model) if shared else {})
            if rep:
                samples[label].append(ms)
    full = statistics.median(samples["full"])
    print(
        f"{args.layers} layers, hidden 64, {args.prompt}-token prompt ({args.batch} rows, the later ones left-padded), "
        f"W={W}, {K} sinks, {args.new_tokens} steps, "
        f"{args.repeats} repeats in turns, 1 thread, torch {torch.__version__}"
    )
    print("| run | ms per token, median [best] | vs full |")
    print("|---|---|---|")
    for label, values in samples.items():
        median = statistics.median(values)
        print(f"| {label} | {median:.2f} [{min(values):.2f}] | {median / full:.3f}x |")


if __name__ == "__main__":
    main()
