"""The paper's optimizers as direction fields d(z) (STYLE §3).

One definition each. The discrete simulator steps z⁺ = z + η·d(z) and the limiting flow solves
ż = d(z), so "discrete" and "ODE" cannot disagree about what an optimizer is. Each field takes
the minibatch noise of the step, already averaged per m-sharpness chunk (``chunk_means`` has
shape (m, n, *noise_shape); the full-batch mean is the mean over chunks since they are equal).

=======  =============================================================  ===================
name     d(z), g = ∇f_t(z) the stochastic gradient of the whole batch   spec
=======  =============================================================  ===================
sgd      −g                                                              (2)
sngd     −g / ‖g‖                                                        (15)
sam      −∇f_t(z + ρ g/‖g‖)  (global ‖g‖ over all layers)                (4), (7), (22), (41)
msam     −(1/m) Σ_i ∇f_{t,i}(z + ρ g_i/‖g_i‖), g_i of chunk i            (38)
nbar     −g + s μ_t (X, −Y),  s_l = +1 if ‖g_{X_l}‖ ≥ ‖g_{Y_l}‖ else −1   Alg. 2, SGD base
obar     −g − s μ_t (X, −Y),  s_l = +1 if ‖X_l‖ ≥ ‖Y_l‖ else −1           Alg. 3, SGD base
=======  =============================================================  ===================

With step η, nBAR/oBAR give X⁺ = (1 ± μη)X − ηg with g taken at the unscaled point, which is
exactly Alg. 2/3 followed by an SGD step (spec §4.5.1). A zero gradient gives no perturbation
(ε = 0) and no normalized step, never NaN.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

from balancedness.metrics import sq_norms
from balancedness.schedules import check_schedule, mu_at
from balancedness.sims.problems import Problem

OPTIMIZERS = ("sgd", "sngd", "sam", "msam", "nbar", "obar")

Field = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def global_norm(gX: np.ndarray, gY: np.ndarray) -> np.ndarray:
    """‖g‖ = sqrt(Σ_l ‖g_{X_l}‖² + ‖g_{Y_l}‖²) per trajectory, shape (n,) (u_t⁻¹ of eq. (22))."""
    return np.sqrt(sq_norms(gX) + sq_norms(gY))


def layer_sq_norms(Z: np.ndarray) -> np.ndarray:
    """‖Z_l‖²_F per trajectory and layer, shape (n, L)."""
    return np.einsum("nlij,nlij->nl", Z, Z)


def _safe_scale(num, nrm: np.ndarray) -> np.ndarray:
    """num/‖g‖ where ‖g‖ > 0, else 0 (no perturbation at a zero gradient, never NaN)."""
    return (num / np.where(nrm > 0, nrm, np.inf))[:, None, None, None]


@dataclass(frozen=True)
class Optimizer:
    """An optimizer of the paper with its hyper-parameters (validated on construction).

    Attributes:
        name: one of ``OPTIMIZERS``.
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
        if self.name not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.name!r}; expected one of {', '.join(OPTIMIZERS)}")
        for key in ("rho", "mu"):
            v = getattr(self, key)
            if not np.isfinite(v) or v < 0:
                raise ValueError(f"{key} must be a finite number >= 0, got {v!r}")
        if not isinstance(self.m, (int, np.integer)) or self.m < 1:
            raise ValueError(f"m must be a positive integer, got {self.m!r}")
        if self.name != "msam" and self.m != 1:
            raise ValueError(f"m={self.m} only applies to optimizer 'msam', not {self.name!r}")
        check_schedule(self.schedule)

    def settings(self) -> dict:
        return asdict(self)

    def mu_t(self, progress: float) -> float:
        return mu_at(self.mu, self.schedule, progress)

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
        """(d_X, d_Y, g_X, g_Y): the field and the whole-batch stochastic gradient at z."""
        targets = None if chunk_means is None else np.stack(
            [problem.effective_target(alpha, c) for c in chunk_means])
        return self.field(problem, X, Y, targets, progress)

    def field(
        self,
        problem: Problem,
        X: np.ndarray,
        Y: np.ndarray,
        targets: Optional[np.ndarray],
        progress: float = 0.0,
        rho: Optional[np.ndarray] = None,
    ) -> Field:
        """The field for effective targets C_i = A + α N̄_i of the m chunks, shape (m, n, …).

        ``targets=None`` is the noise-free loss. ``rho`` optionally overrides ρ per trajectory
        (shape (n,)); ρ = 0 makes SAM exactly SGD, which lets one run hold both.
        """
        rho = self.rho if rho is None else rho
        if self.name == "msam":
            return _msam(problem, X, Y, targets, rho)
        if targets is None:
            C = problem.target
        elif len(targets) == 1:
            C = targets[0]
        else:
            C = targets.mean(axis=0)
        gX, gY = problem.grads_at(X, Y, C)
        if self.name == "sgd":
            return -gX, -gY, gX, gY
        if self.name == "sngd":
            s = _safe_scale(1.0, global_norm(gX, gY))
            return -s * gX, -s * gY, gX, gY
        if self.name == "sam":
            s = _safe_scale(rho, global_norm(gX, gY))
            gXt, gYt = problem.grads_at(X + s * gX, Y + s * gY, C)
            return -gXt, -gYt, gX, gY
        mu = self.mu_t(progress)
        if self.name == "nbar":
            sign = np.where(layer_sq_norms(gX) >= layer_sq_norms(gY), 1.0, -1.0)
        else:
            sign = np.where(layer_sq_norms(X) >= layer_sq_norms(Y), -1.0, 1.0)
        c = (mu * sign)[:, :, None, None]
        return c * X - gX, -c * Y - gY, gX, gY

    def switching(
        self, problem: Problem, X: np.ndarray, Y: np.ndarray, alpha: np.ndarray, chunk_means: Optional[np.ndarray]
    ) -> Optional[np.ndarray]:
        """Functions whose sign changes are the field's discontinuities, shape (n, k), or None.

        SAM/SNGD on OP switch where f′ = 0 (u_t carries sgn f′, eq. (7)); nBAR where
        ‖g_{X_l}‖ = ‖g_{Y_l}‖; oBAR where ‖X_l‖ = ‖Y_l‖. The NOP SAM field is continuous
        away from g = 0.
        """
        if self.name == "nbar":
            gX, gY, _ = problem.grads(X, Y, alpha, None if chunk_means is None else chunk_means.mean(0))
            return layer_sq_norms(gX) - layer_sq_norms(gY)
        if self.name == "obar":
            return layer_sq_norms(X) - layer_sq_norms(Y)
        if problem.kind == "op" and self.name in ("sam", "sngd", "msam"):
            W = problem.product(X, Y)
            if chunk_means is None:
                return problem.outer_grad(W, alpha, None)[:, None]
            return np.stack([problem.outer_grad(W, alpha, c) for c in chunk_means], axis=1)
        return None


def _msam(problem: Problem, X, Y, targets, rho) -> Field:
    """Eq. (38): each chunk i perturbs with its own gradient; the descent gradients are averaged."""
    chunks = [problem.target] if targets is None else list(targets)
    dX, dY = np.zeros_like(X), np.zeros_like(Y)
    gX_full, gY_full = np.zeros_like(X), np.zeros_like(Y)
    for C in chunks:
        gX, gY = problem.grads_at(X, Y, C)
        s = _safe_scale(rho, global_norm(gX, gY))
        gXt, gYt = problem.grads_at(X + s * gX, Y + s * gY, C)
        dX -= gXt
        dY -= gYt
        gX_full += gX
        gY_full += gY
    k = len(chunks)
    return dX / k, dY / k, gX_full / k, gY_full / k


def make_optimizer(name: str, *, rho: float = 0.0, m: int = 1, mu: float = 0.0, schedule: str = "constant") -> Optimizer:
    """Build an :class:`Optimizer`, keeping only the hyper-parameters ``name`` uses."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {', '.join(OPTIMIZERS)}")
    for key, v in (("rho", rho), ("mu", mu)):
        if not np.isfinite(v) or v < 0:
            raise ValueError(f"{key} must be a finite number >= 0, got {v!r}")
    return Optimizer(
        name,
        rho=rho if name in ("sam", "msam") else 0.0,
        m=m if name == "msam" else 1,
        mu=mu if name in ("nbar", "obar") else 0.0,
        schedule=schedule if name in ("nbar", "obar") else "constant",
    )
