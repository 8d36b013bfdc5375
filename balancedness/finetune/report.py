"""Tables from finetune runs (the paper's Tables 1 and 2 in our setting, spec §6).

``collect(root)`` reads every complete run record (``record.RunRecord``) under ``root``; ``summarize`` groups them by
(task, method) into mean ± std (sample std, n−1; 0 for one seed) of the task metric (accuracy in %,
BLEU as is) and the median seconds per step; ``markdown_tables`` renders the accuracy table with an
average column and a majority-baseline row, and the runtime table (seconds per step relative to
``lora``, as Table 2); ``csv_text`` gives one row per (task, method).
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from balancedness.finetune.record import RunFolder, RunRecord
from balancedness.finetune.select import Selected, selected_options
from balancedness.methods import METHODS as ROWS
from balancedness.methods import Derived

__all__ = [
    "Cell",
    "MixedSettingsError",
    "write_tables",
    "paired_rows",
    "check_settings",
    "settings_text",
    "collect",
    "summarize",
    "markdown_tables",
    "csv_text",
    "selected_csv",
    "METHOD_LABELS",
    "TASK_LABELS",
]

#: ``{method: its label in tables}``, and its colour in plots: from the method table (``balancedness.methods``).
METHOD_LABELS = Derived(lambda: {name: row.label for name, row in ROWS.items()})
_COLOURS = Derived(lambda: {name: row.colour for name, row in ROWS.items()})
TASK_LABELS = {
    "sst2": "SST-2",
    "sst5": "SST-5",
    "trec": "TREC",
    "rte": "RTE",
    "snli": "SNLI",
    "mnli": "MNLI",
    "cb": "CB",
    "copa": "COPA",
    "boolq": "BoolQ",
    "webnlg": "WebNLG",
    "bbc-news": "BBC News",
}


@dataclass
class Cell:
    """One (task, method): the metric over seeds (in display units) and timing."""

    task: str
    method: str
    metric: str
    values: list[float]
    seconds_per_step: list[float]
    majority: float | None = None

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0

    @property
    def step_time(self) -> float | None:
        return statistics.median(self.seconds_per_step) if self.seconds_per_step else None


def collect(root: str | Path) -> list[RunRecord]:
    """The record of every complete run (``record.is_complete``) below ``root``, sorted by path; each with
    ``run``, its folder relative to ``root`` (the recorded ``config.out`` is where it was trained, which a moved
    or copied sweep folder no longer is)."""
    from balancedness.finetune.record import METRICS

    runs = []
    for path in sorted(Path(root).rglob(METRICS)):
        record = RunFolder(path.parent).complete_record()
        if record is not None:
            runs.append(record.replace(run=path.parent.relative_to(root).as_posix()))
    return runs


def _display(record: RunRecord) -> float:
    value = float(record.value)  # type: ignore[arg-type]  # a reported run is complete: its value is set
    return 100.0 * value if record.metric == "accuracy" else value


class MixedSettingsError(ValueError):
    """Runs made with different settings would be averaged into one cell or compared in one column."""


def _settings(record: RunRecord, varying: Iterable[str] = ()) -> tuple[dict[str, Any], dict[str, Any]]:
    """(protocol options shared by a whole column, the method's own options: its fields and ``hparams``) of a
    run's ``config``; options in ``varying`` (those a search selects per seed) are in neither."""
    from balancedness.finetune.run import METHOD_FIELDS, METHOD_OPTIONS, NOT_COUNTED

    config = record.config or {}
    varying = set(varying)
    own = [k for k in METHOD_OPTIONS.get(record.method, ()) if k not in varying]
    skip = set(NOT_COUNTED) | set(METHOD_FIELDS) | varying | {"method", "seed", "hparams"}
    protocol = {k: v for k, v in config.items() if k not in skip}
    hparams = {k: v for k, v in (config.get("hparams") or {}).items() if k not in varying}
    return protocol, {**{k: config[k] for k in own if k in config}, **hparams}


def check_settings(runs: Iterable[RunRecord], varying: Iterable[str] = ()) -> None:
    """MixedSettingsError naming the option, unless every column (task) shares one protocol and every
    cell (task, method) one set of method options (ρ, m, μ, schedule); ``varying``: selected per seed."""
    varying = set(varying)
    first: dict[tuple[str, ...], tuple[RunRecord, dict[str, Any]]] = {}
    for r in runs:
        protocol, own = _settings(r, varying)
        for key, mine in (((r.task,), protocol), ((r.task, r.method), own)):
            seen = first.setdefault(key, (r, mine))
            differing = sorted(k for k in set(seen[1]) | set(mine) if seen[1].get(k) != mine.get(k))
            if differing:
                where = "column " + key[0] if len(key) == 1 else f"cell {key[0]} × {key[1]}"
                detail = "; ".join(
                    f"{k}: {seen[1].get(k)!r} (seed {seen[0].seed}, {seen[0].method}) vs "
                    f"{mine.get(k)!r} (seed {r.seed}, {r.method})"
                    for k in differing
                )
                raise MixedSettingsError(f"refusing to mix runs made with different settings in the {where}: {detail}")


def settings_text(runs: Sequence[RunRecord], varying: Iterable[str] = ()) -> str:
    """A paragraph naming the settings the table's runs were made with (after :func:`check_settings`)."""
    varying = set(varying)
    check_settings(runs, varying)
    if not runs:
        return ""
    protocols = [_settings(r, varying)[0] for r in runs]
    shared = {k: v for k, v in protocols[0].items() if k != "task" and all(p.get(k) == v for p in protocols)}
    per_task = sorted({k for p in protocols for k in p if k != "task" and k not in shared})
    text = "Settings of every run: " + ", ".join(
        f"{k} {v}" for k, v in sorted(shared.items()) if v not in (None, (), [])
    )
    if per_task:
        text += f"; per task: {', '.join(per_task)}"
    own: dict[str, dict[str, Any]] = {}
    for r in runs:
        own.setdefault(r.method, _settings(r, varying)[1])
    extras = [f"{METHOD_LABELS.get(m, m)}: " + ", ".join(f"{k} {v}" for k, v in o.items()) for m, o in own.items() if o]
    return text + (". " + "; ".join(extras) if extras else "") + ".\n"


def summarize(runs: Iterable[RunRecord], varying: Iterable[str] = ()) -> dict[tuple[str, str], Cell]:
    """Group runs by (task, method); MixedSettingsError when settings differ within a column or cell."""
    runs = list(runs)
    check_settings(runs, varying)
    cells: dict[tuple[str, str], Cell] = {}
    for r in runs:
        key = (r.task, r.method)
        cell = cells.setdefault(
            key, Cell(r.task, r.method, r.metric, [], [], 100.0 * r.majority if r.majority is not None else None)
        )
        cell.values.append(_display(r))
        if r.seconds_per_step:
            cell.seconds_per_step.append(float(r.seconds_per_step))
    return cells


def _order(seen: Iterable[str], preferred: Sequence[str] | None) -> list[str]:
    seen = list(dict.fromkeys(seen))
    if preferred:
        return [x for x in preferred if x in seen] + [x for x in seen if x not in preferred]
    return seen


def _row(label: str, cells: list[str]) -> str:
    return "| " + " | ".join([label, *cells]) + " |"


def markdown_tables(
    cells: dict[tuple[str, str], Cell], tasks: Sequence[str] | None = None, methods: Sequence[str] | None = None
) -> str:
    """The accuracy table (mean ± std over seeds, avg of the means, the majority-class row)."""
    tasks = _order((t for t, _ in cells), tasks)
    methods = _order((m for _, m in cells), methods)
    labels = [TASK_LABELS.get(t, t) for t in tasks]
    n_seeds = sorted({len(c.values) for c in cells.values()})
    lines = [
        f"Task metric in % (accuracy; BLEU for WebNLG), mean ± std over seeds (n = {', '.join(map(str, n_seeds))}).",
        "",
        _row("method", [*labels, "avg"]),
        _row("---", ["---"] * (len(tasks) + 1)),
    ]
    for method in methods:
        row, means = [], []
        for task in tasks:
            cell = cells.get((task, method))
            row.append(f"{cell.mean:.1f}±{cell.std:.1f}" if cell else "–")
            if cell:
                means.append(cell.mean)
        avg = f"{statistics.fmean(means):.1f}" if len(means) == len(tasks) else "–"
        lines.append(_row(METHOD_LABELS.get(method, method), [*row, avg]))
    majority = [
        next((c.majority for (t, _), c in cells.items() if t == task and c.majority is not None), None)
        for task in tasks
    ]
    if any(v is not None for v in majority):
        avg = (
            f"{statistics.fmean(v for v in majority if v is not None):.1f}"
            if all(v is not None for v in majority)
            else "–"
        )
        lines.append(_row("majority class", [f"{v:.1f}" if v is not None else "–" for v in majority] + [avg]))
    lines += [
        "",
        "Runtime is not compared here: the runs of a sweep are timed minutes apart on a shared machine. "
        "Overheads measured with the methods' steps interleaved on the same batches: "
        "`benchmarks/overhead.py` (docs/results.md).",
    ]
    return "\n".join(lines) + "\n"


def csv_text(cells: dict[tuple[str, str], Cell]) -> str:
    """One row per (task, method): n, mean, std (display units), majority."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["task", "method", "metric", "n", "mean", "std", "majority"])
    for (task, method), c in cells.items():
        writer.writerow(
            [
                task,
                method,
                c.metric,
                len(c.values),
                f"{c.mean:.4f}",
                f"{c.std:.4f}",
                f"{c.majority:.4f}" if c.majority is not None else "",
            ]
        )
    return buf.getvalue()


# --------------------------------------------------------------------------------------------- sweep tables
def paired_rows(
    runs: Sequence[RunRecord], tasks: Sequence[str], methods: Sequence[str], baseline: str = "lora"
) -> list[dict[str, Any]]:
    """Per (method ≠ baseline, task or "avg"): the paired statistics of method − baseline over shared seeds.

    ``avg`` pairs, per seed, the mean over the tasks where both ran on that seed.
    """
    from balancedness.finetune.stats import paired

    value = {(r.task, r.method, r.seed): _display(r) for r in runs}
    rows = []
    for method in methods:
        if method == baseline:
            continue
        per_seed: dict[int, list[float]] = {}
        for task in tasks:
            seeds = sorted(s for (t, m, s) in value if t == task and m == method and (t, baseline, s) in value)
            if not seeds:
                continue
            diffs = [value[(task, method, s)] - value[(task, baseline, s)] for s in seeds]
            for seed, d in zip(seeds, diffs, strict=True):
                per_seed.setdefault(seed, []).append(d)
            rows.append({"method": method, "task": task, "stats": paired(diffs)})
        if per_seed and len(tasks) > 1:
            rows.append(
                {
                    "method": method,
                    "task": "avg",
                    "stats": paired([statistics.fmean(v) for _, v in sorted(per_seed.items())]),
                }
            )
    return rows


def paired_markdown(rows: list[dict[str, Any]], tasks: Sequence[str]) -> str:
    columns = [*tasks, "avg"] if any(r["task"] == "avg" for r in rows) else list(tasks)
    lines = [
        "Difference to LoRA on the same seeds, points: mean [bootstrap 95% interval] wins/ties/losses, "
        "sign-test p (with n seeds p cannot go below 2/2^n).",
        "",
        _row("method", [TASK_LABELS.get(t, t) for t in columns]),
        _row("---", ["---"] * len(columns)),
    ]
    for method in dict.fromkeys(r["method"] for r in rows):
        by_task = {r["task"]: r["stats"] for r in rows if r["method"] == method}
        lines.append(
            _row(METHOD_LABELS.get(method, method), [by_task[t].text() if t in by_task else "–" for t in columns])
        )
    return "\n".join(lines) + "\n"


def paired_csv(rows: list[dict[str, Any]]) -> str:
    from balancedness.finetune.stats import Paired

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["method", "task", *Paired.COLUMNS])
    for r in rows:
        writer.writerow([r["method"], r["task"], *r["stats"].cells()])
    return buf.getvalue()


def selected_csv(selected: Sequence[Selected], space: Any) -> str:
    """One row per (task, method, seed): the chosen run's folder relative to the sweep folder, its dev and test
    metric, how many configurations it was chosen from, and its searched options (JSON), so the selected runs
    can be read back from wherever the sweep folder is (``balancedness figures fig3 --log <sweep>/<run>``)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["task", "method", "seed", "metric", "dev", "test", "candidates", "options", "run"])
    for chosen in selected:
        r = chosen.record
        writer.writerow(
            [
                r.task,
                r.method,
                r.seed,
                r.metric,
                "" if r.dev is None else f"{float(r.dev):.4f}",
                "" if r.value is None else f"{float(r.value):.4f}",
                chosen.candidates,
                json.dumps(selected_options(r, space.searched(r.method)), sort_keys=True),
                r.run,
            ]
        )
    return buf.getvalue()


def selected_markdown(selected: Sequence[RunRecord], space: Any, tasks: Sequence[str], methods: Sequence[str]) -> str:
    """Which configuration dev selection chose, per task and method (value: number of seeds)."""
    from collections import Counter

    if not space.searched():
        return ""
    lines = [
        "Selected hyper-parameters (best dev metric per seed; value ×seeds):",
        "",
        _row("method", [TASK_LABELS.get(t, t) for t in tasks]),
        _row("---", ["---"] * len(tasks)),
    ]
    for method in methods:
        cells = []
        for task in tasks:
            chosen = Counter(
                ", ".join(f"{k} {v}" for k, v in selected_options(r, space.searched(method)).items())
                for r in selected
                if r.task == task and r.method == method
            )
            cells.append("; ".join(f"{k} ×{n}" for k, n in sorted(chosen.items())) or "–")
        lines.append(_row(METHOD_LABELS.get(method, method), cells))
    return "\n".join(lines) + "\n"


def _panel_selected(ax: Any, selected: Sequence[RunRecord], tasks: Sequence[str], methods: Sequence[str]) -> None:
    """Panel (a): each method's test metric per task (seed mean, bootstrap 95% interval, seeds as dots), the
    majority class dashed."""
    import numpy as np

    from balancedness.finetune.stats import bootstrap_interval

    colours = dict(_COLOURS)
    width = 0.8 / max(1, len(methods))
    for i, method in enumerate(methods):
        for j, task in enumerate(tasks):
            vals = [_display(r) for r in selected if r.task == task and r.method == method]
            if not vals:
                continue
            x = j + (i - (len(methods) - 1) / 2) * width
            lo, hi = bootstrap_interval(vals)
            mean = float(np.mean(vals))
            color = colours.get(method, "k")
            label = METHOD_LABELS.get(method, method) if j == 0 else None
            ax.errorbar([x], [mean], yerr=[[mean - lo], [hi - mean]], fmt="o", color=color, capsize=3, label=label)
            ax.scatter([x] * len(vals), vals, s=8, color=color, alpha=0.4)
    for j, task in enumerate(tasks):
        maj = next((100.0 * r.majority for r in selected if r.task == task and r.majority is not None), None)
        if maj is not None:
            label = "majority class" if j == 0 else None
            ax.hlines(maj, j - 0.45, j + 0.45, colors="0.5", linestyles="--", lw=1, label=label)
    ax.set_xticks(range(len(tasks)), [TASK_LABELS.get(t, t) for t in tasks])
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("(a) dev-selected runs (dots: seeds)", fontsize=9)
    ax.legend(fontsize=7, loc="best")


def _panel_paired(ax: Any, rows: list[dict[str, Any]], tasks: Sequence[str], methods: Sequence[str]) -> None:
    """Panel (b): method − LoRA per task (and the average) with its paired interval."""
    columns = [*tasks, "avg"] if any(r["task"] == "avg" for r in rows) else list(tasks)
    others = [m for m in methods if m != "lora"]
    colours = dict(_COLOURS)
    width = 0.8 / max(1, len(others))
    for i, method in enumerate(others):
        for j, task in enumerate(columns):
            st = next((r["stats"] for r in rows if r["method"] == method and r["task"] == task), None)
            if st is None:
                continue
            x = j + (i - (len(others) - 1) / 2) * width
            label = METHOD_LABELS.get(method, method) if j == 0 else None
            yerr = [[st.mean - st.low], [st.high - st.mean]]
            ax.errorbar([x], [st.mean], yerr=yerr, fmt="s", color=colours.get(method, "k"), capsize=3, label=label)
    ax.axhline(0.0, color="0.3", lw=0.8)
    ax.set_xticks(range(len(columns)), [TASK_LABELS.get(t, t) for t in columns])
    ax.set_ylabel("method − LoRA (points)")
    ax.set_title("(b) method − LoRA, same seeds", fontsize=9)
    if others:
        ax.legend(fontsize=7, loc="best")


def paired_figure(
    selected: Sequence[RunRecord], rows: list[dict[str, Any]], tasks: Sequence[str], methods: Sequence[str], path: Path
) -> None:
    """One PNG: (a) each method's test metric per task (seed mean, bootstrap 95% interval, the seeds as dots,
    the majority class dashed); (b) method − LoRA with its paired interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from balancedness.io import atomic_write

    fig, (ax_a, ax_b) = plt.subplots(1, 2, figsize=(max(7.0, 2.2 * len(tasks) + 3), 3.6))
    _panel_selected(ax_a, selected, tasks, methods)
    _panel_paired(ax_b, rows, tasks, methods)
    fig.tight_layout()
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=130), mode="wb")
    plt.close(fig)


def write_tables(
    out: str | Path, selected: Sequence[Selected], space: Any, tasks: Sequence[str], methods: Sequence[str]
) -> str:
    """Write the tables of the dev-selected runs (``select.select_runs``): ``table.md``, ``table.csv``,
    ``selected.csv``, ``paired.csv``, ``paired.png`` into ``out``.

    Returns the markdown. MixedSettingsError when the runs' fixed settings differ in a column.
    """
    from balancedness.io import write_text

    out = Path(out)
    if not selected:
        markdown = "(no complete runs yet)\n"
        _remove_stale(out, ("table.csv", "selected.csv", "paired.csv", "paired.png"))
        write_text(out / "table.md", markdown)
        return markdown
    searched = space.searched()
    records = [chosen.record for chosen in selected]
    cells = summarize(records, searched)
    tasks = _order((r.task for r in records), tasks)
    methods = _order((r.method for r in records), methods)
    rows = paired_rows(records, tasks, methods) if "lora" in methods else []
    parts = [
        settings_text(records, searched),
        space.describe(methods) + ("; selection on the dev split, test metric reported." if searched else "."),
        "",
        markdown_tables(cells, tasks, methods),
        selected_markdown(records, space, tasks, methods),
    ]
    if rows:
        parts += [paired_markdown(rows, tasks), "![paired](paired.png)"]
        write_text(out / "paired.csv", paired_csv(rows))
        paired_figure(records, rows, tasks, methods, out / "paired.png")
    else:  # no LoRA baseline this time: the pairing of an earlier sweep in this folder must not stay beside it
        _remove_stale(out, ("paired.csv", "paired.png"))
    markdown = "\n".join(p for p in parts if p is not None) + "\n"
    write_text(out / "table.md", markdown)
    write_text(out / "table.csv", csv_text(cells))
    write_text(out / "selected.csv", selected_csv(selected, space))
    return markdown


def _remove_stale(out: Path, names: Sequence[str]) -> None:
    """Delete the outputs of an earlier sweep in ``out`` that this one does not write (they describe other runs)."""
    for name in names:
        (out / name).unlink(missing_ok=True)
