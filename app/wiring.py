"""Groups of widgets that reach a page handler as one value (a Strategy, a Prompt, a sweep's settings).

Gradio passes an event's inputs to its function one value per component, in order. A handler here names a few
values instead: ``run_comparison(active_model, strategy, prompt, options, layer)``; :func:`flatten` gives Gradio the
flat component list and a function that rebuilds each group before calling the handler, so the mapping from
widgets to a value lives in one place (the group) rather than in every handler's parameter list.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Group:
    """Widgets whose values reach a handler as one argument, ``build(**{name: value})``.

    ``widgets`` maps build's keyword names to components or to nested Groups (Settings holds a Strategy)."""

    build: Callable[..., object]
    widgets: dict[str, object]

    def components(self) -> list:
        return [c for w in self.widgets.values() for c in (w.components() if isinstance(w, Group) else [w])]

    def take(self, values: Iterator):
        """The built value, consuming this group's values from ``values`` (in :meth:`components` order)."""
        return self.build(
            **{n: w.take(values) if isinstance(w, Group) else next(values) for n, w in self.widgets.items()}
        )


def group(build: Callable[..., object], ui, names: Sequence[str]) -> Group:
    """A Group of the ``ui`` components called ``names`` (keyword names = attribute names)."""
    return Group(build, {name: getattr(ui, name) for name in names})


def flatten(fn: Callable, inputs) -> tuple[Callable, list]:
    """(function, components) for an event whose ``inputs`` may hold Groups: the function takes one value per
    component, builds each group and calls ``fn`` with one argument per entry of ``inputs``.

    Parameters of ``fn`` after those (``request: gr.Request``, ``progress=gr.Progress()``) keep their place,
    annotations and defaults, so Gradio still fills them in."""
    parts = list(inputs) if isinstance(inputs, list | tuple) else []
    if not any(isinstance(p, Group) for p in parts):
        return fn, inputs
    components = [c for p in parts for c in (p.components() if isinstance(p, Group) else [p])]
    n = len(components)

    def regroup(values: tuple) -> list:
        it = iter(values[:n])
        return [*(p.take(it) if isinstance(p, Group) else next(it) for p in parts), *values[n:]]

    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def flat(*values, **kwargs):
            yield from fn(*regroup(values), **kwargs)

    else:

        @functools.wraps(fn)
        def flat(*values, **kwargs):
            return fn(*regroup(values), **kwargs)

    # Gradio reads the signature to know how many inputs the function takes and where gr.Request goes.
    special = list(inspect.signature(fn).parameters.values())[len(parts) :]
    hints = typing.get_type_hints(fn)  # fails loudly here rather than silently dropping gr.Request later
    positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
    flat.__signature__ = inspect.Signature(
        [inspect.Parameter(f"input_{i}", positional) for i in range(n)]
        + [p.replace(annotation=hints.get(p.name, p.annotation)) for p in special]
    )
    flat.__annotations__ = {p.name: hints[p.name] for p in special if p.name in hints}
    del flat.__wrapped__
    return flat, components
