"""Checks on solved flows (spec §7.1.1–2, §7.1.11, §7.2.18): what the limiting ODEs conserve, and the
discrete runs converging to them."""

from __future__ import annotations

import numpy as np

from balancedness.checks.registry import Context, Kind, Measurement, at_most, check, within
from balancedness.sims.discrete import simulate
from balancedness.sims.flows import solve_flow
from balancedness.sims.problems import Problem, nop_problem, op_problem


def flow_conserves(problem: Problem, optimizer: str, t_end: float) -> Measurement:
    """max_t |B_t − B_0| along the flow of ``optimizer``, judged ≤ 1e-8."""
    r = solve_flow(problem, optimizer, t_end=t_end, n_records=101)
    v = float(np.max(np.abs(r.balancedness - r.balancedness[:, :1])))
    return at_most(v, 1e-8, f"max|B_t - B_0| = {v:.1e} over t in [0, {t_end:g}]")


@check("thm1-sgd-flow-nop", "Thm 1", "SGD flow on NOP keeps B_t = B_0", Kind.IMPLEMENTATION)
def sgd_flow_nop(ctx: Context) -> Measurement:
    return flow_conserves(nop_problem(), "sgd", 10.0)


@check("thm6-sgd-flow-op", "Thm 6", "SGD flow on OP keeps B_t = B_0", Kind.IMPLEMENTATION)
def sgd_flow_op(ctx: Context) -> Measurement:
    return flow_conserves(op_problem(), "sgd", 10.0)


@check("thm4-sngd-flow-nop", "Thm 4", "SNGD flow on NOP keeps B_t = B_0 (until it reaches a minimizer)",
       Kind.IMPLEMENTATION)
def sngd_flow_nop(ctx: Context) -> Measurement:
    return flow_conserves(nop_problem(), "sngd", 0.5)


@check("thm6-sngd-flow-op", "Thm 6 (31)", "SNGD flow on OP keeps B_t = B_0 (until f' = 0)", Kind.IMPLEMENTATION)
def sngd_flow_op(ctx: Context) -> Measurement:
    return flow_conserves(op_problem(), "sngd", 0.5)


@check("rank-r-sgd-conserves", "Thm 1 (rank r)", "SGD flow on rank-r NOP conserves X'X - Y'Y (r x r)",
       Kind.IMPLEMENTATION)
def rank_r_sgd_conserves(ctx: Context) -> Measurement:
    rng = np.random.default_rng(7)
    p = nop_problem(2, d1=4, d2=4, target=rng.standard_normal((4, 4)) * 0.5,
                    x0=0.5 * rng.standard_normal((4, 2)), y0=0.5 * rng.standard_normal((4, 2)))
    r = solve_flow(p, "sgd", t_end=5.0, n_records=51)
    M = np.einsum("trij,trik->trjk", r.x[0], r.x[0]) - np.einsum("trij,trik->trjk", r.y[0], r.y[0])
    v = float(np.max(np.abs(M - M[:1])))
    return at_most(v, 1e-8, f"max entry change {v:.1e} over t in [0, 5] (rank 2, 4x4)")


@check("discrete-to-flow", "§7.2.18", "discrete SAM converges to its flow: |B_disc(1) - B_flow(1)| ~ 0.2 eta",
       Kind.IMPLEMENTATION)
def discrete_to_flow(ctx: Context) -> Measurement:
    p = nop_problem()
    flow = solve_flow(p, "sam", rho=0.1, t_end=1.0, n_records=2).balancedness[0, -1]
    errs = []
    for lr in (1e-2, 1e-3) + (() if ctx.quick else (1e-4,)):
        d = simulate(p, "sam", rho=0.1, lr=lr, steps=int(round(1 / lr)), record_every=int(round(1 / lr)))
        errs.append(abs(d.balancedness[0, -1] - flow))
    ratios = [errs[i] / errs[i + 1] for i in range(len(errs) - 1)]
    v = float(min(ratios))
    return within(v, (8.0, 12.0), f"B_flow(1) = {flow:.5f}; errors {', '.join(f'{e:.1e}' for e in errs)}; "
                  f"ratio per 10x eta {', '.join(f'{r:.2f}' for r in ratios)}")


@check("lemma2-no-sign-change", "Lemma 2 (33)", "along the SAM-OP flow B never changes sign", Kind.IMPLEMENTATION)
def lemma2_no_sign_change(ctx: Context) -> Measurement:
    r = solve_flow(op_problem(), "sam", rho=0.2, t_end=5.0, n_records=101)
    B = r.balancedness[0]
    flips = int(np.sum(np.sign(B[1:]) != np.sign(B[:-1])))
    return at_most(flips, 0.0, f"{flips} sign changes; B from {B[0]:.3f} to {B[-1]:.4f}")
