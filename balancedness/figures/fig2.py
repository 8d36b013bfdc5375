"""Figure 2: the threshold of balancedness (Cor. 2) and implicit vs explicit regularization.

(a) SAM's 2|B_t| on the NOP toy (11) (ρ = 0.1) for each α, with a dotted line at the time
    average (1/T)Σ_t 2|B̄_t| of the Cor. 2 threshold (21) in its ρ → 0 closed form
    B̄ = ½(r‖x‖² − ‖y‖²/r) (``theory.cor2_threshold``), evaluated along each SAM trajectory.
    Our choice of r: r² = E_ξ‖g_x‖² / E_ξ‖g_y‖², the noise-averaged squared norms of the
    stochastic gradient (closed form below, spec §3 data-responsiveness). The noise-free gradient
    vanishes at the minimizer and ignores the noise that sets the level SAM stops at; the
    one-sample stochastic r is heavy-tailed. Both alternatives' averages are kept in the data.
    Units: 2|B̄| like the curves (the paper leaves the unit open, spec §8.2).
(b) SGD, SAM, oBAR and nBAR (SGD base, μ = 1, constant schedule; spec §7.3(e)) on the same toy at
    α = 1: 2|B_t| (left) and the excess population loss ‖xyᵀ − A‖² (right).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from balancedness.figures import style
from balancedness.figures.runs import RHO, FigureConfig, settings_of, toy_problem, toy_run, two_abs_b
from balancedness.sims import SimResult
from balancedness.sims.theory import cor2_threshold, cor2_threshold_expected

#: Fig. 2(b): the noise level and the BAR coefficient μ₀ (constant schedule).
BAR_ALPHA, BAR_MU = 1.0, 1.0
BAR_OPTIMIZERS = ("sgd", "sam", "obar", "nbar")


def thresholds(res: SimResult, i: int, steps: int) -> dict[str, np.ndarray]:
    """2|B̄_t| along trajectory i with r from the expected, the noise-free and the one-sample gradient."""
    p = toy_problem("nop")
    X, Y, a = res.x[i], res.y[i], np.full(len(res.t), res.alpha[i])
    noise = p.noise_sequence(int(res.seed[i]), steps + 1)[res.t.astype(int), 0]
    with np.errstate(all="ignore"):
        out = {
            "expected": cor2_threshold_expected(p, X, Y, float(res.alpha[i])),
            "noise_free": cor2_threshold(X, Y, *p.grads(X, Y, a, None)[:2]),
            "stochastic": cor2_threshold(X, Y, *p.grads(X, Y, a, noise)[:2]),
        }
    return {k: 2 * np.abs(v) for k, v in out.items()}


def panel_a(ax, cfg: FigureConfig) -> list[dict]:
    res = toy_run("nop", "sam", cfg, cfg.alphas)
    rows = []
    for a in cfg.alphas:
        idx = np.flatnonzero(res.select(alpha=a))
        thr = [thresholds(res, int(i), cfg.steps) for i in idx]
        avg = {k: float(np.nanmean([np.nanmean(t[k]) for t in thr])) for k in thr[0]}
        curve = style.summarize(two_abs_b(res, res.select(alpha=a)))
        color = style.alpha_color(a, cfg.alphas)
        style.plot_band(ax, res.t, curve, color=color, label=f"SAM, α={a:g}", floor=style.LOG_FLOOR)
        ax.axhline(
            max(avg["expected"], style.LOG_FLOOR),
            color=color,
            ls=":",
            lw=1.6,
            label=f"avg 2|B̄| = {avg['expected']:.3g}",
        )
        rows.append(
            {
                "alpha": a,
                "t": res.t,
                "two_abs_B": curve,
                "final_two_abs_B": float(curve["mean"][-1]),
                "threshold_time_avg_two_abs": avg,
                "threshold_expected_mean_curve": np.nanmean([t["expected"] for t in thr], axis=0),
            }
        )
    ax.set_yscale("log")
    ax.set_ylim(bottom=style.LOG_FLOOR * 0.7)
    ax.set_ylabel("2|B_t|")
    style.iteration_axis(ax)
    style.panel_label(ax, f"(a) SAM (ρ={RHO['nop']:g}) and the Cor. 2 threshold")
    ax.legend(ncol=len(cfg.alphas), loc="lower left", fontsize=7.5)
    return rows


def panel_b(axB, axL, cfg: FigureConfig) -> list[dict]:
    rows = []
    for opt in BAR_OPTIMIZERS:
        alphas = cfg.alphas if opt in ("sgd", "sam") and BAR_ALPHA in cfg.alphas else (BAR_ALPHA,)
        res = toy_run("nop", opt, cfg, alphas, mu=BAR_MU if opt in ("nbar", "obar") else 0.0)
        mask = res.select(alpha=BAR_ALPHA)
        color = style.OPTIMIZER_COLORS[opt]
        label = opt.upper() if opt in ("sgd", "sam") else f"{opt[0]}BAR (μ={BAR_MU:g})"
        B = style.summarize(two_abs_b(res, mask))
        loss = style.summarize(res.loss[mask])
        style.plot_band(axB, res.t, B, color=color, label=label, floor=style.LOG_FLOOR)
        style.plot_band(axL, res.t, loss, color=color, label=label, floor=1e-8)
        rows.append(
            {
                "optimizer": opt,
                "label": label,
                "t": res.t,
                "two_abs_B": B,
                "excess_loss": loss,
                "final_two_abs_B": float(B["mean"][-1]),
                "final_excess_loss": float(loss["mean"][-1]),
            }
        )
    axB.set_yscale("log")
    axB.set_ylim(bottom=style.LOG_FLOOR * 0.7)
    axB.set_ylabel("2|B_t|")
    style.panel_label(axB, f"(b) implicit vs explicit regularization, α={BAR_ALPHA:g}")
    axL.set_yscale("log")
    axL.set_ylabel("excess loss ‖x_t y_tᵀ − A‖²")
    axL.set_title("(b) fit: population loss minus noise floor")
    for ax in (axB, axL):
        style.iteration_axis(ax)
    axB.legend(loc="lower left")
    return rows


def build(cfg: FigureConfig):
    """The three-panel figure ((a), (b) balancedness, (b) loss) and its data."""
    fig, axes = style.new_figure(1, 3, width=14.0, height=4.0)
    data: dict[str, Any] = {
        "settings": settings_of(
            cfg,
            rho=RHO["nop"],
            bar_alpha=BAR_ALPHA,
            bar_mu=BAR_MU,
            bar_schedule="constant",
            threshold="rho->0 closed form (21), r^2 = E||g_x||^2 / E||g_y||^2, "
            "time-averaged 2|Bbar| over the records and seeds",
        )
    }
    data["a"] = panel_a(axes[0, 0], cfg)
    data["b"] = panel_b(axes[0, 1], axes[0, 2], cfg)
    fig.suptitle(f"Fig. 2: NOP toy (11), η = {cfg.lr:g}, T = {cfg.steps:g}, {cfg.seeds} seeds (mean, min–max band)")
    a = "; ".join(
        f"α={r['alpha']:g}: final 2|B_T| {r['final_two_abs_B']:.3g} vs avg 2|B̄| "
        f"{r['threshold_time_avg_two_abs']['expected']:.3g}"
        for r in data["a"]
    )
    b = ", ".join(f"{r['label']} {r['final_two_abs_B']:.3g} (loss {r['final_excess_loss']:.1e})" for r in data["b"])
    data["caption"] = (
        "Fig. 2. (a) SAM's 2|B_t| with dotted lines at the time-averaged 2|B̄_t| of Cor. 2 "
        f"(ρ→0 form, expected gradient norms): {a}. (b) 2|B_T| at α={BAR_ALPHA:g}: {b}."
    )
    return fig, data
