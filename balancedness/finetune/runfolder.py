"""What a run folder holds and what a new run may do with it: start, skip, resume, or refuse.

A run folder is owned by one fingerprint (``run.json``, :mod:`balancedness.finetune.provenance`). Before any
weights load, :func:`plan_run` compares the requested run with the folder:

=================================================  ===========================================================
the folder                                         what happens
=================================================  ===========================================================
absent or empty                                    a new run (``fresh``)
``overwrite``                                      the old folder is moved aside in one rename and deleted;
                                                   a new run starts in an empty folder (``fresh``)
same fingerprint, ``metrics.json`` complete        nothing to do (``skip``), with or without ``resume``
same fingerprint, unfinished, ``resume``           continue from the last *complete* checkpoint (``resume``;
                                                   from step 0 when there is none: the same result)
same fingerprint, unfinished, no ``resume``        refused: say ``resume`` or ``overwrite``
another fingerprint                                refused, naming every differing option; nothing touched
files but no ``run.json`` (not ours, or older)     refused; nothing touched
=================================================  ===========================================================

Refusals raise :class:`RunFolderError` (the CLI exits 2). Damaged files (``run.json``, ``metrics.json``, a
checkpoint's files, ``balancedness.jsonl``) are named in the error.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping

from balancedness.finetune.checkpoints import COMPLETE, checkpoint_step, last_complete_checkpoint, validate_checkpoint
from balancedness.finetune.provenance import RUN_FILE, differences, fingerprint, fingerprint_id, read_run_file
from balancedness.io import read_json_object, write_json

__all__ = ["RunFolderError", "RunPlan", "plan_run", "begin_run", "read_metrics", "METRICS"]

METRICS = "metrics.json"
LOG = "balancedness.jsonl"


class RunFolderError(ValueError):
    """The run folder cannot be used as asked; nothing in it was changed."""


@dataclass
class RunPlan:
    """``action``: fresh / resume / skip; the run's fingerprint; the checkpoint to resume from; old metrics."""

    action: Literal["fresh", "resume", "skip"]
    fingerprint: dict[str, Any]
    checkpoint: Path | None = None
    previous: dict[str, Any] | None = None
    replace: bool = False


def read_metrics(out: str | os.PathLike[str]) -> dict[str, Any] | None:
    """``out/metrics.json`` as a dict; None when absent; RunFolderError naming the file when damaged."""
    try:
        return read_json_object(Path(out) / METRICS, "replace the run with overwrite (--overwrite)")
    except ValueError as exc:
        raise RunFolderError(str(exc)) from None


def plan_run(options: Mapping[str, Any], task: Any, model_path: str, *, out: str | os.PathLike[str],
             resume: bool, overwrite: bool, world_size: int, main: bool = True) -> RunPlan:
    """Decide what to do with ``out`` for a run of ``options`` (see the table above). Writes nothing.

    Non-main torchrun ranks (``main=False``) never refuse (rank 0 does, and torchrun then stops them); they
    only follow: skip a complete run, resume from the last complete checkpoint, or start fresh.
    """
    if resume and overwrite:
        raise RunFolderError("resume and overwrite exclude each other: resume continues the run in the folder, "
                             "overwrite deletes it")
    fp = fingerprint(options, task, model_path, world_size)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"out {str(out)!r} is a file, not a folder")
    if not out.exists() or not any(out.iterdir()):
        return RunPlan("fresh", fp)
    if overwrite:
        return RunPlan("fresh", fp, replace=True)
    if not main:
        metrics = _quiet(read_metrics, out)
        if metrics and metrics.get("status") == "complete" and metrics.get("fingerprint_id") == fingerprint_id(fp):
            return RunPlan("skip", fp, previous=metrics)
        if not resume:
            return RunPlan("fresh", fp)
        checkpoint = last_complete_checkpoint(out / "checkpoints")
        if checkpoint is not None:
            validate_checkpoint(checkpoint)  # every rank reads it: every rank refuses a file that needs code
        return RunPlan("resume", fp, checkpoint)
    record = read_run_file(out)
    if record is None:
        raise RunFolderError(f"out {str(out)!r} holds files that no run of this version recorded (no {RUN_FILE}); "
                             "nothing was changed: choose another out folder, or replace it with overwrite "
                             "(--overwrite)")
    changed = differences(record["fingerprint"], fp)
    if changed:
        raise RunFolderError(f"out {str(out)!r} holds a run with other settings ({'; '.join(changed)}); nothing was "
                             "changed: choose another out folder, or replace that run with overwrite (--overwrite)")
    metrics = read_metrics(out)
    if metrics and metrics.get("status") == "complete":
        return RunPlan("skip", fp, previous=metrics)
    checkpoint = last_complete_checkpoint(out / "checkpoints")
    if not resume:
        where = f"checkpoint at step {checkpoint_step(checkpoint)}" if checkpoint else "no complete checkpoint"
        raise RunFolderError(f"out {str(out)!r} holds an unfinished run with these settings ({where}); continue it "
                             "with resume (--resume), or replace it with overwrite (--overwrite)")
    if checkpoint is not None:
        validate_checkpoint(checkpoint)
    _check_log(out, checkpoint)
    return RunPlan("resume", fp, checkpoint, previous=metrics)


def _quiet(read, out):
    try:
        return read(out)
    except ValueError:
        return None


def _check_log(out: Path, checkpoint: Path | None) -> None:
    """Parse the log up front so a damaged one is named before training (trimming happens at train begin)."""
    from balancedness.optim.callbacks import kept_log_lines

    kept_log_lines(out / LOG, 0 if checkpoint is None else checkpoint_step(checkpoint))


def begin_run(plan: RunPlan, out: str | os.PathLike[str]) -> None:
    """Make ``out`` ready for ``plan`` (main process only): replace, create, record the fingerprint, tidy."""
    out = Path(out)
    if plan.replace:
        aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.replaced-", dir=out.parent))
        out.rename(aside / out.name)  # one rename: the old run is gone from `out` at once
        shutil.rmtree(aside)
    out.mkdir(parents=True, exist_ok=True)
    if plan.action == "fresh":
        for stale in (METRICS, LOG, "zero_shot.json"):
            (out / stale).unlink(missing_ok=True)
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
        write_json(out / RUN_FILE, {"fingerprint": plan.fingerprint, "id": fingerprint_id(plan.fingerprint)})
        return
    ckpt_dir = out / "checkpoints"  # resume: drop checkpoints a kill left unmarked
    if ckpt_dir.is_dir():
        for folder in ckpt_dir.iterdir():
            if folder.is_dir() and not (folder / COMPLETE).is_file():
                shutil.rmtree(folder, ignore_errors=True)
