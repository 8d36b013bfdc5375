"""Simulators of SGD, SNGD, SAM, m-sharpness SAM, nBAR and oBAR on the paper's toy problems."""

from balancedness.sims.discrete import simulate
from balancedness.sims.optimizers import OPTIMIZERS, Optimizer, make_optimizer
from balancedness.sims.problems import PROBLEMS, Problem, make_problem, nop_problem, op_problem, toy2d_problem
from balancedness.sims.results import SimResult

__all__ = [
    "simulate", "solve_flow", "Optimizer", "make_optimizer", "OPTIMIZERS", "Problem", "PROBLEMS",
    "make_problem", "nop_problem", "op_problem", "toy2d_problem", "SimResult",
]


def __getattr__(name: str):
    if name == "solve_flow":
        from balancedness.sims.flows import solve_flow

        return solve_flow
    raise AttributeError(name)
