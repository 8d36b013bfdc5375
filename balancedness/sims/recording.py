"""What a run records: the record times and the named arrays of :class:`SimResult` at those times.

The discrete simulator and the flow solver record the same quantities (the factors, B_l, the gradient
gap of the stochastic gradient at the point, the excess loss), through one :class:`Recorder`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from balancedness.metrics import FloatArray, IntArray, balancedness_layers, grad_gap
from balancedness.sims.problems import Problem
from balancedness.sims.results import SimResult


def record_times(steps: int, record_every: int) -> IntArray:
    """0, k, 2k, … and always the last step."""
    t = np.arange(0, steps + 1, record_every)
    return t if t[-1] == steps else np.append(t, steps)


class Recorder:
    """Collects the named arrays of n trajectories at up to ``n_rec`` record times (NaN where not reached)."""

    def __init__(self, problem: Problem, n: int, n_rec: int):
        L, d1, d2, r = problem.layers, problem.d1, problem.d2, problem.rank
        self.problem = problem
        self.x = np.full((n, n_rec, L, d1, r), np.nan)
        self.y = np.full((n, n_rec, L, d2, r), np.nan)
        self.bl = np.full((n, n_rec, L), np.nan)
        self.gap = np.full((n, n_rec), np.nan)
        self.loss = np.full((n, n_rec), np.nan)
        self.count = 0

    def add(self, X: FloatArray, Y: FloatArray, gX: FloatArray, gY: FloatArray) -> None:
        """Record the point (X, Y) and its stochastic gradient (g_X, g_Y) as the next record."""
        i = self.count
        self.x[:, i], self.y[:, i] = X, Y
        self.bl[:, i] = balancedness_layers(X, Y)
        self.gap[:, i] = grad_gap(gX, gY)
        self.loss[:, i] = self.problem.excess_loss(X, Y)
        self.count += 1

    def add_many(self, Xs: FloatArray, Ys: FloatArray, gXs: FloatArray, gYs: FloatArray) -> None:
        """Record R points at once, each array shaped (R, n, …): the same numbers as R calls of :meth:`add` (the
        metrics of the R·n points computed together, each point's sums over its own contiguous entries)."""
        R, n = Xs.shape[:2]
        if R == 0:
            return
        flat = [np.ascontiguousarray(a).reshape((R * n,) + a.shape[2:]) for a in (Xs, Ys, gXs, gYs)]
        i = self.count
        self.x[:, i : i + R] = np.swapaxes(Xs, 0, 1)
        self.y[:, i : i + R] = np.swapaxes(Ys, 0, 1)
        self.bl[:, i : i + R] = np.swapaxes(balancedness_layers(flat[0], flat[1]).reshape(R, n, -1), 0, 1)
        self.gap[:, i : i + R] = grad_gap(flat[2], flat[3]).reshape(R, n).T
        self.loss[:, i : i + R] = self.problem.excess_loss(flat[0], flat[1]).reshape(R, n).T
        self.count += R

    def diverged(self) -> int:
        """How many trajectories recorded a non-finite B at some point."""
        return int(np.sum(~np.all(np.isfinite(self.bl[:, : self.count]), axis=(1, 2))))

    def result(
        self,
        t: IntArray | FloatArray,
        alpha: ArrayLike,
        seed: ArrayLike,
        settings: dict[str, Any],
        rho: ArrayLike | None = None,
    ) -> SimResult:
        """The records made so far as a :class:`SimResult`."""
        k = self.count
        return SimResult(
            t=np.asarray(t[:k], dtype=float),
            x=self.x[:, :k],
            y=self.y[:, :k],
            balancedness=self.bl[:, :k].sum(axis=2),
            balancedness_layers=self.bl[:, :k],
            grad_gap=self.gap[:, :k],
            loss=self.loss[:, :k],
            alpha=np.asarray(alpha, dtype=float),
            seed=np.asarray(seed, dtype=int),
            settings=settings,
            rho=None if rho is None else np.asarray(rho, dtype=float),
        )
