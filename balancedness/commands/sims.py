"""``balancedness check`` and ``balancedness simulate``: the numpy side (theory checks, toy simulations)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from balancedness.sims.directions import DirectionFn

from enum import Enum
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from balancedness.commands.common import console, ensure_writable_file, err_console, fail_usage


class ProblemName(str, Enum):
    nop = "nop"
    op = "op"
    nop_layered = "nop-layered"
    op_layered = "op-layered"
    toy2d = "toy2d"


class ScheduleName(str, Enum):
    constant = "constant"
    linear = "linear"
    cosine = "cosine"


class NoiseScheduleName(str, Enum):
    cosine = "cosine"
    constant = "constant"


def _parse_vector(text: str | None, name: str):
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


def _directions() -> str:
    """The registered directions' names (``sims.directions.DIRECTIONS``), for help texts."""
    from balancedness.sims.directions import DIRECTIONS

    return ", ".join(DIRECTIONS)


REPLACE_HELP = (
    f"Run your own direction function in place of the built-in optimizer NAME ({_directions()}). "
    "Repeatable. Contract and example: docs/sims.md."
)


def _load_replacements(texts: list[str] | None) -> tuple[dict, dict]:
    """``--replace NAME=FILE.py:FUNCTION`` values → ({name: function}, {name: "FILE.py:FUNCTION"}), each loaded and
    checked against the contract (ValueError naming the bad value)."""
    from balancedness.sims.plugins import load_replacement

    fields: dict[str, DirectionFn] = {}
    labels: dict[str, str] = {}
    for text in texts or []:
        name, field, label = load_replacement(text)
        if name in fields:
            raise ValueError(f"--replace names {name!r} twice ({labels[name]} and {label})")
        fields[name], labels[name] = field, label
    return fields, labels


def check(
    json_out: Path | None = typer.Option(
        None, "--json", help="Also write the results as a JSON list, one object per claim."
    ),
    quick: bool = typer.Option(
        False, "--quick", help="Fewer random points and 2e4-step toy runs (looser §7.3 thresholds)."
    ),
    seed: int = typer.Option(0, help="Seed of the random instances."),
    only: list[str] | None = typer.Option(None, "--only", help="Run only this check id (repeatable)."),
    replace: list[str] | None = typer.Option(
        None,
        "--replace",
        metavar="NAME=FILE.py:FUNCTION",
        help=REPLACE_HELP + " Reports which of the paper's claims it satisfies: the implementation checks that run "
        "NAME (the checks named with --only instead).",
    ),
    brief: bool = typer.Option(
        False, "--brief", help="One line per check (result, id, what was measured) instead of tables."
    ),
) -> None:
    """Check every claim of the paper numerically (spec §7): implementation checks, math checks, findings."""
    from balancedness.checks import Kind, results_as_json, run_checks, select
    from balancedness.validation import integer

    try:
        integer("seed", seed, minimum=0)
        if json_out is not None:
            ensure_writable_file(json_out, "--json")
        fields, labels = _load_replacements(replace)
        total = len(select(only, fields.keys() if fields else None))
    except ValueError as e:
        fail_usage(e)
    with console.status(f"running {total} checks…") as status:
        done = []

        def progress(r):
            done.append(r)
            status.update(f"{len(done)}/{total} checks: {r.id} {r.status}")

        results = run_checks(quick=quick, seed=seed, only=only, progress=progress, replace=fields)
    scale = "quick" if quick else "full"
    using = "; ".join(f"{n} = {lab}" for n, lab in labels.items())
    sections = [
        (Kind.IMPLEMENTATION, "Implementation checks: they run the optimizers (a broken one fails them)"),
        (Kind.MATH, "Math checks: closed forms and inequalities of the paper, on their own"),
        (Kind.FINDING, "Findings: where the paper is loose or wrong (PASS: our counter-evidence reproduces)"),
    ]
    for kind, title in sections:
        rows = [r for r in results if r.kind is kind]
        title = f"{title} ({scale}{'; ' + using if using else ''})"
        if rows and brief:
            console.print(title, soft_wrap=True, markup=False)
            for r in rows:
                console.print(f"  {r.status}  {r.id}: {r.measured}", soft_wrap=True, markup=False)
        elif rows:
            console.print(_verdict_table(rows, title, runs=kind is not Kind.MATH))
    for kind, _ in sections:
        rows = [r for r in results if r.kind is kind]
        if rows:
            n_fail = sum(not r.passed for r in rows)
            good, bad = ("reproduced", "not reproduced") if kind is Kind.FINDING else ("passed", "failed")
            what = "findings" if kind is Kind.FINDING else f"{kind.value} checks"
            console.print(f"{what}: {len(rows) - n_fail} {good}, {n_fail} {bad}", soft_wrap=True)
    for name, label in labels.items():
        console.print(_replacement_summary(name, label, results), soft_wrap=True)
    if json_out is not None:
        from balancedness.io import write_json

        write_json(json_out, results_as_json(results))
    raise typer.Exit(code=1 if any(not r.passed for r in results) else 0)


def _replacement_summary(name: str, label: str, results) -> str:
    """Which claims that run ``name`` the replacement satisfies: behaviour first, then the exact ones."""
    from balancedness.checks import Kind

    mine = [r for r in results if r.kind is Kind.IMPLEMENTATION and name in r.runs]
    lines = [f"{label} as {name}:"]
    for exact, what in (
        (False, "behaviour (balances, direction, bounds)"),
        (True, "exact identities of the paper's update (a variant is expected to differ)"),
    ):
        rows = [r for r in mine if r.exact is exact]
        missed = [r.id for r in rows if not r.passed]
        if rows:
            lines.append(
                f"  {what}: {len(rows) - len(missed)} of {len(rows)} satisfied"
                + (f"; not: {', '.join(missed)}" if missed else "")
            )
    return "\n".join(lines)


def _verdict_table(rows, title: str, runs: bool) -> Table:
    table = Table(title=title)
    columns = ("id", "paper", "claim") + (("runs",) if runs else ()) + ("measured", "tolerance", "result")
    for col in columns:
        table.add_column(col, overflow="fold")
    for r in rows:
        mark = "[green]PASS[/]" if r.passed else "[bold red]FAIL[/]"
        cells = [r.id, r.ref, escape(r.claim.removeprefix("finding: "))]
        cells += [(", ".join(r.runs) or "-") + (" (exact)" if r.exact else "")] if runs else []
        table.add_row(*cells, escape(r.measured), r.tolerance, mark)
    return table


def simulate(
    problem: ProblemName = typer.Option(ProblemName.nop, help="Toy problem (spec §1.5, §2.7–2.8, §5)."),
    rank: int = typer.Option(1, help="Rank r of the NOP factors."),
    layers: int | None = typer.Option(None, help="Layers of nop-layered/op-layered (default 3)."),
    optimizer: str = typer.Option("sam", help=f"Optimizer: a registered direction ({_directions()})."),
    rho: float | None = typer.Option(
        None,
        help="SAM/ASAM radius ρ (default 0.1 for NOP, 0.2 for OP, as in Fig. 1); "
        "Bi-LoRA's clip radius (default 0.05, its paper's).",
    ),
    m: int = typer.Option(1, help="m-sharpness chunks (msam); must divide --batch."),
    mu: float = typer.Option(1.0, help="BAR coefficient μ₀ (nbar, obar)."),
    schedule: ScheduleName = typer.Option(ScheduleName.constant, help="μ_t schedule of BAR."),
    sigma: float = typer.Option(0.05, help="Flat-LoRA's noise scale σ (its paper's 0.05)."),
    noise_schedule: NoiseScheduleName = typer.Option(
        NoiseScheduleName.cosine, help="Flat-LoRA's ramp of σ: cosine (the official ½(1 − cos πt/T)) or constant."
    ),
    eta_a: float = typer.Option(0.01, "--eta-a", help="ASAM's offset η_a in T = |w| + η_a (official code 0.01)."),
    kappa: float = typer.Option(1.0, help="Bi-LoRA's η₂/η₁, the auxiliary's ascent step over the primary's."),
    rank2: int = typer.Option(1, help="Bi-LoRA's auxiliary rank r₂."),
    aux_init: float = typer.Option(0.01, help="Std of Bi-LoRA's initial auxiliary X₂ (Y₂ = 0)."),
    alpha: list[float] | None = typer.Option(None, help="Noise level α (repeatable; default 0)."),
    seeds: int = typer.Option(1, help="Number of seeds (0..N-1) per noise level."),
    batch: int = typer.Option(1, help="Noise draws per step."),
    lr: float = typer.Option(1e-4, help="Step size η."),
    steps: int = typer.Option(100_000, help="Number of steps T."),
    record_every: int = typer.Option(100, help="Record every K steps (0 and T always)."),
    flow: bool = typer.Option(False, "--flow", help="Solve the η→0 flow (ODE) instead of taking discrete steps."),
    t_end: float | None = typer.Option(None, help="Flow horizon (default lr·steps)."),
    x0: str | None = typer.Option(
        None, help="Initial x as comma-separated numbers (default the paper's [0.2,-0.1,0.3])."
    ),
    y0: str | None = typer.Option(None, help="Initial y (default -3·x0)."),
    out: Path | None = typer.Option(None, help="Write the result here (.json, or .npz for all arrays)."),
    replace: list[str] | None = typer.Option(None, "--replace", metavar="NAME=FILE.py:FUNCTION", help=REPLACE_HELP),
    max_memory: float | None = typer.Option(
        None,
        "--max-memory",
        metavar="GB",
        help="Refuse a run estimated to need more memory (default: half of this machine's memory).",
    ),
) -> None:
    """Simulate an optimizer on a toy problem (discrete steps or the limiting flow)."""
    import numpy as np

    from balancedness.sims import make_optimizer, make_problem
    from balancedness.sims.directions import replaced_directions

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
        rho_v = (0.05 if optimizer == "bi-lora" else 0.1 if prob.kind == "nop" else 0.2) if rho is None else rho
        opt = make_optimizer(
            optimizer,
            rho=rho_v,
            m=m,
            mu=mu,
            schedule=schedule.value,
            sigma=sigma,
            noise_schedule=noise_schedule.value,
            eta_a=eta_a,
            kappa=kappa,
            rank2=rank2,
            aux_init=aux_init,
        )
        from balancedness.sims.discrete import validate_run
        from balancedness.sims.grid import noise_levels, seed_list
        from balancedness.validation import number

        seed_list(seeds)
        noise_levels(prob, alphas)
        validate_run(steps, lr, record_every, batch, opt)
        if t_end is not None:
            number("t_end", t_end, strict=True)
        _check_memory(prob, len(alphas), seeds, steps, record_every, batch, opt.m, flow, out, max_memory)
        fields, labels = _load_replacements(replace)
    except ValueError as e:
        fail_usage(e)

    with replaced_directions(fields):
        res = _run(prob, opt, flow, t_end, lr, steps, record_every, alphas, seeds, batch)
    if labels:
        res.settings["replaced"] = labels
    _summary(res)
    if out is not None:
        res.save(out)
        console.print(f"wrote {out}")
    if res.settings.get("interrupted"):
        err_console.print("[yellow]interrupted: the result holds the steps made so far[/]")
        raise typer.Exit(code=130)


def _check_memory(
    prob,
    n_alpha: int,
    seeds: int,
    steps: int,
    record_every: int,
    batch: int,
    m: int,
    flow: bool,
    out: Path | None,
    max_memory: float | None,
) -> None:
    """ValueError, before any step, when the run's estimated peak memory exceeds ``max_memory`` GB (default half
    of the machine's memory): a grid too large for the machine ends in a sentence, not a MemoryError."""
    import os

    from balancedness.sims.discrete import memory_estimate
    from balancedness.sims.recording import record_times
    from balancedness.validation import number

    if max_memory is not None:
        number("max_memory", max_memory, strict=True)
    limit = max_memory * 1e9 if max_memory is not None else os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2
    records = min(steps // record_every, 2000) + 1 if flow else len(record_times(steps, record_every))
    trajectories = n_alpha * seeds
    need = memory_estimate(
        prob,
        trajectories,
        0 if flow else seeds,
        records,
        batch,
        m,
        text_output=out is not None and out.suffix == ".json",
    )
    if need > limit:
        which = "--max-memory" if max_memory is not None else "--max-memory, default half of this machine"
        raise ValueError(
            f"this run would need about {need / 1e9:.1f} GB of memory ({trajectories:,} trajectories × "
            f"{records:,} records{'' if flow else ', noise drawn 1,024 steps ahead'}), more than the "
            f"limit of {limit / 1e9:.1f} GB ({which}); use fewer --seeds or --alpha values or a larger "
            "--record-every, or raise --max-memory"
        )


def _run(prob, opt, flow: bool, t_end, lr, steps, record_every, alphas, seeds, batch):
    """The discrete run or the flow of ``simulate``."""
    if flow:
        from balancedness.sims import solve_flow

        T = lr * steps if t_end is None else t_end
        with console.status(f"solving the {opt.name} flow to t = {T:g}…"):
            return solve_flow(
                prob,
                opt,
                t_end=T,
                alpha=alphas,
                seeds=seeds,
                batch=batch,
                n_records=min(steps // record_every, 2000) + 1,
            )
    from balancedness.sims import simulate as run

    return run(
        prob, opt, alpha=alphas, seeds=seeds, lr=lr, steps=steps, record_every=record_every, batch=batch, progress=True
    )


def _summary(res) -> None:
    import numpy as np

    s = res.settings
    what = f"{s['optimizer']['name']} on {s['problem']} ({s['kind']}"
    what += (
        f", t_end={s['t_end']:g}, status {s['status']})"
        if s["kind"] == "flow"
        else f", {s['steps']} steps, η={s['lr']:g})"
    )
    table = Table(title=what)
    for col in ("alpha", "seed", "B_0", "B_T", "2|B_T|", "|B_T|/|B_0|", "excess loss_T"):
        table.add_column(col, justify="right")
    for i in range(res.n_runs):
        B = res.balancedness[i]
        ratio = abs(B[-1]) / abs(B[0]) if B[0] else float("nan")
        table.add_row(
            f"{res.alpha[i]:g}",
            str(res.seed[i]),
            f"{B[0]:.4f}",
            f"{B[-1]:.4f}",
            f"{2 * abs(B[-1]):.4f}",
            f"{ratio:.3f}",
            f"{res.loss[i, -1]:.2e}",
        )
    console.print(table)
    if np.any(~np.isfinite(res.balancedness)):
        err_console.print("[yellow]some trajectories diverged (non-finite values): lower --lr[/]")
