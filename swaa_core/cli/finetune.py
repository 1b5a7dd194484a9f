"""``swaa finetune``: LoRA SFT under a SWA recipe (the paper's fifth strategy); saves an adapter with its config.

A thin layer over :func:`swaa_core.train.finetune_pipeline`: the options become a recipe, TrainSettings and the
pipeline's arguments, and the report is printed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..engine.config import SWAAConfigError
from ..eval.recipes import load_user_recipes, resolve_recipe, unused_settings
from ..eval.tasks.base import TaskError
from ..runtime.jsonl import save_jsonl
from ..train.settings import KEEP_CHOICES, SWAA_FILE, TrainSettings
from .common import (
    add_launch_args,
    add_model_args,
    add_window_args,
    formatter,
    in_option_words,
    launch_from_args,
    load_from_args,
    num_layers,
    relaunch,
)
from .distill import add_data_args, prompts
from .output import note

if TYPE_CHECKING:
    from ..train.finetune import FinetuneReport

FINETUNE_HELP = """\
LoRA fine-tuning under sliding window attention (the paper's fifth strategy).

What happens:
  1. data     self-distillation: the model answers long-context prompts with FULL attention; those answers
              become the targets (wrong ones are dropped where the reference is known). Or bring --data.
  2. before   (with --eval-samples) held-out prompts are answered under the SWA recipe and scored.
  3. train    LoRA SFT with the SWA recipe active in the attention. Under FA decode the mixed mask is used:
              prompt tokens slide, answer tokens see everything, exactly as at inference. Loss on answers only.
  4. after    the same held-out prompts again, now with the adapter.
  5. save     OUT/ holds the adapter, swaa_config.json (the recipe it was trained for, upstream format),
              distill.jsonl and a README; load it with swaa_core.train.load_adapter().
"""

FINETUNE_EXAMPLES = """\
examples:
  # the run in docs/results.md (SmolLM2-135M on CPU): 16 needle prompts of 512 tokens, window 64 + FA decode;
  # held-out needles went from 0/8 to 8/8 in 2 min 53 s on an idle 2-core CPU.
  swaa finetune --recipe swa-fa-decode --window 64 --samples 16 --length 512 --steps 24 --lr 5e-4 \\
      --eval-samples 8 --max-new-tokens 16 --out adapters/smollm2-needle-swa64

  # a quicker one (1 min 11 s there; held-out 0/4 -> 4/4)
  swaa finetune --recipe swa-fa-decode --window 64 --samples 8 --length 384 --steps 12 --lr 1e-3 \\
      --eval-samples 4 --max-new-tokens 12 --out adapters/quick

  # the paper's recipe on a GPU, your own data distilled first
  swaa distill --model Qwen/Qwen3-4B-Instruct-2507 --dataset my_eval.jsonl --out data.jsonl
  swaa finetune --model Qwen/Qwen3-4B-Instruct-2507 --data data.jsonl --recipe swa-half-fa-fa-decode \\
      --window 2048 --epochs 1 --out adapters/qwen3-4b-swa2k
"""


def add_parser(sub) -> None:
    f = sub.add_parser(
        "finetune",
        help="LoRA SFT under a SWA recipe; saves an adapter with its config",
        description=FINETUNE_HELP,
        epilog=FINETUNE_EXAMPLES,
        formatter_class=formatter,
    )
    add_model_args(f)
    add_launch_args(f)
    g = f.add_argument_group("attention during training (the recipe the adapter is for)")
    g.add_argument("--recipe", "-r", default="swa-sinks-fa-decode",
                   help="a recipe name (see `swaa recipes`) or inline JSON of the upstream fields "
                        "(default: swa-sinks-fa-decode)")  # fmt: skip
    add_window_args(g, scaled_to="--length")
    g.add_argument("--recipes-file", help="your saved recipes (JSON; upstream settings files too), for --recipe NAME")
    data = f.add_argument_group("training data: --data FILE, or distil on the fly from a task")
    data.add_argument(
        "--data",
        help="JSONL from `swaa distill`, or upstream records (JSONL, JSON list, or the Parquet "
        "its self-distillation writes: prompt, response, judge), trained on as they are: not with --dataset, "
        "--samples, --split (nor --task, --length, --max-new-tokens, --cot unless --eval-samples uses them)",
    )
    add_data_args(data)
    data.add_argument("--keep", choices=KEEP_CHOICES, default="correct",
                      help="which distilled answers to train on (default: drop known-wrong ones)")  # fmt: skip
    t = f.add_argument_group("LoRA training")
    t.add_argument("--steps", type=int, help="optimizer steps (default: one pass over the data, see --epochs)")
    t.add_argument(
        "--epochs",
        type=float,
        default=1.0,
        help="passes over the data (refused with --steps, which sets the length instead)",
    )
    t.add_argument("--lr", type=float, default=TrainSettings.learning_rate, help="learning rate (default 1e-4)")
    t.add_argument("--rank", type=int, default=TrainSettings.lora_r, help="LoRA rank r (default 16)")
    t.add_argument("--alpha", type=int, default=TrainSettings.lora_alpha, help="LoRA alpha (default 32)")
    t.add_argument("--dropout", type=float, default=TrainSettings.lora_dropout, help="LoRA dropout (default 0.05)")
    t.add_argument("--targets", default="q_proj,k_proj,v_proj", help="modules LoRA adapts, comma-separated")
    t.add_argument("--batch-size", type=int, default=1)
    t.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps")
    t.add_argument("--max-length", type=int, help="skip examples longer than this many tokens")
    t.add_argument("--no-gradient-checkpointing", action="store_true",
                   help="faster, but keeps every layer's activations in memory")  # fmt: skip
    e = f.add_argument_group("before/after evaluation")
    e.add_argument(
        "--eval-samples",
        type=int,
        default=0,
        help="held-out prompts of --task scored under the recipe before and after training (0: skip)",
    )
    e.add_argument("--eval-length", type=int, help="with --eval-samples: their length in tokens (default: --length)")
    f.add_argument(
        "--out",
        required=True,
        help="a new folder for the adapter (created when missing; one holding an earlier run's adapter is refused)",
    )
    f.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    f.set_defaults(func=cmd_finetune)


def cmd_finetune(args) -> int:
    # the training stack loads with the command, not its help
    from ..train.distill import DistillDataError, distill_shared, load_jsonl
    from ..train.finetune import finetune_pipeline

    if (code := relaunch(args)) is not None:
        return code
    user_recipes = load_user_recipes(args.recipes_file) if args.recipes_file else None
    settings = _settings(args)  # before the model loads
    data = load_jsonl(args.data) if args.data else None  # a bad file is refused before the model loads, too
    launch = launch_from_args(args)
    loaded = load_from_args(args, launch)
    args.quiet = args.quiet or not launch.is_main
    cfg = resolve_recipe(args.recipe, num_layers(loaded), window=args.window, keep_first=args.keep_first,
                         context_tokens=args.length, user_recipes=user_recipes)  # fmt: skip
    if cfg is None:
        raise SWAAConfigError(f"Recipe {args.recipe!r} is full attention; fine-tuning under SWA needs a sliding one.")
    if launch.is_main:
        for text in unused_settings(
            args.recipe, window=args.window, keep_first=args.keep_first, user_recipes=user_recipes
        ):
            note(text)
    records = data if args.data else None
    if records is None and args.dataset:  # built-in tasks are distilled inside the pipeline
        records = distill_shared(loaded.model, loaded.tokenizer, prompts(args, loaded.tokenizer),
                                 max_new_tokens=args.max_new_tokens, cot=args.cot, progress=not args.quiet)  # fmt: skip
        if launch.is_main:
            save_jsonl(records, Path(args.out) / "distill.jsonl")
    if launch.is_main:
        where = f" on {launch.world} processes (DDP)" if launch.distributed else ""
        print(f"Fine-tuning {loaded.info.name} under {cfg.describe()} ({cfg.to_json()}){where}")
    try:
        report = finetune_pipeline(
            loaded, cfg, args.out, records=records, task=args.task, samples=args.samples, length_tokens=args.length,
            seed=args.seed, max_new_tokens=args.max_new_tokens, keep=args.keep, cot=args.cot, settings=settings,
            eval_samples=args.eval_samples, eval_length=args.eval_length, progress=not args.quiet, backend=args.backend,
        )  # fmt: skip
    except DistillDataError as e:  # "keep='all'", "max_length": the pipeline's keywords, as this command's options
        raise DistillDataError(in_option_words(str(e), OPTION_WORDS)) from None
    except TaskError as e:  # a task builder's length_tokens: --eval-length's value, else --length's
        length = "--eval-length" if args.eval_length and f"length_tokens={args.eval_length}" in str(e) else "--length"
        raise TaskError(in_option_words(str(e), {r"\blength_tokens\b": length})) from None
    if launch.is_main:
        _print_report(report)
    return 0


# The pipeline's keyword spellings in its messages -> this command's options.
OPTION_WORDS = {r"\bkeep='([\w-]+)'": r"--keep \1", r"\bmax_length\b": "--max-length",
                r"\btarget_modules\b": "--targets"}  # fmt: skip


def _settings(args) -> TrainSettings:
    try:
        return _train_settings(args)
    except ValueError as e:
        raise ValueError(in_option_words(str(e), OPTION_WORDS)) from None


def _train_settings(args) -> TrainSettings:
    return TrainSettings(
        max_steps=args.steps, epochs=args.epochs, learning_rate=args.lr, batch_size=args.batch_size,
        grad_accum=args.grad_accum, lora_r=args.rank, lora_alpha=args.alpha, lora_dropout=args.dropout,
        target_modules=[m.strip() for m in args.targets.split(",") if m.strip()], max_length=args.max_length,
        gradient_checkpointing=not args.no_gradient_checkpointing, seed=args.seed,
    ).check()  # fmt: skip


def _print_report(report: FinetuneReport) -> None:
    for text in report.notes:
        note(text)
    train = report.train
    print(f"data: {report.records} records kept, {report.examples} examples ({report.skipped_too_long} too long)")
    if train.losses:
        print(f"train: {train.steps} steps in {train.seconds:.0f} s, loss {train.losses[0]:.4f} -> "
              f"{train.losses[-1]:.4f} (per step: {', '.join(f'{x:.3f}' for x in train.losses)})")  # fmt: skip
    for summary in (report.before, report.after):
        if summary is not None:
            print(summary.line())
    if report.adapter_path is not None:
        print(f"adapter saved to {report.adapter_path} (with {SWAA_FILE})")
