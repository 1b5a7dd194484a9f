"""The run value: every setting a run is made under besides the model, the prompt, the config and its label.

One frozen value from every surface to the runner: the app's page and API, ``swaa run / eval / sweep``, sweeps
(:class:`~swaa_core.eval.sweep.SweepSpec` holds one) and :func:`~swaa_core.eval.runner.compare` build it, and
:func:`~swaa_core.eval.runner.run_one` reads it. It is checked once, when it is made: a RunSpec that exists is one
every run can take, and a bad setting is refused with a message naming its field. What watches a run rather than
shapes it (the token stream, the stop event) is not part of it, so two equal values run alike and key alike.
Importing this module imports no torch (the command line builds the value before a model loads).
"""

from __future__ import annotations

from dataclasses import InitVar, dataclass, fields

from ..engine.config import BACKENDS
from ..engine.decode_path import DecodePath
from .timing import DEFAULT_TIMING_TOKENS


@dataclass(frozen=True)
class RunSpec:
    """How a prompt is run (greedy, one row).

    max_new_tokens: most tokens of the answer (>= 1). cot: chain of thought on (:mod:`swaa_core.eval.cot`).
    system: a system message (None: the model's template default). backend: the SWA kernel, one of
    :data:`~swaa_core.engine.config.BACKENDS`. warmup: one untimed generation per (config, backend, decode path)
    first. score_logprob: also the teacher-forced log-likelihood of a task's reference answer (one more prefill,
    untimed). timing_tokens: the run generates at least this many tokens (past the answer, unseen) so that decode
    speeds compare like for like; 0 times the answer's own tokens only (>= 0). decode_path: "auto", "fixed" or
    "eager" (:class:`~swaa_core.engine.decode_path.DecodePath`; stored as that value). static_cache: the older
    spelling of decode_path (True: "fixed", False: "eager"), merged into it here and not kept.

    Raises ValueError naming the field for a value of the wrong kind or out of range, and for a decode path that
    contradicts ``static_cache``."""

    max_new_tokens: int = 32
    cot: bool = False
    system: str | None = None
    backend: str = "auto"
    warmup: bool = True
    score_logprob: bool = True
    timing_tokens: int = DEFAULT_TIMING_TOKENS
    decode_path: DecodePath = DecodePath.AUTO
    static_cache: InitVar[bool | None] = None

    def __post_init__(self, static_cache: bool | None) -> None:
        object.__setattr__(self, "decode_path", DecodePath.of(self.decode_path, static_cache=static_cache))
        _whole(self.max_new_tokens, "max_new_tokens", 1)
        _whole(self.timing_tokens, "timing_tokens", 0)
        for name in ("cot", "warmup", "score_logprob"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}.")
        if self.system is not None and not isinstance(self.system, str):
            raise ValueError(f"system must be text or None, got {type(self.system).__name__}.")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {self.backend!r}.")

    @classmethod
    def of(cls, spec: RunSpec | None = None, /, **settings) -> RunSpec:
        """``spec`` itself, or the RunSpec of ``settings`` (the keywords run_one, compare and evaluate have always
        taken). TypeError for a keyword that is no setting, or for settings given beside ``spec``; ValueError for a
        bad value (see the class)."""
        check_keywords(spec, settings)
        return cls(**settings) if spec is None else spec


# The keywords a RunSpec is made from: its fields and the older static_cache.
SETTINGS = frozenset({f.name for f in fields(RunSpec)} | {"static_cache"})


def check_keywords(spec: RunSpec | None, settings: dict) -> None:
    """TypeError, as Python raises for a bad keyword, for a setting name that is not one, for ``spec`` that is not
    a RunSpec, or for settings beside ``spec`` (one of the two would be ignored)."""
    unknown = sorted(set(settings) - SETTINGS)
    if unknown:
        raise TypeError(f"Unknown run setting(s) {unknown}; the settings are {sorted(SETTINGS)}.")
    if spec is None:
        return
    if not isinstance(spec, RunSpec):
        raise TypeError(f"spec must be a RunSpec, got {type(spec).__name__}.")
    if settings:
        raise TypeError(f"Give the run settings either as spec= or as keywords, not both: {sorted(settings)}.")


def _whole(value, name: str, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be a whole number >= {low}, got {value!r}.")
