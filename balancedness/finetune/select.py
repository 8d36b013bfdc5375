"""Dev selection: for each task × method × seed, the configuration with the best dev metric; its test metric.

The paper tunes every method on its grid and reports the test metric of the chosen configuration. Here the
choice uses only the task's dev split (LM-BFF ``dev.tsv``: 16 examples per class of the same seed's split;
FewGLUE ``dev32.jsonl``), never the test set. Ties on the dev metric, common with 32–96 dev examples, go
to the configuration listed first in the search space (``search.py``), so the choice is deterministic and
independent of run order. A task without a dev split can only run a search space of one configuration.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from balancedness.finetune.record import RunRecord

__all__ = ["Selected", "score", "select_runs", "selected_options"]


@dataclass(frozen=True)
class Selected:
    """The run dev selection chose for one (task, method, seed), and how many configurations it was chosen from."""

    record: RunRecord
    candidates: int


def score(record: RunRecord) -> float:
    """The number selection maximizes: the dev metric, or the test metric when the task has no dev split."""
    return float(record.dev if record.dev is not None else record.value)  # type: ignore[arg-type]  # complete: set


def select_runs(runs: Sequence[RunRecord], order: dict[str, int]) -> list[Selected]:
    """One run per (task, method, seed): the best dev metric, ties to the lowest ``order[run.run]`` (the run's
    folder relative to the sweep folder, so the choice does not depend on the path the sweep was given)."""
    groups: dict[tuple[str, str, int], list[RunRecord]] = defaultdict(list)
    for run in runs:
        groups[(run.task, run.method, run.seed)].append(run)
    chosen = []
    for key in sorted(groups, key=lambda k: (k[0], k[1], k[2])):
        best = max(groups[key], key=lambda r: (score(r), -order[r.run]))  # type: ignore[index]  # collected: run set
        chosen.append(Selected(best, len(groups[key])))
    return chosen


def selected_options(run: RunRecord, searched: set[str]) -> dict[str, Any]:
    """The searched options of a selected run, as configured (a config field, or one of its ``hparams``)."""
    config = {**run.config.get("hparams", {}), **run.config}
    return {k: config[k] for k in sorted(searched) if k in config}
