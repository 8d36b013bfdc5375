"""Paired statistics of a method against LoRA on the same seeds: mean, bootstrap interval, sign test.

For a task, d_s = metric(method, seed s) − metric(LoRA, seed s) over the seeds both have (points, i.e.
accuracy in %). :func:`paired` returns the mean of d, a percentile-bootstrap 95% interval of that mean
(resampling seeds with replacement, ``n_boot`` resamples from a fixed generator, so tables are
reproducible), wins/ties/losses (|d| < 1e-9 is a tie) and the two-sided sign-test p-value over the
non-tied pairs, p = min(1, 2·Σ_{i ≤ min(w, l)} C(w+l, i) / 2^{w+l}). With n seeds the sign test cannot
go below 2/2^n (0.25 for 3 seeds, 0.0625 for 5): say so rather than read p alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Paired", "paired", "sign_test", "bootstrap_interval"]

TIE = 1e-9


@dataclass(frozen=True)
class Paired:
    n: int
    mean: float
    low: float
    high: float
    wins: int
    ties: int
    losses: int
    p_sign: float

    #: The CSV columns of :meth:`cells`.
    COLUMNS = ("n", "mean", "ci_low", "ci_high", "wins", "ties", "losses", "p_sign")

    def text(self) -> str:
        return (
            f"{self.mean:+.2f} [{self.low:+.2f}, {self.high:+.2f}] "
            f"{self.wins}/{self.ties}/{self.losses} p={self.p_sign:.2g}"
        )

    def cells(self) -> list[int | str]:
        """The CSV cells of :attr:`COLUMNS` (means and interval to 4 decimals, p to 4 significant digits)."""
        return [
            self.n,
            f"{self.mean:.4f}",
            f"{self.low:.4f}",
            f"{self.high:.4f}",
            self.wins,
            self.ties,
            self.losses,
            f"{self.p_sign:.4g}",
        ]


def sign_test(wins: int, losses: int) -> float:
    """Two-sided sign test p-value for ``wins`` against ``losses`` (ties dropped)."""
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    return min(1.0, 2.0 * sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n)


def bootstrap_interval(
    values: Sequence[float], n_boot: int = 10_000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values``."""
    x = np.asarray(values, dtype=float)
    if len(x) == 1:
        return float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
    tail = 100 * (1 - level) / 2
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def paired(differences: Sequence[float], n_boot: int = 10_000, seed: int = 0) -> Paired:
    """Statistics of the per-seed differences d_s (method − LoRA); ValueError when there are none."""
    d = [float(v) for v in differences]
    if not d:
        raise ValueError("no paired differences: the method and LoRA share no seed")
    wins = sum(v > TIE for v in d)
    losses = sum(v < -TIE for v in d)
    low, high = bootstrap_interval(d, n_boot, seed=seed)
    return Paired(len(d), float(np.mean(d)), low, high, wins, len(d) - wins - losses, losses, sign_test(wins, losses))
