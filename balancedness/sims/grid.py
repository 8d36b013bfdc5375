"""The trajectories of a run: noise levels α × seeds (× radii ρ for SAM), checked before any work starts.

``simulate`` and ``solve_flow`` both run one trajectory per (α, seed) pair, α-major; the simulator may
add a radius grid in front (ρ-major). The values are validated here, once, with the shared validators
of ``balancedness.validation`` (errors name the Python parameter, never a command-line flag).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from balancedness.sims.problems import Problem
from balancedness.validation import InvalidValue, integer, number


def values(name: str, v: float | Iterable[float]) -> list[float]:
    """One or several finite numbers ≥ 0 (a radius or noise-level grid) as a list of floats."""
    if isinstance(v, np.ndarray):
        raw = list(np.atleast_1d(v))
    elif isinstance(v, Iterable) and not isinstance(v, (str, bytes)):
        raw = list(v)  # any iterable: a list, a tuple, a range, a generator, a set
    else:
        raw = [v]
    if not raw:
        raise InvalidValue(name, "one or more numbers", v)
    return [number(f"{name} values", a) for a in raw]


def seed_list(seeds: int | Sequence[int]) -> list[int]:
    """A count n (seeds 0..n−1) or explicit non-negative integer seeds."""
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
        return list(range(integer("seeds", seeds)))
    if isinstance(seeds, bool):
        raise InvalidValue("seeds", "a positive count or a non-empty list of seeds", seeds)
    out = [integer("seeds", s, minimum=0) for s in seeds]
    if not out:
        raise InvalidValue("seeds", "a positive count or a non-empty list of seeds", seeds)
    return out


def noise_levels(problem: Problem, alpha: float | Iterable[float]) -> list[float]:
    """The noise levels α ≥ 0 of a run; a problem without a noise term (Fig. 4) takes only α = 0."""
    alphas = values("alpha", alpha)
    if not problem.noisy and any(a != 0 for a in alphas):
        raise InvalidValue("alpha", f"0 (problem {problem.name!r} has no noise term)", alphas)
    return alphas


def check_batch(batch: int, m: int) -> int:
    """The noise draws per step b; m-sharpness splits them into m equal chunks, so m must divide b."""
    batch = integer("batch", batch)
    if batch % m:
        raise ValueError(f"m={m} must divide the batch size {batch} (m-sharpness splits the batch evenly)")
    return batch
