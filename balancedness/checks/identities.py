"""Exact identities of the optimizers' fields and steps at random points (spec §7.1.3–§7.1.13).

Each check takes the field or one step of an optimizer implementation (``Optimizer.direction``,
``theory.dB_dt``) and compares it with the identity of ``theory`` evaluated at the same point, to a
relative error near machine precision.
"""

from __future__ import annotations

import numpy as np

from balancedness.checks.instances import random_nop, random_op, rel_error, sam_parts
from balancedness.checks.registry import Context, Kind, Measurement, at_most, check
from balancedness.metrics import balancedness, global_norm
from balancedness.sims import theory as th
from balancedness.sims.optimizers import Optimizer

IMPL = Kind.IMPLEMENTATION


def sam_rate_error(p, X, Y, rho: float, identity, layers: bool = False) -> float:
    """Max relative error of the SAM field's exact dB/dt (dB_l/dt if ``layers``) against ``identity``,
    a rate identity of ``theory`` called as identity(X, Y, G, G̃, ‖g‖, ρ)."""
    s = sam_parts(p, X, Y, rho)
    rate = th.dB_dt_layers if layers else th.dB_dt
    return rel_error(rate(p, Optimizer("sam", rho=rho), X, Y, 0.0), identity(X, Y, s.G, s.G_tilde, s.grad_norm, rho))


def one_step(opt: Optimizer, p, X, Y, lr: float, alpha=None, chunk_means=None):
    """(B, B⁺, (d_X, d_Y, g_X, g_Y)): B before and after one step z⁺ = z + η d(z) of ``opt`` (noise-free by default)."""
    d = opt.direction(p, X, Y, np.zeros(len(X)) if alpha is None else alpha, chunk_means)
    return balancedness(X, Y), balancedness(X + lr * d[0], Y + lr * d[1]), d


@check("sam-nop-identity", "(16a)", "SAM-NOP flow: dB/dt = rho*u*[y'G~'G y - x'G~ G'x] exactly", IMPL)
def sam_nop_identity(ctx: Context) -> Measurement:
    rho = 0.1
    p, X, Y = random_nop(ctx.rng, ctx.n)
    v = sam_rate_error(p, X, Y, rho, th.sam_nop_rate)
    return at_most(v, 1e-10, f"max rel. error {v:.1e} over {ctx.n} random points")


@check("sam-op-identity", "(33)", "SAM-OP flow: dB/dt = -2 rho f' f~' B / ||g|| exactly", IMPL)
def sam_op_identity(ctx: Context) -> Measurement:
    rho = 0.2
    p, X, Y = random_op(ctx.rng, ctx.n)
    v = sam_rate_error(p, X, Y, rho, th.sam_op_rate)
    return at_most(v, 1e-10, f"max rel. error {v:.1e} over {ctx.n} random points")


@check("sgd-discrete-nop", "§7.1.5",
       "one SGD/SNGD step on NOP: B+ - B = (eta^2/2)(|g_x|^2 - |g_y|^2) (eta/|g| for SNGD)", IMPL)
def sgd_discrete_nop(ctx: Context) -> Measurement:
    rng, lr = ctx.rng, 0.05
    p, X, Y = random_nop(rng, ctx.n)
    noise = rng.standard_normal((ctx.n, 3, 3))
    alpha = rng.uniform(0, 2, ctx.n)
    errs = []
    for name in ("sgd", "sngd"):
        B, B1, (_, _, gX, gY) = one_step(Optimizer(name), p, X, Y, lr, alpha, noise[None])
        step = lr if name == "sgd" else lr / global_norm(gX, gY)
        errs.append(rel_error(B1 - B, th.sgd_discrete_drift(gX, gY, step)))
    v = max(errs)
    return at_most(v, 1e-8, f"max rel. error {v:.1e} (SGD {errs[0]:.1e}, SNGD {errs[1]:.1e}), stochastic minibatches")


@check("sgd-discrete-op", "§7.1.6", "one SGD step on OP: B+ = (1 - eta^2 f'^2) B", IMPL)
def sgd_discrete_op(ctx: Context) -> Measurement:
    lr = 0.05
    p, X, Y = random_op(ctx.rng, ctx.n)
    B, B1, _ = one_step(Optimizer("sgd"), p, X, Y, lr)
    f = p.outer_grad(p.product(X, Y), np.zeros(ctx.n), None)
    v = rel_error(B1, th.sgd_op_step_factor(f, lr) * B)
    return at_most(v, 1e-10, f"max rel. error {v:.1e}")


@check("sam-discrete-op", "§7.1.7",
       "one SAM step on OP: B+ = [1 - 2 eta rho u f~' - eta^2 f~'^2 (1 - rho^2 u^2)] B", IMPL)
def sam_discrete_op(ctx: Context) -> Measurement:
    lr, rho = 0.05, 0.2
    p, X, Y = random_op(ctx.rng, ctx.n)
    B, B1, _ = one_step(Optimizer("sam", rho=rho), p, X, Y, lr)
    s = sam_parts(p, X, Y, rho)
    v = rel_error(B1, th.sam_op_step_factor(s.G_tilde, th.op_u(s.G, X, Y), rho, lr) * B)
    return at_most(v, 1e-10, f"max rel. error {v:.1e}")


@check("sam-discrete-nop", "§7.1.8",
       "one SAM step on NOP: B+ - B = eta rho u [y'G~'Gy - x'G~G'x] + (eta^2/2)(|g_x~|^2 - |g_y~|^2)", IMPL)
def sam_discrete_nop(ctx: Context) -> Measurement:
    lr, rho = 0.05, 0.1
    p, X, Y = random_nop(ctx.rng, ctx.n)
    B, B1, (dX, dY, _, _) = one_step(Optimizer("sam", rho=rho), p, X, Y, lr)
    s = sam_parts(p, X, Y, rho)
    v = rel_error(B1 - B, th.sam_nop_step_change(X, Y, s.G, s.G_tilde, s.grad_norm, -dX, -dY, rho, lr))
    return at_most(v, 1e-8, f"max rel. error {v:.1e}")


@check("msam-discrete-op", "§7.1.9 (38)", "one m-sharpness step on OP: B+ = [(1 - eta b)^2 - eta^2 a^2] B", IMPL)
def msam_discrete_op(ctx: Context) -> Measurement:
    rng, lr, rho, m = ctx.rng, 0.05, 0.2, 4
    p, X, Y = random_op(rng, ctx.n)
    chunks = rng.standard_normal((m, ctx.n))
    alpha = np.full(ctx.n, 1.0)
    B, B1, _ = one_step(Optimizer("msam", rho=rho, m=m), p, X, Y, lr, alpha, chunks)
    W = p.product(X, Y)
    fts, us = [], []
    for c in chunks:
        Xt, Yt, u = th.op_sam_point(X, Y, p.outer_grad(W, alpha, c), rho)
        fts.append(p.outer_grad(p.product(Xt, Yt), alpha, c))
        us.append(u)
    v = rel_error(B1, th.msam_op_step_factor(np.array(fts), np.array(us), rho, lr) * B)
    return at_most(v, 1e-10, f"max rel. error {v:.1e} (m = {m})")


@check("thm5-layer-identity-nop", "(27a)",
       "layer-wise SAM-NOP (global u): dB_l/dt = rho u [y_l'G~_l'G_l y_l - x_l'G~_l G_l'x_l]", IMPL)
def thm5_layer_identity_nop(ctx: Context) -> Measurement:
    rho, L = 0.1, 3
    p, X, Y = random_nop(ctx.rng, ctx.n, layers=L)
    v = sam_rate_error(p, X, Y, rho, th.sam_nop_rate_layers, layers=True)
    return at_most(v, 1e-10, f"max rel. error {v:.1e} ({L} layers)")


@check("thm7-layer-identity-op", "(41), Thm 7",
       "layer-wise SAM-OP: dB_l/dt = -rho u f'_l f~'_l (|x_l|^2 - |y_l|^2)", IMPL)
def thm7_layer_identity_op(ctx: Context) -> Measurement:
    rho, L = 0.2, 3
    p, X, Y = random_op(ctx.rng, ctx.n, layers=L)
    v = sam_rate_error(p, X, Y, rho, th.sam_op_rate_layers, layers=True)
    return at_most(v, 1e-10, f"max rel. error {v:.1e} ({L} layers)")


@check("rank-r-sam-identity", "§7.1.11", "rank-r SAM flow: dB/dt = rho u [tr(Y'G~'GY) - tr(X'G~G'X)]", IMPL)
def rank_r_sam_identity(ctx: Context) -> Measurement:
    rho = 0.1
    p, X, Y = random_nop(ctx.rng, ctx.n, rank=3, d1=5, d2=4)
    v = sam_rate_error(p, X, Y, rho, th.sam_nop_rate)
    return at_most(v, 1e-10, f"max rel. error {v:.1e} (rank 3, 5x4)")


@check("nbar-flow-rate", "Alg 2, §4.5.5",
       "nBAR flow (SGD base): dB/dt = s mu (|x|^2 + |y|^2), s = sign(|g_x| - |g_y|)", IMPL)
def nbar_flow_rate(ctx: Context) -> Measurement:
    p, X, Y = random_nop(ctx.rng, ctx.n, layers=2)
    opt = Optimizer("nbar", mu=0.7)
    _, _, gX, gY = opt.direction(p, X, Y, np.zeros(ctx.n), None)
    v = rel_error(th.dB_dt(p, opt, X, Y, 0.0), th.bar_flow_rate(opt, X, Y, gX, gY))
    return at_most(v, 1e-10, f"max rel. error {v:.1e} (2 layers, per-layer sign)")


@check("obar-flow-rate", "Alg 3, §4.5.5", "oBAR flow (SGD base): dB/dt = -sign(B) mu (|x|^2 + |y|^2)", IMPL)
def obar_flow_rate(ctx: Context) -> Measurement:
    p, X, Y = random_op(ctx.rng, ctx.n)
    opt = Optimizer("obar", mu=0.7)
    v = rel_error(th.dB_dt(p, opt, X, Y, 0.0), th.obar_flow_rate(X, Y, 0.7))
    return at_most(v, 1e-10, f"max rel. error {v:.1e}")
