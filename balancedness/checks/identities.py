"""Exact identities of the optimizers' fields and single steps at random points (spec §7.1.3–§7.1.13).

Each check takes the field or one step of an optimizer implementation (through the registry:
``Optimizer.direction``, ``theory.dB_dt``) at random points with a random minibatch, and compares it
with the identity of ``theory`` evaluated on quantities computed from the paper's equations
(``instances.paper_nop``/``paper_op``: their own arithmetic, nothing shared with the implementation),
to a relative error near machine precision. Each also compares the whole-batch gradient g at z that the field
returns (the simulator records the gradient gap ‖g_X‖² − ‖g_Y‖² from it, Fig. 1's right panels) with the paper's
(3)/(14) on the same minibatch.

Beyond one layer and one radius: ``rho-grid-identity`` gives SAM and m-SAM one radius per trajectory (the
contract's ρ of shape (n,), how ``simulate(..., rho=[0, 0.1])`` runs SAM beside SGD), ``sngd-discrete-layers``
and ``msam-discrete-layers`` take the step identities to three layers (global norms), and ``bar-schedule-rates``
evaluates BAR's rate at several t/T of each μ_t schedule.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from balancedness.checks.instances import (
    CHUNK_NOISE,
    PaperSam,
    pair_error,
    paper_for,
    paper_mu,
    paper_nop,
    paper_op,
    random_minibatch,
    random_nop,
    random_op,
    rel_error,
)
from balancedness.checks.registry import Context, Kind, Measurement, at_most, check
from balancedness.metrics import FloatArray, balancedness, balancedness_layers, layer_sq_norms
from balancedness.sims import theory as th
from balancedness.sims.directions import Field
from balancedness.sims.optimizers import Optimizer
from balancedness.sims.problems import Problem

IMPL = Kind.IMPLEMENTATION


def gradient_error(field: Field, s: PaperSam) -> float:
    """How far the whole-batch gradient g at z that a field returned (``field[2:]``) is from the paper's ``s``."""
    return pair_error(field[2], field[3], s.gX, s.gY)


def with_gradient(error: float, g_error: float, bound: float, text: str) -> Measurement:
    """An identity's error and its returned gradient's, both judged ≤ ``bound`` (NaN propagates)."""
    v = float(np.max([error, g_error]))
    return at_most(v, bound, f"{text}; returned g: rel. error {g_error:.1e}")


def sam_rate_error(
    ctx: Context,
    p: Problem,
    X: FloatArray,
    Y: FloatArray,
    rho: float,
    identity: Callable[[FloatArray, FloatArray, FloatArray, FloatArray, FloatArray, float], FloatArray],
    layers: bool = False,
) -> tuple[float, float]:
    """(max relative error of the SAM field's exact dB/dt (dB_l/dt if ``layers``) on a random minibatch against
    ``identity(X, Y, G, G̃, ‖g‖, ρ)`` of ``theory`` with G, G̃ from the paper's equations, that of its returned g)."""
    N, C = random_minibatch(ctx.rng, p, len(X))
    s = paper_for(p)(p, X, Y, C, rho)
    out = Optimizer("sam", rho=rho).direction(p, X, Y, np.ones(len(X)), N[None])
    rate = th.field_rate_layers(X, Y, out[0], out[1])
    return (
        rel_error(rate if layers else rate.sum(axis=1), identity(X, Y, s.G, s.G_tilde, s.grad_norm, rho)),
        gradient_error(out, s),
    )


def one_step(
    opt: Optimizer, p: Problem, X: FloatArray, Y: FloatArray, lr: float, chunks: FloatArray, layers: bool = False
) -> tuple[FloatArray, FloatArray, Field]:
    """(B, B⁺, field): B (B_l if ``layers``) before and after one step z⁺ = z + η d(z) of ``opt`` on the minibatch
    whose chunks have the noise ``chunks`` (shape (m, n, …)), and the field's four arrays at z."""
    out = opt.direction(p, X, Y, np.ones(len(X)), chunks)
    B = balancedness_layers if layers else balancedness
    return B(X, Y), B(X + lr * out[0], Y + lr * out[1]), out


@check(
    "sam-nop-identity",
    "(16a)",
    "SAM-NOP flow: dB/dt = rho*u*[y'G~'G y - x'G~ G'x] exactly (random minibatch)",
    IMPL,
    runs=("sam",),
    exact=True,
)
def sam_nop_identity(ctx: Context) -> Measurement:
    p, X, Y = random_nop(ctx.rng, ctx.n)
    v, g = sam_rate_error(ctx, p, X, Y, 0.1, th.sam_nop_rate)
    return with_gradient(v, g, 1e-10, f"max rel. error {v:.1e} over {ctx.n} random points and minibatches")


@check(
    "sam-op-identity",
    "(33)",
    "SAM-OP flow: dB/dt = -2 rho f' f~' B / ||g|| exactly (random minibatch)",
    IMPL,
    runs=("sam",),
    exact=True,
)
def sam_op_identity(ctx: Context) -> Measurement:
    p, X, Y = random_op(ctx.rng, ctx.n)
    v, g = sam_rate_error(ctx, p, X, Y, 0.2, th.sam_op_rate)
    return with_gradient(v, g, 1e-10, f"max rel. error {v:.1e} over {ctx.n} random points and minibatches")


@check(
    "sgd-discrete-nop",
    "§7.1.5",
    "one SGD/SNGD step on NOP: B+ - B = (eta^2/2)(|g_x|^2 - |g_y|^2) (eta/|g| for SNGD)",
    IMPL,
    runs=("sgd", "sngd"),
    exact=True,
)
def sgd_discrete_nop(ctx: Context) -> Measurement:
    lr = 0.05
    p, X, Y = random_nop(ctx.rng, ctx.n)
    N, C = random_minibatch(ctx.rng, p, ctx.n)
    v, g, errs = sgd_sngd_step_errors(p, X, Y, N, lr)
    return with_gradient(
        v, g, 1e-8, f"max rel. error {v:.1e} (SGD {errs[0]:.1e}, SNGD {errs[1]:.1e}), random minibatches"
    )


def sgd_sngd_step_errors(
    p: Problem, X: FloatArray, Y: FloatArray, N: FloatArray, lr: float, layers: bool = False
) -> tuple[float, float, list[float]]:
    """One SGD and one SNGD step on the minibatch with noise N against §7.1.5, with the global ‖g‖ for SNGD:
    (max error, max error of the returned g, [SGD's error, SNGD's error]). The error is relative to the drift; per
    layer (``layers``) it is relative to the drift's scale (η²/2)(‖g_{x_l}‖² + ‖g_{y_l}‖²), as a layer's drift may
    nearly cancel."""
    s = paper_nop(p, X, Y, p.target + N, 0.0)
    errs, g_errs = [], []
    for name, step in (("sgd", lr), ("sngd", lr / s.grad_norm)):
        B, B1, out = one_step(Optimizer(name), p, X, Y, lr, N[None], layers)
        if layers:
            scale = 0.5 * np.reshape(step, (-1, 1)) ** 2 * (layer_sq_norms(s.gX) + layer_sq_norms(s.gY))
            errs.append(float(np.max(np.abs(B1 - B - th.sgd_discrete_drift_layers(s.gX, s.gY, step)) / scale)))
        else:
            errs.append(rel_error(B1 - B, th.sgd_discrete_drift(s.gX, s.gY, step)))
        g_errs.append(gradient_error(out, s))
    return float(np.max(errs)), float(np.max(g_errs)), errs  # NaN propagates


@check(
    "sgd-discrete-op",
    "§7.1.6",
    "one SGD step on OP: B+ = (1 - eta^2 f'^2) B (random minibatch)",
    IMPL,
    runs=("sgd",),
    exact=True,
)
def sgd_discrete_op(ctx: Context) -> Measurement:
    lr = 0.05
    p, X, Y = random_op(ctx.rng, ctx.n)
    N, C = random_minibatch(ctx.rng, p, ctx.n)
    B, B1, out = one_step(Optimizer("sgd"), p, X, Y, lr, N[None])
    s = paper_op(p, X, Y, C, 0.0)
    v = rel_error(B1, th.sgd_op_step_factor(s.G, lr) * B)
    return with_gradient(v, gradient_error(out, s), 1e-10, f"max rel. error {v:.1e}")


@check(
    "sam-discrete-op",
    "§7.1.7",
    "one SAM step on OP: B+ = [1 - 2 eta rho u f~' - eta^2 f~'^2 (1 - rho^2 u^2)] B (random minibatch)",
    IMPL,
    runs=("sam",),
    exact=True,
)
def sam_discrete_op(ctx: Context) -> Measurement:
    lr, rho = 0.05, 0.2
    p, X, Y = random_op(ctx.rng, ctx.n)
    N, C = random_minibatch(ctx.rng, p, ctx.n)
    B, B1, out = one_step(Optimizer("sam", rho=rho), p, X, Y, lr, N[None])
    s = paper_op(p, X, Y, C, rho)
    v = rel_error(B1, th.sam_op_step_factor(s.G_tilde, th.op_u(s.G, X, Y), rho, lr) * B)
    return with_gradient(v, gradient_error(out, s), 1e-10, f"max rel. error {v:.1e}")


@check(
    "sam-discrete-nop",
    "§7.1.8",
    "one SAM step on NOP: B+ - B = eta rho u [y'G~'Gy - x'G~G'x] + (eta^2/2)(|g_x~|^2 - |g_y~|^2)",
    IMPL,
    runs=("sam",),
    exact=True,
)
def sam_discrete_nop(ctx: Context) -> Measurement:
    lr, rho = 0.05, 0.1
    p, X, Y = random_nop(ctx.rng, ctx.n)
    N, C = random_minibatch(ctx.rng, p, ctx.n)
    B, B1, out = one_step(Optimizer("sam", rho=rho), p, X, Y, lr, N[None])
    s = paper_nop(p, X, Y, C, rho)
    v = rel_error(B1 - B, th.sam_nop_step_change(X, Y, s.G, s.G_tilde, s.grad_norm, s.gX_tilde, s.gY_tilde, rho, lr))
    return with_gradient(v, gradient_error(out, s), 1e-8, f"max rel. error {v:.1e}")


@check(
    "msam-discrete-op",
    "§7.1.9 (38)",
    "one m-sharpness step on OP: B+ = [(1 - eta b)^2 - eta^2 a^2] B",
    IMPL,
    runs=("msam",),
    exact=True,
)
def msam_discrete_op(ctx: Context) -> Measurement:
    p, X, Y = random_op(ctx.rng, ctx.n)
    v, g = msam_step_errors(ctx, p, X, Y)
    return with_gradient(v, g, 1e-10, f"max rel. error {v:.1e} (m = 4, each chunk its own minibatch)")


def msam_step_errors(
    ctx: Context, p: Problem, X: FloatArray, Y: FloatArray, layers: bool = False
) -> tuple[float, float]:
    """One m-SAM step (ρ = 0.2, m = 4 random chunks) on OP against §7.1.9 (every B_l by the same factor if
    ``layers``, u_i global over the layers): (max rel. error, that of the returned g against the whole batch's
    gradient)."""
    lr, rho, m = 0.05, 0.2, 4
    chunks = ctx.rng.standard_normal((m, len(X)))
    B, B1, out = one_step(Optimizer("msam", rho=rho, m=m), p, X, Y, lr, chunks, layers)
    parts = [paper_op(p, X, Y, p.target + c, rho) for c in chunks]
    us = np.array([th.op_u(s.G, X, Y) for s in parts])
    factor = th.msam_op_step_factor(np.array([s.G_tilde for s in parts]), us, rho, lr)
    whole = paper_op(p, X, Y, p.target + chunks.mean(axis=0), 0.0)
    return rel_error(B1, (factor[:, None] if layers else factor) * B), gradient_error(out, whole)


@check(
    "thm5-layer-identity-nop",
    "(27a)",
    "layer-wise SAM-NOP (global u): dB_l/dt = rho u [y_l'G~_l'G_l y_l - x_l'G~_l G_l'x_l]",
    IMPL,
    runs=("sam",),
    exact=True,
)
def thm5_layer_identity_nop(ctx: Context) -> Measurement:
    rho, L = 0.1, 3
    p, X, Y = random_nop(ctx.rng, ctx.n, layers=L)
    v, g = sam_rate_error(ctx, p, X, Y, rho, th.sam_nop_rate_layers, layers=True)
    return with_gradient(v, g, 1e-10, f"max rel. error {v:.1e} ({L} layers)")


@check(
    "thm7-layer-identity-op",
    "(41), Thm 7",
    "layer-wise SAM-OP (global u): dB_l/dt = -rho u f'_l f~'_l (|x_l|^2 - |y_l|^2)",
    IMPL,
    runs=("sam",),
    exact=True,
)
def thm7_layer_identity_op(ctx: Context) -> Measurement:
    rho, L = 0.2, 3
    p, X, Y = random_op(ctx.rng, ctx.n, layers=L)
    v, g = sam_rate_error(ctx, p, X, Y, rho, th.sam_op_rate_layers, layers=True)
    return with_gradient(v, g, 1e-10, f"max rel. error {v:.1e} ({L} layers)")


@check(
    "rank-r-sam-identity",
    "§7.1.11",
    "rank-r SAM flow: dB/dt = rho u [tr(Y'G~'GY) - tr(X'G~G'X)]",
    IMPL,
    runs=("sam",),
    exact=True,
)
def rank_r_sam_identity(ctx: Context) -> Measurement:
    p, X, Y = random_nop(ctx.rng, ctx.n, rank=3, d1=5, d2=4)
    v, g = sam_rate_error(ctx, p, X, Y, 0.1, th.sam_nop_rate)
    return with_gradient(v, g, 1e-10, f"max rel. error {v:.1e} (rank 3, 5x4)")


def bar_rate_error(
    ctx: Context,
    variant: str,
    p: Problem,
    X: FloatArray,
    Y: FloatArray,
    schedule: str = "constant",
    progress: tuple[float, ...] = (0.0,),
) -> tuple[float, float]:
    """(max rel. error of the exact dB/dt of the nBAR/oBAR field (μ₀ = 0.7, ``schedule``) on a random minibatch at each
    t/T in ``progress`` against ``theory.bar_flow_rate`` with μ_t = ``paper_mu`` (the sign rule of Alg. 2/3 written
    there, the gradient norms from the paper's equations), that of the returned g)."""
    mu = 0.7
    N, C = random_minibatch(ctx.rng, p, len(X))
    s = paper_for(p)(p, X, Y, C, 0.0)
    gx, gy = layer_sq_norms(s.gX), layer_sq_norms(s.gY)
    errs, g_errs = [], []
    for t in progress:
        out = Optimizer(variant, mu=mu, schedule=schedule).direction(p, X, Y, np.ones(len(X)), N[None], t)
        rate = th.field_rate_layers(X, Y, out[0], out[1]).sum(axis=1)
        errs.append(rel_error(rate, th.bar_flow_rate(variant, X, Y, gx, gy, paper_mu(mu, schedule, t))))
        g_errs.append(gradient_error(out, s))
    return float(np.max(errs)), float(np.max(g_errs))


@check(
    "nbar-flow-rate",
    "Alg 2, §4.5.5",
    "nBAR flow (SGD base): dB/dt = sum_l s_l mu (|x_l|^2 + |y_l|^2), s_l = sign(|g_x_l| - |g_y_l|)",
    IMPL,
    runs=("nbar",),
    exact=True,
)
def nbar_flow_rate(ctx: Context) -> Measurement:
    p, X, Y = random_nop(ctx.rng, ctx.n, layers=2)
    v, g = bar_rate_error(ctx, "nbar", p, X, Y)
    return with_gradient(v, g, 1e-10, f"max rel. error {v:.1e} (2 layers, per-layer sign, random minibatch)")


@check(
    "obar-flow-rate",
    "Alg 3, §4.5.5",
    "oBAR flow (SGD base): dB/dt = -sign(B) mu (|x|^2 + |y|^2) (per layer on 2 NOP layers)",
    IMPL,
    runs=("obar",),
    exact=True,
)
def obar_flow_rate(ctx: Context) -> Measurement:
    p, X, Y = random_op(ctx.rng, ctx.n)
    one = rel_error(th.dB_dt(p, Optimizer("obar", mu=0.7), X, Y, 0.0), th.obar_flow_rate(X, Y, 0.7))
    q, Xq, Yq = random_nop(ctx.rng, ctx.n, layers=2)
    two, g = bar_rate_error(ctx, "obar", q, Xq, Yq)
    v = float(np.max([one, two]))
    return with_gradient(v, g, 1e-10, f"max rel. error {v:.1e} (OP: {one:.1e}; 2 NOP layers, per-layer sign)")


#: The t/T at which ``bar-schedule-rates`` evaluates each schedule.
BAR_PROGRESS = (0.0, 0.25, 0.5, 0.9)


@check(
    "bar-schedule-rates",
    "Algs 2-3, §4.5.5, §4.5.7",
    "nBAR/oBAR flow at t/T = 0, 0.25, 0.5, 0.9: dB/dt = sum_l s_l mu_t (|x_l|^2 + |y_l|^2) with mu_t = mu0, "
    "mu0 (1 - t/T), mu0 (1 + cos(pi t/T))/2 (constant, linear, cosine)",
    IMPL,
    runs=("nbar", "obar"),
    exact=True,
)
def bar_schedule_rates(ctx: Context) -> Measurement:
    errs, g_errs = {}, []
    for variant in ("nbar", "obar"):
        p, X, Y = random_nop(ctx.rng, ctx.n, layers=2)
        for schedule in ("constant", "linear", "cosine"):
            errs[variant, schedule], g = bar_rate_error(ctx, variant, p, X, Y, schedule, BAR_PROGRESS)
            g_errs.append(g)
    v = float(np.max(list(errs.values())))
    by = "; ".join(
        f"{name} " + ", ".join(f"{errs[name.lower(), sc]:.0e}" for sc in ("constant", "linear", "cosine"))
        for name in ("nBAR", "oBAR")
    )
    return with_gradient(
        v,
        float(np.max(g_errs)),
        1e-10,
        f"max rel. error {v:.1e} over constant, linear, cosine x t/T = "
        + ", ".join(f"{t:g}" for t in BAR_PROGRESS)
        + f" ({by}; 2 NOP layers, random minibatch)",
    )


# -- beyond one radius and one layer ------------------------------------------------------------
#: The radii of ``rho-grid-identity``, one per trajectory, cycled over the points.
RHO_GRID = (0.0, 0.05, 0.1, 0.2)


def grid_errors(
    name: str,
    p: Problem,
    X: FloatArray,
    Y: FloatArray,
    targets: FloatArray,
    rhos: FloatArray,
    direction: tuple[FloatArray, FloatArray],
    whole: PaperSam,
    m: int = 1,
) -> tuple[FloatArray, float]:
    """(per point: ‖d − d_paper‖/‖d_paper‖ of the ``name`` field with one radius per trajectory, the returned g's
    error against ``whole``); ``direction`` = (d_X, d_Y) of the paper for each row's own ρ."""
    out = Optimizer(name, m=m).field(p, X, Y, targets, 0.0, rhos)
    per_point = [
        pair_error(out[0][i : i + 1], out[1][i : i + 1], direction[0][i : i + 1], direction[1][i : i + 1])
        for i in range(len(X))
    ]
    return np.array(per_point), gradient_error(out, whole)


@check(
    "rho-grid-identity",
    "(4), (7), (38); the contract's rho of shape (n,)",
    "SAM (NOP, OP) and m-SAM (OP, m = 4) with one radius per trajectory, rho in {0, 0.05, 0.1, 0.2}: each row steps "
    "along -grad f(z + rho_i g/|g|) of its own rho_i, and the rho = 0 rows along SGD's -g",
    IMPL,
    runs=("sam", "msam"),
    exact=True,
)
def rho_grid_identity(ctx: Context) -> Measurement:
    rhos = np.resize(np.array(RHO_GRID), ctx.n)
    rows, g_errs = [], []
    for make in (random_nop, random_op):
        p, X, Y = make(ctx.rng, ctx.n)
        _, C = random_minibatch(ctx.rng, p, ctx.n)
        s = paper_for(p)(p, X, Y, C, rhos)
        e, g = grid_errors("sam", p, X, Y, C[None], rhos, (-s.gX_tilde, -s.gY_tilde), s)
        rows.append(e)
        g_errs.append(g)
    p, X, Y = random_op(ctx.rng, ctx.n)
    chunks = p.target + CHUNK_NOISE * ctx.rng.standard_normal((4, ctx.n))
    parts = [paper_op(p, X, Y, C, rhos) for C in chunks]
    d = (-np.mean([s.gX_tilde for s in parts], axis=0), -np.mean([s.gY_tilde for s in parts], axis=0))
    e, g = grid_errors("msam", p, X, Y, chunks, rhos, d, paper_op(p, X, Y, chunks.mean(axis=0), 0.0), m=4)
    rows.append(e)
    g_errs.append(g)
    errs = np.stack(rows)  # (SAM NOP, SAM OP, m-SAM OP) x points
    zero, positive = float(np.max(errs[:, rhos == 0])), float(np.max(errs[:, rhos > 0]))
    v = float(np.max(errs))
    return with_gradient(
        v,
        float(np.max(g_errs)),
        1e-10,
        f"max rel. error of the direction {v:.1e} over {ctx.n} points with rho cycling "
        + ", ".join(f"{r:g}" for r in RHO_GRID)
        + f" (rho > 0 rows {positive:.1e}; rho = 0 rows vs "
        f"SGD's -g {zero:.1e}; SAM NOP {np.max(errs[0]):.0e}, OP {np.max(errs[1]):.0e}, m-SAM "
        f"{np.max(errs[2]):.0e})",
    )


@check(
    "sngd-discrete-layers",
    "§7.1.5, (15) with layers",
    "one SGD/SNGD step on 3 NOP layers: B_l+ - B_l = (eta^2/2)(|g_x_l|^2 - |g_y_l|^2) per layer, eta/|g| for SNGD "
    "with |g| the global norm over layers",
    IMPL,
    runs=("sgd", "sngd"),
    exact=True,
)
def sngd_discrete_layers(ctx: Context) -> Measurement:
    L = 3
    p, X, Y = random_nop(ctx.rng, ctx.n, layers=L, rank=2)
    N, _ = random_minibatch(ctx.rng, p, ctx.n)
    v, g, errs = sgd_sngd_step_errors(p, X, Y, N, 0.05, layers=True)
    return with_gradient(
        v,
        g,
        1e-8,
        f"max error {v:.1e} per layer, relative to (eta^2/2)(|g_x_l|^2 + |g_y_l|^2) "
        f"(SGD {errs[0]:.1e}, SNGD {errs[1]:.1e}; {L} layers of rank 2, random minibatches)",
    )


@check(
    "msam-discrete-layers",
    "§7.1.9 (38) with (41)'s global u",
    "one m-sharpness step on 3 OP layers: every B_l+ = [(1 - eta b)^2 - eta^2 a^2] B_l, u_i = sgn f'_i / "
    "sqrt(sum_l |x_l|^2 + |y_l|^2)",
    IMPL,
    runs=("msam",),
    exact=True,
)
def msam_discrete_layers(ctx: Context) -> Measurement:
    L = 3
    p, X, Y = random_op(ctx.rng, ctx.n, layers=L)
    v, g = msam_step_errors(ctx, p, X, Y, layers=True)
    return with_gradient(
        v, g, 1e-10, f"max rel. error {v:.1e} per layer (m = 4, {L} layers, each chunk its own minibatch)"
    )
