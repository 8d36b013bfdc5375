"""Closed forms checked on their own (spec §7.1.12, §7.1.14): Corollary 2's threshold and Lemma 1's λ_max.

These never touch an optimizer: the paper's construction against our closed form, a derivative
against finite differences, a Hessian's top eigenvalue against its formula.
"""

from __future__ import annotations

import numpy as np

from balancedness.checks.instances import op_hessian, random_nop, rel_error
from balancedness.checks.registry import Context, Kind, Measurement, at_most, check
from balancedness.metrics import balancedness, sq_norms
from balancedness.sims import theory as th

MATH = Kind.MATH


@check("cor2-closed-form", "Cor 2 (21)",
       "the paper's construction (21) equals 1/2(r|x|^2 - |y|^2/r), r = |g_x|/|g_y|", MATH)
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


@check("lemma1-lambda-max", "Lemma 1", "on W* the OP Hessian has lambda_max = f''(w)(|x|^2 + |y|^2)", MATH)
def lemma1_lambda_max(ctx: Context) -> Measurement:
    errs = []
    for _ in range(20):
        x = ctx.rng.standard_normal(3)
        y = ctx.rng.standard_normal(3)
        y *= 0.5 / (x @ y)  # put the point on W*: x'y = a = 0.5
        lam = float(th.lemma1_lambda_max(x[None], y[None], 2.0)[0])
        errs.append(abs(np.linalg.eigvalsh(op_hessian(np.concatenate([x, y]), 0.5))[-1] - lam) / lam)
    v = float(max(errs))
    return at_most(v, 1e-4, f"max rel. error {v:.1e} (finite-difference Hessian, 20 points)")
