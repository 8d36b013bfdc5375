"""μ_t of the torch BAR optimizer, by step: the shared ``balancedness.schedules.mu_at`` (spec §4.5.7) at
p = t/T.

t counts BAR steps already taken (0 at the first step) and T is ``total_steps``; past T, p is clipped to 1
(linear and cosine stay at 0). The formulas and the list of names live in ``balancedness.schedules`` only;
what is torch-side is the step count, the check that T is known where the schedule needs it, and reading T
off the LR scheduler the optimizer runs with (``scheduler_total_steps``).
"""

from __future__ import annotations

import functools
from typing import Any

from balancedness.schedules import SCHEDULES, check_schedule, mu_at
from balancedness.validation import InvalidValue, integer

__all__ = ["SCHEDULES", "check_schedule", "check_total_steps", "scheduled_mu", "scheduler_total_steps"]


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


# T of torch's own schedulers, by the attribute that holds it
_TOTAL_ATTRS = {"OneCycleLR": "total_steps", "CosineAnnealingLR": "T_max", "LinearLR": "total_iters",
                "PolynomialLR": "total_iters"}


def scheduler_total_steps(scheduler: Any) -> int:
    """T, the number of steps an LR scheduler runs over: ``num_training_steps`` of the Hugging Face schedules
    (``transformers.get_scheduler`` / ``get_{linear,cosine,...}_schedule_with_warmup``, LambdaLRs over a
    ``functools.partial``), ``total_steps``/``T_max``/``total_iters`` of torch's OneCycleLR, CosineAnnealingLR,
    LinearLR and PolynomialLR. accelerate's wrapper is looked through. TypeError for a scheduler without a T."""
    inner = getattr(scheduler, "scheduler", scheduler)  # accelerate's AcceleratedScheduler
    for lr_lambda in getattr(inner, "lr_lambdas", ()):
        if isinstance(lr_lambda, functools.partial) and "num_training_steps" in lr_lambda.keywords:
            return integer("num_training_steps", lr_lambda.keywords["num_training_steps"])
    attr = _TOTAL_ATTRS.get(type(inner).__name__)
    if attr is not None:
        return integer(attr, getattr(inner, attr))
    raise TypeError(f"cannot read the number of training steps off {type(inner).__name__} (a schedule without an "
                    "end, or an unknown scheduler class): pass total_steps=T to the BAR optimizer instead")
