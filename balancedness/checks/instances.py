"""Random problem instances and the numerical helpers the checks share.

Random NOP/OP problems have a random target and are evaluated at random points of the standard normal,
so an identity is tested away from the paper's toys; ``sam_parts`` gives, at such points, the gradients
and the SAM point the rate identities of ``theory`` are written in.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from balancedness.sims.directions import sam_perturbation
from balancedness.sims.problems import Problem, nop_problem, op_problem


def rel_error(a, b) -> float:
    """max |a − b| / |b| over all entries."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


def random_nop(rng: np.random.Generator, n: int, layers: int = 1, rank: int = 1, d1: int = 3, d2: int = 3):
    """A NOP problem with a random target, and n random points: (problem, X, Y)."""
    p = nop_problem(rank, layers, d1=d1, d2=d2, target=rng.standard_normal((d1, d2)),
                    x0=rng.standard_normal((layers, d1, rank)), y0=rng.standard_normal((layers, d2, rank)))
    X = rng.standard_normal((n, layers, d1, rank))
    Y = rng.standard_normal((n, layers, d2, rank))
    return p, X, Y


def random_op(rng: np.random.Generator, n: int, layers: int = 1, dim: int = 3):
    """An OP problem with a random target, and n random points: (problem, X, Y)."""
    p = op_problem(layers, dim=dim, target=float(rng.standard_normal()))
    return p, rng.standard_normal((n, layers, dim, 1)), rng.standard_normal((n, layers, dim, 1))


class SamParts(NamedTuple):
    """At a point, noise-free: the gradient g, the outer gradients G at z and G̃ at the SAM point, ‖g‖."""

    gX: np.ndarray
    gY: np.ndarray
    G: np.ndarray
    G_tilde: np.ndarray
    grad_norm: np.ndarray


def sam_parts(p: Problem, X: np.ndarray, Y: np.ndarray, rho: float) -> SamParts:
    """G, G̃ and ‖g‖ of the noise-free loss for the SAM identities (f′ and f̃′ on OP)."""
    zero = np.zeros(len(X))
    Xt, Yt, gX, gY, grad_norm = sam_perturbation(p, X, Y, p.target, rho)
    G = p.outer_grad(p.product(X, Y), zero, None)
    G_tilde = p.outer_grad(p.product(Xt, Yt), zero, None)
    return SamParts(gX, gY, G, G_tilde, grad_norm)


def op_hessian(z: np.ndarray, c: float, dim: int = 3, h: float = 1e-4) -> np.ndarray:
    """Central finite-difference Hessian of (xᵀy − c)² at z = (x, y)."""
    def f(v):
        return (v[:dim] @ v[dim:] - c) ** 2

    n = len(z)
    H = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            e_i, e_j = np.eye(n)[i] * h, np.eye(n)[j] * h
            H[i, j] = (f(z + e_i + e_j) - f(z + e_i - e_j) - f(z - e_i + e_j) + f(z - e_i - e_j)) / (4 * h * h)
    return H
