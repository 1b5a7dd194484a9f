"""The ``swaa`` command (also ``python -m swaa_core``): run, eval, sweep, recipes (+ finetune/distill when present).

The top layer: it only parses arguments, calls the eval, train and models layers, and prints; nothing in
swaa_core imports it except ``__main__`` (and ``train.finetune`` adds its subcommands through ``add_cli``). This
package is the whole command for now (argument sets and the run / eval / sweep / recipes handlers).

Every subcommand parser sets ``func``: a handler ``(args) -> exit code``. Plug-in modules add their subcommands
through ``add_cli(subparsers)`` following the same rule. Results go to stdout (JSON lines with ``--json``), progress
and messages to stderr, so ``swaa run --json ... | jq`` works.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..engine.config import SWAAConfig, SWAAConfigError
from ..eval.latency import DEFAULT_TIMING_TOKENS, MIN_DECODE_TOKENS
from ..eval.recipes import (
    default_window,
    list_recipes,
    load_user_recipes,
    recipe_label,
    resolve_recipe,
    save_user_recipes,
)
from ..eval.tasks import TASK_KINDS, TaskError
from ..runtime.textfile import read_text_file

EMBEDDED_HINT = "default: the embedded SmolLM2-135M-Instruct"
RECIPE_HELP = (
    "a recipe: a preset name (see `swaa recipes list`), a name from --recipes-file, or an inline JSON config such "
    'as \'{"sliding_window_size": 256, "force_fa_decode": true}\'. Repeat for several; full attention always '
    "runs first as the baseline."
)


class CLIError(Exception):
    """A problem with the command line that the user can fix; printed without a traceback."""


# ---------------------------------------------------------------------- numeric options

MAX_TOKENS = 1 << 24  # 16.7M tokens: beyond any model's context, so a larger value is a typo
MAX_COUNT = 100_000  # samples, steps, ...: a bigger run would take weeks on any machine


@dataclass(frozen=True)
class Bound:
    """The range of one numeric option; ``open_low`` excludes ``low`` itself (learning rate, epochs)."""

    kind: type
    low: float
    high: float | None
    open_low: bool = False
    open_high: bool = False

    def __call__(self, text: str):
        try:
            value = self.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {self._noun()}, got {text!r}") from None
        below = value <= self.low if self.open_low else value < self.low
        above = self.high is not None and (value >= self.high if self.open_high else value > self.high)
        if (isinstance(value, float) and not math.isfinite(value)) or below or above:
            raise argparse.ArgumentTypeError(f"must be {self._noun()} {self._range()}, got {text}")
        return value

    def _noun(self) -> str:
        return "a whole number" if self.kind is int else "a number"

    def _range(self) -> str:
        low = f"{'>' if self.open_low else '>='} {self.low:{self._fmt}}"
        if self.high is None:
            return low
        if self.kind is int:
            return f"from {self.low:,} to {self.high:,}"
        return f"{low} and {'<' if self.open_high else '<='} {self.high:{self._fmt}}"

    @property
    def _fmt(self) -> str:
        return "," if self.kind is int else "g"


_TOKENS, _SINKS = Bound(int, 1, MAX_TOKENS), Bound(int, 0, MAX_TOKENS)
# Every numeric option of every subcommand (plug-ins included) by its dest; tests check that none is missing.
NUMERIC_OPTIONS: dict[str, Bound] = {
    "max_new_tokens": _TOKENS,
    "window": _TOKENS,
    "length": _TOKENS,
    "lengths": _TOKENS,
    "context": _TOKENS,
    "eval_length": _TOKENS,
    "max_length": _TOKENS,
    "keep_first": _SINKS,
    "timing_tokens": _SINKS,  # 0: time each answer's own tokens
    "sinks": _SINKS,
    "samples": Bound(int, 1, MAX_COUNT),
    "eval_samples": Bound(int, 0, MAX_COUNT),
    "steps": Bound(int, 1, MAX_COUNT),
    "limit": Bound(int, 1, None),  # more than the dataset holds just means all of it
    "seed": Bound(int, 0, 2**32 - 1),  # torch and numpy seeds are 32/64-bit
    "layers": Bound(int, 1, 10_000),
    "rank": Bound(int, 1, 65_536),
    "alpha": Bound(int, 1, 65_536),
    "batch_size": Bound(int, 1, 65_536),
    "grad_accum": Bound(int, 1, MAX_COUNT),
    "depth": Bound(float, 0, 1),
    "depths": Bound(float, 0, 1),
    "epochs": Bound(float, 0, 1000, open_low=True),
    "lr": Bound(float, 0, 1, open_low=True),
    "dropout": Bound(float, 0, 1, open_high=True),
    "processes": Bound(int, 1, 4096),
}


def numeric_actions(parser: argparse.ArgumentParser):
    """(subcommand path, action) for every int/float option below ``parser``, subcommands included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from numeric_actions(sub)
        elif action.type in (int, float) or isinstance(action.type, Bound):
            yield parser.prog, action


def _bound_numbers(parser: argparse.ArgumentParser) -> None:
    """Give every int/float option its range from NUMERIC_OPTIONS, so out-of-range values stop at parse time with
    argparse's own "argument --x: must be ..." message (exit code 2) instead of failing deep inside a run."""
    for _prog, action in numeric_actions(parser):
        bound = NUMERIC_OPTIONS.get(action.dest)
        if bound is not None and action.type is bound.kind:
            action.type = bound


# ---------------------------------------------------------------------- shared arguments


def _formatter(prog):
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=34, width=110)


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", "-m", default=None, help=f"embedded name, Hub id or local folder ({EMBEDDED_HINT})")
    g.add_argument(
        "--device",
        default=None,
        help="cpu, cuda, cuda:1 ..., or auto: one model spread over every GPU (device_map='auto') "
        "(default: CUDA when present, else CPU)",
    )
    g.add_argument(
        "--dtype", default=None, help="float32, bfloat16, float16 (default: bfloat16 on CUDA, float32 on CPU)"
    )
    g.add_argument(
        "--backend",
        default="auto",
        choices=("auto", "blocked", "reference", "flex", "fa4", "flash"),
        help="SWA attention kernel (default: the fastest available on the device)",
    )


def add_recipe_args(p: argparse.ArgumentParser, *, default: list[str]) -> None:
    g = p.add_argument_group("recipes")
    g.add_argument(
        "--recipe",
        "-r",
        action="append",
        metavar="NAME",
        help=f"{RECIPE_HELP} Default: {' '.join(default)}, or every config of --recipes-file.",
    )
    g.add_argument(
        "--window",
        "-w",
        type=int,
        default=None,
        help="sliding window W for the presets (default: scaled to the prompt)",
    )
    g.add_argument("--keep-first", type=int, default=None, help="sink tokens for the sink presets (default: 10)")
    g.add_argument(
        "--config",
        action="append",
        dest="recipe",
        type=config_arg,
        metavar="JSON|FILE",
        help='one SWAA config in the upstream format, inline or in a .json file: {"swaa_config": {...}} as the app '
        "shows it, or just its fields. Repeatable, mixes with --recipe.",
    )
    g.add_argument(
        "--recipes-file",
        type=Path,
        default=None,
        help="your saved recipes or an upstream settings file (a JSON list of configs); without --recipe, every "
        "config in it runs",
    )
    p.set_defaults(default_recipes=default)


class ConfigFile(str):
    """A --config value that names a file; read by :func:`read_config_file` before the model loads."""


def config_arg(text: str) -> str:
    """--config: inline JSON (checked here) or a file path (read before the model loads)."""
    if not text.lstrip().startswith("{"):
        return ConfigFile(text)
    try:
        SWAAConfig.from_json(text)
    except SWAAConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text.strip()


def read_config_file(path: str) -> str:
    """The JSON text of a --config file holding one config ({"swaa_config": {...}} or the bare fields)."""
    text = read_text_file(path, what="Config file", max_bytes=1 << 20).strip()
    if text.startswith("["):
        raise CLIError(
            f"Config file {path} holds a list of configs (an upstream settings file); run them all with "
            f"--recipes-file {path}."
        )
    try:
        SWAAConfig.from_json(text)
    except SWAAConfigError as e:
        raise SWAAConfigError(f"Config file {path}: {e}") from None
    return text


def add_generation_args(p: argparse.ArgumentParser, *, max_new_tokens: int) -> None:
    g = p.add_argument_group("generation")
    g.add_argument("--max-new-tokens", "-n", type=int, default=max_new_tokens, help=f"(default: {max_new_tokens})")
    g.add_argument("--cot", action="store_true", help="chain of thought: thinking mode, or a step-by-step instruction")
    g.add_argument(
        "--timing-tokens",
        type=int,
        default=DEFAULT_TIMING_TOKENS,
        metavar="N",
        help="time every run over its first N generated tokens, generating past the answer (unseen) where it is "
        f"shorter, so decode speeds compare like for like (default: {DEFAULT_TIMING_TOKENS}; 0: the answer only)",
    )
    g.add_argument("--system", default=None, help="a system message (default: the model's own template default)")


def load_from_args(args, launch=None):
    """The model of ``--model`` on ``--device``; under a multi-process launch, on this process's own device."""
    from .. import load_model

    if launch is None or launch.is_main:
        _note(f"loading {args.model or 'the embedded model'} ...")
    device = args.device if launch is None else launch.device
    return load_model(args.model, device=device, dtype=args.dtype)


def add_launch_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("processes")
    g.add_argument(
        "--processes",
        type=int,
        default=None,
        metavar="N",
        help="run on N processes of this machine, one per GPU (or N CPU processes): starts torchrun for you. "
        "Same as `torchrun --nproc_per_node N -m swaa_core ...`; under a launcher this option is ignored.",
    )


def relaunch(args) -> int | None:
    """Start ``--processes N`` copies of this command under torchrun and return their exit code; None when this
    process should do the work itself (no --processes, N = 1, or already started by a launcher)."""
    import subprocess

    from ..runtime.distributed import launch_command, launch_env, launched_processes

    n = getattr(args, "processes", None)
    if n is None or n == 1 or launched_processes() > 1:
        return None
    command = launch_command(n, getattr(args, "argv", None) or sys.argv[1:])
    _note(f"starting {n} processes: {' '.join(command[1:])}")
    return subprocess.call(command, env=launch_env(n))


def launch_from_args(args):
    """This process's place in a torchrun / accelerate launch (one process outside a launcher)."""
    from ..runtime.distributed import current

    return current(args.device)


def resolve_configs(args, num_layers: int, context_tokens: int | None) -> dict[str, SWAAConfig | None]:
    """{label: config} for the recipes on the command line, full attention excluded (the runner adds it).

    Without --recipe, a --recipes-file runs every config it holds (upstream settings files are lists of configs to
    compare); otherwise the command's default recipes run."""
    user = load_user_recipes(args.recipes_file) if args.recipes_file else {}
    window = args.window if args.window is not None else default_window(context_tokens)
    out: dict[str, SWAAConfig | None] = {}
    for name in args.recipe or list(user) or args.default_recipes:
        try:
            cfg = resolve_recipe(name, num_layers, window=window, keep_first=args.keep_first, user_recipes=user)
        except SWAAConfigError as e:  # name the recipe, since several may be on the line or in the file
            raise SWAAConfigError(str(e) if repr(name) in str(e) else f"Recipe {_short(name)}: {e}") from None
        if cfg is None:
            continue
        label = _label_for(name, cfg, user)
        if out.get(label) == cfg:
            continue  # the same config twice (e.g. a preset and its JSON) is one run
        out[label if label not in out else f"{label} [{name}]"] = cfg
    return out


def _short(name: str, limit: int = 80) -> str:
    text = " ".join(name.split())
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")


def _label_for(name: str, cfg: SWAAConfig, user: dict) -> str:
    from ..eval.recipes import get_recipe

    if name in user or name.lstrip().startswith("{"):
        return name if name in user else cfg.describe()
    return recipe_label(get_recipe(name), cfg)


def _first_line(error: BaseException) -> str:
    return (str(error).strip() or type(error).__name__).splitlines()[0]


def _num_layers(loaded) -> int:
    from ..engine.patch import attention_modules

    return len(attention_modules(loaded.model))


def _note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _print_json(obj) -> None:
    # Non-ASCII text goes out as is on a UTF-8 stdout and as \\u escapes elsewhere: the JSON stays lossless either way.
    print(json.dumps(obj, default=str, ensure_ascii=not _is_utf8(sys.stdout)), flush=True)


def _is_utf8(stream) -> bool:
    return (getattr(stream, "encoding", None) or "").lower().replace("-", "").replace("_", "") in ("utf8", "utf8sig")


def _never_fail_on_encoding() -> None:
    """On a stdout/stderr that is not UTF-8 (e.g. PYTHONIOENCODING=latin-1), characters it cannot hold are
    written as \\u escapes rather than ending the command with UnicodeEncodeError."""
    for stream in (sys.stdout, sys.stderr):
        if not _is_utf8(stream) and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


# ---------------------------------------------------------------------- run


def cmd_run(args) -> int:
    from ..eval.runner import compare
    from ..eval.tasks import TaskSample, count_tokens

    text = _prompt_text(args)
    loaded = load_from_args(args)
    prompt_tokens = count_tokens(loaded.tokenizer, text)
    configs = resolve_configs(args, _num_layers(loaded), prompt_tokens)
    target: TaskSample | str = text
    if args.answer or args.answer_prefix:
        target = TaskSample("prompt", text, "", args.answer or "", args.answer_prefix or "", prompt_tokens)
    stream = args.stream and not args.json

    def on_start(label):
        if stream:
            print(f"\n── {label} ──", flush=True)

    def on_token(piece):
        if stream:
            print(piece, end="", flush=True)

    def on_result(result):
        if args.json:
            _print_json({"model": loaded.info.name, **result.to_dict()})
        elif stream:
            print(flush=True)

    results = compare(
        loaded,
        target,
        configs,
        max_new_tokens=args.max_new_tokens,
        timing_tokens=args.timing_tokens,
        cot=args.cot,
        system=args.system,
        backend=args.backend,
        on_start=on_start,
        on_token=on_token,
        on_result=on_result,
        score_logprob=bool(args.answer),
    )
    if not args.json:
        if not _shared_error(results):
            read = max(r.prompt_tokens for r in results)  # what the model read, chat template included
            _results_table(results, title=f"{loaded.info.name}: {read} prompt tokens (chat template included)")
        for note in dict.fromkeys(f"note ({r.label}): {n}" for r in results for n in r.notes):
            print(note)
    return _report_errors(results)


def _prompt_text(args) -> str:
    sources = [s for s in (args.text, args.prompt) if s] + ([args.prompt_file] if args.prompt_file else [])
    if len(sources) != 1:
        raise CLIError("Give exactly one prompt: as an argument, with --prompt TEXT, or with --prompt-file PATH.")
    if args.prompt_file:
        return read_text_file(args.prompt_file, what="Prompt file")
    return sources[0]


# ---------------------------------------------------------------------- eval


def cmd_eval(args) -> int:
    from ..eval.runner import evaluate_shared

    if (code := relaunch(args)) is not None:
        return code
    launch = launch_from_args(args)
    loaded = load_from_args(args, launch)
    if not args.dataset and args.task != "doc_qa":
        _check_context(loaded, args.length, args.max_new_tokens, "--length")
    samples = _eval_samples(args, loaded.tokenizer)
    longest = max(s.context_tokens for s in samples) or None
    configs = resolve_configs(args, _num_layers(loaded), longest)
    if launch.is_main:
        where = f" on {launch.world} processes" if launch.distributed else ""
        _note(f"{len(samples)} sample(s) x {1 + len(configs)} config(s) on {loaded.info.name}{where}")
    results = evaluate_shared(
        launch,
        loaded,
        samples,
        configs,
        max_new_tokens=args.max_new_tokens,
        timing_tokens=args.timing_tokens,
        cot=args.cot,
        system=args.system,
        backend=args.backend,
        score_logprob=not args.no_logprob,
        progress=not args.quiet and launch.is_main,
    )
    if not launch.is_main:  # the main process reports for everyone
        return 0
    rows = [{"model": loaded.info.name, **r.to_dict()} for r in results]
    if args.out:
        _write_rows(rows, args.out)
        _note(f"wrote {len(rows)} runs to {args.out}")
    if args.json:
        for row in rows:
            _print_json(row)
    elif not _shared_error(results):
        from ..eval.results import accuracy_table

        _frame_table(accuracy_table(results), title=f"{loaded.info.name}: {args.dataset or args.task}")
    return _report_errors(results)


def _shared_error(results) -> str | None:
    """The error every run ended with, when they all ended with the same one (a problem of the prompt, not of a
    recipe): it is printed once instead of a table with one failed row per config."""
    errors = {r.error for r in results}
    return next(iter(errors)) if len(errors) == 1 and results else None


def _report_errors(results) -> int:
    """Each distinct run error once on stderr, with the runs it hit; the exit code (1 when any run failed)."""
    by_error: dict[str, list[str]] = {}
    for r in results:
        if r.error:
            by_error.setdefault(r.error, []).append(r.label)
    for error, labels in by_error.items():
        if len(labels) == len(results):
            where = "every run" if len(results) > 1 else "the run"
        else:
            where = ", ".join(dict.fromkeys(labels))
        print(f"swaa: error ({where}): {error}", file=sys.stderr)
    return 1 if by_error else 0


def _eval_samples(args, tokenizer):
    from ..eval.tasks import load_dataset_records, make_samples

    if args.dataset:
        return load_dataset_records(args.dataset, split=args.split, limit=args.limit, tokenizer=tokenizer)
    kwargs = _task_kwargs(args.task_arg)
    if args.task == "doc_qa":
        if not args.document:
            raise CLIError("--task doc_qa needs --document PATH and --question TEXT (and --answer to score).")
        kwargs.update(document=read_text_file(args.document, what="Document"), question=args.question,
                      answer=args.answer or "", answer_prefix=args.answer_prefix or "")  # fmt: skip
    seeds = range(args.seed, args.seed + args.samples)
    return make_samples(
        args.task, tokenizer, length_tokens=args.length, seeds=seeds, depths=args.depth or [0.5], **kwargs
    )


def _check_context(loaded, length: int, max_new_tokens: int, flag: str) -> None:
    """Refuse a task length the model cannot read before any prompt is built (one message, not one per run)."""
    from ..eval.harness import context_length

    limit = context_length(loaded.model, loaded.info)
    if limit is not None and length + max_new_tokens > limit:
        raise CLIError(
            f"{flag} {length} plus --max-new-tokens {max_new_tokens} is more than {loaded.info.name} can read: its "
            f"context is {limit} tokens. Use a length of at most {limit - max_new_tokens} minus the few tokens of "
            "the chat template."
        )


def _task_kwargs(pairs: list[str] | None) -> dict:
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise CLIError(f"--task-arg takes KEY=VALUE (e.g. num_keys=4), got {pair!r}.")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def _write_rows(rows: list[dict], path: Path) -> None:
    from ..eval.results import export, to_frame

    export(to_frame(rows), path)


# ---------------------------------------------------------------------- sweep


def cmd_sweep(args) -> int:
    from ..eval.results import export, summarize
    from ..eval.sweep import SweepSpec, run_sweep

    if (code := relaunch(args)) is not None:
        return code
    launch = launch_from_args(args)
    loaded = load_from_args(args, launch)
    _check_context(loaded, max(args.lengths), args.max_new_tokens, "--lengths")
    if args.window is None:
        args.window = default_window(min(args.lengths))
    configs = resolve_configs(args, _num_layers(loaded), None)
    spec = SweepSpec(
        configs=configs,
        lengths=args.lengths,
        depths=args.depths,
        seeds=list(range(args.seed, args.seed + args.samples)),
        task=args.task,
        task_kwargs=_task_kwargs(args.task_arg),
        max_new_tokens=args.max_new_tokens,
        cot=args.cot,
        score_logprob=not args.no_logprob,
        timing_tokens=args.timing_tokens,
    )
    if launch.is_main:
        where = f" on {launch.world} processes" if launch.distributed else ""
        _note(
            f"sweep: {spec.total_cells} runs ({len(spec.configs)} configs, window {args.window}){where} -> {args.out}"
        )
    df = run_sweep(loaded, spec, args.out, progress=not args.quiet and launch.is_main,
                   retry_errors=args.retry_errors, backend=args.backend, launch=launch)  # fmt: skip
    if not launch.is_main:  # the main process merged the rows and reports for everyone
        return 0
    if args.csv:
        export(df, args.csv)
        _note(f"wrote {args.csv}")
    table = summarize(df, by=tuple(args.group_by))
    if args.json:
        for row in table.to_dict(orient="records"):
            _print_json(row)
    else:
        _frame_table(table, title=f"{loaded.info.name}: {args.task} sweep ({len(df)} runs)")
    return 1 if df["error"].notna().any() else 0


# ---------------------------------------------------------------------- recipes


def _layers_for(args) -> int:
    if args.layers is not None:
        if args.layers < 1:
            raise CLIError("--layers must be at least 1.")
        return args.layers
    from ..models.registry import find_model_entry

    entry = find_model_entry(args.model)
    if entry is not None:
        return entry.num_layers
    from transformers import AutoConfig

    from ..models.hub import hub_offline_reason

    offline = None if Path(args.model).exists() else hub_offline_reason()
    try:
        config = AutoConfig.from_pretrained(args.model, local_files_only=offline is not None)
    except (OSError, ValueError) as e:
        why = f"{offline} and it is not in the local cache" if offline else _first_line(e)
        raise CLIError(f"Cannot read the layer count of {args.model!r}: {why}. Pass --layers N instead.") from None
    return config.get_text_config(decoder=True).num_hidden_layers


def cmd_recipes_list(args) -> int:
    recipes = list_recipes()
    user = load_user_recipes(args.recipes_file) if args.recipes_file else {}
    if args.json:
        for r in recipes:
            _print_json(
                {"name": r.name, "title": r.title, "description": r.description, "paper_accuracy": r.paper_accuracy}
            )
        for name, cfg in user.items():
            _print_json({"name": name, "title": name, "description": cfg.describe(), "config": cfg.to_dict()})
        return 0
    from rich.table import Table

    table = Table(title="SWAA recipes (paper presets; accuracy: Qwen3-4B, LongMemEval 24k, W=2k, no SFT / SFT)")
    table.add_column("name", no_wrap=True)
    table.add_column("what it does", overflow="fold", max_width=100)
    table.add_column("paper acc. %", no_wrap=True)
    for r in recipes:
        table.add_row(r.name, f"[bold]{r.title}[/bold]\n{r.description}", r.paper_accuracy or "–")
    for name, cfg in user.items():
        table.add_row(name, f"[bold]your recipe[/bold]\n{cfg.describe()}", "–")
    _console().print(table)
    print("Show one resolved for a model: swaa recipes show NAME [--model M | --layers N] [--window W]")
    return 0


def cmd_recipes_show(args) -> int:
    user = load_user_recipes(args.recipes_file) if args.recipes_file else {}
    layers = _layers_for(args)
    cfg = resolve_recipe(args.name, layers, window=args.window, keep_first=args.keep_first,
                         context_tokens=args.context, user_recipes=user)  # fmt: skip
    if args.json:
        _print_json(None if cfg is None else cfg.to_dict())
        return 0
    print(f"{args.name} for a {layers}-layer model: {'full attention' if cfg is None else cfg.describe()}")
    print(json.dumps(SWAAConfig().to_dict() if cfg is None else cfg.to_dict()))
    if cfg is not None and args.window is None:
        scaled = f"a {args.context:,}-token prompt" if args.context else "the paper's 24K-token prompts (no --context)"
        print(
            f"The window is scaled to {scaled}; `swaa run` / `eval` / `sweep` scale it to each prompt's length "
            "(about 1/8 of it, 256 to 2048 tokens) unless --window fixes it."
        )
    for note in [] if cfg is None else cfg.notes():
        print(f"note: {note}")
    return 0


def cmd_recipes_save(args) -> int:
    layers = _layers_for(args)
    existing = load_user_recipes(args.file) if args.file.exists() else {}
    cfg = resolve_recipe(args.source, layers, window=args.window, keep_first=args.keep_first,
                         context_tokens=args.context, user_recipes=existing)  # fmt: skip
    existing[args.name] = cfg or SWAAConfig()
    save_user_recipes(args.file, existing)
    _note(f"saved {args.name!r} ({(cfg or SWAAConfig()).describe()}) to {args.file}")
    return 0


# ---------------------------------------------------------------------- tables


def _fmt_bytes(n) -> str:
    from ..models.memory import format_bytes

    return "–" if n is None or n != n else format_bytes(int(n))


PIPED_WIDTH = 200  # columns for tables written to a pipe or file, where no terminal width exists


def _console():
    """A rich Console; when stdout is not a terminal it is PIPED_WIDTH wide (rich would assume 80, folding a
    ten-column table into 4-letter cells) unless COLUMNS says otherwise. Tables still take only the width they need."""
    from rich.console import Console

    console = Console()
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        console = Console(width=PIPED_WIDTH)
    return console


def _results_table(results, title: str) -> None:
    from rich.table import Table

    timed = {r.timed_tokens for r in results if not r.error}
    timed_head = f"to token {timed.pop()}" if len(timed) == 1 else "to token N"
    table = Table(title=title, caption=_timing_caption(results))
    table.add_column("config", overflow="fold", min_width=16, max_width=48)
    table.add_column("output", overflow="fold", min_width=24, max_width=72)
    for col in ("ok", "TTFT", "prefill", "decode", timed_head, "answer", "peak mem", "KV cache", "kernel"):
        table.add_column(col, no_wrap=True)
    for r in results:
        if r.error:
            table.add_row(r.label, "(failed: the error is printed below)", "error", *["–"] * 7, r.backend or "–")
            continue
        table.add_row(
            r.label,
            r.output_text.strip(),
            {True: "✓", False: "✗", None: "–"}[r.correct],
            f"{r.ttft_s:.2f} s",
            f"{r.prefill_s:.2f} s",
            _decode_cell(r.decode_tokens_per_s, r.decode_tokens),
            f"{r.timed_total_s:.2f} s",
            f"{r.total_s:.2f} s / {r.generated_tokens} tok",
            _fmt_bytes(r.peak_memory_bytes),
            _fmt_bytes(r.kv_cache_bytes),
            r.backend,
        )
    _console().print(table)


def _decode_cell(tokens_per_s, decode_tokens) -> str:
    steps = int(decode_tokens) if decode_tokens == decode_tokens and decode_tokens is not None else 0
    if steps < MIN_DECODE_TOKENS:
        return f"too few tokens ({steps})"
    return f"{tokens_per_s:.1f} tok/s"


def _timing_caption(results) -> str:
    """Says what the timing columns cover, so nobody ranks runs by their answers' unequal lengths."""
    timed = {r.timed_tokens for r in results if not r.error}
    if len(timed) > 1:
        return "decode speeds come from different token counts: do not compare them"
    n = timed.pop() if timed else 0
    return (
        f"decode and 'to token {n}': every run timed over its first {n} generated tokens (past the answer where it is "
        "shorter); 'answer': the time and length of each run's own answer"
    )


def _frame_table(df, title: str) -> None:
    from rich.table import Table

    table = Table(title=title)
    for col in df.columns:
        text = df[col].dtype == object
        table.add_column(str(col), overflow="fold", no_wrap=not text, min_width=12 if text else None)
    for row in df.to_dict(orient="records"):
        cells = []
        for col, value in row.items():
            if "bytes" in str(col):
                cells.append(_fmt_bytes(value))
            elif col == "decode_tokens_per_s" and "decode_tokens" in row:
                cells.append(_decode_cell(value, row["decode_tokens"]))
            elif isinstance(value, float):
                cells.append("–" if value != value else f"{value:.3g}")
            else:
                cells.append(str(value))
        table.add_row(*cells)
    _console().print(table)


# ---------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="swaa",
        formatter_class=_formatter,
        description=textwrap.dedent(
            """\
            Sliding Window Attention Adaptation (SWAA): run a Hugging Face causal LM with sliding-window attention
            recipes from the paper and see what each one costs and keeps, against full attention.

            Start with:
              swaa recipes list                                   the paper's recipes
              swaa run "What is the capital of France?"           one prompt, full attention vs a recipe
              swaa eval --task passkey --length 1024 --samples 3  a long-context task under recipes
              swaa sweep --lengths 1024 2048 --depths 0.1 0.5 0.9 --out needle.jsonl"""
        ),
    )
    parser.add_argument("--version", action="version", version=f"swaa {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_run(sub)
    _add_eval(sub)
    _add_sweep(sub)
    _add_recipes(sub)
    try:
        from ..train.finetune import add_cli as _add_finetune_cli
    except ImportError:
        _add_finetune_cli = None
    if _add_finetune_cli is not None:
        _add_finetune_cli(sub)
    _bound_numbers(parser)
    return parser


def _add_run(sub) -> None:
    p = sub.add_parser(
        "run",
        help="one prompt under several recipes, side by side",
        formatter_class=_formatter,
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
    p.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    add_model_args(p)
    add_recipe_args(p, default=["recommended"])
    add_generation_args(p, max_new_tokens=64)
    p.set_defaults(func=cmd_run)


def _add_task_args(p, *, depths_flag: str) -> None:
    g = p.add_argument_group("task")
    g.add_argument("--task", "-t", default="passkey", choices=TASK_KINDS, help="built-in task (default: passkey)")
    g.add_argument("--task-arg", action="append", metavar="KEY=VALUE", help="task option, e.g. digits=4, num_keys=4")
    g.add_argument("--samples", "-s", type=int, default=3, help="samples (seeds) per length and depth (default: 3)")
    g.add_argument("--seed", type=int, default=0, help="first seed (default: 0)")
    g.add_argument(
        "--no-logprob", action="store_true", help="skip the answer log-likelihood (one prefill less per run)"
    )
    g.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def _add_eval(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="a built-in task or a dataset under recipes: accuracy and cost",
        formatter_class=_formatter,
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
    _add_task_args(p, depths_flag="--depth")
    g = p.add_argument_group("task size")
    g.add_argument("--length", "-l", type=int, default=1024, help="prompt length in tokens (default: 1024)")
    g.add_argument("--depth", "-d", type=float, action="append", help="needle depth 0..1 (repeatable; default: 0.5)")
    g = p.add_argument_group("dataset or document")
    g.add_argument("--dataset", help="a .parquet/.json/.jsonl file, a folder of them, or a Hub dataset id")
    g.add_argument("--split", help="dataset split (files whose name contains it)")
    g.add_argument("--limit", type=int, help="use only the first N records")
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


def _add_sweep(sub) -> None:
    p = sub.add_parser(
        "sweep",
        help="recipes x lengths x depths x samples, resumable, to JSONL/CSV",
        formatter_class=_formatter,
        description=textwrap.dedent(
            """\
            Run every combination of recipe, prompt length, needle depth and sample, appending one JSON line per
            run to --out as it finishes. Rerun the same command to resume: finished runs are skipped (matched by a
            stable id of model, task, config, length, depth, seed and generation settings). The same window is used
            for every length (default: scaled to the shortest), so lengths are comparable.

            examples:
              swaa sweep --lengths 1024 2048 --depths 0.1 0.5 0.9 --samples 5 --window 256 --out needle.jsonl
              swaa sweep -r swa -r swa-half-fa-fa-decode --lengths 4096 --out runs.jsonl --csv runs.csv
              swaa sweep --task multi_key --task-arg num_keys=4 --lengths 1024 --out mk.jsonl --group-by label"""
        ),
    )
    _add_task_args(p, depths_flag="--depths")
    g = p.add_argument_group("grid")
    g.add_argument("--lengths", "-l", type=int, nargs="+", default=[1024], help="prompt lengths in tokens")
    g.add_argument("--depths", "-d", type=float, nargs="+", default=[0.1, 0.5, 0.9], help="needle depths 0..1")
    g = p.add_argument_group("output")
    g.add_argument("--out", "-o", type=Path, required=True, help="results JSONL (appended; resumable)")
    g.add_argument("--csv", type=Path, help="also write the tidy table of this sweep as CSV")
    g.add_argument("--retry-errors", action="store_true", help="rerun cells that ended with an error")
    g.add_argument("--group-by", nargs="+", default=["label", "length_target", "depth"], help="summary table groups")
    p.add_argument("--json", action="store_true", help="print the summary as JSON lines")
    add_model_args(p)
    add_recipe_args(p, default=[r.name for r in list_recipes()])
    add_generation_args(p, max_new_tokens=16)
    add_launch_args(p)
    p.set_defaults(func=cmd_sweep)


def _add_recipes(sub) -> None:
    p = sub.add_parser(
        "recipes",
        help="list, show and save SWAA recipes",
        formatter_class=_formatter,
        description=textwrap.dedent(
            """\
            The paper's recipes combine a sliding window with remedies: FA decode (generated tokens see the whole
            cache), sink tokens (the first tokens stay visible), interleaved full-attention layers (1/4 or 1/2 of
            them). `show` resolves one for a model: its window, sinks and the exact layer indices.

            examples:
              swaa recipes list
              swaa recipes show recommended --layers 36 --window 2048
              swaa recipes save my-mix --from swa-half-fa-fa-decode --window 512 --file my_recipes.json
              swaa run "..." --recipes-file my_recipes.json --recipe my-mix"""
        ),
    )
    p.set_defaults(func=lambda args: (p.print_help(), 0)[1])
    rsub = p.add_subparsers(dest="recipes_command", metavar="ACTION")

    def common(q, *, layers=True):
        q.add_argument("--recipes-file", type=Path, default=None, help="your saved recipes (JSON)")
        q.add_argument("--json", action="store_true", help="print JSON")
        if layers:
            q.add_argument("--model", "-m", default=None, help=f"read the layer count of this model ({EMBEDDED_HINT})")
            q.add_argument("--layers", type=int, default=None, help="the model's layer count (instead of --model)")
            q.add_argument(
                "--window", "-w", type=int, default=None, help="sliding window (default: scaled to --context)"
            )
            q.add_argument("--keep-first", type=int, default=None, help="sink tokens (default: 10)")
            q.add_argument(
                "--context",
                type=int,
                default=None,
                help="prompt length the window is scaled to (default: none, the paper's 2048-token window)",
            )

    q = rsub.add_parser("list", help="the presets, full attention first", formatter_class=_formatter)
    common(q, layers=False)
    q.set_defaults(func=cmd_recipes_list)
    q = rsub.add_parser("show", help="one recipe resolved for a model", formatter_class=_formatter)
    q.add_argument("name", help="preset or saved recipe name")
    common(q)
    q.set_defaults(func=cmd_recipes_show)
    q = rsub.add_parser("save", help="save a resolved recipe under your own name", formatter_class=_formatter)
    q.add_argument("name", help="the new recipe's name")
    q.add_argument("--from", dest="source", required=True, help="preset name or inline JSON config")
    q.add_argument("--file", type=Path, required=True, help="recipes JSON file (created or updated)")
    common(q)
    q.set_defaults(func=cmd_recipes_save)


def main(argv: list[str] | None = None) -> int:
    _never_fail_on_encoding()
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # --processes starts this command again under torchrun
    if not hasattr(args, "func"):
        parser.print_help()
        return 0
    try:
        if getattr(args, "recipe", None) and isinstance(args.recipe, list):
            args.recipe = [read_config_file(r) if isinstance(r, ConfigFile) else r for r in args.recipe]
        code = int(args.func(args) or 0)
        from ..runtime.distributed import finish

        finish()  # under a launcher: every process done, process group closed
        return code
    except (CLIError, SWAAConfigError, TaskError, FileNotFoundError) as e:
        print(f"swaa: error: {e}", file=sys.stderr)
        return 1
    except ValueError as e:  # model loading and other user-facing errors carry their own explanation
        print(f"swaa: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("swaa: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `swaa ... | head` closed stdout: stop quietly, as other command-line tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
