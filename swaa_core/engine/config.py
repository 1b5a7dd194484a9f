"""SWAAConfig: the four upstream fields, validated, plus the mask kind and helpers for the paper's layer patterns."""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .kinds import KINDS, MaskKind, SinkWindow

UPSTREAM_KEYS = ("sliding_window_size", "keep_first", "force_fa_decode", "non_sliding_layers")
KEYS = (*UPSTREAM_KEYS, "mask_kind")  # what from_dict reads: upstream's fields and ours
# apply_swaa(..., backend=): the names it takes, and the order "auto" tries them in (detection: engine.backends)
BACKENDS = ("auto", "reference", "blocked", "flex", "fa4", "flash")
AUTO_ORDER = ("fa4", "flash", "flex", "blocked")
# The paper's interleaving recipes by name, fewest full-attention layers first (docs/paper.md: "1/2" = odd layers, "1/4" =
# layers 3, 7, 11, ...); SWAAConfig.fa_layers resolves them and the rest of its grammar.
FA_LAYER_PATTERNS = ("1/4", "1/2")
DEFAULT_KIND = next(iter(KINDS))  # sink_window: what upstream configs mean; to_dict leaves it out


class SWAAConfigError(ValueError):
    """A SWAA configuration that cannot be applied, with a message that says how to fix it."""


@dataclass
class SWAAConfig:
    """Sliding Window Attention Adaptation settings, field-for-field compatible with the upstream paper code.

    sliding_window_size: keys visible to a query in a sliding layer, the query's own token included
        (flash-attn ``window_size=(W-1, 0)``). ``None`` means plain full attention everywhere.
    keep_first: the first K tokens stay visible to every query ("sink" tokens).
    force_fa_decode: generated tokens attend to the whole cache (True: every layer; a list: those layers).
    non_sliding_layers: layers that keep full attention (interleaving FA/SWA layers).
    mask_kind: what a query of a sliding layer sees besides the sinks, a name in :data:`swaa_core.engine.kinds.KINDS`
        built as ``KINDS[mask_kind](sliding_window_size, keep_first)`` (its module says what the size means). Not an
        upstream field: "sink_window", the default, is the window above and is left out of :meth:`to_dict`.
    """

    sliding_window_size: int | None = None
    keep_first: int = 0
    force_fa_decode: bool | list[int] = False
    non_sliding_layers: list[int] = field(default_factory=list)
    mask_kind: str = DEFAULT_KIND

    def __post_init__(self) -> None:
        self._check_types()

    @classmethod
    def coerce(cls, config, name: str = "config") -> SWAAConfig | None:
        """``config`` as a checked SWAAConfig: a SWAAConfig (its fields checked again: a dataclass's fields may have
        been changed after it was built), a dict of its fields (:meth:`from_dict`), or None (full attention: None).
        Raises SWAAConfigError naming ``name`` for anything else, and for a field value the constructor refuses."""
        if config is None:
            return None
        if isinstance(config, dict):
            return cls.from_dict(config)
        if isinstance(config, cls):
            config._check_types()
            return config
        raise SWAAConfigError(
            f"{name} must be a SWAAConfig, a dict of its fields or None, got {type(config).__name__} {config!r:.80}."
        )

    # ------------------------------------------------------------------ validation
    def _check_types(self) -> None:
        w = self.sliding_window_size
        if w is not None:
            if isinstance(w, bool) or not isinstance(w, int):
                raise SWAAConfigError(f"sliding_window_size must be a whole number or None, got {w!r}.")
            if w < 1:
                raise SWAAConfigError(
                    f"sliding_window_size must be at least 1 (the query's own token), got {w}. "
                    "Use None (null in JSON) for full attention."
                )
        k = self.keep_first
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise SWAAConfigError(f"keep_first (sink tokens) must be a whole number >= 0, got {k!r}.")
        fa = self.force_fa_decode
        if not isinstance(fa, bool):
            if not isinstance(fa, (list, tuple)):
                raise SWAAConfigError(f"force_fa_decode must be true/false or a list of layer indices, got {fa!r}.")
            self.force_fa_decode = _layer_list(fa, "force_fa_decode")
        if not isinstance(self.non_sliding_layers, (list, tuple)):
            raise SWAAConfigError(
                f"non_sliding_layers must be a list of layer indices, got {self.non_sliding_layers!r}."
            )
        self.non_sliding_layers = _layer_list(self.non_sliding_layers, "non_sliding_layers")
        if not isinstance(self.mask_kind, str) or self.mask_kind not in KINDS:
            raise SWAAConfigError(f"mask_kind must be one of {', '.join(map(repr, KINDS))}, got {self.mask_kind!r}.")
        if self.sliding_window_size is None and self.mask_kind != DEFAULT_KIND:
            size = KINDS[self.mask_kind].size_name
            raise SWAAConfigError(
                f"mask_kind {self.mask_kind!r} needs sliding_window_size (its {size} size); None (null) means full "
                "attention, where no mask kind applies: leave mask_kind out for full attention."
            )

    def validate(self, num_layers: int) -> SWAAConfig:
        """Check layer indices against a model with ``num_layers`` layers; returns self for chaining."""
        for name in ("non_sliding_layers", "force_fa_decode"):
            layers = getattr(self, name)
            if isinstance(layers, bool):
                continue
            bad = [i for i in layers if i >= num_layers]
            if bad:
                raise SWAAConfigError(
                    f"{name} names layer(s) {bad}, but this model has {num_layers} layers (valid: 0..{num_layers - 1})."
                )
        return self

    # ------------------------------------------------------------------ meaning
    @property
    def is_full_attention(self) -> bool:
        return self.sliding_window_size is None

    def layer_slides(self, layer_idx: int) -> bool:
        return self.sliding_window_size is not None and layer_idx not in self.non_sliding_layers

    def layer_fa_decode(self, layer_idx: int) -> bool:
        if isinstance(self.force_fa_decode, bool):
            return self.force_fa_decode
        return layer_idx in self.force_fa_decode

    @property
    def kind(self) -> MaskKind | None:
        """The mask kind of the sliding layers, ``KINDS[mask_kind](sliding_window_size, keep_first)``; None for full
        attention."""
        if self.sliding_window_size is None:
            return None
        return KINDS[self.mask_kind](self.sliding_window_size, self.keep_first)

    def layer_rule(self, layer_idx: int, native_window: int | None = None) -> tuple[MaskKind | None, bool]:
        """(mask kind or None for full attention, fa_decode) that layer ``layer_idx`` runs under.

        A layer the model already slides in (``native_window``: Gemma 3's local layers, Mistral's ``sliding_window``,
        Qwen2's ``use_sliding_window``) keeps at most its own window: SWAA may narrow it (``MaskKind.within``: a
        window of ``min(sliding_window_size, native_window)``), never widen it, so there it drops sinks and FA decode
        (both let a query see keys outside the trained window) and ignores ``non_sliding_layers``."""
        if native_window is not None:
            kind = self.kind
            return (SinkWindow(native_window) if kind is None else kind.within(native_window)), False
        return (self.kind if self.layer_slides(layer_idx) else None), self.layer_fa_decode(layer_idx)

    def notes(self, prompt_tokens: int | None = None, native_windows=None) -> list[str]:
        """Plain-language remarks about settings that are legal but may surprise (shown by the app and CLI).

        ``native_windows``: per layer, the model's own sliding window or None (see :meth:`layer_rule`)."""
        out = []
        w, k, kind = self.sliding_window_size, self.keep_first, self.kind
        native = {i: n for i, n in enumerate(native_windows or ()) if n is not None}
        if native and kind is not None:
            sizes = sorted(set(native.values()))
            # what the kind becomes in each such layer, where that is not just the layer's own window
            narrowed = sorted({kind.within(n).describe() for n in sizes if kind.within(n) != SinkWindow(n)})
            out.append(
                f"{len(native)} layer(s) already slide natively (window {', '.join(map(str, sizes))}): there SWAA "
                + (f"narrows them to {', '.join(narrowed)}" if narrowed else "keeps the model's own window")
                + ", without sinks or FA decode, and non_sliding_layers cannot widen them."
            )
        if kind is None:
            if k or self.force_fa_decode or self.non_sliding_layers:
                out.append("sliding_window_size is None: full attention everywhere; the other fields have no effect.")
            return out
        size = kind.size_name
        if k and k >= w:
            out.append(f"keep_first={k} >= {size} {w}: sinks extend past the {size}, so early tokens dominate.")
        if prompt_tokens is not None:
            if prompt_tokens <= w:
                out.append(
                    f"The prompt ({prompt_tokens} tokens) fits in the {size} ({w}): {kind.describe()} equals full "
                    "attention here."
                )
            if k and k >= prompt_tokens:
                out.append(f"keep_first={k} covers the whole prompt ({prompt_tokens} tokens): nothing is hidden.")
        return out

    def describe(self) -> str:
        if self.sliding_window_size is None:
            return "full attention"
        parts = [self.kind.describe()]
        if self.non_sliding_layers:
            parts.append(f"FA layers {_compact(self.non_sliding_layers)}")
        if self.force_fa_decode is True:
            parts.append("FA decode")
        elif self.force_fa_decode:
            parts.append(f"FA decode in {_compact(self.force_fa_decode)}")
        return " + ".join(parts)

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def fa_layers(pattern: str | int | list[int] | None, num_layers: int) -> list[int]:
        """Layer indices that keep full attention for a layer list in the grammar of :func:`parse_layers`, resolved
        for a model with ``num_layers`` layers: "1/2" -> [1, 3, 5, ...], "1/4" -> [3, 7, 11, ...]."""
        return resolve_layers(parse_layers(pattern, "FA layers"), num_layers)

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        fa = self.force_fa_decode if isinstance(self.force_fa_decode, bool) else list(self.force_fa_decode)
        return {
            "sliding_window_size": self.sliding_window_size,
            "keep_first": self.keep_first,
            "force_fa_decode": fa,
            "non_sliding_layers": list(self.non_sliding_layers),
        } | ({} if self.mask_kind == DEFAULT_KIND else {"mask_kind": self.mask_kind})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SWAAConfig:
        if not isinstance(data, dict):
            raise SWAAConfigError(f"A SWAA config must be a JSON object, got {type(data).__name__}.")
        if "swaa_config" in data:  # the nested form of upstream files and adapters; null there: full attention
            nested = data["swaa_config"]
            if nested is not None and not isinstance(nested, dict):
                raise SWAAConfigError(f"swaa_config must be an object of SWAA config fields or null, got {nested!r}.")
            # Records carry other keys beside it (model_list, a saved recipe's name, an adapter's training): they
            # describe the config. A SWAA field there, or a near miss of one, is a setting nobody would read.
            misplaced = sorted(k for k in data if k != "swaa_config" and difflib.get_close_matches(k, KEYS, 1, 0.8))
            if misplaced:
                raise SWAAConfigError(
                    f"Beside swaa_config, {misplaced} would not be read: put SWAA fields inside swaa_config "
                    f"(its fields: {', '.join(KEYS)})."
                )
            data = nested or {}
        unknown = sorted(set(data) - set(KEYS))
        if unknown:
            raise SWAAConfigError(f"Unknown SWAA config field(s) {unknown}; expected some of {list(KEYS)}.")
        kwargs = {k: data[k] for k in KEYS if k in data}
        if kwargs.get("keep_first") is None:
            kwargs.pop("keep_first", None)
        if kwargs.get("non_sliding_layers") is None:
            kwargs.pop("non_sliding_layers", None)
        if kwargs.get("force_fa_decode") is None:
            kwargs.pop("force_fa_decode", None)
        return cls(**kwargs)

    def to_json(self, **kw) -> str:
        return json.dumps(self.to_dict(), **kw)

    @classmethod
    def from_json(cls, text: str) -> SWAAConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise SWAAConfigError(f"The SWAA config is not valid JSON: {e}") from None
        return cls.from_dict(data)


def load_upstream_settings(path_or_data) -> list[tuple[SWAAConfig, list[str]]]:
    """Read an upstream settings file: a JSON list of {"swaa_config": {...}, "model_list": [...]}."""
    if isinstance(path_or_data, (str, Path)) and not str(path_or_data).lstrip().startswith(("[", "{")):
        path = Path(path_or_data)
        if not path.is_file():
            raise SWAAConfigError(f"Settings file not found: {path}")
        text = path.read_text(encoding="utf-8")
    elif isinstance(path_or_data, (str, Path)):
        text = str(path_or_data)
    else:
        text = json.dumps(path_or_data)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise SWAAConfigError(f"The settings file is not valid JSON: {e}") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise SWAAConfigError("An upstream settings file is a JSON list of {'swaa_config': ..., 'model_list': ...}.")
    out = []
    for i, entry in enumerate(data):
        if not isinstance(entry, dict) or "swaa_config" not in entry:
            raise SWAAConfigError(f"Entry {i} of the settings file has no 'swaa_config' object.")
        models = entry.get("model_list", [])
        if not isinstance(models, list):
            raise SWAAConfigError(f"Entry {i}: 'model_list' must be a list of model names or paths.")
        try:
            cfg = SWAAConfig.from_dict(entry["swaa_config"])
        except SWAAConfigError as e:
            raise SWAAConfigError(f"Entry {i}: {e}") from None
        out.append((cfg, [str(m) for m in models]))
    return out


LAYER_LIST_GRAMMAR = "'none', 'all', '1/k' (such as '1/2'), 'every k from s' or layer indices such as '1,5,9'"


def parse_layers(value: str | int | list[int] | None, name: str) -> str | list[int]:
    """The one reading of a layer list, shared by configs, recipes, the app's links, widgets and API.

    None, "", "none", "off" -> []; a list, or text such as "1,5,9" / "1 5 9" -> the indices, sorted, once each;
    "all", "1/k" (every k-th layer, the paper's "1/2" = [1, 3, 5, ...]) and "every k from s" -> that pattern,
    spelled canonically, for :func:`resolve_layers` once the layer count is known; an int k -> "1/k".
    SWAAConfigError naming ``name`` for anything else, with the same words on every surface."""
    if value is None or isinstance(value, (list, tuple)):
        return _layer_list(value or [], name)
    if isinstance(value, int) and not isinstance(value, bool):
        value = f"1/{value}"
    text = " ".join(str(value).split()).lower()
    if text in ("", "none", "off"):
        return []
    if re.fullmatch(r"-?\d+([,\s]+-?\d+)*,?", text):
        return _layer_list([int(x) for x in re.split(r"[,\s]+", text) if x], name)
    if text == "all":
        return text
    m = re.fullmatch(r"1\s*/\s*(\d+)", text) or re.fullmatch(
        r"every\s+(\d+)(?:\w*)?\s*(?:layers?)?\s*(?:from|starting at)\s+(\d+)", text
    )
    if m is None:
        raise SWAAConfigError(f"{name} must be {LAYER_LIST_GRAMMAR}; got {value!r}.")
    if int(m.group(1)) < 1:
        raise SWAAConfigError(f"{name} {value!r}: the step must be at least 1.")
    return f"1/{m.group(1)}" if m.lastindex == 1 else f"every {m.group(1)} from {m.group(2)}"


def resolve_layers(parsed: str | list[int], num_layers: int, name: str = "FA layers") -> list[int]:
    """The indices a :func:`parse_layers` result names in a model with ``num_layers`` layers. Raises SWAAConfigError
    naming ``name`` for an index the model does not have."""
    if isinstance(parsed, list):
        beyond = [i for i in parsed if i >= num_layers]
        if beyond:
            raise SWAAConfigError(
                f"{name} names layer(s) {beyond}, but the model has {num_layers} layers (0-{num_layers - 1})."
            )
        return parsed
    if parsed == "all":
        return list(range(num_layers))
    numbers = [int(x) for x in re.findall(r"\d+", parsed)]  # "1/k" -> [1, k]; "every k from s" -> [k, s]
    step, start = numbers if parsed.startswith("every") else (numbers[1], numbers[1] - 1)
    return list(range(start, num_layers, step))


def _layer_list(values, name: str) -> list[int]:
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int):
            try:
                v = int(str(v).strip())
            except ValueError:
                raise SWAAConfigError(f"{name} must hold layer indices (whole numbers), got {v!r}.") from None
        if v < 0:
            raise SWAAConfigError(f"{name} holds a negative layer index ({v}); layers are numbered from 0.")
        out.append(v)
    return sorted(set(out))


def _compact(layers: list[int]) -> str:
    """Layer indices in a short form that still names exactly one list: "1,3,5", or "1,3,...,29" for a longer
    evenly spaced run (first, second and last give the whole list back)."""
    if len(layers) > 3:
        step = layers[1] - layers[0]
        if all(b - a == step for a, b in zip(layers, layers[1:], strict=False)):
            return f"{layers[0]},{layers[1]},...,{layers[-1]}"
    return ",".join(map(str, layers))
