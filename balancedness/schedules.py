"""Schedules of the BAR coefficient μ_t (spec §4.5.7).

The paper names linear and cosine decay but gives no formulas; we use the standard ones
[ASSUMED], with p = t/T ∈ [0, 1] the fraction of training done:

* constant: μ_t = μ₀
* linear:   μ_t = μ₀ (1 − p)
* cosine:   μ_t = μ₀ · ½ (1 + cos(π p))

Both backends (numpy sims and torch) call :func:`mu_at`, so they cannot disagree.
"""

from __future__ import annotations

import math

SCHEDULES = ("constant", "linear", "cosine")


def check_schedule(schedule: str) -> str:
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; expected one of {', '.join(SCHEDULES)}")
    return schedule


def mu_at(mu0: float, schedule: str, progress: float) -> float:
    """μ_t for p = ``progress`` = t/T (clipped to [0, 1])."""
    p = min(max(float(progress), 0.0), 1.0)
    if schedule == "constant":
        return mu0
    if schedule == "linear":
        return mu0 * (1.0 - p)
    if schedule == "cosine":
        return mu0 * 0.5 * (1.0 + math.cos(math.pi * p))
    raise ValueError(f"unknown schedule {schedule!r}; expected one of {', '.join(SCHEDULES)}")
