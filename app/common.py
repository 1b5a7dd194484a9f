"""Pieces shared by the handler modules: the process-wide model caches, error display, and the column plan."""

from __future__ import annotations

import functools
import inspect
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import gradio as gr

from swaa_core.engine.config import SWAAConfig
from swaa_core.eval.recipes import Recipe, list_recipes, recipe_label
from swaa_core.models.registry import DEFAULT_MODEL

from . import maps, plots
from .engine import AdapterModels, CancelRegistry, ColumnSpec, ModelHub, friendly_error
from .state import Strategy

HUB = ModelHub()  # base models, shared by every session
ADAPTERS = AdapterModels()  # base models with a LoRA adapter merged in
CANCELS = CancelRegistry()  # Stop buttons -> the run of the same session
HEAVY = "model"  # the concurrency group (and Gradio queue) of everything that runs the model
STOPPED_BEFORE_START = "Stopped before it started: this run was still waiting for the model."


async def stop_session(request: gr.Request | None) -> bool:
    """Stop this session's runs: the running one ends at its next step (finished results stay), and the ones still
    waiting in Gradio's queue for the model are taken out of it, so they never run; each ends for its page or
    client with STOPPED_BEFORE_START. True if anything was stopped."""
    session = session_id(request)
    running = CANCELS.cancel(session)
    return await _drop_waiting(request, session) > 0 or running


async def _drop_waiting(request: gr.Request | None, session: str) -> int:
    """Take ``session``'s events out of the model's queue, as Gradio's own cancel route does (Gradio 6 keeps the
    waiting events per concurrency id); 0 when the queue cannot be reached."""
    from gradio.server_messages import ProcessCompletedMessage

    try:
        queue = request.request.app.get_blocks()._queue
        waiting = list(queue.event_queue_per_concurrency_id[HEAVY].queue)
    except (AttributeError, KeyError):  # no queue (a direct call) or another Gradio: nothing waits here
        return 0
    mine = [event for event in waiting if event.session_hash == session]
    for event in mine:
        await queue.remove_from_queue(event._id)
        message = ProcessCompletedMessage(output={"error": STOPPED_BEFORE_START}, title="Stopped", success=False)
        queue.send_message(event, message)
    return len(mine)


def session_id(request: gr.Request | None) -> str:
    """The browser session (or API client) a request comes from: its Stop button cancels that session's run."""
    return request.session_hash if request is not None and request.session_hash else "local"


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


def error_message(exc: BaseException) -> str:
    return exc.message if isinstance(exc, gr.Error) else friendly_error(exc)


def toast_errors(fn, n_outputs: int):
    """For page events: a failure becomes a warning toast and leaves every output as it was (gr.skip()).

    A raised gr.Error would put red "Error" badges over every output component (sliders, model facts) and could
    replace what the user entered; a toast says the same and keeps the page usable."""

    def unchanged():
        return None if n_outputs == 0 else gr.skip() if n_outputs == 1 else [gr.skip()] * n_outputs

    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - every failure becomes a message
                gr.Warning(error_message(e))
                yield unchanged()

        gen_wrapper.toasts_errors = True
        return gen_wrapper

    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def async_wrapper(*args, **kwargs):
            try:
                return await fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001
                gr.Warning(error_message(e))
                return unchanged()

        async_wrapper.toasts_errors = True
        return async_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001
            gr.Warning(error_message(e))
            return unchanged()

    wrapper.toasts_errors = True  # tests check that every page event has it
    return wrapper


def loaded_model(name: str | None):
    return HUB.get(name or DEFAULT_MODEL)


def num_layers(loaded) -> int:
    return loaded.info.num_layers


STRATEGY = Strategy.widget_names()  # the strategy widgets' names in app.ui, in the order they travel


def updates(names: Sequence[str], **values) -> list:
    """Output values in the order of ``names`` (widget names in app.ui); a widget not given stays as it is."""
    unknown = set(values) - set(names)
    if unknown:
        raise KeyError(f"not among the outputs: {sorted(unknown)}")
    return [values.get(name, gr.skip()) for name in names]


def strategy_values(s: Strategy | None) -> list:
    """Updates that set the strategy widgets to ``s`` (None: leave them as they are)."""
    if s is None:
        return updates(STRATEGY)
    return updates(
        STRATEGY,
        window=s.window,
        sinks=s.sinks,
        fa_layers_mode=s.fa_layers_mode,
        fa_layers=list(s.fa_layers),
        fa_decode_mode=s.fa_decode_mode,
        fa_decode_layers=gr.CheckboxGroup(value=list(s.fa_decode_layers), visible=s.fa_decode_mode == "layers"),
    )


@functools.lru_cache(maxsize=32)
def _preset_configs(n_layers: int) -> tuple[tuple[Recipe, dict], ...]:
    """Every sliding preset built once for ``n_layers`` layers, at window 1 with 1 sink: Recipe.build passes the
    window through and keeps the sinks only in sink recipes, so :func:`_shape` of any built config equals this."""
    presets = [r for r in list_recipes() if r.sliding and r.config is None]
    return tuple((r, r.build(n_layers, window=1, keep_first=1).to_dict()) for r in presets)


def _shape(cfg: SWAAConfig) -> dict:
    return {**cfg.to_dict(), "sliding_window_size": 1, "keep_first": min(cfg.keep_first, 1)}


def matching_recipe(cfg: SWAAConfig, n_layers: int) -> Recipe | None:
    """The paper recipe that builds exactly ``cfg`` at its window and sinks, or None."""
    if cfg.is_full_attention:
        return None
    shape = _shape(cfg)
    return next((recipe for recipe, built in _preset_configs(n_layers) if built == shape), None)


def config_label(cfg: SWAAConfig, n_layers: int, adapter: str = "") -> str:
    """The recipe's name when the config is exactly a paper recipe (e.g. "SWA + FA decode (W=256)"), else its
    description; "+ LoRA" when an adapter runs with it."""
    recipe = matching_recipe(cfg, n_layers)
    label = recipe_label(recipe, cfg) if recipe else cfg.describe()
    return f"{label} + LoRA" if adapter else label


def columns_for(current: SWAAConfig, pinned: list[dict], n_layers: int, adapter: str = "") -> list[ColumnSpec]:
    """Full attention first, then the pinned configs, then the current one."""
    cols = [ColumnSpec("Full attention", None)]
    for item in pinned or []:
        cfg = SWAAConfig.from_dict(item["config"]).validate(n_layers)
        cols.append(ColumnSpec(item["label"], cfg, item.get("adapter", "")))
    cols.append(ColumnSpec(config_label(current, n_layers, adapter), current, adapter or ""))
    return cols


def layer_plan_figure(columns: list[ColumnSpec], n_layers: int):
    rows = []
    for col in columns:
        c = col.config
        if c is None:
            continue
        prefill_fa = [not c.layer_slides(i) for i in range(n_layers)]
        decode_fa = [not c.layer_slides(i) or c.layer_fa_decode(i) for i in range(n_layers)]
        rows.append((col.label, prefill_fa, decode_fa))
    return maps.layer_plan_figure(rows) if rows else plots.message_figure("Only full attention.")


# The task Length slider stops this far below the model's context: the chat template and the default new tokens must
# fit beside the task text, or the slider's last values would always be refused.
LENGTH_HEADROOM = 128
MASK_PICTURE_TOKENS = 1024  # longer prompts are drawn at a reduced scale (window and sinks shrink alike)


def mask_figure(columns: list[ColumnSpec], prompt_tokens: int, new_tokens: int, layer: int):
    """What each column's config lets a token see in ``layer``, drawn with swaa_core's own mask predicate."""
    from swaa_core.engine.masks import mask_picture

    total = max(2, prompt_tokens + new_tokens)
    scale = max(1.0, total / MASK_PICTURE_TOKENS)
    n, p = max(2, round(total / scale)), max(1, round(prompt_tokens / scale))
    panels = []
    for col in columns:
        picture = mask_picture(_scaled(col.config, scale), n, layer_idx=layer, prompt_tokens=p)
        visible, cell = maps.pool_mask(picture)
        panels.append(maps.MaskPanel(col.label, visible, cell * scale, prompt_tokens, total))
    return maps.mask_figure(panels, layer=layer)


def _scaled(cfg: SWAAConfig | None, scale: float) -> SWAAConfig | None:
    if cfg is None or scale == 1.0:
        return cfg
    return SWAAConfig(
        sliding_window_size=max(1, round(cfg.sliding_window_size / scale)),
        keep_first=round(cfg.keep_first / scale),
        force_fa_decode=cfg.force_fa_decode,
        non_sliding_layers=cfg.non_sliding_layers,
    )


TEMP_ROOT = Path(tempfile.gettempdir()) / f"swaa-app-{os.getpid()}"  # removed at shutdown (app.py)
TEMP_MAX_AGE_S = 3600  # downloads older than this are deleted when a new one is written


def write_temp(text: str, name: str) -> str:
    """A file for a download button in this process's temp folder (Gradio copies it into its own cache, which
    Blocks(delete_cache=...) empties); files older than an hour are removed on the way."""
    _prune(TEMP_ROOT, TEMP_MAX_AGE_S)
    TEMP_ROOT.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="dl-", dir=TEMP_ROOT))
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def temp_folder(prefix: str) -> Path:
    """A fresh folder under this process's temp root (sweep files and exports)."""
    _prune(TEMP_ROOT, TEMP_MAX_AGE_S)
    TEMP_ROOT.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=TEMP_ROOT))


def _prune(root: Path, max_age_s: float) -> None:
    if not root.is_dir():
        return
    cutoff = time.time() - max_age_s
    for folder in root.iterdir():
        try:
            if folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            pass  # another request removed it first


def remove_temp_root() -> None:
    shutil.rmtree(TEMP_ROOT, ignore_errors=True)
