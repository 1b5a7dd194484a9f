"""docs/architecture.md against the code: the layer table (which package imports which, function-level imports
included), the order of the layers (nothing imports upward), and the module tree (every module of swaa_core/ and
app/, nothing else). The document says what a reader needs; these tests keep the parts a program can check true."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from helpers import import_graph

ROOT = Path(__file__).resolve().parent.parent
LAYER_LINE = re.compile(r"^(\S+?)/?\s+->\s+(.+?)(?:\s{2,}|$)")


def layer_of(module: str) -> str | None:
    """The layer a dotted module belongs to: ``swaa_core.eval.runner`` -> ``eval``; ``swaa_core`` itself (its public
    API) -> ``swaa_core``; a name taken from ``swaa_core`` (``from swaa_core import load_model``) -> ``swaa_core``."""
    parts = module.split(".")
    if parts[0] != "swaa_core":
        return None
    if len(parts) == 1 or not (ROOT / "swaa_core" / parts[1]).exists() and parts[1] != "__main__":
        return "swaa_core"
    return parts[1]


def imported_layers() -> dict[str, set[str]]:
    """Layer -> the other layers its modules import (app is one layer; function-level imports count)."""
    edges: dict[str, set[str]] = {}
    for top in ("swaa_core", "app"):
        for path in (ROOT / top).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if top == "app":
                source = "app"
            elif len(parts) == 2:
                source = "swaa_core" if parts[1] == "__init__" else parts[1]
            else:
                source = parts[1]
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for _, alias, base in import_graph.statements(tree, list(parts[:-1])):
                target = alias.name if base is None else f"{base}.{alias.name}"
                layer = layer_of(target)
                if layer and layer != source:
                    edges.setdefault(source, set()).add(layer)
    return edges


def architecture_blocks() -> tuple[str, str]:
    """docs/architecture.md's layer table (the first code block) and its module tree (the block that starts with
    ``swaa_core/``)."""
    blocks = re.findall(
        r"^```\n(.*?)^```", (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8"), re.S | re.M
    )
    return blocks[0], next(block for block in blocks if block.startswith("swaa_core/"))


def layer_table() -> list[tuple[str, set[str]]]:
    """The layer table's rows, top first: (layer, the layers it imports)."""
    rows = []
    for line in architecture_blocks()[0].splitlines():
        match = LAYER_LINE.match(line)
        if match:
            name = match.group(1).removesuffix(".py")
            targets = set() if match.group(2).strip() == "(none)" else {t.strip() for t in match.group(2).split(",")}
            rows.append((name, targets))
    return rows


def test_the_layer_table_lists_every_import_between_layers_and_no_other():
    table = dict(layer_table())
    found = imported_layers()
    for layer in table.keys() | found.keys():
        shown, real = table.get(layer, set()), found.get(layer, set())
        assert shown == real, (
            f"docs/architecture.md says {layer} imports {sorted(shown)}; the code: {sorted(real)} "
            f"(missing: {sorted(real - shown)}, not in the code: {sorted(shown - real)})"
        )


def test_no_layer_imports_one_above_it():
    rows = layer_table()
    order = [name for name, _ in rows]
    for i, (name, targets) in enumerate(rows):
        above = targets & set(order[: i + 1])
        assert not above, f"{name} imports {sorted(above)}, listed above it in docs/architecture.md's layer table"


def tree_paths(tree: str) -> set[str]:
    """The paths a text tree names: a folder (``name/``) or module (``name.py``) at the start of a line, two spaces of
    indentation per level; deeper-indented lines continue the description above them."""
    paths, stack = set(), []
    for line in tree.splitlines():
        match = re.match(r"( *)([\w.]+/|[\w.]+\.py)(\s|$)", line)
        if not match or len(match.group(1)) % 2 or len(match.group(1)) > 8:
            continue
        depth = len(match.group(1)) // 2
        stack[depth:] = [match.group(2)]
        paths.add("".join(stack))
    return paths


def test_architecture_tree_names_every_swaa_core_module_and_nothing_else():
    named = {p for p in tree_paths(architecture_blocks()[1]) if p.startswith("swaa_core/")}
    package = ROOT / "swaa_core"
    modules = {p.relative_to(ROOT).as_posix() for p in package.rglob("*.py") if "__pycache__" not in p.parts}
    folders = {p.parent.relative_to(ROOT).as_posix() + "/" for p in package.rglob("__init__.py")}
    assert not modules - named, f"docs/architecture.md's tree misses {sorted(modules - named)}"
    assert not {p for p in named if p.endswith(".py")} - modules, (
        f"docs/architecture.md's tree names modules that do not exist: {sorted(p for p in named if p.endswith('.py') and p not in modules)}"
    )
    assert {p for p in named if p.endswith("/")} == folders, (
        "docs/architecture.md's tree and swaa_core's packages differ"
    )


def test_architecture_tree_names_every_app_module_and_nothing_else():
    named = {p for p in tree_paths(architecture_blocks()[1]) if p.startswith("app/")}
    package = ROOT / "app"
    modules = {p.relative_to(ROOT).as_posix() for p in package.rglob("*.py") if "__pycache__" not in p.parts}
    folders = {p.parent.relative_to(ROOT).as_posix() + "/" for p in package.rglob("__init__.py")}
    assert {p for p in named if p.endswith(".py")} == modules, "docs/architecture.md's app tree and app/ differ"
    assert {p for p in named if p.endswith("/")} == folders, (
        "docs/architecture.md's app tree and app/'s packages differ"
    )


def test_the_layer_table_names_every_layer_folder():
    layers = {p.name for p in (ROOT / "swaa_core").iterdir() if (p / "__init__.py").is_file()}
    shown = {name for name, _ in layer_table()} - {"app", "swaa_core", "__main__"}
    assert shown == layers, f"the layer table shows {sorted(shown)}, swaa_core has {sorted(layers)}"
