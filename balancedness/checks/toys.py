"""The paper's toy settings, simulated (spec §7.3, Fig. 1, 2(b), 4): SAM balances and SGD does not,
noisier data balances faster, SGD's drift is the predicted O(η²) term, BAR balances, GD's saddle trap.

The SGD and SAM runs on each toy (α ∈ {0, 0.5, 1, 2}, seed 0, η = 1e-4, T = 1e5 or 2e4 quick) are
made once per ``run_checks`` and shared through ``Context.cache`` (:func:`toy_runs`).
"""

from __future__ import annotations

import numpy as np

from balancedness.checks.registry import Context, Kind, Measurement, all_hold, at_most, check
from balancedness.sims import theory as th
from balancedness.sims.discrete import simulate
from balancedness.sims.problems import nop_problem, op_problem, toy2d_problem
from balancedness.sims.results import SimResult

IMPL = Kind.IMPLEMENTATION
TOY_ALPHAS = [0.0, 0.5, 1.0, 2.0]


def toy_steps(ctx: Context) -> int:
    """T of the toy runs: 1e5 (the paper's), or 2e4 with ``--quick``."""
    return 20_000 if ctx.quick else 100_000


def toy_runs(ctx: Context, kind: str) -> tuple[SimResult, SimResult, int]:
    """(SGD run, SAM run, T) on the NOP (ρ = 0.1) or OP (ρ = 0.2) toy, one trajectory per α in ``TOY_ALPHAS``."""
    key = ("toy", kind)
    if key not in ctx.cache:
        p, rho = (nop_problem(), 0.1) if kind == "nop" else (op_problem(), 0.2)
        steps = toy_steps(ctx)
        kw = dict(alpha=TOY_ALPHAS, seeds=[0], lr=1e-4, steps=steps, record_every=steps // 10)
        ctx.cache[key] = (simulate(p, "sgd", **kw), simulate(p, "sam", rho=rho, **kw), steps)
    return ctx.cache[key]


def sam_balances(ctx: Context, kind: str) -> Measurement:
    sgd, sam, steps = toy_runs(ctx, kind)
    B0 = sgd.balancedness[0, 0]
    drift = max(abs(sgd.balancedness[i, -1] - B0) / abs(B0) for i in (0, 1, 2))
    frac = [abs(sam.balancedness[i, -1]) / abs(B0) for i in (1, 2)]
    limit = 0.5 if not ctx.quick else 0.8
    return all_hold(drift <= 0.01 and max(frac) < limit,
                    f"T={steps}: SAM 2|B_T|/2|B_0| = {frac[0]:.3f} (a=0.5), {frac[1]:.3f} (a=1) < {limit}; "
                    f"SGD max drift {100 * drift:.2f}% (a<=1) <= 1%")


def noisier_balances_faster(ctx: Context, kind: str) -> Measurement:
    sgd, sam, steps = toy_runs(ctx, kind)
    k = 1  # record at steps/10 (1e4 at paper scale)
    vals = [abs(sam.balancedness[i, k]) * 2 for i in range(4)]
    return all_hold(all(vals[i] > vals[i + 1] for i in range(3)), f"2|B| at t={int(sam.t[k])}: " + ", ".join(
        f"a={a:g}: {v:.3f}" for a, v in zip(TOY_ALPHAS, vals)))


@check("toy-nop-sam-balances", "Fig 1a, Thm 1-2",
       "NOP toy: SAM halves 2|B| for a in {0.5, 1}; SGD stays within 1% of B0", IMPL)
def toy_nop_sam_balances(ctx: Context) -> Measurement:
    return sam_balances(ctx, "nop")


@check("toy-op-sam-balances", "Fig 1b, Thm 3, 6",
       "OP toy: SAM halves 2|B| for a in {0.5, 1}; SGD stays within 1% of B0", IMPL)
def toy_op_sam_balances(ctx: Context) -> Measurement:
    return sam_balances(ctx, "op")


@check("toy-nop-noisier-faster", "§3 (Fig 1a)",
       "NOP toy: noisier data balances faster (2|B| at 1e4 decreasing in a)", IMPL)
def toy_nop_noisier_faster(ctx: Context) -> Measurement:
    return noisier_balances_faster(ctx, "nop")


@check("toy-op-noisier-faster", "§4 (Fig 1b)",
       "OP toy: noisier data balances faster (2|B| at 1e4 decreasing in a)", IMPL)
def toy_op_noisier_faster(ctx: Context) -> Measurement:
    return noisier_balances_faster(ctx, "op")


@check("toy-sgd-drift-nop", "§7.3(c)",
       "NOP toy, a=2: SGD's drift of B is the predicted O(eta^2) term (sum along the run)", IMPL)
def toy_sgd_drift_nop(ctx: Context) -> Measurement:
    p = nop_problem()
    r = simulate(p, "sgd", alpha=2.0, seeds=[0], lr=1e-4, steps=toy_steps(ctx), record_every=1)
    pred = float(np.sum(th.sgd_expected_drift_nop(p, r.x[0, :-1], r.y[0, :-1], 2.0, 1e-4)))
    obs = float(r.balancedness[0, -1] - r.balancedness[0, 0])
    v = abs(obs - pred) / abs(pred)
    return at_most(v, 0.10, f"predicted dB = {pred:.5f}, observed {obs:.5f} (rel. gap {100 * v:.1f}%)")


@check("toy-sgd-drift-op", "§7.3(c)", "OP toy: SGD has B_T = B_0 exp(-eta^2 sum f'^2) (discrete)", IMPL)
def toy_sgd_drift_op(ctx: Context) -> Measurement:
    p, lr, steps = op_problem(), 1e-4, toy_steps(ctx)
    r = simulate(p, "sgd", alpha=1.0, seeds=[0], lr=lr, steps=steps, record_every=1)
    noise = p.noise_sequence(0, steps, 1)[:, 0]
    f = p.outer_grad(p.product(r.x[0, :-1], r.y[0, :-1]), np.ones(steps), noise)
    B0, BT = r.balancedness[0, 0], r.balancedness[0, -1]
    pred = B0 * np.prod(th.sgd_op_step_factor(f, lr))
    approx = B0 * np.exp(-(lr**2) * np.sum(f**2))
    v = abs(BT - pred) / abs(pred)
    return at_most(v, 1e-9, f"B_T = {BT:.6f}; product formula {pred:.6f} (rel. err {v:.1e}); exp form {approx:.6f}")


@check("toy-bar-balances", "Fig 2b, Algs 2-3",
       "NOP toy a=1, mu=1: nBAR and oBAR reduce 2|B| and fit better than SGD", IMPL)
def toy_bar_balances(ctx: Context) -> Measurement:
    p = nop_problem()
    steps, lr = (20_000, 5e-4) if ctx.quick else (100_000, 1e-4)  # same horizon eta*T = 10
    kw = dict(alpha=1.0, seeds=[0], lr=lr, steps=steps, record_every=steps)
    res = {o: simulate(p, o, mu=1.0, **kw) for o in ("sgd", "nbar", "obar")}
    b = {o: 2 * abs(r.balancedness[0, -1]) for o, r in res.items()}
    loss = {o: r.loss[0, -1] for o, r in res.items()}
    ok = all(b[o] < 0.5 * b["sgd"] and loss[o] < loss["sgd"] for o in ("nbar", "obar"))
    return all_hold(ok, ", ".join(f"{o}: 2|B|={b[o]:.3f} loss={loss[o]:.1e}" for o in b))


@check("fig4-saddle-trap", "Fig 4",
       "GD on f = 30000(xy-0.005)^2 from x = -y stays on the line and goes to the saddle (0, 0)", IMPL)
def fig4_saddle_trap(ctx: Context) -> Measurement:
    p = toy2d_problem(0.1, -0.1)
    r = simulate(p, "sgd", lr=1e-4, steps=20_000, record_every=20_000)
    x, y = float(r.x[0, -1].ravel()[0]), float(r.y[0, -1].ravel()[0])
    q = toy2d_problem(0.1, 0.09)
    s = simulate(q, "sgd", lr=1e-4, steps=20_000, record_every=20_000)
    w = float(q.product(s.x[:, -1], s.y[:, -1])[0])
    v = max(abs(x), abs(y), abs(x + y))
    return at_most(v, 1e-6, f"from (0.1, -0.1): ends at ({x:.1e}, {y:.1e}); from (0.1, 0.09): xy = {w:.5f} "
                   "(minimizer 0.005)")
