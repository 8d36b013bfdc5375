"""The one validation vocabulary of the package: a few checks that raise early, naming the bad value.

Every validator raises :class:`InvalidValue` (a ``ValueError``) whose message speaks the caller's
language: Python callers read the parameter name (``rho must be a finite number >= 0, got -1``); the CLI
layer re-words the same error with the flag (``--rho must be …``) through :meth:`InvalidValue.as_flag`.
Library code never mentions command-line flags.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

__all__ = ["InvalidValue", "integer", "number", "choice", "boolean", "flag_name"]


def flag_name(param: str) -> str:
    """``grad_accum`` → ``--grad-accum``: how the CLI spells a parameter."""
    return "--" + param.replace("_", "-")


class InvalidValue(ValueError):
    """A bad argument: ``param`` (its Python name), what was expected, and the value received."""

    def __init__(self, param: str, expected: str, value: Any) -> None:
        self.param, self.expected, self.value = param, expected, value
        super().__init__(self._text(param))

    def _text(self, name: str) -> str:
        return f"{name} must be {self.expected}, got {self.value!r}"

    def as_flag(self) -> str:
        """The same sentence with the parameter spelt as a command-line flag."""
        return self._text(flag_name(self.param))


def integer(param: str, value: Any, *, minimum: int = 1) -> int:
    """``value`` as an int ≥ ``minimum`` (bools and floats are refused, numpy integers accepted)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise InvalidValue(param, f"an integer >= {minimum}", value)
    return int(value)


def number(
    param: str,
    value: Any,
    *,
    minimum: float | None = 0.0,
    strict: bool = False,
    maximum: float | None = None,
    strict_max: bool = False,
) -> float:
    """``value`` as a finite float in the stated range (default: ≥ 0; ``strict``: > minimum)."""
    bounds = []
    if minimum is not None:
        bounds.append(f"{'>' if strict else '>='} {minimum:g}")
    if maximum is not None:
        bounds.append(f"{'<' if strict_max else '<='} {maximum:g}")
    expected = "a finite number" + (" " + " and ".join(bounds) if bounds else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise InvalidValue(param, expected, value)
    v = float(value)
    if minimum is not None and (v < minimum or (strict and v == minimum)):
        raise InvalidValue(param, expected, value)
    if maximum is not None and (v > maximum or (strict_max and v == maximum)):
        raise InvalidValue(param, expected, value)
    return v


def choice(param: str, value: Any, choices: Iterable[str]) -> str:
    """``value`` if it is one of ``choices``."""
    options = tuple(choices)
    if value not in options:
        raise InvalidValue(param, "one of " + ", ".join(map(str, options)), value)
    return options[options.index(value)]


def boolean(param: str, value: Any) -> bool:
    """``value`` if it is a bool (0/1 and strings are refused)."""
    if not isinstance(value, bool):
        raise InvalidValue(param, "True or False", value)
    return value
