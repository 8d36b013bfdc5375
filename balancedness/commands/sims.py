"""``balancedness check`` and ``balancedness simulate``: the numpy side (theory checks, toy simulations)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from balancedness.commands.common import console, ensure_writable_file, err_console, fail_usage

class ProblemName(str, Enum):
    nop = "nop"
    op = "op"
    nop_layered = "nop-layered"
    op_layered = "op-layered"
    toy2d = "toy2d"


class OptimizerName(str, Enum):
    sgd = "sgd"
    sngd = "sngd"
    sam = "sam"
    msam = "msam"
    nbar = "nbar"
    obar = "obar"


class ScheduleName(str, Enum):
    constant = "constant"
    linear = "linear"
    cosine = "cosine"


def _parse_vector(text: Optional[str], name: str):
    if text is None:
        return None
    try:
        vals = [float(v) for v in text.replace(";", ",").split(",") if v.strip()]
    except ValueError:
        fail_usage(f"{name} must be comma-separated numbers, got {text!r}")
    import math

    if not vals or not all(math.isfinite(v) for v in vals):
        fail_usage(f"{name} must be finite numbers, got {text!r}")
    return vals


def check(
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the results as a JSON list, one object per claim."),
    quick: bool = typer.Option(False, "--quick", help="Fewer random points and 2e4-step toy runs (looser §7.3 thresholds)."),
    seed: int = typer.Option(0, help="Seed of the random instances."),
    only: Optional[List[str]] = typer.Option(None, "--only", help="Run only this check id (repeatable)."),
) -> None:
    """Check every claim of the paper numerically (spec §7) and print one row per claim."""
    from balancedness.checks import Kind, results_as_json, run_checks, select
    from balancedness.validation import integer

    try:
        total = len(select(only))
        integer("seed", seed, minimum=0)
        if json_out is not None:
            ensure_writable_file(json_out, "--json")
    except ValueError as e:
        fail_usage(e)
    with console.status(f"running {total} checks…") as status:
        done = []

        def progress(r):
            done.append(r)
            status.update(f"{len(done)}/{total} checks: {r.id} {r.status}")

        results = run_checks(quick=quick, seed=seed, only=only, progress=progress)
    table = Table(title=f"balancedness check ({'quick' if quick else 'full'}): paper claims, measured")
    for col in ("id", "paper", "claim", "measured", "tolerance", "result"):
        table.add_column(col, overflow="fold")
    for r in results:
        mark = "[green]PASS[/]" if r.status == "PASS" else "[bold red]FAIL[/]"
        table.add_row(r.id, r.ref, ("[yellow]finding:[/] " if r.kind is Kind.FINDING else "") + r.claim.removeprefix("finding: "),
                      r.measured, r.tolerance, mark)
    console.print(table)
    n_fail = sum(r.status != "PASS" for r in results)
    console.print(f"{len(results) - n_fail} passed, {n_fail} failed")
    if json_out is not None:
        from balancedness.io import write_json

        write_json(json_out, results_as_json(results))
    raise typer.Exit(code=1 if n_fail else 0)


def simulate(
    problem: ProblemName = typer.Option(ProblemName.nop, help="Toy problem (spec §1.5, §2.7–2.8, §5)."),
    rank: int = typer.Option(1, help="Rank r of the NOP factors."),
    layers: Optional[int] = typer.Option(None, help="Layers of nop-layered/op-layered (default 3)."),
    optimizer: OptimizerName = typer.Option(OptimizerName.sam, help="Optimizer."),
    rho: Optional[float] = typer.Option(None, help="SAM radius ρ (default 0.1 for NOP, 0.2 for OP, as in Fig. 1)."),
    m: int = typer.Option(1, help="m-sharpness chunks (msam); must divide --batch."),
    mu: float = typer.Option(1.0, help="BAR coefficient μ₀ (nbar, obar)."),
    schedule: ScheduleName = typer.Option(ScheduleName.constant, help="μ_t schedule of BAR."),
    alpha: Optional[List[float]] = typer.Option(None, help="Noise level α (repeatable; default 0)."),
    seeds: int = typer.Option(1, help="Number of seeds (0..N-1) per noise level."),
    batch: int = typer.Option(1, help="Noise draws per step."),
    lr: float = typer.Option(1e-4, help="Step size η."),
    steps: int = typer.Option(100_000, help="Number of steps T."),
    record_every: int = typer.Option(100, help="Record every K steps (0 and T always)."),
    flow: bool = typer.Option(False, "--flow", help="Solve the η→0 flow (ODE) instead of taking discrete steps."),
    t_end: Optional[float] = typer.Option(None, help="Flow horizon (default lr·steps)."),
    x0: Optional[str] = typer.Option(None, help="Initial x as comma-separated numbers (default the paper's [0.2,-0.1,0.3])."),
    y0: Optional[str] = typer.Option(None, help="Initial y (default -3·x0)."),
    out: Optional[Path] = typer.Option(None, help="Write the result here (.json, or .npz for all arrays)."),
) -> None:
    """Simulate an optimizer on a toy problem (discrete steps or the limiting flow)."""
    import numpy as np

    from balancedness.sims import make_optimizer, make_problem

    alphas = list(alpha) if alpha else [0.0]
    if out is not None and out.suffix not in (".json", ".npz"):
        fail_usage(f"--out must end in .json or .npz, got {str(out)!r}")
    if out is not None:
        try:
            ensure_writable_file(out, "--out")
        except ValueError as e:
            fail_usage(e)
    x0v, y0v = _parse_vector(x0, "--x0"), _parse_vector(y0, "--y0")
    try:
        x0a = None if x0v is None else np.array(x0v)
        y0a = None if y0v is None else np.array(y0v)
        if x0a is not None and y0a is None:
            y0a = -3.0 * x0a
        prob = make_problem(problem.value, rank=rank, layers=layers, x0=x0a, y0=y0a)
        rho_v = (0.1 if prob.kind == "nop" else 0.2) if rho is None else rho
        opt = make_optimizer(optimizer.value, rho=rho_v, m=m, mu=mu, schedule=schedule.value)
        from balancedness.sims.discrete import validate_run
        from balancedness.sims.grid import noise_levels, seed_list
        from balancedness.validation import number

        seed_list(seeds)
        noise_levels(prob, alphas)
        validate_run(steps, lr, record_every, batch, opt)
        if t_end is not None:
            number("t_end", t_end, strict=True)
    except ValueError as e:
        fail_usage(e)

    if flow:
        from balancedness.sims import solve_flow

        T = lr * steps if t_end is None else t_end
        with console.status(f"solving the {opt.name} flow to t = {T:g}…"):
            res = solve_flow(prob, opt, t_end=T, alpha=alphas, seeds=seeds, batch=batch,
                             n_records=min(steps // record_every, 2000) + 1)
    else:
        from balancedness.sims import simulate as run

        res = run(prob, opt, alpha=alphas, seeds=seeds, lr=lr, steps=steps, record_every=record_every,
                  batch=batch, progress=True)
    _summary(res)
    if out is not None:
        res.save(out)
        console.print(f"wrote {out}")
    if res.settings.get("interrupted"):
        err_console.print("[yellow]interrupted: the result holds the steps made so far[/]")
        raise typer.Exit(code=130)


def _summary(res) -> None:
    import numpy as np

    s = res.settings
    what = f"{s['optimizer']['name']} on {s['problem']} ({s['kind']}"
    what += f", t_end={s['t_end']:g}, status {s['status']})" if s["kind"] == "flow" else f", {s['steps']} steps, η={s['lr']:g})"
    table = Table(title=what)
    for col in ("alpha", "seed", "B_0", "B_T", "2|B_T|", "|B_T|/|B_0|", "excess loss_T"):
        table.add_column(col, justify="right")
    for i in range(res.n_runs):
        B = res.balancedness[i]
        ratio = abs(B[-1]) / abs(B[0]) if B[0] else float("nan")
        table.add_row(f"{res.alpha[i]:g}", str(res.seed[i]), f"{B[0]:.4f}", f"{B[-1]:.4f}", f"{2 * abs(B[-1]):.4f}",
                      f"{ratio:.3f}", f"{res.loss[i, -1]:.2e}")
    console.print(table)
    if np.any(~np.isfinite(res.balancedness)):
        err_console.print("[yellow]some trajectories diverged (non-finite values): lower --lr[/]")
