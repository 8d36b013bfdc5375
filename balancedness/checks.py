"""Every numerically checkable claim of the paper (spec §7.1–§7.3), run on random instances and
on the paper's toy settings. ``balancedness check`` prints one row per claim.

A row is a *claim* (the paper, or a derived identity, says this holds: PASS means it does) or a
*finding* (the paper is loose or wrong here, spec §8.7: PASS means our counter-evidence
reproduces, and the row shows the numbers). Each check returns the measured value and the
tolerance it was judged against, so nothing is hidden behind a bare PASS.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from balancedness.metrics import balancedness, balancedness_layers, sq_norms
from balancedness.sims import theory as th
from balancedness.sims.discrete import simulate
from balancedness.sims.flows import solve_flow
from balancedness.sims.optimizers import Optimizer
from balancedness.sims.problems import nop_problem, op_problem, toy2d_problem


@dataclass
class CheckResult:
    id: str
    ref: str
    claim: str
    measured: str
    tolerance: str
    status: str  # PASS / FAIL
    kind: str = "claim"  # claim / finding
    value: float = float("nan")
    seconds: float = 0.0


CHECKS: list[tuple[str, str, str, str, Callable]] = []


def check(id: str, ref: str, claim: str, kind: str = "claim"):
    def deco(fn):
        CHECKS.append((id, ref, claim, kind, fn))
        return fn

    return deco


def _rel(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


def _random_nop(rng, n, layers=1, rank=1, d1=3, d2=3):
    p = nop_problem(rank, layers, d1=d1, d2=d2, target=rng.standard_normal((d1, d2)),
                    x0=rng.standard_normal((layers, d1, rank)), y0=rng.standard_normal((layers, d2, rank)))
    X = rng.standard_normal((n, layers, d1, rank))
    Y = rng.standard_normal((n, layers, d2, rank))
    return p, X, Y


def _random_op(rng, n, layers=1, dim=3):
    p = op_problem(layers, dim=dim, target=float(rng.standard_normal()))
    return p, rng.standard_normal((n, layers, dim, 1)), rng.standard_normal((n, layers, dim, 1))


def _sam_parts(p, X, Y, rho, noise=None):
    """G, G̃, u and the gradient at a point, for the SAM identities."""
    a = np.zeros(len(X))
    gX, gY, G = p.grads(X, Y, a, noise)
    u = 1.0 / np.sqrt(sq_norms(gX) + sq_norms(gY))
    s = (rho * u)[:, None, None, None]
    _, _, Gt = p.grads(X + s * gX, Y + s * gY, a, noise)
    return gX, gY, G, Gt, u


ZERO = None  # noise-free (α = 0) evaluations


# ============================================================== §7.1 exact identities
def _flow_conserves(problem, optimizer: str, t_end: float):
    r = solve_flow(problem, optimizer, t_end=t_end, n_records=101)
    v = float(np.max(np.abs(r.balancedness - r.balancedness[:, :1])))
    return v, 1e-8, f"max|B_t - B_0| = {v:.1e} over t in [0, {t_end:g}]"


for _id, _ref, _claim, _problem, _opt, _t_end in (
    ("thm1-sgd-flow-nop", "Thm 1", "SGD flow on NOP keeps B_t = B_0", nop_problem, "sgd", 10.0),
    ("thm6-sgd-flow-op", "Thm 6", "SGD flow on OP keeps B_t = B_0", op_problem, "sgd", 10.0),
    ("thm4-sngd-flow-nop", "Thm 4", "SNGD flow on NOP keeps B_t = B_0 (until it reaches a minimizer)",
     nop_problem, "sngd", 0.5),
    ("thm6-sngd-flow-op", "Thm 6 (31)", "SNGD flow on OP keeps B_t = B_0 (until f' = 0)", op_problem, "sngd", 0.5),
):
    check(_id, _ref, _claim)(lambda ctx, p=_problem, o=_opt, t=_t_end: _flow_conserves(p(), o, t))


@check("sam-nop-identity", "(16a)", "SAM-NOP flow: dB/dt = rho*u*[y'G~'G y - x'G~ G'x] exactly")
def _(ctx):
    rng, rho = ctx.rng, 0.1
    p, X, Y = _random_nop(rng, ctx.n)
    gX, gY, G, Gt, u = _sam_parts(p, X, Y, rho)
    x, y = X[:, 0, :, 0], Y[:, 0, :, 0]
    pred = rho * u * (np.einsum("ni,nji,njk,nk->n", y, Gt, G, y) - np.einsum("ni,nij,nkj,nk->n", x, Gt, G, x))
    v = _rel(th.dB_dt(p, Optimizer("sam", rho=rho), X, Y, 0.0), pred)
    return v, 1e-10, f"max rel. error {v:.1e} over {ctx.n} random points"


@check("sam-op-identity", "(33)", "SAM-OP flow: dB/dt = -2 rho f' f~' B / ||g|| exactly")
def _(ctx):
    rho = 0.2
    p, X, Y = _random_op(ctx.rng, ctx.n)
    gX, gY, f, ft, u = _sam_parts(p, X, Y, rho)
    pred = -2 * rho * f * ft * balancedness(X, Y) / np.sqrt(sq_norms(gX) + sq_norms(gY))
    v = _rel(th.dB_dt(p, Optimizer("sam", rho=rho), X, Y, 0.0), pred)
    return v, 1e-10, f"max rel. error {v:.1e} over {ctx.n} random points"


@check("sgd-discrete-nop", "§7.1.5", "one SGD/SNGD step on NOP: B+ - B = (eta^2/2)(|g_x|^2 - |g_y|^2) (eta/|g| for SNGD)")
def _(ctx):
    rng, lr = ctx.rng, 0.05
    p, X, Y = _random_nop(rng, ctx.n)
    noise = rng.standard_normal((ctx.n, 3, 3))
    alpha = rng.uniform(0, 2, ctx.n)
    errs = []
    for name in ("sgd", "sngd"):
        opt = Optimizer(name)
        dX, dY, gX, gY = opt.direction(p, X, Y, alpha, noise[None])
        step = lr if name == "sgd" else lr / np.sqrt(sq_norms(gX) + sq_norms(gY))
        pred = 0.5 * step**2 * (sq_norms(gX) - sq_norms(gY))
        errs.append(_rel(balancedness(X + lr * dX, Y + lr * dY) - balancedness(X, Y), pred))
    v = max(errs)
    return v, 1e-8, f"max rel. error {v:.1e} (SGD {errs[0]:.1e}, SNGD {errs[1]:.1e}), stochastic minibatches"


@check("sgd-discrete-op", "§7.1.6", "one SGD step on OP: B+ = (1 - eta^2 f'^2) B")
def _(ctx):
    rng, lr = ctx.rng, 0.05
    p, X, Y = _random_op(rng, ctx.n)
    dX, dY, _, _ = Optimizer("sgd").direction(p, X, Y, np.zeros(ctx.n), None)
    f = p.outer_grad(p.product(X, Y), np.zeros(ctx.n), None)
    v = _rel(balancedness(X + lr * dX, Y + lr * dY), (1 - lr**2 * f**2) * balancedness(X, Y))
    return v, 1e-10, f"max rel. error {v:.1e}"


@check("sam-discrete-op", "§7.1.7", "one SAM step on OP: B+ = [1 - 2 eta rho u f~' - eta^2 f~'^2 (1 - rho^2 u^2)] B")
def _(ctx):
    rng, lr, rho = ctx.rng, 0.05, 0.2
    p, X, Y = _random_op(rng, ctx.n)
    dX, dY, _, _ = Optimizer("sam", rho=rho).direction(p, X, Y, np.zeros(ctx.n), None)
    gX, gY, f, ft, _ = _sam_parts(p, X, Y, rho)
    u = np.sign(f) / np.sqrt(sq_norms(X) + sq_norms(Y))
    factor = 1 - 2 * lr * rho * u * ft - lr**2 * ft**2 * (1 - rho**2 * u**2)
    v = _rel(balancedness(X + lr * dX, Y + lr * dY), factor * balancedness(X, Y))
    return v, 1e-10, f"max rel. error {v:.1e}"


@check("sam-discrete-nop", "§7.1.8", "one SAM step on NOP: B+ - B = eta rho u [y'G~'Gy - x'G~G'x] + (eta^2/2)(|g_x~|^2 - |g_y~|^2)")
def _(ctx):
    rng, lr, rho = ctx.rng, 0.05, 0.1
    p, X, Y = _random_nop(rng, ctx.n)
    dX, dY, _, _ = Optimizer("sam", rho=rho).direction(p, X, Y, np.zeros(ctx.n), None)
    gX, gY, G, Gt, u = _sam_parts(p, X, Y, rho)
    x, y = X[:, 0, :, 0], Y[:, 0, :, 0]
    lead = rho * u * (np.einsum("ni,nji,njk,nk->n", y, Gt, G, y) - np.einsum("ni,nij,nkj,nk->n", x, Gt, G, x))
    pred = lr * lead + 0.5 * lr**2 * (sq_norms(dX) - sq_norms(dY))
    v = _rel(balancedness(X + lr * dX, Y + lr * dY) - balancedness(X, Y), pred)
    return v, 1e-8, f"max rel. error {v:.1e}"


@check("msam-discrete-op", "§7.1.9 (38)", "one m-sharpness step on OP: B+ = [(1 - eta b)^2 - eta^2 a^2] B")
def _(ctx):
    rng, lr, rho, m = ctx.rng, 0.05, 0.2, 4
    p, X, Y = _random_op(rng, ctx.n)
    chunks = rng.standard_normal((m, ctx.n))
    alpha = np.full(ctx.n, 1.0)
    dX, dY, _, _ = Optimizer("msam", rho=rho, m=m).direction(p, X, Y, alpha, chunks)
    W, nz = p.product(X, Y), np.sqrt(sq_norms(X) + sq_norms(Y))
    a = b = 0.0
    for c in chunks:
        f = p.outer_grad(W, alpha, c)
        u = np.sign(f) / nz
        Xt, Yt = X + (rho * u)[:, None, None, None] * Y, Y + (rho * u)[:, None, None, None] * X
        ft = p.outer_grad(p.product(Xt, Yt), alpha, c)
        a, b = a + ft / m, b + rho * u * ft / m
    v = _rel(balancedness(X + lr * dX, Y + lr * dY), ((1 - lr * b) ** 2 - lr**2 * a**2) * balancedness(X, Y))
    return v, 1e-10, f"max rel. error {v:.1e} (m = {m})"


@check("thm5-layer-identity-nop", "(27a)", "layer-wise SAM-NOP (global u): dB_l/dt = rho u [y_l'G~_l'G_l y_l - x_l'G~_l G_l'x_l]")
def _(ctx):
    rng, rho, L = ctx.rng, 0.1, 3
    p, X, Y = _random_nop(rng, ctx.n, layers=L)
    gX, gY, G, Gt, u = _sam_parts(p, X, Y, rho)
    x, y = X[..., 0], Y[..., 0]
    pred = rho * u[:, None] * (np.einsum("nli,nji,njk,nlk->nl", y, Gt, G, y) - np.einsum("nli,nij,nkj,nlk->nl", x, Gt, G, x))
    v = _rel(th.dB_dt_layers(p, Optimizer("sam", rho=rho), X, Y, 0.0), pred)
    return v, 1e-10, f"max rel. error {v:.1e} ({L} layers)"


@check("thm7-layer-identity-op", "(41), Thm 7", "layer-wise SAM-OP: dB_l/dt = -rho u f'_l f~'_l (|x_l|^2 - |y_l|^2)")
def _(ctx):
    rng, rho, L = ctx.rng, 0.2, 3
    p, X, Y = _random_op(rng, ctx.n, layers=L)
    gX, gY, f, ft, u = _sam_parts(p, X, Y, rho)
    pred = -rho * (u * f * ft)[:, None] * 2 * balancedness_layers(X, Y)
    v = _rel(th.dB_dt_layers(p, Optimizer("sam", rho=rho), X, Y, 0.0), pred)
    return v, 1e-10, f"max rel. error {v:.1e} ({L} layers)"


@check("rank-r-sgd-conserves", "Thm 1 (rank r)", "SGD flow on rank-r NOP conserves X'X - Y'Y (r x r)")
def _(ctx):
    rng = np.random.default_rng(7)
    p = nop_problem(2, d1=4, d2=4, target=rng.standard_normal((4, 4)) * 0.5,
                    x0=0.5 * rng.standard_normal((4, 2)), y0=0.5 * rng.standard_normal((4, 2)))
    r = solve_flow(p, "sgd", t_end=5.0, n_records=51)
    M = np.einsum("trij,trik->trjk", r.x[0], r.x[0]) - np.einsum("trij,trik->trjk", r.y[0], r.y[0])
    v = float(np.max(np.abs(M - M[:1])))
    return v, 1e-8, f"max entry change {v:.1e} over t in [0, 5] (rank 2, 4x4)"


@check("rank-r-sam-identity", "§7.1.11", "rank-r SAM flow: dB/dt = rho u [tr(Y'G~'GY) - tr(X'G~G'X)]")
def _(ctx):
    rng, rho = ctx.rng, 0.1
    p, X, Y = _random_nop(rng, ctx.n, rank=3, d1=5, d2=4)
    gX, gY, G, Gt, u = _sam_parts(p, X, Y, rho)
    Xs, Ys = X[:, 0], Y[:, 0]
    pred = rho * u * (np.einsum("nir,nji,njk,nkr->n", Ys, Gt, G, Ys) - np.einsum("nir,nij,nkj,nkr->n", Xs, Gt, G, Xs))
    v = _rel(th.dB_dt(p, Optimizer("sam", rho=rho), X, Y, 0.0), pred)
    return v, 1e-10, f"max rel. error {v:.1e} (rank 3, 5x4)"


@check("cor2-closed-form", "Cor 2 (21)", "the paper's construction (21) equals 1/2(r|x|^2 - |y|^2/r), r = |g_x|/|g_y|")
def _(ctx):
    rng = ctx.rng
    p, X, Y = _random_nop(rng, ctx.n)
    _, _, G = p.grads(X, Y, np.zeros(ctx.n), None)
    gX, gY = p.factor_grads(X, Y, G)
    paper = np.array([th.cor2_threshold_paper(X[i, 0, :, 0], Y[i, 0, :, 0], G[i]) for i in range(ctx.n)])
    v = _rel(th.cor2_threshold(X, Y, gX, gY), paper)
    return v, 1e-10, f"max rel. error {v:.1e}"


@check("cor2-direction", "Cor 2", "B > B-bar  <=>  |g_x| < |g_y| (so |B| shrinks above the threshold)")
def _(ctx):
    p, X, Y = _random_nop(ctx.rng, ctx.n)
    _, _, G = p.grads(X, Y, np.zeros(ctx.n), None)
    gX, gY = p.factor_grads(X, Y, G)
    agree = (balancedness(X, Y) > th.cor2_threshold(X, Y, gX, gY)) == (sq_norms(gX) < sq_norms(gY))
    v = float(np.mean(~agree))
    return v, 0.0, f"{int(np.sum(~agree))} disagreements in {ctx.n} random points"


@check("cor2-h-prime", "Cor 2 proof", "the paper's h'(z) matches finite differences of h(z)")
def _(ctx):
    rng = ctx.rng
    a, b = rng.uniform(0.1, 3, 2)
    z = np.linspace(0.2, 5, 200)
    fd = (th.cor2_h(z + 1e-6, a, b) - th.cor2_h(z - 1e-6, a, b)) / 2e-6
    v = float(np.max(np.abs(fd - th.cor2_h_prime(z, a, b)) / np.abs(fd)))
    return v, 1e-6, f"max rel. error {v:.1e}; h' > 0 everywhere: {bool(np.all(th.cor2_h_prime(z, a, b) > 0))}"


@check("nbar-flow-rate", "Alg 2, §4.5.5", "nBAR flow (SGD base): dB/dt = s mu (|x|^2 + |y|^2), s = sign(|g_x| - |g_y|)")
def _(ctx):
    p, X, Y = _random_nop(ctx.rng, ctx.n, layers=2)
    opt = Optimizer("nbar", mu=0.7)
    _, _, gX, gY = opt.direction(p, X, Y, np.zeros(ctx.n), None)
    v = _rel(th.dB_dt(p, opt, X, Y, 0.0), th.bar_flow_rate(opt, X, Y, gX, gY))
    return v, 1e-10, f"max rel. error {v:.1e} (2 layers, per-layer sign)"


@check("obar-flow-rate", "Alg 3, §4.5.5", "oBAR flow (SGD base): dB/dt = -sign(B) mu (|x|^2 + |y|^2)")
def _(ctx):
    p, X, Y = _random_op(ctx.rng, ctx.n)
    opt = Optimizer("obar", mu=0.7)
    pred = -np.sign(balancedness(X, Y)) * 0.7 * (sq_norms(X) + sq_norms(Y))
    v = _rel(th.dB_dt(p, opt, X, Y, 0.0), pred)
    return v, 1e-10, f"max rel. error {v:.1e}"


@check("lemma1-lambda-max", "Lemma 1", "on W* the OP Hessian has lambda_max = f''(w)(|x|^2 + |y|^2)")
def _(ctx):
    rng = ctx.rng
    errs = []
    for _ in range(20):
        x = rng.standard_normal(3)
        y = rng.standard_normal(3)
        y *= 0.5 / (x @ y)  # put the point on W*: x'y = a = 0.5
        H = _op_hessian(np.concatenate([x, y]), 0.5)
        errs.append(abs(np.linalg.eigvalsh(H)[-1] - 2.0 * (x @ x + y @ y)) / (2.0 * (x @ x + y @ y)))
    v = float(max(errs))
    return v, 1e-4, f"max rel. error {v:.1e} (finite-difference Hessian, 20 points)"


@check("lemma1-needs-parallel", "Lemma 1 (spec §8.7)", "finding: B = 0 on W* is necessary but not sufficient for minimal sharpness (needs x || y)", kind="finding")
def _(ctx):
    x, y = np.array([1.0, 0.0]), np.array([0.5, np.sqrt(0.75)])
    lam = float(np.linalg.eigvalsh(_op_hessian(np.concatenate([x, y]), 0.5, dim=2))[-1])
    best = th.lemma1_min_sharpness(0.5, 2.0)
    v = lam / best
    return (v, 1.5, f"x=(1,0), y=(0.5,0.866): B = {0.5 * (x @ x - y @ y):.0e}, w = 0.5, lambda_max = {lam:.3f} "
            f"vs min over W* {best:.3f} (x = y)", "gt")


def _op_hessian(z, c, dim=3, h=1e-4):
    def f(v):
        return (v[:dim] @ v[dim:] - c) ** 2

    n = len(z)
    H = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            e_i, e_j = np.eye(n)[i] * h, np.eye(n)[j] * h
            H[i, j] = (f(z + e_i + e_j) - f(z + e_i - e_j) - f(z - e_i + e_j) + f(z - e_i - e_j)) / (4 * h * h)
    return H


# ============================================================== §7.2 asymptotic / inequality
def _A_ratio(p, X, Y, leading_fn, layers=False):
    """A_t(ρ)/A_t(ρ/10) for ρ = 1e-2: A_t = exact dB/dt − leading term."""
    def A(rho):
        opt = Optimizer("sam", rho=rho)
        if layers:
            return th.dB_dt_layers(p, opt, X, Y, 0.0) - leading_fn(rho)
        return th.dB_dt(p, opt, X, Y, 0.0) - leading_fn(rho)

    return np.ravel(A(1e-2) / A(1e-3))


@check("thm2-A-order", "Thm 2 (5)", "NOP: A_t = O(rho^2): A_t(rho)/A_t(rho/10) ~ 100")
def _(ctx):
    p, X, Y = _random_nop(ctx.rng, ctx.n)
    gX, gY, _ = p.grads(X, Y, np.zeros(ctx.n), None)
    r = _A_ratio(p, X, Y, lambda rho: th.thm2_leading(gX, gY, rho))
    v = float(np.median(r))
    return (v, (98, 102), f"median ratio {v:.2f} (range {r.min():.1f}..{r.max():.1f})", "in")


@check("lemma2-A-order", "Lemma 2 (32)", "OP: A_t = O(rho^2): A_t(rho)/A_t(rho/10) ~ 100")
def _(ctx):
    p, X, Y = _random_op(ctx.rng, ctx.n)
    f = p.outer_grad(p.product(X, Y), np.zeros(ctx.n), None)
    r = _A_ratio(p, X, Y, lambda rho: th.lemma2_leading(f, X, Y, rho))
    v = float(np.median(r))
    return (v, (98, 102), f"median ratio {v:.2f} (range {r.min():.1f}..{r.max():.1f})", "in")


@check("thm5-A-order", "Thm 5 (26)", "layer-wise NOP: A_{t,l} = O(rho^2) per layer")
def _(ctx):
    p, X, Y = _random_nop(ctx.rng, ctx.n, layers=3)
    gX, gY, _ = p.grads(X, Y, np.zeros(ctx.n), None)
    r = _A_ratio(p, X, Y, lambda rho: th.thm5_leading_layers(gX, gY, rho), layers=True)
    v = float(np.median(r))
    return (v, (98, 102), f"median ratio {v:.2f} over layers x points", "in")


@check("thm2-A-bound", "Thm 2 (16b)", "NOP: |A_t| <= L rho^2 (|x|+|y|)^2 + L rho^3 (|x|+|y|)/2")
def _(ctx):
    p, X, Y = _random_nop(ctx.rng, 20 * ctx.n)
    ratios = []
    for rho in (0.01, 0.1, 0.5):
        gX, gY, _ = p.grads(X, Y, np.zeros(len(X)), None)
        A = th.dB_dt(p, Optimizer("sam", rho=rho), X, Y, 0.0) - th.thm2_leading(gX, gY, rho)
        ratios.append(np.max(np.abs(A) / th.thm2_A_bound(X, Y, rho, p.lipschitz)))
    v = float(max(ratios))
    return v, 1.0, f"max |A_t|/bound = {v:.3f} over {len(X)} points x 3 radii"


@check("lemma2-A-bound", "Lemma 2", "OP: |A_t| <= 2 L rho^2 |B| (1 + rho/(2 sqrt(|x|^2+|y|^2)))")
def _(ctx):
    p, X, Y = _random_op(ctx.rng, 20 * ctx.n)
    f = p.outer_grad(p.product(X, Y), np.zeros(len(X)), None)
    ratios = []
    for rho in (0.01, 0.1, 0.5):
        A = th.dB_dt(p, Optimizer("sam", rho=rho), X, Y, 0.0) - th.lemma2_leading(f, X, Y, rho)
        ratios.append(np.max(np.abs(A) / th.lemma2_A_bound(X, Y, rho, p.lipschitz)))
    v = float(max(ratios))
    return v, 1.0, f"max |A_t|/bound = {v:.3f} over {len(X)} points x 3 radii"


@check("thm2-sandwich", "Thm 2 (6)", "|a-b| <= |a^2-b^2|/sqrt(a^2+b^2) <= sqrt(|a^2-b^2|) for a, b >= 0 (the sqrt reading of (6))")
def _(ctx):
    a, b = np.abs(ctx.rng.standard_normal((2, 100_000))) * np.exp(ctx.rng.uniform(-5, 3, (2, 100_000)))
    mid = np.abs(a**2 - b**2) / np.sqrt(a**2 + b**2)
    bad = np.sum((np.abs(a - b) > mid * (1 + 1e-12)) | (mid > np.sqrt(np.abs(a**2 - b**2)) * (1 + 1e-12)))
    return float(bad), 0.0, f"{bad} violations in 100000 draws"


@check("thm2-no-sqrt-reading", "Thm 2 (6), spec §8.7", "finding: the no-sqrt reading |dB/dt| <= rho|g_x^2 - g_y^2| is not a bound", kind="finding")
def _(ctx):
    a, b = np.abs(ctx.rng.standard_normal((2, 100_000)))
    mid = np.abs(a**2 - b**2) / np.sqrt(a**2 + b**2)
    bad = int(np.sum(mid > np.abs(a**2 - b**2) * (1 + 1e-12)))
    return (float(bad), 0.0, f"leading term exceeds it in {bad} of 100000 draws (|g| < 1)", "gt")


@check("thm3-sandwich", "Thm 3 (36)-(37)", "C_t <= 2|B|/sqrt(|x|^2+|y|^2) <= sqrt(2|B|), with C_t = ||x| - |y||")
def _(ctx):
    p, X, Y = _random_op(ctx.rng, 10 * ctx.n)
    C = np.abs(np.sqrt(sq_norms(X)) - np.sqrt(sq_norms(Y)))
    B = np.abs(balancedness(X, Y))
    mid = 2 * B / np.sqrt(sq_norms(X) + sq_norms(Y))
    bad = int(np.sum((C > mid * (1 + 1e-12)) | (mid > np.sqrt(2 * B) * (1 + 1e-12))))
    return float(bad), 0.0, f"{bad} violations in {len(X)} random points"


@check("thm3-rate-bounds", "Thm 3", "along SAM-OP: rho|f'|C_t - 2L rho^2|B|(..) <= |dB/dt| <= rho|f'|sqrt(2|B|) + same")
def _(ctx):
    p, X, Y = _random_op(ctx.rng, 10 * ctx.n)
    bad = 0
    for rho in (0.01, 0.1):
        rate = np.abs(th.dB_dt(p, Optimizer("sam", rho=rho), X, Y, 0.0))
        f = p.outer_grad(p.product(X, Y), np.zeros(len(X)), None)
        lo, hi = th.thm3_bounds(f, X, Y, rho)
        slack = th.lemma2_A_bound(X, Y, rho, p.lipschitz)
        bad += int(np.sum((rate < lo - slack - 1e-12) | (rate > hi + slack + 1e-12)))
    return float(bad), 0.0, f"{bad} violations in {2 * len(X)} (point, rho) pairs"


@check("lemma3-msharp-stronger", "Lemma 3 (39)", "m-sharpness regularizes at least as strongly: (1/m) sum|f'_i| >= |f'|")
def _(ctx):
    rng, m = ctx.rng, 4
    p, X, Y = _random_op(rng, 10 * ctx.n)
    chunks = rng.standard_normal((m, len(X)))
    alpha = np.ones(len(X))
    W = p.product(X, Y)
    fi = np.stack([p.outer_grad(W, alpha, c) for c in chunks])
    f = p.outer_grad(W, alpha, chunks.mean(0))
    lead_m = th.lemma3_leading(fi, X, Y, 0.01)
    lead_1 = th.lemma2_leading(f, X, Y, 0.01)
    bad = int(np.sum(np.abs(lead_m) < np.abs(lead_1) * (1 - 1e-12)))
    exact = th.dB_dt(p, Optimizer("msam", rho=1e-4, m=m), X, Y, alpha, chunks)
    lead_small = th.lemma3_leading(fi, X, Y, 1e-4)
    rel = float(np.median(np.abs(exact - lead_small) / np.abs(lead_small)))
    return float(bad), 0.0, f"{bad} points where it is weaker; (39) vs exact at rho=1e-4: median rel. gap {rel:.1e}"


@check("discrete-to-flow", "§7.2.18", "discrete SAM converges to its flow: |B_disc(1) - B_flow(1)| ~ 0.2 eta")
def _(ctx):
    p = nop_problem()
    flow = solve_flow(p, "sam", rho=0.1, t_end=1.0, n_records=2).balancedness[0, -1]
    errs = []
    for lr in (1e-2, 1e-3) + (() if ctx.quick else (1e-4,)):
        d = simulate(p, "sam", rho=0.1, lr=lr, steps=int(round(1 / lr)), record_every=int(round(1 / lr)))
        errs.append(abs(d.balancedness[0, -1] - flow))
    ratios = [errs[i] / errs[i + 1] for i in range(len(errs) - 1)]
    v = float(min(ratios))
    return (v, (8.0, 12.0), f"B_flow(1) = {flow:.5f}; errors {', '.join(f'{e:.1e}' for e in errs)}; "
            f"ratio per 10x eta {', '.join(f'{r:.2f}' for r in ratios)}", "in")


@check("lemma2-no-sign-change", "Lemma 2 (33)", "along the SAM-OP flow B never changes sign")
def _(ctx):
    r = solve_flow(op_problem(), "sam", rho=0.2, t_end=5.0, n_records=101)
    B = r.balancedness[0]
    flips = int(np.sum(np.sign(B[1:]) != np.sign(B[:-1])))
    return float(flips), 0.0, f"{flips} sign changes; B from {B[0]:.3f} to {B[-1]:.4f}"


# ============================================================== §7.3 the paper's toy settings
def _toy_runs(ctx, kind):
    key = ("toy", kind)
    if key not in ctx.cache:
        p, rho = (nop_problem(), 0.1) if kind == "nop" else (op_problem(), 0.2)
        alphas = [0.0, 0.5, 1.0, 2.0]
        steps = 20_000 if ctx.quick else 100_000
        kw = dict(alpha=alphas, seeds=[0], lr=1e-4, steps=steps, record_every=steps // 10)
        ctx.cache[key] = (simulate(p, "sgd", **kw), simulate(p, "sam", rho=rho, **kw), steps)
    return ctx.cache[key]


def _toy_balance(ctx, kind):
    sgd, sam, steps = _toy_runs(ctx, kind)
    B0 = sgd.balancedness[0, 0]
    drift = max(abs(sgd.balancedness[i, -1] - B0) / abs(B0) for i in (0, 1, 2))
    frac = [abs(sam.balancedness[i, -1]) / abs(B0) for i in (1, 2)]
    limit = 0.5 if not ctx.quick else 0.8
    ok = drift <= 0.01 and max(frac) < limit
    msg = (f"T={steps}: SAM 2|B_T|/2|B_0| = {frac[0]:.3f} (a=0.5), {frac[1]:.3f} (a=1) < {limit}; "
           f"SGD max drift {100 * drift:.2f}% (a<=1) <= 1%")
    return (float(ok), 1.0, msg, "eq")


@check("toy-nop-sam-balances", "Fig 1a, Thm 1-2", "NOP toy: SAM halves 2|B| for a in {0.5, 1}; SGD stays within 1% of B0")
def _(ctx):
    return _toy_balance(ctx, "nop")


@check("toy-op-sam-balances", "Fig 1b, Thm 3, 6", "OP toy: SAM halves 2|B| for a in {0.5, 1}; SGD stays within 1% of B0")
def _(ctx):
    return _toy_balance(ctx, "op")


def _toy_noisier(ctx, kind):
    sgd, sam, steps = _toy_runs(ctx, kind)
    k = 1  # record at steps/10 (1e4 at paper scale)
    vals = [abs(sam.balancedness[i, k]) * 2 for i in range(4)]
    ok = all(vals[i] > vals[i + 1] for i in range(3))
    return (float(ok), 1.0, f"2|B| at t={int(sam.t[k])}: " + ", ".join(
        f"a={a}: {v:.3f}" for a, v in zip([0, 0.5, 1, 2], vals)), "eq")


@check("toy-nop-noisier-faster", "§3 (Fig 1a)", "NOP toy: noisier data balances faster (2|B| at 1e4 decreasing in a)")
def _(ctx):
    return _toy_noisier(ctx, "nop")


@check("toy-op-noisier-faster", "§4 (Fig 1b)", "OP toy: noisier data balances faster (2|B| at 1e4 decreasing in a)")
def _(ctx):
    return _toy_noisier(ctx, "op")


@check("toy-sgd-drift-nop", "§7.3(c)", "NOP toy, a=2: SGD's drift of B is the predicted O(eta^2) term (sum along the run)")
def _(ctx):
    p = nop_problem()
    steps = 20_000 if ctx.quick else 100_000
    r = simulate(p, "sgd", alpha=2.0, seeds=[0], lr=1e-4, steps=steps, record_every=1)
    X = r.x[0, :-1]
    Y = r.y[0, :-1]
    pred = float(np.sum(th.sgd_expected_drift_nop(p, X, Y, 2.0, 1e-4)))
    obs = float(r.balancedness[0, -1] - r.balancedness[0, 0])
    v = abs(obs - pred) / abs(pred)
    return v, 0.10, f"predicted dB = {pred:.5f}, observed {obs:.5f} (rel. gap {100 * v:.1f}%)"


@check("toy-sgd-drift-op", "§7.3(c)", "OP toy: SGD has B_T = B_0 exp(-eta^2 sum f'^2) (discrete)")
def _(ctx):
    p = op_problem()
    steps = 20_000 if ctx.quick else 100_000
    r = simulate(p, "sgd", alpha=1.0, seeds=[0], lr=1e-4, steps=steps, record_every=1)
    noise = p.noise_sequence(0, steps, 1)[:, 0]
    f = p.outer_grad(p.product(r.x[0, :-1], r.y[0, :-1]), np.ones(steps), noise)
    pred = r.balancedness[0, 0] * np.prod(1 - 1e-8 * f**2)
    approx = r.balancedness[0, 0] * np.exp(-1e-8 * np.sum(f**2))
    v = abs(r.balancedness[0, -1] - pred) / abs(pred)
    return v, 1e-9, (f"B_T = {r.balancedness[0, -1]:.6f}; product formula {pred:.6f} (rel. err {v:.1e}); "
                     f"exp form {approx:.6f}")


@check("toy-sam-collapse", "§7.3(d)", "finding: with a = 2 SAM balances by collapsing to x = y = 0 (loss does not converge)", kind="finding")
def _(ctx):
    sgd, sam, steps = _toy_runs(ctx, "nop")
    loss = float(sam.loss[3, -1])
    norm = float(np.sqrt(sq_norms(sam.x[3, -1:]) + sq_norms(sam.y[3, -1:]))[0])
    return (loss, (0.2, 0.26), f"a=2: excess loss {loss:.3f} (0.25 = |A|^2 at W = 0), |(x, y)| = {norm:.1e}", "in")


@check("toy-bar-balances", "Fig 2b, Algs 2-3", "NOP toy a=1, mu=1: nBAR and oBAR reduce 2|B| and fit better than SGD")
def _(ctx):
    p = nop_problem()
    steps, lr = (20_000, 5e-4) if ctx.quick else (100_000, 1e-4)  # same horizon eta*T = 10
    kw = dict(alpha=1.0, seeds=[0], lr=lr, steps=steps, record_every=steps)
    res = {o: simulate(p, o, mu=1.0, **kw) for o in ("sgd", "nbar", "obar")}
    b = {o: 2 * abs(r.balancedness[0, -1]) for o, r in res.items()}
    loss = {o: r.loss[0, -1] for o, r in res.items()}
    ok = b["nbar"] < 0.5 * b["sgd"] and b["obar"] < 0.5 * b["sgd"] and loss["nbar"] < loss["sgd"] and loss["obar"] < loss["sgd"]
    return (float(ok), 1.0, ", ".join(f"{o}: 2|B|={b[o]:.3f} loss={loss[o]:.1e}" for o in b), "eq")


@check("fig4-saddle-trap", "Fig 4", "GD on f = 30000(xy-0.005)^2 from x = -y stays on the line and goes to the saddle (0, 0)")
def _(ctx):
    p = toy2d_problem(0.1, -0.1)
    r = simulate(p, "sgd", lr=1e-4, steps=20_000, record_every=20_000)
    x, y = float(r.x[0, -1].ravel()[0]), float(r.y[0, -1].ravel()[0])
    q = toy2d_problem(0.1, 0.09)
    s = simulate(q, "sgd", lr=1e-4, steps=20_000, record_every=20_000)
    w = float(q.product(s.x[:, -1], s.y[:, -1])[0])
    v = max(abs(x), abs(y), abs(x + y))
    return (v, 1e-6, f"from (0.1, -0.1): ends at ({x:.1e}, {y:.1e}); from (0.1, 0.09): xy = {w:.5f} (minimizer 0.005)", "le")


# ============================================================== runner
class _Ctx:
    def __init__(self, quick: bool, seed: int):
        self.quick = quick
        self.n = 50 if quick else 200
        self.rng = np.random.default_rng(seed)
        self.cache: dict = {}


def _judge(value: float, tol, mode: str) -> bool:
    if not np.isfinite(value):
        return False
    if mode == "le":
        return value <= tol
    if mode == "gt":
        return value > tol
    if mode == "in":
        return tol[0] <= value <= tol[1]
    if mode == "eq":
        return value == tol
    raise ValueError(mode)


def _tol_text(tol, mode: str) -> str:
    if mode == "in":
        return f"in [{tol[0]:g}, {tol[1]:g}]"
    if mode == "eq":
        return "all hold"
    return f"{'<=' if mode == 'le' else '>'} {tol:g}"


def run_checks(quick: bool = False, seed: int = 0, only: list[str] | None = None, progress=None) -> list[CheckResult]:
    """Run every registered check (or those in ``only``) and return their results in order."""
    known = [c[0] for c in CHECKS]
    if only:
        unknown = [o for o in only if o not in known]
        if unknown:
            raise ValueError(f"unknown check id(s) {unknown}; known: {', '.join(known)}")
    ctx = _Ctx(quick, seed)
    out = []
    for cid, ref, claim, kind, fn in CHECKS:
        if only and cid not in only:
            continue
        started = time.perf_counter()
        ret = fn(ctx)
        value, tol, measured = ret[:3]
        mode = ret[3] if len(ret) > 3 else "le"
        ok = _judge(float(value), tol, mode)
        out.append(CheckResult(cid, ref, claim, measured, _tol_text(tol, mode), "PASS" if ok else "FAIL", kind,
                               float(value), time.perf_counter() - started))
        if progress is not None:
            progress(out[-1])
    return out


def results_as_json(results: list[CheckResult]) -> list[dict]:
    return [asdict(r) for r in results]
