"""Closed-form predictions and bounds of the paper (spec §3), for batches of points.

Points are factor batches X (n, L, d1, r), Y (n, L, d2, r) as in ``problems``. ``dB_dt`` is the
exact rate ⟨X, Ẋ⟩ − ⟨Y, Ẏ⟩ of the flow of any optimizer, so every "leading term + A_t"
statement can be checked as A_t = dB_dt − leading term.
"""

from __future__ import annotations

import numpy as np

from balancedness.metrics import balancedness, sq_norms
from balancedness.sims.optimizers import Optimizer, layer_sq_norms
from balancedness.sims.problems import Problem


def dB_dt(problem: Problem, opt: Optimizer, X, Y, alpha, chunk_means=None, progress: float = 0.0) -> np.ndarray:
    """Exact dB/dt = Σ_l ⟨X_l, Ẋ_l⟩ − ⟨Y_l, Ẏ_l⟩ along the flow of ``opt``, shape (n,)."""
    dX, dY, _, _ = opt.direction(problem, X, Y, np.atleast_1d(alpha), chunk_means, progress)
    n = len(X)
    return np.einsum("ij,ij->i", X.reshape(n, -1), dX.reshape(n, -1)) - np.einsum(
        "ij,ij->i", Y.reshape(n, -1), dY.reshape(n, -1))


def dB_dt_layers(problem: Problem, opt: Optimizer, X, Y, alpha, chunk_means=None) -> np.ndarray:
    """Exact dB_l/dt per layer, shape (n, L)."""
    dX, dY, _, _ = opt.direction(problem, X, Y, np.atleast_1d(alpha), chunk_means)
    return np.einsum("nlij,nlij->nl", X, dX) - np.einsum("nlij,nlij->nl", Y, dY)


# -- Theorem 2 / Theorem 5 (NOP) -------------------------------------------------------------
def thm2_leading(gX: np.ndarray, gY: np.ndarray, rho: float) -> np.ndarray:
    """Eq. (5)/(25): ρ(‖g_x‖² − ‖g_y‖²)/sqrt(‖g_x‖² + ‖g_y‖²) (global norms over layers)."""
    a, b = sq_norms(gX), sq_norms(gY)
    return rho * (a - b) / np.sqrt(a + b)


def thm5_leading_layers(gX: np.ndarray, gY: np.ndarray, rho: float) -> np.ndarray:
    """Eq. (26): ρ(‖g_{x_l}‖² − ‖g_{y_l}‖²)/sqrt(Σ_l ‖g_{x_l}‖² + ‖g_{y_l}‖²), shape (n, L)."""
    a, b = layer_sq_norms(gX), layer_sq_norms(gY)
    return rho * (a - b) / np.sqrt(a.sum(1, keepdims=True) + b.sum(1, keepdims=True))


def thm2_A_bound(X: np.ndarray, Y: np.ndarray, rho: float, L: float) -> np.ndarray:
    """Explicit |A_t| ≤ Lρ²(‖x‖+‖y‖)² + Lρ³(‖x‖+‖y‖)/2 (spec §3, derived from (16a–b))."""
    s = np.sqrt(sq_norms(X)) + np.sqrt(sq_norms(Y))
    return L * rho**2 * s**2 + L * rho**3 * s / 2


def thm2_bounds(gX: np.ndarray, gY: np.ndarray, rho: float) -> tuple[np.ndarray, np.ndarray]:
    """Eq. (6) without its O(ρ²L) terms: (ρ|‖g_x‖ − ‖g_y‖|, ρ sqrt(|‖g_x‖² − ‖g_y‖²|))."""
    a, b = sq_norms(gX), sq_norms(gY)
    return rho * np.abs(np.sqrt(a) - np.sqrt(b)), rho * np.sqrt(np.abs(a - b))


# -- Corollary 2 -----------------------------------------------------------------------------
def cor2_threshold(X: np.ndarray, Y: np.ndarray, gX: np.ndarray, gY: np.ndarray) -> np.ndarray:
    """B̄_t = ½(r‖x‖² − ‖y‖²/r), r = ‖g_x‖/‖g_y‖: the ρ → 0 threshold (21) in closed form."""
    r = np.sqrt(sq_norms(gX) / sq_norms(gY))
    return 0.5 * (r * sq_norms(X) - sq_norms(Y) / r)


def cor2_threshold_paper(x: np.ndarray, y: np.ndarray, G: np.ndarray) -> float:
    """The paper's construction (21) for one rank-1 NOP point: α_t, x̄, ȳ, ᾱ, then B̄ (spec §3)."""
    a_t = np.sqrt(np.linalg.norm(x) / np.linalg.norm(y))
    xb, yb = x / a_t, a_t * y
    abar2 = np.linalg.norm(G @ yb) / np.linalg.norm(G.T @ xb)
    return 0.5 * (abar2 * xb @ xb - yb @ yb / abar2)


def cor2_h(z: np.ndarray, a: float, b: float) -> np.ndarray:
    """h(z) = (a z − b/z)/sqrt(a z + b/z) from the proof of Cor. 2."""
    return (a * z - b / z) / np.sqrt(a * z + b / z)


def cor2_h_prime(z: np.ndarray, a: float, b: float) -> np.ndarray:
    """The paper's h′(z) = (a² z + 6ab/z + b²/z³)/(2(az + b/z)^{3/2})."""
    return (a**2 * z + 6 * a * b / z + b**2 / z**3) / (2 * (a * z + b / z) ** 1.5)


def cor2_threshold_rho(X: np.ndarray, Y: np.ndarray, gX: np.ndarray, gY: np.ndarray, eps: float) -> np.ndarray:
    """B̄^ρ from h(z) = ε (spec §3; ε = O(ρL) with an unknown constant: a user's choice)."""
    nx, ny = np.sqrt(sq_norms(X)), np.sqrt(sq_norms(Y))
    a_t2 = nx / ny
    # on the balanced point x̄ = x/α_t, ȳ = α_t y: ‖G ȳ‖ = α_t‖g_x‖, ‖Gᵀx̄‖ = ‖g_y‖/α_t
    a = sq_norms(gY) / a_t2
    b = sq_norms(gX) * a_t2
    S = (eps**2 + np.sqrt(eps**4 + 16 * a * b)) / 2
    abar2 = (S + eps * np.sqrt(S)) / (2 * a)
    nb2 = nx * ny  # ‖x̄‖² = ‖ȳ‖² = ‖x‖‖y‖
    return 0.5 * (abar2 * nb2 - nb2 / abar2)


# -- OP: Lemma 2, Theorem 3, Lemma 3, Theorem 7, Lemma 1 ---------------------------------------
def lemma2_leading(fprime: np.ndarray, X: np.ndarray, Y: np.ndarray, rho: float) -> np.ndarray:
    """Eq. (32): −2ρ|f′|/sqrt(‖x‖² + ‖y‖²) · B."""
    return -2 * rho * np.abs(fprime) / np.sqrt(sq_norms(X) + sq_norms(Y)) * balancedness(X, Y)


def lemma2_A_bound(X: np.ndarray, Y: np.ndarray, rho: float, L: float) -> np.ndarray:
    """Explicit |A_t| ≤ 2Lρ²|B|(1 + ρ/(2 sqrt(‖x‖² + ‖y‖²))) (spec §3)."""
    return 2 * L * rho**2 * np.abs(balancedness(X, Y)) * (1 + rho / (2 * np.sqrt(sq_norms(X) + sq_norms(Y))))


def thm3_bounds(fprime: np.ndarray, X: np.ndarray, Y: np.ndarray, rho: float) -> tuple[np.ndarray, np.ndarray]:
    """Thm 3 without its O(ρ²L|B|) terms: (ρ|f′|C_t, ρ|f′|sqrt(2|B|)), C_t = |‖x‖ − ‖y‖|."""
    C = np.abs(np.sqrt(sq_norms(X)) - np.sqrt(sq_norms(Y)))
    return rho * np.abs(fprime) * C, rho * np.abs(fprime) * np.sqrt(2 * np.abs(balancedness(X, Y)))


def lemma3_leading(chunk_fprimes: np.ndarray, X: np.ndarray, Y: np.ndarray, rho: float) -> np.ndarray:
    """Eq. (39): −2(ρ/m) Σ_i |f′_{t,i}| / sqrt(‖x‖² + ‖y‖²) · B; ``chunk_fprimes`` is (m, n)."""
    m = chunk_fprimes.shape[0]
    return -2 * (rho / m) * np.abs(chunk_fprimes).sum(0) / np.sqrt(sq_norms(X) + sq_norms(Y)) * balancedness(X, Y)


def thm7_leading_layers(fprime_layers: np.ndarray, X: np.ndarray, Y: np.ndarray, rho: float) -> np.ndarray:
    """Eq. (44): −ρ|f′_l|²(‖x_l‖² − ‖y_l‖²)/sqrt(Σ_l |f′_l|²(‖x_l‖² + ‖y_l‖²)), shape (n, L)."""
    nx, ny = layer_sq_norms(X), layer_sq_norms(Y)
    f2 = fprime_layers**2
    return -rho * f2 * (nx - ny) / np.sqrt((f2 * (nx + ny)).sum(1, keepdims=True))


def lemma1_lambda_max(X: np.ndarray, Y: np.ndarray, f2: float) -> np.ndarray:
    """λ_max of the OP Hessian on W* (f′ = 0): f″(w)(‖x‖² + ‖y‖²) (proof of Lemma 1)."""
    return f2 * (sq_norms(X) + sq_norms(Y))


def lemma1_min_sharpness(w: float, f2: float) -> float:
    """min over W* of λ_max = 2|w| f″(w), attained only at x = y (‖x‖ = ‖y‖ and x ∥ y)."""
    return 2 * abs(w) * f2


# -- BAR and SGD ---------------------------------------------------------------------------
def bar_flow_rate(opt: Optimizer, X: np.ndarray, Y: np.ndarray, gX: np.ndarray, gY: np.ndarray,
                  progress: float = 0.0) -> np.ndarray:
    """dB/dt of nBAR/oBAR with an SGD base (spec §4.5.5), per layer summed: s_l μ_t(‖x_l‖² + ‖y_l‖²)."""
    mu = opt.mu_t(progress)
    if opt.name == "nbar":
        s = np.where(layer_sq_norms(gX) >= layer_sq_norms(gY), 1.0, -1.0)
    else:
        s = np.where(layer_sq_norms(X) >= layer_sq_norms(Y), -1.0, 1.0)
    return (s * mu * (layer_sq_norms(X) + layer_sq_norms(Y))).sum(1)


def sgd_discrete_drift(gX: np.ndarray, gY: np.ndarray, lr: float) -> np.ndarray:
    """B_{t+1} − B_t = (η²/2)(‖g_x‖² − ‖g_y‖²) for one SGD step (spec §7.1 item 5)."""
    return 0.5 * lr**2 * (sq_norms(gX) - sq_norms(gY))


def sgd_expected_drift_nop(problem: Problem, X: np.ndarray, Y: np.ndarray, alpha: float, lr: float,
                           batch: int = 1) -> np.ndarray:
    """E[B_{t+1} − B_t] for SGD on the NOP toy (spec §7.3 (c)), rank 1, one layer:
    (η²/2)(‖G₀y‖² − ‖G₀ᵀx‖²) + 2η²α²(tr(D²)‖y‖² − d2·xᵀD²x)/b, with G₀ = 2k(xyᵀ − A)."""
    G0 = problem.outer_grad(problem.product(X, Y), np.zeros(len(X)), None)
    gX, gY = problem.factor_grads(X, Y, G0)
    D2 = problem.noise_rows**2
    x, y = X[:, 0, :, 0], Y[:, 0, :, 0]
    k2 = problem.scale**2
    noise = 2 * k2 * alpha**2 * (D2.sum() * (y * y).sum(1) - problem.d2 * (x * x * D2).sum(1)) / batch
    return 0.5 * lr**2 * (sq_norms(gX) - sq_norms(gY)) + lr**2 * noise


