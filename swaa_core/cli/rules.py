"""Which options of a subcommand go together, checked once after parsing and before any file is read or model loads.

The project's rule: every option a command accepts is applied, or refused by name. Most options apply only in some
combinations (``--limit`` picks records of a ``--dataset``; ``--question`` is doc_qa's), so the combinations are
declared here, in one table (:data:`RULES`), rather than in if-statements of each command:

- ``only_with``: the options are refused unless the condition holds ("--limit only applies with --dataset").
- ``unused_with``: the options are refused while the condition holds ("--seed is not used with --dataset").
- ``required_by``: the condition needs the options ("--task doc_qa needs --document and --question").

A rule refuses (exit code 1, every broken rule named at once) unless ``note=True``: then it prints a note and the
command runs. Notes are kept for combinations with a documented meaning (a recipe file's configs run as saved).

Beside the combinations, :data:`VALUE_CHECKS` checks single values that only the command can judge before it runs:
output paths (not a folder; a suffix of the format written), input files that are folders, task args the task does
not take or whose values its builder refuses, summary columns that do not exist. Only options given on the command
line count as given (:func:`track_given`), so an option repeated at its default value is refused like any other.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..eval.tasks.registry import DEPTHLESS
from .common import CLIError
from .output import note

GIVEN = "given_options"  # the namespace attribute holding the dests given on the command line


class OptionError(CLIError):
    """One or more broken option rules; each is printed as its own ``swaa: error:`` line."""

    def __init__(self, messages: list[str]):
        super().__init__("\nswaa: error: ".join(messages))
        self.messages = messages


# ------------------------------------------------------------------------------------------ what was given


_TRACKED: dict[type, type] = {}


def _tracked(cls: type) -> type:
    """A subclass of an argparse action class that records its dest as given before it acts."""
    if cls not in _TRACKED:

        def __call__(self, parser, namespace, values, option_string=None):
            seen = getattr(namespace, GIVEN, None)
            if seen is None:
                seen = set()
                setattr(namespace, GIVEN, seen)
            seen.add(self.dest)
            return cls.__call__(self, parser, namespace, values, option_string)

        _TRACKED[cls] = type(f"Tracked{cls.__name__}", (cls,), {"__call__": __call__})
    return _TRACKED[cls]


def track_given(parser: argparse.ArgumentParser) -> None:
    """Make every optional argument below ``parser`` (subcommands included) record on the namespace that it was
    given; argparse itself only keeps the values, where a default and a value typed out are the same."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                track_given(sub)
        elif action.option_strings and not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            action.__class__ = _tracked(type(action))


def given(args) -> set[str]:
    return getattr(args, GIVEN, None) or set()


def flags(parser: argparse.ArgumentParser) -> dict[str, str]:
    """dest -> the option's name in messages: its first long spelling, from the action shown in the help (so
    --keep-first, not its hidden alias --sinks)."""
    out: dict[str, str] = {}
    for action in sorted(parser._actions, key=lambda a: a.help == argparse.SUPPRESS):
        if action.option_strings and action.dest not in out:
            out[action.dest] = next((s for s in action.option_strings if s.startswith("--")), action.option_strings[0])
    return out


# ------------------------------------------------------------------------------------------ conditions


@dataclass(frozen=True)
class Cond:
    """A condition on the parsed options and how a message names it; ``text`` may use ``{dest}`` fields of the
    options' values (``"--task {task}"``)."""

    test: Callable[[argparse.Namespace], bool]
    text: str

    def __call__(self, args) -> bool:
        return self.test(args)

    def words(self, args) -> str:
        return self.text.format(**vars(args))


def opt(dest: str, flag: str) -> Cond:
    """``flag`` given on the command line."""
    return Cond(lambda a: dest in given(a), flag)


def without(dest: str, flag: str) -> Cond:
    return Cond(lambda a: dest not in given(a), f"without {flag}")


def value_in(dest: str, *values, text: str) -> Cond:
    """The option's value (given or its default) is one of ``values``."""
    return Cond(lambda a: getattr(a, dest, None) in values, text)


def both(first: Cond, second: Cond) -> Cond:
    return Cond(lambda a: first(a) and second(a), f"{first.text} {second.text}")


DEPTHLESS_TASKS = tuple(sorted(DEPTHLESS))  # tasks without a needle: a depth changes nothing
DATASET = opt("dataset", "--dataset")
DATA = opt("data", "--data")
DOC_QA = value_in("task", "doc_qa", text="--task doc_qa")
NO_EVAL = Cond(lambda a: not getattr(a, "eval_samples", 0), "without --eval-samples")


# ------------------------------------------------------------------------------------------ the rules


@dataclass(frozen=True)
class Rule:
    commands: tuple[str, ...]
    options: tuple[str, ...]  # dests
    only_with: Cond | None = None
    unused_with: Cond | None = None
    required_by: Cond | None = None
    why: str = ""
    note: bool = False

    def message(self, args, names: dict[str, str]) -> str | None:
        why = self.why.format(**vars(args))
        if self.required_by is not None:
            missing = [o for o in self.options if o not in given(args)]
            if not self.required_by(args) or not missing:
                return None
            return f"{self.required_by.words(args)} needs {_listed(missing, names)}: {why}."
        hit = [o for o in self.options if o in given(args)]
        if not hit:
            return None
        verb = "are" if len(hit) > 1 else "is"
        if self.only_with is not None and not self.only_with(args):
            applies = "apply" if len(hit) > 1 else "applies"
            return f"{_listed(hit, names)} only {applies} with {self.only_with.words(args)}: {why}."
        if self.unused_with is not None and self.unused_with(args):
            return f"{_listed(hit, names)} {verb} not used with {self.unused_with.words(args)}: {why}."
        return None


def _listed(dests: list[str], names: dict[str, str]) -> str:
    words = [names.get(d, f"--{d.replace('_', '-')}") for d in dests]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


TASK_COMMANDS = ("eval", "sweep", "advise")
RECIPE_COMMANDS = ("run", "eval", "sweep")
RULES: tuple[Rule, ...] = (
    # run
    Rule(("run",), ("stream",), unused_with=opt("json", "--json"),
         why="--json prints each run whole, as one JSON object when it ends; use one or the other"),
    # recipes on the line
    Rule(RECIPE_COMMANDS, ("window", "keep_first"), unused_with=both(opt("recipes_file", "--recipes-file"),
                                                                      without("recipe", "--recipe or --config")),
         why="every config of the file runs as saved (name one with --recipe to resolve a preset instead)", note=True),
    # eval: a dataset or a built-in task
    Rule(("eval",), ("task", "task_arg", "samples", "seed", "length", "depth"), unused_with=DATASET,
         why="the dataset's records are the prompts (use --limit for fewer of them)"),
    Rule(("eval",), ("limit", "split"), only_with=DATASET, why="they choose the records of a dataset"),
    Rule(("eval", "advise"), ("document", "question", "answer", "answer_prefix"), only_with=DOC_QA,
         why="they are the document task's (the task is {task})"),
    Rule(("eval",), ("document", "question"), required_by=DOC_QA,
         why="the text to read and the question to ask about it (--answer to score the answer)"),
    Rule(("advise",), ("document", "question", "answer"), required_by=DOC_QA,
         why="the advisor scores the likelihood of the answer to the question about your text"),
    Rule(("eval",), ("seed", "samples"), unused_with=DOC_QA,
         why="your document and question are the same for every seed"),
    Rule(("eval", "sweep"), ("depth", "depths"),
         unused_with=value_in("task", *DEPTHLESS_TASKS, text="--task {task}"),
         why="the task hides no needle, so a depth changes nothing"),
    # distill and finetune: prompts from a task, a dataset, or (finetune) a data file
    Rule(("distill", "finetune"), ("split",), only_with=DATASET, why="it chooses the files of a dataset"),
    Rule(("distill",), ("task", "length", "seed"), unused_with=DATASET,
         why="the dataset's records are the prompts (--samples: how many of them)"),
    Rule(("finetune",), ("dataset", "samples", "split"), unused_with=DATA,
         why="the records of --data are the training data; nothing is distilled"),
    Rule(("finetune",), ("task", "length"), unused_with=both(DATASET, NO_EVAL),
         why="the dataset's records are the prompts; --task and --length size the held-out prompts of --eval-samples"),
    Rule(("finetune",), ("task", "length", "max_new_tokens", "cot"), unused_with=both(DATA, NO_EVAL),
         why="nothing is generated: the records of --data are trained on as they are (with --eval-samples, these "
             "options shape the held-out check)"),
    Rule(("finetune",), ("epochs",), unused_with=opt("steps", "--steps"),
         why="--steps sets how long training runs; --epochs applies without it"),
    Rule(("finetune",), ("eval_length",), only_with=Cond(lambda a: bool(a.eval_samples), "--eval-samples N"),
         why="it is the length of the held-out prompts"),
    # recipes show / save: the layer count and the window
    Rule(("recipes show", "recipes save"), ("layers",), unused_with=opt("model", "--model"),
         why="give the layer count (--layers) or the model to read it from (--model), not both"),
    Rule(("recipes show", "recipes save"), ("context",), unused_with=opt("window", "--window"),
         why="--context only scales the window, and --window fixes it"),
)  # fmt: skip


# ------------------------------------------------------------------------------------------ single values


def _under_a_file(path: Path) -> Path | None:
    """The nearest existing folder-to-be above ``path`` when it is a file (the path cannot be created), else None."""
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def _output_file(*suffixes: str, what: str) -> Callable:
    def check(value, args, flag):
        path = Path(value)
        if (blocker := _under_a_file(path)) is not None:
            return f"{flag} {value}: {blocker} is a file, not a folder; give a path whose folders are folders."
        if path.is_dir():
            return f"{flag} {value} is a folder; give a file name ending in {' or '.join(suffixes)} ({what})."
        if path.suffix.lower() not in suffixes:
            return f"{flag} {value}: give a file name ending in {' or '.join(suffixes)} ({what})."
        return None

    return check


def _new_file(what: str) -> Callable:
    """An output file written whole: refused when it exists, so that an earlier run's results are not lost."""

    def check(value, args, flag):
        if Path(value).is_file():
            return f"{flag} {value} already exists; give a new file name ({what}), or move the old one away."
        return None

    return check


def _new_adapter_folder(value, args, flag):
    """finetune's --out: a folder that holds no earlier run's adapter (it would be replaced without a word). A
    distill.jsonl alone is a run that stopped before training: its rerun writes it again."""
    path = Path(value)
    if path.exists() and not path.is_dir():
        return f"{flag} {value} is a file; give a folder (it is created when missing)."
    if (path / "adapter_config.json").exists():
        return f"{flag} {value} already holds an earlier run's adapter; give a new folder, or move the old one away."
    return None


def _input_file(what: str) -> Callable:
    def check(value, args, flag):
        if Path(value).is_dir():
            return f"{flag} {value} is a folder; give {what}."
        return None

    return check


def _task_args(value, args, flag):
    from ..eval.tasks.base import TaskError
    from ..eval.tasks.registry import check_task_options, task_option_names
    from .eval import task_kwargs

    accepted = tuple(k for k in task_option_names(args.task) if k not in CLI_TASK_OPTIONS)
    given = task_kwargs(value)
    unknown = [k for k in given if k not in accepted]
    if not unknown:
        refused = []
        for name, item in given.items():  # one by one, so every bad value is named at once
            try:  # the builder's own checks: a bad value is refused before the model loads, not after
                check_task_options(args.task, {name: item})
            except TaskError as e:
                refused.append(str(e))
        return f"{flag}: {' '.join(refused)}" if refused else None
    names = ", ".join(repr(k) for k in unknown)
    takes = f"its task args: {', '.join(accepted)}" if accepted else "it takes no task args"
    extra = " (its document, question and answer come from --document, --question and --answer)" * (
        args.task == "doc_qa"
    )
    return f"{flag} {names}: --task {args.task} takes no such option; {takes}{extra}."


CLI_TASK_OPTIONS = ("document", "question", "answer", "answer_prefix")  # set by options of their own, not --task-arg


def _group_by(value, args, flag):
    from ..eval.sweep import row_fields

    unknown = [k for k in value if k not in row_fields()]
    if not unknown:
        return None
    return (
        f"{flag}: {', '.join(repr(k) for k in unknown)} {'is not a column' if len(unknown) == 1 else 'are not columns'}"
        f" of the results; group by columns such as {', '.join(GROUP_EXAMPLES)} (every column of a results row "
        "works)."
    )


GROUP_EXAMPLES = ("label", "length_target", "depth", "seed", "task", "model", "window", "keep_first", "backend",
                  "decode_path")  # fmt: skip


@dataclass(frozen=True)
class Check:
    commands: tuple[str, ...]
    dest: str
    check: Callable = field(compare=False)  # (value, args, flag) -> message | None


VALUE_CHECKS: tuple[Check, ...] = (
    Check(("eval",), "out", _output_file(".jsonl", ".ndjson", ".csv",
                                         what="every run is written as JSON lines or CSV")),
    Check(("eval",), "out", _new_file("every run of this eval is written to it whole; a sweep's --out is appended "
                                      "to and resumed")),
    Check(("sweep",), "out", _output_file(".jsonl", ".ndjson",
                                          what="the results are appended to it as JSON lines; for a CSV table add "
                                               "--csv FILE")),
    Check(("sweep",), "csv", _output_file(".csv", what="the table as CSV")),
    Check(("distill",), "out", _output_file(".jsonl", ".ndjson", what="one JSON line per answer is written")),
    Check(("distill",), "out", _new_file("the answers are written to it whole")),
    Check(("advise",), "out", _output_file(".json", what='the recommendation is written as {"swaa_config": ...}')),
    Check(("advise",), "out", _new_file("the recommendation is written to it whole")),
    Check(("recipes save",), "file", _output_file(".json", what="the recipes are written as JSON")),
    Check(("finetune",), "out", _new_adapter_folder),
    Check(("finetune",), "data", _input_file("a JSON lines, JSON or parquet file of prompt/response records")),
    Check(("run", "eval", "sweep", "finetune", "recipes list", "recipes show", "recipes save"), "recipes_file",
          _input_file("a JSON file of recipes (your saved recipes or an upstream settings file)")),
    Check(TASK_COMMANDS, "task_arg", _task_args),
    Check(("sweep",), "group_by", _group_by),
)  # fmt: skip


# ------------------------------------------------------------------------------------------ the check


def command_of(args) -> str:
    """The subcommand as the tables name it: "eval", "recipes show"."""
    name = getattr(args, "command", None) or ""
    action = getattr(args, "recipes_command", None)
    return f"{name} {action}" if action else name


def check_options(parser: argparse.ArgumentParser, args) -> None:
    """Apply :data:`RULES` and :data:`VALUE_CHECKS` to the parsed ``args`` of the subcommand ``parser``: print the
    notes, and raise :class:`OptionError` naming every broken rule."""
    command, names = command_of(args), flags(parser)
    errors = []
    for rule in RULES:
        if command in rule.commands and (text := rule.message(args, names)):
            if rule.note:
                note(f"note: {text}")
            else:
                errors.append(text)
    for check in VALUE_CHECKS:
        value = getattr(args, check.dest, None)
        if command in check.commands and value is not None and (text := check.check(value, args, names[check.dest])):
            errors.append(text)
    if errors:
        raise OptionError(errors)
