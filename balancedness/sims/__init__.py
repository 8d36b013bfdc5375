"""Simulators of SGD, SNGD, SAM, m-sharpness SAM, nBAR and oBAR on the paper's toy problems, and of the flatness
methods Flat-LoRA, Bi-LoRA and ASAM beside them (spec/flatness-methods.md).

``directions`` holds each optimizer's math once, as a registered direction function (add one with
``register_direction``, or stand one in for a built-in with ``replaced_directions``; ``plugins`` loads one
from a user's file); ``simulate`` steps it, ``solve_flow`` integrates it, ``theory`` holds the paper's
closed forms to compare against.
"""

from collections.abc import Callable

from balancedness.sims.directions import (
    DIRECTIONS,
    Direction,
    HyperParams,
    batch_target,
    observed,
    register_direction,
    replaced_directions,
    unregister_direction,
)
from balancedness.sims.discrete import simulate
from balancedness.sims.optimizers import FLATNESS_OPTIMIZERS, OPTIMIZERS, Optimizer, make_optimizer
from balancedness.sims.problems import PROBLEMS, Problem, make_problem, nop_problem, op_problem, toy2d_problem
from balancedness.sims.results import SimResult

__all__ = [
    "simulate",
    "solve_flow",
    "Optimizer",
    "make_optimizer",
    "OPTIMIZERS",
    "FLATNESS_OPTIMIZERS",
    "Problem",
    "PROBLEMS",
    "make_problem",
    "nop_problem",
    "op_problem",
    "toy2d_problem",
    "SimResult",
    "DIRECTIONS",
    "Direction",
    "HyperParams",
    "batch_target",
    "observed",
    "register_direction",
    "replaced_directions",
    "unregister_direction",
]


def __getattr__(name: str) -> Callable[..., SimResult]:
    if name == "solve_flow":
        from balancedness.sims.flows import solve_flow

        return solve_flow
    raise AttributeError(name)
