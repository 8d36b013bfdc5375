"""Tables from finetune runs (the paper's Tables 1 and 2 in our setting, spec §6).

``collect(root)`` reads every complete ``metrics.json`` under ``root``; ``summarize`` groups them by
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

__all__ = ["Cell", "MixedSettingsError", "check_settings", "settings_text", "collect", "summarize", "markdown_tables", "csv_text", "METHOD_LABELS", "TASK_LABELS"]

METHOD_LABELS = {"lora": "LoRA", "sam": "LoRA-SAM", "msam": "LoRA-mSAM", "obar": "LoRA-oBAR", "nbar": "LoRA-nBAR"}
TASK_LABELS = {"sst2": "SST-2", "sst5": "SST-5", "trec": "TREC", "rte": "RTE", "snli": "SNLI", "mnli": "MNLI",
               "cb": "CB", "copa": "COPA", "boolq": "BoolQ", "webnlg": "WebNLG", "bbc-news": "BBC News"}


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


def collect(root: str | Path) -> list[dict[str, Any]]:
    """Every ``metrics.json`` with ``"status": "complete"`` below ``root``, sorted by path."""
    runs = []
    for path in sorted(Path(root).rglob("metrics.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if record.get("status") == "complete":
            runs.append(record)
    return runs


def _display(record: dict[str, Any]) -> float:
    value = float(record[record["metric"]])
    return 100.0 * value if record["metric"] == "accuracy" else value


class MixedSettingsError(ValueError):
    """Runs made with different settings would be averaged into one cell or compared in one column."""


def _settings(record: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(protocol options shared by a whole column, the method's own options) of a run's ``config``."""
    from balancedness.finetune.provenance import NOT_COUNTED
    from balancedness.finetune.run import METHOD_OPTIONS

    config = record.get("config") or {}
    own = METHOD_OPTIONS.get(record["method"], ())
    every_method_option = {name for names in METHOD_OPTIONS.values() for name in names}
    skip = set(NOT_COUNTED) | every_method_option | {"method", "seed"}
    protocol = {k: v for k, v in config.items() if k not in skip}
    return protocol, {k: config[k] for k in own if k in config}


def check_settings(runs: Iterable[dict[str, Any]]) -> None:
    """MixedSettingsError naming the option, unless every column (task) shares one protocol and every
    cell (task, method) one set of method options (ρ, m, μ, schedule)."""
    first: dict[tuple[str, ...], tuple[dict[str, Any], dict[str, Any]]] = {}
    for r in runs:
        protocol, own = _settings(r)
        for key, mine in (((r["task"],), protocol), ((r["task"], r["method"]), own)):
            seen = first.setdefault(key, (r, mine))
            differing = sorted(k for k in set(seen[1]) | set(mine) if seen[1].get(k) != mine.get(k))
            if differing:
                where = "column " + key[0] if len(key) == 1 else f"cell {key[0]} × {key[1]}"
                detail = "; ".join(f"{k}: {seen[1].get(k)!r} (seed {seen[0]['seed']}, {seen[0]['method']}) vs "
                                   f"{mine.get(k)!r} (seed {r['seed']}, {r['method']})" for k in differing)
                raise MixedSettingsError(f"refusing to mix runs made with different settings in the {where}: {detail}")


def settings_text(runs: Sequence[dict[str, Any]]) -> str:
    """A paragraph naming the settings the table's runs were made with (after :func:`check_settings`)."""
    check_settings(runs)
    if not runs:
        return ""
    protocols = [_settings(r)[0] for r in runs]
    shared = {k: v for k, v in protocols[0].items() if k != "task" and all(p.get(k) == v for p in protocols)}
    per_task = sorted({k for p in protocols for k in p if k != "task" and k not in shared})
    text = "Settings of every run: " + ", ".join(f"{k} {v}" for k, v in sorted(shared.items()) if v not in (None, (), []))
    if per_task:
        text += f"; per task: {', '.join(per_task)}"
    own = {}
    for r in runs:
        own.setdefault(r["method"], _settings(r)[1])
    extras = [f"{METHOD_LABELS.get(m, m)}: " + ", ".join(f"{k} {v}" for k, v in o.items()) for m, o in own.items() if o]
    return text + (". " + "; ".join(extras) if extras else "") + ".\n"


def summarize(runs: Iterable[dict[str, Any]]) -> dict[tuple[str, str], Cell]:
    """Group runs by (task, method); MixedSettingsError when settings differ within a column or cell."""
    runs = list(runs)
    check_settings(runs)
    cells: dict[tuple[str, str], Cell] = {}
    for r in runs:
        key = (r["task"], r["method"])
        cell = cells.setdefault(key, Cell(r["task"], r["method"], r["metric"], [], [],
                                          100.0 * r["majority"] if r.get("majority") is not None else None))
        cell.values.append(_display(r))
        if r.get("seconds_per_step"):
            cell.seconds_per_step.append(float(r["seconds_per_step"]))
    return cells


def _order(seen: Iterable[str], preferred: Sequence[str] | None) -> list[str]:
    seen = list(dict.fromkeys(seen))
    if preferred:
        return [x for x in preferred if x in seen] + [x for x in seen if x not in preferred]
    return seen


def _row(label: str, cells: list[str]) -> str:
    return "| " + " | ".join([label, *cells]) + " |"


def markdown_tables(cells: dict[tuple[str, str], Cell], tasks: Sequence[str] | None = None,
                    methods: Sequence[str] | None = None) -> str:
    """The accuracy table (mean ± std over seeds, avg of the means) and the runtime-ratio table."""
    tasks = _order((t for t, _ in cells), tasks)
    methods = _order((m for _, m in cells), methods)
    labels = [TASK_LABELS.get(t, t) for t in tasks]
    n_seeds = sorted({len(c.values) for c in cells.values()})
    lines = [f"Task metric in % (accuracy; BLEU for WebNLG), mean ± std over seeds (n = "
             f"{', '.join(map(str, n_seeds))}).", "", _row("method", [*labels, "avg"]),
             _row("---", ["---"] * (len(tasks) + 1))]
    for method in methods:
        row, means = [], []
        for task in tasks:
            cell = cells.get((task, method))
            row.append(f"{cell.mean:.1f}±{cell.std:.1f}" if cell else "–")
            if cell:
                means.append(cell.mean)
        avg = f"{statistics.fmean(means):.1f}" if len(means) == len(tasks) else "–"
        lines.append(_row(METHOD_LABELS.get(method, method), [*row, avg]))
    majority = [next((c.majority for (t, _), c in cells.items() if t == task and c.majority is not None), None)
                for task in tasks]
    if any(v is not None for v in majority):
        avg = f"{statistics.fmean(majority):.1f}" if all(v is not None for v in majority) else "–"
        lines.append(_row("majority class", [f"{v:.1f}" if v is not None else "–" for v in majority] + [avg]))
    lines += ["", "Seconds per optimizer step (median over steps and seeds) relative to LoRA (AdamW):", "",
              _row("method", labels), _row("---", ["---"] * len(tasks))]
    for method in methods:
        row = []
        for task in tasks:
            cell, base = cells.get((task, method)), cells.get((task, "lora"))
            ok = cell and base and cell.step_time and base.step_time
            row.append(f"{cell.step_time / base.step_time:.2f}x" if ok else "–")
        lines.append(_row(METHOD_LABELS.get(method, method), row))
    lora_times = [f"{cells[(t, 'lora')].step_time:.3f}" if (t, "lora") in cells and cells[(t, "lora")].step_time
                  else "–" for t in tasks]
    lines.append(_row("LoRA s/step", lora_times))
    return "\n".join(lines) + "\n"


def csv_text(cells: dict[tuple[str, str], Cell]) -> str:
    """One row per (task, method): n, mean, std, seconds per step, ratio to lora."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["task", "method", "metric", "n", "mean", "std", "seconds_per_step", "runtime_vs_lora",
                     "majority"])
    for (task, method), c in cells.items():
        base = cells.get((task, "lora"))
        ratio = c.step_time / base.step_time if base and base.step_time and c.step_time else ""
        writer.writerow([task, method, c.metric, len(c.values), f"{c.mean:.4f}", f"{c.std:.4f}",
                         f"{c.step_time:.5f}" if c.step_time else "", f"{ratio:.4f}" if ratio != "" else "",
                         f"{c.majority:.4f}" if c.majority is not None else ""])
    return buf.getvalue()
