"""The flatness methods beside SAM and BAR (spec/flatness-methods.md [FM] §5): Flat-LoRA, Bi-LoRA and ASAM.

Math checks verify the derivations on their own: the W-space lemma (any perturbation that enters through the
product leaves the flow's d(XᵀX − YᵀY)/dt at 0 and changes B by exactly (η²/2)(‖My‖² − ‖Mᵀx‖²) per step), and
that noise on the *factors* balances at the predicted rate. Implementation checks hold the registered
``flat-lora``, ``bi-lora`` and ``asam`` fields to the spec's rules, written again here with their own arithmetic
(as ``instances`` does for SAM), and run them on the toys: Flat-LoRA and Bi-LoRA conserve B like SGD, with a drift
of O(η²) per step; ASAM is orbit-invariant at η_a = 0 and exactly conserving on OP. Findings say where a method
does not do what its paper's intuition suggests.

The toy runs here are short (ηT = 2 in 500 and 250 steps, the same in ``--quick`` and at full scale): the
flatness methods step with numpy, and what they are checked for (the drift's order, the gap to SGD on the same
draws) is as clear at this horizon.
"""

from __future__ import annotations

from typing import TypedDict

import numpy as np

from balancedness.checks.instances import pair_error, random_minibatch, random_nop, random_op
from balancedness.checks.registry import Context, Kind, Measurement, all_hold, at_most, check, within
from balancedness.metrics import FloatArray, balancedness_layers
from balancedness.sims import theory as th
from balancedness.sims.directions import Field, lookup
from balancedness.sims.discrete import simulate
from balancedness.sims.optimizers import Optimizer
from balancedness.sims.problems import Problem, nop_problem, op_problem
from balancedness.sims.results import SimResult

IMPL, MATH, FINDING = Kind.IMPLEMENTATION, Kind.MATH, Kind.FINDING
#: The toy settings of these checks: Flat-LoRA's σ (constant: the effect is then there from the first step),
#: Bi-LoRA's clip radius and auxiliary init (large enough that the auxiliary matters within ηT = 2).


class ToyOptions(TypedDict, total=False):
    """The hyper-parameters of a flatness method's toy run (:func:`flat_toy`)."""

    rho: float
    sigma: float
    noise_schedule: str
    aux_init: float


FLAT: ToyOptions = {"sigma": 0.5, "noise_schedule": "constant"}
BILORA: ToyOptions = {"rho": 0.05, "aux_init": 0.1}
TOY_ALPHAS = [0.0, 0.5, 1.0, 2.0]
HORIZON = 2.0


# -- the spec's rules, written again ---------------------------------------------------------------
def _outer(p: Problem, W: FloatArray, C: FloatArray) -> FloatArray:
    """∇f = 2k(W − C) of the loss k‖W − C‖² (NOP) or k(w − C)² (OP)."""
    return 2 * p.scale * (W - C)


def _products(p: Problem, X: FloatArray, Y: FloatArray) -> FloatArray:
    """Per layer: X_l Y_lᵀ (n, L, d1, d2) (NOP) or ⟨X_l, Y_l⟩ (n, L) (OP)."""
    out: FloatArray = np.einsum("nlir,nljr->nlij", X, Y) if p.kind == "nop" else np.einsum("nlir,nlir->nl", X, Y)
    return out


def _chain(p: Problem, X: FloatArray, Y: FloatArray, G: FloatArray) -> tuple[FloatArray, FloatArray]:
    """(G Y_l, Gᵀ X_l) per layer (NOP) or (f′ y_l, f′ x_l) (OP): the chain rule at the factors (X, Y)."""
    if p.kind == "nop":
        return np.einsum("nij,nljr->nlir", G, Y), np.einsum("nij,nlir->nljr", G, X)
    return G[:, None, None, None] * Y, G[:, None, None, None] * X


def paper_flat_lora(p: Problem, X: FloatArray, Y: FloatArray, C: FloatArray, sigma_t: float, xi: FloatArray) -> Field:
    """[FM] §2.1 eq. (7), §2.3: E_l[i, j] = σ_t·‖(X_l Y_lᵀ)[:, j]‖/√d1·ξ_l[i, j] (OP: e_l = σ_t|w_l|ξ_l), G̃ at
    W + Σ_l E_l, d = −(G̃ Y_l, G̃ᵀ X_l). Returns (d_X, d_Y, the gradient at z)."""
    Wl = _products(p, X, Y)
    if p.kind == "nop":
        E = sigma_t * np.sqrt(np.sum(Wl**2, axis=2, keepdims=True) / p.d1) * xi
    else:
        E = sigma_t * np.abs(Wl) * xi
    W = Wl.sum(axis=1)
    gX, gY = _chain(p, X, Y, _outer(p, W, C))
    dX, dY = _chain(p, X, Y, _outer(p, W + E.sum(axis=1), C))
    return -dX, -dY, gX, gY


def paper_bi_lora(
    p: Problem, X: FloatArray, Y: FloatArray, C: FloatArray, X2: FloatArray, Y2: FloatArray, kappa: float
) -> Field:
    """[FM] §3.1 eq. (9), §3.3: G at W + Σ_l X₂_l Y₂_lᵀ; the primary −(GY, GᵀX), the auxiliary +κ(GY₂, GᵀX₂)."""
    G = _outer(p, _products(p, X, Y).sum(axis=1) + _products(p, X2, Y2).sum(axis=1), C)
    dX, dY = _chain(p, X, Y, G)
    aX, aY = _chain(p, X2, Y2, G)
    return -dX, -dY, kappa * aX, kappa * aY


def paper_asam(
    p: Problem, X: FloatArray, Y: FloatArray, C: FloatArray, rho: float, eta_a: float
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """[FM] §4.3: T = |z| + η_a, z̃ = z + ρ T²⊙g/‖T⊙g‖ (global), d = −(chain rule at z̃). Returns (d_X, d_Y, the
    outer gradient G̃ (NOP) or f̃′ (OP) at z̃)."""
    W = _products(p, X, Y).sum(axis=1)
    gX, gY = _chain(p, X, Y, _outer(p, W, C))
    TX, TY = np.abs(X) + eta_a, np.abs(Y) + eta_a
    u = rho / np.sqrt(np.sum((TX * gX) ** 2, axis=(1, 2, 3)) + np.sum((TY * gY) ** 2, axis=(1, 2, 3)))
    Xt, Yt = X + u[:, None, None, None] * TX**2 * gX, Y + u[:, None, None, None] * TY**2 * gY
    Gt = _outer(p, _products(p, Xt, Yt).sum(axis=1), C)
    dX, dY = _chain(p, Xt, Yt, Gt)
    return -dX, -dY, Gt


def _rate_layers(X: FloatArray, Y: FloatArray, dX: FloatArray, dY: FloatArray) -> FloatArray:
    """⟨X_l, Ẋ_l⟩ − ⟨Y_l, Ẏ_l⟩ per point and layer, relative to ‖X_l‖‖Ẋ_l‖ + ‖Y_l‖‖Ẏ_l‖ (the size of each term)."""
    rate = np.einsum("nlir,nlir->nl", X, dX) - np.einsum("nlir,nlir->nl", Y, dY)
    scale = np.sqrt(np.einsum("nlir,nlir->nl", X, X) * np.einsum("nlir,nlir->nl", dX, dX)) + np.sqrt(
        np.einsum("nlir,nlir->nl", Y, Y) * np.einsum("nlir,nlir->nl", dY, dY)
    )
    out: FloatArray = np.abs(rate) / np.maximum(scale, 1e-300)
    return out


def _flat_lora_draws(p: Problem) -> tuple[int, ...]:
    """The shape of the registered flat-lora's per-step draws ξ on ``p``."""
    draws = lookup("flat-lora").draws
    if draws is None:
        raise ValueError("flat-lora is registered without perturbation draws")
    return draws(p)


def _instances(ctx: Context) -> list[tuple[Problem, FloatArray, FloatArray, FloatArray, FloatArray]]:
    """Random NOP (2 layers of rank 2) and OP (2 layers) problems, points and minibatches: [(p, X, Y, N, C)]."""
    out = []
    for p, X, Y in (random_nop(ctx.rng, ctx.n, layers=2, rank=2), random_op(ctx.rng, ctx.n, layers=2)):
        N, C = random_minibatch(ctx.rng, p, ctx.n)
        out.append((p, X, Y, N, C))
    return out


# -- math: the lemma and the factor-space contrast -------------------------------------------------
@check(
    "wspace-lemma-flow",
    "[FM] §1 Lemma (a)",
    "any W-space perturbation (one matrix M for both factors: x' = -My, y' = -M'x) leaves d(X'X - Y'Y)/dt = 0 "
    "exactly, per layer and at rank r",
    MATH,
)
def wspace_lemma_flow(ctx: Context) -> Measurement:
    p, X, Y = random_nop(ctx.rng, ctx.n, layers=2, rank=3, d1=5, d2=4)
    M = ctx.rng.standard_normal((ctx.n, 5, 4)) * np.exp(ctx.rng.uniform(-2, 2, (ctx.n, 1, 1)))
    D = th.wspace_flow_rate_matrix(X, Y, M)
    MY = np.einsum("nij,nljr->nlir", M, Y)
    scale = np.sqrt(np.einsum("nlir,nlir->nl", X, X) * np.einsum("nlir,nlir->nl", MY, MY))[:, :, None, None]
    v = float(np.max(np.abs(D) / scale))
    return at_most(
        v, 1e-13, f"max |d(X'X - Y'Y)/dt| / (|X||MY|) = {v:.1e} over {ctx.n} random M (5x4), 2 layers of rank 3"
    )


@check(
    "wspace-lemma-discrete",
    "[FM] §1 Lemma (b)",
    "one step x+ = x - eta My, y+ = y - eta M'x changes B by exactly (eta^2/2)(|My|^2 - |M'x|^2), whatever M is",
    MATH,
)
def wspace_lemma_discrete(ctx: Context) -> Measurement:
    p, X, Y = random_nop(ctx.rng, ctx.n, layers=2, rank=3, d1=5, d2=4)
    M = ctx.rng.standard_normal((ctx.n, 5, 4))
    lr = 10 ** ctx.rng.uniform(-3, -1)
    MY, MtX = np.einsum("nij,nljr->nlir", M, Y), np.einsum("nij,nlir->nljr", M, X)
    step = balancedness_layers(X - lr * MY, Y - lr * MtX).sum(axis=1) - balancedness_layers(X, Y).sum(axis=1)
    pred = th.wspace_step_change(MY, MtX, lr)
    scale = 0.5 * lr**2 * (np.einsum("nlir,nlir->n", MY, MY) + np.einsum("nljr,nljr->n", MtX, MtX))
    v = float(np.max(np.abs(step - pred) / scale))
    return at_most(
        v,
        1e-8,
        f"max |dB - (eta^2/2)(|My|^2 - |M'x|^2)| / (eta^2/2)(|My|^2 + |M'x|^2) = {v:.1e} "
        f"(eta = {lr:.1e}, {ctx.n} random M, 2 layers of rank 3; B itself is O(1): the float error)",
    )


@check(
    "factor-space-noise-balances",
    "[FM] §1 corollary (RWP_LoRA)",
    "noise on the factors instead (x + tau xi_x, y + tau xi_y, chain rule there) balances: E[dB/dt] = "
    "2k tau^2 (d1|y|^2 - d2|x|^2) = -4k d tau^2 B for d1 = d2 = d (Monte Carlo within 4 s.e.)",
    MATH,
)
def factor_space_noise_balances(ctx: Context) -> Measurement:
    draws, tau, d = (4000 if ctx.quick else 16000), 0.3, 3
    worst, parts = 0.0, []
    for _ in range(4):
        x, y, C = ctx.rng.standard_normal(d), ctx.rng.standard_normal(d), ctx.rng.standard_normal((d, d))
        xt = x + tau * ctx.rng.standard_normal((draws, d))
        yt = y + tau * ctx.rng.standard_normal((draws, d))
        Gt = 2 * (np.einsum("ni,nj->nij", xt, yt) - C)
        rate = -np.einsum("i,nij,nj->n", x, Gt, yt) + np.einsum("j,nij,ni->n", y, Gt, xt)
        pred = float(th.factor_noise_expected_rate_nop(x[None, None, :, None], y[None, None, :, None], tau)[0])
        B = 0.5 * (x @ x - y @ y)
        z = abs(rate.mean() - pred) / (rate.std() / np.sqrt(draws))
        worst = max(worst, z, abs(pred + 4 * d * tau**2 * B) / abs(pred))
        parts.append(f"B={B:+.2f}: MC {rate.mean():+.3f} vs {pred:+.3f}")
    return at_most(
        worst,
        4.0,
        f"{'; '.join(parts)} ({draws} draws each, tau = {tau}); worst |MC - prediction|/s.e. "
        f"{worst:.2f} (and the closed form = -4k d tau^2 B): the sign of B is always opposed",
    )


# -- Flat-LoRA -------------------------------------------------------------------------------------
@check(
    "flat-lora-field",
    "[FM] §2.3, §2.4",
    "flat-lora's field is -(G~Y, G~'X) with G~ at W + E (E of eq. (7), filters = columns of XY', fan-in d1; "
    "sigma_t = sigma (1 - cos(pi t/T))/2): its dB_l/dt is 0 exactly for every draw, and its expectation "
    "(xi = None) is SGD's -g",
    IMPL,
    runs=("flat-lora",),
    exact=True,
)
def flat_lora_field(ctx: Context) -> Measurement:
    errs, rates, means, grads = [], [], [], []
    for p, X, Y, N, C in _instances(ctx):
        xi = ctx.rng.standard_normal((ctx.n,) + _flat_lora_draws(p))
        for progress in (0.25, 0.5, 0.9):
            opt = Optimizer("flat-lora", sigma=0.3, noise_schedule="cosine")
            out = opt.direction(p, X, Y, 1.0, N[None], progress, xi=xi)
            ref = paper_flat_lora(p, X, Y, C, 0.3 * 0.5 * (1 - np.cos(np.pi * progress)), xi)
            errs.append(pair_error(out[0], out[1], ref[0], ref[1]))
            grads.append(pair_error(out[2], out[3], ref[2], ref[3]))
            rates.append(float(np.max(_rate_layers(X, Y, out[0], out[1]))))
        mean = Optimizer("flat-lora", sigma=0.3).direction(p, X, Y, 1.0, N[None], 0.5)
        means.append(pair_error(mean[0], mean[1], -ref[2], -ref[3]))
    v = float(np.max([errs, grads, rates] + [means * 3]))
    return at_most(
        v,
        1e-12,
        f"direction vs the spec's rule: rel. error {max(errs):.1e}; returned g {max(grads):.1e}; "
        f"|dB_l/dt| / (|x||x'| + |y||y'|) {max(rates):.1e}; expected field vs -g {max(means):.1e} "
        f"({ctx.n} random points, NOP 2 layers of rank 2 and OP 2 layers, t/T = 0.25, 0.5, 0.9)",
    )


@check(
    "flat-lora-eta2-drift",
    "[FM] §2.4 (flat-eta2-drift-cols)",
    "one flat-lora step on the NOP toy adds to SGD's dB (same minibatch) the expected "
    "2 k^2 eta^2 sigma^2 |x|^2 (|y|_4^4 - |x|^2|y|^2/d1) (Monte Carlo over the draws within 4 s.e.)",
    IMPL,
    runs=("flat-lora",),
    exact=True,
)
def flat_lora_eta2_drift(ctx: Context) -> Measurement:
    p, lr, sigma = nop_problem(), 1e-2, 0.5
    draws = 20_000 if ctx.quick else 40_000
    X = np.broadcast_to(p.x0, (draws,) + p.x0.shape)
    Y = np.broadcast_to(p.y0, (draws,) + p.y0.shape)
    N = np.broadcast_to(ctx.rng.standard_normal(p.noise_shape), (draws,) + p.noise_shape)
    half = ctx.rng.standard_normal((draws // 2,) + _flat_lora_draws(p))
    xi = np.concatenate([half, -half])  # antithetic pairs: the zero-mean O(xi) part of dB cancels in each pair
    opt = Optimizer("flat-lora", sigma=sigma, noise_schedule="constant")
    dX, dY, gX, gY = opt.direction(p, X, Y, 1.0, N[None], 0.5, xi=xi)
    B0 = balancedness_layers(X, Y).sum(axis=1)
    extra = (balancedness_layers(X + lr * dX, Y + lr * dY).sum(axis=1) - B0) - th.sgd_discrete_drift(gX, gY, lr)
    pairs = 0.5 * (extra[: draws // 2] + extra[draws // 2 :])
    pred = float(th.flat_lora_expected_drift_nop(p.x0[None], p.y0[None], sigma, lr)[0])
    se = pairs.std() / np.sqrt(len(pairs))
    z = abs(pairs.mean() - pred) / se
    return at_most(
        z,
        4.0,
        f"mean extra dB {pairs.mean():.3e} +- {se:.1e} vs predicted {pred:.3e} ({draws} draws in "
        f"antithetic pairs at the toy's init, eta = {lr:g}, sigma = {sigma}): |diff|/s.e. {z:.2f}",
    )


# -- Bi-LoRA ---------------------------------------------------------------------------------------
@check(
    "bi-lora-field",
    "[FM] §3.1 eq. (9), §3.3-3.4",
    "bi-lora's field: one G at W + X2 Y2'; the primary descends -(GY, G'X), the auxiliary ascends +kappa(G Y2, "
    "G'X2); the primary's dB_l/dt is 0 exactly",
    IMPL,
    runs=("bi-lora",),
    exact=True,
)
def bi_lora_field(ctx: Context) -> Measurement:
    errs, auxe, rates, grads = [], [], [], []
    for p, X, Y, N, C in _instances(ctx):
        X2 = 0.3 * ctx.rng.standard_normal((ctx.n, p.layers, p.d1, 1))
        Y2 = 0.3 * ctx.rng.standard_normal((ctx.n, p.layers, p.d2, 1))
        opt = Optimizer("bi-lora", rho=0.05, kappa=0.7)
        (dX, dY, gX, gY), aux_rate = opt.field_with_aux(
            p, X, Y, p.effective_target(np.ones(1), N)[None], 0.3, aux=(X2, Y2)
        )
        assert aux_rate is not None, "bi-lora returns its auxiliary's rate when it has one"
        aX, aY = aux_rate
        rX, rY, rX2, rY2 = paper_bi_lora(p, X, Y, C, X2, Y2, 0.7)
        g = _chain(p, X, Y, _outer(p, _products(p, X, Y).sum(axis=1), C))
        errs.append(pair_error(dX, dY, rX, rY))
        auxe.append(pair_error(aX, aY, rX2, rY2))
        grads.append(pair_error(gX, gY, *g))
        rates.append(float(np.max(_rate_layers(X, Y, dX, dY))))
    v = float(np.max([errs, auxe, grads, rates]))
    return at_most(
        v,
        1e-12,
        f"primary direction rel. error {max(errs):.1e}, auxiliary {max(auxe):.1e}, returned g "
        f"{max(grads):.1e}; |dB_l/dt| / (|x||x'| + |y||y'|) {max(rates):.1e} ({ctx.n} random points and "
        "auxiliaries, NOP 2 layers of rank 2 and OP 2 layers, kappa = 0.7)",
    )


def bilora_clip_run(ctx: Context) -> SimResult:
    """Bi-LoRA on the noise-free NOP toy with a small clip radius ρ = 0.02 (aux_init 0.1, η = 2e-2, T = 500, every
    5th step recorded), where the clip is active for most of the run; shared by a check and a finding."""
    out: SimResult = ctx.cached(
        ("bilora-clip",),
        lambda: simulate(
            nop_problem(), "bi-lora", rho=0.02, aux_init=0.1, alpha=0.0, seeds=[0], lr=2e-2, steps=500, record_every=5
        ),
    )
    return out


def _aux(run: SimResult, name: str) -> FloatArray:
    out: FloatArray = np.asarray(run.settings["auxiliary"][name])[0]
    return out


@check(
    "bi-lora-aux-clip",
    "[FM] §3.1 eq. (10), §5 item 4, Prop. 2",
    "bi-lora on the noise-free NOP toy (rho = 0.02): |X2 Y2'| <= rho after every step, the clip is active, "
    "and the auxiliary is an ascent: f(W + X2 Y2') > f(W) at >= 90% of the records",
    IMPL,
    runs=("bi-lora",),
)
def bi_lora_aux_clip(ctx: Context) -> Measurement:
    run, rho, p = bilora_clip_run(ctx), 0.02, nop_problem()
    norm = _aux(run, "norm")
    X2 = _aux(run, "x2").reshape((-1,) + p.x0.shape)
    Y2 = _aux(run, "y2").reshape((-1,) + p.y0.shape)
    W = p.product(run.x[0], run.y[0])
    P = p.product(X2, Y2)
    gain = np.sum((W + P - p.target) ** 2, axis=(1, 2)) - np.sum((W - p.target) ** 2, axis=(1, 2))
    up = float(np.mean(gain[1:] > 0))
    active = float(np.mean(np.abs(norm - rho) <= 1e-9 * rho))
    top = float(np.max(norm) / rho)
    return all_hold(
        top <= 1 + 1e-12 and active >= 0.5 and up >= 0.9,
        f"max |X2 Y2'|/rho = {top:.12f}; clipped at {100 * active:.0f}% of {len(norm)} records; the "
        f"auxiliary raises the excess loss at {100 * up:.0f}% (median gain {np.median(gain):.1e})",
    )


# -- ASAM ------------------------------------------------------------------------------------------
@check(
    "asam-field",
    "[FM] §4.1 [AS-C], §4.3, §4.4",
    "asam's field is -grad f at z + rho T^2 g/|Tg|, T = |z| + eta_a; on OP its dB/dt is the exact "
    "rho u_a f~'[2 eta_a sum|x_i y_i|(|y_i| - |x_i|) - 2 eta_a^2 B], which is 0 at eta_a = 0",
    IMPL,
    runs=("asam",),
    exact=True,
)
def asam_field(ctx: Context) -> Measurement:
    errs: list[float] = []
    op_rate: list[float] = []
    zero: list[float] = []
    for p, X, Y, N, C in _instances(ctx):
        for eta_a in (0.0, 0.01, 0.3):
            opt = Optimizer("asam", rho=0.2, eta_a=eta_a)
            dX, dY, _, _ = opt.direction(p, X, Y, 1.0, N[None])
            rX, rY, ft = paper_asam(p, X, Y, C, 0.2, eta_a)
            errs.append(pair_error(dX, dY, rX, rY))
            if p.kind == "op":
                f = _outer(p, _products(p, X, Y).sum(axis=1), C)
                rate = th.dB_dt(p, opt, X, Y, 1.0, N[None])
                pred = th.asam_op_rate(X, Y, f, ft, 0.2, eta_a)
                scale = np.abs(f) * np.sqrt(np.sum(X**2 + Y**2, axis=(1, 2, 3))) * 0.2 * np.abs(ft)
                (zero if eta_a == 0 else op_rate).append(float(np.max(np.abs(rate - pred) / scale)))
    v = float(np.max([max(errs), max(op_rate), max(zero)]))
    return at_most(
        v,
        1e-11,
        f"direction vs the spec's rule: rel. error {max(errs):.1e} (eta_a = 0, 0.01, 0.3); OP "
        f"dB/dt vs the exact formula {max(op_rate):.1e}, vs 0 at eta_a = 0 {max(zero):.1e} (relative to "
        f"rho|f'||f~'||(x, y)|; {ctx.n} random points, NOP 2 layers of rank 2 and OP 2 layers)",
    )


@check(
    "asam-nop-orbit-invariant",
    "[FM] §4.4 (asam-nop-orbit-invariant)",
    "asam with eta_a = 0 on NOP: dB/dt is the same at (cX, Y/c) as at (X, Y) (to all orders in rho), per-column "
    "rescaling at rank r too: no pull toward balance",
    IMPL,
    runs=("asam",),
    exact=True,
)
def asam_nop_orbit_invariant(ctx: Context) -> Measurement:
    p, X, Y = random_nop(ctx.rng, ctx.n, layers=1, rank=2)
    N, _ = random_minibatch(ctx.rng, p, ctx.n)
    opt = Optimizer("asam", rho=0.2, eta_a=0.0)
    base = th.dB_dt(p, opt, X, Y, 1.0, N[None])
    worst = 0.0
    for c in (0.5, 2.0, np.array([3.0, 0.4])):
        moved = th.dB_dt(p, opt, X * c, Y / c, 1.0, N[None])
        worst = max(worst, float(np.max(np.abs(moved - base) / np.maximum(np.abs(base), 1e-12))))
    return at_most(
        worst,
        1e-8,
        f"max |dB/dt(cX, Y/c) - dB/dt(X, Y)| / |dB/dt| = {worst:.1e} for c = 0.5, 2 and "
        f"per column (3, 0.4), {ctx.n} random points of rank 2",
    )


@check(
    "asam-rate-vs-sam",
    "[FM] §4.4 (asam-op-rate-vs-sam), §5",
    "finding: ASAM, SAM made adaptive, keeps almost none of SAM's balancing: at the OP toy's init (eta_a = 0.01, "
    "noise-free) its dB/dt is 1.09% of SAM's at equal rho as rho -> 0 (judged +-10% at rho = 1e-4)",
    FINDING,
    runs=("asam", "sam"),
)
def asam_rate_vs_sam(ctx: Context) -> Measurement:
    p = op_problem()
    X, Y = p.x0[None], p.y0[None]

    def ratio(rho: float) -> tuple[float, float, float]:
        a = float(th.dB_dt(p, Optimizer("asam", rho=rho, eta_a=0.01), X, Y, 0.0)[0])
        s = float(th.dB_dt(p, Optimizer("sam", rho=rho), X, Y, 0.0)[0])
        return a / s, a, s

    small, (big, a, s) = ratio(1e-4)[0], ratio(0.2)
    return within(
        small,
        (0.0109 * 0.9, 0.0109 * 1.1),
        f"dB/dt ASAM / SAM = {small:.4f} at rho = 1e-4 (spec 0.0109); at Fig. 1's rho = 0.2: ASAM {a:.3e}, "
        f"SAM {s:.3e}, ratio {big:.4f}: over the paper's horizon 0.348^{big:.4f} = {0.348**big:.3f} of "
        "2|B_0| where SAM reaches 0.348",
    )


# -- the toys --------------------------------------------------------------------------------------
def flat_toy(ctx: Context, kind: str, name: str, lr: float) -> SimResult:
    """``name`` (sgd, flat-lora with :data:`FLAT`, bi-lora with :data:`BILORA`) on a toy at ηT = 2, one trajectory
    per α in ``TOY_ALPHAS``, seed 0 (made once per ``run_checks``)."""

    def run() -> SimResult:
        p = nop_problem() if kind == "nop" else op_problem()
        kw: ToyOptions = FLAT if name == "flat-lora" else BILORA if name == "bi-lora" else {}
        steps = int(round(HORIZON / lr))
        return simulate(p, name, alpha=TOY_ALPHAS, seeds=[0], lr=lr, steps=steps, record_every=steps, **kw)

    out: SimResult = ctx.cached(("flat-toy", kind, name, lr), run)
    return out


def _ratio(run: SimResult) -> FloatArray:
    return np.abs(run.balancedness[:, -1]) / np.abs(run.balancedness[:, 0])


@check(
    "toy-flatness-like-sgd",
    "[FM] §5 item 2",
    "both toys (eta = 4e-3, eta T = 2, a in {0, 0.5, 1, 2}): flat-lora (sigma = 0.5) and bi-lora (rho = 0.05) end "
    "with 2|B_T|/2|B_0| within 0.01 of SGD's on the same draws",
    IMPL,
    runs=("sgd", "flat-lora", "bi-lora"),
)
def toy_flatness_like_sgd(ctx: Context) -> Measurement:
    gaps, parts = [], []
    for kind in ("nop", "op"):
        sgd = _ratio(flat_toy(ctx, kind, "sgd", 4e-3))
        for name in ("flat-lora", "bi-lora"):
            r = _ratio(flat_toy(ctx, kind, name, 4e-3))
            gaps.append(float(np.max(np.abs(r - sgd))))
            parts.append(f"{kind.upper()} {name} " + ", ".join(f"{v:.4f}" for v in r))
        parts.append(f"{kind.upper()} sgd " + ", ".join(f"{v:.4f}" for v in sgd))
    v = float(max(gaps))
    return at_most(v, 0.01, "; ".join(parts) + f" (a = 0, 0.5, 1, 2); largest gap to SGD {v:.4f}")


@check(
    "toy-flatness-eta2-drift",
    "[FM] §2.4, §3.4, §5 item 2",
    "both toys, a in {0.5, 1}: flat-lora's and bi-lora's |B_T - B_0| at eta T = 2 halves when eta halves (8e-3 -> "
    "4e-3: O(eta^2) per step, O(eta) per unit time), ratio in [1.8, 2.2]",
    IMPL,
    runs=("flat-lora", "bi-lora"),
)
def toy_flatness_eta2_drift(ctx: Context) -> Measurement:
    ratios, parts = [], []
    for kind in ("nop", "op"):
        for name in ("flat-lora", "bi-lora"):
            coarse, fine = (flat_toy(ctx, kind, name, lr) for lr in (8e-3, 4e-3))
            drift = [np.abs(r.balancedness[1:3, -1] - r.balancedness[1:3, 0]) for r in (coarse, fine)]
            q = drift[0] / drift[1]
            ratios += list(q)
            parts.append(f"{kind.upper()} {name} {q[0]:.3f}, {q[1]:.3f}")
    lo, hi = float(np.min(ratios)), float(np.max(ratios))
    return all_hold(
        lo >= 1.8 and hi <= 2.2,
        "|B_T - B_0|(eta = 8e-3) / (eta = 4e-3) at a = 0.5, 1: "
        + "; ".join(parts)
        + " (an O(1) effect on B would give 1)",
    )


# -- findings --------------------------------------------------------------------------------------
@check(
    "bilora-aux-balances-itself",
    "[FM] §3.4 (bilora-aux-clip-balances-aux)",
    "finding: Bi-LoRA's flatness lives in the auxiliary: while the clip is active the auxiliary balances itself "
    "(|B2| falls by > 100x), but it is discarded after training, and the primary's B moves like SGD's",
    FINDING,
    runs=("bi-lora",),
)
def bilora_aux_balances_itself(ctx: Context) -> Measurement:
    run, rho = bilora_clip_run(ctx), 0.02
    norm, B2 = _aux(run, "norm"), _aux(run, "balancedness")
    clipped = np.flatnonzero(np.abs(norm - rho) <= 1e-9 * rho)
    first, last = (abs(B2[clipped[0]]), abs(B2[-1])) if len(clipped) else (np.nan, np.nan)
    drop = first / last
    B = run.balancedness[0]
    return all_hold(
        bool(drop > 100),
        f"|B2| {first:.2e} at the first clipped record -> {last:.2e} at the end ({drop:.0f}x); "
        f"the primary's B {B[0]:.4f} -> {B[-1]:.4f}",
    )
