"""What the user has set, as plain data: strategy controls <-> SWAAConfig, and the shareable link's query string.

Everything here is free of Gradio and of models so it can be tested on its own and reused by the callbacks.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from urllib.parse import urlencode

from swaa_core.cli.bounds import NUMERIC_OPTIONS
from swaa_core.engine.config import DEFAULT_KIND, FA_LAYER_PATTERNS, SWAAConfig, SWAAConfigError, parse_layers
from swaa_core.eval.tasks.base import TaskError
from swaa_core.eval.tasks.registry import check_depth, task_kind
from swaa_core.models.registry import DEFAULT_MODEL

MAX_PINNED = 3  # extra SWAA columns beside the current config; each costs one more generation per run
FA_LAYER_MODES = ("none", *FA_LAYER_PATTERNS, "custom")
FA_DECODE_MODES = ("off", "all", "layers")
SOURCES = ("task", "text")


@dataclass(frozen=True)
class Strategy:
    """The six strategy controls, checked once where they enter the app (widgets, API, link, config).

    Field names are the names of the page's widgets (app.sidebar.strategy); :meth:`from_widgets` and
    ``app.sidebar.strategy.strategy_updates`` are the one place that maps between the two. Construction raises
    SWAAConfigError with a message for the user (see :func:`window_and_sinks`)."""

    window: int = 256
    sinks: int = 10
    fa_layers_mode: str = "1/2"
    fa_layers: tuple[int, ...] = ()  # used when the mode is "custom"
    fa_decode_mode: str = "all"
    fa_decode_layers: tuple[int, ...] = ()  # used when the mode is "layers"

    def __post_init__(self) -> None:
        if self.fa_layers_mode not in FA_LAYER_MODES:
            raise SWAAConfigError(f"FA layers must be one of {', '.join(FA_LAYER_MODES)}; got {self.fa_layers_mode!r}.")
        if self.fa_decode_mode not in FA_DECODE_MODES:
            raise SWAAConfigError(
                f"FA decode must be one of {', '.join(FA_DECODE_MODES)}; got {self.fa_decode_mode!r}."
            )
        window, sinks = window_and_sinks(self.window, self.sinks)
        object.__setattr__(self, "window", window)
        object.__setattr__(self, "sinks", sinks)
        for field_name, name in (("fa_layers", "fa_layers"), ("fa_decode_layers", "fa_decode")):  # the API's names
            layers = parse_layers(list(getattr(self, field_name) or []), name)
            object.__setattr__(self, field_name, tuple(layers))

    @classmethod
    def widget_names(cls) -> tuple[str, ...]:
        """The page's strategy widgets, in the order their values and updates travel."""
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_widgets(cls, **values) -> Strategy:
        """The strategy the widgets show (``values`` keyed by :meth:`widget_names`)."""
        return cls(**values)

    def to_config(self, num_layers: int) -> SWAAConfig:
        """The SWAAConfig these controls mean for a model with ``num_layers`` layers (SWAAConfigError naming the
        layer when one is beyond the model)."""
        layers = (
            self.fa_layers if self.fa_layers_mode == "custom" else SWAAConfig.fa_layers(self.fa_layers_mode, num_layers)
        )
        decode: bool | list[int] = {"off": False, "all": True}.get(self.fa_decode_mode, list(self.fa_decode_layers))
        cfg = SWAAConfig(
            sliding_window_size=self.window,
            keep_first=self.sinks,
            force_fa_decode=decode,
            non_sliding_layers=list(layers),
        )
        return cfg.validate(num_layers)

    @classmethod
    def from_config(cls, cfg: SWAAConfig, num_layers: int) -> Strategy:
        """Controls that reproduce ``cfg`` (its FA layers named by pattern where one matches). SWAAConfigError for
        full attention, and for a mask kind other than the sliding window the controls set (a pinned column runs
        any kind as saved)."""
        if cfg.is_full_attention:
            raise SWAAConfigError("Full attention always runs as the first column; a strategy needs a window size.")
        if cfg.mask_kind != DEFAULT_KIND:
            raise SWAAConfigError(
                f"This config's mask_kind is {cfg.mask_kind!r} ({cfg.describe()}), but the strategy controls set a "
                f"sliding window ({DEFAULT_KIND!r}). Run it as a pinned column (the API's pinned list or a link's "
                "pin= parameter), or with `swaa run --config`."
            )
        fa_mode = layer_pattern_name(cfg.non_sliding_layers, num_layers)
        if cfg.force_fa_decode is True:
            decode_mode, decode_layers = "all", []
        elif cfg.force_fa_decode:
            decode_mode, decode_layers = "layers", list(cfg.force_fa_decode)
        else:
            decode_mode, decode_layers = "off", []
        return cls(
            window=cfg.sliding_window_size,
            sinks=cfg.keep_first,
            fa_layers_mode=fa_mode,
            fa_layers=cfg.non_sliding_layers,
            fa_decode_mode=decode_mode,
            fa_decode_layers=decode_layers,
        )


def layer_pattern_name(layers: list[int], num_layers: int) -> str:
    """The pattern name ("none", "1/4", "1/2") when ``layers`` is exactly that pattern for this model, else "custom"."""
    chosen = sorted(set(layers))
    for mode in ("none", *FA_LAYER_PATTERNS):
        if chosen == SWAAConfig.fa_layers(mode, num_layers):
            return mode
    return "custom"


def window_and_sinks(window, sinks) -> tuple[int, int]:
    """The window and sink widgets' values (sliders send floats such as 256.0) as whole numbers in range.

    The one rule for both, the command line's (--window, --keep-first: cli.bounds), in the same words: SWAAConfigError
    "window: must be a whole number from 1 to 16,777,216, got 0" where `swaa run -w 0` says "argument --window/-w:
    must be ...". Strategy.to_config then makes the config of them once."""
    try:
        return NUMERIC_OPTIONS["window"].check(window, "window"), NUMERIC_OPTIONS["keep_first"].check(sinks, "sinks")
    except ValueError as e:
        raise SWAAConfigError(str(e)) from None


STATIC_CACHE_LABEL = "Fixed-buffer decode"  # the older on/off option (API's static_cache, links' fixed=), by name
DECODE_PATH_LABEL = "Decode path"  # the choice's label, named in messages about its value
COT_LABEL = "Chain of thought"  # the checkbox's label (API's cot, links' cot=), named in messages about its value
# (shown, value) pairs of the choice; the values are swaa_core.engine.decode_path.DecodePath's
DECODE_PATH_CHOICES = [("Auto", "auto"), ("Fixed-buffer", "fixed"), ("Eager", "eager")]
_ON, _OFF = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


def decode_path_choice(value, static_cache=None) -> str:
    """The decode-path choice as "auto", "fixed" or "eager": a value or a shown name (any case), None for auto.
    ``static_cache``, the older on/off option (:func:`checked_flag`), on asks for "fixed". ValueError naming the
    option for anything else, or for the two contradicting each other."""
    names = {v: v for _, v in DECODE_PATH_CHOICES} | {shown.lower(): v for shown, v in DECODE_PATH_CHOICES}
    text = "auto" if value is None or value == "" else str(value).strip().lower()
    if text not in names:
        shown = ", ".join(f"{v} ({s})" for s, v in DECODE_PATH_CHOICES)
        raise ValueError(f"{DECODE_PATH_LABEL} must be one of {shown}, got {value!r}.")
    path = names[text]
    if checked_flag(static_cache, STATIC_CACHE_LABEL):
        if path == "eager":
            raise ValueError(f"{STATIC_CACHE_LABEL} is on, but {DECODE_PATH_LABEL} asks for eager: give one of them.")
        path = "fixed"
    return path


def checked_flag(value, what: str) -> bool:
    """A checkbox's value as a bool: a bool, None (unset: off), or a link's word ("1", "0", "true", "off", ...).
    Anything else is a ValueError naming ``what``."""
    if value is None or isinstance(value, bool):
        return bool(value)
    text = str(value).strip().lower()
    if text in _ON or text in _OFF:
        return text in _ON
    raise ValueError(f"{what} must be on or off (1 or 0), got {value!r}.")


def whole_in_range(value, what: str, low: int, high: int) -> int:
    """``value`` as an int, or ValueError "{what} must be a whole number from {low} to {high}, got ..."."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a whole number, got {value!r}.") from None
    if not math.isfinite(number) or number != int(number) or not low <= number <= high:
        raise ValueError(f"{what} must be a whole number from {low} to {high}, got {value!r}.")
    return int(number)


MAX_LENGTH = 131072  # tokens a task prompt may ask for: beyond any supported context
MAX_SEED = 2**31 - 1
MAX_NEW_TOKENS = 512  # the slider's maximum; the API and links refuse more with the same message
# Built-in tasks offered in the picker: (kind, label). doc_qa is the "your text" source instead.
TASK_CHOICES = [
    ("needle", "Needle in a haystack (find a magic number)"),
    ("passkey", "Pass key (find a number)"),
    ("multi_key", "Multi-key needle (distractors)"),
    ("multi_value", "Multi-value needle (find all values)"),
    ("variable_tracking", "Variable tracking (follow a chain)"),
    ("common_words", "Common words (count frequencies)"),
]

# One rule per prompt and run value, read the same way from the page, the API and a shared link.


def seed_of(value) -> int:
    """A sample seed from a page or API value: a whole number from 0 to 2**31 - 1 (blank: 0); ValueError naming
    the seed otherwise (a seed of 1.5 is not silently run as 1)."""
    return whole_in_range(0 if value is None or value == "" else value, "Seed", 0, MAX_SEED)


def length_of(value) -> int:
    """A task's length in tokens: ValueError naming Length unless a whole number from 1 to MAX_LENGTH."""
    return whole_in_range(value, "Length", 1, MAX_LENGTH)


def max_new_tokens_of(value) -> int:
    """Max new tokens: ValueError in the slider's words unless a whole number from 1 to MAX_NEW_TOKENS."""
    return whole_in_range(value, "Max new tokens", 1, MAX_NEW_TOKENS)


def depth_of(value) -> float:
    """The needle's depth from 0 to 1, by the task builders' own rule and words (swaa_core's check_depth)."""
    try:
        return check_depth(value)
    except TaskError as e:
        raise ValueError(str(e)) from None


def task_of(value) -> str:
    """A built-in task of the picker (:data:`TASK_CHOICES`; a swaa_core alias such as "niah" is read as its kind),
    or ValueError naming the task and the choices."""
    kinds = [kind for kind, _ in TASK_CHOICES]
    try:
        kind = task_kind(value)
    except TaskError:
        kind = None
    if kind not in kinds:
        raise ValueError(f"Task must be one of {', '.join(kinds)}, got {value!r}.")
    return kind


@dataclass
class Settings:
    """Everything a shareable link restores: model, strategy, prompt source, run options and pinned columns."""

    model: str = DEFAULT_MODEL
    strategy: Strategy = field(default_factory=Strategy)
    cot: bool = False
    adapter: str = ""
    source: str = "task"
    task: str = "needle"
    length: int = 512
    depth: float = 0.25
    seed: int = 0
    max_new_tokens: int = 12
    decode_path: str = "auto"  # every timed run: "auto" (fixed buffers on CUDA), "fixed" or "eager"
    example: str = ""
    # [{"label": str, "config": upstream dict, "adapter": str}]. By default plain SWA sits beside the current
    # config, so the first run shows both the collapse and the remedy.
    pinned: list[dict] = field(default_factory=lambda: [dict(DEFAULT_PINNED)])

    @classmethod
    def from_widgets(cls, **values) -> Settings:
        """Settings from the page's widgets (keyword names = field names; sliders send floats, empty boxes None)."""
        v = values
        return cls(
            model=v["model"] or DEFAULT_MODEL, strategy=v["strategy"], cot=checked_flag(v["cot"], COT_LABEL), adapter=v["adapter"] or "",
            source=v["source"], task=v["task"], length=int(v["length"]), depth=float(v["depth"]),
            seed=int(v["seed"] or 0), max_new_tokens=int(v["max_new_tokens"]), example=v["example"] or "",
            pinned=v["pinned"] or [], decode_path=decode_path_choice(v["decode_path"]),
        )  # fmt: skip


DEFAULT_PINNED = {
    "label": "SWA only (W=256)",
    "config": SWAAConfig(sliding_window_size=256).to_dict(),
    "adapter": "",
}


# Short query keys keep links readable; each maps to a Settings / Strategy attribute.
_QUERY_KEYS = {
    "model": "model",
    "w": "window",
    "k": "sinks",
    "fal": "fa_layers",
    "fad": "fa_decode",
    "cot": "cot",
    "adapter": "adapter",
    "src": "source",
    "task": "task",
    "len": "length",
    "depth": "depth",
    "seed": "seed",
    "new": "max_new_tokens",
    "path": "decode_path",
    "fixed": "static_cache",  # older links: fixed=1 is path=fixed, fixed=0 path=eager
    "ex": "example",
    "pin": "pinned",
}


def to_query(settings: Settings) -> str:
    """The query string of a link that restores ``settings`` (defaults left out to keep it short)."""
    default = Settings()
    s, d = settings.strategy, default.strategy
    values: dict[str, str] = {}
    if settings.model != default.model:
        values["model"] = settings.model
    if s.window != d.window:
        values["w"] = str(s.window)
    if s.sinks != d.sinks:
        values["k"] = str(s.sinks)
    fal = _layers_text(s.fa_layers) if s.fa_layers_mode == "custom" else s.fa_layers_mode
    if fal != d.fa_layers_mode:
        values["fal"] = fal
    fad = _layers_text(s.fa_decode_layers) if s.fa_decode_mode == "layers" else s.fa_decode_mode
    if fad != d.fa_decode_mode:
        values["fad"] = fad
    for key in ("cot", "adapter", "source", "task", "length", "depth", "seed", "max_new_tokens", "decode_path",
                "example"):  # fmt: skip
        value = getattr(settings, key)
        if value != getattr(default, key):
            short = next(q for q, attr in _QUERY_KEYS.items() if attr == key)
            values[short] = ("1" if value else "0") if isinstance(value, bool) else str(value)
    if settings.pinned != default.pinned:
        values["pin"] = json.dumps(settings.pinned, separators=(",", ":"))
    return "?" + urlencode(values) if values else ""


def from_query(params: Mapping[str, str]) -> tuple[Settings, list[str]]:
    """Settings from a link's query parameters, plus a note for each parameter that could not be used.

    A bad parameter never blocks the page: it keeps its default and the note says why.
    """
    settings, notes = Settings(), []
    unknown = sorted(set(params) - set(_QUERY_KEYS) - {"__theme", "view"})
    if unknown:
        notes.append(f"Ignored unknown link parameter(s): {', '.join(unknown)}.")
    for key, value in params.items():
        attr = _QUERY_KEYS.get(key)
        if attr is None:
            continue
        try:
            _apply_param(settings, attr, value)
        except (ValueError, TypeError, json.JSONDecodeError) as e:
            notes.append(f"Link parameter {key}={value!r} was not used: {e}")
    return settings, notes


def _example_of(value: str) -> str:
    # imported here: app.prompts (which reads the example files) imports this module
    from .prompts import examples

    known = examples()
    if value and value not in known:
        raise ValueError(f"there is no ready example {value!r}; the examples are {', '.join(known)}.")
    return value


def _apply_param(settings: Settings, attr: str, value: str) -> None:
    s = settings.strategy
    if attr in ("window", "sinks"):
        settings.strategy = replace(s, **{attr: value})
    elif attr == "fa_layers":
        mode, layers = layer_choice(value, FA_LAYER_MODES, "fa_layers")
        settings.strategy = replace(s, fa_layers_mode=mode, fa_layers=layers)
    elif attr == "fa_decode":
        mode, layers = layer_choice(value, FA_DECODE_MODES, "fa_decode")
        settings.strategy = replace(s, fa_decode_mode=mode, fa_decode_layers=layers)
    elif attr == "cot":
        settings.cot = checked_flag(value, COT_LABEL)
    elif attr == "decode_path":
        settings.decode_path = decode_path_choice(value)
    elif attr == "static_cache":
        settings.decode_path = "fixed" if checked_flag(value, STATIC_CACHE_LABEL) else "eager"
    elif attr == "source":
        if value not in SOURCES:
            raise ValueError(f"expected one of {', '.join(SOURCES)}.")
        settings.source = value
    elif attr == "seed":
        settings.seed = seed_of(value)
    elif attr == "length":
        settings.length = length_of(value)
    elif attr == "max_new_tokens":
        settings.max_new_tokens = max_new_tokens_of(value)
    elif attr == "depth":
        settings.depth = depth_of(value)
    elif attr == "task":
        settings.task = task_of(value)
    elif attr == "example":
        settings.example = _example_of(value)
    elif attr == "pinned":
        settings.pinned = parse_pinned(json.loads(value))
    else:
        settings.__setattr__(attr, value)


PINNED_KEYS = frozenset({"label", "config", "adapter"})


def parse_pinned(data) -> list[dict]:
    """Validated pinned columns: a list of {"label", "config"} with upstream config objects."""
    if not isinstance(data, list):
        raise ValueError("pinned columns must be a list.")
    if len(data) > MAX_PINNED:
        raise ValueError(f"at most {MAX_PINNED} pinned columns run beside the strategy, got {len(data)}.")
    out = []
    for item in data:
        if not isinstance(item, dict) or "config" not in item:
            raise ValueError("each pinned column needs a 'config' object.")
        unknown = sorted(set(item) - PINNED_KEYS)
        if unknown:
            raise ValueError(f"a pinned column takes {', '.join(sorted(PINNED_KEYS))}; it does not apply "
                             f"{', '.join(map(repr, unknown))}.")  # fmt: skip
        cfg = SWAAConfig.from_dict(item["config"])
        if cfg.is_full_attention:
            raise ValueError("a pinned column needs a window size (full attention always runs).")
        adapter = str(item.get("adapter") or "").strip()
        out.append(
            {"label": _short(str(item.get("label") or cfg.describe())), "config": cfg.to_dict(), "adapter": adapter}
        )
    return out


def _short(label: str, limit: int = 80) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "…"


def layer_choice(value, modes: tuple[str, ...], name: str) -> tuple[str, tuple[int, ...]]:
    """A layer list typed into a link or the API as a Strategy's (mode, indices), read by swaa_core's one grammar
    (engine.config.parse_layers, whose message names ``name`` when it cannot be read): no layers is the first mode
    ("none" / "off"), indices the last ("custom" / "layers"), a pattern the mode of that name. A pattern no mode holds
    ("every 3 from 0"; "all" for FA layers) needs the model's layer count, which a link and the API's layer fields
    are read without: SWAAConfigError naming ``name``."""
    parsed = parse_layers(value, name)
    if isinstance(parsed, list):
        return (modes[-1], tuple(parsed)) if parsed else (modes[0], ())
    if parsed in modes[:-1]:
        return parsed, ()
    named = ", ".join(repr(m) for m in modes[:-1])
    raise SWAAConfigError(
        f"{name} {value!r} depends on the model's layer count; here give {named} or layer indices such as 1,5,9."
    )


def _layers_text(layers: list[int]) -> str:
    return ",".join(str(i) for i in layers) or "none"
