"""Figure 4: the set |x| = |y| is non-convex, so a hard constraint traps GD at the saddle (spec §5).

f(x, y) = 30000(xy − 0.005)² (``toy2d_problem``): minimizers on xy = 0.005, the balanced ones
±(√0.005, √0.005); a saddle at (0, 0) with Hessian eigenvalues ±300. Left: log-spaced contours,
|x| = |y| dashed, and trajectories of GD (η = ``LR``; λ_max at the minimizer is 600, so η < 3.3e-3):

* GD from (0.1, −0.1) on x = −y: stays on the line (f(x, y) = f(−y, −x)) and ends at the saddle;
* GD from (0.12, 0.12) on x = y: ends at the minimizer (√0.005, √0.005);
* oBAR and nBAR (Alg. 2/3, SGD base) from (0.1, −0.1) with μ_t decaying linearly from μ₀ to 0
  over the first ``BAR_STEPS`` steps, then plain GD.

On this example both BAR switching surfaces are |x| = |y| (‖g_x‖ = |f′||y|, ‖g_y‖ = |f′||x|), so
with a *constant* μ BAR slides along the line like the constraint (kept in the data, drawn
faint). Its chattering, though, puts a small component along the unstable direction x = y that
exact GD on the line never gets; once μ_t has decayed, GD amplifies it (×(1 + 300η) per step near
the saddle) and the iterate leaves the line for a balanced minimizer. Right: the distance
|x_t + y_t|/√2 from the line x = −y (log scale; exact zeros at the floor).
"""

from __future__ import annotations

import numpy as np

from balancedness.figures import style
from balancedness.figures.runs import FigureConfig
from balancedness.sims import simulate, toy2d_problem

LR = 2e-4
STEPS = 3000
BAR_MU, BAR_STEPS = 5.0, 300
START_ON_LINE, START_BALANCED = (0.1, -0.1), (0.12, 0.12)
MINIMIZER = float(np.sqrt(0.005))
DIST_FLOOR = 1e-40


def run(opt: str, start: tuple[float, float], mu: float = 0.0, bar_steps: int = 0) -> np.ndarray:
    """(x_t, y_t), t = 0..STEPS: ``opt`` (μ linear to 0 over ``bar_steps``, or constant if 0), then GD."""
    first = bar_steps if bar_steps else STEPS
    r = simulate(
        toy2d_problem(*start),
        opt,
        mu=mu,
        schedule="linear" if bar_steps else "constant",
        lr=LR,
        steps=first,
        record_every=1,
    )
    xy = np.stack([r.x[0, :, 0, 0, 0], r.y[0, :, 0, 0, 0]], axis=1)
    if first < STEPS:
        g = simulate(toy2d_problem(*xy[-1]), "sgd", lr=LR, steps=STEPS - first, record_every=1)
        xy = np.concatenate([xy, np.stack([g.x[0, 1:, 0, 0, 0], g.y[0, 1:, 0, 0, 0]], axis=1)])
    return xy


def trajectories() -> list[dict]:
    specs = [
        ("GD from x = −y", "gd", START_ON_LINE, 0.0, 0, "-"),
        ("GD from x = y", "gd", START_BALANCED, 0.0, 0, "-"),
        (f"oBAR, μ₀={BAR_MU:g}→0 in {BAR_STEPS} steps", "obar", START_ON_LINE, BAR_MU, BAR_STEPS, "-"),
        (f"nBAR, μ₀={BAR_MU:g}→0 in {BAR_STEPS} steps", "nbar", START_ON_LINE, BAR_MU, BAR_STEPS, "-"),
        (f"oBAR, constant μ={BAR_MU:g}", "obar", START_ON_LINE, BAR_MU, 0, ":"),
    ]
    out = []
    for label, opt, start, mu, bar_steps, ls in specs:
        xy = run("sgd" if opt == "gd" else opt, start, mu, bar_steps)
        out.append(
            {
                "label": label,
                "optimizer": opt,
                "start": start,
                "mu0": mu,
                "bar_steps": bar_steps,
                "ls": ls,
                "xy": xy,
                "end": xy[-1],
                "line_distance": np.abs(xy[:, 0] + xy[:, 1]) / np.sqrt(2),
                "min_dist_to_saddle": float(np.hypot(xy[:, 0], xy[:, 1]).min()),
            }
        )
    return out


def draw_contours(ax, lim: float = 0.15) -> None:
    g = np.linspace(-lim, lim, 401)
    X, Y = np.meshgrid(g, g)
    F = 30000 * (X * Y - 0.005) ** 2
    levels = np.logspace(-3, np.log10(F.max()), 14)
    cs = ax.contour(X, Y, F, levels=levels, colors="0.6", linewidths=0.6)
    ax.clabel(cs, levels[::3], fmt="%.2g", fontsize=6.5)
    ax.plot(g, g, "k--", lw=0.9, label="|x| = |y|")
    ax.plot(g, -g, "k--", lw=0.9)
    ax.plot(0, 0, "kx", ms=9, mew=2, label="saddle (0, 0)")
    ax.plot([MINIMIZER, -MINIMIZER], [MINIMIZER, -MINIMIZER], "k*", ms=11, label="minimizers ±(√.005, √.005)")
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_xlabel("x")
    ax.set_ylabel("y")


def build(cfg: FigureConfig):
    """Contour panel with trajectories, and the distance-from-the-line panel."""
    fig, axes = style.new_figure(1, 2, width=11.5, height=5.2, gridspec_kw={"width_ratios": [1.15, 1]})
    ax, axD = axes[0]
    draw_contours(ax)
    trajs = trajectories()
    colors = [
        style.OPTIMIZER_COLORS["gd"],
        "#1f77b4",
        style.OPTIMIZER_COLORS["obar"],
        style.OPTIMIZER_COLORS["nbar"],
        style.OPTIMIZER_COLORS["obar"],
    ]
    widths = [4.0, 1.8, 3.2, 1.4, 1.2]  # wide lines under narrow ones: GD and BAR share the line x = −y
    for c, lw, tr in zip(colors, widths, trajs, strict=True):
        xy = tr["xy"]
        faint = tr["ls"] == ":"
        ax.plot(
            xy[:, 0],
            xy[:, 1],
            color=c,
            ls=tr["ls"],
            lw=lw,
            marker=None if faint else "o",
            ms=2.2,
            markevery=10,
            alpha=0.8 if faint else 1.0,
            label=tr["label"],
        )
        ax.plot(*xy[0], "o", color=c, ms=6, mfc="white")
        axD.plot(
            np.arange(len(xy)),
            np.maximum(tr["line_distance"], DIST_FLOOR),
            color=c,
            ls=tr["ls"],
            lw=lw,
            label=tr["label"],
        )
    style.panel_label(ax, "(a) f = 30000(xy − 0.005)², trajectories (○ start)")
    ax.legend(loc="upper left", fontsize=7)
    axD.set_yscale("log")
    axD.set_ylim(DIST_FLOOR * 0.3, 1)
    axD.set_ylabel("distance from x = −y:  |x_t + y_t|/√2")
    axD.legend(loc="center right", fontsize=7.5)
    axD.axvline(BAR_STEPS, color="0.6", lw=0.8, ls="-.")
    axD.text(BAR_STEPS * 1.05, 1e-36, "μ_t reaches 0", fontsize=7.5, color="0.4")
    style.iteration_axis(axD)
    style.panel_label(axD, f"(b) leaving the line (exact 0 drawn at {DIST_FLOOR:g})")
    fig.suptitle(f"Fig. 4: GD (η = {LR:g}) on the 2-D example; the hard constraint |x| = |y| contains the trap x = −y")
    ends = "; ".join(f"{t['label']}: ends at ({t['end'][0]:.3g}, {t['end'][1]:.3g})" for t in trajs)
    data = {
        "settings": {"lr": LR, "steps": STEPS, "bar_mu0": BAR_MU, "bar_steps": BAR_STEPS, "base": "GD (SGD, no noise)"},
        "trajectories": [{k: v for k, v in t.items() if k != "ls"} for t in trajs],
        "caption": f"Fig. 4. Contours of f = 30000(xy − 0.005)² with |x| = |y| dashed. {ends}.",
    }
    return fig, data
