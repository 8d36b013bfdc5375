"""The sweep's work queue: an Optuna study whose grid is the sweep's runs, shared by any number of workers.

Each *cell* of a sweep is one run (task, method, seed and one configuration of the method's search space),
named by its fingerprint id (``provenance.py``). The study's search space is a single categorical
parameter ``cell`` over those ids, sampled by Optuna's ``GridSampler``, so the trials carry the run
fingerprint and Optuna hands each cell to one worker. ``--workers N`` starts N local processes on one study;
``--storage URL`` lets processes on other machines join it (an RDB URL: ``postgresql://…``, ``mysql://…``,
``sqlite:///…``; anything else is a path to an Optuna journal file, which also works on a shared
filesystem). The default storage is the journal file ``<out>/study.journal``: embedded, nothing to start.

The study is named by its cells (:func:`study_name`). A cell is computed once: its run folder is keyed by the fingerprint and guarded by an exclusive lock
(``<out>/.locks/<id>.lock``, ``fcntl.flock``, released by the OS when a worker dies), and a complete run is
skipped (``run_finetune``'s own rule). Interrupted trials are retried: a trial left RUNNING by a dead worker
is handed out again once every other cell has started (``GridSampler`` does that), and after the grid is
exhausted every cell whose run is not complete is enqueued once more and resumes from its last complete
checkpoint.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

__all__ = ["open_study", "run_cells", "cell_lock", "study_name", "storage_for", "start_workers"]

_RDB = ("sqlite:", "postgresql", "mysql", "oracle", "mssql")


def storage_for(out: Path, storage: str | None):
    import optuna

    if storage and storage.startswith(_RDB):
        return storage
    path = Path(storage) if storage else out / "study.journal"
    path.parent.mkdir(parents=True, exist_ok=True)
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def study_name(fids: Sequence[str]) -> str:
    """``sweep-<12 hex digits>``: named by its cells, so every worker of one sweep opens the same study and
    a sweep with other cells (other options) gets its own study in the same storage."""
    import hashlib

    return "sweep-" + hashlib.sha256("\n".join(sorted(fids)).encode()).hexdigest()[:12]


def open_study(out: str | os.PathLike[str], fids: Sequence[str], storage: str | None = None):
    """The study over the cells ``fids`` (created, or loaded when it exists)."""
    import optuna

    name = study_name(fids)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.GridSampler({"cell": list(fids)}, seed=0)
    return optuna.create_study(study_name=name, storage=storage_for(Path(out), storage), sampler=sampler,
                               direction="maximize", load_if_exists=True)


@contextlib.contextmanager
def cell_lock(out: str | os.PathLike[str], fid: str) -> Iterator[None]:
    """Hold the exclusive lock of cell ``fid`` (waits while another worker computes it)."""
    folder = Path(out) / ".locks"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{fid}.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def run_cells(cells: dict[str, Any], out: str | os.PathLike[str], run: Callable[[Any], dict[str, Any]],
              score: Callable[[dict[str, Any]], float], storage: str | None = None,
              on_done: Callable[[str, dict[str, Any]], None] | None = None) -> None:
    """Work through the study's cells in this process until none is left; ``run(config) -> metrics``."""
    import optuna

    fids = sorted(cells)
    study = open_study(out, fids, storage)

    def objective(trial: "optuna.Trial") -> float:
        fid = trial.suggest_categorical("cell", fids)
        config = cells[fid]
        trial.set_user_attr("run", str(config.out))
        trial.set_user_attr("worker", os.getpid())
        with cell_lock(out, fid):
            metrics = run(config)
        trial.set_user_attr("trained", not metrics.get("skipped", False))
        if on_done is not None:
            on_done(fid, metrics)
        return score(metrics)

    study.optimize(objective, catch=(Exception,), gc_after_trial=False)
    for fid in fids:  # retry: whatever is not complete yet (a failed or interrupted trial) runs once more
        if not _complete(cells[fid]):
            study.enqueue_trial({"cell": fid})
    pending = sum(not _complete(cells[f]) for f in fids)
    if pending:
        study.optimize(objective, n_trials=pending, catch=(Exception,), gc_after_trial=False)


def _complete(config: Any) -> bool:
    from balancedness.finetune.runfolder import read_complete

    return read_complete(config.out) is not None


def _worker(cells: dict[str, Any], out: str, storage: str | None, threads: int) -> None:
    """A spawned worker process (``--workers N``): the same loop, quietly, with its share of the cores."""
    import torch

    from balancedness.finetune.run import run_finetune
    from balancedness.finetune.select import score

    torch.set_num_threads(threads)
    run_cells(cells, out, run_finetune, score, storage)


def start_workers(n: int, cells: dict[str, Any], out: str | os.PathLike[str], storage: str | None) -> list[Any]:
    """Start ``n`` extra worker processes (spawned) on the same study; join them when done."""
    import multiprocessing

    threads = max(1, (os.cpu_count() or 1) // (n + 1))
    context = multiprocessing.get_context("spawn")
    procs = [context.Process(target=_worker, args=(cells, str(out), storage, threads), daemon=False)
             for _ in range(n)]
    for proc in procs:
        proc.start()
    return procs
