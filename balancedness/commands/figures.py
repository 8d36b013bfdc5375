"""``balancedness figures NAME --out DIR``: regenerate the paper's figures; ``fig3`` plots LoRA run logs."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import typer
from rich.console import Console

from balancedness.commands.common import ensure_writable_folder, fail_usage
from balancedness.figures import FIGURES, SEPARATE, FigureConfig, check_names, render
from balancedness.figures.runs import DEFAULT_ALPHAS, DEFAULT_SEEDS, QUICK_SEEDS

_ALPHAS = ", ".join(map(str, DEFAULT_ALPHAS))  # for --alpha's help


def figures(
    name: str = typer.Argument(
        ...,
        help=f"Figure to make: {', '.join(FIGURES)}, all (these), {', '.join(SEPARATE)} (not in all: minutes), "
        "or fig3 (LoRA).",
    ),
    out: Path = typer.Option(Path("figures"), "--out", help="Output folder (created if missing)."),
    format: str = typer.Option("png", "--format", help="Image format(s), comma-separated: png, pdf, svg."),
    seeds: int | None = typer.Option(
        None, "--seeds", help=f"Seeds per noise level (default {DEFAULT_SEEDS}; {QUICK_SEEDS} with --quick)."
    ),
    alpha: list[float] | None = typer.Option(
        None,
        "--alpha",
        help=f"Noise level α of Fig. 1/2(a) (repeatable; default {_ALPHAS}; the paper's are unknown).",
    ),
    quick: bool = typer.Option(False, "--quick", help="Small runs for tests: T = 2e4 steps, 2 seeds, short flows."),
    log: list[Path] | None = typer.Option(
        None,
        "--log",
        help="fig3 only: a run's balancedness.jsonl (or its "
        "folder), repeatable; without it fig3 runs short SAM and AdamW "
        "finetunes of MiniLM on rte, sst5, mnli itself.",
    ),
    data_root: Path | None = typer.Option(None, "--data-root", help="fig3 self-run only: the data folder."),
) -> None:
    """Regenerate the paper's Figures 1, 2, 4 and the flow/rates/msharp figures, each with its data (JSON)."""
    from balancedness.figures.style import check_formats

    if name == "fig3":
        _fig3(out, format, log, data_root, quick)
        return
    if log:
        fail_usage(f"--log applies to fig3 only, not to {name!r}")
    try:
        ensure_writable_folder(out, "--out")
        names = check_names([name])
        formats = check_formats(format.split(","))
        cfg = FigureConfig.make(quick=quick, seeds=seeds, alphas=alpha, progress=sys.stderr.isatty())
    except ValueError as e:
        fail_usage(e)
    started = time.perf_counter()
    render(names, cfg, out, formats)
    Console(stderr=True).print(f"{len(names)} figure(s) in {out} ({time.perf_counter() - started:.1f} s)")


def _fig3(out: Path, format: str, logs: list[Path] | None, data_root: Path | None, quick: bool) -> None:
    """Figure 3 (spec §5): 2|B_l| of an early, a middle and the last query layer, SAM vs AdamW."""
    from balancedness.figures.fig3 import load_logs, make_fig3
    from balancedness.figures.style import check_formats
    from balancedness.finetune.record import LOG, RunFolder

    try:
        ensure_writable_folder(out, "--out")
        formats = check_formats(format.split(","))
        for path in logs or []:
            log_file = RunFolder(path).log if path.is_dir() else path
            if not log_file.is_file():
                raise ValueError(f"--log {str(path)!r}: no {LOG} there")
        if logs:
            load_logs(logs)  # every log read before any work: one that is not a run's log is named, exit 2
    except ValueError as e:
        fail_usage(e)

    started = time.perf_counter()
    if not logs:
        from balancedness.finetune.fig3_runs import fig3_runs

        logs = fig3_runs(out, quick=quick, data_root=None if data_root is None else str(data_root))
    paths = make_fig3(out, logs=logs, formats=formats)
    Console(stderr=True).print(
        f"[green]✓[/] fig3 ({time.perf_counter() - started:.1f} s): " + ", ".join(p.name for p in paths)
    )
