"""Data layer of ``balancedness finetune``: the task registry and loaders (see docs/data.md).

``load_task(name, ...)`` (or ``load_task(TaskOptions(...))``) returns a :class:`TaskData` (train/eval
:class:`Example` lists, label names, metric) for a built-in task (``known_tasks()``) or the user's own
CSV/TSV/JSONL files.
"""

from .core import DATA_ENV, Example, TaskData, default_data_root, sample_shots
from .registry import LMBFF_SEEDS, TASKS, TaskOptions, TaskSpec, get_spec, known_tasks, load_task, validate_task

__all__ = [
    "DATA_ENV",
    "Example",
    "LMBFF_SEEDS",
    "TASKS",
    "TaskData",
    "TaskOptions",
    "TaskSpec",
    "default_data_root",
    "get_spec",
    "known_tasks",
    "load_task",
    "sample_shots",
    "validate_task",
]
