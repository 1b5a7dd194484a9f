"""``swaa run``: one prompt under full attention and each recipe, side by side (output, timings, memory)."""

from __future__ import annotations

import textwrap
from pathlib import Path

from ..runtime.textfile import read_text_file
from .common import (
    CLIError,
    add_generation_args,
    add_model_args,
    add_recipe_args,
    formatter,
    load_from_args,
    num_layers,
    resolve_configs,
    run_spec,
)
from .output import print_json, report_errors, results_table, shared_error


def cmd_run(args) -> int:
    from ..eval.runner import compare
    from ..eval.tasks import TaskSample, count_tokens

    text = _prompt_text(args)
    spec = run_spec(args, score_logprob=bool(args.answer))
    loaded = load_from_args(args)
    prompt_tokens = count_tokens(loaded.tokenizer, text)
    configs = resolve_configs(args, num_layers(loaded), prompt_tokens)
    target: TaskSample | str = text
    if args.answer or args.answer_prefix:
        target = TaskSample("prompt", text, "", args.answer or "", args.answer_prefix or "", prompt_tokens)
    stream = args.stream  # refused beside --json (cli/rules.py)

    def on_start(label):
        if stream:
            print(f"\n── {label} ──", flush=True)

    def on_token(piece):
        if stream:
            print(piece, end="", flush=True)

    def on_result(result):
        if args.json:
            print_json({"model": loaded.info.name, **result.to_dict()})
        elif stream:
            print(flush=True)

    results = compare(loaded, target, configs, spec=spec, on_start=on_start, on_token=on_token, on_result=on_result)
    if not args.json:
        if not shared_error(results):
            read = max(r.prompt_tokens for r in results)  # what the model read, chat template included
            results_table(results, title=f"{loaded.info.name}: {read} prompt tokens (chat template included)")
        for note in dict.fromkeys(f"note ({r.label}): {n}" for r in results for n in r.notes):
            print(note)
    return report_errors(results)


def _prompt_text(args) -> str:
    sources = [s for s in (args.text, args.prompt) if s] + ([args.prompt_file] if args.prompt_file else [])
    if len(sources) != 1:
        raise CLIError("Give exactly one prompt: as an argument, with --prompt TEXT, or with --prompt-file PATH.")
    if args.prompt_file:
        return read_text_file(args.prompt_file, what="Prompt file")
    return sources[0]


def add_parser(sub) -> None:
    p = sub.add_parser(
        "run",
        help="one prompt under several recipes, side by side",
        formatter_class=formatter,
        description=textwrap.dedent(
            """\
            Generate an answer to one prompt with full attention (always, as the baseline) and with each recipe.
            Decoding is greedy, so runs differ only by attention. Per run: output, time to first token, prefill,
            decode speed, total time, peak memory, KV-cache bytes held, kernel used.

            examples:
              swaa run "What is the capital of France?" --recipe swa --recipe recommended
              swaa run --prompt-file report.txt --recipe swa-fa-decode --window 512 --json | jq .ttft_s
              swaa run --model ./my-model --prompt "..." --recipe '{"sliding_window_size": 128}'"""
        ),
    )
    p.add_argument("text", nargs="?", help="the prompt (or use --prompt / --prompt-file)")
    p.add_argument("--prompt", "-p", help="the prompt text")
    p.add_argument("--prompt-file", type=Path, help="read the prompt from a text file")
    p.add_argument("--answer", help="expected answer: scores each run (contains-match) and its log-likelihood")
    p.add_argument("--answer-prefix", help="text the answer starts with, pre-filled after the chat prompt")
    p.add_argument("--json", action="store_true", help="print one JSON object per run (config, output, metrics)")
    p.add_argument("--stream", action="store_true", help="print tokens as they are generated (not with --json)")
    add_model_args(p)
    add_recipe_args(p, default=["recommended"])
    add_generation_args(p, max_new_tokens=64)
    p.set_defaults(func=cmd_run)
