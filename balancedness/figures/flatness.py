"""Which flatness methods regularize balancedness: 2|B_t| for SGD, SAM, nBAR, oBAR, Flat-LoRA, Bi-LoRA and ASAM
on the NOP and OP toys at the paper's scale, each beside the theory's prediction (spec/flatness-methods.md §5).

Rows: (a) the NOP toy (11), (b) the OP toy (12); η = 1e-4, T = 1e5 (``--quick``: 2e4), x₀ and y₀ of the paper.
Left, α = 0: the discrete run (lines) and the method's η → 0 flow (hollow markers, ``solve_flow``; Flat-LoRA's is
the flow of its expected direction, Bi-LoRA's carries its auxiliary). Middle, α = 1 (one noise draw per step):
the discrete runs, mean over seeds with the min–max band, and, dotted, the prediction that holds for every draw:
2|B₀| for the W-space methods (SGD, Flat-LoRA, Bi-LoRA: the flow conserves B exactly, [FM] §1 Lemma). Right, α = 1:
2|B_t| of Flat-LoRA, Bi-LoRA and ASAM minus SGD's on the same draws (the prediction: 0 up to the O(η) drift).

Hyper-parameters: SAM and ASAM ρ = 0.1 (NOP) / 0.2 (OP) as in Fig. 1, ASAM η_a = 0.01 (official code);
nBAR/oBAR μ₀ = 0.1, constant (spec §7.3(e)); Flat-LoRA σ = 0.05 with the cosine ramp, Bi-LoRA ρ = 0.05,
r₂ = 1, η₂ = η₁ (their papers' defaults). The flatness methods step with numpy, so this figure takes minutes at
the paper's scale and is not part of ``figures all`` (``balancedness figures flatness``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from balancedness.figures import style
from balancedness.figures.runs import RHO, FigureConfig, settings_of, toy_problem, two_abs_b
from balancedness.sims import simulate, solve_flow

#: The methods in drawing order, and their hyper-parameters per toy (``kind`` → keyword arguments).
METHODS = ("sgd", "sam", "nbar", "obar", "flat-lora", "bi-lora", "asam")
#: The methods whose flow conserves B exactly (W-space perturbations): their prediction is the constant 2|B₀|.
W_SPACE = ("sgd", "flat-lora", "bi-lora")
COLORS = {**style.OPTIMIZER_COLORS, "flat-lora": "#e07b00", "bi-lora": "#8c564b", "asam": "#17becf"}
BAR_MU = 0.1
ALPHAS = (0.0, 1.0)


def hyper(method: str, kind: str) -> dict:
    """The hyper-parameters of ``method`` on toy ``kind`` (module docstring)."""
    if method in ("sam", "asam"):
        return {"rho": RHO[kind], **({"eta_a": 0.01} if method == "asam" else {})}
    if method in ("nbar", "obar"):
        return {"mu": BAR_MU}
    if method == "flat-lora":
        return {"sigma": 0.05, "noise_schedule": "cosine"}
    if method == "bi-lora":
        return {"rho": 0.05}
    return {}


def curves(kind: str, cfg: FigureConfig) -> list[dict]:
    """Per method: the discrete 2|B_t| at each α (seed summary) and the α = 0 flow's 2|B_t| at the same times."""
    p, out = toy_problem(kind), []
    for method in METHODS:
        kw = hyper(method, kind)
        run = simulate(
            p,
            method,
            alpha=list(ALPHAS),
            seeds=cfg.seeds,
            lr=cfg.lr,
            steps=cfg.steps,
            record_every=cfg.record_every,
            progress=cfg.progress,
            **kw,
        )
        flow = solve_flow(p, method, t_end=cfg.horizon, t_eval=run.t * cfg.lr, **kw)
        out.append(
            {
                "method": method,
                "hyper": kw,
                "t": run.t,
                "two_abs_B": {f"{a:g}": style.summarize(two_abs_b(run, run.select(alpha=a))) for a in ALPHAS},
                "flow_two_abs_B": 2 * np.abs(flow.balancedness[0]),
                "flow_status": flow.settings["status"],
                "two_abs_B0": float(2 * abs(run.balancedness[0, 0])),
            }
        )
    return out


def draw_row(axes, kind: str, rows: list[dict], label: str) -> None:
    """Left: α = 0 with each flow (hollow markers); middle: α = 1 with the W-space constant; right: α = 1, the gap to
    SGD's run on the same draws of Flat-LoRA, Bi-LoRA and ASAM (the W-space prediction: 0 up to O(η))."""
    ax0, ax1, ax2 = axes
    sgd = next(c for c in rows if c["method"] == "sgd")
    marks = np.linspace(0, len(sgd["t"]) - 1, 11).astype(int)
    for c in rows:
        color, name = COLORS[c["method"]], c["method"]
        lw = 3.2 if name == "sgd" else 1.4
        style.plot_band(ax0, c["t"], c["two_abs_B"]["0"], color=color, label=name, lw=lw)
        ax0.plot(c["t"][marks], c["flow_two_abs_B"][marks], ls="none", marker="o", mfc="none", color=color, ms=5)
        style.plot_band(ax1, c["t"], c["two_abs_B"]["1"], color=color, label=name, lw=lw)
        if name in W_SPACE:
            ax1.axhline(c["two_abs_B0"], color=color, ls=":", lw=1.0)
        if name in ("flat-lora", "bi-lora", "asam"):
            ax2.plot(c["t"], c["two_abs_B"]["1"]["mean"] - sgd["two_abs_B"]["1"]["mean"], color=color, label=name)
    ax2.axhline(0.0, color=COLORS["sgd"], ls=":", lw=1.0)
    ax0.set_title(f"({label}) {kind.upper()}, α = 0: discrete (lines), η→0 flow (○)")
    ax1.set_title(f"({label}) {kind.upper()}, α = 1; dotted: 2|B₀| (W-space prediction)")
    ax2.set_title(f"({label}) {kind.upper()}, α = 1: 2|B_t| − 2|B_t|(SGD), same draws")
    for ax in (ax0, ax1):
        ax.set_ylabel("2|B_t| = |‖x_t‖² − ‖y_t‖²|")
        ax.set_ylim(bottom=0.0)
    ax2.set_ylabel("gap to SGD (mean over seeds)")
    for ax in axes:
        style.iteration_axis(ax)
    ax0.legend(ncol=2, loc="lower left")
    ax2.legend(loc="best")


def build(cfg: FigureConfig):
    """The 2×2 figure and its data."""
    fig, axes = style.new_figure(2, 3, width=15.0, height=3.9)
    data: dict[str, Any] = {
        "settings": settings_of(
            cfg,
            alphas=list(ALPHAS),
            hyper={k: {m: hyper(m, k) for m in METHODS} for k in RHO},
            log_floor=style.LOG_FLOOR,
        )
    }
    for row, (kind, label) in enumerate((("nop", "a"), ("op", "b"))):
        rows = curves(kind, cfg)
        draw_row(axes[row], kind, rows, label)
        data[kind] = rows
    fig.suptitle(
        f"Which flatness methods balance? 2|B_t| beside the theory (η = {cfg.lr:g}, T = {cfg.steps:g}, "
        f"{cfg.seeds} seeds)"
    )
    data["caption"] = caption(data)
    return fig, data


def caption(data: dict) -> str:
    """2|B_T|/2|B_0| of each method at α = 1 and its flow's at α = 0, per toy."""
    parts = []
    for kind in ("nop", "op"):
        cells = [
            f"{c['method']} {c['two_abs_B']['1']['mean'][-1] / c['two_abs_B0']:.3f}"
            f" (flow α=0 {c['flow_two_abs_B'][-1] / c['two_abs_B0']:.3f})"
            for c in data[kind]
        ]
        parts.append(f"{kind.upper()}: " + ", ".join(cells))
    gaps = []
    for kind in ("nop", "op"):
        sgd = next(c for c in data[kind] if c["method"] == "sgd")["two_abs_B"]["1"]["mean"]
        gaps += [
            f"{kind.upper()} {c['method']} {np.max(np.abs(c['two_abs_B']['1']['mean'] - sgd)):.1e}"
            for c in data[kind]
            if c["method"] in ("flat-lora", "bi-lora", "asam")
        ]
    return (
        "2|B_T|/2|B_0| at α = 1 (the α = 0 flow's in brackets): "
        + "; ".join(parts)
        + ". Largest |2|B_t| − 2|B_t|(SGD)| at α = 1, same draws: "
        + ", ".join(gaps)
        + ". On OP, nBAR and oBAR take the same sign (‖g_x‖ ≥ ‖g_y‖ ⇔ ‖y‖ ≥ ‖x‖), so their curves coincide."
    )
