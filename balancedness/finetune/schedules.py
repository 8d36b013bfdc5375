"""μ_t for the torch BAR optimizer: the shared ``balancedness.schedules.mu_at`` (spec §4.5.7) at p = t/T.

t counts BAR steps already taken (0 at the first step), T is ``total_steps``; past T, p is clipped to 1
(linear and cosine stay at 0). Only T's validation is torch-specific.
"""

from __future__ import annotations

from balancedness.schedules import SCHEDULES
from balancedness.schedules import check_schedule as _check_name
from balancedness.schedules import mu_at

__all__ = ["SCHEDULES", "check_schedule", "scheduled_mu"]


def check_schedule(schedule: str, total_steps: int | None) -> None:
    """Raise ValueError for an unknown schedule or a missing/invalid T where the schedule needs one."""
    _check_name(schedule)
    if schedule != "constant":
        if total_steps is None:
            raise ValueError(f"schedule={schedule!r} needs total_steps (T in μ_t); got total_steps=None")
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps <= 0:
            raise ValueError(f"total_steps must be a positive int, got {total_steps!r}")


def scheduled_mu(mu0: float, schedule: str, t: int, total_steps: int | None) -> float:
    """μ_t = mu_at(μ₀, schedule, t/T)."""
    return mu_at(mu0, schedule, 0.0 if schedule == "constant" else t / total_steps)
