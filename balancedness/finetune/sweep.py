"""``balancedness sweep``: the grid tasks × methods × seeds, run in-process one after another.

Each run writes into ``out/<task>/<method>/seed<k>/`` (see ``run.py``). A run whose ``metrics.json`` says
``complete`` is skipped, an interrupted one continues from its checkpoint, a failing one is recorded in
``out/failures.json`` and the sweep goes on. ``table.md`` / ``table.csv`` (``report.py``) are rewritten
after every run, so they are always current.
"""

from __future__ import annotations

import dataclasses
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from balancedness.finetune.run import FinetuneConfig, check_config, read_metrics, run_finetune
from balancedness.io import write_json, write_text

__all__ = ["SweepResult", "run_sweep", "run_dir", "write_tables"]


@dataclass
class SweepResult:
    """Complete runs' metrics, failures (task, method, seed, error), skipped count and the rendered tables."""

    runs: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    skipped: int = 0
    markdown: str = ""


def run_dir(out: str | Path, task: str, method: str, seed: int) -> Path:
    return Path(out) / task / method / f"seed{seed}"


def _check_grid(base: FinetuneConfig, tasks: Sequence[str], methods: Sequence[str], seeds: Sequence[int]) -> None:
    from balancedness.finetune.data import known_tasks

    for name, values in (("tasks", tasks), ("methods", methods), ("seeds", seeds)):
        if not values:
            raise ValueError(f"--{name} is empty")
    unknown = [t for t in tasks if t not in known_tasks()]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; expected some of {', '.join(known_tasks())}")
    for method in methods:
        check_config(dataclasses.replace(base, method=method))


def write_tables(out: str | Path, tasks: Sequence[str] | None = None, methods: Sequence[str] | None = None) -> str:
    """Rewrite ``out/table.md`` and ``out/table.csv`` from the complete runs below ``out``; returns the markdown."""
    from balancedness.finetune.report import collect, csv_text, markdown_tables, summarize

    cells = summarize(collect(out))
    markdown = markdown_tables(cells, tasks, methods) if cells else "(no complete runs yet)\n"
    write_text(Path(out) / "table.md", markdown)
    write_text(Path(out) / "table.csv", csv_text(cells))
    return markdown


def run_sweep(base: FinetuneConfig, *, tasks: Sequence[str], methods: Sequence[str], seeds: Sequence[int],
              out: str | Path, progress: bool = True) -> SweepResult:
    """Run every (task, method, seed) not yet complete under ``out``; returns a :class:`SweepResult`.

    ``base`` supplies every other option (model, steps, lr, ...). Bad grid values raise ValueError before
    anything runs; a run that fails later is recorded and skipped.
    """
    _check_grid(base, tasks, methods, seeds)
    result = SweepResult()
    grid = [(t, m, s) for t in tasks for m in methods for s in seeds]
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    try:
        with Progress(*columns, disable=not progress) as bar:
            job = bar.add_task("sweep", total=len(grid))
            for task, method, seed in grid:
                bar.update(job, description=f"{task} {method} seed {seed}")
                directory = run_dir(out, task, method, seed)
                done = read_metrics(directory)
                if done and done.get("status") == "complete":
                    result.skipped += 1
                    result.runs.append(done)
                else:
                    config = dataclasses.replace(base, task=task, method=method, seed=seed, out=str(directory),
                                                 resume=True, progress=False)
                    try:
                        result.runs.append(run_finetune(config))
                    except Exception as exc:  # noqa: BLE001 - record, go on
                        result.failed.append({"task": task, "method": method, "seed": seed,
                                              "error": f"{type(exc).__name__}: {exc}",
                                              "traceback": traceback.format_exc(limit=5)})
                    write_tables(out, tasks, methods)
                bar.advance(job)
    finally:
        if result.failed:
            write_json(Path(out) / "failures.json", result.failed)
        result.markdown = write_tables(out, tasks, methods)
    return result
