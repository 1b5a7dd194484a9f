"""The paper's named SWAA recipes, resolved for a model's layer count and context length; user recipes as JSON.

A recipe is a *shape* (which strategies are on); :func:`resolve_recipe` turns it into a concrete
:class:`~swaa_core.engine.config.SWAAConfig` for one model: the window, the number of sink tokens and the FA layer indices.
User recipes are concrete configs saved in a JSON file that upstream's settings loader can read too.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..engine.config import KEYS, SWAAConfig, SWAAConfigError, load_upstream_settings

PAPER_WINDOW = 2048  # the paper's main setting (2k window on 24k-token LongMemEval prompts)
MIN_DEFAULT_WINDOW = 256  # small contexts: below this a window hides nearly everything from a small model
DEFAULT_SINKS = 10  # upstream's settings use keep_first=10 for the sink recipes


@dataclass(frozen=True)
class Recipe:
    name: str
    title: str
    description: str
    sliding: bool = True
    fa_decode: bool = False
    sinks: bool = False
    fa_layers: str | None = None  # a SWAAConfig.fa_layers pattern such as "1/2"
    paper_accuracy: str = ""  # Qwen3-4B, LongMemEval_24k, window 2k, no SFT / SFT (see docs/paper.md)
    config: SWAAConfig | None = None  # user recipes: a fixed config, used as is

    def build(self, num_layers: int, *, window: int, keep_first: int) -> SWAAConfig | None:
        """The concrete config for a model with ``num_layers`` layers (None for full attention)."""
        if self.config is not None:
            return SWAAConfig.from_dict(self.config.to_dict()).validate(num_layers)
        if not self.sliding:
            return None
        cfg = SWAAConfig(
            sliding_window_size=window,
            keep_first=keep_first if self.sinks else 0,
            force_fa_decode=self.fa_decode,
            non_sliding_layers=SWAAConfig.fa_layers(self.fa_layers, num_layers),
        )
        return cfg.validate(num_layers)


PRESETS: tuple[Recipe, ...] = (
    Recipe(
        "full",
        "Full attention",
        "The model as trained: every token sees every earlier token. The accuracy baseline and the slowest prefill.",
        sliding=False,
        paper_accuracy="~62 / ~63",
    ),
    Recipe(
        "swa",
        "SWA only",
        "Sliding window in every layer, prefill and decode. Fastest, but facts outside the window are unreachable; "
        "the paper's collapse case.",
        paper_accuracy="~16 / ~24",
    ),
    Recipe(
        "swa-fa-decode",
        "SWA + FA decode",
        "Prompt tokens slide; generated tokens attend to the whole KV cache (prefill fast, decode exact).",
        fa_decode=True,
        paper_accuracy="~21 / ~42",
    ),
    Recipe(
        "swa-sinks",
        "SWA + sinks",
        "Sliding window plus the first tokens kept visible to every query (attention sinks, as in StreamingLLM).",
        sinks=True,
    ),
    Recipe(
        "swa-sinks-fa-decode",
        "SWA + sinks + FA decode",
        "Sink tokens and full-attention decoding on top of a sliding prefill.",
        sinks=True,
        fa_decode=True,
    ),
    Recipe(
        "swa-quarter-fa-fa-decode",
        "SWA + 1/4 FA layers + FA decode",
        "Every 4th layer keeps full attention (layers 3, 7, 11, ...); generated tokens attend to the whole cache.",
        fa_decode=True,
        fa_layers="1/4",
        paper_accuracy="~32 / ~47",
    ),
    Recipe(
        "swa-half-fa",
        "SWA + 1/2 FA layers",
        "Odd layers (1, 3, 5, ...) keep full attention, even layers slide, in prefill and decode.",
        fa_layers="1/2",
        paper_accuracy="~36 / ~55",
    ),
    Recipe(
        "swa-half-fa-fa-decode",
        "SWA + 1/2 FA layers + FA decode",
        "Odd layers keep full attention and generated tokens attend to the whole cache in every layer.",
        fa_decode=True,
        fa_layers="1/2",
        paper_accuracy="~54 / ~59",
    ),
    Recipe(
        "recommended",
        "Recommended: 1/2 FA layers + FA decode + sinks",
        "The paper's lesson that no single method suffices: interleaved FA layers, FA decode and sink tokens together "
        "keep most of full attention's accuracy while half the layers prefill in O(n*W).",
        sinks=True,
        fa_decode=True,
        fa_layers="1/2",
    ),
)

_ALIASES = {
    "fa": "full",
    "full-attention": "full",
    "baseline": "full",
    "swa-only": "swa",
    "sliding": "swa",
    "swa-fadecode": "swa-fa-decode",
    "swa-1/4-fa-fa-decode": "swa-quarter-fa-fa-decode",
    "swa-1/2-fa": "swa-half-fa",
    "swa-1/2-fa-fa-decode": "swa-half-fa-fa-decode",
}


def list_recipes() -> list[Recipe]:
    """The paper presets, full attention first."""
    return list(PRESETS)


def get_recipe(name: str) -> Recipe:
    key = _normalise_name(name)
    key = _ALIASES.get(key, key)
    for recipe in PRESETS:
        if recipe.name == key:
            return recipe
    names = ", ".join(r.name for r in PRESETS)
    raise SWAAConfigError(f"Unknown recipe {name!r}. Known recipes: {names} (see `swaa recipes list`).")


def default_window(context_tokens: int | None = None) -> int:
    """A window scaled to the context: about an eighth of it as a power of two, between 256 and the paper's 2048.

    The paper slides 2k windows over 24k-token prompts; a window as large as the prompt hides nothing, so for short
    prompts the window shrinks (1-2K tokens -> 256, 4K -> 512, 16K and more -> 2048).
    """
    if context_tokens is None:
        return PAPER_WINDOW
    if context_tokens < 1:
        raise SWAAConfigError(f"context_tokens must be positive, got {context_tokens}.")
    power = 1 << max(0, (context_tokens // 8).bit_length() - 1)
    return max(MIN_DEFAULT_WINDOW, min(PAPER_WINDOW, power))


def resolve_recipe(
    name_or_recipe: str | Recipe | SWAAConfig | None,
    num_layers: int,
    *,
    window: int | None = None,
    keep_first: int | None = None,
    context_tokens: int | None = None,
    user_recipes: dict[str, SWAAConfig] | None = None,
) -> SWAAConfig | None:
    """A concrete config (None for full attention) for a model with ``num_layers`` layers.

    ``name_or_recipe`` is a preset name, a :class:`Recipe`, a name in ``user_recipes``, a SWAAConfig, or inline
    JSON of the upstream fields. ``window`` defaults to :func:`default_window` of ``context_tokens``; ``keep_first``
    (sink recipes only) to 10, upstream's setting.
    """
    if not isinstance(num_layers, int) or num_layers < 1:
        raise SWAAConfigError(f"num_layers must be a positive whole number, got {num_layers!r}.")
    if name_or_recipe is None:
        return None
    if isinstance(name_or_recipe, SWAAConfig):
        return None if name_or_recipe.is_full_attention else name_or_recipe.validate(num_layers)
    recipe = name_or_recipe if isinstance(name_or_recipe, Recipe) else _lookup(name_or_recipe, user_recipes)
    if window is None:
        window = default_window(context_tokens)
    if keep_first is None:
        keep_first = DEFAULT_SINKS
    return recipe.build(num_layers, window=window, keep_first=keep_first)


def recipe_named(name: str, user_recipes: dict[str, SWAAConfig] | None = None) -> Recipe:
    """The recipe a name means (a preset, a name in ``user_recipes``, or inline JSON) without building it for a
    model: the check a command makes before it loads one. SWAAConfigError naming the unknown name."""
    return _lookup(name, user_recipes)


def _lookup(name: str, user_recipes: dict[str, SWAAConfig] | None) -> Recipe:
    if not isinstance(name, str) or not name.strip():
        raise SWAAConfigError("A recipe name is empty; use a preset name such as 'swa-fa-decode'.")
    if user_recipes and name in user_recipes:
        return user_recipe(name, user_recipes[name])
    if name.lstrip().startswith("{"):
        return user_recipe("inline", SWAAConfig.from_json(name))
    try:
        return get_recipe(name)
    except SWAAConfigError as e:
        if not user_recipes:
            raise
        close = difflib.get_close_matches(name, list(user_recipes), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        yours = ", ".join(repr(n) for n in user_recipes)
        raise SWAAConfigError(f"{e} Your recipes file has: {yours}.{hint}") from None


def user_recipe(name: str, config: SWAAConfig | dict) -> Recipe:
    """A fixed-config recipe (window and sinks as saved; not rescaled per model)."""
    config = SWAAConfig.coerce(config)
    if config is None:
        raise SWAAConfigError(f"Recipe {name!r} needs a config (sliding_window_size null in one is full attention).")
    return Recipe(name, name, config.describe(), sliding=not config.is_full_attention, config=config)


def recipe_label(recipe: Recipe, config: SWAAConfig | None) -> str:
    """A column label that names the recipe and its concrete window, e.g. "SWA + FA decode (W=256)"."""
    if config is None or config.is_full_attention:
        return "Full attention"
    suffix = f"W={config.sliding_window_size}" + (f", {config.keep_first} sinks" if config.keep_first else "")
    return f"{recipe.title} ({suffix})"


# ---------------------------------------------------------------------- user recipes as JSON


def save_user_recipes(path: str | Path, recipes: dict[str, SWAAConfig | dict]) -> Path:
    """Write ``{name: config}`` as an upstream settings list, each entry carrying its ``name`` (upstream ignores it)."""
    entries = []
    for name, cfg in recipes.items():
        if not isinstance(name, str) or not name.strip():
            raise SWAAConfigError("Every user recipe needs a non-empty name.")
        cfg = SWAAConfig.coerce(cfg, f"recipe {name!r}") or SWAAConfig()
        entries.append({"name": name, "swaa_config": cfg.to_dict(), "model_list": []})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(entries, indent=2) + "\n", encoding="utf-8")
    return path


def add_user_recipe(path: str | Path, name: str, config: SWAAConfig | dict | None) -> SWAAConfig | None:
    """Add recipe ``name`` to the recipe file at ``path`` (created when missing), or replace the one of that name,
    keeping everything else the file holds as it is: its layout, and the other keys of each entry (an upstream
    entry's ``model_list`` is the user's record of the models a config is for). Returns the config replaced, or None.
    Raises SWAAConfigError for an unreadable file or a bad config, before writing anything."""
    if not isinstance(name, str) or not name.strip():
        raise SWAAConfigError("Every user recipe needs a non-empty name.")
    config = SWAAConfig.coerce(config, f"recipe {name!r}") or SWAAConfig()
    path = Path(path)
    if not path.exists():
        save_user_recipes(path, {name: config})
        return None
    existing = load_user_recipes(path)  # checks the file and names its entries, in the file's order
    data = json.loads(path.read_text(encoding="utf-8"))
    replaced = existing.get(name)
    if isinstance(data, dict) and "swaa_config" not in data and not _is_bare_config(data):  # {name: config}
        if name in ("swaa_config", *KEYS):  # as a key it would make the file read as another layout
            raise SWAAConfigError(f"{name!r} is a key this file's layout reads; give the recipe another name.")
        old = data.get(name)
        upstream = isinstance(old, dict) and "swaa_config" in old  # an entry: keep its model_list and the rest
        data[name] = {**old, "swaa_config": config.to_dict()} if upstream else config.to_dict()
    else:
        entries = [data] if isinstance(data, dict) else data
        bare = bool(entries) and all(_is_bare_config(e) for e in entries)
        if replaced is not None:
            i = list(existing).index(name)
            fields = config.to_dict() if bare else {"swaa_config": config.to_dict()}
            entries[i] = {**{k: v for k, v in entries[i].items() if not bare or k not in KEYS}, "name": name, **fields}
        else:
            entries.append({"name": name, **config.to_dict()} if bare else
                           {"name": name, "swaa_config": config.to_dict(), "model_list": []})  # fmt: skip
        data = entries
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return replaced


def load_user_recipes(path: str | Path) -> dict[str, SWAAConfig]:
    """Read a file written by :func:`save_user_recipes`, an upstream settings file, or a ``{name: config}`` object.

    Upstream entries have no names; they get a descriptive one such as "SWA 2000 + 10 sinks + FA decode".
    """
    path = Path(path)
    if path.is_dir():
        raise SWAAConfigError(f"Recipe file {path} is a folder; give the JSON file of your recipes.")
    if not path.is_file():
        raise SWAAConfigError(f"Recipe file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise SWAAConfigError(
            f"Recipe file {path} is not text (UTF-8 JSON); give the JSON file of your recipes."
        ) from None
    except json.JSONDecodeError as e:
        raise SWAAConfigError(f"Recipe file {path} is not valid JSON: {e}") from None
    try:
        return _recipes_from(data)
    except SWAAConfigError as e:  # every problem inside the file names the file
        raise SWAAConfigError(f"Recipe file {path}: {e}") from None


def _recipes_from(data) -> dict[str, SWAAConfig]:
    """{name: config} from a recipe file's parsed JSON (the layouts :func:`load_user_recipes` lists)."""
    if isinstance(data, dict) and _is_bare_config(data):
        data = [data]
    if isinstance(data, dict) and "swaa_config" not in data:
        return {str(name): _config_from(value, name) for name, value in data.items()}
    entries = data if isinstance(data, list) else [data]
    if entries and all(isinstance(e, dict) and _is_bare_config(e) for e in entries):
        return _bare_configs(entries)
    try:
        configs = load_upstream_settings(entries)
    except SWAAConfigError as e:
        raise SWAAConfigError(_with_entry_name(str(e), entries)) from None
    out: dict[str, SWAAConfig] = {}
    for entry, (cfg, _models) in zip(entries, configs, strict=True):
        name = entry.get("name") or cfg.describe()
        out[_unique(name, out)] = cfg
    return out


def _is_bare_config(entry: dict) -> bool:
    """A config written out directly ({"sliding_window_size": 512, ...}), not wrapped in upstream's swaa_config."""
    return "swaa_config" not in entry and any(k in KEYS for k in entry)


def _with_entry_name(message: str, entries: list) -> str:
    """Upstream's "Entry i: ..." with the entry's name added where it has one."""
    found = re.match(r"Entry (\d+)", message)
    if found and int(found.group(1)) < len(entries) and isinstance(entries[int(found.group(1))], dict):
        name = entries[int(found.group(1))].get("name")
        if name:
            return message.replace(found.group(0), f"{found.group(0)} ({name!r})", 1)
    return message


def _bare_configs(entries: list[dict]) -> dict[str, SWAAConfig]:
    """A list of bare configs, each optionally carrying a "name"."""
    out: dict[str, SWAAConfig] = {}
    for i, entry in enumerate(entries):
        fields = {k: v for k, v in entry.items() if k != "name"}
        cfg = _config_from(fields, entry.get("name") or f"entry {i}")
        out[_unique(str(entry.get("name") or cfg.describe()), out)] = cfg
    return out


def unused_settings(
    name_or_recipe: str | Recipe,
    *,
    window: int | None = None,
    keep_first: int | None = None,
    user_recipes: dict[str, SWAAConfig] | None = None,
    context_tokens: int | None = None,
) -> list[str]:
    """Why a window, sink count or context length (what a preset's window is scaled to) the caller chose does not
    reach this recipe's config (empty when all apply), so a front end can say so instead of silently running
    something else than asked."""
    recipe = name_or_recipe if isinstance(name_or_recipe, Recipe) else _lookup(name_or_recipe, user_recipes)
    scaled = recipe.config is None and recipe.sliding and window is None  # only then does the context length count
    given = [f"window {window}" if window is not None else "", f"{keep_first} sinks" if keep_first else "",
             f"context length {context_tokens}" if context_tokens and not scaled else ""]  # fmt: skip
    given = [g for g in given if g]
    if not given:
        return []
    unused = f"the {' and '.join(given)} you chose {'are' if len(given) > 1 else 'is'} not used"
    if recipe.config is not None:
        return [f"{recipe.name!r} is a saved config and runs as saved ({recipe.config.describe()}): {unused}."]
    if not recipe.sliding:
        return [f"{recipe.name!r} is full attention: {unused}."]
    if keep_first and not recipe.sinks:
        with_sinks = ", ".join(r.name for r in PRESETS if r.sinks)
        return [
            f"{recipe.name!r} keeps no sink tokens, so {keep_first} sinks are not used (recipes with sinks: {with_sinks})."
        ]
    return []


def _config_from(value, name) -> SWAAConfig:
    if not isinstance(value, dict):
        raise SWAAConfigError(f"Recipe {name!r}: expected an object with the SWAA config fields, got {value!r}.")
    try:
        return SWAAConfig.from_dict(value)
    except SWAAConfigError as e:
        raise SWAAConfigError(f"Recipe {name!r}: {e}") from None


def _unique(name: str, taken: dict) -> str:
    if name not in taken:
        return name
    n = 2
    while f"{name} ({n})" in taken:
        n += 1
    return f"{name} ({n})"


def _normalise_name(name: str) -> str:
    return re.sub(r"[\s_+]+", "-", name.strip().lower()).strip("-")
