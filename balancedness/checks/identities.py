"""Exact identities of the optimizers' fields and single steps at random points (spec §7.1.3–§7.1.13).

Each check takes the field or one step of an optimizer implementation (through the registry:
``Optimizer.direction``, ``theory.dB_dt``) at random points with a random minibatch, and compares it
with the identity of ``theory`` evaluated on quantities computed from the paper's equations
(``instances.paper_nop``/``paper_op``: their own arithmetic, nothing shared with the implementation),
to a relative error near machine precision.
"""

from __future__ import annotations

import numpy as np

from balancedness.checks.instances import paper_nop, paper_op, random_minibatch, random_nop, random_op, rel_error
from balancedness.checks.registry import Context, Kind, Measurement, at_most, check
from balancedness.metrics import balancedness, layer_sq_norms
from balancedness.sims import theory as th
from balancedness.sims.optimizers import Optimizer

IMPL = Kind.IMPLEMENTATION


def sam_rate_error(ctx: Context, p, X, Y, rho: float, identity, layers: bool = False) -> float:
    """Max relative error of the SAM field's exact dB/dt (dB_l/dt if ``layers``) on a random minibatch
    against ``identity(X, Y, G, G̃, ‖g‖, ρ)`` of ``theory`` with G, G̃ from the paper's equations."""
    N, C = random_minibatch(ctx.rng, p, len(X))
    s = (paper_nop if p.kind == "nop" else paper_op)(p, X, Y, C, rho)
    rate = th.dB_dt_layers if layers else th.dB_dt
    return rel_error(rate(p, Optimizer("sam", rho=rho), X, Y, 1.0, N[None]),
                     identity(X, Y, s.G, s.G_tilde, s.grad_norm, rho))


def one_step(opt: Optimizer, p, X, Y, lr: float, N: np.ndarray):
    """(B, B⁺): B before and after one step z⁺ = z + η d(z) of ``opt`` on the minibatch with noise N."""
    dX, dY, _, _ = opt.direction(p, X, Y, np.ones(len(X)), N[None])
    return balancedness(X, Y), balancedness(X + lr * dX, Y + lr * dY)


@check("sam-nop-identity", "(16a)", "SAM-NOP flow: dB/dt = rho*u*[y'G~'G y - x'G~ G'x] exactly (random minibatch)",
       IMPL, runs=("sam",), exact=True)
def sam_nop_identity(ctx: Context) -> Measurement:
    p, X, Y = random_nop(ctx.rng, ctx.n)
    v = sam_rate_error(ctx, p, X, Y, 0.1, th.sam_nop_rate)
    return at_most(v, 1e-10, f"max rel. error {v:.1e} over {ctx.n} random points and minibatches")


@check("sam-op-identity", "(33)", "SAM-OP flow: dB/dt = -2 rho f' f~' B / ||g|| exactly (random minibatch)",
       IMPL, runs=("sam",), exact=True)
def sam_op_identity(ctx: Context) -> Measurement:
    p, X, Y = random_op(ctx.rng, ctx.n)
    v = sam_rate_error(ctx, p, X, Y, 0.2, th.sam_op_rate)
    return at_most(v, 1e-10, f"max rel. error {v:.1e} over {ctx.n} random points and minibatches")


@check("sgd-discrete-nop", "§7.1.5",
       "one SGD/SNGD step on NOP: B+ - B = (eta^2/2)(|g_x|^2 - |g_y|^2) (eta/|g| for SNGD)", IMPL,
       runs=("sgd", "sngd"), exact=True)
def sgd_discrete_nop(ctx: Context) -> Measurement:
    lr = 0.05
    p, X, Y = random_nop(ctx.rng, ctx.n)
    N, C = random_minibatch(ctx.rng, p, ctx.n)
    s = paper_nop(p, X, Y, C, 0.0)
    errs = []
    for name in ("sgd", "sngd"):
        B, B1 = one_step(Optimizer(name), p, X, Y, lr, N)
        errs.append(rel_error(B1 - B, th.sgd_discrete_drift(s.gX, s.gY, lr if name == "sgd" else lr / s.grad_norm)))
    v = float(np.max(errs))  # NaN propagates
    return at_most(v, 1e-8, f"max rel. error {v:.1e} (SGD {errs[0]:.1e}, SNGD {errs[1]:.1e}), random minibatches")


@check("sgd-discrete-op", "§7.1.6", "one SGD step on OP: B+ = (1 - eta^2 f'^2) B (random minibatch)", IMPL,
       runs=("sgd",), exact=True)
def sgd_discrete_op(ctx: Context) -> Measurement:
    lr = 0.05
    p, X, Y = random_op(ctx.rng, ctx.n)
    N, C = random_minibatch(ctx.rng, p, ctx.n)
    B, B1 = one_step(Optimizer("sgd"), p, X, Y, lr, N)
    v = rel_error(B1, th.sgd_op_step_factor(paper_op(p, X, Y, C, 0.0).G, lr) * B)
    return at_most(v, 1e-10, f"max rel. error {v:.1e}")


@check("sam-discrete-op", "§7.1.7",
       "one SAM step on OP: B+ = [1 - 2 eta rho u f~' - eta^2 f~'^2 (1 - rho^2 u^2)] B (random minibatch)", IMPL,
       runs=("sam",), exact=True)
def sam_discrete_op(ctx: Context) -> Measurement:
    lr, rho = 0.05, 0.2
    p, X, Y = random_op(ctx.rng, ctx.n)
    N, C = random_minibatch(ctx.rng, p, ctx.n)
    B, B1 = one_step(Optimizer("sam", rho=rho), p, X, Y, lr, N)
    s = paper_op(p, X, Y, C, rho)
    v = rel_error(B1, th.sam_op_step_factor(s.G_tilde, th.op_u(s.G, X, Y), rho, lr) * B)
    return at_most(v, 1e-10, f"max rel. error {v:.1e}")


@check("sam-discrete-nop", "§7.1.8",
       "one SAM step on NOP: B+ - B = eta rho u [y'G~'Gy - x'G~G'x] + (eta^2/2)(|g_x~|^2 - |g_y~|^2)", IMPL,
       runs=("sam",), exact=True)
def sam_discrete_nop(ctx: Context) -> Measurement:
    lr, rho = 0.05, 0.1
    p, X, Y = random_nop(ctx.rng, ctx.n)
    N, C = random_minibatch(ctx.rng, p, ctx.n)
    B, B1 = one_step(Optimizer("sam", rho=rho), p, X, Y, lr, N)
    s = paper_nop(p, X, Y, C, rho)
    v = rel_error(B1 - B, th.sam_nop_step_change(X, Y, s.G, s.G_tilde, s.grad_norm, s.gX_tilde, s.gY_tilde, rho, lr))
    return at_most(v, 1e-8, f"max rel. error {v:.1e}")


@check("msam-discrete-op", "§7.1.9 (38)", "one m-sharpness step on OP: B+ = [(1 - eta b)^2 - eta^2 a^2] B", IMPL,
       runs=("msam",), exact=True)
def msam_discrete_op(ctx: Context) -> Measurement:
    rng, lr, rho, m = ctx.rng, 0.05, 0.2, 4
    p, X, Y = random_op(rng, ctx.n)
    chunks = rng.standard_normal((m, ctx.n))
    dX, dY, _, _ = Optimizer("msam", rho=rho, m=m).direction(p, X, Y, np.ones(ctx.n), chunks)
    B, B1 = balancedness(X, Y), balancedness(X + lr * dX, Y + lr * dY)
    parts = [paper_op(p, X, Y, p.target + c, rho) for c in chunks]
    us = [th.op_u(s.G, X, Y) for s in parts]
    v = rel_error(B1, th.msam_op_step_factor(np.array([s.G_tilde for s in parts]), np.array(us), rho, lr) * B)
    return at_most(v, 1e-10, f"max rel. error {v:.1e} (m = {m}, each chunk its own minibatch)")


@check("thm5-layer-identity-nop", "(27a)",
       "layer-wise SAM-NOP (global u): dB_l/dt = rho u [y_l'G~_l'G_l y_l - x_l'G~_l G_l'x_l]", IMPL,
       runs=("sam",), exact=True)
def thm5_layer_identity_nop(ctx: Context) -> Measurement:
    rho, L = 0.1, 3
    p, X, Y = random_nop(ctx.rng, ctx.n, layers=L)
    v = sam_rate_error(ctx, p, X, Y, rho, th.sam_nop_rate_layers, layers=True)
    return at_most(v, 1e-10, f"max rel. error {v:.1e} ({L} layers)")


@check("thm7-layer-identity-op", "(41), Thm 7",
       "layer-wise SAM-OP (global u): dB_l/dt = -rho u f'_l f~'_l (|x_l|^2 - |y_l|^2)", IMPL, runs=("sam",), exact=True)
def thm7_layer_identity_op(ctx: Context) -> Measurement:
    rho, L = 0.2, 3
    p, X, Y = random_op(ctx.rng, ctx.n, layers=L)
    v = sam_rate_error(ctx, p, X, Y, rho, th.sam_op_rate_layers, layers=True)
    return at_most(v, 1e-10, f"max rel. error {v:.1e} ({L} layers)")


@check("rank-r-sam-identity", "§7.1.11", "rank-r SAM flow: dB/dt = rho u [tr(Y'G~'GY) - tr(X'G~G'X)]", IMPL,
       runs=("sam",), exact=True)
def rank_r_sam_identity(ctx: Context) -> Measurement:
    p, X, Y = random_nop(ctx.rng, ctx.n, rank=3, d1=5, d2=4)
    v = sam_rate_error(ctx, p, X, Y, 0.1, th.sam_nop_rate)
    return at_most(v, 1e-10, f"max rel. error {v:.1e} (rank 3, 5x4)")


def bar_rate_error(ctx: Context, variant: str, p, X, Y) -> float:
    """The exact dB/dt of the nBAR/oBAR field on a random minibatch against ``theory.bar_flow_rate``
    (the sign rule of Alg. 2/3 written there, with the gradient norms from the paper's equations)."""
    mu = 0.7
    N, C = random_minibatch(ctx.rng, p, len(X))
    s = (paper_nop if p.kind == "nop" else paper_op)(p, X, Y, C, 0.0)
    rate = th.dB_dt(p, Optimizer(variant, mu=mu), X, Y, 1.0, N[None])
    return rel_error(rate, th.bar_flow_rate(variant, X, Y, layer_sq_norms(s.gX), layer_sq_norms(s.gY), mu))


@check("nbar-flow-rate", "Alg 2, §4.5.5",
       "nBAR flow (SGD base): dB/dt = sum_l s_l mu (|x_l|^2 + |y_l|^2), s_l = sign(|g_x_l| - |g_y_l|)", IMPL,
       runs=("nbar",), exact=True)
def nbar_flow_rate(ctx: Context) -> Measurement:
    p, X, Y = random_nop(ctx.rng, ctx.n, layers=2)
    v = bar_rate_error(ctx, "nbar", p, X, Y)
    return at_most(v, 1e-10, f"max rel. error {v:.1e} (2 layers, per-layer sign, random minibatch)")


@check("obar-flow-rate", "Alg 3, §4.5.5",
       "oBAR flow (SGD base): dB/dt = -sign(B) mu (|x|^2 + |y|^2) (per layer on 2 NOP layers)", IMPL,
       runs=("obar",), exact=True)
def obar_flow_rate(ctx: Context) -> Measurement:
    p, X, Y = random_op(ctx.rng, ctx.n)
    one = rel_error(th.dB_dt(p, Optimizer("obar", mu=0.7), X, Y, 0.0), th.obar_flow_rate(X, Y, 0.7))
    q, Xq, Yq = random_nop(ctx.rng, ctx.n, layers=2)
    v = float(np.max([one, bar_rate_error(ctx, "obar", q, Xq, Yq)]))
    return at_most(v, 1e-10, f"max rel. error {v:.1e} (OP: {one:.1e}; 2 NOP layers, per-layer sign)")
