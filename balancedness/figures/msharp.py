"""Beyond the paper: m-sharpness balances faster for larger m (Lemma 3, spec §2.6, §3).

m-SAM (38) on the OP toy (12), ρ = 0.2, batch b = 8 noise draws per step split into m chunks of
b/m, α = 1, η = 1e-3 for T = 1e4 steps (ηT = 10, as in Fig. 1; the m = 8 field costs 8 SAM
gradients, so the larger η keeps the figure fast). Lemma 3: dB/dt = −2(ρ/m)Σ_i|f′_{t,i}|B/‖(x, y)‖
+ A_t, and (1/m)Σ_i|f′_{t,i}| ≥ |f′_t| grows with m (each chunk mean is noisier), so larger m
shrinks |B| faster. Left: 2|B_t| (log y); right: the excess loss (w − 0.5)², the price of the
stronger regularization. Mean over seeds, min–max band.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from balancedness.figures import style
from balancedness.figures.runs import RHO, FigureConfig, toy_problem
from balancedness.sims import simulate

MS = (1, 2, 4, 8)
BATCH, ALPHA, LR = 8, 1.0, 1e-3


def steps_of(cfg: FigureConfig) -> int:
    """T = 1e4 (ηT = 10), or 2e3 with ``--quick``."""
    return 2_000 if cfg.quick else 10_000


@cache
def run_m(m: int, cfg: FigureConfig):
    steps = steps_of(cfg)
    return simulate(
        toy_problem("op"),
        "msam",
        rho=RHO["op"],
        m=m,
        batch=BATCH,
        alpha=ALPHA,
        seeds=cfg.seeds,
        lr=LR,
        steps=steps,
        record_every=steps // 200,
        progress=cfg.progress,
    )


def build(cfg: FigureConfig):
    fig, axes = style.new_figure(1, 2, width=11.0, height=3.8)
    axB, axL = axes[0]
    rows = []
    for i, m in enumerate(MS):
        r = run_m(m, cfg)
        B, loss = style.summarize(2 * np.abs(r.balancedness)), style.summarize(r.loss)
        c = style.series_color(i)
        style.plot_band(axB, r.t, B, color=c, label=f"m = {m}", floor=style.LOG_FLOOR)
        style.plot_band(axL, r.t, loss, color=c, label=f"m = {m}", floor=1e-8)
        half = int(np.argmax(B["mean"] <= 0.5 * B["mean"][0])) if np.any(B["mean"] <= 0.5 * B["mean"][0]) else None
        rows.append(
            {
                "m": m,
                "t": r.t,
                "two_abs_B": B,
                "excess_loss": loss,
                "final_two_abs_B": float(B["mean"][-1]),
                "mid_two_abs_B": float(B["mean"][len(r.t) // 2]),
                "final_excess_loss": float(loss["mean"][-1]),
                "halving_iteration": None if half is None else float(r.t[half]),
            }
        )
    for ax in (axB, axL):
        ax.set_yscale("log")
        style.iteration_axis(ax)
    axB.set_ylim(bottom=style.LOG_FLOOR * 0.7)
    axB.set_ylabel("2|B_t|")
    style.panel_label(axB, f"(a) m-SAM on OP (ρ={RHO['op']:g}, b={BATCH}, α={ALPHA:g}, η={LR:g})")
    axB.legend(loc="lower left")
    axL.set_ylabel("excess loss (xᵀy − 0.5)²")
    style.panel_label(axL, "(b) fit")
    axL.legend(loc="lower left")
    fig.suptitle(f"m-sharpness (Lemma 3): larger m balances faster; {cfg.seeds} seeds, mean and min–max band")
    mid = ", ".join(f"m={r['m']}: {r['mid_two_abs_B']:.3g}" for r in rows)
    data = {
        "rows": rows,
        "settings": {
            "ms": list(MS),
            "batch": BATCH,
            "alpha": ALPHA,
            "lr": LR,
            "steps": steps_of(cfg),
            "rho": RHO["op"],
            "seeds": cfg.seeds,
            "band": "min-max over seeds",
        },
        "caption": (
            f"m-sharpness. 2|B_t| of m-SAM on the OP toy at mid-run (t = {steps_of(cfg) // 2}): {mid}; "
            "final excess loss " + ", ".join(f"{r['final_excess_loss']:.2g}" for r in rows) + "."
        ),
    }
    return fig, data
