"""The ``swaa`` command (also ``python -m swaa_core``): run, eval, sweep, advise, recipes, distill, finetune.

The top layer: it only parses arguments, calls the eval, train and models layers, and prints; nothing in swaa_core
imports it except ``__main__``. One module per subcommand (``add_parser(subparsers)`` plus its handler); the options
they share, the model arguments first, are defined once in :mod:`.common`, the output helpers in :mod:`.output`, the
ranges of numeric options in :mod:`.bounds`, which options go together in :mod:`.rules` (checked once after parsing,
before any file is read or model loads).

Every subcommand parser sets ``func``: a handler ``(args) -> exit code``. Results go to stdout (JSON lines with
``--json``), progress and messages to stderr, so ``swaa run --json ... | jq`` works.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import textwrap

from .. import __version__
from ..engine.config import SWAAConfigError
from ..eval.tasks import TaskError
from . import advise, distill, eval, finetune, recipes, run, sweep
from .bounds import bound_numbers
from .common import CLIError, ConfigFile, formatter, read_config_file
from .output import never_fail_on_encoding
from .rules import check_options, track_given

__all__ = ["build_parser", "main", "read_config_file"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="swaa",
        formatter_class=formatter,
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
    for command in (run, eval, sweep, advise, recipes, distill, finetune):
        command.add_parser(sub)
    bound_numbers(parser)
    track_given(parser)
    return parser


def subcommand_parser(parser: argparse.ArgumentParser, args) -> argparse.ArgumentParser:
    """The parser of the (sub)subcommand ``args`` were parsed by ("recipes show" included); ``parser`` without one."""
    for dest in ("command", "recipes_command"):
        name = getattr(args, dest, None)
        subs = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        if name is None or subs is None:
            break
        parser = subs.choices[name]
    return parser


@contextlib.contextmanager
def _no_loading_bars(quiet: bool):
    """No "Loading weights" bar in output meant for a pipe or a log; the setting is transformers' global one, so it
    is put back afterwards (main also runs inside other programs and tests)."""
    if not quiet:
        yield
        return
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    never_fail_on_encoding()
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    command = subcommand_parser(parser, args)
    if unknown:  # the subcommand's usage and name, not the top level's (argparse leaves them to the top parser)
        command.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.argv = list(sys.argv[1:] if argv is None else argv)  # --processes starts this command again under torchrun
    if not hasattr(args, "func"):
        parser.print_help()
        return 0
    try:
        check_options(command, args)  # which options go together: before any file is read or model loads
        if getattr(args, "recipe", None) and isinstance(args.recipe, list):
            args.recipe = [read_config_file(r) if isinstance(r, ConfigFile) else r for r in args.recipe]
        with _no_loading_bars(getattr(args, "quiet", False) or getattr(args, "json", False)):
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
