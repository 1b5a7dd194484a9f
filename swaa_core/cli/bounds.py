"""The range of every numeric option, checked at parse time.

Out-of-range values stop with argparse's own "argument --x: must be ..." message (exit code 2) instead of failing
deep inside a run; one table for every subcommand, so the same option means the same range everywhere.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

MAX_TOKENS = 1 << 24  # 16.7M tokens: beyond any model's context, so a larger value is a typo
MAX_COUNT = 100_000  # samples, steps, ...: a bigger run would take weeks on any machine


@dataclass(frozen=True)
class Bound:
    """The range of one numeric option; ``open_low`` excludes ``low`` itself (learning rate, epochs)."""

    kind: type
    low: float
    high: float | None
    open_low: bool = False
    open_high: bool = False

    def __call__(self, text: str):
        try:
            value = self.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {self._noun()}, got {text!r}") from None
        below = value <= self.low if self.open_low else value < self.low
        above = self.high is not None and (value >= self.high if self.open_high else value > self.high)
        if (isinstance(value, float) and not math.isfinite(value)) or below or above:
            raise argparse.ArgumentTypeError(f"must be {self._noun()} {self._range()}, got {text}")
        return value

    def check(self, value, name: str):
        """``value`` (a number, or text as typed) as this option's kind when it is in range; otherwise ValueError
        "{name}: must be ..." / "{name}: expected ...", the words argparse prints after "argument --option:", so the
        app, its API and the command line refuse a value by one rule in one message."""
        try:
            return self(str(int(value)) if self.kind is int and isinstance(value, float) and value.is_integer()
                        else str(value))  # fmt: skip
        except (argparse.ArgumentTypeError, OverflowError, ValueError) as e:
            raise ValueError(f"{name}: {e}") from None

    def _noun(self) -> str:
        return "a whole number" if self.kind is int else "a number"

    def _range(self) -> str:
        low = f"{'>' if self.open_low else '>='} {self.low:{self._fmt}}"
        if self.high is None:
            return low
        if self.kind is int:
            return f"from {self.low:,} to {self.high:,}"
        return f"{low} and {'<' if self.open_high else '<='} {self.high:{self._fmt}}"

    @property
    def _fmt(self) -> str:
        return "," if self.kind is int else "g"


_TOKENS = Bound(int, 1, MAX_TOKENS)
# Every numeric option of every subcommand by its dest; tests check that none is missing.
NUMERIC_OPTIONS: dict[str, Bound] = {
    "max_new_tokens": _TOKENS,
    "window": _TOKENS,
    "length": _TOKENS,
    "lengths": _TOKENS,
    "context": _TOKENS,
    "eval_length": _TOKENS,
    "max_length": _TOKENS,
    "keep_first": Bound(int, 0, MAX_TOKENS),
    "timing_tokens": Bound(int, 0, MAX_TOKENS),  # 0: time each answer's own tokens
    "samples": Bound(int, 1, MAX_COUNT),
    "eval_samples": Bound(int, 0, MAX_COUNT),
    "steps": Bound(int, 1, MAX_COUNT),
    "limit": Bound(int, 1, None),  # more than the dataset holds just means all of it
    "seed": Bound(int, 0, 2**32 - 1),  # torch and numpy seeds are 32/64-bit
    "layers": Bound(int, 1, 10_000),
    "rank": Bound(int, 1, 65_536),
    "alpha": Bound(int, 1, 65_536),
    "batch_size": Bound(int, 1, 65_536),
    "grad_accum": Bound(int, 1, MAX_COUNT),
    "depth": Bound(float, 0, 1),
    "depths": Bound(float, 0, 1),
    "epochs": Bound(float, 0, 1000, open_low=True),
    "lr": Bound(float, 0, 1, open_low=True),
    "dropout": Bound(float, 0, 1, open_high=True),
    "processes": Bound(int, 1, 4096),
    "full_layers": Bound(int, 1, 10_000),  # 0 is plain SWA: nothing to choose; more than the model has: eval.budget
    "prefill_budget": Bound(float, 0, 1, open_low=True, open_high=True),  # a fraction of full attention's FLOPs
    "kv_budget": Bound(float, 0, None, open_low=True),  # GiB
    "held_out": Bound(int, 1, MAX_COUNT),
}


def numeric_actions(parser: argparse.ArgumentParser):
    """(subcommand path, action) for every int/float option below ``parser``, subcommands included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from numeric_actions(sub)
        elif action.type in (int, float) or isinstance(action.type, Bound):
            yield parser.prog, action


def bound_numbers(parser: argparse.ArgumentParser) -> None:
    """Give every int/float option below ``parser`` its range from NUMERIC_OPTIONS."""
    for _prog, action in numeric_actions(parser):
        bound = NUMERIC_OPTIONS.get(action.dest)
        if bound is not None and action.type is bound.kind:
            action.type = bound
