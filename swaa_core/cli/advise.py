"""``swaa advise``: which layers keep full attention for a model, a length and a budget, chosen by measurement.

Writes the recommendation in upstream form (``{"swaa_config": {...}}``, what ``swaa run --config`` and the app read)
to ``--out`` and prints the per-layer scores and the held-out check beside the paper's periodic patterns.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from ..eval.recipes import DEFAULT_SINKS, default_window
from ..eval.tasks import TASK_KINDS
from ..runtime.files import write_new
from ..runtime.textfile import read_text_file
from ..runtime.units import format_bytes
from .common import add_model_args, add_window_args, formatter, load_from_args
from .eval import check_context, task_kwargs
from .output import console, note, print_json

METHODS = ("gain", "mass", "greedy")  # swaa_core.eval.advisor.METHODS, without importing torch for --help


def cmd_advise(args) -> int:
    from ..eval.budget import Budget

    budget = Budget(full_layers=args.full_layers, prefill=args.prefill_budget, kv_gib=args.kv_budget)
    task_kw = _task_kw(args)
    loaded = load_from_args(args)
    if args.task != "doc_qa":
        check_context(loaded, args.length, 32, "--length")
    advice = _advise(args, loaded, budget, task_kw)
    text = json.dumps(advice.upstream(), indent=2) + "\n"
    written = write_new(args.out, lambda path: path.write_text(text, encoding="utf-8"))
    if args.json:
        print_json(advice.to_dict())
    else:
        _print(advice)
    moved = f"; {args.out} was written by another run meanwhile" if written != args.out else ""
    note(f"wrote {advice.config.describe()} to {written} (swaa run --config {written} ...){moved}")
    return 0


def _task_kw(args) -> dict:
    kw = task_kwargs(args.task_arg)
    if args.task == "doc_qa":  # with --document, --question and --answer; without doc_qa none of them (cli/rules.py)
        kw.update(document=read_text_file(args.document, what="Document"), question=args.question,
                  answer=args.answer, answer_prefix=args.answer_prefix or "")  # fmt: skip
    return kw


def _advise(args, loaded, budget, task_kw):
    from ..eval.recommend import advise

    bar = None
    if not args.quiet:
        from tqdm.auto import tqdm

        bar = tqdm(total=0, desc="advise", unit="fwd", leave=False)

    def progress(done, total, what):
        if bar.total != total:
            bar.reset(total=total)
        bar.n = done
        bar.set_description_str(what[:60], refresh=False)
        bar.refresh()

    window = args.window if args.window is not None else default_window(args.length)
    sinks = args.keep_first if args.keep_first is not None else DEFAULT_SINKS
    try:
        return advise(loaded.model, loaded.tokenizer, length=args.length, budget=budget, window=window, sinks=sinks,
                      samples=args.samples, held_out=args.held_out, task=args.task, method=args.method,
                      fa_decode=not args.no_fa_decode, backend=args.backend, model_name=loaded.info.name,
                      progress=progress if bar is not None else None, **task_kw)  # fmt: skip
    finally:
        if bar is not None:
            bar.close()


def _print(advice) -> None:
    from rich.table import Table

    scores = advice.scores
    chosen = set(advice.config.non_sliding_layers)
    t = Table(title=f"{advice.model}: need for full attention per layer ({scores.method}, nats per answer token; "
                    f"{len(scores.per_sample)} calibration samples)")  # fmt: skip
    for col in ("layer", "score", "spread", "chosen"):
        t.add_column(col, justify="right")
    for i, (m, s) in enumerate(zip(scores.mean, scores.spread, strict=True)):
        t.add_row(str(i), f"{m:+.3f}", f"{s:.3f}", "full" if i in chosen else "")
    console().print(t)
    t = Table(title=f"Held-out check ({len(advice.held_out_seeds)} samples, seeds not used for the choice); "
                    f"budget: {advice.budget} -> {advice.full_layers}")  # fmt: skip
    for col in ("candidate", "full layers", "accuracy", "NLL/token", "forward s", "prefill (FLOP model)", "KV"):
        t.add_column(col)
    for c in advice.candidates:
        layers = ",".join(map(str, c.full_layers)) if c.kind != "full" else "all"
        t.add_row(c.label, layers, f"{c.accuracy:.0%}", f"{c.nll:.3f} ± {c.nll_spread:.3f}", f"{c.seconds:.2f}",
                  f"{c.prefill_share:.0%}", format_bytes(c.kv_bytes))  # fmt: skip
    console().print(t)
    d = advice.decisions
    print(f"FA decode: {'on' if d['fa_decode']['chosen'] else 'off'} (held-in NLL on {_n(d['fa_decode']['nll_on'])}, "
          f"off {_n(d['fa_decode']['nll_off'])}); sinks: {d['sinks']['chosen']} (with {_n(d['sinks']['nll_with'])}, "
          f"without {_n(d['sinks']['nll_without'])}); kept only when they lower NLL by > {d['tolerance']}")  # fmt: skip
    print(json.dumps(advice.upstream()))
    for text in advice.notes:
        print(f"note: {text}")


def _n(x) -> str:
    return "–" if x is None else f"{x:.3f}"


def add_parser(sub) -> None:
    p = sub.add_parser(
        "advise",
        help="which layers keep full attention, chosen by measurement for a model, a length and a budget",
        formatter_class=formatter,
        description=textwrap.dedent(
            """\
            Score every layer's need for full attention on calibration samples (the fall in the answer's
            teacher-forced NLL when only that layer is full), keep the best ones the budget allows, decide FA
            decode and sinks on the same samples, and check the choice on held-out samples (other seeds) beside
            every offset of the paper's periodic pattern with the same budget.

            examples:
              swaa advise --length 1536 --window 256 --full-layers 8 --out advice.json
              swaa advise --length 4096 --prefill-budget 0.6 --out advice.json --json
              swaa advise --task doc_qa --document notes.txt --question "Who signed?" --answer Ada \\
                          --length 2048 --kv-budget 0.05 --out advice.json
              swaa run --config advice.json "..."   # the recommendation, against full attention"""
        ),
    )
    g = p.add_argument_group("budget (one of)")
    b = g.add_mutually_exclusive_group(required=True)
    b.add_argument("--full-layers", type=int, metavar="K", help="how many layers keep full attention")
    b.add_argument("--prefill-budget", type=float, metavar="X",
                   help="prefill FLOPs as a fraction of full attention's, e.g. 0.7")  # fmt: skip
    b.add_argument("--kv-budget", type=float, metavar="GIB", help="KV cache at --length, in GiB")
    g = p.add_argument_group("measurement")
    g.add_argument("--length", "-l", type=int, required=True, help="context length in tokens")
    add_window_args(g, scaled_to="--length")
    g.add_argument("--task", "-t", default="needle", choices=TASK_KINDS, help="calibration task (default: needle)")
    g.add_argument("--task-arg", action="append", metavar="KEY=VALUE", help="task option, e.g. digits=4")
    g.add_argument("--samples", "-s", type=int, default=2, help="calibration samples (default: 2)")
    g.add_argument("--held-out", type=int, default=2, help="held-out samples for the check (default: 2)")
    g.add_argument("--method", default="gain", choices=METHODS,
                   help="gain: NLL fall with one layer full (default); mass: attention outside the window under full "
                        "attention (one forward per sample); greedy: forward selection (slowest)")  # fmt: skip
    g.add_argument("--no-fa-decode", action="store_true", help="do not consider FA decode (keep it off)")
    g.add_argument("--document", type=Path, help="doc_qa: your text")
    g.add_argument("--question", help="doc_qa: the question")
    g.add_argument("--answer", help="doc_qa: the expected answer")
    g.add_argument("--answer-prefix", help="doc_qa: the answer's opening words, pre-filled")
    p.add_argument("--out", type=Path, required=True, help='the .json file to write {"swaa_config": {...}} to')
    p.add_argument("--json", action="store_true", help="print the whole result as one JSON object")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    add_model_args(p)
    p.set_defaults(func=cmd_advise)
