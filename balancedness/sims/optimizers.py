"""An optimizer of the paper with its hyper-parameters: a name in the direction registry plus ρ, m, μ₀, schedule.

The math of each optimizer is its direction function in ``balancedness.sims.directions`` (written
once, registered by name); :class:`Optimizer` validates the hyper-parameters, turns the step's noise
into effective targets and the progress t/T into μ_t, and calls the registered function.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from balancedness.metrics import FloatArray
from balancedness.schedules import check_schedule, mu_at
from balancedness.sims.directions import DIRECTIONS, NOISE_SCHEDULES, Aux, Field, HyperParams, flat_lora_ramp, lookup
from balancedness.sims.problems import Problem
from balancedness.validation import choice, integer, number

#: The built-in optimizers of the paper, in its order (``DIRECTIONS`` holds these and any registered later); the
#: compiled stepper (``sims.compiled``) knows exactly these.
OPTIMIZERS = ("sgd", "sngd", "sam", "msam", "nbar", "obar")
#: The built-in flatness methods of spec/flatness-methods.md (they step with numpy).
FLATNESS_OPTIMIZERS = ("flat-lora", "bi-lora", "asam")
#: The flatness hyper-parameters, their defaults, and the neutral value an optimizer that does not use one gets.
FLATNESS_DEFAULTS = {
    "sigma": (0.05, 0.0),
    "noise_schedule": ("cosine", "cosine"),
    "eta_a": (0.01, 0.0),
    "kappa": (1.0, 1.0),
    "rank2": (1, 1),
    "aux_init": (0.01, 0.01),
}


@dataclass(frozen=True)
class Optimizer:
    """An optimizer of the paper with its hyper-parameters (validated on construction).

    Attributes:
        name: a registered direction (``OPTIMIZERS`` or one added with ``register_direction``).
        rho: SAM radius ρ ≥ 0 (sam, msam).
        m: number of m-sharpness chunks (msam); must divide the batch.
        mu: BAR coefficient μ₀ ≥ 0 (nbar, obar).
        schedule: μ_t schedule, ``constant``/``linear``/``cosine`` (spec §4.5.7).
        sigma: Flat-LoRA's noise scale σ ≥ 0 (flat-lora; the paper's 0.05), ramped by ``noise_schedule``
            (``cosine``: the official ½(1 − cos πt/T); ``constant``).
        eta_a: ASAM's offset η_a ≥ 0 in T = |w| + η_a (asam; the official code's 0.01, davda54's 0).
        kappa: Bi-LoRA's η₂/η₁ > 0 (bi-lora; the paper's 1), rank2 its auxiliary rank r₂ (1 on the toys),
            aux_init the std of its auxiliary's initial X₂ (0.01, [ASSUMED]; Y₂ = 0). ρ is its clip radius.
    """

    name: str
    rho: float = 0.0
    m: int = 1
    mu: float = 0.0
    schedule: str = "constant"
    sigma: float = 0.0
    noise_schedule: str = "cosine"
    eta_a: float = 0.0
    kappa: float = 1.0
    rank2: int = 1
    aux_init: float = 0.01

    def __post_init__(self) -> None:
        uses = lookup(self.name).uses
        number("rho", self.rho)
        number("mu", self.mu)
        integer("m", self.m)
        number("sigma", self.sigma)
        number("eta_a", self.eta_a)
        number("kappa", self.kappa, strict=True)
        integer("rank2", self.rank2)
        number("aux_init", self.aux_init)
        choice("noise_schedule", self.noise_schedule, NOISE_SCHEDULES)
        if self.m != 1 and "m" not in uses:
            raise ValueError(
                f"m={self.m} does not apply to optimizer {self.name!r} (it uses: "
                f"{', '.join(sorted(uses)) or 'no hyper-parameter'})"
            )
        check_schedule(self.schedule)

    def settings(self) -> dict[str, float | str]:
        """The hyper-parameters: name, ρ, m, μ₀ and schedule always; a flatness hyper-parameter where it is used."""
        uses = lookup(self.name).uses
        return {
            k: v
            for k, v in asdict(self).items()
            if k not in FLATNESS_DEFAULTS or k in uses or (k == "noise_schedule" and "sigma" in uses)
        }

    def mu_t(self, progress: float) -> float:
        return mu_at(self.mu, self.schedule, progress)

    def hyper(
        self,
        progress: float = 0.0,
        rho: FloatArray | None = None,
        xi: FloatArray | None = None,
        aux: Aux | None = None,
    ) -> HyperParams:
        """What the direction function is told: ρ (or per-trajectory radii), m, μ_t, t/T, σ_t = f_t σ, η_a, κ, the
        step's perturbation draws and the auxiliary state."""
        mu = self.mu_t(progress) if self.mu else 0.0  # every schedule keeps μ₀ = 0 at 0
        sigma = self.sigma * flat_lora_ramp(self.noise_schedule, progress) if self.sigma else 0.0
        return HyperParams(
            self.rho if rho is None else rho, self.m, mu, progress, sigma, self.eta_a, self.kappa, xi, aux
        )

    # ------------------------------------------------------------------------------------
    def direction(
        self,
        problem: Problem,
        X: FloatArray,
        Y: FloatArray,
        alpha: float | FloatArray,
        chunk_means: FloatArray | None,
        progress: float = 0.0,
        xi: FloatArray | None = None,
        aux: Aux | None = None,
    ) -> Field:
        """(d_X, d_Y, g_X, g_Y) for noise level(s) α and the chunk means N̄_i of the step's noise.

        ``chunk_means`` has shape (m, n, *noise_shape), or is None for the noise-free loss; ``xi``, ``aux``: as for
        :meth:`field`.
        """
        return self.field(problem, X, Y, _targets(problem, alpha, chunk_means), progress, xi=xi, aux=aux)

    def field(
        self,
        problem: Problem,
        X: FloatArray,
        Y: FloatArray,
        targets: FloatArray | None,
        progress: float = 0.0,
        rho: FloatArray | None = None,
        xi: FloatArray | None = None,
        aux: Aux | None = None,
    ) -> Field:
        """The registered field for effective targets C_i = A + α N̄_i of the m chunks, shape (m, n, …).

        ``targets=None`` is the noise-free loss. ``rho`` optionally overrides ρ per trajectory
        (shape (n,)); ρ = 0 makes SAM exactly SGD, which lets one run hold both. ``xi``: the step's
        perturbation draws (None: the expected direction); ``aux``: the auxiliary state (None: none). Always the
        contract's four arrays (:meth:`field_with_aux` also gives the auxiliary's direction).
        """
        return self.field_with_aux(problem, X, Y, targets, progress, rho, xi, aux)[0]

    def field_with_aux(
        self,
        problem: Problem,
        X: FloatArray,
        Y: FloatArray,
        targets: FloatArray | None,
        progress: float = 0.0,
        rho: FloatArray | None = None,
        xi: FloatArray | None = None,
        aux: Aux | None = None,
    ) -> tuple[Field, Aux | None]:
        """(the four arrays of :meth:`field`, the auxiliary state's direction or None)."""
        entry = DIRECTIONS.get(self.name) or lookup(self.name)  # unregistered since construction: a clear error
        out = entry.field(problem, X, Y, targets, self.hyper(progress, rho, xi, aux))
        return (out[0], out[1], out[2], out[3]), (out[4] if len(out) > 4 else None)

    def switching(
        self, problem: Problem, X: FloatArray, Y: FloatArray, alpha: float | FloatArray, chunk_means: FloatArray | None
    ) -> FloatArray | None:
        """Functions whose sign changes are the field's discontinuities, shape (n, k), or None.

        SAM/SNGD on OP switch where f′ = 0 (u_t carries sgn f′, eq. (7)); nBAR where
        ‖g_{X_l}‖ = ‖g_{Y_l}‖; oBAR where ‖X_l‖ = ‖Y_l‖. The NOP SAM field is continuous
        away from g = 0.
        """
        switching = lookup(self.name).switching
        if switching is None:
            return None
        return switching(problem, X, Y, _targets(problem, alpha, chunk_means), self.hyper())


def _targets(problem: Problem, alpha: float | FloatArray, chunk_means: FloatArray | None) -> FloatArray | None:
    """C_i = A + α N̄_i per chunk, shape (m, n, *noise_shape), or None (noise-free)."""
    if chunk_means is None:
        return None
    return np.stack([problem.effective_target(alpha, c) for c in chunk_means])


def make_optimizer(
    name: str,
    *,
    rho: float = 0.0,
    m: int = 1,
    mu: float = 0.0,
    schedule: str = "constant",
    **flatness: float | str | None,
) -> Optimizer:
    """Build an :class:`Optimizer`, keeping only the hyper-parameters ``name`` uses.

    ``flatness``: any of ``sigma``, ``noise_schedule``, ``eta_a``, ``kappa``, ``rank2``, ``aux_init``
    (:data:`FLATNESS_DEFAULTS` gives the default of an optimizer that uses one and the neutral value of one that
    does not)."""
    uses = lookup(name).uses
    rho, mu = number("rho", rho), number("mu", mu)
    unknown = sorted(set(flatness) - set(FLATNESS_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown hyper-parameter {unknown[0]!r}; expected one of {', '.join(FLATNESS_DEFAULTS)}")
    extra: dict[str, Any] = {}  # each value checked by Optimizer.__post_init__
    for key, (default, neutral) in FLATNESS_DEFAULTS.items():
        used = key in uses or (key == "noise_schedule" and "sigma" in uses)
        value = flatness.get(key)
        extra[key] = (default if value is None else value) if used else neutral
    return Optimizer(
        name,
        rho=rho if "rho" in uses else 0.0,
        m=m if "m" in uses else 1,
        mu=mu if "mu" in uses else 0.0,
        schedule=schedule if "mu" in uses else "constant",
        **extra,
    )
