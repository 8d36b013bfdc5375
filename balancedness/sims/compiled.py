"""Optional compiled stepping (numba) of the six built-in direction functions, checked against them.

The numpy direction functions of ``balancedness.sims.directions`` stay the one definition of every
optimizer: the flow solver, the theory and the checks call them, and so does the simulator for any
direction that is not a built-in (a user's field, a ``replaced_directions`` variant, a mutant). For the
built-ins, the per-step cost of numpy is its per-call overhead (≈ 20 array calls a step on arrays of a
few dozen numbers), so ``simulate`` steps them here instead when numba is installed
(``pip install 'balancedness[fast]'``): the same arithmetic, operation by operation in the same order
(sums in the order of numpy's einsum kernel, :func:`_dot`), each operation one loop over the trajectories,
for a whole stretch of steps per call. ``tests/test_compiled.py`` proves that the two give the same
records on every built-in (bit for bit on rank-1 problems, the paper's toys among them; within 1e-12 for
rank r > 1, where numpy's matmul goes through BLAS), and :func:`kernel_for` hands out a kernel only for an
entry whose field *is* the built-in function object (or an :class:`~balancedness.sims.directions.Observed`
watcher of one), so any other field runs through numpy.

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

import importlib.util
import os
from collections.abc import Callable, Sequence
from functools import cache

import numpy as np

from balancedness.metrics import FloatArray, IntArray
from balancedness.sims import directions as _d
from balancedness.sims.directions import DIRECTIONS, DirectionFn, Observed
from balancedness.sims.problems import Problem

#: The sizes (L, d1, d2, r) of a problem's factors.
Dims = tuple[int, int, int, int]

#: The built-in direction functions the kernel implements, by the opcode it dispatches on.
OPCODES: dict[DirectionFn, int] = {_d.sgd: 0, _d.sngd: 1, _d.sam: 2, _d.msam: 3, _d.nbar: 4, _d.obar: 5}

#: ``BALANCEDNESS_BACKEND=numpy`` in the environment turns the compiled path off (as if numba were absent).
ENV = "BALANCEDNESS_BACKEND"


def available() -> bool:
    """Whether the compiled path can run: numba is importable and not switched off by ``$BALANCEDNESS_BACKEND``."""
    if os.environ.get(ENV, "auto") == "numpy":
        return False
    try:  # optional: the [fast] extra; imported only when a run uses it
        return importlib.util.find_spec("numba") is not None
    except ValueError:  # numba blocked in sys.modules (as tests/test_packaging.py does)
        return False


def kernel_for(name: str) -> tuple[int | None, list[Callable[[], None]]]:
    """(opcode, notes) of the registered optimizer ``name``: the opcode if its field is a built-in function,
    or :class:`~balancedness.sims.directions.Observed` wrappers of one (their notes, outermost first, to
    call for each stretch of steps); (None, []) for any other field (numpy runs it)."""
    entry = DIRECTIONS.get(name)
    field, notes = (None if entry is None else entry.field), []
    while isinstance(field, Observed):
        notes.append(field.note)
        field = field.field
    try:
        op = None if field is None else OPCODES.get(field)
    except TypeError:  # an unhashable callable is no built-in
        op = None
    return op, (notes if op is not None else [])


# -- the kernel (plain Python below; numba compiles it when installed) -------------------------------
# The n trajectories advance together with the trajectory index innermost (so the compiler vectorizes
# across them): the point is x (L·d1·r, n), y (L·d2·r, n), X[l, a, q] of trajectory i being
# x[(l·d1 + a)·r + q, i] and Y[l, b, q] being y[(l·d2 + b)·r + q, i]; the chunk targets of a step are
# C[row, j] (d1·d2, n) (OP: (1, n)), C[a, b] at a·d2 + b. Sizes: dims = (L, d1, d2, r).


def _dot(
    out: FloatArray, o: int, u: FloatArray, ou: int, v: FloatArray, ov: int, cnt: int, w0: FloatArray, w1: FloatArray
) -> None:
    """out[o, i] = Σ_k u[ou + k, i]·v[ov + k, i] (k < cnt) for every i, in the order of numpy's einsum
    kernel for a contiguous reduction (``sum_of_products_contig_contig_outstride0_two``, x86-64 baseline):
    two SIMD lanes, lane j taking the terms j, j+2, …, per block of eight adding its four products
    last-first, then a pair at a time; the lanes added at the end, the sum added to the zero it writes into.
    w0, w1 (n,) are scratch."""
    n = w0.size
    for i in range(n):
        w0[i] = 0.0
        w1[i] = 0.0
    k = 0
    while cnt - k >= 8:
        a, b = ou + k, ov + k
        for i in range(n):
            w0[i] = u[a, i] * v[b, i] + (
                u[a + 2, i] * v[b + 2, i] + (u[a + 4, i] * v[b + 4, i] + (u[a + 6, i] * v[b + 6, i] + w0[i]))
            )
            w1[i] = u[a + 1, i] * v[b + 1, i] + (
                u[a + 3, i] * v[b + 3, i] + (u[a + 5, i] * v[b + 5, i] + (u[a + 7, i] * v[b + 7, i] + w1[i]))
            )
        k += 8
    while k < cnt:
        a, b = ou + k, ov + k
        for i in range(n):
            w0[i] = u[a, i] * v[b, i] + w0[i]
        if k + 1 < cnt:
            for i in range(n):
                w1[i] = u[a + 1, i] * v[b + 1, i] + w1[i]
        else:
            for i in range(n):
                w1[i] = 0.0 + w1[i]
        k += 2
    for i in range(n):
        out[o, i] = 0.0 + (w0[i] + w1[i])


def _grads(
    nop: bool,
    dims: Dims,
    x: FloatArray,
    y: FloatArray,
    C: FloatArray,
    row: int,
    j: int,
    k2: float,
    gx: FloatArray,
    gy: FloatArray,
    w: FloatArray,
    p: FloatArray,
    acc: FloatArray,
    w0: FloatArray,
    w1: FloatArray,
) -> None:
    """(g_X, g_Y) of k‖Σ_l X_l Y_lᵀ − C‖² (nop) or k(Σ_l ⟨X_l, Y_l⟩ − C)² into gx, gy, C = C[row, j].

    The sums follow numpy's (``Problem.product``, ``outer_grad_at``, ``factor_grads``): W_l = X_l Y_lᵀ
    (matmul; one product for r = 1), the layers added one after the other; g_X = G Y by einsum's
    contiguous kernel (:func:`_dot`) where Y's column is contiguous (r = 1), else in index order, and
    g_Y = Gᵀ X (a strided reduction) in index order; OP's ⟨X, Y⟩ over the flat entries (:func:`_dot`).
    w (d1·d2, n) holds G; p, acc (n,) and w0, w1 are scratch.
    """
    L, d1, d2, r = dims
    n = acc.size
    if nop:
        for a in range(d1):
            for b in range(d2):
                for layer in range(L):
                    for q in range(r):
                        ia, ib = (layer * d1 + a) * r + q, (layer * d2 + b) * r + q
                        if q == 0:
                            for i in range(n):
                                p[i] = x[ia, i] * y[ib, i]
                        else:
                            for i in range(n):
                                p[i] += x[ia, i] * y[ib, i]
                    if layer == 0:
                        for i in range(n):
                            acc[i] = p[i]
                    else:
                        for i in range(n):
                            acc[i] = acc[i] + p[i]
                e = a * d2 + b
                for i in range(n):
                    w[e, i] = k2 * (acc[i] - C[row, j, e, i])
        for layer in range(L):
            for a in range(d1):
                for q in range(r):
                    o = (layer * d1 + a) * r + q
                    if r == 1:
                        _dot(gx, o, w, a * d2, y, layer * d2, d2, w0, w1)
                    else:
                        for i in range(n):
                            gx[o, i] = 0.0
                        for b in range(d2):
                            for i in range(n):
                                gx[o, i] += w[a * d2 + b, i] * y[(layer * d2 + b) * r + q, i]
            for b in range(d2):
                for q in range(r):
                    o = (layer * d2 + b) * r + q
                    for i in range(n):
                        gy[o, i] = 0.0
                    for a in range(d1):
                        for i in range(n):
                            gy[o, i] += w[a * d2 + b, i] * x[(layer * d1 + a) * r + q, i]
    else:
        _dot(w, 0, x, 0, y, 0, x.shape[0], w0, w1)
        for i in range(n):
            acc[i] = k2 * (w[0, i] - C[row, j, 0, i])
        for k in range(x.shape[0]):
            for i in range(n):
                gx[k, i] = acc[i] * y[k, i]
                gy[k, i] = acc[i] * x[k, i]


def _scale(
    s: FloatArray, num: FloatArray, gx: FloatArray, gy: FloatArray, nn: FloatArray, w0: FloatArray, w1: FloatArray
) -> None:
    """s[i] = num[i]/‖g_i‖ where ‖g_i‖ > 0, else num[i]/∞ = 0 (``directions._safe_scale`` of ``global_norm``);
    nn (2, n) is scratch."""
    _dot(nn, 0, gx, 0, gx, 0, gx.shape[0], w0, w1)
    _dot(nn, 1, gy, 0, gy, 0, gy.shape[0], w0, w1)
    for i in range(s.size):
        nrm = np.sqrt(nn[0, i] + nn[1, i])
        s[i] = num[i] / (nrm if nrm > 0 else np.inf)


def _axpy(out: FloatArray, z: FloatArray, s: FloatArray, g: FloatArray) -> None:
    """out = z + s_i·g entrywise, s (n,) per trajectory."""
    for k in range(out.shape[0]):
        for i in range(out.shape[1]):
            out[k, i] = z[k, i] + s[i] * g[k, i]


def _field(
    op: int,
    nop: bool,
    dims: Dims,
    x: FloatArray,
    y: FloatArray,
    C: FloatArray,
    row: int,
    k2: float,
    rho: FloatArray,
    mu: float,
    dx: FloatArray,
    dy: FloatArray,
    gx: FloatArray,
    gy: FloatArray,
    tx: FloatArray,
    ty: FloatArray,
    hx: FloatArray,
    hy: FloatArray,
    scratch: tuple[FloatArray, ...],
) -> None:
    """d(z) into dx, dy and the batch gradient into gx, gy at the step's targets C[row] (m, ·, n).

    ``scratch``: the lane sums w0, w1, p, acc, the scale s, ones (n,); the norms nn (2, n); G in w (d1·d2, n)
    (all C-contiguous, so that every helper is compiled for one signature)."""
    w0, w1, p, acc, s, one, nn, w = scratch
    n = acc.size
    if op == 3:  # msam: each chunk perturbs with its own gradient; means of the descent gradients
        m = C.shape[1]
        dx[:] = 0.0
        dy[:] = 0.0
        gx[:] = 0.0
        gy[:] = 0.0
        for j in range(m):
            _grads(nop, dims, x, y, C, row, j, k2, hx, hy, w, p, acc, w0, w1)
            _scale(s, rho, hx, hy, nn, w0, w1)
            _axpy(tx, x, s, hx)
            _axpy(ty, y, s, hy)
            gx += hx
            gy += hy
            _grads(nop, dims, tx, ty, C, row, j, k2, hx, hy, w, p, acc, w0, w1)
            dx -= hx
            dy -= hy
        dx /= m
        dy /= m
        gx /= m
        gy /= m
        return
    _grads(nop, dims, x, y, C, row, 0, k2, gx, gy, w, p, acc, w0, w1)
    if op == 0:
        for k in range(x.shape[0]):
            for i in range(n):
                dx[k, i] = -gx[k, i]
        for k in range(y.shape[0]):
            for i in range(n):
                dy[k, i] = -gy[k, i]
    elif op == 1:
        _scale(s, one, gx, gy, nn, w0, w1)
        for k in range(x.shape[0]):
            for i in range(n):
                dx[k, i] = -s[i] * gx[k, i]
        for k in range(y.shape[0]):
            for i in range(n):
                dy[k, i] = -s[i] * gy[k, i]
    elif op == 2:
        _scale(s, rho, gx, gy, nn, w0, w1)
        _axpy(tx, x, s, gx)
        _axpy(ty, y, s, gy)
        _grads(nop, dims, tx, ty, C, row, 0, k2, hx, hy, w, p, acc, w0, w1)
        for k in range(x.shape[0]):
            for i in range(n):
                dx[k, i] = -hx[k, i]
        for k in range(y.shape[0]):
            for i in range(n):
                dy[k, i] = -hy[k, i]
    else:  # nbar (4), obar (5): c = μ_t s_l per layer
        L, d1, d2, r = dims
        ax, ay = (gx, gy) if op == 4 else (x, y)
        for layer in range(L):
            _dot(nn, 0, ax, layer * d1 * r, ax, layer * d1 * r, d1 * r, w0, w1)
            _dot(nn, 1, ay, layer * d2 * r, ay, layer * d2 * r, d2 * r, w0, w1)
            for i in range(n):
                if op == 4:
                    s[i] = mu * (1.0 if nn[0, i] >= nn[1, i] else -1.0)
                else:
                    s[i] = mu * (-1.0 if nn[0, i] >= nn[1, i] else 1.0)
            for k in range(layer * d1 * r, (layer + 1) * d1 * r):
                for i in range(n):
                    dx[k, i] = s[i] * x[k, i] - gx[k, i]
            for k in range(layer * d2 * r, (layer + 1) * d2 * r):
                for i in range(n):
                    dy[k, i] = -s[i] * y[k, i] - gy[k, i]


def _advance(
    op: int,
    nop: bool,
    dims: Dims,
    x: FloatArray,
    y: FloatArray,
    C: FloatArray,
    stride: int,
    k0: int,
    n_steps: int,
    lr: float,
    k2: float,
    rho: FloatArray,
    mus: FloatArray,
    rec: IntArray,
    xr: FloatArray,
    yr: FloatArray,
    gxr: FloatArray,
    gyr: FloatArray,
) -> None:
    """Step the trajectories x (L·d1·r, n), y (L·d2·r, n) in place ``n_steps`` times from row k0 of C.

    C (K, m, d1·d2, n) holds the chunk targets, row k0 + j·stride those of step j (stride 0: one row for
    every step); mus[j] (or mus[0] if it has one entry) is step j's μ_t. At the local steps rec[q]
    (ascending), the point and its batch gradient go to xr[q], yr[q], gxr[q], gyr[q] before the step (the
    recorder's view). ``n_steps = 0`` evaluates the field at the point only (for a record at rec = [0]).
    """
    n = x.shape[1]
    tx, hx, dx, gx = np.empty_like(x), np.empty_like(x), np.empty_like(x), np.empty_like(x)
    ty, hy, dy, gy = np.empty_like(y), np.empty_like(y), np.empty_like(y), np.empty_like(y)
    scratch = (
        np.empty(n),
        np.empty(n),
        np.empty(n),
        np.empty(n),
        np.empty(n),
        np.ones(n),
        np.empty((2, n)),
        np.empty((C.shape[2], n)),
    )
    q = 0
    for j in range(max(n_steps, 1)):
        mu = mus[j] if mus.shape[0] > 1 else mus[0]
        _field(op, nop, dims, x, y, C, k0 + j * stride, k2, rho, mu, dx, dy, gx, gy, tx, ty, hx, hy, scratch)
        if q < rec.shape[0] and rec[q] == j:
            xr[q] = x
            yr[q] = y
            gxr[q] = gx
            gyr[q] = gy
            q += 1
        if n_steps == 0:
            return
        for k in range(x.shape[0]):
            for i in range(n):
                x[k, i] = x[k, i] + lr * dx[k, i]
        for k in range(y.shape[0]):
            for i in range(n):
                y[k, i] = y[k, i] + lr * dy[k, i]


@cache
def kernel() -> Callable[..., None]:
    """``_advance`` compiled (numba imported and the helpers jitted on first use; numba's on-disk cache
    makes that a load after the first process). The helpers that are called with constant arguments get
    one explicit signature each, so that numba compiles each helper once."""
    import numba
    from numba import types as T

    A1, A2, A4 = T.float64[::1], T.float64[:, ::1], T.float64[:, :, :, ::1]
    fixed = {
        "_dot": T.void(A2, T.int64, A2, T.int64, A2, T.int64, T.int64, A1, A1),
        "_grads": T.void(
            T.boolean, T.UniTuple(T.int64, 4), A2, A2, A4, T.int64, T.int64, T.float64, A2, A2, A2, A1, A1, A1, A1
        ),
    }
    module = globals()
    for name in ("_dot", "_grads", "_scale", "_axpy", "_field", "_advance"):  # callees first
        sig = [fixed[name]] if name in fixed else None  # None: per call signature (an empty list forbids all)
        try:
            module[name] = numba.njit(sig, cache=True, error_model="numpy")(module[name])
        except RuntimeError:  # no writable cache location (read-only install, no user cache): compile each run
            module[name] = numba.njit(sig, error_model="numpy")(module[name])
    out: Callable[..., None] = module["_advance"]
    return out


def warm() -> None:
    """Compile the kernel now (into numba's cache), e.g. at install time: one field evaluation at a point."""
    x, y, out = np.zeros((1, 1)), np.zeros((1, 1)), np.empty((1, 1, 1))
    kernel()(
        0,
        False,
        (1, 1, 1, 1),
        x,
        y,
        np.zeros((1, 1, 1, 1)),
        0,
        0,
        0,
        1.0,
        2.0,
        np.zeros(1),
        np.zeros(1),
        np.zeros(1, dtype=np.int64),
        out,
        out.copy(),
        out.copy(),
        out.copy(),
    )


class Stepper:
    """Steps the n trajectories of one ``simulate`` run with the compiled kernel of a built-in optimizer."""

    def __init__(self, op: int, problem: Problem, lr: float, rho: FloatArray) -> None:
        self.op, self.nop, self.lr = op, problem.kind == "nop", float(lr)
        self.k2 = 2.0 * problem.scale
        self.rho = np.array(rho, dtype=float, order="C")  # a fresh writable copy: one compiled signature
        self.dims = (problem.layers, problem.d1, problem.d2, problem.rank)
        self.csize = problem.d1 * problem.d2 if self.nop else 1
        self.problem = problem

    def targets(self, targets: FloatArray | None, n: int) -> tuple[FloatArray, int]:
        """The kernel's (K, m, d1·d2, n) copy of the chunk targets (K, m, n, …) and its step stride
        (0: noise-free, C = A for every step)."""
        if targets is None:
            A = np.asarray(self.problem.target, dtype=float).reshape(self.csize, 1)
            return np.array(np.broadcast_to(A, (1, 1, self.csize, n)), order="C"), 0
        K, m = targets.shape[:2]
        return np.array(np.swapaxes(targets.reshape((K, m, n, self.csize)), 2, 3), order="C"), 1

    def run(
        self,
        X: FloatArray,
        Y: FloatArray,
        C: FloatArray,
        stride: int,
        k0: int,
        n_steps: int,
        mus: FloatArray,
        rec: Sequence[int],
    ) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
        """``n_steps`` steps of X, Y (n, L, d, r) in place from row k0 of C; returns (X, Y, g_X, g_Y) at the
        local steps ``rec``, each (len(rec), n, L, d, r)."""
        n = X.shape[0]
        x = np.array(X.reshape(n, -1).T, order="C")
        y = np.array(Y.reshape(n, -1).T, order="C")
        R = len(rec)
        xr, gxr = np.empty((R,) + x.shape), np.empty((R,) + x.shape)
        yr, gyr = np.empty((R,) + y.shape), np.empty((R,) + y.shape)
        kernel()(
            self.op,
            self.nop,
            self.dims,
            x,
            y,
            C,
            stride,
            k0,
            n_steps,
            self.lr,
            self.k2,
            self.rho,
            mus,
            np.array(rec, dtype=np.int64),
            xr,
            yr,
            gxr,
            gyr,
        )
        if n_steps:
            X[...] = x.T.reshape(X.shape)
            Y[...] = y.T.reshape(Y.shape)
        kept = [np.swapaxes(a, 1, 2).reshape((R,) + Z.shape) for a, Z in ((xr, X), (yr, Y), (gxr, X), (gyr, Y))]
        return kept[0], kept[1], kept[2], kept[3]
