"""Failures as messages people can act on: what went wrong and what to try, never a traceback or an access token.

Page events show them as a toast that leaves every output as it was (:func:`toast_errors`, applied by app.events to
every page event); API endpoints raise them as gr.Error (:func:`ui_errors`), which gradio_client reports as AppError.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import re

import gradio as gr
import torch

log = logging.getLogger("swaa_app")

_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{20,}\b")


def redact(text: str) -> str:
    """``text`` with Hugging Face tokens (HF_TOKEN's value and anything shaped like hf_...) replaced by ***."""
    secret = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if secret:
        text = text.replace(secret, "***")
    return _TOKEN.sub("***", text)


def friendly_error(exc: BaseException) -> str:
    """One paragraph for the UI: what went wrong and what to try. Tracebacks go to the server log only, and no
    access token reaches either."""
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return (
            "Out of memory. Try a shorter prompt, fewer new tokens, fewer columns, a smaller window in more layers, "
            "or a smaller model."
        )
    if isinstance(exc, ValueError | KeyError | FileNotFoundError | TimeoutError):
        text = (exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)).strip()
        return redact(text or f"{type(exc).__name__} without a message.")
    if isinstance(exc, OSError):
        return redact(f"Could not read or fetch a file: {exc}")
    log.error("unexpected error in the app: %s", redact(f"{type(exc).__name__}: {exc}"))
    if log.isEnabledFor(logging.DEBUG):  # tracebacks only when asked for (SWAA_LOG_LEVEL=DEBUG): they may hold URLs
        log.debug("traceback", exc_info=exc)
    return redact(f"Unexpected error ({type(exc).__name__}): {exc}. The details are in the server log.")


def error_message(exc: BaseException) -> str:
    return exc.message if isinstance(exc, gr.Error) else friendly_error(exc)


def ui_errors(fn):
    """For API endpoints: exceptions become a gr.Error message (specific, no traceback); generators keep what they
    yielded."""
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as e:  # noqa: BLE001 - every failure becomes a message
                raise gr.Error(friendly_error(e), print_exception=False) from None

        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as e:  # noqa: BLE001
            raise gr.Error(friendly_error(e), print_exception=False) from None

    return wrapper


def toast_errors(fn, n_outputs: int):
    """For page events: a failure becomes a warning toast and leaves every output as it was (one gr.skip(), which
    Gradio applies to every output of the event).

    A raised gr.Error would put red "Error" badges over every output component (sliders, model facts) and could
    replace what the user entered; a toast says the same and keeps the page usable."""
    unchanged = None if n_outputs == 0 else gr.skip()

    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - every failure becomes a message
                gr.Warning(error_message(e))
                yield unchanged

        gen_wrapper.toasts_errors = True
        return gen_wrapper

    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def async_wrapper(*args, **kwargs):
            try:
                return await fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001
                gr.Warning(error_message(e))
                return unchanged

        async_wrapper.toasts_errors = True
        return async_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001
            gr.Warning(error_message(e))
            return unchanged

    wrapper.toasts_errors = True  # tests check that every page event has it
    return wrapper
