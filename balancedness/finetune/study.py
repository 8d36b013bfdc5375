"""The sweep's work queue: an Optuna study whose grid is the sweep's runs, shared by any number of workers.

Each *cell* of a sweep is one run (task, method, seed and one configuration of the method's search space),
named by its fingerprint id (``provenance.py``). The study's search space is a single categorical
parameter ``cell`` over those ids, sampled by Optuna's ``GridSampler``, so the trials carry the run
fingerprint and Optuna hands each cell to one worker. ``--workers N`` starts N local processes on one study;
``--storage URL`` lets processes on other machines join it (an RDB URL: ``postgresql://…``, ``mysql://…``,
``sqlite:///…``; anything else is a path to an Optuna journal file, which also works on a shared
filesystem). The default storage is the journal file ``<out>/study.journal``: embedded, nothing to start.

The study is named by its cells (:func:`study_name`). A cell is computed once: its run folder is keyed by the
fingerprint and guarded by an exclusive lock (``<out>/.locks/<id>.lock``, ``fcntl.flock``, released by the OS when a
worker dies), and a complete run is skipped (``run_finetune``'s own rule). Interrupted trials are retried: a trial left
RUNNING by a dead worker is handed out again once every other cell has started (``GridSampler`` does that), and after
the grid is exhausted every cell whose run is not complete is enqueued once more and resumes from its last complete
checkpoint.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from balancedness.finetune.record import RunFolder, RunRecord

__all__ = [
    "open_study",
    "run_cells",
    "cell_lock",
    "study_name",
    "storage_for",
    "start_workers",
    "repair_journal",
    "StorageError",
]

_RDB = ("sqlite:", "postgresql", "mysql", "oracle", "mssql")


def storage_for(out: Path, storage: str | None):
    """The Optuna storage of a sweep: an RDB URL (checked: driver, folder, connection) or a journal file
    (default ``out/study.journal``; a torn last record is repaired first, see :func:`repair_journal`).
    A storage that cannot be used raises :class:`StorageError` naming it, its password masked."""
    import optuna

    if storage and storage.startswith(_RDB):
        return _rdb_storage(storage)
    path = Path(storage) if storage else out / "study.journal"
    if path.is_dir():
        raise StorageError(
            f"storage (--storage) {str(path)!r} is a folder; expected a journal file path or an RDB "
            "URL (postgresql://…, mysql://…, sqlite:///…)"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(
            f"storage (--storage) {str(path)!r}: its folder cannot be created ({exc.strerror})"
        ) from None
    repair_journal(path)
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


class StorageError(ValueError):
    """The sweep's storage cannot be used (the CLI exits 2); the message never holds the URL's password."""


def _masked(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***``."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


def _rdb_storage(url: str):
    """``optuna.storages.RDBStorage(url)``, with every way it fails up front said in one sentence."""
    import sqlalchemy.exc

    shown = _masked(url)
    if url.startswith("sqlite:///"):
        folder = Path(url.removeprefix("sqlite:///").split("?")[0]).parent
        if not folder.is_dir():
            raise StorageError(
                f"storage (--storage) {shown!r}: the folder {str(folder)!r} of the database file does "
                "not exist; create it first"
            )
    try:
        return _create_rdb(url)
    except ImportError as exc:  # optuna re-raises sqlalchemy's ImportError without the module's name
        driver = getattr(exc.__cause__, "name", None) or exc.name or "its driver"
        raise StorageError(
            f"storage (--storage) {shown!r} needs the database driver module {driver!r}, which is not "
            "installed (PostgreSQL: pip install 'psycopg[binary]'; MySQL: pip install pymysql and "
            "write mysql+pymysql://…)"
        ) from None
    except sqlalchemy.exc.SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        password = re.search(r"://[^:/@]*:([^@/]*)@", url)
        if password and password.group(1):
            reason = reason.replace(password.group(1), "***")
        raise StorageError(f"storage (--storage) {shown!r} cannot be used: {_masked(reason)}") from None


def _create_rdb(url: str, attempts: int = 5):
    """``RDBStorage(url)``; processes starting at once on a new database race to create Optuna's tables, and the
    loser's unique-key violation is retried (by then the tables exist)."""
    import time

    import optuna
    import sqlalchemy.exc

    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url)
        except sqlalchemy.exc.IntegrityError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


def repair_journal(path: Path) -> int:
    """Make the journal file ``path`` safe to append to; returns the number of bytes dropped.

    A worker killed while appending leaves a *torn last record*: bytes after the last newline. Optuna skips it
    when reading, but its next append would glue a record to it and corrupt the journal for good. The torn
    bytes are dropped (under the journal's own lock, so no live writer is mid-record): they never formed a
    record anyone read. Any other damage (a line that is not a JSON record) raises :class:`StorageError`
    naming the file and line: the journal only queues the cells, so moving it aside is safe (a new journal
    skips the complete runs in their folders and resumes the others).
    """
    from optuna.storages.journal import JournalFileSymlinkLock

    if not path.is_file():
        return 0
    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        data = path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]
        for number, line in enumerate(complete.splitlines(), 1):
            try:
                json.loads(line)
            except ValueError:
                raise StorageError(
                    f"the study journal {str(path)!r} is damaged: line {number} is not a JSON record; "
                    "move the file aside and run again (the run folders keep every result: complete "
                    "runs are skipped, unfinished ones resume)"
                ) from None
        torn = len(data) - len(complete)
        if torn:
            with open(path, "r+b") as fh:
                fh.truncate(len(complete))
                os.fsync(fh.fileno())
            print(
                f"repaired the study journal {str(path)!r}: dropped its torn last record ({torn} bytes), left by a "
                "worker killed while writing it",
                file=sys.stderr,
            )
        return torn
    finally:
        lock.release()


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
    return optuna.create_study(
        study_name=name,
        storage=storage_for(Path(out), storage),
        sampler=sampler,
        direction="maximize",
        load_if_exists=True,
    )


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


def run_cells(
    cells: dict[str, Any],
    out: str | os.PathLike[str],
    run: Callable[[Any], RunRecord | None],
    score: Callable[[RunRecord], float],
    storage: str | None = None,
    on_done: Callable[[str, RunRecord], None] | None = None,
) -> None:
    """Work through the study's cells in this process until none is left; ``run(config) -> RunRecord``."""
    import optuna

    fids = sorted(cells)
    study = open_study(out, fids, storage)
    _quiet_interrupts()

    def objective(trial: optuna.Trial) -> float:
        fid = trial.suggest_categorical("cell", fids)
        config = cells[fid]
        trial.set_user_attr("run", str(config.out))
        trial.set_user_attr("worker", os.getpid())
        with cell_lock(out, fid):
            record = run(config)
        if record is None:
            raise RuntimeError(f"cell {fid}: the run returned no record (not the main process)")
        trial.set_user_attr("trained", not record.skipped)
        if on_done is not None:
            on_done(fid, record)
        return score(record)

    study.optimize(objective, catch=(Exception,), gc_after_trial=False)
    for fid in fids:  # retry: whatever is not complete yet (a failed or interrupted trial) runs once more
        if not _complete(cells[fid]):
            study.enqueue_trial({"cell": fid})
    pending = sum(not _complete(cells[f]) for f in fids)
    if pending:
        study.optimize(objective, n_trials=pending, catch=(Exception,), gc_after_trial=False)


class _InterruptFilter(logging.Filter):
    """Drops Optuna's report of a trial stopped by Ctrl-C (a warning with the KeyboardInterrupt's traceback, and
    the "failed with value None" line after it): every worker would print it; the sweep says it once. The
    trial is still recorded as failed, and retried."""

    def __init__(self) -> None:
        super().__init__()
        self.after_interrupt = False

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt):
            self.after_interrupt = True
            return False
        if self.after_interrupt and "failed with value" in record.getMessage():
            self.after_interrupt = False
            return False
        return True


def _quiet_interrupts() -> None:
    """Install :class:`_InterruptFilter` on the logger of Optuna's trial loop (once per process)."""
    logger = logging.getLogger("optuna.study._optimize")
    if not any(isinstance(f, _InterruptFilter) for f in logger.filters):
        logger.addFilter(_InterruptFilter())


def _complete(config: Any) -> bool:
    return RunFolder(config.out).is_complete


def _worker(cells: dict[str, Any], out: str, storage: str | None, threads: int, plugins: tuple[str, ...] = ()) -> None:
    """A spawned worker process (``--workers N``): the same loop, quietly, with its share of the cores, after
    loading the main process's ``--plugin`` files (their methods' rows and bindings).

    Ctrl-C in a terminal reaches every process of the sweep: a worker finishes its step and checkpoints it
    (``run_finetune``), then exits with code 130 and no traceback; the main process says it once.
    """
    try:
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):  # the main process speaks
            import torch

            from balancedness.finetune.bindings import load_plugin
            from balancedness.finetune.run import run_finetune
            from balancedness.finetune.select import score

            for plugin in plugins:
                load_plugin(plugin)
            torch.set_num_threads(threads)
            run_cells(cells, out, run_finetune, score, storage)
    except KeyboardInterrupt:
        raise SystemExit(130) from None


def start_workers(n: int, cells: dict[str, Any], out: str | os.PathLike[str], storage: str | None) -> list[Any]:
    """Start ``n`` extra worker processes (spawned) on the same study; join them when done."""
    import multiprocessing

    from balancedness.finetune.bindings import loaded_plugins

    threads = max(1, (os.cpu_count() or 1) // (n + 1))
    context = multiprocessing.get_context("spawn")
    procs = [
        context.Process(target=_worker, args=(cells, str(out), storage, threads, loaded_plugins()), daemon=False)
        for _ in range(n)
    ]
    for proc in procs:
        proc.start()
    return procs
