"""Settings shared by the figures, and the toy runs they share (computed once per process).

Paper settings (spec §1.5): η = 1e-4, T = 1e5 (ηT = 10), x₀ = [0.2, −0.1, 0.3], y₀ = −3x₀,
ρ = 0.1 (NOP toy (11)) and ρ = 0.2 (OP toy (12)), one noise draw per step. The noise levels α of
the paper are unknown (spec §8.1); :data:`DEFAULT_ALPHAS` is our documented choice.
Fig. 1 and Fig. 2 use the same SGD/SAM runs, so ``figures all`` simulates them once.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cache

import numpy as np

from balancedness.sims import SimResult, nop_problem, op_problem, simulate
from balancedness.sims.problems import Problem
from balancedness.validation import integer

#: SAM radius per toy (spec §1.5, Fig. 1).
RHO = {"nop": 0.1, "op": 0.2}

#: Noise levels drawn by default. 0.5 and 1 balance and fit; 2 is where SAM on these toys collapses
#: to x = y = 0 (spec §7.3(d)), shown on purpose: |B| → 0 there without fitting the data.
DEFAULT_ALPHAS: tuple[float, ...] = (0.5, 1.0, 2.0)

#: Seeds per noise level by default (keeps ``figures all`` under a minute on 2 cores).
DEFAULT_SEEDS = 5

#: ``--quick``: T = 2e4 steps at the paper's η (ηT = 2) and 2 seeds.
QUICK_STEPS, QUICK_SEEDS = 20_000, 2


@dataclass(frozen=True)
class FigureConfig:
    """What every figure needs to know about the run scale.

    Attributes:
        steps: iterations T of the toy runs (Fig. 1, 2).
        lr: step size η.
        record_every: record every k steps.
        seeds: seeds per noise level (trajectories are α × seeds).
        alphas: noise levels α of Fig. 1 / 2(a).
        quick: the small test setting (``--quick``); figures may shorten their own extras too.
        progress: show progress bars while simulating.
    """

    steps: int = 100_000
    lr: float = 1e-4
    record_every: int = 100
    seeds: int = DEFAULT_SEEDS
    alphas: tuple[float, ...] = DEFAULT_ALPHAS
    quick: bool = False
    progress: bool = False

    @classmethod
    def make(
        cls, *, quick: bool = False, seeds: int | None = None, alphas=None, progress: bool = False
    ) -> FigureConfig:
        """Paper scale, or ``quick``; ``seeds``/``alphas`` override the defaults (validated here)."""
        base = cls(steps=QUICK_STEPS, seeds=QUICK_SEEDS, quick=True) if quick else cls()
        if seeds is not None:
            base = replace(base, seeds=integer("seeds", seeds))
        if alphas:
            vals = tuple(sorted(dict.fromkeys(float(a) for a in alphas)))
            bad = [a for a in vals if not np.isfinite(a) or a < 0]
            if bad:
                raise ValueError(f"alpha values must be finite and >= 0, got {bad}")
            base = replace(base, alphas=vals)
        return replace(base, progress=progress)

    @property
    def horizon(self) -> float:
        """ηT, the continuous time the discrete runs cover."""
        return self.lr * self.steps


def toy_problem(kind: str) -> Problem:
    """The NOP toy (11) or the OP toy (12) at the paper's initialization."""
    if kind not in RHO:
        raise ValueError(f"unknown toy {kind!r}; expected 'nop' or 'op'")
    return nop_problem() if kind == "nop" else op_problem()


@cache
def toy_run(kind: str, optimizer: str, cfg: FigureConfig, alphas: tuple[float, ...], mu: float = 0.0) -> SimResult:
    """One discrete run of ``optimizer`` on a toy at the config's scale, all α × seeds at once (cached)."""
    return simulate(
        toy_problem(kind),
        optimizer,
        rho=RHO[kind],
        mu=mu,
        alpha=list(alphas),
        seeds=cfg.seeds,
        lr=cfg.lr,
        steps=cfg.steps,
        record_every=cfg.record_every,
        progress=cfg.progress,
    )


def two_abs_b(res: SimResult, mask: np.ndarray) -> np.ndarray:
    """2|B_t| = |‖x_t‖² − ‖y_t‖²| of the selected trajectories, shape (n_sel, R) (spec §1.2)."""
    return 2.0 * np.abs(res.balancedness[mask])


def settings_of(cfg: FigureConfig, **more) -> dict:
    """The run settings written beside every figure's data."""
    return {
        "steps": cfg.steps,
        "lr": cfg.lr,
        "record_every": cfg.record_every,
        "seeds": cfg.seeds,
        "alphas": list(cfg.alphas),
        "quick": cfg.quick,
        "band": "min-max over seeds",
        **more,
    }
