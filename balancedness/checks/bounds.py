"""Asymptotic orders and inequalities (spec §7.2.15–§7.2.17, Thm 3, Lemma 3): A_t = O(ρ²), the explicit
A_t bounds, the sandwich inequalities behind (6) and Thm 3, and m-sharpness regularizing more strongly."""

from __future__ import annotations

import numpy as np

from balancedness.checks.instances import random_nop, random_op
from balancedness.checks.registry import Context, Kind, Measurement, at_most, check, within
from balancedness.sims import theory as th
from balancedness.sims.optimizers import Optimizer

IMPL, MATH = Kind.IMPLEMENTATION, Kind.MATH


def sam_remainder(p, X, Y, leading, rho: float, layers: bool = False) -> np.ndarray:
    """A_t = exact dB/dt of the SAM field − ``leading(ρ)`` (per layer if ``layers``)."""
    rate = th.dB_dt_layers if layers else th.dB_dt
    return rate(p, Optimizer("sam", rho=rho), X, Y, 0.0) - leading(rho)


def a_order_ratio(p, X, Y, leading, layers: bool = False) -> np.ndarray:
    """A_t(ρ)/A_t(ρ/10) for ρ = 1e-2 (≈ 100 when A_t = O(ρ²))."""
    return np.ravel(sam_remainder(p, X, Y, leading, 1e-2, layers) / sam_remainder(p, X, Y, leading, 1e-3, layers))


def a_bound_ratio(p, X, Y, leading, bound) -> float:
    """max |A_t| / bound(ρ) over the points and ρ ∈ {0.01, 0.1, 0.5}."""
    return float(max(np.max(np.abs(sam_remainder(p, X, Y, leading, rho)) / bound(rho)) for rho in (0.01, 0.1, 0.5)))


def order_measurement(r: np.ndarray, detail: str = "") -> Measurement:
    """The median of the ratios A_t(ρ)/A_t(ρ/10), judged in [98, 102]."""
    v = float(np.median(r))
    return within(v, (98, 102), f"median ratio {v:.2f} " + (detail or f"(range {r.min():.1f}..{r.max():.1f})"))


def chain_violations(lo: np.ndarray, mid: np.ndarray, hi: np.ndarray) -> int:
    """How many entries break lo ≤ mid ≤ hi (relative slack 1e-12 for round-off)."""
    return int(np.sum((lo > mid * (1 + 1e-12)) | (mid > hi * (1 + 1e-12))))


@check("thm2-A-order", "Thm 2 (5)", "NOP: A_t = O(rho^2): A_t(rho)/A_t(rho/10) ~ 100", IMPL)
def thm2_a_order(ctx: Context) -> Measurement:
    p, X, Y = random_nop(ctx.rng, ctx.n)
    gX, gY, _ = p.grads(X, Y, np.zeros(ctx.n), None)
    return order_measurement(a_order_ratio(p, X, Y, lambda rho: th.thm2_leading(gX, gY, rho)))


@check("lemma2-A-order", "Lemma 2 (32)", "OP: A_t = O(rho^2): A_t(rho)/A_t(rho/10) ~ 100", IMPL)
def lemma2_a_order(ctx: Context) -> Measurement:
    p, X, Y = random_op(ctx.rng, ctx.n)
    f = p.outer_grad(p.product(X, Y), np.zeros(ctx.n), None)
    return order_measurement(a_order_ratio(p, X, Y, lambda rho: th.lemma2_leading(f, X, Y, rho)))


@check("thm5-A-order", "Thm 5 (26)", "layer-wise NOP: A_{t,l} = O(rho^2) per layer", IMPL)
def thm5_a_order(ctx: Context) -> Measurement:
    p, X, Y = random_nop(ctx.rng, ctx.n, layers=3)
    gX, gY, _ = p.grads(X, Y, np.zeros(ctx.n), None)
    r = a_order_ratio(p, X, Y, lambda rho: th.thm5_leading_layers(gX, gY, rho), layers=True)
    return order_measurement(r, "over layers x points")


@check("thm2-A-bound", "Thm 2 (16b)", "NOP: |A_t| <= L rho^2 (|x|+|y|)^2 + L rho^3 (|x|+|y|)/2", IMPL)
def thm2_a_bound(ctx: Context) -> Measurement:
    p, X, Y = random_nop(ctx.rng, 20 * ctx.n)
    gX, gY, _ = p.grads(X, Y, np.zeros(len(X)), None)
    v = a_bound_ratio(p, X, Y, lambda rho: th.thm2_leading(gX, gY, rho),
                      lambda rho: th.thm2_A_bound(X, Y, rho, p.lipschitz))
    return at_most(v, 1.0, f"max |A_t|/bound = {v:.3f} over {len(X)} points x 3 radii")


@check("lemma2-A-bound", "Lemma 2", "OP: |A_t| <= 2 L rho^2 |B| (1 + rho/(2 sqrt(|x|^2+|y|^2)))", IMPL)
def lemma2_a_bound(ctx: Context) -> Measurement:
    p, X, Y = random_op(ctx.rng, 20 * ctx.n)
    f = p.outer_grad(p.product(X, Y), np.zeros(len(X)), None)
    v = a_bound_ratio(p, X, Y, lambda rho: th.lemma2_leading(f, X, Y, rho),
                      lambda rho: th.lemma2_A_bound(X, Y, rho, p.lipschitz))
    return at_most(v, 1.0, f"max |A_t|/bound = {v:.3f} over {len(X)} points x 3 radii")


@check("thm2-sandwich", "Thm 2 (6)",
       "|a-b| <= |a^2-b^2|/sqrt(a^2+b^2) <= sqrt(|a^2-b^2|) for a, b >= 0 (the sqrt reading of (6))", MATH)
def thm2_sandwich(ctx: Context) -> Measurement:
    a, b = np.abs(ctx.rng.standard_normal((2, 100_000))) * np.exp(ctx.rng.uniform(-5, 3, (2, 100_000)))
    bad = chain_violations(*th.thm2_sandwich(a, b))
    return at_most(bad, 0.0, f"{bad} violations in 100000 draws")


@check("thm3-sandwich", "Thm 3 (36)-(37)",
       "C_t <= 2|B|/sqrt(|x|^2+|y|^2) <= sqrt(2|B|), with C_t = ||x| - |y||", MATH)
def thm3_sandwich(ctx: Context) -> Measurement:
    p, X, Y = random_op(ctx.rng, 10 * ctx.n)
    bad = chain_violations(*th.thm3_sandwich(X, Y))
    return at_most(bad, 0.0, f"{bad} violations in {len(X)} random points")


@check("thm3-rate-bounds", "Thm 3",
       "along SAM-OP: rho|f'|C_t - 2L rho^2|B|(..) <= |dB/dt| <= rho|f'|sqrt(2|B|) + same", IMPL)
def thm3_rate_bounds(ctx: Context) -> Measurement:
    p, X, Y = random_op(ctx.rng, 10 * ctx.n)
    f = p.outer_grad(p.product(X, Y), np.zeros(len(X)), None)
    bad = 0
    for rho in (0.01, 0.1):
        rate = np.abs(th.dB_dt(p, Optimizer("sam", rho=rho), X, Y, 0.0))
        lo, hi = th.thm3_bounds(f, X, Y, rho)
        slack = th.lemma2_A_bound(X, Y, rho, p.lipschitz)
        bad += int(np.sum((rate < lo - slack - 1e-12) | (rate > hi + slack + 1e-12)))
    return at_most(bad, 0.0, f"{bad} violations in {2 * len(X)} (point, rho) pairs")


@check("lemma3-msharp-stronger", "Lemma 3 (39)",
       "m-sharpness regularizes at least as strongly: (1/m) sum|f'_i| >= |f'|", MATH)
def lemma3_msharp_stronger(ctx: Context) -> Measurement:
    rng, m = ctx.rng, 4
    p, X, Y = random_op(rng, 10 * ctx.n)
    chunks = rng.standard_normal((m, len(X)))
    alpha = np.ones(len(X))
    W = p.product(X, Y)
    fi = np.stack([p.outer_grad(W, alpha, c) for c in chunks])
    f = p.outer_grad(W, alpha, chunks.mean(0))
    lead_m = th.lemma3_leading(fi, X, Y, 0.01)
    lead_1 = th.lemma2_leading(f, X, Y, 0.01)
    bad = int(np.sum(np.abs(lead_m) < np.abs(lead_1) * (1 - 1e-12)))
    # shown, not judged: how close (39) is to the exact m-SAM rate at a small radius
    exact = th.dB_dt(p, Optimizer("msam", rho=1e-4, m=m), X, Y, alpha, chunks)
    lead_small = th.lemma3_leading(fi, X, Y, 1e-4)
    rel = float(np.median(np.abs(exact - lead_small) / np.abs(lead_small)))
    return at_most(bad, 0.0, f"{bad} points where it is weaker; (39) vs exact at rho=1e-4: median rel. gap {rel:.1e}")
