"""CPU: decode ms per token of the two decode paths, fixed buffers vs transformers' eager generate, on the same model.

    python benchmarks/cpu_decode_path.py                                   # 1K and 4K prompts, 48 steps, 3 repeats
    python benchmarks/cpu_decode_path.py --lengths 256 --new-tokens 8 --repeats 1   # a quick check that it runs

This is what ``swaa_core.engine.decode_path.CPU_DEFAULT`` (the path "auto" takes on a CPU) rests on. Per point: one
greedy generation of NEW+1 tokens after a random prompt (EOS ignored), timed by ``eval.latency.time_decode`` on each
path; full attention and SWA, every (path, config) in turns inside each repeat so that a machine that drifts slows
all alike. The table gives min / median / max ms per token over the repeats and the eager / fixed ratio of the
medians (> 1: the fixed path is faster), and the load average before and after. Default model: the embedded
SmolLM2-135M.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from swaa_core import SWAAConfig, load_model
from swaa_core.eval.decoding import Decoder
from swaa_core.eval.latency import time_decode

PATHS = ("eager", "fixed")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M")
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--window", type=int, default=256)
    args = parser.parse_args(argv)

    loaded = load_model(args.model, device="cpu")
    model = loaded.model
    configs = {"full attention": None, f"SWA (W={args.window})": SWAAConfig(sliding_window_size=args.window)}
    decoders = {path: Decoder.for_device(path, "cpu") for path in PATHS}
    vocab = model.config.get_text_config(decoder=True).vocab_size
    gen = torch.Generator().manual_seed(0)
    load_before = os.getloadavg()
    for decoder in decoders.values():
        for cfg in configs.values():
            decoder.warm_up(model, cfg)
    ms: dict[tuple, list[float]] = {}
    for n in args.lengths:
        ids = torch.randint(10, vocab, (1, n), generator=gen)
        for r in range(args.repeats):
            for label, cfg in configs.items():
                for path, decoder in decoders.items():
                    t = time_decode(model, ids, cfg, args.new_tokens, decoder=decoder).timing
                    ms.setdefault((n, label, path), []).append(1000 * t.decode_s / t.decode_tokens)
                    print(f"{n} {label} {path} repeat {r}: {ms[n, label, path][-1]:.1f} ms/token, "
                          f"load {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
    print(f"\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads); {loaded.info.name}; "
          f"{args.new_tokens} decode steps; load average (1/5/15 min) before {_load(load_before)}, "
          f"after {_load(os.getloadavg())}\n")  # fmt: skip
    print("| prompt tokens | config | eager ms/token (min / median / max) | fixed ms/token (min / median / max) "
          "| eager / fixed |\n|---|---|---|---|---|")  # fmt: skip
    for n in args.lengths:
        for label in configs:
            cells = [_spread(ms[n, label, path]) for path in PATHS]
            ratio = statistics.median(ms[n, label, "eager"]) / statistics.median(ms[n, label, "fixed"])
            print(f"| {n} | {label} | {cells[0]} | {cells[1]} | {ratio:.2f} |")


def _spread(values: list[float]) -> str:
    return f"{min(values):.1f} / {statistics.median(values):.1f} / {max(values):.1f}"


def _load(avg) -> str:
    return " / ".join(f"{x:.1f}" for x in avg)


if __name__ == "__main__":
    main()
