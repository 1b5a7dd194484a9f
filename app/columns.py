"""The comparison's columns: full attention, the pinned configs and the current one, named after the paper recipe
they match; and their pictures (layer plan, masks) drawn with swaa_core's own mask predicate."""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

from swaa_core.engine.config import SWAAConfig
from swaa_core.eval.recipes import Recipe, list_recipes, recipe_label

from . import maps, plots


@dataclass
class ColumnSpec:
    label: str
    config: SWAAConfig | None  # None: full attention
    adapter: str = ""  # a LoRA adapter folder or Hub id this column runs with ("" = the base model)


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


MASK_PICTURE_TOKENS = 1024  # longer prompts are drawn at a reduced scale (window and sinks shrink alike)


def mask_figure(columns: list[ColumnSpec], prompt_tokens: int, new_tokens: int, layer: int):
    """What each column's config lets a token see in ``layer``, drawn with swaa_core's own mask predicate."""
    from swaa_core.engine.masks import mask_picture

    total = max(2, prompt_tokens + new_tokens)
    scale = max(1.0, total / MASK_PICTURE_TOKENS)
    n, p = max(2, round(total / scale)), max(1, round(prompt_tokens / scale))
    panels = []
    for col in columns:
        picture = mask_picture(scaled_config(col.config, scale), n, layer_idx=layer, prompt_tokens=p)
        visible, cell = maps.pool_mask(picture)
        panels.append(maps.MaskPanel(col.label, visible, cell * scale, prompt_tokens, total))
    return maps.mask_figure(panels, layer=layer)


def scaled_config(cfg: SWAAConfig | None, scale: float) -> SWAAConfig | None:
    """``cfg`` as a long prompt's picture draws it, 1/``scale`` of its length: the window (or chunk) and the sinks
    shrink alike; every other field (the mask kind, FA decode, FA layers) stays as it is."""
    if cfg is None or cfg.is_full_attention or scale == 1.0:
        return cfg
    return replace(
        cfg,
        sliding_window_size=max(1, round(cfg.sliding_window_size / scale)),
        keep_first=round(cfg.keep_first / scale),
    )
