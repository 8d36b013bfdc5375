"""Stochastic discrete steps z⁺ = z + η d(z), vectorized over noise levels × seeds.

Each trajectory (α, seed) draws its own noise stream (``problems.NoiseStream``): the batch of
step t is b noise draws, and SAM's ascent and descent gradients use the same draw (Alg. 1).
All trajectories advance together: with numpy, one set of array operations per step through the
registered direction function; for a built-in optimizer with numba installed, the compiled stepper of
``sims.compiled`` (the same records), a stretch of steps between records per call (``benchmarks/sims.py``).
"""

from __future__ import annotations

import itertools
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from balancedness.metrics import FloatArray, IntArray
from balancedness.sims import compiled
from balancedness.sims.directions import Seeds, lookup
from balancedness.sims.grid import check_batch, noise_levels, seed_list, values
from balancedness.sims.optimizers import Optimizer, make_optimizer
from balancedness.sims.problems import NOISE_BLOCK, NoiseStream, Problem, perturbation_block
from balancedness.sims.recording import Recorder, record_times
from balancedness.sims.results import SimResult
from balancedness.validation import choice, integer, number


def validate_run(steps: int, lr: float, record_every: int, batch: int, opt: Optimizer) -> None:
    """Check the run's settings before any work starts (each error names the bad value)."""
    integer("steps", steps)
    number("lr", lr, strict=True)
    integer("record_every", record_every)
    check_batch(batch, opt.m)


def memory_estimate(
    problem: Problem, trajectories: int, seeds: int, records: int, batch: int = 1, m: int = 1, text_output: bool = False
) -> int:
    """Bytes a run of ``trajectories`` (α × seeds × ρ values) needs at its peak, estimated from what it holds.

    The noise of one block of :data:`~balancedness.sims.problems.NOISE_BLOCK` steps (drawn per seed: the draws
    and their stacked copy; spread over the trajectories as chunk means and effective targets: two arrays)
    dominates short runs with many seeds, whatever ``steps`` is; the records (factors, B_l, gap, loss at each
    record time) dominate long ones, several times over when they are written as JSON text. Measured on
    40,000 seeds × 10 steps of ``nop``: 11.6 GB, estimated 11.8 GB.
    """
    per_point = problem.layers * (problem.d1 + problem.d2) * problem.rank
    held = trajectories * records * (per_point + problem.layers + 2) * 8 * (8 if text_output else 2)
    if problem.noisy:
        size = int(np.prod(problem.noise_shape))
        held += (2 * seeds * batch + 2 * trajectories * m) * NOISE_BLOCK * size * 8
    return held + 16 * trajectories * per_point * 8  # the state, the field and its gradients


def simulate(
    problem: Problem,
    optimizer: Optimizer | str = "sgd",
    *,
    alpha: float | Iterable[float] = 0.0,
    seeds: int | Sequence[int] = 1,
    lr: float = 1e-4,
    steps: int = 100_000,
    record_every: int = 100,
    batch: int = 1,
    rho: float | Iterable[float] = 0.0,
    m: int = 1,
    mu: float = 0.0,
    schedule: str = "constant",
    progress: bool = False,
    backend: str = "auto",
    **flatness: float | str | None,
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
        backend: ``auto`` (the compiled kernel of ``sims.compiled`` for a built-in optimizer of the paper when
            numba is installed, else numpy), ``numpy`` (the registered direction function every step) or ``numba``
            (the kernel, an error where it cannot run). Both give the same records (``tests/test_compiled.py``).
            The flatness methods (flat-lora, bi-lora, asam) always step with numpy.
        flatness: the flatness methods' hyper-parameters (``sigma``, ``noise_schedule``, ``eta_a``, ``kappa``,
            ``rank2``, ``aux_init``; see :class:`Optimizer`), for an optimizer given by name.

    Random perturbations (Flat-LoRA's ξ) are drawn per trajectory seed and step (``problems.perturbation_block``),
    so a run is reproducible bit for bit and trajectories of one seed (other α or ρ) share them, as they share the
    minibatch. An optimizer with auxiliary state (Bi-LoRA) starts it from the trajectory's seed and records its
    summary at every record in ``settings["auxiliary"]`` (name → (n, R) list).

    An interrupt (Ctrl-C) returns the records made so far, with ``settings["interrupted"]``.
    """
    rhos = values("rho", rho)
    opt = (
        optimizer
        if isinstance(optimizer, Optimizer)
        else make_optimizer(optimizer, rho=rhos[0], m=m, mu=mu, schedule=schedule, **flatness)
    )
    if len(rhos) > 1 and "rho" not in lookup(opt.name).uses:
        raise ValueError(f"several rho values {rhos} only apply to optimizers that use rho, not {opt.name!r}")
    validate_run(steps, lr, record_every, batch, opt)
    alphas, seed_ids = noise_levels(problem, alpha), seed_list(seeds)
    per_rho = len(alphas) * len(seed_ids)
    traj_rho = np.repeat(rhos, per_rho) if len(rhos) > 1 else None
    traj_alpha = np.tile(np.repeat(alphas, len(seed_ids)), len(rhos))
    traj_seed = np.tile(seed_ids, len(alphas) * len(rhos))
    unique = sorted(set(seed_ids))
    seed_idx = np.array([unique.index(s) for s in traj_seed])
    n = len(traj_alpha)

    X = np.broadcast_to(problem.x0, (n,) + problem.x0.shape).copy()
    Y = np.broadcast_to(problem.y0, (n,) + problem.y0.shape).copy()
    t_rec = record_times(steps, record_every)
    rec = Recorder(problem, n, len(t_rec))
    stream = NoiseStream(problem, unique, batch) if problem.noisy else None
    settings = {
        "kind": "discrete",
        "problem": problem.name,
        "problem_kind": problem.kind,
        "layers": problem.layers,
        "rank": problem.rank,
        "scale": problem.scale,
        "optimizer": opt.settings(),
        "lr": lr,
        "steps": steps,
        "record_every": record_every,
        "batch": batch,
        "alpha": alphas,
        "seeds": seed_ids,
        "rho_grid": rhos if len(rhos) > 1 else None,
        "x0": problem.x0.tolist(),
        "y0": problem.y0.tolist(),
    }
    stepper = _stepper(backend, opt, problem, lr, steps, traj_rho, n, traj_seed)
    settings["backend"] = stepper.backend
    bar = _progress(steps, progress, f"{opt.name} on {problem.name}")
    started = time.perf_counter()
    rec_steps = t_rec.tolist()
    try:
        with np.errstate(all="ignore"):
            for t0, count in segments(steps):
                if stream is not None and t0 % NOISE_BLOCK == 0:
                    stepper.targets(_chunk_targets(problem, stream.next_block(), seed_idx, traj_alpha, opt.m))
                    if bar is not None and t0:
                        bar.update(NOISE_BLOCK)
                here = rec_steps[bisect_left(rec_steps, t0) : bisect_left(rec_steps, t0 + max(count, 1))]
                stepper.run(X, Y, t0, count, here, rec)
    except KeyboardInterrupt:
        settings["interrupted"] = True
    finally:
        if bar is not None:
            bar.close()
    settings["seconds"] = time.perf_counter() - started
    settings["diverged"] = rec.diverged()
    if isinstance(stepper, NumpyStepper) and stepper.aux_records:
        settings["auxiliary"] = {k: np.stack(v, axis=1).tolist() for k, v in stepper.aux_records.items()}
    return rec.result(t_rec, traj_alpha, traj_seed, settings, traj_rho)


def segments(steps: int) -> Iterator[tuple[int, int]]:
    """(t₀, count): the steps t₀ … t₀ + count − 1 of one noise block, block after block; the last is
    (T, 0): the field at the last point, for its record, and no step."""
    cuts = sorted(set(range(0, steps + 1, NOISE_BLOCK)) | {steps})
    for a, b in itertools.pairwise(cuts):
        yield a, b - a
    yield steps, 0


class NumpyStepper:
    """Steps with the registered direction function, one numpy call of ``Optimizer.field`` per step; it draws the
    perturbations of a field that has them and advances the auxiliary state of one that keeps it."""

    backend = "numpy"

    def __init__(
        self,
        opt: Optimizer,
        problem: Problem,
        lr: float,
        steps: int,
        rho: FloatArray | None,
        seeds: Seeds | None = None,
    ) -> None:
        self.opt, self.problem, self.lr, self.steps, self.rho = opt, problem, lr, steps, rho
        self.block: FloatArray | None = None
        entry = lookup(opt.name)
        self.draws, self.carry = entry.draws, entry.carry
        self.seeds: IntArray = np.zeros(0, dtype=int) if seeds is None else np.asarray(seeds)
        unique = sorted(set(self.seeds.tolist()))
        self.unique, self.seed_idx = unique, np.array([unique.index(s) for s in self.seeds.tolist()], dtype=int)
        self.xi_block: FloatArray | None = None
        self.aux = None if self.carry is None else self.carry.init(problem, self.seeds, opt.settings())
        self.aux_records: dict[str, list[FloatArray]] = {}

    def targets(self, block: FloatArray) -> None:
        """The chunk targets of the next NOISE_BLOCK steps, (K, m, n, *noise_shape)."""
        self.block = block

    def _xi(self, t: int) -> FloatArray | None:
        """The perturbation draws of step t, (n, *shape), from the block of its seeds (drawn once per block)."""
        if self.draws is None:
            return None
        if t % NOISE_BLOCK == 0 or self.xi_block is None:
            block = perturbation_block(self.unique, t // NOISE_BLOCK, self.draws(self.problem))  # (S, K, *shape)
            self.xi_block = np.moveaxis(block[self.seed_idx], 1, 0)  # (K, n, *shape)
        out: FloatArray | None = self.xi_block[t % NOISE_BLOCK]
        return out

    def run(self, X: FloatArray, Y: FloatArray, t0: int, count: int, records: Sequence[int], rec: Recorder) -> None:
        """Steps t₀ … t₀ + count − 1 in place (count = 0: only the field at t₀); at the steps ``records`` the
        point and its stochastic gradient go to ``rec`` before the step."""
        wanted = set(records)
        for t in range(t0, t0 + max(count, 1)):
            C = None if self.block is None else self.block[t % NOISE_BLOCK]
            rho = self.rho if self.rho is not None else self.opt.rho
            if self.carry is None:
                dX, dY, gX, gY = self.opt.field(self.problem, X, Y, C, t / self.steps, self.rho, self._xi(t))
            else:
                (dX, dY, gX, gY), d_aux = self.opt.field_with_aux(
                    self.problem, X, Y, C, t / self.steps, self.rho, self._xi(t), self.aux
                )
            if t in wanted:
                rec.add(X, Y, gX, gY)
                if self.carry is not None and self.aux is not None:
                    for k, v in self.carry.summary(self.problem, self.aux).items():
                        self.aux_records.setdefault(k, []).append(v)
            if count == 0:
                return
            X += self.lr * dX
            Y += self.lr * dY
            if self.carry is not None:
                assert self.aux is not None and d_aux is not None, "a field with an auxiliary state returns its rate"
                stepped = tuple(a + self.lr * d for a, d in zip(self.aux, d_aux, strict=True))
                self.aux = self.carry.project(self.problem, stepped, rho)


class CompiledStepper:
    """Steps a built-in optimizer with the compiled kernel (``sims.compiled``), a segment per call."""

    backend = "numba"

    def __init__(
        self,
        op: int,
        opt: Optimizer,
        problem: Problem,
        lr: float,
        steps: int,
        rho: FloatArray | None,
        n: int,
        notes: Sequence[Callable[[], None]] = (),
    ):
        self.opt, self.steps, self.n, self.notes = opt, steps, n, tuple(notes)
        self.kernel = compiled.Stepper(op, problem, lr, np.full(n, opt.rho) if rho is None else rho)
        self.C, self.stride = self.kernel.targets(None, n)

    def targets(self, block: FloatArray) -> None:
        self.C, self.stride = self.kernel.targets(block, self.n)

    def mus(self, t0: int, count: int) -> FloatArray:
        """μ_t of steps t₀ … t₀ + count − 1 as ``Optimizer.hyper`` gives it (one value if it is constant)."""
        if not self.opt.mu or self.opt.schedule == "constant":
            return np.array([self.opt.hyper(t0 / self.steps).mu])
        return np.array([self.opt.hyper(t / self.steps).mu for t in range(t0, t0 + max(count, 1))])

    def run(self, X: FloatArray, Y: FloatArray, t0: int, count: int, records: Sequence[int], rec: Recorder) -> None:
        """Steps t₀ … t₀ + count − 1 in place in one kernel call, then the records of those steps (the points and
        gradients the kernel kept) to ``rec``. The notes of an observed field are called once per call."""
        for note in self.notes:
            note()
        k0 = t0 % NOISE_BLOCK if self.stride else 0
        kept = self.kernel.run(X, Y, self.C, self.stride, k0, count, self.mus(t0, count), [t - t0 for t in records])
        rec.add_many(*kept)  # the records of the stretch at once (the same numbers as one rec.add per record)


BACKENDS = ("auto", "numpy", "numba")


def _stepper(
    backend: str,
    opt: Optimizer,
    problem: Problem,
    lr: float,
    steps: int,
    rho: FloatArray | None,
    n: int,
    seeds: Seeds | None = None,
) -> NumpyStepper | CompiledStepper:
    """The compiled stepper where it applies (``auto``: numba installed and the field a built-in of the paper's
    six, ``compiled.OPCODES``), else numpy (every other field: a user's, a variant, a mutant, a flatness method)."""
    choice("backend", backend, BACKENDS)
    op, notes = compiled.kernel_for(opt.name) if backend != "numpy" and compiled.available() else (None, [])
    if op is None and backend == "numba":
        why = (
            "numba is not installed (pip install 'balancedness[fast]') or $BALANCEDNESS_BACKEND=numpy"
            if not compiled.available()
            else f"the field of {opt.name!r} is not a built-in direction function "
            f"it compiles ({', '.join(getattr(f, '__name__', str(f)) for f in compiled.OPCODES)})"
        )
        raise ValueError(f"backend 'numba' cannot run: {why}; use backend 'auto' or 'numpy'")
    if op is None:
        return NumpyStepper(opt, problem, lr, steps, rho, seeds)
    return CompiledStepper(op, opt, problem, lr, steps, rho, n, notes)


def _chunk_targets(problem: Problem, block: FloatArray, seed_idx: IntArray, alpha: FloatArray, m: int) -> FloatArray:
    """(S, K, b, *s) noise → effective targets A + α N̄_i per step and chunk, (K, m, n, *s), C-contiguous.

    Done once per block of K steps, so the per-step work is only the optimizer's field. The chunk means
    are taken per seed before the seeds are spread over the trajectories (a chunk of one draw is the draw).
    """
    S, K, b = block.shape[:3]
    rest = block.shape[3:]
    chunks = block.reshape((S, K, m, b // m) + rest)
    means = chunks[:, :, :, 0] if b == m else chunks.mean(axis=3)  # (S, K, m, *s)
    out = np.take(np.moveaxis(means, 0, 2), seed_idx, axis=2)  # (K, m, n, *s)
    out *= alpha.reshape((1, 1, -1) + (1,) * len(rest))
    out += problem.target
    return out


def _progress(total: int, enabled: bool, desc: str) -> Any:  # a tqdm bar, or None
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", leave=False)
