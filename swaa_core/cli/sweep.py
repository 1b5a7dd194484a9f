"""``swaa sweep``: recipes x lengths x depths x samples, one JSON line per run as it finishes, resumable."""

from __future__ import annotations

import textwrap
from pathlib import Path

from ..eval.recipes import default_window, list_recipes
from ..eval.tasks import TASK_KINDS
from ..eval.tasks.registry import DEPTHLESS
from .common import (
    add_generation_args,
    add_launch_args,
    add_model_args,
    add_recipe_args,
    formatter,
    launch_from_args,
    load_from_args,
    num_layers,
    relaunch,
    resolve_configs,
    run_spec,
)
from .eval import add_task_args, check_context, task_kwargs
from .output import frame_table, note, path_caption, print_json

SWEEP_TASKS = tuple(t for t in TASK_KINDS if t != "doc_qa")  # a grid of lengths and depths: built-in tasks only


def cmd_sweep(args) -> int:
    from ..eval.results import export, summarize
    from ..eval.sweep import SweepSpec, run_sweep

    if (code := relaunch(args)) is not None:
        return code
    run = run_spec(args, score_logprob=not args.no_logprob)
    launch = launch_from_args(args)
    loaded = load_from_args(args, launch)
    check_context(loaded, max(args.lengths), args.max_new_tokens, "--lengths")
    window = args.window if args.window is not None else default_window(min(args.lengths))
    configs = resolve_configs(args, num_layers(loaded), None, window=window)
    spec = SweepSpec(
        configs=configs,
        lengths=args.lengths,
        depths=None if args.task in DEPTHLESS else args.depths,  # typed depths there: refused (cli/rules.py)
        seeds=list(range(args.seed, args.seed + args.samples)),
        task=args.task,
        task_kwargs=task_kwargs(args.task_arg),
        run=run,
    )
    if launch.is_main:
        where = f" on {launch.world} processes" if launch.distributed else ""
        sizes = sorted({c.sliding_window_size for c in spec.configs.values() if c is not None})  # as they run
        windows = f"window {', '.join(map(str, sizes))}" if sizes else "full attention only"
        note(f"sweep: {spec.total_cells} runs ({len(spec.configs)} configs, {windows}){where} -> {args.out}")
    df = run_sweep(loaded, spec, args.out, progress=not args.quiet and launch.is_main,
                   retry_errors=args.retry_errors, launch=launch)  # fmt: skip
    if not launch.is_main:  # the main process merged the rows and reports for everyone
        return 0
    if args.csv:
        export(df, args.csv)
        note(f"wrote {args.csv}")
    table = summarize(df, by=tuple(args.group_by))
    if args.json:
        for row in table.to_dict(orient="records"):
            print_json(row)
    else:
        caption = path_caption(df.to_dict(orient="records"))
        frame_table(table, title=f"{loaded.info.name}: {args.task} sweep ({len(df)} runs)", caption=caption)
    return 1 if df["error"].notna().any() else 0


def add_parser(sub) -> None:
    p = sub.add_parser(
        "sweep",
        help="recipes x lengths x depths x samples, resumable, to JSONL/CSV",
        formatter_class=formatter,
        description=textwrap.dedent(
            """\
            Run every combination of recipe, prompt length, needle depth and sample, appending one JSON line per
            run to --out as it finishes. Rerun the same command to resume: finished runs are skipped (matched by a
            stable id of model, config, length, depth, seed and every setting that changes a row: task, generation,
            timing, log-likelihood, decode path, backend, dtype); rows run under other settings stay in the file but
            are run again. The same window is used
            for every length (default: scaled to the shortest), so lengths are comparable.

            examples:
              swaa sweep --lengths 1024 2048 --depths 0.1 0.5 0.9 --samples 5 --window 256 --out needle.jsonl
              swaa sweep -r swa -r swa-half-fa-fa-decode --lengths 4096 --out runs.jsonl --csv runs.csv
              swaa sweep --task multi_key --task-arg num_keys=4 --lengths 1024 --out mk.jsonl --group-by label"""
        ),
    )
    add_task_args(p, tasks=SWEEP_TASKS, task_help="; doc_qa, a document of your own, is `swaa eval`'s")
    g = p.add_argument_group("grid")
    g.add_argument("--lengths", "-l", type=int, nargs="+", default=[1024], help="prompt lengths in tokens")
    g.add_argument("--depths", "-d", type=float, nargs="+", default=[0.1, 0.5, 0.9], help="needle depths 0..1")
    g = p.add_argument_group("output")
    g.add_argument("--out", "-o", type=Path, required=True, help="results .jsonl file (appended; resumable)")
    g.add_argument("--csv", type=Path, help="also write the tidy table of this sweep to this .csv file")
    g.add_argument("--retry-errors", action="store_true", help="rerun cells that ended with an error")
    g.add_argument("--group-by", nargs="+", default=["label", "length_target", "depth"], metavar="COLUMN",
                   help="summary table groups: columns of the results, e.g. label length_target depth seed "
                        "(default: label length_target depth)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the summary as JSON lines")
    add_model_args(p)
    add_recipe_args(p, default=[r.name for r in list_recipes()])
    add_generation_args(p, max_new_tokens=16)
    add_launch_args(p)
    p.set_defaults(func=cmd_sweep)
