"""What a valid size, count, rate or choice is: the one place that says so, used alike by
the configs' constructors (the Python API) and by every command line.

A `Bound` describes the numbers a setting may take. It checks a value
(`Bound.check`, raising `FieldError`) and parses a command-line string
(`Bound.parse`, an ``argparse`` type). A config dataclass declares a field's bound
with `field`, and checks every declared field in ``__post_init__`` with
`validate`; the command lines generate their flags from the same declarations, so the
two can never disagree.

    >>> LR = number(above=0)
    >>> LR.describe()
    'a finite number > 0'
    >>> LR.check("lr", float("nan"))
    Traceback (most recent call last):
    FieldError: lr must be a finite number > 0, got nan

Every number is finite: NaN and infinity are never a valid setting. A count that may be 0
says so (``integer(at_least=0)``); nothing is silently raised to a floor.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import numbers
from collections.abc import Iterable
from typing import Any


class FieldError(ValueError):
    """A setting outside what it may take; ``field`` names it (a config field or a flag)."""

    def __init__(self, field: str, problem: str, other: str | None = None):
        super().__init__(f"{field} {problem}")
        self.field, self.problem, self.other = field, problem, other

    def renamed(self, name_of) -> FieldError:
        """The same error with its settings named by ``name_of(name)`` (a config field by
        its command-line flag, say); ``other`` is a second setting the problem names."""
        problem = self.problem
        if self.other is not None:
            problem = problem.replace(self.other, name_of(self.other))
        return FieldError(name_of(self.field), problem,
                          None if self.other is None else name_of(self.other))


class MissingDependency(ImportError):
    """An optional package that a feature needs is not installed; the message names the
    feature and the ``pip install`` that brings it (a user's mistake, told in one line)."""


@dataclasses.dataclass(frozen=True)
class Bound:
    """The numbers a setting may take: integers or finite reals, within optional limits.

    Attributes:
      integer: only integers (bools are refused: ``True`` is not a count).
      low, high: the limits (None: unbounded on that side).
      low_open, high_open: the limit itself is excluded.
      optional: None is valid too (the setting's "not set").
    """

    integer: bool = False
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    optional: bool = False

    def describe(self) -> str:
        """The bound in words: "an integer >= 1", "a finite number in (0, 1]"."""
        what = "an integer" if self.integer else "a finite number"
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"{what} in {left}{_num(self.low)}, {_num(self.high)}{right}"
        if self.low is not None:
            return f"{what} {'>' if self.low_open else '>='} {_num(self.low)}"
        if self.high is not None:
            return f"{what} {'<' if self.high_open else '<='} {_num(self.high)}"
        return what

    def holds(self, value: Any) -> bool:
        if value is None:
            return self.optional
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return False
        if self.integer and not isinstance(value, numbers.Integral):
            return False
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def check(self, name: str, value: Any) -> Any:
        """``value`` if it is within the bound, else `FieldError` naming ``name``."""
        if not self.holds(value):
            raise FieldError(name, f"must be {self.describe()}, got {value!r}")
        return value

    def parse(self, text: str) -> int | float:
        """A command-line string as a number within the bound (an ``argparse`` type: its
        error becomes "argument --flag: must be ..., got ...")."""
        try:
            value = int(text) if self.integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be {self.describe()}, got {text!r}") from None
        if not self.holds(value):
            raise argparse.ArgumentTypeError(f"must be {self.describe()}, got {text}")
        return value

    def __call__(self, text: str) -> int | float:
        return self.parse(text)


def _num(x: float) -> str:
    return f"{x:g}"


def integer(at_least: int | None = None, at_most: int | None = None,
            optional: bool = False) -> Bound:
    """Integers in [at_least, at_most]."""
    return Bound(integer=True, low=at_least, high=at_most, optional=optional)


def number(above: float | None = None, at_least: float | None = None,
           below: float | None = None, at_most: float | None = None,
           optional: bool = False) -> Bound:
    """Finite reals, with at most one lower limit (``above`` excludes it, ``at_least``
    includes it) and one upper (``below`` / ``at_most``)."""
    if above is not None and at_least is not None or below is not None and at_most is not None:
        raise TypeError("give one lower and one upper limit at most")
    return Bound(low=above if above is not None else at_least,
                 high=below if below is not None else at_most,
                 low_open=above is not None, high_open=below is not None, optional=optional)


# The bounds most settings take.
SIZE = integer(at_least=1)              # a width, a batch, a length
COUNT = integer(at_least=0)             # how many (0: none)
SEED = integer(at_least=-2**31, at_most=2**31 - 1)  # what jax.random.key takes everywhere
RATE = number(above=0)                  # a step size, a std, a clip norm
NONNEGATIVE = number(at_least=0)        # a penalty, a noise level, a floor
FACTOR = number(above=0, at_most=1)     # a per-step decay (1: none)
FRACTION = number(at_least=0, at_most=1)


def field(default: Any, bound: Bound, **kwargs) -> Any:
    """A dataclass field whose values `validate` checks against ``bound``."""
    return dataclasses.field(default=default, metadata={"bound": bound}, **kwargs)


def bound_of(f: dataclasses.Field) -> Bound | None:
    """The bound a dataclass field was declared with (`field`), if any."""
    return f.metadata.get("bound")


def validate(obj: Any, prefix: str = "") -> None:
    """Check every field of the dataclass ``obj`` declared with a bound; the error names
    the field as ``prefix + name``."""
    for f in dataclasses.fields(obj):
        bound = bound_of(f)
        if bound is not None:
            bound.check(f"{prefix}{f.name}", getattr(obj, f.name))


def choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """``value`` if it is one of ``choices``, else `FieldError` listing them."""
    choices = tuple(choices)
    if value not in choices:
        raise FieldError(name, f"must be one of {list(choices)}, got {value!r}")
    return value


def at_most_field(name: str, value: float, limit_name: str, limit: float) -> None:
    """Refuse ``value > limit`` where both are settings (``lr_min`` above ``lr``): one
    setting is a floor or cap of another, and a value past it is an error, never raised or
    lowered silently."""
    if value > limit:
        raise FieldError(name, f"({value:g}) must not exceed {limit_name} ({limit:g})",
                         other=limit_name)
