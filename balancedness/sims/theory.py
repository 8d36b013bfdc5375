"""Closed-form predictions, identities and bounds of the paper (spec §3, §4.5.5, §7.1), for batches of points.

Points are factor batches X (n, L, d1, r), Y (n, L, d2, r) as in ``problems``; G (n, d1, d2) is the
outer gradient ∇f at the product (NOP) and f′ (n,) its OP counterpart, G̃ and f̃′ the same at SAM's
perturbed point z̃, and ‖g‖ the global gradient norm (u_t = 1/‖g‖). Every formula is written here
once; ``balancedness check`` and the figures call these functions.

``dB_dt`` is the exact rate ⟨X, Ẋ⟩ − ⟨Y, Ẏ⟩ of the flow of any optimizer, so every "leading term +
A_t" statement can be checked as A_t = dB_dt − leading term.
"""

from __future__ import annotations

import numpy as np

from balancedness.metrics import FloatArray, balancedness, balancedness_layers, layer_sq_norms, sq_norms
from balancedness.sims.optimizers import Optimizer
from balancedness.sims.problems import Problem


# -- exact rates of any field ------------------------------------------------------------------
def field_rate_layers(X: FloatArray, Y: FloatArray, dX: FloatArray, dY: FloatArray) -> FloatArray:
    """dB_l/dt = ⟨X_l, Ẋ_l⟩ − ⟨Y_l, Ẏ_l⟩ for the direction (Ẋ, Ẏ) = (dX, dY) of a field at (X, Y), shape (n, L)."""
    out: FloatArray = np.einsum("nlij,nlij->nl", X, dX) - np.einsum("nlij,nlij->nl", Y, dY)
    return out


def dB_dt_layers(
    problem: Problem,
    opt: Optimizer,
    X: FloatArray,
    Y: FloatArray,
    alpha: float | FloatArray,
    chunk_means: FloatArray | None = None,
    progress: float = 0.0,
    xi: FloatArray | None = None,
    aux: tuple[FloatArray, ...] | None = None,
) -> FloatArray:
    """Exact dB_l/dt = ⟨X_l, Ẋ_l⟩ − ⟨Y_l, Ẏ_l⟩ along the flow of ``opt``, shape (n, L) (``xi``: perturbation draws,
    None for the expected field; ``aux``: the auxiliary state, None for none)."""
    dX, dY, _, _ = opt.direction(problem, X, Y, np.atleast_1d(alpha), chunk_means, progress, xi=xi, aux=aux)
    return field_rate_layers(X, Y, dX, dY)


def dB_dt(
    problem: Problem,
    opt: Optimizer,
    X: FloatArray,
    Y: FloatArray,
    alpha: float | FloatArray,
    chunk_means: FloatArray | None = None,
    progress: float = 0.0,
    xi: FloatArray | None = None,
    aux: tuple[FloatArray, ...] | None = None,
) -> FloatArray:
    """Exact dB/dt = Σ_l ⟨X_l, Ẋ_l⟩ − ⟨Y_l, Ẏ_l⟩ along the flow of ``opt``, shape (n,)."""
    out: FloatArray = dB_dt_layers(problem, opt, X, Y, alpha, chunk_means, progress, xi, aux).sum(axis=1)
    return out


# -- SAM: the exact rate identities (16a), (27a), (33), (41) -----------------------------------
def sam_nop_rate_layers(
    X: FloatArray, Y: FloatArray, G: FloatArray, G_tilde: FloatArray, grad_norm: FloatArray, rho: float | FloatArray
) -> FloatArray:
    """(27a): dB_l/dt = ρu [tr(Y_lᵀG̃ᵀG Y_l) − tr(X_lᵀG̃ GᵀX_l)], u = 1/‖g‖ global, shape (n, L).

    One layer of rank 1 is (16a), ρu[yᵀG̃ᵀGy − xᵀG̃Gᵀx]; rank r is spec §7.1.11.
    """
    u = 1.0 / grad_norm
    out: FloatArray = (rho * u)[:, None] * (
        np.einsum("nlir,nji,njk,nlkr->nl", Y, G_tilde, G, Y) - np.einsum("nlir,nij,nkj,nlkr->nl", X, G_tilde, G, X)
    )
    return out


def sam_nop_rate(
    X: FloatArray, Y: FloatArray, G: FloatArray, G_tilde: FloatArray, grad_norm: FloatArray, rho: float | FloatArray
) -> FloatArray:
    """(16a) summed over layers: dB/dt of the SAM-NOP flow, shape (n,)."""
    out: FloatArray = sam_nop_rate_layers(X, Y, G, G_tilde, grad_norm, rho).sum(axis=1)
    return out


def sam_op_rate_layers(
    X: FloatArray,
    Y: FloatArray,
    fprime: FloatArray,
    fprime_tilde: FloatArray,
    grad_norm: FloatArray,
    rho: float | FloatArray,
) -> FloatArray:
    """(41), exact [DERIVED]: dB_l/dt = −ρu f′ f̃′ (‖x_l‖² − ‖y_l‖²), u = 1/‖g‖, shape (n, L)."""
    return -rho * (fprime * fprime_tilde / grad_norm)[:, None] * 2 * balancedness_layers(X, Y)


def sam_op_rate(
    X: FloatArray,
    Y: FloatArray,
    fprime: FloatArray,
    fprime_tilde: FloatArray,
    grad_norm: FloatArray,
    rho: float | FloatArray,
) -> FloatArray:
    """(33): dB/dt = −2ρ f′ f̃′ B / ‖g‖ along the SAM-OP flow, shape (n,)."""
    return -2 * rho * fprime * fprime_tilde * balancedness(X, Y) / grad_norm


def op_u(fprime: FloatArray, X: FloatArray, Y: FloatArray) -> FloatArray:
    """u_t of (7)/(38) on OP: sgn(f′)/sqrt(‖x‖² + ‖y‖²), shape (n,)."""
    return np.sign(fprime) / np.sqrt(sq_norms(X) + sq_norms(Y))


# -- one discrete step (spec §7.1.5–§7.1.9) ------------------------------------------------------
def sgd_discrete_drift_layers(gX: FloatArray, gY: FloatArray, lr: float | FloatArray) -> FloatArray:
    """§7.1.5 per layer: B_{l,t+1} − B_{l,t} = (η²/2)(‖g_{x_l}‖² − ‖g_{y_l}‖²) for one SGD step, shape (n, L); for SNGD
    η/‖g‖ with ‖g‖ the global norm over all layers (``lr`` a number or one per point, shape (n,))."""
    return 0.5 * np.reshape(lr, (-1, 1)) ** 2 * (layer_sq_norms(gX) - layer_sq_norms(gY))


def sgd_discrete_drift(gX: FloatArray, gY: FloatArray, lr: float | FloatArray) -> FloatArray:
    """§7.1.5: B_{t+1} − B_t = (η²/2)(‖g_x‖² − ‖g_y‖²) for one SGD step (η/‖g‖ for SNGD), summed over layers."""
    out: FloatArray = sgd_discrete_drift_layers(gX, gY, lr).sum(axis=1)
    return out


def sgd_op_step_factor(fprime: FloatArray, lr: float) -> FloatArray:
    """§7.1.6: B_{t+1} = (1 − η² f′²) B_t for one SGD step on OP."""
    return 1 - lr**2 * fprime**2


def sam_op_step_factor(fprime_tilde: FloatArray, u: FloatArray, rho: float, lr: float) -> FloatArray:
    """§7.1.7: B_{t+1} = [1 − 2ηρu f̃′ − η² f̃′² (1 − ρ²u²)] B_t, u = sgn(f′)/sqrt(‖x‖² + ‖y‖²)."""
    return 1 - 2 * lr * rho * u * fprime_tilde - lr**2 * fprime_tilde**2 * (1 - rho**2 * u**2)


def sam_nop_step_change(
    X: FloatArray,
    Y: FloatArray,
    G: FloatArray,
    G_tilde: FloatArray,
    grad_norm: FloatArray,
    gX_tilde: FloatArray,
    gY_tilde: FloatArray,
    rho: float,
    lr: float,
) -> FloatArray:
    """§7.1.8: B_{t+1} − B_t = ηρu[yᵀG̃ᵀGy − xᵀG̃Gᵀx] + (η²/2)(‖g_x̃‖² − ‖g_ỹ‖²) for one SAM step on NOP."""
    return lr * sam_nop_rate(X, Y, G, G_tilde, grad_norm, rho) + sgd_discrete_drift(gX_tilde, gY_tilde, lr)


def msam_op_step_factor(fprime_tildes: FloatArray, us: FloatArray, rho: float, lr: float) -> FloatArray:
    """§7.1.9: B_{t+1} = [(1 − ηb)² − η²a²] B_t for one m-sharpness step on OP, with
    a = (1/m)Σ_i f̃′_i and b = (1/m)Σ_i ρu_i f̃′_i; ``fprime_tildes`` and ``us`` are (m, n).

    With layers (sum coupling, u_i = sgn f′_i / sqrt(Σ_l ‖x_l‖² + ‖y_l‖²) global as in (41)) every layer's
    B_l takes the same factor [DERIVED: x_l⁺ = (1 − ηb)x_l − ηa y_l, y_l⁺ = (1 − ηb)y_l − ηa x_l]."""
    m = len(fprime_tildes)
    a = b = 0.0
    for ft, u in zip(fprime_tildes, us, strict=True):
        a, b = a + ft / m, b + rho * u * ft / m
    return np.asarray((1 - lr * b) ** 2 - lr**2 * a**2)  # an array, also for m = 0 (a = b = 0.0)


# -- Theorem 2 / Theorem 5 (NOP) -------------------------------------------------------------
def thm2_leading(gX: FloatArray, gY: FloatArray, rho: float) -> FloatArray:
    """Eq. (5)/(25): ρ(‖g_x‖² − ‖g_y‖²)/sqrt(‖g_x‖² + ‖g_y‖²) (global norms over layers)."""
    a, b = sq_norms(gX), sq_norms(gY)
    return rho * (a - b) / np.sqrt(a + b)


def thm5_leading_layers(gX: FloatArray, gY: FloatArray, rho: float) -> FloatArray:
    """Eq. (26): ρ(‖g_{x_l}‖² − ‖g_{y_l}‖²)/sqrt(Σ_l ‖g_{x_l}‖² + ‖g_{y_l}‖²), shape (n, L)."""
    a, b = layer_sq_norms(gX), layer_sq_norms(gY)
    out: FloatArray = rho * (a - b) / np.sqrt(a.sum(1, keepdims=True) + b.sum(1, keepdims=True))
    return out


def thm2_A_bound(X: FloatArray, Y: FloatArray, rho: float, L: float) -> FloatArray:
    """Explicit |A_t| ≤ Lρ²(‖x‖+‖y‖)² + Lρ³(‖x‖+‖y‖)/2 (spec §3, derived from (16a–b))."""
    s = np.sqrt(sq_norms(X)) + np.sqrt(sq_norms(Y))
    return L * rho**2 * s**2 + L * rho**3 * s / 2


def thm2_sandwich(a: FloatArray, b: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    """The chain behind (6), for a, b ≥ 0: |a − b| ≤ |a² − b²|/sqrt(a² + b²) ≤ sqrt(|a² − b²|) (the three terms)."""
    diff = np.abs(a**2 - b**2)
    return np.abs(a - b), diff / np.sqrt(a**2 + b**2), np.sqrt(diff)


def thm2_bounds(gX: FloatArray, gY: FloatArray, rho: float) -> tuple[FloatArray, FloatArray]:
    """Eq. (6) without its O(ρ²L) terms: (ρ|‖g_x‖ − ‖g_y‖|, ρ sqrt(|‖g_x‖² − ‖g_y‖²|))."""
    a, b = sq_norms(gX), sq_norms(gY)
    return rho * np.abs(np.sqrt(a) - np.sqrt(b)), rho * np.sqrt(np.abs(a - b))


# -- Corollary 2 -----------------------------------------------------------------------------
def cor2_threshold(X: FloatArray, Y: FloatArray, gX: FloatArray, gY: FloatArray) -> FloatArray:
    """B̄_t = ½(r‖x‖² − ‖y‖²/r), r = ‖g_x‖/‖g_y‖: the ρ → 0 threshold (21) in closed form."""
    r = np.sqrt(sq_norms(gX) / sq_norms(gY))
    return 0.5 * (r * sq_norms(X) - sq_norms(Y) / r)


def cor2_threshold_expected(problem: Problem, X: FloatArray, Y: FloatArray, alpha: float, batch: int = 1) -> FloatArray:
    """B̄_t of (21) on the NOP toy with r² = E_ξ‖g_x‖²/E_ξ‖g_y‖², the noise-averaged squared gradient norms
    (:func:`nop_expected_grad_sq_norms`): Fig. 2(a)'s threshold along a trajectory, shape (n,)."""
    ex, ey = nop_expected_grad_sq_norms(problem, X, Y, alpha, batch)
    as_grad = lambda v: np.sqrt(v)[:, None, None, None]  # noqa: E731  (a gradient with this squared norm)
    return cor2_threshold(X, Y, as_grad(ex), as_grad(ey))


def cor2_threshold_paper(x: FloatArray, y: FloatArray, G: FloatArray) -> float:
    """The paper's construction (21) for one rank-1 NOP point: α_t, x̄, ȳ, ᾱ, then B̄ (spec §3)."""
    a_t = np.sqrt(np.linalg.norm(x) / np.linalg.norm(y))
    xb, yb = x / a_t, a_t * y
    abar2 = np.linalg.norm(G @ yb) / np.linalg.norm(G.T @ xb)
    out: float = 0.5 * (abar2 * xb @ xb - yb @ yb / abar2)
    return out


def cor2_h(z: FloatArray, a: float | FloatArray, b: float | FloatArray) -> FloatArray:
    """h(z) = (a z − b/z)/sqrt(a z + b/z) from the proof of Cor. 2."""
    return (a * z - b / z) / np.sqrt(a * z + b / z)


def cor2_h_prime(z: FloatArray, a: float | FloatArray, b: float | FloatArray) -> FloatArray:
    """The paper's h′(z) = (a² z + 6ab/z + b²/z³)/(2(az + b/z)^{3/2})."""
    return (a**2 * z + 6 * a * b / z + b**2 / z**3) / (2 * (a * z + b / z) ** 1.5)


def cor2_threshold_rho(
    X: FloatArray, Y: FloatArray, gX: FloatArray, gY: FloatArray, eps: float | FloatArray
) -> FloatArray:
    """B̄^ρ from h(z) = ε (spec §3; ε = O(ρL) with an unknown constant: a user's choice)."""
    nx, ny = np.sqrt(sq_norms(X)), np.sqrt(sq_norms(Y))
    a_t2 = nx / ny
    # on the balanced point x̄ = x/α_t, ȳ = α_t y: ‖G ȳ‖ = α_t‖g_x‖, ‖Gᵀx̄‖ = ‖g_y‖/α_t
    a = sq_norms(gY) / a_t2
    b = sq_norms(gX) * a_t2
    S = (eps**2 + np.sqrt(eps**4 + 16 * a * b)) / 2
    abar2 = (S + eps * np.sqrt(S)) / (2 * a)
    nb2 = nx * ny  # ‖x̄‖² = ‖ȳ‖² = ‖x‖‖y‖
    out: FloatArray = 0.5 * (abar2 * nb2 - nb2 / abar2)
    return out


# -- OP: Lemma 2, Theorem 3, Lemma 3, Theorem 7, Lemma 1 ---------------------------------------
def lemma2_leading(fprime: FloatArray, X: FloatArray, Y: FloatArray, rho: float) -> FloatArray:
    """Eq. (32): −2ρ|f′|/sqrt(‖x‖² + ‖y‖²) · B."""
    return -2 * rho * np.abs(fprime) / np.sqrt(sq_norms(X) + sq_norms(Y)) * balancedness(X, Y)


def lemma2_A_bound(X: FloatArray, Y: FloatArray, rho: float, L: float) -> FloatArray:
    """Explicit |A_t| ≤ 2Lρ²|B|(1 + ρ/(2 sqrt(‖x‖² + ‖y‖²))) (spec §3)."""
    return 2 * L * rho**2 * np.abs(balancedness(X, Y)) * (1 + rho / (2 * np.sqrt(sq_norms(X) + sq_norms(Y))))


def thm3_sandwich(X: FloatArray, Y: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    """(36)–(37): C_t ≤ 2|B|/sqrt(‖x‖² + ‖y‖²) ≤ sqrt(2|B|) with C_t = |‖x‖ − ‖y‖| (the three terms)."""
    C = np.abs(np.sqrt(sq_norms(X)) - np.sqrt(sq_norms(Y)))
    B = np.abs(balancedness(X, Y))
    return C, 2 * B / np.sqrt(sq_norms(X) + sq_norms(Y)), np.sqrt(2 * B)


def thm3_bounds(fprime: FloatArray, X: FloatArray, Y: FloatArray, rho: float) -> tuple[FloatArray, FloatArray]:
    """Thm 3 without its O(ρ²L|B|) terms: (ρ|f′|C_t, ρ|f′|sqrt(2|B|)), C_t = |‖x‖ − ‖y‖|."""
    C, _, upper = thm3_sandwich(X, Y)
    return rho * np.abs(fprime) * C, rho * np.abs(fprime) * upper


def lemma3_leading(chunk_fprimes: FloatArray, X: FloatArray, Y: FloatArray, rho: float) -> FloatArray:
    """Eq. (39): −2(ρ/m) Σ_i |f′_{t,i}| / sqrt(‖x‖² + ‖y‖²) · B; ``chunk_fprimes`` is (m, n)."""
    m = chunk_fprimes.shape[0]
    out: FloatArray = (
        -2 * (rho / m) * np.abs(chunk_fprimes).sum(0) / np.sqrt(sq_norms(X) + sq_norms(Y)) * balancedness(X, Y)
    )
    return out


def thm7_leading_layers(fprime_layers: FloatArray, X: FloatArray, Y: FloatArray, rho: float) -> FloatArray:
    """Eq. (44): −ρ|f′_l|²(‖x_l‖² − ‖y_l‖²)/sqrt(Σ_l |f′_l|²(‖x_l‖² + ‖y_l‖²)), shape (n, L)."""
    nx, ny = layer_sq_norms(X), layer_sq_norms(Y)
    f2 = fprime_layers**2
    out: FloatArray = -rho * f2 * (nx - ny) / np.sqrt((f2 * (nx + ny)).sum(1, keepdims=True))
    return out


def lemma1_lambda_max(X: FloatArray, Y: FloatArray, f2: float) -> FloatArray:
    """λ_max of the OP Hessian on W* (f′ = 0): f″(w)(‖x‖² + ‖y‖²) (proof of Lemma 1)."""
    return f2 * (sq_norms(X) + sq_norms(Y))


def lemma1_min_sharpness(w: float, f2: float) -> float:
    """min over W* of λ_max = 2|w| f″(w), attained only at x = y (‖x‖ = ‖y‖ and x ∥ y)."""
    return 2 * abs(w) * f2


# -- BAR, and SGD with noise -------------------------------------------------------------------
def bar_signs(variant: str, X: FloatArray, Y: FloatArray, gX_sq: FloatArray, gY_sq: FloatArray) -> FloatArray:
    """s_l of Alg. 2 (nBAR: +1 if ‖g_{x_l}‖ ≥ ‖g_{y_l}‖ else −1) or Alg. 3 (oBAR: −1 if ‖x_l‖ ≥ ‖y_l‖ else +1),
    shape (n, L).

    Written from the algorithms, apart from the optimizers' own rule (``directions.bar_sign``), so that
    the checks compare an implementation against the paper. ``gX_sq``, ``gY_sq``: ‖g_{x_l}‖², ‖g_{y_l}‖², (n, L).
    """
    if variant == "nbar":
        return np.where(gX_sq >= gY_sq, 1.0, -1.0)
    if variant == "obar":
        return np.where(layer_sq_norms(X) >= layer_sq_norms(Y), -1.0, 1.0)
    raise ValueError(f"variant must be 'nbar' or 'obar', got {variant!r}")


def bar_flow_rate(
    variant: str, X: FloatArray, Y: FloatArray, gX_sq: FloatArray, gY_sq: FloatArray, mu: float
) -> FloatArray:
    """dB/dt of nBAR/oBAR with an SGD base (spec §4.5.5), summed over layers: Σ_l s_l μ_t(‖x_l‖² + ‖y_l‖²)
    with s_l of :func:`bar_signs` (the SGD part adds 0, Thm 1)."""
    out: FloatArray = (bar_signs(variant, X, Y, gX_sq, gY_sq) * mu * (layer_sq_norms(X) + layer_sq_norms(Y))).sum(1)
    return out


def bar_text_flow_rate(
    variant: str, X: FloatArray, Y: FloatArray, gX_sq: FloatArray, gY_sq: FloatArray, mu: float
) -> FloatArray:
    """dB/dt with the regularizer as §5.2's *text* states it, added to the loss of an SGD flow: nBAR
    μ(xᵀx − yᵀy) if ‖g_x‖ < ‖g_y‖ else μ(yᵀy − xᵀx), oBAR μ|xᵀx − yᵀy|. Its gradient is ∓2μx, ±2μy, so
    this is 2 Σ_l s_l μ(‖x_l‖² + ‖y_l‖²): twice what Algs. 2/3 do with (1 ± μη) (spec §4.5.3, §8.3)."""
    s = bar_signs(variant, X, Y, gX_sq, gY_sq)
    grad_x, grad_y = -2 * mu * s, 2 * mu * s  # ∇_x R = grad_x · x_l, ∇_y R = grad_y · y_l per layer
    out: FloatArray = (-grad_x * layer_sq_norms(X) + grad_y * layer_sq_norms(Y)).sum(1)
    return out


def obar_mu_matching_sam(fprime: FloatArray, X: FloatArray, Y: FloatArray, rho: float) -> FloatArray:
    """§5.2's choice for oBAR on OP, α_t = ρ|f′|/sqrt(‖x‖² + ‖y‖²) (the coefficient of Lemma 2 (32)),
    said to "recover SAM's dynamic on B_t up to O(ρ²)"; shape (n,)."""
    return rho * np.abs(fprime) / np.sqrt(sq_norms(X) + sq_norms(Y))


def obar_flow_rate(X: FloatArray, Y: FloatArray, mu: float) -> FloatArray:
    """dB/dt of one-layer oBAR with an SGD base (spec §4.5.5): −sign(B) μ (‖x‖² + ‖y‖²)."""
    return -np.sign(balancedness(X, Y)) * mu * (sq_norms(X) + sq_norms(Y))


def nop_noise_sq_norms(
    problem: Problem, X: FloatArray, Y: FloatArray, alpha: float | FloatArray, batch: int = 1
) -> tuple[FloatArray, FloatArray]:
    """The noise parts of E_ξ‖g_X‖² and E_ξ‖g_Y‖² on NOP (spec §1.5, §7.3 (c)), shape (n,) each:
    4k²α² tr(D²) ‖Y‖²/b and 4k²α² d2 Σ_i D_i² ‖X_{i,:}‖²/b (the gradient's noise is 2kα N̄, N = D U)."""
    D2 = problem.nop_noise_rows() ** 2
    c = 4 * problem.scale**2 * np.asarray(alpha) ** 2 / batch
    return c * D2.sum() * sq_norms(Y), c * problem.d2 * np.einsum("nlir,i->n", X * X, D2)


def nop_expected_grad_sq_norms(
    problem: Problem, X: FloatArray, Y: FloatArray, alpha: float | FloatArray, batch: int = 1
) -> tuple[FloatArray, FloatArray]:
    """E_ξ‖g_X‖², E_ξ‖g_Y‖² on NOP: ‖G₀Y‖² + noise, ‖G₀ᵀX‖² + noise, G₀ = 2k(W − A) (:func:`nop_noise_sq_norms`)."""
    gX, gY, _ = problem.grads(X, Y, np.zeros(len(X)), None)
    nx, ny = nop_noise_sq_norms(problem, X, Y, alpha, batch)
    return sq_norms(gX) + nx, sq_norms(gY) + ny


def sgd_expected_drift_nop(
    problem: Problem, X: FloatArray, Y: FloatArray, alpha: float, lr: float, batch: int = 1
) -> FloatArray:
    """E[B_{t+1} − B_t] for SGD on NOP (spec §7.3 (c)): (η²/2)(E‖g_x‖² − E‖g_y‖²), i.e.
    (η²/2)(‖G₀y‖² − ‖G₀ᵀx‖²) + 2η²k²α²(tr(D²)‖y‖² − d2·xᵀD²x)/b for one layer of rank 1."""
    ex, ey = nop_expected_grad_sq_norms(problem, X, Y, alpha, batch)
    return 0.5 * lr**2 * (ex - ey)


# -- the flatness methods (spec/flatness-methods.md, [FM]) ----------------------------------------
def wspace_step_change(MY: FloatArray, MtX: FloatArray, lr: float | FloatArray) -> FloatArray:
    """[FM] §1 Lemma (b): one step x⁺ = x − ηMy, y⁺ = y − ηMᵀx with one matrix M for both factors changes B by
    exactly (η²/2)(‖My‖² − ‖Mᵀx‖²), whatever M is (a perturbed point, noise, auxiliary state); shape (n,). SGD's
    (``sgd_discrete_drift``) is the case M = ∇f."""
    return sgd_discrete_drift(MY, MtX, lr)


def wspace_flow_rate_matrix(X: FloatArray, Y: FloatArray, M: FloatArray) -> FloatArray:
    """[FM] §1 Lemma (a), rank r: d(X_lᵀX_l − Y_lᵀY_l)/dt under Ẋ_l = −M Y_l, Ẏ_l = −Mᵀ X_l, the (n, L, r, r) matrix
    −(MY)ᵀX − XᵀMY + (MᵀX)ᵀY + YᵀMᵀX (which the Lemma says is 0)."""
    MY, MtX = np.einsum("nij,nljr->nlir", M, Y), np.einsum("nij,nlir->nljr", M, X)
    dXX = -np.einsum("nliq,nlir->nlqr", MY, X) - np.einsum("nliq,nlir->nlqr", X, MY)
    dYY = -np.einsum("nljq,nljr->nlqr", MtX, Y) - np.einsum("nljq,nljr->nlqr", Y, MtX)
    out: FloatArray = dXX - dYY
    return out


def factor_noise_expected_rate_nop(X: FloatArray, Y: FloatArray, tau: float, k: float = 1.0) -> FloatArray:
    """[FM] §1 corollary: with factor noise x̃ = x + τξ_x, ỹ = y + τξ_y (Bi-LoRA's RWP_LoRA baseline) and the chain
    rule at the noisy factors, d = −(G̃ỹ, G̃ᵀx̃) with G̃ = 2k(x̃ỹᵀ − C), E[dB/dt] = 2kτ²(d1‖y‖² − d2‖x‖²) (one layer,
    rank 1; = −4kdτ²B for d1 = d2 = d): it balances. Shape (n,)."""
    d1, d2 = X.shape[-2], Y.shape[-2]
    out: FloatArray = 2 * k * tau**2 * (d1 * np.einsum("nlir,nlir->n", Y, Y) - d2 * np.einsum("nlir,nlir->n", X, X))
    return out


def flat_lora_expected_drift_nop(X: FloatArray, Y: FloatArray, sigma_t: float, lr: float, k: float = 1.0) -> FloatArray:
    """[FM] §2.4 (``flat-eta2-drift-cols``): the expected extra ΔB per step of Flat-LoRA over SGD on the same
    minibatch, one layer of rank 1: 2k²η²σ_t²‖x‖²(‖y‖₄⁴ − ‖x‖²‖y‖²/d1) (from E‖Ey‖² − E‖Eᵀx‖² with E_ij =
    σ_t|y_j|‖x‖/√d1·ξ_ij; the cross terms with G vanish in expectation). Shape (n,)."""
    x2 = np.einsum("nlir,nlir->n", X, X)
    y2 = np.einsum("nlir,nlir->n", Y, Y)
    y4 = np.sum(Y**4, axis=(1, 2, 3))
    out: FloatArray = 2 * k**2 * lr**2 * sigma_t**2 * x2 * (y4 - x2 * y2 / X.shape[-2])
    return out


def asam_op_rate(
    X: FloatArray, Y: FloatArray, fprime: FloatArray, fprime_tilde: FloatArray, rho: float, eta_a: float
) -> FloatArray:
    """[FM] §4.4, OP, exact: dB/dt = ρu_a f̃′[2η_a Σ_i |x_i y_i|(|y_i| − |x_i|) − 2η_a² B] with
    u_a = sgn f′/√(‖T_x⊙y‖² + ‖T_y⊙x‖²), T = |·| + η_a (sums over all entries of all layers); 0 at η_a = 0."""
    TX, TY = np.abs(X) + eta_a, np.abs(Y) + eta_a
    u = np.sign(fprime) / np.sqrt(np.sum((TX * Y) ** 2 + (TY * X) ** 2, axis=(1, 2, 3)))
    cross = np.sum(np.abs(X * Y) * (np.abs(Y) - np.abs(X)), axis=(1, 2, 3))
    B = 0.5 * np.sum(X**2 - Y**2, axis=(1, 2, 3))
    out: FloatArray = rho * u * fprime_tilde * (2 * eta_a * cross - 2 * eta_a**2 * B)
    return out
