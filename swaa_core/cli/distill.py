"""``swaa distill``: self-distillation data, the model's own full-attention answers to long-context prompts.

Also home of the prompt options ``swaa finetune`` shares (``add_data_args``, ``prompts``): it distils the same way
when it is not given ``--data``.
"""

from __future__ import annotations

from ..eval.tasks import TASK_KINDS, make_samples
from ..eval.tasks.base import TaskError
from ..runtime.files import write_new
from ..runtime.jsonl import save_jsonl
from ..train.settings import KEEP_CHOICES
from .common import (
    add_launch_args,
    add_model_args,
    formatter,
    in_option_words,
    launch_from_args,
    load_from_args,
    relaunch,
)

DISTILL_HELP = """\
Self-distillation data: the model's own greedy answers with FULL attention on long-context prompts
(built-in tasks or your dataset in the upstream format: records with prompt / question / answer).
Answers that miss a known reference are dropped (--keep). Output: JSONL with prompt, question, answer,
response, judge (1 right / 0 wrong / null unknown), ready for `swaa finetune --data`.
"""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "distill",
        help="make self-distillation data (full-attention answers)",
        description=DISTILL_HELP,
        formatter_class=formatter,
    )
    add_model_args(p, backend=False)  # distillation runs full attention only: no SWA kernel to choose
    add_launch_args(p)
    add_data_args(p)
    p.add_argument(
        "--keep",
        choices=KEEP_CHOICES,
        default="correct",
        help="correct: drop known-wrong answers (default); judged-correct: only answers checked right; "
        "all: keep everything",
    )
    p.add_argument("--out", required=True, help="the .jsonl file to write (a new one: an existing file is refused)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_distill)


# Prompts come by the dozen from a seed: doc_qa (one document and question of your own) is not among them.
PROMPT_TASKS = tuple(t for t in TASK_KINDS if t != "doc_qa")


def add_data_args(p) -> None:
    """Where the prompts come from (a built-in task or a dataset) and how they are answered."""
    p.add_argument(
        "--task",
        default="needle",
        choices=PROMPT_TASKS,
        help="built-in task kind for prompts (default: needle; for your own documents, use --dataset)",
    )
    p.add_argument(
        "--dataset",
        help="your dataset (upstream format .jsonl/.json/.parquet or a Hub id) instead of --task and its --length "
        "and --seed",
    )
    p.add_argument("--split", help="with --dataset: its split (file name part such as 'train')")
    p.add_argument("--samples", type=int, default=32, help="how many prompts (default 32; of --dataset: its first N)")
    p.add_argument("--length", type=int, default=1024, help="prompt length in tokens for --task (default 1024)")
    p.add_argument("--seed", type=int, default=0, help="first task seed (default 0)")
    p.add_argument("--max-new-tokens", type=int, default=24, help="answer length limit (default 24)")
    p.add_argument("--cot", action="store_true", help="chain-of-thought prompts (thinking mode where the model has it)")


def prompts(args, tokenizer) -> list:
    """The prompts of ``add_data_args``: dataset records, or ``--samples`` task samples of ``--length`` tokens."""
    if args.dataset:
        from ..eval.tasks import load_dataset_records

        return load_dataset_records(args.dataset, split=args.split, limit=args.samples, tokenizer=tokenizer)
    try:
        return make_samples(
            args.task, tokenizer, length_tokens=args.length, seeds=range(args.seed, args.seed + args.samples)
        )
    except TaskError as e:  # the builders' keywords, as this command's options
        raise TaskError(in_option_words(str(e), {r"\blength_tokens\b": "--length"})) from None


def cmd_distill(args) -> int:
    from ..train.distill import distill_shared, filter_records  # the model stack loads with the command, not its help

    if (code := relaunch(args)) is not None:
        return code
    launch = launch_from_args(args)
    loaded = load_from_args(args, launch)
    records = distill_shared(
        loaded.model,
        loaded.tokenizer,
        prompts(args, loaded.tokenizer),
        max_new_tokens=args.max_new_tokens,
        cot=args.cot,
        progress=not args.quiet and launch.is_main,
    )
    if not launch.is_main:
        return 0
    kept = filter_records(records, args.keep)
    path = write_new(args.out, lambda new: save_jsonl(kept, new))  # another name if a run wrote it meanwhile
    right, wrong = sum(r["judge"] == 1 for r in records), sum(r["judge"] == 0 for r in records)
    print(
        f"{len(records)} answers with full attention: {right} right, {wrong} wrong, "
        f"{len(records) - right - wrong} without a reference; kept {len(kept)} ({args.keep}) -> {path}"
    )
    return 0
