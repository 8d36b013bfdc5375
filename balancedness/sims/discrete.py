"""Stochastic discrete steps z⁺ = z + η d(z), vectorized over noise levels × seeds.

Each trajectory (α, seed) draws its own noise stream (``problems.NoiseStream``): the batch of
step t is b noise draws, and SAM's ascent and descent gradients use the same draw (Alg. 1).
All trajectories advance together in one set of array operations, which is what makes the
paper-scale Fig. 1 workload take seconds (``benchmarks/sims.py``).
"""

from __future__ import annotations

import time
from typing import Iterable, Sequence

import numpy as np

from balancedness.metrics import balancedness_layers, grad_gap
from balancedness.sims.optimizers import Optimizer, make_optimizer
from balancedness.sims.problems import NOISE_BLOCK, NoiseStream, Problem
from balancedness.sims.results import SimResult


def _as_list(v: float | Iterable[float], name: str) -> list[float]:
    vals = [float(a) for a in (np.atleast_1d(v) if not isinstance(v, (list, tuple)) else v)]
    if not vals:
        raise ValueError(f"{name} must hold at least one value")
    for a in vals:
        if not np.isfinite(a) or a < 0:
            raise ValueError(f"{name} values must be finite and >= 0, got {a!r}")
    return vals


def _seed_list(seeds: int | Sequence[int]) -> list[int]:
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
        if seeds < 1:
            raise ValueError(f"seeds must be a positive count or a list of seeds, got {seeds!r}")
        return list(range(int(seeds)))
    out = [int(s) for s in seeds]
    if not out or any(s < 0 for s in out):
        raise ValueError(f"seeds must be a non-empty list of non-negative integers, got {list(seeds)!r}")
    return out


def record_times(steps: int, record_every: int) -> np.ndarray:
    """0, k, 2k, … and always the last step."""
    t = np.arange(0, steps + 1, record_every)
    return t if t[-1] == steps else np.append(t, steps)


def validate_run(steps: int, lr: float, record_every: int, batch: int, opt: Optimizer) -> None:
    if not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not np.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if not isinstance(record_every, (int, np.integer)) or record_every < 1:
        raise ValueError(f"record_every must be a positive integer, got {record_every!r}")
    if not isinstance(batch, (int, np.integer)) or batch < 1:
        raise ValueError(f"batch must be a positive integer, got {batch!r}")
    if batch % opt.m:
        raise ValueError(f"m={opt.m} must divide the batch size {batch} (m-sharpness splits the batch evenly)")


class _Recorder:
    """Collects the named arrays at the record times."""

    def __init__(self, problem: Problem, n: int, n_rec: int):
        L, d1, d2, r = problem.layers, problem.d1, problem.d2, problem.rank
        self.problem = problem
        self.x = np.full((n, n_rec, L, d1, r), np.nan)
        self.y = np.full((n, n_rec, L, d2, r), np.nan)
        self.bl = np.full((n, n_rec, L), np.nan)
        self.gap = np.full((n, n_rec), np.nan)
        self.loss = np.full((n, n_rec), np.nan)
        self.count = 0

    def add(self, X, Y, gX, gY) -> None:
        i = self.count
        self.x[:, i], self.y[:, i] = X, Y
        self.bl[:, i] = balancedness_layers(X, Y)
        self.gap[:, i] = grad_gap(gX, gY)
        self.loss[:, i] = self.problem.excess_loss(X, Y)
        self.count += 1

    def result(self, t, alpha, seed, settings, rho=None) -> SimResult:
        k = self.count
        return SimResult(
            t=np.asarray(t[:k], dtype=float), x=self.x[:, :k], y=self.y[:, :k],
            balancedness=self.bl[:, :k].sum(axis=2), balancedness_layers=self.bl[:, :k],
            grad_gap=self.gap[:, :k], loss=self.loss[:, :k],
            alpha=np.asarray(alpha, dtype=float), seed=np.asarray(seed, dtype=int), settings=settings,
            rho=None if rho is None else np.asarray(rho, dtype=float),
        )


def simulate(
    problem: Problem,
    optimizer: Optimizer | str = "sgd",
    *,
    alpha: float | Sequence[float] = 0.0,
    seeds: int | Sequence[int] = 1,
    lr: float = 1e-4,
    steps: int = 100_000,
    record_every: int = 100,
    batch: int = 1,
    rho: float | Sequence[float] = 0.0,
    m: int = 1,
    mu: float = 0.0,
    schedule: str = "constant",
    progress: bool = False,
) -> SimResult:
    """Run the discrete stochastic optimizer on every (α, seed) pair at once.

    Args:
        problem: a :class:`Problem` (``nop_problem()``, ``op_problem()``, …).
        optimizer: an :class:`Optimizer` or its name (then ``rho``, ``m``, ``mu``, ``schedule`` apply).
        alpha: noise level(s) α ≥ 0; trajectories are the grid rho × alpha × seeds (rho-major).
        rho: SAM radius, or several radii for sam/msam (ρ = 0 is exactly SGD), run side by side.
        seeds: a count n (seeds 0..n−1) or explicit seeds.
        lr: step size η > 0.
        steps: number of steps T.
        record_every: record every k steps (step 0 and T always).
        batch: noise draws per step b (the paper's is unknown; 1 by default, spec §8.1).
        progress: show a progress bar.

    An interrupt (Ctrl-C) returns the records made so far, with ``settings["interrupted"]``.
    """
    rhos = _as_list(rho, "rho")
    opt = optimizer if isinstance(optimizer, Optimizer) else make_optimizer(
        optimizer, rho=rhos[0], m=m, mu=mu, schedule=schedule)
    if len(rhos) > 1 and opt.name not in ("sam", "msam"):
        raise ValueError(f"several rho values {rhos} only apply to sam/msam, not {opt.name!r}")
    validate_run(steps, lr, record_every, batch, opt)
    alphas, seed_list = _as_list(alpha, "alpha"), _seed_list(seeds)
    if not problem.noisy and any(a != 0 for a in alphas):
        raise ValueError(f"problem {problem.name!r} has no noise term; alpha must be 0, got {alphas}")
    per_rho = len(alphas) * len(seed_list)
    traj_rho = np.repeat(rhos, per_rho) if len(rhos) > 1 else None
    traj_alpha = np.tile(np.repeat(alphas, len(seed_list)), len(rhos))
    traj_seed = np.tile(seed_list, len(alphas) * len(rhos))
    unique = sorted(set(seed_list))
    seed_idx = np.array([unique.index(s) for s in traj_seed])
    n = len(traj_alpha)

    X = np.broadcast_to(problem.x0, (n,) + problem.x0.shape).copy()
    Y = np.broadcast_to(problem.y0, (n,) + problem.y0.shape).copy()
    t_rec = record_times(steps, record_every)
    rec = _Recorder(problem, n, len(t_rec))
    stream = NoiseStream(problem, unique, batch) if problem.noisy else None
    settings = {
        "kind": "discrete", "problem": problem.name, "problem_kind": problem.kind,
        "layers": problem.layers, "rank": problem.rank, "scale": problem.scale,
        "optimizer": opt.settings(), "lr": lr, "steps": steps, "record_every": record_every,
        "batch": batch, "alpha": alphas, "seeds": seed_list, "rho_grid": rhos if len(rhos) > 1 else None,
        "x0": problem.x0.tolist(), "y0": problem.y0.tolist(),
    }
    bar = _progress(steps, progress, f"{opt.name} on {problem.name}")
    started = time.perf_counter()
    next_rec, targets = 0, None
    try:
        with np.errstate(all="ignore"):
            for t in range(steps + 1):
                if stream is not None and t % NOISE_BLOCK == 0:
                    targets = _chunk_targets(problem, stream.next_block(), seed_idx, traj_alpha, opt.m)
                    if bar is not None and t:
                        bar.update(NOISE_BLOCK)
                C = None if targets is None else targets[t % NOISE_BLOCK]
                dX, dY, gX, gY = opt.field(problem, X, Y, C, t / steps, traj_rho)
                if t == t_rec[next_rec]:
                    rec.add(X, Y, gX, gY)
                    next_rec += 1
                if t == steps:
                    break
                X += lr * dX
                Y += lr * dY
    except KeyboardInterrupt:
        settings["interrupted"] = True
    finally:
        if bar is not None:
            bar.close()
    settings["seconds"] = time.perf_counter() - started
    # trajectories whose recorded B became non-finite at some point
    settings["diverged"] = int(np.sum(~np.all(np.isfinite(rec.bl[:, : rec.count]), axis=(1, 2))))
    return rec.result(t_rec, traj_alpha, traj_seed, settings, traj_rho)


def _chunk_targets(problem: Problem, block: np.ndarray, seed_idx: np.ndarray, alpha: np.ndarray, m: int) -> np.ndarray:
    """(S, K, b, *s) noise → effective targets A + α N̄_i per step and chunk, (K, m, n, *s).

    Done once per block of K steps, so the per-step work is only the optimizer's field.
    """
    S, K, b = block.shape[:3]
    rest = block.shape[3:]
    per_traj = block[seed_idx]  # (n, K, b, *s)
    means = per_traj.reshape((len(seed_idx), K, m, b // m) + rest).mean(axis=3)  # (n, K, m, *s)
    means = np.moveaxis(means, 0, 2)  # (K, m, n, *s)
    a = alpha.reshape((1, 1, -1) + (1,) * len(rest))
    return np.ascontiguousarray(problem.target + a * means)


def _progress(total: int, enabled: bool, desc: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", leave=False)
