"""Asymptotic orders and inequalities (spec §7.2.15–§7.2.17, Thm 3, 5, 7, Lemma 3, Cor. 1/2): A_t = O(ρ²), the
explicit A_t bounds, the sandwich inequalities behind (6) and Thm 3, the O(√D) weaker per-layer rate,
Cor. 2's threshold as dynamics, and m-sharpness regularizing more strongly.

The implementation checks here take the exact rate dB/dt = ⟨x, ẋ⟩ − ⟨y, ẏ⟩ of an optimizer's field
(``theory.dB_dt``) and compare it with the paper's leading terms, which are computed from the
problem's gradients alone.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from balancedness.checks.instances import CHUNK_NOISE, paper_op, random_nop, random_op
from balancedness.checks.registry import Context, Kind, Measurement, all_hold, at_most, check, within
from balancedness.metrics import FloatArray, balancedness, layer_sq_norms
from balancedness.sims import theory as th
from balancedness.sims.optimizers import Optimizer
from balancedness.sims.problems import Problem, nop_problem

IMPL, MATH = Kind.IMPLEMENTATION, Kind.MATH
#: A term of ρ: the leading part of dB/dt, or a bound on the rest.
Leading = Callable[[float], FloatArray]


def sam_remainder(
    p: Problem,
    X: FloatArray,
    Y: FloatArray,
    leading: Leading,
    rho: float,
    layers: bool = False,
    opt: str = "sam",
    m: int = 1,
    alpha: float | FloatArray = 0.0,
    chunks: FloatArray | None = None,
) -> FloatArray:
    """A_t = exact dB/dt of the ``opt`` field − ``leading(ρ)`` (per layer if ``layers``)."""
    rate = th.dB_dt_layers if layers else th.dB_dt
    out: FloatArray = rate(p, Optimizer(opt, rho=rho, m=m), X, Y, alpha, chunks) - leading(rho)
    return out


def a_order_ratio(
    p: Problem,
    X: FloatArray,
    Y: FloatArray,
    leading: Leading,
    layers: bool = False,
    opt: str = "sam",
    m: int = 1,
    alpha: float | FloatArray = 0.0,
    chunks: FloatArray | None = None,
) -> FloatArray:
    """A_t(ρ)/A_t(ρ/10) for ρ = 1e-2 (≈ 100 when A_t = O(ρ²)); ``opt`` … ``chunks`` as for :func:`sam_remainder`."""
    A1, A2 = (sam_remainder(p, X, Y, leading, rho, layers, opt, m, alpha, chunks) for rho in (1e-2, 1e-3))
    return np.ravel(A1 / A2)


def a_bound_ratio(
    p: Problem,
    X: FloatArray,
    Y: FloatArray,
    leading: Leading,
    bound: Leading,
    opt: str = "sam",
    m: int = 1,
    alpha: float | FloatArray = 0.0,
    chunks: FloatArray | None = None,
) -> float:
    """max |A_t| / bound(ρ) over the points and ρ ∈ {0.01, 0.1, 0.5} (NaN if any is not finite); ``opt`` …
    ``chunks`` as for :func:`sam_remainder`."""
    r = [
        np.abs(sam_remainder(p, X, Y, leading, rho, False, opt, m, alpha, chunks)) / bound(rho)
        for rho in (0.01, 0.1, 0.5)
    ]
    return float(np.max(r)) if all(np.all(np.isfinite(v)) for v in r) else float("nan")


def order_measurement(r: FloatArray, detail: str = "") -> Measurement:
    """The median of the ratios A_t(ρ)/A_t(ρ/10), judged in [98, 102]."""
    v = float(np.median(r))
    return within(v, (98, 102), f"median ratio {v:.2f} " + (detail or f"(range {np.min(r):.1f}..{np.max(r):.1f})"))


def chain_violations(lo: FloatArray, mid: FloatArray, hi: FloatArray) -> int:
    """How many entries break lo ≤ mid ≤ hi (relative slack 1e-12 for round-off; NaN counts as broken)."""
    return int(np.sum(~((lo <= mid * (1 + 1e-12)) & (mid <= hi * (1 + 1e-12)))))


def op_chunks(ctx: Context, p: Problem, X: FloatArray, Y: FloatArray, m: int) -> tuple[FloatArray, FloatArray]:
    """m random minibatch chunks (effective noise α·n_i, shape (m, n), for ``alpha = 1``) and f′_i of each
    chunk from (14), shape (m, n)."""
    chunks = CHUNK_NOISE * ctx.rng.standard_normal((m, len(X)))
    return chunks, np.stack([paper_op(p, X, Y, p.target + c, 0.0).G for c in chunks])


# -- A_t = O(ρ²) ---------------------------------------------------------------------------------
@check("thm2-A-order", "Thm 2 (5)", "NOP: A_t = O(rho^2): A_t(rho)/A_t(rho/10) ~ 100", IMPL, runs=("sam",), exact=True)
def thm2_a_order(ctx: Context) -> Measurement:
    p, X, Y = random_nop(ctx.rng, ctx.n)
    gX, gY, _ = p.grads(X, Y, np.zeros(ctx.n), None)
    return order_measurement(a_order_ratio(p, X, Y, lambda rho: th.thm2_leading(gX, gY, rho)))


@check(
    "lemma2-A-order", "Lemma 2 (32)", "OP: A_t = O(rho^2): A_t(rho)/A_t(rho/10) ~ 100", IMPL, runs=("sam",), exact=True
)
def lemma2_a_order(ctx: Context) -> Measurement:
    p, X, Y = random_op(ctx.rng, ctx.n)
    f = p.outer_grad(p.product(X, Y), np.zeros(ctx.n), None)
    return order_measurement(a_order_ratio(p, X, Y, lambda rho: th.lemma2_leading(f, X, Y, rho)))


@check("thm5-A-order", "Thm 5 (26)", "layer-wise NOP: A_{t,l} = O(rho^2) per layer", IMPL, runs=("sam",), exact=True)
def thm5_a_order(ctx: Context) -> Measurement:
    p, X, Y = random_nop(ctx.rng, ctx.n, layers=3)
    gX, gY, _ = p.grads(X, Y, np.zeros(ctx.n), None)
    r = a_order_ratio(p, X, Y, lambda rho: th.thm5_leading_layers(gX, gY, rho), layers=True)
    return order_measurement(r, "over layers x points")


@check("thm7-A-order", "Thm 7 (44)", "layer-wise OP: A_{t,l} = O(rho^2) per layer", IMPL, runs=("sam",), exact=True)
def thm7_a_order(ctx: Context) -> Measurement:
    L = 3
    p, X, Y = random_op(ctx.rng, ctx.n, layers=L)
    f = p.outer_grad(p.product(X, Y), np.zeros(ctx.n), None)
    f_layers = np.repeat(f[:, None], L, axis=1)  # every layer sees the same outer gradient (sum coupling)
    r = a_order_ratio(p, X, Y, lambda rho: th.thm7_leading_layers(f_layers, X, Y, rho), layers=True)
    return order_measurement(r, f"over {L} layers x points")


@check(
    "lemma3-A-order",
    "Lemma 3 (39)",
    "m-sharpness on OP: A_t = O(rho^2) (m = 4 random chunks)",
    IMPL,
    runs=("msam",),
    exact=True,
)
def lemma3_a_order(ctx: Context) -> Measurement:
    m = 4
    p, X, Y = random_op(ctx.rng, ctx.n)
    chunks, fi = op_chunks(ctx, p, X, Y, m)
    r = a_order_ratio(
        p, X, Y, lambda rho: th.lemma3_leading(fi, X, Y, rho), opt="msam", m=m, alpha=np.ones(ctx.n), chunks=chunks
    )
    return order_measurement(r)


# -- explicit A_t bounds ---------------------------------------------------------------------------
@check(
    "thm2-A-bound",
    "Thm 2 (16b)",
    "NOP: |A_t| <= L rho^2 (|x|+|y|)^2 + L rho^3 (|x|+|y|)/2",
    IMPL,
    runs=("sam",),
    exact=True,
)
def thm2_a_bound(ctx: Context) -> Measurement:
    p, X, Y = random_nop(ctx.rng, 20 * ctx.n)
    gX, gY, _ = p.grads(X, Y, np.zeros(len(X)), None)
    v = a_bound_ratio(
        p, X, Y, lambda rho: th.thm2_leading(gX, gY, rho), lambda rho: th.thm2_A_bound(X, Y, rho, p.lipschitz)
    )
    return at_most(v, 1.0, f"max |A_t|/bound = {v:.3f} over {len(X)} points x 3 radii")


@check(
    "lemma2-A-bound",
    "Lemma 2",
    "OP: |A_t| <= 2 L rho^2 |B| (1 + rho/(2 sqrt(|x|^2+|y|^2)))",
    IMPL,
    runs=("sam",),
    exact=True,
)
def lemma2_a_bound(ctx: Context) -> Measurement:
    p, X, Y = random_op(ctx.rng, 20 * ctx.n)
    f = p.outer_grad(p.product(X, Y), np.zeros(len(X)), None)
    v = a_bound_ratio(
        p, X, Y, lambda rho: th.lemma2_leading(f, X, Y, rho), lambda rho: th.lemma2_A_bound(X, Y, rho, p.lipschitz)
    )
    return at_most(v, 1.0, f"max |A_t|/bound = {v:.3f} over {len(X)} points x 3 radii")


@check(
    "lemma3-A-bound",
    "Lemma 3 (39), proof",
    "m-sharpness: |A_t| <= 2 L rho^2 |B| (1 + rho/(2 sqrt(|x|^2+|y|^2))), i.e. O(rho^2 L |B|)",
    IMPL,
    runs=("msam",),
    exact=True,
)
def lemma3_a_bound(ctx: Context) -> Measurement:
    m = 4
    p, X, Y = random_op(ctx.rng, 5 * ctx.n)
    chunks, fi = op_chunks(ctx, p, X, Y, m)
    v = a_bound_ratio(
        p,
        X,
        Y,
        lambda rho: th.lemma3_leading(fi, X, Y, rho),
        lambda rho: th.lemma2_A_bound(X, Y, rho, p.lipschitz),
        opt="msam",
        m=m,
        alpha=np.ones(len(X)),
        chunks=chunks,
    )
    return at_most(
        v, 1.0, f"max |A_t|/bound = {v:.3f} over {len(X)} points x 3 radii (each chunk obeys Lemma 2's bound)"
    )


# -- the inequalities on their own -----------------------------------------------------------------
@check(
    "thm2-sandwich",
    "Thm 2 (6)",
    "|a-b| <= |a^2-b^2|/sqrt(a^2+b^2) <= sqrt(|a^2-b^2|) for a, b >= 0 (the sqrt reading of (6))",
    MATH,
)
def thm2_sandwich(ctx: Context) -> Measurement:
    a, b = np.abs(ctx.rng.standard_normal((2, 100_000))) * np.exp(ctx.rng.uniform(-5, 3, (2, 100_000)))
    bad = chain_violations(*th.thm2_sandwich(a, b))
    return at_most(bad, 0.0, f"{bad} violations in 100000 draws")


@check("thm3-sandwich", "Thm 3 (36)-(37)", "C_t <= 2|B|/sqrt(|x|^2+|y|^2) <= sqrt(2|B|), with C_t = ||x| - |y||", MATH)
def thm3_sandwich(ctx: Context) -> Measurement:
    p, X, Y = random_op(ctx.rng, 10 * ctx.n)
    bad = chain_violations(*th.thm3_sandwich(X, Y))
    return at_most(bad, 0.0, f"{bad} violations in {len(X)} random points")


@check(
    "lemma3-triangle",
    "Lemma 3 (39), §4",
    "m-sharpness's coefficient is at least SAM's: (1/m) sum_i |f'_i| >= |f'| with f' = (1/m) sum_i f'_i",
    MATH,
)
def lemma3_triangle(ctx: Context) -> Measurement:
    m = 4
    p, X, Y = random_op(ctx.rng, 10 * ctx.n)
    _, fi = op_chunks(ctx, p, X, Y, m)
    lead_m = th.lemma3_leading(fi, X, Y, 0.01)
    lead_1 = th.lemma2_leading(fi.mean(0), X, Y, 0.01)
    bad = int(np.sum(~(np.abs(lead_m) >= np.abs(lead_1) * (1 - 1e-12))))
    return at_most(bad, 0.0, f"{bad} of {len(X)} points where (39)'s coefficient is below (32)'s")


# -- rates of SAM against the theorems --------------------------------------------------------------
@check(
    "thm3-rate-bounds",
    "Thm 3",
    "SAM-OP: rho|f'|C_t - s <= |dB/dt| <= rho|f'|sqrt(2|B|) + s (s = the explicit A_t bound), and |B| "
    "decreases wherever rho|f'|C_t > s",
    IMPL,
    runs=("sam",),
)
def thm3_rate_bounds(ctx: Context) -> Measurement:
    p, X, Y = random_op(ctx.rng, 10 * ctx.n)
    f = p.outer_grad(p.product(X, Y), np.zeros(len(X)), None)
    B = balancedness(X, Y)
    bad = shrink = 0
    for rho in (0.01, 0.1):
        rate = th.dB_dt(p, Optimizer("sam", rho=rho), X, Y, 0.0)
        lo, hi = th.thm3_bounds(f, X, Y, rho)
        slack = th.lemma2_A_bound(X, Y, rho, p.lipschitz)
        premise = lo > slack  # Thm 3: |B| decreases whenever |f'|C_t > O(rho L |B|)
        within_bounds = (np.abs(rate) >= lo - slack - 1e-12) & (np.abs(rate) <= hi + slack + 1e-12)
        holds = within_bounds & (~premise | (rate * B < 0))
        bad += int(np.sum(~holds))
        shrink += int(np.sum(premise))
    return at_most(bad, 0.0, f"{bad} violations in {2 * len(X)} (point, rho) pairs; |B| must decrease at {shrink}")


@check(
    "lemma3-msharp-stronger",
    "Lemma 3 (39), §4",
    "m-SAM contracts B faster than with m = 1 (SAM) on the same minibatch, by (39)'s gain over (32) up to both "
    "A_t bounds",
    IMPL,
    runs=("msam",),
)
def lemma3_msharp_stronger(ctx: Context) -> Measurement:
    """c = −sign(B) dB/dt (the contraction). Lemmas 2 and 3 give c_m − c_1 ≥ (|lead_m| − |lead_1|) − (s_m + s_1)
    with the leading terms (39), (32) and their A_t bounds s (Lemma 2's bound holds for each chunk). m-SAM
    with one chunk is SAM ((38) with m = 1 is (7)), so both rates come from the m-SAM implementation."""
    m, rho = 4, 0.01
    p, X, Y = random_op(ctx.rng, 10 * ctx.n)
    chunks, fi = op_chunks(ctx, p, X, Y, m)
    ones = np.ones(len(X))
    B = balancedness(X, Y)
    contraction = {
        o: -np.sign(B) * th.dB_dt(p, Optimizer("msam", rho=rho, m=k), X, Y, ones, c)
        for o, k, c in (("msam", m, chunks), ("sam", 1, chunks.mean(0)[None]))
    }
    gain = np.abs(th.lemma3_leading(fi, X, Y, rho)) - np.abs(th.lemma2_leading(fi.mean(0), X, Y, rho))
    slack = 2 * th.lemma2_A_bound(X, Y, rho, p.lipschitz)
    holds = contraction["msam"] - contraction["sam"] >= gain - slack
    bad = int(np.sum(~holds))
    stronger = int(np.sum(gain > slack))
    ratio = float(np.median(contraction["msam"] / contraction["sam"]))
    return at_most(
        bad,
        0.0,
        f"{bad} of {len(X)} points break it; at {stronger} the gain exceeds the slack, so m-SAM "
        f"(m = {m}) must contract strictly faster; median ratio m-SAM/SAM {ratio:.2f} (rho = {rho})",
    )


@check(
    "thm5-sqrtD-weaker",
    "Thm 5, §3",
    "per layer, SAM's rate is O(sqrt D) weaker than SAM normalized on that layer alone: x1/sqrt(D) for D equal layers",
    IMPL,
    runs=("sam",),
    exact=True,
)
def thm5_sqrt_d_weaker(ctx: Context) -> Measurement:
    rho, ratios = 1e-4, {}
    for D in (1, 2, 4, 8):
        x0 = np.tile(nop_problem().x0, (D, 1, 1))
        q = nop_problem(1, D, x0=x0, y0=-3 * x0)
        X, Y = q.x0[None], q.y0[None]
        gX, gY, _ = q.grads(X, Y, np.zeros(1), None)
        a, b = layer_sq_norms(gX), layer_sq_norms(gY)
        alone = rho * (a - b) / np.sqrt(a + b)  # Thm 2's leading term for layer l as if it were the whole model
        ratios[D] = float(np.max(th.dB_dt_layers(q, Optimizer("sam", rho=rho), X, Y, 0.0) / alone))
    v = float(np.max([abs(r * np.sqrt(D) - 1) for D, r in ratios.items()]))  # NaN propagates
    by_sqrt = ", ".join(f"{r * np.sqrt(D):.4f}" for D, r in ratios.items())
    by_d = ", ".join(f"{r * D:.2f}" for D, r in ratios.items())
    return at_most(
        v,
        0.01,
        f"rate / rate alone x sqrt(D) = {by_sqrt} for D = 1, 2, 4, 8 (S1's O(D) reading, "
        f"x D: {by_d}); judged |. - 1| <= 0.01 at rho = {rho:g}",
    )


@check(
    "cor2-dynamics",
    "Cor 1, Cor 2 (21)",
    "SAM-NOP: B above the threshold Bbar^rho(+eps) shrinks, B below Bbar^rho(-eps) grows (eps = A_t bound/rho)",
    IMPL,
    runs=("sam",),
)
def cor2_dynamics(ctx: Context) -> Measurement:
    p, X, Y = random_nop(ctx.rng, 10 * ctx.n)
    gX, gY, _ = p.grads(X, Y, np.zeros(len(X)), None)
    B = balancedness(X, Y)
    parts, bad, ok = [], 0, True
    for rho in (1e-3, 1e-2, 1e-1):
        rate = th.dB_dt(p, Optimizer("sam", rho=rho), X, Y, 0.0)
        eps = th.thm2_A_bound(X, Y, rho, p.lipschitz) / rho
        above = B > th.cor2_threshold_rho(X, Y, gX, gY, eps)
        below = B < th.cor2_threshold_rho(X, Y, gX, gY, -eps)
        wrong = int(np.sum(above & ~(rate < 0)) + np.sum(below & ~(rate > 0)))
        bad += wrong
        ok = ok and int(np.sum(above | below)) >= len(X) // 2
        parts.append(f"rho={rho:g}: {int(np.sum(above))} above, {int(np.sum(below))} below, {wrong} wrong")
    return all_hold(ok and bad == 0, "; ".join(parts) + f" ({len(X)} random points)")
