"""Data-parallel sweeps: the same `swaa sweep` on 1 process and on N processes (torchrun), one thread each.

    python benchmarks/sweep_scaling.py                          # 24 runs of the embedded model, 1 vs 2 processes
    python benchmarks/sweep_scaling.py --repeats 2              # alternate 1, N, 1, N and keep each one's best
    python benchmarks/sweep_scaling.py --model ./tiny --lengths 200 --samples 2    # a quick check that it works

The grid: full attention + 3 recipes x 2 lengths x 1 depth x 3 samples = 24 runs. Every process loads its own copy
of the model, so the wall time includes loading; the "startup + load" column is the same command rerun on the
finished file (it loads the model and finds nothing left to run), and "runs only" is the difference. The last
column says whether the N-process JSONL holds exactly the rows of the 1-process one (timings aside). Run it on an
otherwise idle machine with at least N cores and say what else ran.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def measured(column: str) -> bool:
    """Columns a run measures rather than computes (times, memory): they differ between any two runs."""
    return column.endswith("_s") or "memory" in column or column == "finished_at"


def sweep_command(processes: int, args, out: Path) -> list[str]:
    launcher = (
        [] if processes == 1 else ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    )
    grid = ["sweep", "--task", args.task, "--lengths", *map(str, args.lengths), "--depths", "0.5",
            "--samples", str(args.samples), "--window", str(args.window), "-n", str(args.max_new_tokens),
            "--device", "cpu", "--quiet", "--out", str(out)]  # fmt: skip
    for recipe in args.recipes:
        grid += ["-r", recipe]
    if args.model:
        grid += ["--model", args.model]
    return [sys.executable, *launcher, "-m", "swaa_core", *grid]


def timed(command: list[str]) -> float:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(1),
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    start = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode not in (0, 1):  # 1: some runs ended with an error row, still a finished sweep
        sys.exit(f"failed ({result.returncode}): {' '.join(command)}\n{result.stderr[-3000:]}")
    return seconds


def rows(path: Path) -> list[dict]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [{k: v for k, v in json.loads(x).items() if not measured(k)} for x in lines if x.strip()]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model name/path (default: the embedded SmolLM2-135M)")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--recipes", nargs="+", default=["swa", "swa-fa-decode", "recommended"])
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--task", default="passkey")
    parser.add_argument("--repeats", type=int, default=1, help="alternate 1 and N processes this many times")
    args = parser.parse_args(argv)

    runs = (1 + len(args.recipes)) * len(args.lengths) * args.samples
    best: dict[int, tuple[float, float]] = {}
    outputs: dict[int, Path] = {}
    with tempfile.TemporaryDirectory(prefix="sweep-scaling-") as tmp:
        for r in range(args.repeats):
            for n in (1, args.processes):
                out = Path(tmp) / f"p{n}-r{r}.jsonl"
                wall = timed(sweep_command(n, args, out))
                overhead = timed(sweep_command(n, args, out))  # nothing left to run: startup and model load only
                print(
                    f"repeat {r + 1}: {n} process(es): {wall:.1f} s ({overhead:.1f} s startup + load)", file=sys.stderr
                )
                if n not in best or wall < best[n][0]:
                    best[n] = (wall, overhead)
                outputs[n] = out
        same = rows(outputs[1]) == rows(outputs[args.processes])
        counts = {n: len(rows(p)) for n, p in outputs.items()}

    print(f"\nSweep of {runs} runs ({args.model or 'embedded SmolLM2-135M'}, lengths {args.lengths}, window "
          f"{args.window}, {args.max_new_tokens} new tokens), one thread per process, best of {args.repeats}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}\n")  # fmt: skip
    print(
        "| processes | rows | wall (s) | startup + load (s) | runs only (s) | speedup (wall) | speedup (runs) | rows identical |"
    )
    print("|---|---|---|---|---|---|---|---|")
    base_wall, base_over = best[1]
    for n in (1, args.processes):
        wall, over = best[n]
        run_part, base_run = wall - over, base_wall - base_over
        # On a busy machine startup time varies more than a tiny sweep takes: then there is no "runs only" figure.
        speed_runs = f"{base_run / run_part:.2f}x" if run_part > 0 and base_run > 0 else "–"
        run_text = f"{run_part:.1f}" if run_part > 0 else "–"
        print(f"| {n} | {counts[n]} | {wall:.1f} | {over:.1f} | {run_text} | {base_wall / wall:.2f}x | {speed_runs} | "
              f"{'–' if n == 1 else ('yes' if same else 'NO')} |")  # fmt: skip


if __name__ == "__main__":
    main()
