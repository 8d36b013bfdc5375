"""A run's record (``metrics.json``) and its folder, as types: :class:`RunRecord` and :class:`RunFolder`.

``RunRecord`` is what ``metrics.json`` holds, frozen, with a typed field for every key a record of this version
may carry, and ``extra`` for keys it does not know (kept in their order, after the known ones).
``RunRecord.from_json(obj).to_json()`` gives back the same JSON object, key for key and in the same order, so a
record read and written again is byte-identical (``io.write_json``). ``RunFolder(path)`` names the files of a run
folder (``metrics.json``, ``balancedness.jsonl``, ``adapter/``) and reads its record.

:func:`is_complete` is the one definition of a complete run: ``runfolder.plan_run`` skips only those, and the
sweep's retries, its selection and every table read only those.

This module is torch-free (standard library and ``balancedness.io`` only, plus the log's file name from
``balancedness.optim``, which loads nothing), so ``figures`` reads run folders through it.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from balancedness.io import read_json_object, write_json
from balancedness.optim import LOG_NAME

__all__ = ["RunRecord", "RunFolder", "RunFolderError", "is_complete", "METRICS", "LOG", "ADAPTER", "Status"]

METRICS = "metrics.json"
LOG = LOG_NAME  # the name BalancednessCallback(path=True) writes: defined once, in balancedness.optim
ADAPTER = "adapter"
#: ``running`` only in memory, before the run ends: every record written says how it ended.
Status = Literal["running", "complete", "interrupted", "failed"]


class RunFolderError(ValueError):
    """The run folder cannot be used as asked; nothing in it was changed."""


#: The keys of ``metrics.json`` in the order a run writes them; ``<metric>`` (the task metric, named by
#: ``metric``) and ``dev_<metric>`` are :attr:`RunRecord.value` and :attr:`RunRecord.dev`.
_BEFORE_VALUE = (
    "task",
    "method",
    "model",
    "seed",
    "metric",
    "steps",
    "trainable_params",
    "total_params",
    "world_size",
    "n_train",
    "n_eval",
    "n_dev",
    "source",
    "notes",
    "fingerprint_id",
    "config",
    "majority",
    "zero_shot",
    "train_seconds",
    "seconds_per_step",
    "train_loss",
)
_AFTER_VALUE = ("n",)
_AFTER_DEV = ("status", "step_reached", "checkpoint", "error", "diverged_at")
#: Keys written even when null: each goes with the key named (``seconds_per_step`` with the timing,
#: ``checkpoint`` with the step reached). Every other field that is None is absent from the file.
_WRITTEN_WITH = {"seconds_per_step": "train_seconds", "checkpoint": "step_reached"}
_REQUIRED = ("task", "method", "model", "seed", "metric", "steps", "status", "config", "fingerprint_id")


@dataclass(frozen=True)
class RunRecord:
    """One run's ``metrics.json`` (docs/finetune.md "Outputs"); see the module docstring for the JSON form.

    ``value`` is the task metric on the eval split (key ``<metric>``: ``accuracy`` in [0, 1], ``bleu``), ``dev``
    the same on the dev split (``dev_<metric>``), ``n`` the number of examples evaluated. ``skipped`` (a run
    found complete and not trained again) and ``run`` (the folder relative to the sweep folder it was
    collected from) describe how the record was reached, not the run: ``run`` is never written, ``skipped``
    only when true (``balancedness finetune --json`` prints it; a run's own file never holds it).
    """

    task: str
    method: str
    model: str
    seed: int
    metric: str
    steps: int
    status: Status
    config: dict[str, Any]
    fingerprint_id: str
    trainable_params: int | None = None
    total_params: int | None = None
    world_size: int | None = None
    n_train: int | None = None
    n_eval: int | None = None
    n_dev: int | None = None
    source: str | None = None
    notes: list[str] | None = None
    majority: float | None = None
    zero_shot: float | None = None
    train_seconds: float | None = None
    seconds_per_step: float | None = None
    train_loss: float | None = None
    value: float | None = None
    n: int | None = None
    dev: float | None = None
    step_reached: int | None = None
    checkpoint: str | None = None
    error: str | None = None
    diverged_at: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    skipped: bool = False
    run: str | None = field(default=None, compare=False)

    @property
    def is_complete(self) -> bool:
        """:func:`is_complete` of this record."""
        return is_complete(self)

    @property
    def dev_key(self) -> str:
        return f"dev_{self.metric}"

    def to_json(self) -> dict[str, Any]:
        """The JSON object of ``metrics.json`` (keys in the order a run writes them)."""
        out: dict[str, Any] = {}
        for key in (*_BEFORE_VALUE, self.metric, *_AFTER_VALUE, self.dev_key, *_AFTER_DEV):
            name = {self.metric: "value", self.dev_key: "dev"}.get(key, key)
            value = getattr(self, name)
            if value is not None or (key in _WRITTEN_WITH and getattr(self, _WRITTEN_WITH[key]) is not None):
                out[key] = value
        out.update(self.extra)
        if self.skipped:
            out["skipped"] = True
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> RunRecord:
        """The record of a ``metrics.json`` object; ValueError naming a missing key."""
        missing = [key for key in _REQUIRED if key not in obj]
        if missing:
            raise ValueError(f"a run record needs the keys {', '.join(missing)}; got {', '.join(obj) or 'none'}")
        metric = str(obj["metric"])
        names = {metric: "value", f"dev_{metric}": "dev", "skipped": "skipped"}
        known = {f.name for f in dataclasses.fields(cls)} - {"value", "dev", "extra", "skipped", "run"}
        values: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in obj.items():
            if key in names:
                values[names[key]] = value
            elif key in known:
                values[key] = value
            else:
                extra[key] = value
        return cls(**values, extra=extra)

    def replace(self, **changes: Any) -> RunRecord:
        """A copy with ``changes`` (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_complete(record: RunRecord | Mapping[str, Any] | None) -> bool:
    """The one definition of a complete run: ``status`` is ``complete`` and its training loss and task metric
    are finite numbers (a run recorded complete with a NaN loss, by an older version, is not)."""
    if record is None:
        return False
    status: object
    loss: object
    value: object
    if isinstance(record, RunRecord):
        status, loss, value = record.status, record.train_loss, record.value
    else:
        status, loss, value = record.get("status"), record.get("train_loss"), record.get(str(record.get("metric")))
    return status == "complete" and _finite_number(loss) and _finite_number(value)


class RunFolder:
    """A run folder: where its files are, and its record. Reading never writes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    @property
    def metrics(self) -> Path:
        """``metrics.json``: the :class:`RunRecord`."""
        return self.path / METRICS

    @property
    def log(self) -> Path:
        """``balancedness.jsonl``: per-layer B_l and the gradient gap every ``log_every`` steps."""
        return self.path / LOG

    @property
    def adapter(self) -> Path:
        """``adapter/``: the peft adapter of a complete run."""
        return self.path / ADAPTER

    @property
    def record(self) -> RunRecord | None:
        """The run's record; None when there is no ``metrics.json``; RunFolderError naming the file when it is
        damaged or not a run record."""
        remedy = "replace the run with overwrite (--overwrite)"
        try:
            obj = read_json_object(self.metrics, remedy)
            return None if obj is None else RunRecord.from_json(obj)
        except ValueError as exc:
            if str(self.metrics) in str(exc):
                raise RunFolderError(str(exc)) from None
            raise RunFolderError(f"{str(self.metrics)!r} is not a run record ({exc}); {remedy}") from None

    @property
    def is_complete(self) -> bool:
        """Whether the folder holds a complete run (:func:`is_complete`); False when absent or damaged."""
        try:
            return is_complete(self.record)
        except RunFolderError:
            return False

    def complete_record(self) -> RunRecord | None:
        """The record when it is complete; None otherwise (absent, unfinished, failed or damaged)."""
        try:
            record = self.record
        except RunFolderError:
            return None
        return record if is_complete(record) else None

    def write(self, record: RunRecord) -> Path:
        """Write ``record`` as ``metrics.json`` (atomically)."""
        return write_json(self.metrics, record.to_json())
