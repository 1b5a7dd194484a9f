"""The task kinds by name: one builder per file of this package, their aliases, and the two ways to build samples
(:func:`make_task` for one, :func:`make_samples` for a set over seeds and depths).

A new kind is one file with a builder ``(tokenizer, *, length_tokens, depth, seed, **kw) -> TaskSample`` plus its
entry in :data:`BUILDERS`."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable

from .base import TaskError, TaskSample
from .common_words import check_freq_common, check_freq_rare, check_frequencies, check_num_common, common_words
from .doc_qa import doc_qa
from .haystack import check_digits, check_haystack
from .multi_key import check_num_keys as check_multi_key_count
from .multi_key import multi_key
from .multi_value import check_num_values, check_value_room, multi_value
from .needle import needle
from .passkey import passkey
from .variable_tracking import check_num_hops, variable_tracking

BUILDERS: dict[str, Callable[..., TaskSample]] = {
    "passkey": passkey,
    "needle": needle,
    "multi_key": multi_key,
    "multi_value": multi_value,
    "variable_tracking": variable_tracking,
    "common_words": common_words,
    "doc_qa": doc_qa,
}
TASK_KINDS = tuple(BUILDERS)
DEPTHLESS = frozenset({"common_words", "doc_qa"})  # no needle: a depth changes nothing in their samples
SEEDLESS = frozenset({"doc_qa"})  # the user's own text: a seed changes nothing in their samples
# The extra keywords each kind takes (its options beside length, depth and seed), with the types of their values
# (None: the builder's own default). tests/swaa_core/cli/test_cli_option_rules.py checks it against the builders.
_NONE = type(None)
TASK_OPTIONS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "passkey": {"digits": int, "haystack": str},
    "needle": {"digits": int, "haystack": str},
    "multi_key": {"num_keys": int, "digits": int, "haystack": str},
    "multi_value": {"num_values": int, "digits": int, "haystack": str},
    "variable_tracking": {"num_hops": int, "digits": int, "haystack": str},
    "common_words": {"num_common": int, "freq_common": (int, _NONE), "freq_rare": int},
    "doc_qa": {
        "document": (str, _NONE),
        "question": (str, _NONE),
        "answer": (str, list, tuple, _NONE),
        "answer_prefix": (str, _NONE),
    },
}
# The builders' own checks of single option values (each builder calls them), so that a command can refuse a bad
# value before any model loads in the builder's words (:func:`check_task_options`). Options without an entry take any
# value of their type. tests/swaa_core/eval/test_tasks.py checks each against its builder.
_HAYSTACK_CHECKS = {"digits": check_digits, "haystack": check_haystack}
OPTION_CHECKS: dict[str, dict[str, Callable[[object], None]]] = {
    "passkey": _HAYSTACK_CHECKS,
    "needle": _HAYSTACK_CHECKS,
    "multi_key": {"num_keys": check_multi_key_count, **_HAYSTACK_CHECKS},
    "multi_value": {"num_values": check_num_values, **_HAYSTACK_CHECKS},
    "variable_tracking": {"num_hops": check_num_hops, **_HAYSTACK_CHECKS},
    "common_words": {"num_common": check_num_common, "freq_common": check_freq_common, "freq_rare": check_freq_rare},
    "doc_qa": {},
}
# The builders' checks of options taken together (each builder calls them too), with the builder's defaults filled in.
JOINT_CHECKS: dict[str, Callable[[dict], None]] = {
    "multi_value": lambda kw: check_value_room(kw["num_values"], kw["digits"]),
    "common_words": lambda kw: check_frequencies(kw["freq_common"], kw["freq_rare"]),
}
_KIND_ALIASES = {
    "niah": "needle",
    "niah_single": "needle",
    "multikey": "multi_key",
    "niah_multikey": "multi_key",
    "multivalue": "multi_value",
    "niah_multivalue": "multi_value",
    "vt": "variable_tracking",
    "variables": "variable_tracking",
    "cwe": "common_words",
    "common_word_frequency": "common_words",
    "qa": "doc_qa",
    "document_qa": "doc_qa",
}


def make_task(kind: str, tokenizer, *, length_tokens: int | None, depth: float | None = 0.5, seed: int = 0, **kw):
    """Build one sample of ``kind`` (see :data:`TASK_KINDS`) with ``length_tokens`` prompt tokens.

    Extra keywords per kind: passkey/needle ``digits``; multi_key ``num_keys``; multi_value ``num_values``;
    variable_tracking ``num_hops``; common_words ``num_common``; every haystack kind ``haystack`` (your own filler
    text instead of the built-in sentences); doc_qa ``document``, ``question``, ``answer``, ``answer_prefix``.
    """
    key = task_kind(kind)
    _check_options(key, kw)
    if key != "doc_qa":
        if not isinstance(length_tokens, int) or length_tokens < 1:
            raise TaskError(f"length_tokens must be a positive whole number for {key}, got {length_tokens!r}.")
        if depth is not None:
            check_depth(depth)
    return BUILDERS[key](tokenizer, length_tokens=length_tokens, depth=depth, seed=int(seed), **kw)


def check_depth(depth) -> float:
    """``depth`` as a float from 0 to 1, or TaskError saying what a depth is (a page's text is read as a number)."""
    try:
        value = float(depth)
    except (TypeError, ValueError):
        value = math.nan
    if not 0.0 <= value <= 1.0:
        raise TaskError(f"depth must be between 0 (start of the context) and 1 (end), got {depth!r}.")
    return value


def check_task_options(kind: str, kw: dict) -> None:
    """TaskError, in the builder's words, for an option ``kind`` does not take, a value of the wrong type or one the
    builder refuses; run without a tokenizer, so before any model loads."""
    key = task_kind(kind)
    _check_options(key, kw)
    for name, value in kw.items():
        if check := OPTION_CHECKS[key].get(name):
            check(value)
    if joint := JOINT_CHECKS.get(key):
        defaults = {
            n: p.default for n, p in inspect.signature(BUILDERS[key]).parameters.items() if n in TASK_OPTIONS[key]
        }
        joint(defaults | kw)


def check_grid(kind: str, seeds: list, depths) -> None:
    """ValueError when a grid of ``seeds`` x ``depths`` would repeat one sample of ``kind`` (a task name or alias):
    depths other than None for a kind without a needle (:data:`DEPTHLESS`), several seeds for one that reads the
    user's own text (:data:`SEEDLESS`)."""
    key = task_kind(kind)
    if key in DEPTHLESS and depths is not None and any(d is not None for d in depths):
        raise ValueError(f"{key} hides no needle, so every depth gives the same sample: leave the depths out (got "
                         f"{list(depths)}).")  # fmt: skip
    if key in SEEDLESS and len(seeds) > 1:
        raise ValueError(f"{key} reads your own text, so every seed gives the same sample: ask for one sample (got "
                         f"{len(seeds)} seeds).")  # fmt: skip


def task_kind(kind: str) -> str:
    """The kind's name in :data:`TASK_KINDS` (aliases and spellings such as "multi-key" resolved); TaskError when
    there is no such kind."""
    key = kind.strip().lower().replace("-", "_") if isinstance(kind, str) else kind
    key = _KIND_ALIASES.get(key, key)
    if key not in BUILDERS:
        raise TaskError(f"Unknown task {kind!r}. Choose one of: {', '.join(TASK_KINDS)}.")
    return key


def task_option_names(kind: str) -> tuple[str, ...]:
    """The extra keywords ``kind`` takes (:data:`TASK_OPTIONS`)."""
    return tuple(TASK_OPTIONS[task_kind(kind)])


def _check_options(key: str, kw: dict) -> None:
    """TaskError naming an option the kind does not take, or a value of the wrong type (instead of the builder's
    TypeError)."""
    accepted = TASK_OPTIONS[key]
    for name, value in kw.items():
        if name not in accepted:
            takes = f"its options: {', '.join(accepted)}" if accepted else "it takes none"
            raise TaskError(f"Task {key} has no option {name!r}; {takes}.")
        kinds = accepted[name] if isinstance(accepted[name], tuple) else (accepted[name],)
        if isinstance(value, bool) or not isinstance(value, kinds):
            want = " or ".join(dict.fromkeys(_TYPE_WORDS[k] for k in kinds if k is not _NONE))
            raise TaskError(f"Task {key}: option {name} takes {want}, got {value!r}.")


_TYPE_WORDS = {int: "a whole number", str: "text", list: "a list of texts", tuple: "a list of texts"}


def make_samples(
    kind: str,
    tokenizer,
    *,
    length_tokens: int | None,
    seeds: Iterable[int],
    depths: Iterable[float | None] | None = None,
    **kw,
) -> list[TaskSample]:
    """Samples of ``kind`` for every seed (in order), each at every depth of ``depths``; ``depths=None`` gives one
    sample per seed with the depths spread evenly over the context, ``(i + 0.5) / n`` for the i-th of n seeds.
    Other keywords go to :func:`make_task`. Raises :class:`ValueError` when there are no seeds, and
    (:func:`check_grid`) for depths of a kind without a needle or several seeds of a kind that reads the user's text:
    those would be identical samples, counted as if they were several."""
    seeds = list(seeds)
    if not seeds:
        raise ValueError("No samples asked for: the number of samples (seeds) must be a whole number >= 1.")
    key = task_kind(kind)
    check_grid(key, seeds, depths)
    if depths is None:
        pairs = [(seed, (i + 0.5) / len(seeds)) for i, seed in enumerate(seeds)]
    else:
        depths = list(depths)
        pairs = [(seed, depth) for seed in seeds for depth in depths]
    return [make_task(kind, tokenizer, length_tokens=length_tokens, depth=d, seed=s, **kw) for s, d in pairs]
