"""``balancedness sweep``: the grid tasks × methods × seeds, run in-process one after another.

Every cell is keyed by its run's fingerprint (``provenance.py``): it runs in
``out/<task>/<method>/seed<k>-<id>/`` where ``<id>`` is the first 8 hex digits of the fingerprint id. So a
sweep re-run with the same options finds its complete runs and skips them, resumes the interrupted ones
from their last complete checkpoint, and a sweep with *any* changed option (``--steps``, ``--lr``,
``--shots``, the data files, the model, a package version) makes new runs beside the old ones, never reusing
a run made with other settings. Every task's data is loaded (and every fingerprint computed) before the
first run, so a bad ``--data-root`` or task is rejected up front. A failing run is recorded in
``out/failures.json`` and the sweep goes on. ``table.md`` / ``table.csv`` (``report.py``) hold exactly the
runs of this grid, state the settings they were made with, and are rewritten after every run.
"""

from __future__ import annotations

import dataclasses
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from balancedness.finetune.run import FinetuneConfig, check_config, prepare, run_finetune, world_size
from balancedness.io import write_json, write_text

__all__ = ["SweepResult", "run_sweep", "run_dir", "write_tables"]


@dataclass
class SweepResult:
    """Complete runs' metrics, failures (task, method, seed, error), skipped count and the rendered tables."""

    runs: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    skipped: int = 0
    markdown: str = ""


def run_dir(out: str | Path, task: str, method: str, seed: int, fingerprint_id: str) -> Path:
    """``out/<task>/<method>/seed<k>-<first 8 hex digits of the fingerprint id>``."""
    return Path(out) / task / method / f"seed{seed}-{fingerprint_id[:8]}"


def plan_cells(base: FinetuneConfig, tasks: Sequence[str], methods: Sequence[str], seeds: Sequence[int],
               out: str | Path) -> list[FinetuneConfig]:
    """One config per cell, each with its fingerprint-keyed ``out``; loads every task's data (errors early)."""
    from balancedness.finetune.provenance import fingerprint, fingerprint_id

    _check_grid(base, tasks, methods, seeds)
    cells = []
    for task in tasks:
        for seed in seeds:
            loaded, model_path = prepare(dataclasses.replace(base, task=task, seed=seed))
            for method in methods:
                config = dataclasses.replace(base, task=task, method=method, seed=seed, resume=True, progress=False)
                fid = fingerprint_id(fingerprint(config.result_options(), loaded, model_path, world_size()))
                cells.append(dataclasses.replace(config, out=str(run_dir(out, task, method, seed, fid))))
    return cells


def _check_grid(base: FinetuneConfig, tasks: Sequence[str], methods: Sequence[str], seeds: Sequence[int]) -> None:
    from balancedness.finetune.data import known_tasks

    for name, values in (("tasks", tasks), ("methods", methods), ("seeds", seeds)):
        if not values:
            raise ValueError(f"{name} is empty")
    unknown = [t for t in tasks if t not in known_tasks()]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; expected some of {', '.join(known_tasks())}")
    for method in methods:
        check_config(dataclasses.replace(base, method=method))


def write_tables(out: str | Path, runs: Sequence[dict[str, Any]], tasks: Sequence[str] | None = None,
                 methods: Sequence[str] | None = None) -> str:
    """Rewrite ``out/table.md`` and ``out/table.csv`` from ``runs`` (complete metrics); returns the markdown.

    Raises ``MixedSettingsError`` (a ValueError) when runs made with different settings would share a column.
    """
    from balancedness.finetune.report import csv_text, markdown_tables, settings_text, summarize

    cells = summarize(runs)
    markdown = (settings_text(runs) + "\n" + markdown_tables(cells, tasks, methods) if cells
                else "(no complete runs yet)\n")
    write_text(Path(out) / "table.md", markdown)
    write_text(Path(out) / "table.csv", csv_text(cells))
    return markdown


def run_sweep(base: FinetuneConfig, *, tasks: Sequence[str], methods: Sequence[str], seeds: Sequence[int],
              out: str | Path, progress: bool = True) -> SweepResult:
    """Run every (task, method, seed) whose fingerprint-keyed run is not complete; a :class:`SweepResult`.

    ``base`` supplies every other option (model, steps, lr, ...). Bad grid values, a missing data root or
    task file raise before anything runs; a run that fails later is recorded and skipped.
    """
    cells = plan_cells(base, tasks, methods, seeds, out)
    result = SweepResult()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    try:
        with Progress(*columns, disable=not progress) as bar:
            job = bar.add_task("sweep", total=len(cells))
            for config in cells:
                bar.update(job, description=f"{config.task} {config.method} seed {config.seed}")
                try:
                    metrics = run_finetune(config)
                except Exception as exc:  # noqa: BLE001 - record, go on
                    result.failed.append({"task": config.task, "method": config.method, "seed": config.seed,
                                          "out": config.out, "error": f"{type(exc).__name__}: {exc}",
                                          "traceback": traceback.format_exc(limit=5)})
                else:
                    result.skipped += bool(metrics.pop("skipped", False))
                    result.runs.append(metrics)
                    write_tables(out, result.runs, tasks, methods)
                bar.advance(job)
    finally:
        if result.failed:
            write_json(Path(out) / "failures.json", result.failed)
        result.markdown = write_tables(out, result.runs, tasks, methods)
    return result
