"""Closed forms checked on their own (spec §7.1.12, §7.1.14): Corollary 2's threshold (ρ → 0 and ρ > 0) and
Lemma 1's λ_max.

These never touch an optimizer: the paper's construction against our closed form, a root against the
equation it solves, a derivative against finite differences, a Hessian's top eigenvalue against its formula.
"""

from __future__ import annotations

import numpy as np

from balancedness.checks.instances import hessian, random_nop, rel_error
from balancedness.checks.registry import Context, Kind, Measurement, at_most, check
from balancedness.metrics import FloatArray, balancedness, sq_norms
from balancedness.sims import theory as th
from balancedness.sims.problems import Problem, op_problem

MATH = Kind.MATH


@check(
    "cor2-closed-form",
    "Cor 2 (21)",
    "the paper's construction (21) equals 1/2(r|x|^2 - |y|^2/r), r = |g_x|/|g_y|",
    MATH,
)
def cor2_closed_form(ctx: Context) -> Measurement:
    p, X, Y = random_nop(ctx.rng, ctx.n)
    gX, gY, G = p.grads(X, Y, np.zeros(ctx.n), None)
    paper = np.array([th.cor2_threshold_paper(X[i, 0, :, 0], Y[i, 0, :, 0], G[i]) for i in range(ctx.n)])
    v = rel_error(th.cor2_threshold(X, Y, gX, gY), paper)
    return at_most(v, 1e-10, f"max rel. error {v:.1e}")


@check("cor2-direction", "Cor 2", "B > B-bar  <=>  |g_x| < |g_y| (so |B| shrinks above the threshold)", MATH)
def cor2_direction(ctx: Context) -> Measurement:
    p, X, Y = random_nop(ctx.rng, ctx.n)
    gX, gY, _ = p.grads(X, Y, np.zeros(ctx.n), None)
    agree = (balancedness(X, Y) > th.cor2_threshold(X, Y, gX, gY)) == (sq_norms(gX) < sq_norms(gY))
    v = float(np.mean(~agree))
    return at_most(v, 0.0, f"{int(np.sum(~agree))} disagreements in {ctx.n} random points")


@check("cor2-h-prime", "Cor 2 proof", "the paper's h'(z) matches finite differences of h(z)", MATH)
def cor2_h_prime(ctx: Context) -> Measurement:
    a, b = ctx.rng.uniform(0.1, 3, 2)
    z = np.linspace(0.2, 5, 200)
    fd = (th.cor2_h(z + 1e-6, a, b) - th.cor2_h(z - 1e-6, a, b)) / 2e-6
    v = float(np.max(np.abs(fd - th.cor2_h_prime(z, a, b)) / np.abs(fd)))
    return at_most(v, 1e-6, f"max rel. error {v:.1e}; h' > 0 everywhere: {bool(np.all(th.cor2_h_prime(z, a, b) > 0))}")


@check(
    "cor1-threshold-rho",
    "Cor 1, proof of Cor 2",
    "the rho > 0 threshold: z = (S + eps sqrt S)/(2a), S = (eps^2 + sqrt(eps^4 + 16ab))/2 solves h(z) = eps, "
    "and eps = 0 gives (21)",
    MATH,
)
def cor1_threshold_rho(ctx: Context) -> Measurement:
    p, X, Y = random_nop(ctx.rng, ctx.n)
    gX, gY, _ = p.grads(X, Y, np.zeros(ctx.n), None)
    nx, ny = np.sqrt(sq_norms(X)), np.sqrt(sq_norms(Y))
    a, b = sq_norms(gY) * ny / nx, sq_norms(gX) * nx / ny  # ‖Gᵀx̄‖², ‖Gȳ‖² on the balanced point of the orbit
    errs = [rel_error(th.cor2_threshold_rho(X, Y, gX, gY, 0.0), th.cor2_threshold(X, Y, gX, gY))]
    for eps in (-0.5, 0.1, 2.0):
        B_rho = th.cor2_threshold_rho(X, Y, gX, gY, eps)
        z = (B_rho + np.sqrt(B_rho**2 + nx**2 * ny**2)) / (nx * ny)  # invert B = ½‖x̄‖²(z − 1/z), ‖x̄‖² = ‖x‖‖y‖
        errs.append(float(np.max(np.abs(th.cor2_h(z, a, b) - eps))))
    v = float(np.max(errs))
    return at_most(
        v,
        1e-9,
        f"eps = 0 vs (21): rel. error {errs[0]:.1e}; max |h(z) - eps| {np.max(errs[1:]):.1e} for eps = -0.5, 0.1, 2",
    )


@check(
    "lemma1-lambda-max",
    "Lemma 1",
    "on W* (f' = 0) the Hessian of the OP loss k(x'y - c)^2 has lambda_max = f''(w)(|x|^2 + |y|^2), f'' = 2k",
    MATH,
)
def lemma1_lambda_max(ctx: Context) -> Measurement:
    errs = []
    for _ in range(20):
        k, c = ctx.rng.uniform(0.5, 5.0), float(ctx.rng.standard_normal())
        p = op_problem(target=c, scale=k)
        x, y = ctx.rng.standard_normal((2, 3))
        y *= c / (x @ y)  # put the point on W*: x'y = c, where f'(w) = 0
        lam = float(th.lemma1_lambda_max(x[None, None, :, None], y[None, None, :, None], 2 * k)[0])

        def loss(v: FloatArray, p: Problem = p) -> float:
            return float(p.excess_loss(v[None, None, :3, None], v[None, None, 3:, None])[0])

        H = hessian(loss, np.concatenate([x, y]))
        errs.append(abs(np.linalg.eigvalsh(H)[-1] - lam) / lam)
    v = float(np.max(errs))
    return at_most(
        v,
        1e-5,
        f"max rel. error {v:.1e} (finite-difference Hessian of the problem's loss, 20 random "
        "(k, c, point) with f'' = 2k)",
    )
