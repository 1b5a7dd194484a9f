"""Package names imported on first use (PEP 562), so that importing a package, or building the `swaa` command's
parser, does not load torch, transformers or peft before a name that needs them is asked for."""

from __future__ import annotations

import sys
from importlib import import_module


def lazy_exports(package: str, exports: dict[str, str]):
    """A module-level ``__getattr__`` for ``package``: each name in ``exports`` (name -> relative module) is imported
    from its module when first asked for, then kept in the package like an ordinary import.

    Raises AttributeError for any other name, as a module does."""

    def __getattr__(name: str):
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(module, package), name)
        setattr(sys.modules[package], name, value)  # later lookups skip this function
        return value

    return __getattr__
