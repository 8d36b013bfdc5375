"""The η → 0 limiting flows ż = d(z) of the optimizers, solved with scipy (spec §2.9).

The field d is the same ``Optimizer.direction`` the discrete simulator steps with, on a
deterministic loss: α = 0, or one noise sample drawn from ``seed`` and then frozen (the paper's
"limiting flow" freezes the minibatch function f_t, spec §8.9).

The flatness methods (spec/flatness-methods.md). A field with random perturbations (Flat-LoRA) is solved as
the flow of its **expected** direction E_ξ d(z) (the field called with ``xi=None``): on the quadratic toys
that is exactly the SGD flow, since the gradient is affine in the W-space draw and E[E] = 0 ([FM] §2.3). A
field with auxiliary state (Bi-LoRA) is solved on the point *and* its state: the state starts from the
trajectory's seed as in the discrete run (``Carry.init``) and moves with the field's d_aux plus the flow form of
the projection (``Carry.flow``: Bi-LoRA's clip as −λ(X₂, Y₂) while ‖X₂Y₂ᵀ‖ = ρ).

Discontinuous fields. SAM and SNGD on OP carry sgn f′ (eq. (7)), nBAR switches where
‖g_{X_l}‖ = ‖g_{Y_l}‖ and oBAR where ‖X_l‖ = ‖Y_l‖. Where trajectories *cross* such a surface,
the adaptive solver shortens its step and crosses it; crossings are located with events and
counted. Where the field points *into* the surface from both sides, the flow is not defined in
the classical sense (a Filippov sliding mode): the discrete method chatters across the surface
with an amplitude O(η), and the adaptive solver would stall. We detect the stall (``patience``
accepted steps shorter than ``stall_step`` on average) and continue from there with fixed
classical RK4 steps of size ``sliding_step``: the small-step limit of that chattering, which
approximates the sliding motion to O(sliding_step). The result says so: ``settings["status"]``
is ``"sliding"`` and ``settings["sliding_from"]`` the time the fallback began (per trajectory).

Rest points. Where the field vanishes identically (every component exactly 0, at the step's time and at
t_end), the flow has stopped: ż = 0 there, so it stays at that point. An adaptive solver would take ever
longer steps to t_end without noticing, and the records would show a frozen tail (a field computed in
float32 is exactly 0 in a band around f′ = 0, for instance). The solver stops there instead: the
remaining records are that point, the run's ``status`` is ``"stopped"`` and ``stopped_at`` the time.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from scipy.integrate import BDF, DOP853, LSODA, RK23, RK45, OdeSolver, Radau

from balancedness.metrics import FloatArray
from balancedness.sims.directions import Aux, Field, lookup
from balancedness.sims.grid import check_batch, noise_levels, seed_list
from balancedness.sims.optimizers import Optimizer, make_optimizer
from balancedness.sims.problems import Problem
from balancedness.sims.recording import Recorder
from balancedness.sims.results import SimResult
from balancedness.validation import choice, integer, number

METHODS = {"DOP853": DOP853, "RK45": RK45, "RK23": RK23, "Radau": Radau, "BDF": BDF, "LSODA": LSODA}


class _Field:
    """ż = d(z) for one trajectory, packed into a flat vector for the solver."""

    def __init__(self, problem: Problem, opt: Optimizer, alpha: float, noise: FloatArray | None, t_end: float):
        self.problem, self.opt, self.t_end = problem, opt, t_end
        self.alpha = np.array([alpha])
        # chunk means of the frozen sample, shape (m, 1, *noise_shape)
        self.noise = None if noise is None else noise.reshape((opt.m, -1) + noise.shape[1:]).mean(axis=1)[:, None]
        self.nx = problem.x0.size
        self.shape_x, self.shape_y = (1,) + problem.x0.shape, (1,) + problem.y0.shape
        self.nfev = 0
        self.targets = (
            None if self.noise is None else np.stack([problem.effective_target(self.alpha, c) for c in self.noise])
        )
        self.carry = lookup(opt.name).carry
        self.aux_shapes: list[tuple[int, ...]] = []

    def start(self, seed: int) -> FloatArray:
        """The initial vector: the problem's point, and the auxiliary state of ``seed`` where the field keeps one."""
        parts = [self.problem.x0.ravel(), self.problem.y0.ravel()]
        if self.carry is not None:
            aux = self.carry.init(self.problem, np.array([seed]), self.opt.settings())
            self.aux_shapes = [a.shape for a in aux]
            parts += [a.ravel() for a in aux]
        return np.concatenate(parts)

    def unpack(self, v: FloatArray) -> tuple[FloatArray, FloatArray]:
        ny = int(np.prod(self.shape_y))
        return v[: self.nx].reshape(self.shape_x), v[self.nx : self.nx + ny].reshape(self.shape_y)

    def unpack_aux(self, v: FloatArray) -> Aux | None:
        if not self.aux_shapes:
            return None
        out, k = [], self.nx + int(np.prod(self.shape_y))
        for shape in self.aux_shapes:
            size = int(np.prod(shape))
            out.append(v[k : k + size].reshape(shape))
            k += size
        return tuple(out)

    def _field(self, v: FloatArray, progress: float) -> tuple[FloatArray, FloatArray, Aux | None, Field, Aux | None]:
        X, Y = self.unpack(v)
        aux = self.unpack_aux(v)
        (dX, dY, gX, gY), d_aux = self.opt.field_with_aux(self.problem, X, Y, self.targets, progress, aux=aux)
        return X, Y, aux, (dX, dY, gX, gY), d_aux

    def __call__(self, t: float, v: FloatArray) -> FloatArray:
        self.nfev += 1
        _, _, aux, (dX, dY, _, _), d_aux = self._field(v, t / self.t_end)
        parts = [dX.ravel(), dY.ravel()]
        if aux is not None:
            assert self.carry is not None and d_aux is not None, "a field with an auxiliary state returns its rate"
            parts += [d.ravel() for d in self.carry.flow(self.problem, aux, d_aux, self.opt.rho)]
        return np.concatenate(parts)

    def grads(self, v: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
        X, Y, _, (_, _, gX, gY), _ = self._field(v, 0.0)
        return X, Y, gX, gY

    def switching(self, v: FloatArray) -> FloatArray | None:
        X, Y = self.unpack(v)
        s = self.opt.switching(self.problem, X, Y, self.alpha, self.noise)
        return None if s is None else s[0]


def _rk4(fun: _Field, t: float, v: FloatArray, h: float) -> FloatArray:
    k1 = fun(t, v)
    k2 = fun(t + h / 2, v + h / 2 * k1)
    k3 = fun(t + h / 2, v + h / 2 * k2)
    k4 = fun(t + h, v + h * k3)
    out: FloatArray = v + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return out


def _at_rest(fun: _Field, solver: OdeSolver, t_end: float) -> bool:
    """Whether the field vanishes identically at the solver's point, at its time and at t_end (a field that
    depends on t, like BAR's scheduled μ_t, must vanish at both to be at rest; the RK solvers keep f)."""
    f = getattr(solver, "f", None)
    f = fun(solver.t, solver.y) if f is None else f
    return not np.any(f) and not np.any(fun(t_end, solver.y))


def _integrate_one(
    fun: _Field,
    v0: FloatArray,
    t_rec: FloatArray,
    *,
    method: str,
    rtol: float,
    atol: float,
    max_step: float,
    stall_step: float,
    patience: int,
    sliding_step: float,
) -> tuple[FloatArray, dict[str, Any]]:
    """Values at ``t_rec`` (R, dim) and diagnostics (status, switches, sliding_from, stopped_at, nfev)."""
    t_end = float(t_rec[-1])
    out = np.full((len(t_rec), v0.size), np.nan)
    out[0] = v0
    solver = METHODS[method](fun, 0.0, v0, t_end, rtol=rtol, atol=atol, max_step=max_step)
    info: dict[str, Any] = {"status": "ok", "switches": 0, "sliding_from": None, "stopped_at": None, "message": ""}
    sw_prev = fun.switching(v0)
    nxt = 1
    window = [0.0]
    while solver.status == "running":
        msg = solver.step()
        if solver.status == "failed":
            info.update(status="failed", message=str(msg))
            break
        dense = solver.dense_output()
        while nxt < len(t_rec) and t_rec[nxt] <= solver.t:
            out[nxt] = dense(t_rec[nxt])
            nxt += 1
        sw = fun.switching(solver.y)
        if sw is not None and sw_prev is not None:
            info["switches"] += int(np.sum(np.sign(sw) != np.sign(sw_prev)))
            sw_prev = sw
        if solver.t < t_end and _at_rest(fun, solver, t_end):
            info.update(status="stopped", stopped_at=float(solver.t))
            out[nxt:] = solver.y
            break
        window.append(solver.t)
        if len(window) > patience and (solver.t - window.pop(0)) < patience * stall_step and solver.t < t_end:
            info.update(status="sliding", sliding_from=float(solver.t))
            break
    if info["status"] in ("sliding", "failed"):
        # fixed-step continuation (see module docstring); records by linear interpolation
        t, v = solver.t, solver.y.copy()
        while t < t_end and np.all(np.isfinite(v)):
            h = min(sliding_step, t_end - t)
            v_new = _rk4(fun, t, v, h)
            while nxt < len(t_rec) and t_rec[nxt] <= t + h + 1e-15:
                w = (t_rec[nxt] - t) / h
                out[nxt] = (1 - w) * v + w * v_new
                nxt += 1
            t, v = t + h, v_new
    info["nfev"] = fun.nfev
    return out, info


def solve_flow(
    problem: Problem,
    optimizer: Optimizer | str = "sgd",
    *,
    t_end: float = 10.0,
    alpha: float | Iterable[float] = 0.0,
    seeds: int | Sequence[int] = 1,
    batch: int = 1,
    n_records: int = 201,
    t_eval: FloatArray | None = None,
    rho: float = 0.0,
    m: int = 1,
    mu: float = 0.0,
    schedule: str = "constant",
    method: str = "DOP853",
    rtol: float = 1e-10,
    atol: float = 1e-12,
    max_step: float = np.inf,
    stall_step: float | None = None,
    patience: int = 200,
    sliding_step: float | None = None,
    **flatness: float | str | None,
) -> SimResult:
    """Solve the limiting flow ż = d(z) for each (α, seed): a deterministic loss per trajectory.

    With α = 0 the loss is the noise-free toy; with α > 0 the minibatch noise of the seed's first
    step (``batch`` draws, as the simulator would draw them) is frozen for the whole flow. BAR
    schedules use progress t / t_end. Returns a :class:`SimResult` whose ``t`` are times.

    Args:
        t_end: the horizon T (η·steps of the matching discrete run).
        n_records / t_eval: record times (``t_eval`` must start at 0 and increase).
        method, rtol, atol, max_step: passed to the scipy solver (default DOP853, 1e-10, 1e-12).
        stall_step, patience, sliding_step: the sliding-mode fallback (module docstring);
            defaults t_end·5e-7, 200 and t_end·2e-4.

    A trajectory that reaches a point where the field vanishes identically stops there (module docstring:
    ``status`` ``"stopped"``, ``stopped_at``; the records after it are that point).

    ``flatness``: the flatness methods' hyper-parameters (as for ``simulate``). A field with random perturbations
    is solved as the flow of its expected direction, one with auxiliary state on the point and the state
    (module docstring); the state's summary at each record goes to ``settings["auxiliary"]``.
    """
    opt = (
        optimizer
        if isinstance(optimizer, Optimizer)
        else make_optimizer(optimizer, rho=rho, m=m, mu=mu, schedule=schedule, **flatness)
    )
    t_end = number("t_end", t_end, strict=True)
    choice("method", method, METHODS)
    check_batch(batch, opt.m)
    if t_eval is None:
        t_rec = np.linspace(0.0, t_end, integer("n_records", n_records, minimum=2))
    else:
        t_rec = np.asarray(t_eval, dtype=float)
        if t_rec[0] != 0 or np.any(np.diff(t_rec) <= 0) or not np.isclose(t_rec[-1], t_end):
            raise ValueError("t_eval must start at 0, increase strictly and end at t_end")
    alphas, seed_ids = noise_levels(problem, alpha), seed_list(seeds)
    stall_step = t_end * 5e-7 if stall_step is None else stall_step
    sliding_step = t_end * 2e-4 if sliding_step is None else sliding_step

    traj = [(a, s) for a in alphas for s in seed_ids]
    rec = Recorder(problem, len(traj), len(t_rec))
    infos = []
    started = time.perf_counter()
    all_rows = []
    for a, s in traj:
        noise = problem.noise_sequence(s, 1, batch)[0] if (a > 0 and problem.noisy) else None
        fun = _Field(problem, opt, a, noise, t_end)
        v0 = fun.start(s)
        with np.errstate(all="ignore"):
            rows, info = _integrate_one(
                fun,
                v0,
                t_rec,
                method=method,
                rtol=rtol,
                atol=atol,
                max_step=max_step,
                stall_step=stall_step,
                patience=patience,
                sliding_step=sliding_step,
            )
        infos.append(info)
        all_rows.append((fun, rows))
    for k in range(len(t_rec)):
        Xs, Ys, gXs, gYs = zip(*(fun.grads(rows[k]) for fun, rows in all_rows), strict=True)
        rec.add(np.concatenate(Xs), np.concatenate(Ys), np.concatenate(gXs), np.concatenate(gYs))
    auxiliary: dict[str, list[list[Any]]] = {}
    for fun, rows in all_rows:
        if fun.carry is not None:
            per = [fun.carry.summary(problem, aux) for row in rows if (aux := fun.unpack_aux(row)) is not None]
            for name in per[0]:
                auxiliary.setdefault(name, []).append([np.asarray(p[name][0]).tolist() for p in per])
    statuses = {i["status"] for i in infos}
    settings = {
        "kind": "flow",
        "problem": problem.name,
        "problem_kind": problem.kind,
        "layers": problem.layers,
        "rank": problem.rank,
        "scale": problem.scale,
        "optimizer": opt.settings(),
        "t_end": t_end,
        "batch": batch,
        "alpha": alphas,
        "seeds": seed_ids,
        "method": method,
        "rtol": rtol,
        "atol": atol,
        "status": next((st for st in ("failed", "sliding", "stopped") if st in statuses), "ok"),
        "runs": [{"alpha": a, "seed": s, **i} for (a, s), i in zip(traj, infos, strict=True)],
        "x0": problem.x0.tolist(),
        "y0": problem.y0.tolist(),
        "seconds": time.perf_counter() - started,
    }
    if auxiliary:
        settings["auxiliary"] = auxiliary
    return rec.result(t_rec, [a for a, _ in traj], [s for _, s in traj], settings)
