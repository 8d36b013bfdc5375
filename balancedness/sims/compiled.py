"""Optional compiled stepping (numba) of the six built-in direction functions, checked against them.

The numpy direction functions of ``balancedness.sims.directions`` stay the one definition of every
optimizer: the flow solver, the theory and the checks call them, and so does the simulator for any
direction that is not a built-in (a user's field, a ``replaced_directions`` variant, a mutant). For the
built-ins, the per-step cost of numpy is its per-call overhead (≈ 20 array calls a step on arrays of a
few dozen numbers), so ``simulate`` steps them here instead when numba is installed
(``pip install 'balancedness[fast]'``): the same arithmetic, operation by operation in the same order,
as one loop per trajectory. ``tests/test_compiled.py`` proves that the two give the same records on
every built-in (bit for bit on the paper's toys; within 1e-12 where numpy's matmul/einsum may fuse or
reorder a sum, e.g. rank r > 1), and ``kernel_for`` hands out a kernel only for an entry whose field
*is* the built-in function object, so any replaced field runs through numpy.

What each opcode computes (g = ∇f_t(z) for the step's target C, ‖g‖ global over layers):

=====  ===================================================================
sgd    d = −g
sngd   d = −g/‖g‖ (0 at g = 0)
sam    d = −∇f_t(z + ρ g/‖g‖)
msam   d = −(1/m) Σ_i ∇f_{t,i}(z + ρ g_i/‖g_i‖), g = (1/m) Σ_i g_i
nbar   d = −g + s μ_t (X, −Y), s_l = +1 if ‖g_{X_l}‖² ≥ ‖g_{Y_l}‖² else −1
obar   d = −g + s μ_t (X, −Y), s_l = −1 if ‖X_l‖² ≥ ‖Y_l‖² else +1
=====  ===================================================================
"""

from __future__ import annotations

import os
from typing import Callable, Optional

import numpy as np

from balancedness.sims import directions as _d
from balancedness.sims.directions import DIRECTIONS

try:  # optional: the [fast] extra
    import numba
except ImportError:  # pragma: no cover - exercised by tests/test_packaging.py
    numba = None

#: The built-in direction functions the kernel implements, by the opcode it dispatches on.
OPCODES: dict[Callable, int] = {_d.sgd: 0, _d.sngd: 1, _d.sam: 2, _d.msam: 3, _d.nbar: 4, _d.obar: 5}

#: ``BALANCEDNESS_BACKEND=numpy`` in the environment turns the compiled path off (as if numba were absent).
ENV = "BALANCEDNESS_BACKEND"


def available() -> bool:
    """Whether the compiled path can run: numba is importable and not switched off by ``$BALANCEDNESS_BACKEND``."""
    return numba is not None and os.environ.get(ENV, "auto") != "numpy"


def kernel_for(name: str) -> Optional[int]:
    """The opcode of the registered optimizer ``name`` if its field is a built-in one (else None: use numpy)."""
    entry = DIRECTIONS.get(name)
    return None if entry is None else OPCODES.get(entry.field)


# -- the kernel (plain Python below; numba compiles it when installed) -------------------------------
def _dot(a, b):
    """Σ_k a_k b_k in the order of numpy's einsum reduction kernel over a contiguous axis (x86-64 baseline).

    That kernel (``sum_of_products_contig_contig_outstride0_two``) runs two SIMD lanes: lane j takes the
    terms j, j+2, …, per block of eight adding its four products last-first, then one pair at a time;
    the lanes are added at the end, and the sum is added to the zero it writes into.
    """
    n = a.shape[0]
    v0 = 0.0
    v1 = 0.0
    i = 0
    while n - i >= 8:
        v0 = a[i] * b[i] + (a[i + 2] * b[i + 2] + (a[i + 4] * b[i + 4] + (a[i + 6] * b[i + 6] + v0)))
        v1 = a[i + 1] * b[i + 1] + (a[i + 3] * b[i + 3] + (a[i + 5] * b[i + 5] + (a[i + 7] * b[i + 7] + v1)))
        i += 8
    while i < n:
        v0 = a[i] * b[i] + v0
        v1 = (a[i + 1] * b[i + 1] if i + 1 < n else 0.0) + v1
        i += 2
    return 0.0 + (v0 + v1)


def _flat(Z):
    """A C-contiguous array as a 1-D view."""
    return Z.reshape(Z.size)


def _sq(Z):
    """‖Z‖² over all entries (``metrics.sq_norms``, ``layer_sq_norms``: einsum over the flat entries)."""
    z = _flat(Z)
    return _dot(z, z)


def _grads(nop, X, Y, C, k2, gX, gY, W):
    """(g_X, g_Y) of k‖Σ_l X_l Y_lᵀ − C‖² (nop) or k(Σ_l ⟨X_l, Y_l⟩ − C)² into gX, gY; W is scratch (d1, d2).

    The sums follow numpy's (``Problem.product``, ``outer_grad_at``, ``factor_grads``): W_l = X_l Y_lᵀ
    (matmul; one product for r = 1), the layers added one after the other; g_X = G Y by einsum's
    contiguous kernel (:func:`_dot`) where Y's column is contiguous (r = 1), else in index order, and
    g_Y = Gᵀ X (a strided reduction) in index order; OP's ⟨X, Y⟩ over the flat entries (:func:`_dot`).
    """
    L, d1, r = X.shape
    d2 = Y.shape[1]
    if nop:
        for a in range(d1):
            for b in range(d2):
                acc = 0.0
                for l in range(L):
                    p = X[l, a, 0] * Y[l, b, 0]
                    for q in range(1, r):
                        p += X[l, a, q] * Y[l, b, q]
                    acc = p if l == 0 else acc + p
                W[a, b] = k2 * (acc - C[a, b])
        for l in range(L):
            for a in range(d1):
                for q in range(r):
                    if r == 1:
                        gX[l, a, q] = _dot(W[a], Y[l, :, q])
                    else:
                        s = 0.0
                        for b in range(d2):
                            s += W[a, b] * Y[l, b, q]
                        gX[l, a, q] = s
            for b in range(d2):
                for q in range(r):
                    s = 0.0
                    for a in range(d1):
                        s += W[a, b] * X[l, a, q]
                    gY[l, b, q] = s
    else:
        f = k2 * (_dot(_flat(X), _flat(Y)) - C[0, 0])
        for l in range(L):
            for a in range(d1):
                for q in range(r):
                    gX[l, a, q] = f * Y[l, a, q]
                    gY[l, a, q] = f * X[l, a, q]


def _scale(num, gX, gY):
    """num/‖g‖ where ‖g‖ > 0, else num/∞ = 0 (``directions._safe_scale`` of ``global_norm``)."""
    nrm = np.sqrt(_sq(gX) + _sq(gY))
    return num / (nrm if nrm > 0 else np.inf)


def _axpy(out, Z, s, G):
    """out = Z + s·G entrywise (also the step z + η d)."""
    o, z, g = _flat(out), _flat(Z), _flat(G)
    for k in range(o.size):
        o[k] = z[k] + s * g[k]


def _scaled(out, s, G):
    """out = s·G entrywise."""
    o, g = _flat(out), _flat(G)
    for k in range(o.size):
        o[k] = s * g[k]


def _field(op, nop, X, Y, Cs, k2, rho, mu, dX, dY, gX, gY, tX, tY, hX, hY, W):
    """d(z) into dX, dY and the batch gradient into gX, gY for one trajectory; Cs (m, d1, d2) its chunk targets."""
    if op == 3:  # msam: each chunk perturbs with its own gradient; means of the descent gradients
        m = Cs.shape[0]
        dX[...] = 0.0
        dY[...] = 0.0
        gX[...] = 0.0
        gY[...] = 0.0
        for i in range(m):
            _grads(nop, X, Y, Cs[i], k2, hX, hY, W)
            s = _scale(rho, hX, hY)
            gX += hX
            gY += hY
            _axpy(tX, X, s, hX)
            _axpy(tY, Y, s, hY)
            _grads(nop, tX, tY, Cs[i], k2, hX, hY, W)
            dX -= hX
            dY -= hY
        dX /= m
        dY /= m
        gX /= m
        gY /= m
        return
    _grads(nop, X, Y, Cs[0], k2, gX, gY, W)
    if op == 0:
        _scaled(dX, -1.0, gX)
        _scaled(dY, -1.0, gY)
    elif op == 1:
        s = -_scale(1.0, gX, gY)
        _scaled(dX, s, gX)
        _scaled(dY, s, gY)
    elif op == 2:
        s = _scale(rho, gX, gY)
        _axpy(tX, X, s, gX)
        _axpy(tY, Y, s, gY)
        _grads(nop, tX, tY, Cs[0], k2, hX, hY, W)
        _scaled(dX, -1.0, hX)
        _scaled(dY, -1.0, hY)
    else:  # nbar (4), obar (5): c = μ_t s_l per layer
        for l in range(X.shape[0]):
            if op == 4:
                sign = 1.0 if _sq(gX[l]) >= _sq(gY[l]) else -1.0
            else:
                sign = -1.0 if _sq(X[l]) >= _sq(Y[l]) else 1.0
            c = mu * sign
            x, gx, dx = _flat(X[l]), _flat(gX[l]), _flat(dX[l])
            for k in range(x.size):
                dx[k] = c * x[k] - gx[k]
            y, gy, dy = _flat(Y[l]), _flat(gY[l]), _flat(dY[l])
            for k in range(y.size):
                dy[k] = -c * y[k] - gy[k]


def _advance(op, nop, X, Y, C, stride, k0, n_steps, lr, k2, rho, mus, gX, gY):
    """Step every trajectory i of X, Y (n, L, d, r) ``n_steps`` times from row k0 of C (K, m, n, d1, d2).

    Row k0 + j·stride of C holds step j's chunk targets (stride 0: one target for every step), mus[j] (or
    mus[0] if it has one entry) its μ_t. ``n_steps = 0`` only evaluates the field: gX, gY (n, L, d, r) then
    hold the batch gradient at the point (what the recorder needs); otherwise they are scratch.
    """
    n = X.shape[0]
    d = np.empty_like(X[0])
    e = np.empty_like(Y[0])
    tX = np.empty_like(X[0])
    tY = np.empty_like(Y[0])
    hX = np.empty_like(X[0])
    hY = np.empty_like(Y[0])
    W = np.empty((C.shape[3], C.shape[4]))
    for i in range(n):
        Xi, Yi, gXi, gYi = X[i], Y[i], gX[i], gY[i]
        if n_steps == 0:
            _field(op, nop, Xi, Yi, C[k0, :, i], k2, rho[i], mus[0], d, e, gXi, gYi, tX, tY, hX, hY, W)
            continue
        for j in range(n_steps):
            mu = mus[j] if mus.shape[0] > 1 else mus[0]
            _field(op, nop, Xi, Yi, C[k0 + j * stride, :, i], k2, rho[i], mu, d, e, gXi, gYi, tX, tY, hX, hY, W)
            _axpy(Xi, Xi, lr, d)
            _axpy(Yi, Yi, lr, e)


if numba is not None:
    _jit = numba.njit(cache=True, error_model="numpy")
    _dot, _flat, _sq, _grads, _scale, _axpy, _scaled, _field = (
        _jit(f) for f in (_dot, _flat, _sq, _grads, _scale, _axpy, _scaled, _field))
    _advance = _jit(_advance)


class Stepper:
    """Steps the n trajectories of one ``simulate`` run with the compiled kernel of a built-in optimizer."""

    def __init__(self, op: int, problem, lr: float, rho: np.ndarray):
        self.op, self.nop, self.lr = op, problem.kind == "nop", float(lr)
        self.k2 = 2.0 * problem.scale
        self.rho = np.ascontiguousarray(rho, dtype=float)
        self.problem = problem

    def targets(self, targets: Optional[np.ndarray], n: int) -> tuple[np.ndarray, int]:
        """The kernel's (K, m, n, d1, d2) view of the chunk targets and its step stride (0: noise-free)."""
        if targets is None:
            C = np.broadcast_to(np.asarray(self.problem.target, dtype=float).reshape(1, 1, 1, *self._cshape()),
                                (1, 1, n) + self._cshape())
            return np.ascontiguousarray(C), 0
        K, m = targets.shape[:2]
        return np.ascontiguousarray(targets.reshape((K, m, n) + self._cshape())), 1

    def _cshape(self) -> tuple[int, int]:
        return (self.problem.d1, self.problem.d2) if self.nop else (1, 1)

    def run(self, X, Y, C, stride: int, k0: int, n_steps: int, mus: np.ndarray, gX, gY) -> None:
        """``n_steps`` steps from row k0 (0: the field only, the batch gradient into gX, gY)."""
        _advance(self.op, self.nop, X, Y, C, stride, k0, n_steps, self.lr, self.k2, self.rho, mus, gX, gY)
