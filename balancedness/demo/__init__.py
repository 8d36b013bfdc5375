"""``make demo``: run the claim checks and regenerate every figure, then write ``DIR/REPORT.md``.

    python -m balancedness.demo --out demo [--quick]

The report is a list of sections. Each section is a function ``(DemoContext) -> str`` that does its
own work (writing files under ``ctx.out``) and returns markdown; ``SECTIONS`` holds them in report
order. To add a section (e.g. LoRA finetuning), write such a function in its own module and
``register_section`` it, or append it to ``SECTIONS`` before calling :func:`main`. Exit code: 0, or
1 if a check failed (the report is written either way), 2 for bad usage.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from balancedness.io import write_json


@dataclass
class DemoContext:
    """What a section gets: the output folder, the scale, a console, and a place to report failures."""

    out: Path
    quick: bool = False
    console: Console = field(default_factory=lambda: Console(stderr=True))
    failures: list[str] = field(default_factory=list)


Section = Callable[[DemoContext], str]


def checks_section(ctx: DemoContext) -> str:
    """``balancedness check --json``: every paper claim, measured (``checks.run_checks``), implementation checks,
    math checks and findings apart."""
    from balancedness.checks import CHECKS, Kind, results_as_json, run_checks
    from balancedness.demo.report import checks_table

    with ctx.console.status(f"running {len(CHECKS)} checks…") as status:
        results = run_checks(quick=ctx.quick, progress=lambda r: status.update(f"check {r.id}: {r.status}"))
    rows = results_as_json(results)
    write_json(ctx.out / "checks.json", rows)
    ctx.failures += [f"check {r['id']}" for r in rows if r["status"] != "PASS"]
    ctx.console.print(
        f"checks: {sum(r['status'] == 'PASS' for r in rows)}/{len(rows)} passed → {ctx.out / 'checks.json'}"
    )
    scale = "quick: 2e4-step toy runs" if ctx.quick else "full"
    parts = [f"## Paper claims, checked ({scale})\n\nRaw results: [`checks.json`](checks.json)."]
    for kind, title in (
        (Kind.IMPLEMENTATION, "Implementation checks (they run the optimizers; a broken one fails them)"),
        (Kind.MATH, "Math checks (closed forms and inequalities of the paper, on their own)"),
        (Kind.FINDING, "Findings (where the paper is loose or wrong; PASS: our counter-evidence reproduces)"),
    ):
        mine = [r for r in rows if r["kind"] == kind.value]
        if mine:
            parts.append(f"### {title}\n\n" + checks_table(mine))
    return "\n\n".join(parts)


def figures_section(ctx: DemoContext) -> str:
    """``balancedness figures all --out DIR/figures`` and a gallery with captions."""
    from balancedness.demo.report import figure_gallery
    from balancedness.figures import FIGURES, FigureConfig, render

    fig_dir = ctx.out / "figures"
    cfg = FigureConfig.make(quick=ctx.quick)
    started = time.perf_counter()
    render(list(FIGURES), cfg, fig_dir, ["png"], ctx.console)
    took = time.perf_counter() - started
    head = (
        f"## Figures\n\n{'Quick' if ctx.quick else 'Paper'} scale: η = {cfg.lr:g}, T = {cfg.steps:g}, "
        f"{cfg.seeds} seeds, α ∈ {{{', '.join(f'{a:g}' for a in cfg.alphas)}}}; made in {took:.0f} s. "
        "Lines are seed means, shaded bands min–max over seeds. See docs/figures.md."
    )
    return head + "\n\n" + figure_gallery(fig_dir, ctx.out, list(FIGURES))


def finetune_demo_section(ctx: DemoContext) -> str:
    """LoRA vs SAM vs oBAR vs nBAR on MiniLM / BBC News, with Figure 3 (``demo.finetune``)."""
    from balancedness.demo.finetune import finetune_section

    started = time.perf_counter()
    with ctx.console.status("finetuning MiniLM on BBC News: LoRA, SAM, oBAR, nBAR…"):
        text = finetune_section(ctx.out, quick=ctx.quick)
    ctx.console.print(f"finetune comparison: {time.perf_counter() - started:.0f} s → {ctx.out / 'finetune'}")
    return text


#: The report's sections, in order. Extension point: see the module docstring.
SECTIONS: list[Section] = [checks_section, figures_section, finetune_demo_section]


def register_section(section: Section, *, before: Section | None = None) -> None:
    """Add a section to the report (at the end, or before another section)."""
    if not callable(section):
        raise TypeError(f"a section must be a function (DemoContext) -> str, got {section!r}")
    if section in SECTIONS:
        return
    SECTIONS.insert(SECTIONS.index(before) if before in SECTIONS else len(SECTIONS), section)


def run(out: Path, quick: bool = False, sections: list[Section] | None = None) -> DemoContext:
    """Run every section and write ``out/REPORT.md``; returns the context (``failures`` lists what failed)."""
    from balancedness.demo.report import write_report

    ctx = DemoContext(out=Path(out), quick=quick)
    ctx.out.mkdir(parents=True, exist_ok=True)
    parts = [section(ctx) for section in (SECTIONS if sections is None else sections)]
    summary = "All checks passed." if not ctx.failures else "Failed: " + ", ".join(ctx.failures) + "."
    intro = (
        "Regenerated by `make demo` (`python -m balancedness.demo`) for *Implicit Regularization of "
        f"Sharpness-Aware Minimization for Scale-Invariant Problems* (Li, Zhang, He, NeurIPS 2024). {summary}"
    )
    path = write_report(ctx.out / "REPORT.md", "balancedness: demo report", [intro, *parts])
    ctx.console.print(f"wrote {path}")
    return ctx


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m balancedness.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo"), help="output folder (default: demo)")
    parser.add_argument("--quick", action="store_true", help="quick checks and figures (for tests)")
    args = parser.parse_args(argv)
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {str(args.out)!r} exists and is not a folder")
    ctx = run(args.out, quick=args.quick)
    return 1 if ctx.failures else 0
