"""Dev selection: for each task × method × seed, the configuration with the best dev metric; its test metric.

The paper tunes every method on its grid and reports the test metric of the chosen configuration. Here the
choice uses only the task's dev split (LM-BFF ``dev.tsv``: 16 examples per class of the same seed's split;
FewGLUE ``dev32.jsonl``), never the test set. Ties on the dev metric, common with 32–96 dev examples, go
to the configuration listed first in the search space (``search.py``), so the choice is deterministic and
independent of run order. A task without a dev split can only run a search space of one configuration.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Sequence

__all__ = ["score", "select_runs", "selected_options"]


def score(metrics: dict[str, Any]) -> float:
    """The number selection maximizes: the dev metric, or the test metric when the task has no dev split."""
    key = f"dev_{metrics['metric']}"
    return float(metrics[key] if key in metrics else metrics[metrics["metric"]])


def select_runs(runs: Sequence[dict[str, Any]], order: dict[str, int]) -> list[dict[str, Any]]:
    """One run per (task, method, seed): the best dev metric, ties to the lowest ``order[run["run"]]`` (the
    run's folder relative to the sweep folder, so the choice does not depend on the path the sweep was given)."""
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        groups[(run["task"], run["method"], run["seed"])].append(run)
    chosen = []
    for key in sorted(groups, key=lambda k: (k[0], k[1], k[2])):
        best = max(groups[key], key=lambda r: (score(r), -order[r["run"]]))
        chosen.append({**best, "candidates": len(groups[key])})
    return chosen


def selected_options(run: dict[str, Any], searched: set[str]) -> dict[str, Any]:
    """The searched options of a selected run, as configured (a config field, or one of its ``hparams``)."""
    config = {**run["config"].get("hparams", {}), **run["config"]}
    return {k: config[k] for k in sorted(searched) if k in config}
