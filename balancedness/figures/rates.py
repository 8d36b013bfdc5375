"""Beyond the paper: the measured rate dB/dt against the theorems' leading terms and error bounds.

Along the SAM flow on the deterministic toys (α = 0; ``solve_flow``), at each recorded point:

* measured: the exact rate dB/dt = ⟨x, ẋ⟩ − ⟨y, ẏ⟩ of the SAM field (``theory.dB_dt``);
* (a) NOP, ρ = 0.1: Thm 2 (5) leading term ρ(‖g_x‖² − ‖g_y‖²)/sqrt(‖g_x‖² + ‖g_y‖²), with the band
  ± the explicit |A_t| ≤ Lρ²(‖x‖+‖y‖)² + Lρ³(‖x‖+‖y‖)/2 (``thm2_A_bound``, spec §3);
* (b) OP, ρ = 0.2: Lemma 2 (32) leading term −2ρ|f′|B/sqrt(‖x‖² + ‖y‖²), with the band
  ± 2Lρ²|B|(1 + ρ/(2 sqrt(‖x‖² + ‖y‖²))) (``lemma2_A_bound``).

Symmetric-log y axes (the rates change sign and span decades). The data file also holds the
measured |A_t| / bound, which must stay ≤ 1.

Once a deterministic flow reaches its minimizer the SAM field is discontinuous there (NOP: g → 0
in ρ g/‖g‖; OP: sgn f′ flips at f′ = 0, eq. (7)) and ``solve_flow`` reports a sliding mode. The
theorems' rates are statements about the classical flow, so only t before ``sliding_from`` is
compared; the sliding part is shaded and left out (the OP flow reaches f′ = 0 at t ≈ 0.85,
hence its shorter horizon).
"""

from __future__ import annotations

import numpy as np

from balancedness.figures import style
from balancedness.figures.runs import RHO, FigureConfig, toy_problem
from balancedness.sims import make_optimizer, solve_flow
from balancedness.sims.theory import dB_dt, lemma2_A_bound, lemma2_leading, thm2_A_bound, thm2_leading

T_END = {"nop": 10.0, "op": 1.5}
N_RECORDS = 601


def along_flow(kind: str, t_end: float) -> dict:
    """Measured dB/dt, the leading term and the A_t bound along the SAM flow of one toy."""
    p, rho = toy_problem(kind), RHO[kind]
    opt = make_optimizer("sam", rho=rho)
    f = solve_flow(p, opt, t_end=t_end, n_records=N_RECORDS)
    X, Y = f.x[0], f.y[0]
    zeros = np.zeros(len(X))
    gX, gY, G = p.grads(X, Y, zeros, None)
    measured = dB_dt(p, opt, X, Y, zeros)
    if kind == "nop":
        lead, bound = thm2_leading(gX, gY, rho), thm2_A_bound(X, Y, rho, p.lipschitz)
    else:
        lead, bound = lemma2_leading(G, X, Y, rho), lemma2_A_bound(X, Y, rho, p.lipschitz)
    sliding_from = f.settings["runs"][0]["sliding_from"]
    keep = f.t < (np.inf if sliding_from is None else sliding_from)
    with np.errstate(all="ignore"):
        ratio = np.where(bound > 0, np.abs(measured - lead) / bound, 0.0)
    return {
        "t": f.t[keep],
        "measured": measured[keep],
        "leading": lead[keep],
        "A_bound": bound[keep],
        "A_over_bound": ratio[keep],
        "max_A_over_bound": float(np.nanmax(ratio[keep])),
        "rho": rho,
        "t_end": t_end,
        "sliding_from": sliding_from,
        "flow_status": f.settings["status"],
    }


def draw(ax, d: dict, label: str, theorem: str) -> None:
    t = d["t"]
    ax.fill_between(
        t,
        d["leading"] - d["A_bound"],
        d["leading"] + d["A_bound"],
        color=style.OPTIMIZER_COLORS["sam"],
        alpha=0.18,
        lw=0,
        label=f"{theorem} leading term ± explicit |A_t| bound",
    )
    ax.plot(t, d["leading"], color=style.OPTIMIZER_COLORS["sam"], lw=1.4, label=f"{theorem} leading term")
    ax.plot(t, d["measured"], color="k", ls="--", lw=1.2, label="measured dB/dt (exact SAM field)")
    scale = float(np.nanmax(np.abs(d["measured"]))) * 1e-3
    ax.set_yscale("symlog", linthresh=max(scale, 1e-12))
    if d["sliding_from"] is not None:
        ax.axvspan(d["sliding_from"], d["t_end"], color="0.85", lw=0, label="sliding mode (not compared)")
    ax.set_xlim(0, d["t_end"])
    ax.set_xlabel("time t (SAM flow, α = 0)")
    ax.set_ylabel("dB/dt")
    style.panel_label(ax, label)
    ax.legend(loc="best")


def build(cfg: FigureConfig):
    fig, axes = style.new_figure(1, 2, width=11.5, height=4.0)
    nop, op = along_flow("nop", T_END["nop"]), along_flow("op", T_END["op"])
    draw(axes[0, 0], nop, f"(a) NOP toy, ρ={nop['rho']:g}: Thm 2 (5)", "Thm 2")
    draw(axes[0, 1], op, f"(b) OP toy, ρ={op['rho']:g}: Lemma 2 (32)", "Lemma 2")
    fig.suptitle("dB/dt along the SAM flow: measured vs leading term, band = ± the explicit A_t bound (spec §3)")
    data = {
        "nop": nop,
        "op": op,
        "settings": {"t_end": T_END, "alpha": 0.0, "rho": RHO},
        "caption": (
            "Rates. Measured dB/dt along the SAM flow against the leading term of Thm 2 (NOP) and Lemma 2 (OP); "
            f"max |measured − leading| / bound = {nop['max_A_over_bound']:.2f} (NOP), "
            f"{op['max_A_over_bound']:.2f} (OP), i.e. inside the band, up to where the flows reach their minimizers "
            f"(t = {nop['sliding_from'] or T_END['nop']:.3g} NOP, {op['sliding_from'] or T_END['op']:.3g} OP)."
        ),
    }
    return fig, data
