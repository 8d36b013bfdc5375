"""μ_t of the torch BAR optimizer, by step: the shared ``balancedness.schedules.mu_at`` (spec §4.5.7) at
p = t/T, driven by ``BARScheduler`` (μ_t in the optimizer's param groups, t and T in its state).

t counts BAR steps already taken (0 at the first step) and T is ``total_steps``; past T, p is clipped to 1
(linear and cosine stay at 0). The formulas and the list of names live in ``balancedness.schedules`` only;
what is torch-side is the step count, the check that T is known where the schedule needs it, and reading T
off the LR scheduler the optimizer runs with (``scheduler_total_steps``).
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

from balancedness.schedules import SCHEDULES, check_schedule, mu_at
from balancedness.validation import InvalidValue, integer

__all__ = ["SCHEDULES", "BARScheduler", "check_schedule", "check_total_steps", "scheduled_mu", "scheduler_total_steps"]


def check_total_steps(schedule: str, total_steps: int | None, param: str = "total_steps") -> int | None:
    """T as an int ≥ 1; ``None`` is allowed only for the constant schedule (which does not use T)."""
    if total_steps is None:
        if schedule != "constant":
            raise InvalidValue(param, f"an integer >= 1 (T of the {schedule!r} μ schedule)", None)
        return None
    return integer(param, total_steps)


def scheduled_mu(mu0: float, schedule: str, t: int, total_steps: int | None) -> float:
    """μ_t = mu_at(μ₀, schedule, t/T) (T is not used by, and may be None for, the constant schedule)."""
    if schedule == "constant":
        return mu_at(mu0, schedule, 0.0)
    total = check_total_steps(schedule, total_steps)  # an int >= 1 for the other schedules (else InvalidValue)
    return mu_at(mu0, schedule, t / total if total else 0.0)


# T of torch's own schedulers, by the attribute that holds it
_TOTAL_ATTRS = {
    "OneCycleLR": "total_steps",
    "CosineAnnealingLR": "T_max",
    "LinearLR": "total_iters",
    "PolynomialLR": "total_iters",
}


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
    raise TypeError(
        f"cannot read the number of training steps off {type(inner).__name__} (a schedule without an "
        "end, or an unknown scheduler class): pass total_steps=T to the BAR optimizer instead"
    )


class BARScheduler:
    """μ_t of a BAR optimizer, written into its param groups (``group["bar_mu"]``), by step t of T.

        μ_t = mu_at(μ₀, schedule, t/T)    (spec §4.5.7; μ₀ = the group's ``mu``, kept as ``"initial_bar_mu"``)

    ``BARScheduler(optimizer, schedule, total_steps)``, created next to the LR scheduler: ``total_steps`` is T (an
    int ≥ 1), the LR scheduler itself (T read with ``scheduler_total_steps``), ``"scheduler"`` (T follows with
    ``sync_total_steps``; a step before that raises) or None (constant only). A BAR optimizer makes its own from
    its ``schedule``/``total_steps`` arguments; a new one replaces it (``BARTrainer`` does when it learns T).

    It advances with its optimizer (a step post-hook): t is the number of steps the optimizer has taken, in any
    loop (the stock Trainer, accelerate, a hand-written one) with nothing to call; a step that a GradScaler skips
    is not taken and does not count. Its state (t, T) is ``state_dict()``, and travels in the optimizer's
    ``state_dict()`` under ``"bar"``, so every checkpoint of the optimizer resumes the schedule.
    """

    def __init__(self, optimizer: Any, schedule: str = "constant", total_steps: Any = None) -> None:
        optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer
        if "bar_mu" not in getattr(optimizer, "defaults", {}):
            raise TypeError(
                f"BARScheduler needs a BAR optimizer (create_bar_optimizer, bar_optimizer_class), got "
                f"{type(optimizer).__name__}"
            )
        self.schedule = check_schedule(schedule)
        self.awaits_total_steps = total_steps == "scheduler" and self.schedule != "constant"
        if total_steps == "scheduler":
            total_steps = None
        elif total_steps is not None and not isinstance(total_steps, (int, float, str)):  # the LR scheduler
            total_steps = scheduler_total_steps(total_steps)
        self.total_steps = None if self.awaits_total_steps else check_total_steps(self.schedule, total_steps)
        self.optimizer, self.step_count, self._warned = optimizer, 0, False
        previous = getattr(optimizer, "bar_scheduler", None)
        if previous is not None:
            previous._hook.remove()
        self._hook = optimizer.register_step_post_hook(lambda *_: self.step())
        optimizer.bar_scheduler = self
        self.apply()

    def step(self) -> None:
        """t ← t + 1 and μ_t into the groups: run by the optimizer after each of its steps (not by the loop).
        Warns once on the first step past T (μ stays 0 from there on for linear/cosine)."""
        if (
            self.total_steps is not None
            and self.schedule != "constant"
            and self.step_count >= self.total_steps
            and not self._warned
        ):
            warnings.warn(
                f"BAR step {self.step_count + 1} is past total_steps={self.total_steps}, the T of its "
                f"{self.schedule!r} μ schedule: μ stays 0 from here. Give the optimizer the number of "
                "training steps (BARTrainer does), or take it from the LR scheduler "
                "(BARScheduler(opt, schedule, total_steps=lr_scheduler))",
                stacklevel=2,
            )
            self._warned = True
        self.step_count += 1
        self.apply()

    def apply(self) -> None:
        """Write μ_t into every param group (None while T is awaited); also after the groups were replaced
        (``load_state_dict``)."""
        default = self.optimizer.defaults.get("bar_mu")
        for group in self.optimizer.param_groups:
            mu0 = group.setdefault("initial_bar_mu", group.get("bar_mu", default))
            group["bar_mu"] = (
                None if self.awaits_total_steps else scheduled_mu(mu0, self.schedule, self.step_count, self.total_steps)
            )

    def sync_total_steps(self, lr_scheduler: Any) -> int:
        """Take T from the LR scheduler the optimizer runs with (``scheduler_total_steps``), or, when T is already
        set, check that the two agree (ValueError if not: μ would reach 0 at another step than the learning
        rate). A constant μ schedule ignores T. Returns the scheduler's T."""
        total = scheduler_total_steps(lr_scheduler)
        if self.schedule == "constant":
            return total
        if self.total_steps is not None and self.total_steps != total:
            raise ValueError(
                f"the BAR optimizer's μ schedule runs over total_steps={self.total_steps} but the LR "
                f"scheduler over {total} steps; they must agree"
            )
        self.total_steps, self.awaits_total_steps = total, False
        self.apply()
        return total

    def state_dict(self) -> dict[str, Any]:
        """t (``"step"``), T, the schedule and μ₀ (of the first group)."""
        mu0 = self.optimizer.param_groups[0].get("initial_bar_mu")
        return {"step": self.step_count, "mu": mu0, "schedule": self.schedule, "total_steps": self.total_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at the saved t. A saved T that differs from this one (linear/cosine) raises ValueError, with
        nothing changed: t/T would silently change meaning."""
        saved_total = state.get("total_steps")
        if self.schedule != "constant" and saved_total not in (None, self.total_steps):
            raise ValueError(
                f"the BAR state was saved with total_steps={saved_total} (T of the μ schedule) but this "
                f"optimizer has total_steps={self.total_steps}; resume with the same number of training steps"
            )
        self.step_count = int(state["step"])
        self.apply()
