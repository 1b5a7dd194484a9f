"""``swaa recipes list | show | save``: the paper's presets, one resolved for a model, your own saved as JSON.

``show`` and ``save`` read the layer count of ``--model`` the way every other subcommand names a model
(:func:`.common.model_layers`), without loading its weights.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from ..engine.config import SWAAConfig
from ..eval.recipes import add_user_recipe, list_recipes, load_user_recipes, resolve_recipe, unused_settings
from .common import MODEL_HELP, add_window_args, check_recipes_file_used, formatter, model_layers
from .output import console, note, print_json


def cmd_recipes_list(args) -> int:
    recipes = list_recipes()
    user = load_user_recipes(args.recipes_file) if args.recipes_file else {}
    if args.json:
        for r in recipes:
            print_json(
                {"name": r.name, "title": r.title, "description": r.description, "paper_accuracy": r.paper_accuracy}
            )
        for name, cfg in user.items():
            print_json({"name": name, "title": name, "description": cfg.describe(), "config": cfg.to_dict()})
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
    console().print(table)
    print("Show one resolved for a model: swaa recipes show NAME [--model M | --layers N] [--window W]")
    return 0


def cmd_recipes_show(args) -> int:
    user = load_user_recipes(args.recipes_file) if args.recipes_file else {}
    check_recipes_file_used(args, [args.name], user)
    layers = model_layers(args)
    cfg = resolve_recipe(args.name, layers, window=args.window, keep_first=args.keep_first,
                         context_tokens=args.context, user_recipes=user)  # fmt: skip
    for text in unused_settings(args.name, window=args.window, keep_first=args.keep_first, user_recipes=user,
                                context_tokens=args.context):  # fmt: skip
        note(text)
    if args.json:
        print_json(None if cfg is None else cfg.to_dict())
        return 0
    print(f"{args.name} for a {layers}-layer model: {'full attention' if cfg is None else cfg.describe()}")
    print(json.dumps(SWAAConfig().to_dict() if cfg is None else cfg.to_dict()))
    if cfg is not None and args.window is None:
        scaled = f"a {args.context:,}-token prompt" if args.context else "the paper's 24K-token prompts (no --context)"
        print(
            f"The window is scaled to {scaled}; `swaa run` / `eval` / `sweep` scale it to each prompt's length "
            "(about 1/8 of it, 256 to 2048 tokens) unless --window fixes it."
        )
    for text in [] if cfg is None else cfg.notes():
        print(f"note: {text}")
    return 0


def cmd_recipes_save(args) -> int:
    existing = load_user_recipes(args.file) if args.file.exists() else {}
    # --from names a preset, a recipe of --file, or one of --recipes-file (read, never written)
    mine = load_user_recipes(args.recipes_file) if args.recipes_file else {}
    check_recipes_file_used(args, [args.source], mine)
    known = {**existing, **mine}
    layers = model_layers(args)
    cfg = resolve_recipe(args.source, layers, window=args.window, keep_first=args.keep_first,
                         context_tokens=args.context, user_recipes=known)  # fmt: skip
    for text in unused_settings(args.source, window=args.window, keep_first=args.keep_first, user_recipes=known,
                                context_tokens=args.context):  # fmt: skip
        note(text)
    saved = cfg or SWAAConfig()
    replaced = add_user_recipe(args.file, args.name, saved)  # the file's other entries stay as they are
    if replaced is not None:
        note(f"replaced {args.name!r} of {args.file} (it was {replaced.describe()})")
    note(f"saved {args.name!r} ({saved.describe()}) to {args.file}")
    if args.json:
        print_json({"name": args.name, "file": str(args.file), "config": saved.to_dict()})
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser(
        "recipes",
        help="list, show and save SWAA recipes",
        formatter_class=formatter,
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
            q.add_argument("--model", "-m", default=None, help=f"read the layer count of this model: {MODEL_HELP}")
            q.add_argument("--layers", type=int, default=None, help="the model's layer count (not with --model)")
            add_window_args(q, scaled_to="--context")
            q.add_argument(
                "--context",
                type=int,
                default=None,
                help="prompt length the window is scaled to (default: none, the paper's 2048-token window; not with "
                "--window)",
            )

    q = rsub.add_parser("list", help="the presets, full attention first", formatter_class=formatter)
    common(q, layers=False)
    q.set_defaults(func=cmd_recipes_list)
    q = rsub.add_parser("show", help="one recipe resolved for a model", formatter_class=formatter)
    q.add_argument("name", help="preset or saved recipe name")
    common(q)
    q.set_defaults(func=cmd_recipes_show)
    q = rsub.add_parser("save", help="save a resolved recipe under your own name", formatter_class=formatter)
    q.add_argument("name", help="the new recipe's name")
    q.add_argument("--from", dest="source", required=True,
                   help="a preset name, a recipe saved in --file or --recipes-file, or inline JSON config")  # fmt: skip
    q.add_argument("--file", type=Path, required=True, help="the recipes .json file to write (created or updated)")
    common(q)
    q.set_defaults(func=cmd_recipes_save)
