"""The page's events: every one private to the page (the public API is app.api's), its failures shown as a toast,
its inputs grouped into values and its handler given the page's components.

Gradio passes an event's inputs to its function one value per component, in order. A handler here names a few
values instead: ``run_comparison(ui, active_model, strategy, prompt, options, layer)``; :func:`flatten` gives Gradio
the flat component list and a function that rebuilds each group before calling the handler, so the mapping from
widgets to a value lives in one place (the group) rather than in every handler's parameter list.

A handler whose first parameter is ``ui`` gets the page's components there (the namespace app.page builds): it
returns ``{ui.board: html, ui.summary: text}``, a dict keyed by the output components it changes, which Gradio
applies by component; the outputs it leaves out stay as they are.
"""

from __future__ import annotations

import functools
import inspect
import math
import typing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import gradio as gr

from .errors import toast_errors
from .widgets import keep_in_range


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


def flatten(fn: Callable, inputs, bound: tuple = ()) -> tuple[Callable, list]:
    """(function, components) for an event whose ``inputs`` may hold Groups: the function takes one value per
    component, builds each group and calls ``fn`` with the ``bound`` arguments first (the page's ``ui``), then one
    argument per entry of ``inputs``.

    Parameters of ``fn`` after those (``request: gr.Request``, ``progress=gr.Progress()``) keep their place,
    annotations and defaults, so Gradio still fills them in."""
    parts = list(inputs) if isinstance(inputs, list | tuple) else [] if inputs is None else [inputs]
    if not bound and not any(isinstance(p, Group) for p in parts):
        return fn, inputs
    components = [c for p in parts for c in (p.components() if isinstance(p, Group) else [p])]
    n = len(components)

    def regroup(values: tuple) -> list:
        it = iter(values[:n])
        return [*bound, *(p.take(it) if isinstance(p, Group) else next(it) for p in parts), *values[n:]]

    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def flat(*values, **kwargs):
            yield from fn(*regroup(values), **kwargs)

    else:

        @functools.wraps(fn)
        def flat(*values, **kwargs):
            return fn(*regroup(values), **kwargs)

    # Gradio reads the signature to know how many inputs the function takes and where gr.Request goes.
    special = list(inspect.signature(fn).parameters.values())[len(bound) + len(parts) :]
    hints = typing.get_type_hints(fn)  # fails loudly here rather than silently dropping gr.Request later
    positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
    flat.__signature__ = inspect.Signature(
        [inspect.Parameter(f"input_{i}", positional) for i in range(n)]
        + [p.replace(annotation=hints.get(p.name, p.annotation)) for p in special]
    )
    flat.__annotations__ = {p.name: hints[p.name] for p in special if p.name in hints}
    del flat.__wrapped__
    return flat, components


def takes_ui(fn: Callable) -> bool:
    """True when ``fn``'s first parameter is ``ui``: it keys its updates by the page's components."""
    return next(iter(inspect.signature(fn).parameters), None) == "ui"


class Events:
    """Wires the page's events for one page (``ui``, its components by name)."""

    def __init__(self, ui):
        self.ui = ui

    def on(self, trigger, fn, inputs, outputs, **kwargs):
        """A page event: hidden from the API, failures shown as a toast that leaves every output as it was;
        ``inputs`` may hold Groups (each reaches ``fn`` as one value) and ``fn`` may take ``ui`` first."""
        n = len(outputs) if isinstance(outputs, list | tuple | set) else (0 if outputs is None else 1)
        if fn is not None:
            fn, inputs = flatten(fn, inputs, (self.ui,) if takes_ui(fn) else ())
            fn = toast_errors(fn, n)
        return trigger(fn, inputs, outputs, api_visibility="private", **kwargs)

    def light(self, trigger, fn, inputs, outputs, **kwargs):
        """A quick page event that never waits in the queue behind model runs."""
        return self.on(trigger, fn, inputs, outputs, concurrency_limit=None, show_progress="hidden", **kwargs)

    def guard_numbers(self) -> None:
        """Every guarded number widget (app.widgets) refuses a typed value outside its range and keeps its last
        valid value."""
        for widget in vars(self.ui).values():
            if getattr(widget, "guarded", False):
                last = gr.State(widget.value)
                low = widget.minimum if widget.minimum is not None else -math.inf
                guard = functools.partial(
                    keep_in_range, widget=widget, last_state=last, label=widget.label, low=low, high=widget.maximum
                )
                self.light(widget.change, guard, [widget, last], [widget, last])
