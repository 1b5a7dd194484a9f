"""What every ``swaa`` subcommand shares: one set of model arguments, the recipe and generation arguments, and the
path from them to a loaded model, its layer count and the configs to run.

Each option is defined once here, so ``--model``, ``--dtype``, ``--backend``, ``--window`` and ``--keep-first`` (alias
``--sinks``) mean the same, with the same help, in every subcommand that takes them.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from ..engine.config import BACKENDS, SWAAConfig, SWAAConfigError
from ..engine.decode_path import DecodePath
from ..eval.recipes import (
    DEFAULT_SINKS,
    default_window,
    get_recipe,
    load_user_recipes,
    recipe_label,
    recipe_named,
    resolve_recipe,
    unused_settings,
)
from ..eval.timing import DEFAULT_TIMING_TOKENS
from ..runtime.textfile import read_text_file
from .output import note

EMBEDDED_HINT = "default: the embedded SmolLM2-135M-Instruct"
RECIPE_HELP = (
    "a recipe: a preset name (see `swaa recipes list`), a name from --recipes-file, or an inline JSON config such "
    'as \'{"sliding_window_size": 256, "force_fa_decode": true}\'. Repeat for several; full attention always '
    "runs first as the baseline."
)


class CLIError(Exception):
    """A problem with the command line that the user can fix; printed without a traceback."""


def formatter(prog):
    """Help keeps the line breaks of descriptions and examples."""
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=34, width=110)


MODEL_HELP = f"embedded name, Hub id or local folder ({EMBEDDED_HINT})"


def add_model_args(p: argparse.ArgumentParser, *, backend: bool = True) -> None:
    """--model, --device, --dtype and --backend (the SWA kernel; ``backend=False`` where only full attention runs)."""
    g = p.add_argument_group("model")
    g.add_argument("--model", "-m", default=None, help=MODEL_HELP)
    g.add_argument(
        "--device",
        default=None,
        help="cpu, cuda, cuda:1 ..., or auto: one model spread over every GPU (device_map='auto') "
        "(default: CUDA when present, else CPU)",
    )
    g.add_argument(
        "--dtype", default=None, help="float32, bfloat16, float16 (default: bfloat16 on CUDA, float32 on CPU)"
    )
    if backend:
        g.add_argument(
            "--backend",
            default="auto",
            choices=BACKENDS,
            help="SWA attention kernel (default: the fastest available on the device)",
        )


def add_window_args(g, *, scaled_to: str) -> None:
    """--window and --keep-first: the sliding window and sink tokens a preset is resolved with. ``--sinks``, the
    spelling ``swaa finetune`` had, still works; it is left out of the help and of error messages, which name
    --keep-first, the upstream field's name."""
    g.add_argument(
        "--window", "-w", type=int, default=None, help=f"sliding window W in tokens (default: scaled to {scaled_to})"
    )
    g.add_argument(
        "--keep-first",
        type=int,
        default=None,
        metavar="N",
        help=f"sink tokens kept visible for the sink recipes (default: {DEFAULT_SINKS}; also spelled --sinks)",
    )
    g.add_argument("--sinks", dest="keep_first", type=int, default=None, help=argparse.SUPPRESS)


def add_recipe_args(p: argparse.ArgumentParser, *, default: list[str]) -> None:
    g = p.add_argument_group("recipes")
    g.add_argument(
        "--recipe",
        "-r",
        action="append",
        metavar="NAME",
        help=f"{RECIPE_HELP} Default: {' '.join(default)}, or every config of --recipes-file.",
    )
    add_window_args(g, scaled_to="the prompt")
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
    g.add_argument(
        "--max-new-tokens",
        "-n",
        type=int,
        default=max_new_tokens,
        help=f"most tokens of the answer (default: {max_new_tokens})",
    )
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
    g.add_argument(
        "--decode-path",
        choices=[p.value for p in DecodePath],
        default=DecodePath.AUTO.value,
        help="how every config of the run, full attention included, decodes: 'fixed' from fixed KV buffers (on a GPU "
        "one CUDA graph replayed per token, where SWA's decode saving shows; on a CPU the same steps eagerly), "
        "'eager' transformers' generate with the dynamic SWAA cache, 'auto' fixed on CUDA and the measured faster "
        "path on a CPU (default: auto; the tables say which ran and why)",
    )
    g.add_argument(
        "--static-cache",
        action="store_true",
        help="the same as --decode-path fixed (the older spelling; refused beside another --decode-path)",
    )


def run_spec(args, *, score_logprob: bool):
    """The run value of the options of :func:`add_generation_args` and --backend (``score_logprob``: what the
    subcommand's own options say); ValueError naming the setting, before any model loads."""
    from ..eval.run_spec import RunSpec

    return RunSpec(
        max_new_tokens=args.max_new_tokens,
        cot=args.cot,
        system=args.system,
        backend=args.backend,
        score_logprob=score_logprob,
        timing_tokens=args.timing_tokens,
        decode_path=args.decode_path,
        static_cache=args.static_cache or None,  # absent: not given (False would ask for eager)
    )


def in_option_words(text: str, spellings: dict[str, str]) -> str:
    """A lower layer's message with its Python spellings (``keep='all'``, ``max_length``) as the command's options
    (``--keep all``, ``--max-length``); ``spellings`` maps a regular expression to its replacement."""
    import re

    for pattern, replacement in spellings.items():
        text = re.sub(pattern, replacement, text)
    return text


def load_from_args(args, launch=None):
    """The model of ``--model`` on ``--device``; under a multi-process launch, on this process's own device."""
    from .. import load_model

    _check_files_first(args)
    if launch is None or launch.is_main:
        note(f"loading {args.model or 'the embedded model'} ...")
    device = args.device if launch is None else launch.device
    return load_model(args.model, device=device, dtype=args.dtype)


def _check_files_first(args) -> None:
    """Read the files and recipe names a command was given before its model loads, so a typo costs seconds, not a
    model load or download."""
    user = load_user_recipes(args.recipes_file) if getattr(args, "recipes_file", None) else {}
    names = getattr(args, "recipe", None) or []
    names = [names] if isinstance(names, str) else names  # `finetune --recipe` takes one name, the others a list
    for name in names:
        recipe_named(name, user)
    check_recipes_file_used(args, names, user)
    for option in ("data", "dataset"):
        value = getattr(args, option, None)
        is_file_name = isinstance(value, (str, Path)) and str(value).endswith((".json", ".jsonl", ".parquet", ".csv"))
        if is_file_name and not Path(value).is_file():
            raise SWAAConfigError(f"--{option}: file not found: {value}")


def check_recipes_file_used(args, names: list[str], user: dict) -> None:
    """CLIError when recipes are named and --recipes-file holds none of them: the file would be read and not used."""
    if user and names and not any(name in user for name in names):
        raise CLIError(
            f"--recipes-file {args.recipes_file} holds none of the recipes named ({', '.join(map(_short, names))}), "
            f"so it is not used: name one of its recipes ({', '.join(user)}), or leave --recipes-file out."
        )


def model_layers(args) -> int:
    """The layer count of ``--layers`` or ``--model`` without loading weights: the curated list knows its models
    (the embedded default included); other names resolve as ``--model`` does everywhere (models.model_config)."""
    if args.layers is not None:
        return args.layers
    from ..models.registry import find_model_entry

    entry = find_model_entry(args.model)
    if entry is not None:
        return entry.num_layers
    from ..models.loaded import ModelLoadError
    from ..models.loading import model_config

    try:
        config = model_config(args.model)
    except ModelLoadError as e:
        why = str(e).rstrip(". ")
        raise CLIError(f"Cannot read the layer count of {args.model!r}: {why}. Pass --layers N instead.") from None
    return config.get_text_config(decoder=True).num_hidden_layers


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
    note(f"starting {n} processes: {' '.join(command[1:])}")
    # On the main thread the launcher gets its own session, so that a stop reaches it once, from here: torchrun then
    # stops its workers and waits for them. Left in ours, a SIGTERM ended this process alone and the workers ran on,
    # appending to the results and holding its lock; a Ctrl-C killed torchrun and left them orphaned. Signals this
    # process ignores (nohup's SIGHUP) stay ignored; off the main thread no handler can be set, so torchrun stays in
    # this process's session and gets the terminal's signals itself.
    own = threading.current_thread() is threading.main_thread()
    names = ("SIGINT", "SIGTERM", "SIGHUP")
    stops = [getattr(signal, n) for n in names if own and hasattr(signal, n)]
    stops = [s for s in stops if signal.getsignal(s) is not signal.SIG_IGN]
    started: list = []
    early: list[int] = []

    def forward(signum, frame):
        if started:
            started[0].send_signal(signum)
        else:
            early.append(signum)  # before Popen returned: sent once it has

    previous = {s: signal.signal(s, forward) for s in stops}
    try:
        started.append(subprocess.Popen(command, env=launch_env(n), start_new_session=own))
        for signum in early:
            started[0].send_signal(signum)
        return started[0].wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def launch_from_args(args):
    """This process's place in a torchrun / accelerate launch (one process outside a launcher)."""
    from ..runtime.distributed import current

    return current(args.device)


def resolve_configs(
    args, num_layers: int, context_tokens: int | None, *, window: int | None = None
) -> dict[str, SWAAConfig | None]:
    """{label: config} for the recipes on the command line, full attention excluded (the runner adds it); the
    window is --window, else ``window`` (the command's own default), else scaled to ``context_tokens``.

    Without --recipe, a --recipes-file runs every config it holds (upstream settings files are lists of configs to
    compare; cli/rules.py notes that --window and --keep-first are then not used); otherwise the command's default
    recipes run."""
    user = load_user_recipes(args.recipes_file) if args.recipes_file else {}
    if args.window is not None:
        window = args.window
    elif window is None:
        window = default_window(context_tokens)
    out: dict[str, SWAAConfig | None] = {}
    for name in args.recipe or list(user) or args.default_recipes:
        try:
            cfg = resolve_recipe(name, num_layers, window=window, keep_first=args.keep_first, user_recipes=user)
        except SWAAConfigError as e:  # name the recipe, since several may be on the line or in the file
            raise SWAAConfigError(str(e) if repr(name) in str(e) else f"Recipe {_short(name)}: {e}") from None
        if args.recipe:  # recipes named on the line: say what of the line they do not use (the window you chose)
            for text in unused_settings(name, window=args.window, keep_first=args.keep_first, user_recipes=user):
                note(text)
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
    if name in user or name.lstrip().startswith("{"):
        return name if name in user else cfg.describe()
    return recipe_label(get_recipe(name), cfg)


def num_layers(loaded) -> int:
    from ..engine.families import attention_modules

    return len(attention_modules(loaded.model))
