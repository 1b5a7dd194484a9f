"""The recipe advisor on the embedded SmolLM2-135M: layer scores at one length, then the advisor's choice against
every offset of the paper's periodic pattern with the same number of full layers, on held-out needle questions.

    python benchmarks/advisor_study.py                          # scores at 1.5K; budgets 8 and 4; 1.5K and 3K
    python benchmarks/advisor_study.py --score-length 512 --lengths 512 --budgets 2 --held-out 1 --samples 1  # quick

Scores: ``swaa_core.eval.advisor.gain_scores`` (and ``mass_scores`` with ``--mass``) on calibration seeds from
``CALIBRATION_SEED``; held-out questions use seeds 0.. (disjoint). Every candidate runs with the same window, sinks and
FA decode (W=256, 16 sinks, FA decode by default, the issue's setting), so only the choice of full layers differs.
Accuracy is teacher-forced greedy exactness of the answer (see swaa_core.eval.recommend); rows are appended to
``--out`` as they finish (a rerun skips those already there), configs in turns per sample. Report the machine's load
beside the times: the forward times are this machine's under whatever else ran.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from swaa_core import SWAAConfig, load_model
from swaa_core.eval.advisor import calibrate, gain_scores, mass_scores, task_samples
from swaa_core.eval.recommend import CALIBRATION_SEED, HELD_OUT_SEED, LayerRunner, _nll_and_hit, periodic_patterns


def cfg(window: int, sinks: int, layers) -> SWAAConfig:
    return SWAAConfig(
        sliding_window_size=window, keep_first=sinks, force_fa_decode=True, non_sliding_layers=sorted(layers)
    )


def scores(loaded, args, out: Path) -> dict:
    path = out.with_suffix(f".scores{args.score_length}.json")
    if path.exists():
        return json.loads(path.read_text())
    tok = loaded.tokenizer
    cals = calibrate(
        tok, task_samples(tok, "needle", args.score_length, range(CALIBRATION_SEED, CALIBRATION_SEED + args.samples))
    )
    base = cfg(args.window, args.sinks, [])
    t0 = time.perf_counter()
    gain = gain_scores(loaded.model, cals, base, progress=lambda d, t, w: print(f"  {d}/{t} {w}", flush=True))
    result = {"gain": gain.to_dict(), "gain_s": time.perf_counter() - t0, "load": os.getloadavg()}
    if args.mass:
        t0 = time.perf_counter()
        result["mass"] = mass_scores(loaded.model, cals, base).to_dict()
        result["mass_s"] = time.perf_counter() - t0
    path.write_text(json.dumps(result))
    return result


def candidates(args, ranking: list[int], n_layers: int) -> dict[str, list[int] | None]:
    out: dict[str, list[int] | None] = {"full attention": None, "SWA (no full layer)": []}
    for k in args.budgets:
        out[f"advisor {k}"] = sorted(ranking[:k])
        for label, layers in periodic_patterns(n_layers, k).items():
            out[f"{label} ({len(layers)})"] = layers
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--score-length", type=int, default=1536)
    p.add_argument("--lengths", type=int, nargs="+", default=[1536, 3072])
    p.add_argument("--budgets", type=int, nargs="+", default=[8, 4])
    p.add_argument("--samples", type=int, default=3, help="calibration samples")
    p.add_argument("--held-out", type=int, default=4)
    p.add_argument("--window", type=int, default=256)
    p.add_argument("--sinks", type=int, default=16)
    p.add_argument("--mass", action="store_true", help="also the attention-mass scores")
    p.add_argument("--only", nargs="*", help="evaluate only these candidate labels")
    p.add_argument("--out", type=Path, default=Path("advisor_study.jsonl"))
    args = p.parse_args()
    loaded = load_model()
    n_layers = loaded.model.config.num_hidden_layers
    ranking = list(range(n_layers))  # unused when --only names no advisor candidate (periodic runs need no scores)
    if not args.only or any(label.startswith("advisor") for label in args.only):
        sc = scores(loaded, args, args.out)
        ranking = sc["gain"]["order"]
        print("gain per layer:", [round(x, 3) for x in sc["gain"]["mean"]], "order:", ranking[:10], flush=True)
    cands = candidates(args, ranking, n_layers)
    if args.only:
        cands = {k: v for k, v in cands.items() if k in args.only}
    done = set()
    if args.out.exists():
        done = {(r["length"], r["seed"], r["label"]) for r in map(json.loads, args.out.read_text().splitlines())}
    runner = LayerRunner(loaded.model)
    tok = loaded.tokenizer
    for n in args.lengths:
        held = calibrate(tok, task_samples(tok, "needle", n, range(HELD_OUT_SEED, HELD_OUT_SEED + args.held_out)))
        for cal in held:
            for label, layers in cands.items():
                if (n, cal.seed, label) in done:
                    continue
                config = None if layers is None else cfg(args.window, args.sinks, layers)
                t0 = time.perf_counter()
                nll, hit = _nll_and_hit(runner, cal, config)
                row = dict(length=n, seed=cal.seed, label=label, layers=layers, nll=nll, hit=hit,
                           seconds=time.perf_counter() - t0, load=os.getloadavg()[0])  # fmt: skip
                with args.out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
    summary(args.out)


def summary(path: Path) -> None:
    """One markdown row per candidate, the lengths side by side: hits / prompts with the Wilson 95% interval, and the
    answer's NLL per token (mean ± sd); then the forward seconds and load per length (times under load are not the
    machine's)."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    lengths = sorted({r["length"] for r in rows})
    groups: dict[tuple, list] = {}
    for r in rows:
        groups.setdefault((r["label"], r["length"]), []).append(r)
    labels = list(dict.fromkeys(r["label"] for r in rows))
    head = " | ".join(f"{n}: hits (95% CI) | {n}: NLL/token" for n in lengths)
    print(f"| candidate | full layers | {head} |")
    print("|---|---|" + "---|---|" * len(lengths))
    for label in labels:
        layers = next(r["layers"] for r in rows if r["label"] == label)
        cells = []
        for n in lengths:
            rs = groups.get((label, n), [])
            if not rs:
                cells += ["–", "–"]
                continue
            hits, nll = sum(r["hit"] for r in rs), [r["nll"] for r in rs]
            lo, hi = wilson(hits, len(rs))
            sd = statistics.stdev(nll) if len(nll) > 1 else 0.0
            cells += [f"{hits}/{len(rs)} ({lo:.0%}-{hi:.0%})", f"{statistics.fmean(nll):.3f} ± {sd:.3f}"]
        shown = "all" if layers is None else (",".join(map(str, layers)) or "none")
        print(f"| {label} | {shown} | " + " | ".join(cells) + " |")
    for n in lengths:
        rs = [r for r in rows if r["length"] == n]
        secs = sorted(r["seconds"] for r in rs)
        loads = sorted(r["load"] for r in rs)
        print(f"{n} tokens: {len(rs)} rows, forward s min/median/max {secs[0]:.1f} / {statistics.median(secs):.1f} / "
              f"{secs[-1]:.1f}, load min/max {loads[0]:.1f} / {loads[-1]:.1f}")  # fmt: skip


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion (95% by default)."""
    if n == 0:
        return 0.0, 1.0
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
