"""Toy scale-invariant problems of the paper, vectorized over many trajectories.

Every problem here is a sum over layers l = 1..L of factor pairs (X_l, Y_l), X_l ∈ ℝ^{d1×r},
Y_l ∈ ℝ^{d2×r}, whose loss depends on them only through

* NOP (spec §1.1 (1a)): W = Σ_l X_l Y_lᵀ ∈ ℝ^{d1×d2}, minibatch loss
  f_t = k·(1/b) Σ_j ‖W − (A + α N_j)‖²_F  (toy (11) for L = r = 1, k = 1);
* OP (spec §1.1 (1b)): w = Σ_l ⟨X_l, Y_l⟩_F ∈ ℝ, minibatch loss
  f_t = k·(1/b) Σ_j (w − (a + α n_j))²  (toy (12) for L = r = 1, k = 1; Fig. 4 for d = 1,
  k = 30000, a = 0.005, no noise).

The multi-layer versions (eqs. (22), (41)) need a loss coupling the layers; the paper leaves it
open. We choose the *sum* of the layer products fitting one target, so that every layer sees the
same outer gradient G_{t,l} = G_t (NOP) or f′_{t,l} = f′_t (OP) and L = 1 is exactly the
single-layer toy. [ASSUMED, documented in docs/sims.md]

Shapes: a batch of n trajectories holds X of shape (n, L, d1, r) and Y of shape (n, L, d2, r).
The noise of one step is (n, b, d1, d2) for NOP (rows already scaled by D, spec §1.5) and (n, b)
for OP. The gradient only needs the mean noise of the batch (or of an m-sharpness chunk), because
∇_W f_t = 2k(W − A − α N̄) with N̄ the mean of the N_j.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

from balancedness.metrics import FloatArray
from balancedness.validation import InvalidValue, integer, number

Kind = Literal["nop", "op"]

#: The paper's initialization x₀ (App. A.4); y₀ = −3 x₀.
PAPER_X0 = np.array([0.2, -0.1, 0.3])
#: Row scaling D of the NOP noise, N = D U (spec §1.5).
PAPER_NOISE_ROWS = np.array([1.0, 0.8, 0.5])
#: Block of steps whose noise is drawn at once; noise streams are identical for any block size.
NOISE_BLOCK = 1024


@dataclass(frozen=True)
class Problem:
    """A scale-invariant toy problem (see the module docstring for the loss).

    Attributes:
        kind: ``"nop"`` (loss of Σ X_l Y_lᵀ) or ``"op"`` (loss of Σ ⟨X_l, Y_l⟩).
        name: a short label (``"nop"``, ``"op"``, ``"nop-layered"``, ``"toy2d"``…).
        target: A ∈ ℝ^{d1×d2} (NOP) or the scalar a (OP, a 0-d array).
        noise_rows: D, the per-row scale of the NOP noise (None for OP).
        scale: k, the loss multiplier (1 for the toys, 30000 for Fig. 4).
        x0, y0: the initial factors, shapes (L, d1, r) and (L, d2, r).
        noisy: whether the problem has a noise term at all (False for Fig. 4).
    """

    kind: Kind
    name: str
    target: FloatArray
    noise_rows: FloatArray | None
    scale: float
    x0: FloatArray
    y0: FloatArray
    noisy: bool = True
    meta: dict[str, int] = field(default_factory=dict)

    # -- sizes -----------------------------------------------------------------------------
    @property
    def layers(self) -> int:
        out: int = self.x0.shape[0]
        return out

    @property
    def d1(self) -> int:
        out: int = self.x0.shape[1]
        return out

    @property
    def d2(self) -> int:
        out: int = self.y0.shape[1]
        return out

    @property
    def rank(self) -> int:
        out: int = self.x0.shape[2]
        return out

    def nop_noise_rows(self) -> FloatArray:
        """D, the row scale of the NOP noise; a ValueError for a problem without one (OP)."""
        if self.noise_rows is None:
            raise ValueError(f"problem {self.name!r} has no noise rows D (only NOP problems do)")
        return self.noise_rows

    @property
    def lipschitz(self) -> float:
        """L_n = L_o = 2k: the gradient of k‖W − C‖² is 2k(W − C) (spec §1.4)."""
        return 2.0 * self.scale

    @property
    def noise_shape(self) -> tuple[int, ...]:
        return (self.d1, self.d2) if self.kind == "nop" else ()

    # -- noise -----------------------------------------------------------------------------
    def noise_sequence(self, seed: int, steps: int, batch: int = 1) -> FloatArray:
        """The exact standard noise the simulator uses for ``seed``: shape (steps, batch, *noise_shape).

        NOP rows are already multiplied by D. The gradient uses the target A + α·noise.
        """
        stream = NoiseStream(self, [seed], batch)
        return np.concatenate([stream.next_block()[0] for _ in range(-(-steps // NOISE_BLOCK))])[:steps]

    # -- the loss through the product ------------------------------------------------------
    def product(self, X: FloatArray, Y: FloatArray) -> FloatArray:
        """W = Σ_l X_l Y_lᵀ, shape (n, d1, d2) (NOP), or w = Σ_l ⟨X_l, Y_l⟩, shape (n,) (OP)."""
        if self.kind == "nop":
            W = np.matmul(X, np.swapaxes(Y, -1, -2))
            out: FloatArray = W[:, 0] if W.shape[1] == 1 else W.sum(axis=1)
            return out
        out = np.einsum("nlir,nlir->n", X, Y)
        return out

    def effective_target(self, alpha: float | FloatArray, noise_mean: FloatArray | None) -> FloatArray:
        """C_t = A + α N̄ (NOP) or a + α n̄ (OP): the target the minibatch gradient sees."""
        if noise_mean is None:
            return self.target
        a = np.asarray(alpha).reshape((-1,) + (1,) * (noise_mean.ndim - 1))
        out: FloatArray = self.target + a * noise_mean
        return out

    def outer_grad(self, W: FloatArray, alpha: float | FloatArray, noise_mean: FloatArray | None) -> FloatArray:
        """∇f_t at the product: G = 2k(W − A − α N̄) (NOP) or f′ = 2k(w − a − α n̄) (OP)."""
        return self.outer_grad_at(W, self.effective_target(alpha, noise_mean))

    def outer_grad_at(self, W: FloatArray, C: FloatArray) -> FloatArray:
        """G = 2k(W − C) (NOP) or f′ = 2k(w − C) (OP) for an effective target C."""
        out: FloatArray = (2.0 * self.scale) * (W - C)
        return out

    def factor_grads(self, X: FloatArray, Y: FloatArray, G: FloatArray) -> tuple[FloatArray, FloatArray]:
        """g_X = G Y, g_Y = Gᵀ X for each layer (eq. (3)); g_X = f′ Y, g_Y = f′ X for OP (eq. (14))."""
        if self.kind == "nop":
            return np.einsum("nij,nljr->nlir", G, Y), np.einsum("nij,nlir->nljr", G, X)
        f = G[:, None, None, None]
        return f * Y, f * X

    def grads_at(self, X: FloatArray, Y: FloatArray, C: FloatArray) -> tuple[FloatArray, FloatArray]:
        """(g_X, g_Y) of k‖W − C‖² (or k(w − C)²) for an effective target C (the hot path)."""
        return self.factor_grads(X, Y, self.outer_grad_at(self.product(X, Y), C))

    def grads(
        self, X: FloatArray, Y: FloatArray, alpha: float | FloatArray, noise_mean: FloatArray | None
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        """(g_X, g_Y, G) of the minibatch loss whose mean noise is ``noise_mean``."""
        G = self.outer_grad(self.product(X, Y), alpha, noise_mean)
        gX, gY = self.factor_grads(X, Y, G)
        return gX, gY, G

    def excess_loss(self, X: FloatArray, Y: FloatArray) -> FloatArray:
        """k‖W − A‖² (or k(w − a)²): the population loss minus its noise floor k·α²·E‖N‖²."""
        resid = self.product(X, Y) - self.target
        out: FloatArray = self.scale * (resid**2).reshape(resid.shape[0], -1).sum(axis=1)
        return out

    def population_loss(self, X: FloatArray, Y: FloatArray, alpha: float | FloatArray) -> FloatArray:
        """E_ξ f(x, y) = excess loss + k α² E‖N‖² (E‖DU‖²_F = d2·ΣD², E n² = 1); spec §1.5."""
        floor = float(self.d2 * np.sum(self.nop_noise_rows() ** 2)) if self.kind == "nop" else 1.0
        return self.excess_loss(X, Y) + self.scale * np.asarray(alpha) ** 2 * (floor if self.noisy else 0.0)


class NoiseStream:
    """Blocks of standard noise, one independent stream per seed (numpy PCG64).

    A stream depends on the seed only, never on which other trajectories share the batch, so
    SGD and SAM runs (or different α) with the same seed see the same draws (common random
    numbers, which makes comparisons across α and optimizers sharper).
    """

    def __init__(self, problem: Problem, seeds: list[int], batch: int):
        self.problem = problem
        self.batch = batch
        self.rngs = [np.random.default_rng(int(s)) for s in seeds]

    def next_block(self) -> FloatArray:
        """Noise of the next NOISE_BLOCK steps: shape (n_seeds, NOISE_BLOCK, batch, *noise_shape)."""
        p = self.problem
        shape = (NOISE_BLOCK, self.batch) + p.noise_shape
        out = np.stack([rng.standard_normal(shape) for rng in self.rngs])
        if p.kind == "nop":
            out *= p.nop_noise_rows()[:, None]
        return out


#: Salt of the perturbation draws (Flat-LoRA's ξ), so they never coincide with a minibatch stream.
PERTURBATION_SALT = 0xF1A7


def perturbation_block(seeds: Iterable[int], block: int, shape: tuple[int, ...]) -> FloatArray:
    """Standard normal perturbation draws ξ of the steps block·K … block·K + K − 1 (K = NOISE_BLOCK), one
    independent stream per (seed, block): shape (len(seeds), K, *shape). Step t's draw depends only on the seed
    and t (row t mod K of block t // K): the same seed gives the same draws bit for bit, another seed or step
    other draws, whichever trajectories share the run."""
    return np.stack(
        [
            np.random.default_rng([PERTURBATION_SALT, int(s), int(block)]).standard_normal(
                (NOISE_BLOCK,) + tuple(shape)
            )
            for s in seeds
        ]
    )


def perturbation_sequence(seed: int, steps: int, shape: tuple[int, ...]) -> FloatArray:
    """The perturbation draws the simulator uses for ``seed`` at steps 0 … steps − 1: shape (steps, *shape)."""
    blocks = [perturbation_block([seed], b, shape)[0] for b in range(-(-steps // NOISE_BLOCK))]
    return np.concatenate(blocks)[:steps]


# -- factories --------------------------------------------------------------------------------
def _as_init(v: ArrayLike, shape: tuple[int, ...], name: str) -> FloatArray:
    arr = np.asarray(v, dtype=float)
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"{name} has {arr.size} entries (shape {arr.shape}); expected shape {shape}")
    arr = arr.reshape(shape)
    if not np.all(np.isfinite(arr)):
        raise InvalidValue(name, "finite", arr.ravel().tolist())
    return arr


def _default_init(layers: int, d1: int, rank: int) -> FloatArray:
    """The paper's x₀ in column 0 of layer 0; more layers/columns are deterministic variations.

    Layer l is (1 + l/L)·x₀ so the layers are not symmetric copies; columns j ≥ 1 are a fixed
    pseudo-random direction of norm 0.3·‖x₀‖ (seeded, so the default is reproducible). [ASSUMED]
    """
    base = np.zeros(d1)
    base[: min(3, d1)] = PAPER_X0[: min(3, d1)]
    if d1 > 3:
        base[3:] = 0.1
    X = np.zeros((layers, d1, rank))
    extra = np.random.default_rng(1234).standard_normal((d1, rank))
    extra *= 0.3 * np.linalg.norm(base) / np.linalg.norm(extra, axis=0, keepdims=True)
    for layer in range(layers):
        X[layer, :, 0] = (1.0 + layer / layers) * base
        X[layer, :, 1:] = (1.0 + layer / layers) * extra[:, 1:]
    return X


def nop_problem(
    rank: int = 1,
    layers: int = 1,
    *,
    d1: int = 3,
    d2: int = 3,
    target: ArrayLike | None = None,
    noise_rows: ArrayLike | None = None,
    x0: ArrayLike | None = None,
    y0: ArrayLike | None = None,
) -> Problem:
    """Matrix fitting ‖Σ_l X_l Y_lᵀ − (A + αN)‖²: toy (11) by default (spec §1.5).

    Defaults: A = diag(0.5, 0, …), N = D U with D = diag(1.0, 0.8, 0.5) (rows beyond 3 scaled 0.5),
    x₀ = [0.2, −0.1, 0.3], y₀ = −3 x₀ (B₀ = −0.56). ``x0``/``y0`` may be given with shape
    (d1,), (d1, r) or (L, d1, r).
    """
    rank, layers, d1, d2 = integer("rank", rank), integer("layers", layers), integer("d1", d1), integer("d2", d2)
    if rank > min(d1, d2):
        raise ValueError(f"rank must be at most min(d1, d2) = {min(d1, d2)}, got {rank}")
    A = np.zeros((d1, d2))
    A[0, 0] = 0.5
    A = A if target is None else _as_init(target, (d1, d2), "target")
    D = np.full(d1, 0.5)
    D[: min(3, d1)] = PAPER_NOISE_ROWS[: min(3, d1)]
    D = D if noise_rows is None else _as_init(noise_rows, (d1,), "noise_rows")
    X0 = _default_init(layers, d1, rank) if x0 is None else _as_init(x0, (layers, d1, rank), "x0")
    if y0 is None:
        if d1 != d2:
            raise ValueError(f"give y0 explicitly when d1 != d2 (d1={d1}, d2={d2}); the default is y0 = -3 x0")
        Y0 = -3.0 * X0
    else:
        Y0 = _as_init(y0, (layers, d2, rank), "y0")
    name = "nop" if layers == 1 else "nop-layered"
    return Problem("nop", name, A, D, 1.0, X0, Y0, meta={"rank": rank, "layers": layers})


def op_problem(
    layers: int = 1,
    *,
    dim: int = 3,
    target: float = 0.5,
    scale: float = 1.0,
    noisy: bool = True,
    x0: ArrayLike | None = None,
    y0: ArrayLike | None = None,
    name: str | None = None,
) -> Problem:
    """Scalar fitting (Σ_l x_lᵀ y_l − (a + α n))²: toy (12) by default (a = 0.5, x, y ∈ ℝ³)."""
    layers, dim = integer("layers", layers), integer("dim", dim)
    target, scale = number("target", target, minimum=None), number("scale", scale, strict=True)
    X0 = _default_init(layers, dim, 1) if x0 is None else _as_init(x0, (layers, dim, 1), "x0")
    Y0 = -3.0 * X0 if y0 is None else _as_init(y0, (layers, dim, 1), "y0")
    name = name or ("op" if layers == 1 else "op-layered")
    return Problem(
        "op", name, np.asarray(float(target)), None, float(scale), X0, Y0, noisy=noisy, meta={"layers": layers}
    )


def toy2d_problem(x0: float = 0.1, y0: float = -0.1) -> Problem:
    """The 2-D example of Fig. 4: f(x, y) = 30000 (x y − 0.005)², deterministic (spec §5)."""
    return op_problem(dim=1, target=0.005, scale=30000.0, noisy=False, x0=[x0], y0=[y0], name="toy2d")


PROBLEMS = ("nop", "op", "nop-layered", "op-layered", "toy2d")


def make_problem(
    name: str, *, rank: int = 1, layers: int | None = None, x0: ArrayLike | None = None, y0: ArrayLike | None = None
) -> Problem:
    """Build a problem by its CLI name (one of ``PROBLEMS``)."""
    if name not in PROBLEMS:
        raise ValueError(f"unknown problem {name!r}; expected one of {', '.join(PROBLEMS)}")
    if name != "nop" and name != "nop-layered" and rank != 1:
        raise ValueError(f"rank applies to NOP problems only; got rank={rank} for problem {name!r}")
    if name in ("nop", "op") and layers not in (None, 1):
        raise ValueError(f"problem {name!r} has one layer; use {name}-layered for layers={layers}")
    if name == "nop":
        return nop_problem(rank, 1, x0=x0, y0=y0)
    if name == "nop-layered":
        return nop_problem(rank, 3 if layers is None else layers, x0=x0, y0=y0)
    if name == "op":
        return op_problem(1, x0=x0, y0=y0)
    if name == "op-layered":
        return op_problem(3 if layers is None else layers, x0=x0, y0=y0)
    if layers not in (None, 1):
        raise ValueError(f"toy2d has one layer, got layers={layers}")
    given = {k: float(np.ravel(v)[0]) for k, v in (("x0", x0), ("y0", y0)) if v is not None}
    return toy2d_problem(**given)  # either one alone keeps the other's default
