"""Widgets every panel uses: number widgets whose typed values are guarded (app.events.Events.guard_numbers), the
info toggle under a panel, and the message a plot shows before it has anything to draw."""

from __future__ import annotations

import math

import gradio as gr

from . import plots, texts


def _typed_as_is(cls):
    """A subclass of a Gradio number widget whose value reaches the handlers unchecked (rounded to its precision).
    Gradio's own range check raises inside every event that reads it (a traceback in the log each time) while the
    browser clamps the number to the range's end, which the next run then uses; instead the page's guard refuses it
    by name and puts the last valid value back, and the handlers' own checks refuse it if a run reads it first.
    A subclass, as sessions rebuild a widget from its class when an event updates it; Gradio would write a .pyi
    stub beside this module for it, which is switched off while the class is made."""
    import gradio.component_meta as meta

    def preprocess(self, payload):
        try:
            return gr.Number.round_to_precision(payload, getattr(self, "precision", None))
        except (TypeError, ValueError):  # not a number: the guard and the handlers name it
            return payload

    write_stub, meta.create_or_modify_pyi = meta.create_or_modify_pyi, lambda *_args, **_kwargs: None
    try:
        name = cls.__name__.lower()  # the browser draws Gradio's own widget of that name
        return type(cls.__name__, (cls,), {"preprocess": preprocess, "guarded": True,
                                            "get_block_name": lambda _self: name})  # fmt: skip
    finally:
        meta.create_or_modify_pyi = write_stub


Slider = _typed_as_is(gr.Slider)  # ``guarded`` False on an instance: a range that follows the model (the layer)
Number = _typed_as_is(gr.Number)


def keep_in_range(value, last, *, widget, last_state, label: str, low: float, high: float | None) -> dict:
    """The guard of a typed-in number (``widget``, a guarded Slider or Number; ``last_state`` holds ``last``, its
    last valid value): outside [low, high] (or not a number) it is refused by name and the widget goes back to
    ``last``; a valid one becomes ``last``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if math.isfinite(number) and number >= low and (high is None or number <= high):
        return {last_state: value}
    top = "" if high is None else f" to {high:g}"
    gr.Warning(f"{label} takes {low:g}{top}; {value!r} was not taken and it stays {last!r}.")
    return {widget: last, last_state: last}


def details(text: str, label: str = texts.DETAILS_LABEL) -> None:
    """What there is to say beyond a control's one line, behind an info toggle (closed)."""
    with gr.Accordion(label, open=False, elem_classes="swaa-details"):
        gr.Markdown(text)


def placeholder(text: str):
    """A plot's content before it has anything to draw: ``text`` in its box."""
    return plots.plot_data(plots.message_figure(text), "swaa-plot")
