"""Random problem instances, the paper's update rules written again, and the numerical helpers the checks share.

Random NOP/OP problems have a random target and are evaluated at random points of the standard normal,
with a random minibatch target C (so an identity is tested away from the paper's toys, and with noise).

``paper_nop`` and ``paper_op`` compute, at such points, the gradients, the SAM point and the gradients
there **from the paper's equations** ((3), (4a–b), (22a–b) for NOP; (7a–b), (14), (41a–b) for OP), with
their own arithmetic: nothing of ``sims.directions`` is used. An identity check compares what an
optimizer implementation does against these, so a broken implementation (or a broken helper of it)
cannot agree with itself. ``paper_mu`` writes the μ_t schedules of spec §4.5.7 again, for the same reason.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from balancedness.metrics import FloatArray, sq_norms
from balancedness.sims.problems import Problem, nop_problem, op_problem


def rel_error(a: ArrayLike, b: ArrayLike) -> float:
    """max |a − b| / |b| over all entries."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


#: Noise of the m-sharpness chunks: large enough that the chunks' f′_i often differ in sign, where m-SAM
#: and SAM differ (with equal signs (1/m)Σ|f′_i| = |f′| and (39) is (32)).
CHUNK_NOISE = 3.0


def pair_error(aX: FloatArray, aY: FloatArray, bX: FloatArray, bY: FloatArray) -> float:
    """max over points of ‖(a_X, a_Y) − (b_X, b_Y)‖ / ‖(b_X, b_Y)‖ (a direction or a gradient against the paper's; NaN
    propagates)."""
    diff = sq_norms(aX - bX) + sq_norms(aY - bY)
    return float(np.max(np.sqrt(diff / np.maximum(sq_norms(bX) + sq_norms(bY), 1e-300))))


def paper_mu(mu0: float, schedule: str, progress: float) -> float:
    """μ_t of spec §4.5.7, written again (apart from ``balancedness.schedules``): constant μ₀, linear μ₀(1 − t/T),
    cosine μ₀·½(1 + cos(π t/T))."""
    out: float = {
        "constant": mu0,
        "linear": mu0 * (1 - progress),
        "cosine": mu0 * 0.5 * (1 + np.cos(np.pi * progress)),
    }[schedule]
    return out


def random_nop(
    rng: np.random.Generator, n: int, layers: int = 1, rank: int = 1, d1: int = 3, d2: int = 3
) -> tuple[Problem, FloatArray, FloatArray]:
    """A NOP problem with a random target, and n random points: (problem, X, Y)."""
    p = nop_problem(
        rank,
        layers,
        d1=d1,
        d2=d2,
        target=rng.standard_normal((d1, d2)),
        x0=rng.standard_normal((layers, d1, rank)),
        y0=rng.standard_normal((layers, d2, rank)),
    )
    X = rng.standard_normal((n, layers, d1, rank))
    Y = rng.standard_normal((n, layers, d2, rank))
    return p, X, Y


def random_op(
    rng: np.random.Generator, n: int, layers: int = 1, dim: int = 3
) -> tuple[Problem, FloatArray, FloatArray]:
    """An OP problem with a random target, and n random points: (problem, X, Y)."""
    p = op_problem(layers, dim=dim, target=float(rng.standard_normal()))
    return p, rng.standard_normal((n, layers, dim, 1)), rng.standard_normal((n, layers, dim, 1))


def random_minibatch(rng: np.random.Generator, p: Problem, n: int) -> tuple[FloatArray, FloatArray]:
    """A random minibatch for n points: (noise N of shape (n, *noise), the target C = A + N it gives).

    An optimizer sees it as ``alpha = 1`` and ``chunk_means = N[None]``."""
    N = rng.standard_normal((n,) + p.noise_shape)
    return N, p.target + N


class PaperSam(NamedTuple):
    """At a point, for the minibatch target C: g at z, the outer gradient G (NOP) or f′ (OP) at z and at
    the SAM point z̃, ‖g‖ (global over layers), z̃ itself and the gradient g̃ at z̃."""

    gX: FloatArray
    gY: FloatArray
    G: FloatArray
    G_tilde: FloatArray
    grad_norm: FloatArray
    X_tilde: FloatArray
    Y_tilde: FloatArray
    gX_tilde: FloatArray
    gY_tilde: FloatArray


def _nop_G(p: Problem, X: FloatArray, Y: FloatArray, C: FloatArray) -> FloatArray:
    """∇f = 2k(Σ_l X_l Y_lᵀ − C) of the loss k‖W − C‖²."""
    out: FloatArray = 2 * p.scale * (np.einsum("nlir,nljr->nij", X, Y) - C)
    return out


def paper_nop(p: Problem, X: FloatArray, Y: FloatArray, C: FloatArray, rho: float | FloatArray) -> PaperSam:
    """(3), (22a–b) (one layer: (4a–b)): g_{x_l} = G y_l, g_{y_l} = Gᵀx_l, u = 1/sqrt(Σ_l ‖g_{x_l}‖² + ‖g_{y_l}‖²),
    x̃_l = x_l + ρu G y_l, ỹ_l = y_l + ρu Gᵀx_l, g_{x̃_l} = G̃ ỹ_l, g_{ỹ_l} = G̃ᵀ x̃_l (rank r: columns alike)."""
    G = _nop_G(p, X, Y, C)
    gX, gY = np.einsum("nij,nljr->nlir", G, Y), np.einsum("nij,nlir->nljr", G, X)
    norm = np.sqrt(np.einsum("nlir,nlir->n", gX, gX) + np.einsum("nljr,nljr->n", gY, gY))
    s = (rho / norm)[:, None, None, None]
    Xt, Yt = X + s * gX, Y + s * gY
    Gt = _nop_G(p, Xt, Yt, C)
    gXt, gYt = np.einsum("nij,nljr->nlir", Gt, Yt), np.einsum("nij,nlir->nljr", Gt, Xt)
    return PaperSam(gX, gY, G, Gt, norm, Xt, Yt, gXt, gYt)


def paper_op(p: Problem, X: FloatArray, Y: FloatArray, c: float | FloatArray, rho: float | FloatArray) -> PaperSam:
    """(14), (41a–b) (one layer: (7a–b), u = sgn f′/sqrt(‖x‖² + ‖y‖²)): f′ = 2k(Σ_l x_lᵀy_l − c),
    u = 1/sqrt(Σ_l f′²(‖x_l‖² + ‖y_l‖²)), x̃_l = x_l + ρu f′ y_l, ỹ_l = y_l + ρu f′ x_l, g_{x̃_l} = f̃′ ỹ_l."""
    f = 2 * p.scale * (np.einsum("nlir,nlir->n", X, Y) - c)
    nx, ny = np.einsum("nlir,nlir->n", X, X), np.einsum("nlir,nlir->n", Y, Y)
    norm = np.abs(f) * np.sqrt(nx + ny)
    s = (rho * f / norm)[:, None, None, None]
    Xt, Yt = X + s * Y, Y + s * X
    ft = 2 * p.scale * (np.einsum("nlir,nlir->n", Xt, Yt) - c)
    fe = f[:, None, None, None]
    fte = ft[:, None, None, None]
    return PaperSam(fe * Y, fe * X, f, ft, norm, Xt, Yt, fte * Yt, fte * Xt)


#: The paper's SAM quantities at a point (``paper_nop``, ``paper_op``): (problem, X, Y, target, ρ) → PaperSam.
PaperFn = Callable[[Problem, FloatArray, FloatArray, FloatArray, float | FloatArray], PaperSam]


def paper_for(p: Problem) -> PaperFn:
    """The paper's update rule for the kind of ``p``: :func:`paper_nop` or :func:`paper_op`."""
    return paper_nop if p.kind == "nop" else paper_op


def hessian(f: Callable[[FloatArray], float | FloatArray], z: FloatArray, h: float = 1e-4) -> FloatArray:
    """Central finite-difference Hessian of the scalar function f at z."""
    n = len(z)
    E = np.eye(n) * h
    H = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            H[i, j] = (f(z + E[i] + E[j]) - f(z + E[i] - E[j]) - f(z - E[i] + E[j]) + f(z - E[i] - E[j])) / (4 * h * h)
    return H


def op_hessian(z: FloatArray, c: float, dim: int = 3, h: float = 1e-4) -> FloatArray:
    """Central finite-difference Hessian of (xᵀy − c)² at z = (x, y)."""
    return hessian(lambda v: (v[:dim] @ v[dim:] - c) ** 2, z, h)
