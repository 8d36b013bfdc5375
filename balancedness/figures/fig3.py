"""Figure 3: implicit regularization of SAM on LoRA — 2|B_{t,l}| of a query layer, SAM vs the base optimizer.

The paper (spec §5) plots RTE layer 1, SST-5 layer 12 and MNLI layer 24 of RoBERTa-large. We plot the early
(0), middle (L//2) and last (L−1) query LoRA pair of whatever model the runs used (MiniLM: 0, 3, 5; SmolLM2:
0, 15, 29), one line per run: colour by method, line style by seed (a seed fixes the LoRA initialization, so
SAM and AdamW runs of one seed start from the same B_0). B_l = ½(‖A_l‖² − ‖B_l‖²)
(spec §1.2) comes from ``balancedness.jsonl`` (``BalancednessCallback``); at LoRA init B = 0, so
2|B_l| = ‖A_l‖² there. The base optimizer is AdamW (our LoRA), not SGD.

``make_fig3(out_dir, logs=[...])`` plots existing runs (each log's run record beside it, read through
``finetune.record.RunFolder``, says task and method); it reads logs only. ``balancedness figures fig3``
without ``--log`` first has the finetune application produce them (``balancedness.finetune.fig3_runs``). With
one task the three panels are three layers of that task.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from balancedness.finetune.record import LOG, RunFolder
from balancedness.io import write_text
from balancedness.methods import METHODS, Derived

__all__ = ["make_fig3", "load_logs"]

_LAYER = re.compile(r"layers?\.(\d+)\.")
_QUERY = ("query", "q_proj")
_SEED_STYLES = ("-", "--", ":", "-.")
#: ``{method: (colour, legend label)}``, from the method table (``balancedness.methods``).
METHOD_STYLE = Derived(lambda: {name: (row.colour, row.short) for name, row in METHODS.items()})


def load_logs(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """``[{"task", "method", "seed", "steps": [...], "layers": {index: [2|B_l| per step]}}]`` for query pairs."""
    runs = []
    for path in map(Path, paths):
        path = RunFolder(path).log if path.is_dir() else path
        if not path.is_file():
            raise FileNotFoundError(f"balancedness log {str(path)!r} does not exist")
        meta = RunFolder(path.parent).record  # the run's record beside its log (None: absent)
        records = _read_records(path)
        layers: dict[int, list[float]] = {}
        for record in records:
            for name, b in record["balancedness"].items():
                match = _LAYER.search(name)
                if match and any(q in name.split(".") for q in _QUERY):
                    layers.setdefault(int(match.group(1)), []).append(float("nan") if b is None else 2.0 * abs(b))
        if not layers:
            raise ValueError(f"{str(path)!r} has no query-layer LoRA records")
        runs.append(
            {
                "task": meta.task if meta else path.parent.name,
                "method": meta.method if meta else "?",
                "model": meta.model if meta else None,
                "seed": meta.seed if meta else None,
                "steps": [r["step"] for r in records],
                "layers": layers,
                "path": str(path),
            }
        )
    return runs


def _read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a ``balancedness.jsonl``; ValueError naming the file and line of one that is not a
    record ``{"step": n, "balancedness": {layer: value}}`` (a value may be null: not finite when written)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"balancedness log {str(path)!r} is not readable text ({exc})") from None
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not (
                isinstance(record["step"], int)
                and isinstance(record["balancedness"], dict)
                and all(v is None or isinstance(v, (int, float)) for v in record["balancedness"].values())
            ):
                raise ValueError
        except (ValueError, KeyError, TypeError):
            raise ValueError(
                f"balancedness log {str(path)!r} is not a log of balancedness records: line {number} "
                f"is {line[:60]!r}; expected the {LOG} of a finetune run"
            ) from None
        records.append(record)
    return records


def _panels(runs: list[dict[str, Any]]) -> list[tuple[str, int]]:
    """(task, layer) per panel: early/middle/last layer over the tasks in order (three layers for one task)."""
    tasks = list(dict.fromkeys(r["task"] for r in runs))
    n_layers = max(max(r["layers"]) for r in runs) + 1
    picks = [0, n_layers // 2, n_layers - 1]
    if len(tasks) == 1:
        return [(tasks[0], layer) for layer in picks]
    return [(task, picks[min(i, 2)] if len(tasks) <= 3 else picks[i % 3]) for i, task in enumerate(tasks)]


def make_fig3(out_dir: str | Path, logs: Sequence[str | Path], formats: Sequence[str] = ("png",)) -> list[Path]:
    """Draw Figure 3 into ``out_dir/fig3.<fmt>`` with the data as ``fig3.json`` and ``fig3.csv``.

    Args:
        out_dir: output folder.
        logs: ``balancedness.jsonl`` files (or run folders). Producing them is the finetune application's job
            (``balancedness.finetune.fig3_runs``); this module only reads them.
        formats: image formats (png, pdf, svg).
    Returns the written paths.
    """
    from balancedness.figures.style import apply_style, new_figure, panel_label, save_figure

    out_dir = Path(out_dir)
    runs = load_logs(logs)
    panels = _panels(runs)
    apply_style()
    fig, axes = new_figure(1, len(panels), width=3.3 * len(panels), height=3.0)
    rows = []
    for i, (ax, (task, layer)) in enumerate(zip(axes.ravel(), panels, strict=True)):
        labelled = set()
        panel_runs = [r for r in runs if r["task"] == task and layer in r["layers"]]
        seeds = sorted({r["seed"] for r in panel_runs}, key=str)
        for run in panel_runs:
            color, label = METHOD_STYLE.get(run["method"], ("#d62728", run["method"]))
            values = run["layers"][layer]
            # a seed fixes the LoRA init, so runs of one seed share a line style and start from the same B_0
            style = _SEED_STYLES[seeds.index(run["seed"]) % len(_SEED_STYLES)]
            ax.plot(
                run["steps"][: len(values)],
                values,
                color=color,
                linestyle=style,
                label=None if run["method"] in labelled else label,
            )
            labelled.add(run["method"])
            rows += [(task, run["method"], run["seed"], layer, s, v) for s, v in zip(run["steps"], values, strict=True)]
        ax.set_title(f"{task}: query layer {layer}")
        ax.set_xlabel("step t")
        ax.set_ylabel(r"$2|B_{t,l}|$")
        ax.legend(loc="best")
        panel_label(ax, f"({chr(97 + i)})")
    models = ", ".join(dict.fromkeys(str(r["model"]) for r in runs if r["model"])) or "LoRA model"
    seeds_note = " (line style: seed)" if len({r["seed"] for r in runs}) > 1 else ""
    fig.suptitle(
        f"Implicit regularization of SAM on LoRA ({models}): $2|B_{{t,l}}|$, SAM vs AdamW{seeds_note}", fontsize=10
    )
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["task", "method", "seed", "layer", "step", "two_abs_b"])
    writer.writerows(rows)
    write_text(out_dir / "fig3.csv", buf.getvalue())
    data = {
        "panels": [{"task": task, "layer": layer} for task, layer in panels],
        "runs": [
            {k: v for k, v in r.items() if k != "layers"} | {"layers": {str(k): v for k, v in r["layers"].items()}}
            for r in runs
        ],
    }
    return save_figure(fig, out_dir, "fig3", formats, data) + [out_dir / "fig3.csv"]
