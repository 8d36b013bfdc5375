"""``balancedness sweep``: tasks × methods × seeds × each method's search space, dev-selected, with paired statistics.

Every cell (one run) is keyed by its run's fingerprint (``provenance.py``): it runs in
``out/<task>/<method>/seed<k>-<id>/`` where ``<id>`` is the first 8 hex digits of the fingerprint id. A
re-run with the same options finds its complete runs and skips them, resumes the interrupted ones from
their last complete checkpoint, and a sweep with *any* changed option (``--steps``, ``--lr``, ``--shots``,
the data, the model, a package version) makes new runs beside the old ones, never reusing a run made with
other settings. Every task's data is loaded (and every fingerprint computed) before the first run, so a bad
``--data-root`` or task is rejected up front.

The cells are worked through by an Optuna study (``study.py``: grid sampler, a journal file in ``out`` by
default, ``workers`` local processes, or any number of machines on one ``storage``). For each task ×
method × seed the configuration with the best **dev** metric is selected (``select.py``) and its **test**
metric reported (``select.select_runs``, a step of its own after the runs). ``table.md`` / ``table.csv`` /
``selected.csv`` / ``paired.csv`` / ``paired.png`` (``report.py``) state the settings, the search space, the
selected hyper-parameters and runs, mean ± std over seeds, and each method's difference to LoRA on the same
seeds (mean, bootstrap 95% interval, wins/ties/losses, sign test).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from balancedness.finetune.record import RunFolder, RunRecord
from balancedness.finetune.run import FinetuneConfig, check_config, prepare, run_finetune
from balancedness.finetune.search import PRESETS, SearchSpace
from balancedness.finetune.select import Selected
from balancedness.io import write_json

__all__ = ["SweepResult", "run_sweep", "run_dir", "plan_cells", "task_name"]


@dataclass
class SweepResult:
    """All complete runs, the selected ones, failures, the number of cells skipped as complete, the tables."""

    runs: list[RunRecord] = field(default_factory=list)
    selected: list[Selected] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    skipped: int = 0
    markdown: str = ""


def run_dir(out: str | Path, task: str, method: str, seed: int, fingerprint_id: str) -> Path:
    """``out/<task>/<method>/seed<k>-<first 8 hex digits of the fingerprint id>``."""
    return Path(out) / task / method / f"seed{seed}-{fingerprint_id[:8]}"


def _check_grid(
    base: FinetuneConfig,
    tasks: Sequence[str],
    methods: Sequence[str],
    seeds: Sequence[int],
    space: SearchSpace,
    task_files: Sequence[str] = (),
) -> None:
    from balancedness.finetune.data import known_tasks

    for name, values in (("tasks", [*tasks, *task_files]), ("methods", methods), ("seeds", seeds)):
        if not values:
            raise ValueError(f"{name} is empty")
        repeated = sorted({v for v in values if list(values).count(v) > 1}, key=list(values).index)
        if repeated:  # a repeated task or method would repeat a table row or column
            raise ValueError(
                f"{name} lists {', '.join(map(repr, repeated))} more than once "
                f"({', '.join(map(str, values))}); give each once"
            )
    unknown = [t for t in tasks if t not in known_tasks()]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; expected some of {', '.join(known_tasks())}")
    for method in methods:
        for point in space.points(method):
            check_config(base.with_options(method=method, **point))


def plan_cells(
    base: FinetuneConfig,
    tasks: Sequence[str],
    methods: Sequence[str],
    seeds: Sequence[int],
    out: str | Path,
    space: SearchSpace = PRESETS["fixed"],
    task_files: Sequence[str] = (),
) -> dict[str, FinetuneConfig]:
    """``{fingerprint id: config}`` for every cell, in grid order; loads every task's data (errors early).
    ``task_files``: TOML task files (``taskfile.py``) run beside the built-in ``tasks``, named by their ``name``."""
    _check_grid(base, tasks, methods, seeds, space, task_files)
    cells: dict[str, FinetuneConfig] = {}
    claimed: dict[str, dict[str, str]] = {}
    fields: dict[str, Any]
    for fields in [*({"task": t} for t in tasks), *({"task_file": str(f)} for f in task_files)]:
        for seed in seeds:
            options: dict[str, Any] = {"seed": seed, **fields}
            prepared = prepare(dataclasses.replace(base, **options))
            name = prepared.task.name
            _claim(claimed, name, fields)
            for method in methods:
                points = space.points(method)
                if len(points) > 1 and not prepared.task.dev:
                    raise ValueError(
                        f"task {name!r} has no dev split, so the {len(points)} configurations of "
                        f"{method} cannot be selected without the test set; use --space fixed"
                        + ("" if "task" in fields else " or give the task file a dev file")
                    )
                for point in points:
                    cell = prepared.with_config(
                        base.with_options(**fields, method=method, seed=seed, resume=True, progress=False, **point)
                    )
                    fid = cell.fingerprint_id
                    cells[fid] = dataclasses.replace(cell.config, out=str(run_dir(out, name, method, seed, fid)))
    return cells


def _claim(claimed: dict[str, dict[str, str]], name: str, fields: dict[str, str]) -> None:
    """Record that ``fields`` (a built-in task or a task file) is the task ``name``; two tasks of one name would
    share a table column and run folders, so a second one is a ValueError."""
    other = claimed.setdefault(name, fields)
    if other != fields:
        raise ValueError(
            f"task file {fields['task_file']!r} is named {name!r}, like "
            f"{'task file ' + repr(other['task_file']) if 'task_file' in other else 'the built-in task'};"
            " every task of a sweep needs its own name (it names a table column and run folders)"
        )


def task_name(config: FinetuneConfig) -> str:
    """The name of a cell's task: a built-in task's, or a task file's (which only its run folder carries,
    ``run_dir``: ``<out>/<task>/<method>/seed<k>-<id>``)."""
    return config.task or Path(config.out).parents[1].name


def run_sweep(
    base: FinetuneConfig,
    *,
    tasks: Sequence[str],
    methods: Sequence[str],
    seeds: Sequence[int],
    out: str | Path,
    space: SearchSpace = PRESETS["fixed"],
    workers: int = 1,
    storage: str | None = None,
    progress: bool = True,
    task_files: Sequence[str] = (),
) -> SweepResult:
    """Run every cell not yet complete (on ``workers`` local processes sharing one study), select on dev,
    write the tables; returns a :class:`SweepResult`. ``task_files``: TOML task files run beside the built-in
    ``tasks`` (``taskfile.py``). Bad grid values, a missing data root or task file, a bad task file raise before
    anything runs; a run that fails is recorded in ``failures.json`` and the sweep goes on."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from balancedness.finetune.report import write_tables
    from balancedness.finetune.select import score, select_runs
    from balancedness.finetune.study import open_study, run_cells, start_workers

    cells = plan_cells(base, tasks, methods, seeds, out, space, task_files)
    Path(out).mkdir(parents=True, exist_ok=True)
    open_study(out, sorted(cells), storage)  # created once, before any worker opens it
    result = SweepResult()
    order = {_relative(config.out, out): i for i, config in enumerate(cells.values())}
    procs = start_workers(workers - 1, cells, out, storage) if workers > 1 else []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        with Progress(*columns, disable=not progress) as bar:
            job = bar.add_task("sweep (this worker)", total=len(cells))

            def done(fid: str, record: RunRecord) -> None:
                bar.update(job, advance=1, description=f"{record.task} {record.method} seed {record.seed}")

            run_cells(cells, out, _recording(result), score, storage, on_done=done)
    finally:
        for proc in procs:
            proc.join()
    _collect_outcomes(result, cells, out)
    result.selected = select_runs(result.runs, order)
    result.markdown = write_tables(out, result.selected, space, tasks, methods)
    return result


def _collect_outcomes(result: SweepResult, cells: dict[str, FinetuneConfig], out: str | Path) -> None:
    """The complete runs into ``result.runs``; the failures (a cell recorded failed and not finished by a retry,
    or not complete after the sweep) into ``result.failed`` and ``failures.json`` (removed when there are none)."""
    result.runs, missing = _collect(cells, out)
    complete = {str(Path(out) / r.run) for r in result.runs}  # type: ignore[operator]  # a collected run's folder
    result.failed = [f for f in result.failed if f["out"] not in complete]  # a retry may have finished it
    result.failed += [
        {
            "task": task_name(c),
            "method": c.method,
            "seed": c.seed,
            "out": c.out,
            "error": "not complete after the sweep (see the run folder)",
        }
        for c in missing
        if not any(f["out"] == c.out for f in result.failed)
    ]
    if result.failed:
        write_json(Path(out) / "failures.json", result.failed)
    else:  # an earlier sweep's failures must not outlive it
        (Path(out) / "failures.json").unlink(missing_ok=True)


def _recording(result: SweepResult):
    """``run_finetune`` that records failures and skips instead of raising them into Optuna."""
    import traceback

    def run(config: FinetuneConfig) -> RunRecord:
        try:
            record = run_finetune(config)
        except Exception as exc:
            result.failed.append(
                {
                    "task": task_name(config),
                    "method": config.method,
                    "seed": config.seed,
                    "out": config.out,
                    "error": f"{type(exc).__name__}: {exc}",
                    "traceback": traceback.format_exc(limit=5),
                }
            )
            raise
        assert record is not None  # a sweep's workers are main processes
        result.skipped += record.skipped
        return record

    return run


def _relative(run: str | Path, out: str | Path) -> str:
    """A cell's run folder relative to the sweep folder (how tables and ``selected.csv`` name runs)."""
    return Path(run).relative_to(out).as_posix()


def _collect(cells: dict[str, FinetuneConfig], out: str | Path) -> tuple[list[RunRecord], list[FinetuneConfig]]:
    """The complete runs (each with ``run``: its folder relative to ``out``) and the cells not complete."""
    runs, missing = [], []
    for config in cells.values():
        record = RunFolder(config.out).complete_record()  # the one rule: never a failed or unfinished run
        if record is not None:
            runs.append(record.replace(run=_relative(config.out, out)))
        else:
            missing.append(config)
    return runs, missing
