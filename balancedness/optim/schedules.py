"""μ_t of the torch BAR optimizer, by step: the shared ``balancedness.schedules.mu_at`` (spec §4.5.7) at
p = t/T.

t counts BAR steps already taken (0 at the first step) and T is ``total_steps``; past T, p is clipped to 1
(linear and cosine stay at 0). The formulas and the list of names live in ``balancedness.schedules`` only;
what is torch-side is the step count and the check that T is known where the schedule needs it.
"""

from __future__ import annotations

from balancedness.schedules import SCHEDULES, check_schedule, mu_at
from balancedness.validation import InvalidValue, integer

__all__ = ["SCHEDULES", "check_schedule", "check_total_steps", "scheduled_mu"]


def check_total_steps(schedule: str, total_steps: int | None, param: str = "total_steps") -> int | None:
    """T as an int ≥ 1; ``None`` is allowed only for the constant schedule (which does not use T)."""
    if total_steps is None:
        if schedule != "constant":
            raise InvalidValue(param, f"an integer >= 1 (T of the {schedule!r} μ schedule)", None)
        return None
    return integer(param, total_steps)


def scheduled_mu(mu0: float, schedule: str, t: int, total_steps: int | None) -> float:
    """μ_t = mu_at(μ₀, schedule, t/T) (T is not used by, and may be None for, the constant schedule)."""
    return mu_at(mu0, schedule, 0.0 if schedule == "constant" else t / check_total_steps(schedule, total_steps))
