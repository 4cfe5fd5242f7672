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

A real number is checked as the float32 the program computes with (`as_float32`): it
must be finite there, and its limits must hold there too. 1e39 is finite in Python and
infinite in float32; 1e-46 is above 0 in Python and 0 in float32:

    >>> LR.check("lr", 1e39)
    Traceback (most recent call last):
    FieldError: lr must be a finite number > 0 in float32 (at most 3.40282e+38 in magnitude), got 1e+39
    >>> LR.check("lr", 1e-46)
    Traceback (most recent call last):
    FieldError: lr must be a finite number > 0 in float32 (1e-46 is 0 there; its smallest normal number is 1.17549e-38), got 1e-46
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import numbers
from collections.abc import Iterable
from typing import Any

import numpy as np

# The dtype every real setting is computed in: a value is checked as it will be there.
FLOAT32 = np.finfo(np.float32)


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


def as_float32(value: float) -> float:
    """``value`` as the float32 the program computes with (a Python float): infinite past
    float32's range, and 0 below its smallest normal number (1.2e-38), where XLA flushes
    subnormal numbers to zero (``jnp.float32(1e-40) > 0`` is False)."""
    with np.errstate(over="ignore"):
        x = float(np.float32(value))
    return 0.0 if abs(x) < FLOAT32.tiny else x


class Diverged(ValueError):
    """A run whose learned parameters, or the figures that score them, ended non-finite
    (or that never learned: no step of its outer loop had a finite result): its settings
    made it diverge. Raised after the run has written its report, which says so; the
    command line prints it as one ``error:`` line."""


class MissingDependency(ImportError):
    """An optional package that a feature needs is not installed; the message names the
    feature and the ``pip install`` that brings it (a user's mistake, told in one line)."""


@dataclasses.dataclass(frozen=True)
class Bound:
    """The numbers a setting may take: integers or finite reals, within optional limits.

    A real is checked twice: as given, and as the float32 the program computes with
    (`as_float32`), where it must still be finite and within the limits.

    Attributes:
      integer: only integers (bools are refused: ``True`` is not a count).
      low, high: the limits (None: unbounded on that side).
      low_open, high_open: the limit itself is excluded.
      optional: None is valid too (the setting's "not set").
      why: what the limits are for, where the setting's role sets them (a value that is
        inverted or exponentiated); said in the error.
    """

    integer: bool = False
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    optional: bool = False
    why: str = ""

    def describe(self) -> str:
        """The bound in words: "an integer >= 1", "a finite number in (0, 1]"."""
        return self._limits() + (f" ({self.why})" if self.why else "")

    def _limits(self) -> str:
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
        return self.problem(value) is None

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is outside the bound ("must be ..."), or None if it is within."""
        if value is None:
            return None if self.optional else self._must()
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return self._must()
        if self.integer and not isinstance(value, numbers.Integral):
            return self._must()
        if not self._within(value):
            return self._must()
        if self.integer:
            return None
        computed = as_float32(value)
        if not math.isfinite(computed):
            return self._must(f"at most {_num(FLOAT32.max)} in magnitude")
        if not self._within(computed):
            return self._must(f"{float(value)!r} is {_num(computed)} there"
                              + (f"; its smallest normal number is {_num(FLOAT32.tiny)}"
                                 if computed == 0 else ""))
        return None

    def _within(self, value) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def _must(self, in_float32: str | None = None) -> str:
        if in_float32 is None:
            return f"must be {self.describe()}"
        return f"must be {self._limits()} in float32 ({'; '.join(filter(None, (in_float32, self.why)))})"

    def check(self, name: str, value: Any) -> Any:
        """``value`` if it is within the bound, else `FieldError` naming ``name``."""
        problem = self.problem(value)
        if problem is not None:
            raise FieldError(name, f"{problem}, got {value!r}")
        return value

    def parse(self, text: str) -> int | float:
        """A command-line string as a number within the bound (an ``argparse`` type: its
        error becomes "argument --flag: must be ..., got ...")."""
        try:
            value = int(text) if self.integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be {self.describe()}, got {text!r}") from None
        problem = self.problem(value)
        if problem is not None:
            raise argparse.ArgumentTypeError(f"{problem}, got {text}")
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
           optional: bool = False, why: str = "") -> Bound:
    """Finite reals, with at most one lower limit (``above`` excludes it, ``at_least``
    includes it) and one upper (``below`` / ``at_most``); ``why``: what the limits are for,
    where the setting's role sets them."""
    if above is not None and at_least is not None or below is not None and at_most is not None:
        raise TypeError("give one lower and one upper limit at most")
    return Bound(low=above if above is not None else at_least,
                 high=below if below is not None else at_most,
                 low_open=above is not None, high_open=below is not None, optional=optional,
                 why=why)


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
