"""The import graph of a package, read from its source with ast: imports inside functions count as much as those at
the top of a module, since a lazy import is still a dependency and still closes a cycle."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Import:
    importer: str  # dotted module name
    target: str  # the dotted module it loads
    name: str | None  # the name taken from target (``from target import name``), None for a module itself
    line: int


def modules(root: Path, package: str) -> dict[str, Path]:
    """Dotted name -> file of every module of ``package`` (a folder under ``root``); a package is its __init__.py."""
    found = {}
    for path in (root / package).rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def statements(tree: ast.AST, package: list[str]):
    """Every imported name of a module in ``package`` (its dotted parts), wherever in the file it stands, as
    (statement, alias, base): ``base`` the module of ``from base import alias.name`` with a relative import resolved,
    None for ``import alias.name``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                yield node, alias, base
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield node, alias, None


def imports(root: Path, package: str) -> list[Import]:
    """Every import of one of ``package``'s modules by another of them, wherever in the file it stands, with the
    attribute reads ``module._name`` on a module bound by an import (as ``Import`` rows whose name is the attribute)."""
    known = modules(root, package)
    found = []
    for importer, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        here = importer.split(".") if path.name == "__init__.py" else importer.split(".")[:-1]
        bound = {}  # local name -> module, for the attribute reads
        for node, alias, base in statements(tree, here):
            if base is None:
                if alias.name in known:
                    found.append(Import(importer, alias.name, None, node.lineno))
                    if alias.asname:
                        bound[alias.asname] = alias.name
            elif f"{base}.{alias.name}" in known:
                found.append(Import(importer, f"{base}.{alias.name}", None, node.lineno))
                bound[alias.asname or alias.name] = f"{base}.{alias.name}"
            elif base in known:
                found.append(Import(importer, base, alias.name, node.lineno))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound:
                found.append(Import(importer, bound[node.value.id], node.attr, node.lineno))
    return found


def cycles(edges: list[Import]) -> list[list[str]]:
    """The import cycles among ``edges``: one list of modules (first repeated at the end) per cycle found by a depth-
    first walk; empty when the graph is acyclic."""
    graph: dict[str, set[str]] = {}
    for edge in edges:
        if edge.target != edge.importer:
            graph.setdefault(edge.importer, set()).add(edge.target)
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []
    found = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                found.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def reaches(edges: list[Import], start: str) -> set[str]:
    """Every module ``start`` imports, directly or through others."""
    graph: dict[str, set[str]] = {}
    for edge in edges:
        graph.setdefault(edge.importer, set()).add(edge.target)
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen
