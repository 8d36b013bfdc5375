"""An optimizer of the paper with its hyper-parameters: a name in the direction registry plus ρ, m, μ₀, schedule.

The math of each optimizer is its direction function in ``balancedness.sims.directions`` (written
once, registered by name); :class:`Optimizer` validates the hyper-parameters, turns the step's noise
into effective targets and the progress t/T into μ_t, and calls the registered function.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

from balancedness.schedules import check_schedule, mu_at
from balancedness.sims.directions import DIRECTIONS, Field, HyperParams, lookup
from balancedness.sims.problems import Problem
from balancedness.validation import integer, number

#: The built-in optimizers, in the paper's order (``DIRECTIONS`` holds these and any registered later).
OPTIMIZERS = ("sgd", "sngd", "sam", "msam", "nbar", "obar")


@dataclass(frozen=True)
class Optimizer:
    """An optimizer of the paper with its hyper-parameters (validated on construction).

    Attributes:
        name: a registered direction (``OPTIMIZERS`` or one added with ``register_direction``).
        rho: SAM radius ρ ≥ 0 (sam, msam).
        m: number of m-sharpness chunks (msam); must divide the batch.
        mu: BAR coefficient μ₀ ≥ 0 (nbar, obar).
        schedule: μ_t schedule, ``constant``/``linear``/``cosine`` (spec §4.5.7).
    """

    name: str
    rho: float = 0.0
    m: int = 1
    mu: float = 0.0
    schedule: str = "constant"

    def __post_init__(self) -> None:
        uses = lookup(self.name).uses
        number("rho", self.rho)
        number("mu", self.mu)
        integer("m", self.m)
        if self.m != 1 and "m" not in uses:
            raise ValueError(f"m={self.m} does not apply to optimizer {self.name!r} (it uses: "
                             f"{', '.join(sorted(uses)) or 'no hyper-parameter'})")
        check_schedule(self.schedule)

    def settings(self) -> dict:
        return asdict(self)

    def mu_t(self, progress: float) -> float:
        return mu_at(self.mu, self.schedule, progress)

    def hyper(self, progress: float = 0.0, rho: Optional[np.ndarray] = None) -> HyperParams:
        """What the direction function is told: ρ (or per-trajectory radii), m, μ_t and t/T."""
        mu = self.mu_t(progress) if self.mu else 0.0  # every schedule keeps μ₀ = 0 at 0
        return HyperParams(self.rho if rho is None else rho, self.m, mu, progress)

    # ------------------------------------------------------------------------------------
    def direction(
        self,
        problem: Problem,
        X: np.ndarray,
        Y: np.ndarray,
        alpha: np.ndarray,
        chunk_means: Optional[np.ndarray],
        progress: float = 0.0,
    ) -> Field:
        """(d_X, d_Y, g_X, g_Y) for noise level(s) α and the chunk means N̄_i of the step's noise.

        ``chunk_means`` has shape (m, n, *noise_shape), or is None for the noise-free loss.
        """
        return self.field(problem, X, Y, _targets(problem, alpha, chunk_means), progress)

    def field(
        self,
        problem: Problem,
        X: np.ndarray,
        Y: np.ndarray,
        targets: Optional[np.ndarray],
        progress: float = 0.0,
        rho: Optional[np.ndarray] = None,
    ) -> Field:
        """The registered field for effective targets C_i = A + α N̄_i of the m chunks, shape (m, n, …).

        ``targets=None`` is the noise-free loss. ``rho`` optionally overrides ρ per trajectory
        (shape (n,)); ρ = 0 makes SAM exactly SGD, which lets one run hold both.
        """
        entry = DIRECTIONS.get(self.name) or lookup(self.name)  # unregistered since construction: a clear error
        return entry.field(problem, X, Y, targets, self.hyper(progress, rho))

    def switching(
        self, problem: Problem, X: np.ndarray, Y: np.ndarray, alpha: np.ndarray, chunk_means: Optional[np.ndarray]
    ) -> Optional[np.ndarray]:
        """Functions whose sign changes are the field's discontinuities, shape (n, k), or None.

        SAM/SNGD on OP switch where f′ = 0 (u_t carries sgn f′, eq. (7)); nBAR where
        ‖g_{X_l}‖ = ‖g_{Y_l}‖; oBAR where ‖X_l‖ = ‖Y_l‖. The NOP SAM field is continuous
        away from g = 0.
        """
        switching = lookup(self.name).switching
        if switching is None:
            return None
        return switching(problem, X, Y, _targets(problem, alpha, chunk_means), self.hyper())


def _targets(problem: Problem, alpha: np.ndarray, chunk_means: Optional[np.ndarray]) -> Optional[np.ndarray]:
    """C_i = A + α N̄_i per chunk, shape (m, n, *noise_shape), or None (noise-free)."""
    if chunk_means is None:
        return None
    return np.stack([problem.effective_target(alpha, c) for c in chunk_means])


def make_optimizer(name: str, *, rho: float = 0.0, m: int = 1, mu: float = 0.0, schedule: str = "constant") -> Optimizer:
    """Build an :class:`Optimizer`, keeping only the hyper-parameters ``name`` uses."""
    uses = lookup(name).uses
    rho, mu = number("rho", rho), number("mu", mu)
    return Optimizer(
        name,
        rho=rho if "rho" in uses else 0.0,
        m=m if "m" in uses else 1,
        mu=mu if "mu" in uses else 0.0,
        schedule=schedule if "mu" in uses else "constant",
    )
