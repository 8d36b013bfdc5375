"""Findings (spec §8.7): places where the paper is loose or wrong. PASS means our counter-evidence
reproduces, and the row shows the numbers."""

from __future__ import annotations

import numpy as np

from balancedness.checks.instances import op_hessian
from balancedness.checks.registry import Context, Kind, Measurement, above, check, within
from balancedness.checks.toys import toy_runs
from balancedness.metrics import sq_norms
from balancedness.sims import theory as th

FINDING = Kind.FINDING


@check("lemma1-needs-parallel", "Lemma 1 (spec §8.7)",
       "finding: B = 0 on W* is necessary but not sufficient for minimal sharpness (needs x || y)", FINDING)
def lemma1_needs_parallel(ctx: Context) -> Measurement:
    x, y = np.array([1.0, 0.0]), np.array([0.5, np.sqrt(0.75)])
    lam = float(np.linalg.eigvalsh(op_hessian(np.concatenate([x, y]), 0.5, dim=2))[-1])
    best = th.lemma1_min_sharpness(0.5, 2.0)
    return above(lam / best, 1.5, f"x=(1,0), y=(0.5,0.866): B = {0.5 * (x @ x - y @ y):.0e}, w = 0.5, "
                 f"lambda_max = {lam:.3f} vs min over W* {best:.3f} (x = y)")


@check("thm2-no-sqrt-reading", "Thm 2 (6), spec §8.7",
       "finding: the no-sqrt reading |dB/dt| <= rho|g_x^2 - g_y^2| is not a bound", FINDING)
def thm2_no_sqrt_reading(ctx: Context) -> Measurement:
    a, b = np.abs(ctx.rng.standard_normal((2, 100_000)))
    _, mid, _ = th.thm2_sandwich(a, b)
    bad = int(np.sum(mid > np.abs(a**2 - b**2) * (1 + 1e-12)))
    return above(bad, 0.0, f"leading term exceeds it in {bad} of 100000 draws (|g| < 1)")


@check("toy-sam-collapse", "§7.3(d)",
       "finding: with a = 2 SAM balances by collapsing to x = y = 0 (loss does not converge)", FINDING)
def toy_sam_collapse(ctx: Context) -> Measurement:
    _, sam, _ = toy_runs(ctx, "nop")
    loss = float(sam.loss[3, -1])
    norm = float(np.sqrt(sq_norms(sam.x[3, -1:]) + sq_norms(sam.y[3, -1:]))[0])
    return within(loss, (0.2, 0.26), f"a=2: excess loss {loss:.3f} (0.25 = |A|^2 at W = 0), |(x, y)| = {norm:.1e}")
