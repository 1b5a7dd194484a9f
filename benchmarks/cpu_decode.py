"""CPU decode: per-token time of full attention vs SWAA (SWA decode, and FA decode) at several prompt lengths.

    python benchmarks/cpu_decode.py                                  # 1.5K and 7.5K prompts, W=256, 3 repeats
    python benchmarks/cpu_decode.py --lengths 512 --repeats 1 --new-tokens 8   # a quick check that it runs

Per point: one greedy generation of NEW+1 tokens after a random prompt (EOS ignored); the per-token time is the
time from the first generated token to the last, divided by NEW (`swaa_core.eval.latency.decode_speed_curve`). Every
configuration, full attention included, stores its keys in SWAA's growing cache, so the columns differ by attention. The
configurations take turns inside every repeat, so a machine that drifts slows all of them alike; the table gives
the median of the repeats with the best in brackets, and each SWAA column's speed relative to full attention
measured in the same run (> 1: faster). The embedded SmolLM2-135M has an 8K context: 7680 + 33 tokens fit.
Run on an otherwise idle machine; say which machine in anything you publish.
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import torch

from swaa_core import SWAAConfig, load_model
from swaa_core.eval.latency import decode_speed_curve
from swaa_core.runtime.jsonl import save_jsonl
from swaa_core.runtime.units import format_bytes


def configs(window: int, sinks: int) -> dict[str, SWAAConfig | None]:
    tag = f"W={window}" + (f", {sinks} sinks" if sinks else "")
    return {
        "full attention": None,
        f"SWA only ({tag})": SWAAConfig(sliding_window_size=window, keep_first=sinks),
        f"SWA + FA decode ({tag})": SWAAConfig(sliding_window_size=window, keep_first=sinks, force_fa_decode=True),
    }


def table(points, labels: list[str]) -> list[str]:
    """Markdown rows: one per prompt length; ms per token (median [best]) and tok/s ratio against full attention."""
    head = "| prompt tokens | " + " | ".join(labels) + " |"
    lines = [head, "|---" * (1 + len(labels)) + "|"]
    for n in dict.fromkeys(p.prompt_tokens for p in points):
        row = {p.label: p for p in points if p.prompt_tokens == n}
        base = row[labels[0]]
        cells = []
        for label in labels:
            p = row[label]
            if p.error:
                cells.append(f"error: {p.error[:60]}")
                continue
            cell = f"{p.ms_per_token:.1f} ms [{p.best_ms_per_token:.1f}] = {p.tokens_per_s:.1f} tok/s"
            if label != labels[0] and not base.error:
                cell += f", **{base.ms_per_token / p.ms_per_token:.2f}x**"
            cells.append(cell + f"; KV {format_bytes(p.kv_cache_bytes)}")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model name/path (default: the embedded SmolLM2-135M)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[1536, 7680], help="prompt lengths in tokens")
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--sinks", type=int, default=0)
    parser.add_argument("--new-tokens", type=int, default=32, help="decode steps timed per point (default: 32)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--out", type=Path, default=None, help="also write the points as JSON lines")
    args = parser.parse_args(argv)

    loaded = load_model(args.model, device="cpu", dtype=torch.float32)
    cfgs = configs(args.window, args.sinks)
    print(
        f"machine: {platform.machine()} {platform.processor() or ''}, {torch.get_num_threads()} threads; "
        f"torch {torch.__version__}; model {loaded.info.name}; {args.new_tokens} decode steps per point, "
        f"{args.repeats} repeat(s) in turns; median [best]",
        flush=True,
    )

    def progress(p):
        state = p.error or f"{p.ms_per_token:.1f} ms/token"
        print(f"  {p.prompt_tokens:>6} tokens  {p.label}: {state}", flush=True)

    points = decode_speed_curve(
        loaded, cfgs, args.lengths, new_tokens=args.new_tokens, repeats=args.repeats, backend=args.backend,
        on_point=progress,
    )  # fmt: skip
    print("\n".join(table(points, list(cfgs))))
    if args.out:
        save_jsonl((p.to_dict() for p in points), args.out)


if __name__ == "__main__":
    main()
