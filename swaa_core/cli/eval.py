"""``swaa eval``: a built-in task or a dataset under recipes, scored (accuracy, answer log-likelihood) and timed.

Also home of the task options and checks ``swaa sweep`` shares (``add_task_args``, ``task_kwargs``,
``check_context``).
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from ..eval.tasks import TASK_KINDS, TaskError
from ..runtime.files import write_new
from ..runtime.textfile import read_text_file
from .common import (
    CLIError,
    add_generation_args,
    add_launch_args,
    add_model_args,
    add_recipe_args,
    formatter,
    in_option_words,
    launch_from_args,
    load_from_args,
    num_layers,
    relaunch,
    resolve_configs,
    run_spec,
)
from .output import frame_table, note, path_caption, print_json, report_errors, shared_error


def cmd_eval(args) -> int:
    from ..eval.runner import evaluate_shared

    if (code := relaunch(args)) is not None:
        return code
    spec = run_spec(args, score_logprob=not args.no_logprob)
    launch = launch_from_args(args)
    loaded = load_from_args(args, launch)
    if not args.dataset and args.task != "doc_qa":
        check_context(loaded, args.length, args.max_new_tokens, "--length")
    try:
        samples = _eval_samples(args, loaded.tokenizer)
    except TaskError as e:  # doc_qa: "length_tokens=300 leaves no room for the document"
        raise TaskError(in_option_words(str(e), {r"\blength_tokens=": "--length "})) from None
    longest = max(s.context_tokens for s in samples) or None
    configs = resolve_configs(args, num_layers(loaded), longest)
    if launch.is_main:
        where = f" on {launch.world} processes" if launch.distributed else ""
        note(f"{len(samples)} sample(s) x {1 + len(configs)} config(s) on {loaded.info.name}{where}")
    results = evaluate_shared(
        launch,
        loaded,
        samples,
        configs,
        spec=spec,
        progress=not args.quiet and launch.is_main,
    )
    if not launch.is_main:  # the main process reports for everyone
        return 0
    rows = [{"model": loaded.info.name, **r.to_dict()} for r in results]
    if args.out:
        written = write_new(args.out, lambda path: _write_rows(rows, path))
        moved = f" ({args.out} was written by another run meanwhile)" if written != Path(args.out) else ""
        note(f"wrote {len(rows)} runs to {written}{moved}")
    if args.json:
        for row in rows:
            print_json(row)
    elif not shared_error(results):
        from ..eval.results import accuracy_table

        title = f"{loaded.info.name}: {args.dataset or args.task}"
        frame_table(accuracy_table(results), title=title, caption=path_caption(results))
    return report_errors(results)


def _eval_samples(args, tokenizer):
    from ..eval.tasks import load_dataset_records, make_samples
    from ..eval.tasks.registry import DEPTHLESS, SEEDLESS

    if args.dataset:
        return load_dataset_records(args.dataset, split=args.split, limit=args.limit, tokenizer=tokenizer)
    kwargs = task_kwargs(args.task_arg)
    if args.task == "doc_qa":  # --document and --question are there (cli/rules.py)
        kwargs.update(document=read_text_file(args.document, what="Document"), question=args.question,
                      answer=args.answer or "", answer_prefix=args.answer_prefix or "")  # fmt: skip
    seeds = [args.seed] if args.task in SEEDLESS else range(args.seed, args.seed + args.samples)
    depths = None if args.task in DEPTHLESS else args.depth or [0.5]
    return make_samples(args.task, tokenizer, length_tokens=args.length, seeds=seeds, depths=depths, **kwargs)


def check_context(loaded, length: int, max_new_tokens: int, flag: str) -> None:
    """Refuse a task length the model cannot read before any prompt is built (one message, not one per run)."""
    from ..eval import harness

    try:
        harness.check_context(loaded.model, length, max_new_tokens, info=loaded.info)
    except harness.ContextOverflowError as e:  # the runner's rule, in the words of the command's options
        raise CLIError(
            f"{flag} {length} plus --max-new-tokens {max_new_tokens} is more than {loaded.info.name} can read: its "
            f"context is {e.limit} tokens. Use a length of at most {e.limit - max_new_tokens} minus the few tokens of "
            "the chat template."
        ) from None


def task_kwargs(pairs: list[str] | None) -> dict:
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise CLIError(f"--task-arg takes KEY=VALUE (e.g. num_keys=4), got {pair!r}.")
        if key.strip() in out:
            raise CLIError(f"--task-arg {key.strip()} is given twice; give each task arg once.")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def _write_rows(rows: list[dict], path: Path) -> None:
    from ..eval.results import export, to_frame

    export(to_frame(rows), path)


def add_task_args(p, *, tasks=TASK_KINDS, task_help: str = "") -> None:
    """The task, its options and seeds, shared by `swaa eval` and `swaa sweep`."""
    g = p.add_argument_group("task")
    g.add_argument(
        "--task", "-t", default="passkey", choices=tasks, help=f"built-in task (default: passkey){task_help}"
    )
    g.add_argument("--task-arg", action="append", metavar="KEY=VALUE",
                   help="task option, e.g. digits=4 (passkey, needle, ...), num_keys=4 (multi_key); one the task "
                        "does not take is refused, naming those it does")  # fmt: skip
    g.add_argument("--samples", "-s", type=int, default=3, help="samples (seeds) per length and depth (default: 3)")
    g.add_argument("--seed", type=int, default=0, help="first seed (default: 0)")
    g.add_argument(
        "--no-logprob", action="store_true", help="skip the answer log-likelihood (one prefill less per run)"
    )
    g.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="a built-in task or a dataset under recipes: accuracy and cost",
        formatter_class=formatter,
        description=textwrap.dedent(
            """\
            Evaluate recipes on a long-context task. Built-in tasks are generated from a seed and sized in tokens
            of the model's tokenizer: passkey, needle, multi_key, multi_value, variable_tracking, common_words
            (RULER style) and doc_qa (your document). Or load an evaluation set in the upstream format (records
            with prompt, question, answer) from a .parquet/.json/.jsonl file or a Hub dataset id.

            Each answer is scored by contains-match and by the log-likelihood of the reference answer under the
            recipe, a graded signal that still moves when a small model's greedy answer is wrong.

            examples:
              swaa eval --task passkey --length 2048 --depth 0.1 --depth 0.9 --samples 5 -r swa -r recommended
              swaa eval --dataset longmemeval.parquet --limit 20 --recipe swa-half-fa-fa-decode --out runs.jsonl
              swaa eval --task doc_qa --document notes.txt --question "Who signed?" --answer "Ada" """
        ),
    )
    add_task_args(p)
    g = p.add_argument_group("task size")
    g.add_argument("--length", "-l", type=int, default=1024, help="prompt length in tokens (default: 1024)")
    g.add_argument("--depth", "-d", type=float, action="append", help="needle depth 0..1 (repeatable; default: 0.5)")
    g = p.add_argument_group("dataset or document")
    g.add_argument(
        "--dataset",
        help="a .parquet/.json/.jsonl file, a folder of them, or a Hub dataset id: its records "
        "are the prompts, instead of --task (and its --task-arg, --samples, --seed, --length, --depth)",
    )
    g.add_argument("--split", help="with --dataset: its split (files whose name contains it)")
    g.add_argument("--limit", type=int, help="with --dataset: use only its first N records")
    g.add_argument("--document", type=Path, help="doc_qa: a text file to ask about")
    g.add_argument("--question", help="doc_qa: the question")
    g.add_argument("--answer", help="doc_qa: the expected answer (to score)")
    g.add_argument("--answer-prefix", help="doc_qa: the answer's opening words, pre-filled")
    p.add_argument("--json", action="store_true", help="print one JSON object per run instead of the summary table")
    p.add_argument("--out", type=Path, help="also save every run to a .jsonl or .csv file")
    add_model_args(p)
    add_recipe_args(p, default=["swa", "swa-fa-decode", "recommended"])
    add_generation_args(p, max_new_tokens=16)
    add_launch_args(p)
    p.set_defaults(func=cmd_eval)
