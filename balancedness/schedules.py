"""Schedules of the BAR coefficient μ_t (spec §4.5.7).

The paper names linear and cosine decay but gives no formulas; we use the standard ones
[ASSUMED], with p = t/T ∈ [0, 1] the fraction of training done:

* constant: μ_t = μ₀
* linear:   μ_t = μ₀ (1 − p)
* cosine:   μ_t = μ₀ · ½ (1 + cos(π p))

Both backends call :func:`mu_at`, so they cannot disagree: the numpy sims with their own p, the torch BAR
optimizer through ``balancedness.optim.schedules`` with p = t/T. ``SCHEDULES`` is the one list of names.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from balancedness.validation import choice

__all__ = ["SCHEDULES", "check_schedule", "mu_at"]

_FORMULAS: dict[str, Callable[[float, float], float]] = {  # (μ₀, p) ↦ μ_t
    "constant": lambda mu0, p: mu0,
    "linear": lambda mu0, p: mu0 * (1.0 - p),
    "cosine": lambda mu0, p: mu0 * 0.5 * (1.0 + math.cos(math.pi * p)),
}
SCHEDULES = tuple(_FORMULAS)


def check_schedule(schedule: str, param: str = "schedule") -> str:
    """``schedule`` if it is one of ``SCHEDULES``; else ``InvalidValue`` naming ``param``."""
    return choice(param, schedule, SCHEDULES)


def mu_at(mu0: float, schedule: str, progress: float) -> float:
    """μ_t for p = ``progress`` = t/T (clipped to [0, 1])."""
    p = min(max(float(progress), 0.0), 1.0)
    return _FORMULAS[check_schedule(schedule)](mu0, p)
