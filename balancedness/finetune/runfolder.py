"""What a run folder holds and what a new run may do with it: start, skip, resume, or refuse.

A run folder is owned by one fingerprint (``run.json``, :mod:`balancedness.finetune.provenance`) and has one
writer at a time: :func:`hold_run_folder` takes an exclusive ``flock`` on the folder itself for the run's
life (nothing is written for it; the OS releases it when the process dies, so a kill leaves no stale lock),
and a second process is refused naming the holder. Before any weights load, :func:`plan_run` compares the
requested run with the folder:

=================================================  ===========================================================
the folder                                         what happens
=================================================  ===========================================================
absent or empty                                    a new run (``fresh``)
``overwrite``, a run or sweep folder of ours       the old folder is swapped for an empty one in one rename
                                                   and deleted; a new run starts (``fresh``). Anything else
                                                   (no ``run.json``, ``/``, home, the working directory or
                                                   above, a git working tree, a symlink) is refused
same fingerprint, complete (:func:`is_complete`)   nothing to do (``skip``), with or without ``resume``
same fingerprint, failed: diverged                 refused with :class:`RunFailedError` (training again
                                                   diverges again): change the settings or ``overwrite``
same fingerprint, unfinished, ``resume``           continue from the last *complete* checkpoint (``resume``;
                                                   from step 0 when there is none: the same result)
same fingerprint, unfinished, no ``resume``        refused: say ``resume`` or ``overwrite``
another fingerprint                                refused, naming every differing option; nothing touched
files but no ``run.json`` (not ours, or older)     refused; nothing touched
=================================================  ===========================================================

A run that failed for another reason (a write that failed: full disk, read-only folder) counts as
unfinished. Refusals raise :class:`RunFolderError` (the CLI exits 2). Damaged files (``run.json``,
``metrics.json``, a checkpoint's files, ``balancedness.jsonl``) are named in the error.

What a run folder holds and the one definition of a complete run (:func:`is_complete`) are
:mod:`balancedness.finetune.record`'s (``RunFolder``, ``RunRecord``): ``plan_run`` skips only complete runs, and
the sweep's retries, its selection and every table read only those.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from balancedness.finetune.checkpoints import COMPLETE, checkpoint_step, last_complete_checkpoint, validate_checkpoint
from balancedness.finetune.provenance import RUN_FILE, differences, fingerprint_id, read_run_file
from balancedness.finetune.record import LOG, METRICS, RunFolder, RunFolderError, RunRecord, is_complete
from balancedness.io import make_temp_dir, write_json

__all__ = [
    "RunFolderError",
    "RunFailedError",
    "RunFolderLock",
    "RunPlan",
    "plan_run",
    "begin_run",
    "read_metrics",
    "read_complete",
    "is_complete",
    "hold_run_folder",
    "check_overwrite",
    "METRICS",
    "RunFolder",
    "RunRecord",
]


class RunFailedError(RuntimeError):
    """The run ended as failed (it diverged, or its outputs could not be written); ``metrics.json`` says
    ``"status": "failed"`` where it could be written. The CLI exits 1."""


def read_complete(out: str | os.PathLike[str]) -> RunRecord | None:
    """``out``'s record when it is a complete run (:func:`is_complete`); None otherwise (absent, unfinished,
    failed or damaged)."""
    return RunFolder(out).complete_record()


def _diverged(record: RunRecord | None) -> bool:
    return record is not None and record.status == "failed" and record.diverged_at is not None


@dataclass
class RunPlan:
    """``action``: fresh / resume / skip; the run's fingerprint; the checkpoint to resume from; old metrics."""

    action: Literal["fresh", "resume", "skip"]
    fingerprint: dict[str, Any]
    checkpoint: Path | None = None
    previous: RunRecord | None = None
    replace: bool = False


def read_metrics(out: str | os.PathLike[str]) -> RunRecord | None:
    """``out``'s record (``metrics.json``); None when absent; RunFolderError naming the file when damaged."""
    return RunFolder(out).record


def plan_run(
    fp: dict[str, Any],
    *,
    out: str | os.PathLike[str],
    resume: bool,
    overwrite: bool,
    world_size: int,
    main: bool = True,
) -> RunPlan:
    """Decide what to do with ``out`` for the run of fingerprint ``fp`` (``provenance.fingerprint``; see the
    table above). Writes nothing.

    Non-main torchrun ranks (``main=False``) never refuse (rank 0 does, and torchrun then stops them); they
    only follow: skip a complete run, resume from the last complete checkpoint, or start fresh.
    """
    if resume and overwrite:
        raise RunFolderError(
            "resume and overwrite exclude each other: resume continues the run in the folder, overwrite deletes it"
        )
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"out {str(out)!r} is a file, not a folder")
    if not out.exists() or not any(out.iterdir()):
        return RunPlan("fresh", fp)
    if overwrite:
        check_overwrite(out)
        return RunPlan("fresh", fp, replace=True)
    return _main_plan(out, fp, resume, world_size) if main else _follower_plan(out, fp, resume, world_size)


def _follower_plan(out: Path, fp: dict[str, Any], resume: bool, world_size: int) -> RunPlan:
    """A non-main rank's plan for a non-empty ``out``: skip a complete run, resume, or start fresh."""
    metrics = RunFolder(out).complete_record()
    if metrics is not None and metrics.fingerprint_id == fingerprint_id(fp):
        return RunPlan("skip", fp, previous=metrics)
    if not resume:
        return RunPlan("fresh", fp)
    checkpoint = last_complete_checkpoint(out / "checkpoints")
    if checkpoint is not None:  # every rank reads it: every rank refuses a file that needs code
        validate_checkpoint(checkpoint, world_size)
    return RunPlan("resume", fp, checkpoint)


def _main_plan(out: Path, fp: dict[str, Any], resume: bool, world_size: int) -> RunPlan:
    """The main rank's plan for a non-empty ``out``: refuse a foreign or other-settings folder and a diverged
    run, skip a complete one, resume (with ``resume``) or refuse an unfinished one."""
    record = read_run_file(out)
    if record is None:
        raise RunFolderError(
            f"out {str(out)!r} holds files that no run of this version recorded (no {RUN_FILE}); "
            "nothing was changed: choose another out folder (overwrite deletes only a run or "
            "sweep folder of this project)"
        )
    changed = differences(record["fingerprint"], fp)
    if changed:
        raise RunFolderError(
            f"out {str(out)!r} holds a run with other settings ({'; '.join(changed)}); nothing was "
            "changed: choose another out folder, or replace that run with overwrite (--overwrite)"
        )
    metrics = read_metrics(out)
    if is_complete(metrics):
        return RunPlan("skip", fp, previous=metrics)
    if metrics is not None and _diverged(metrics):
        raise RunFailedError(
            f"out {str(out)!r} holds this run, failed: {metrics.error}; training it again "
            "diverges again: change the settings (e.g. a smaller --lr), or replace it with "
            "overwrite (--overwrite)"
        )
    checkpoint = last_complete_checkpoint(out / "checkpoints")
    if not resume:
        where = f"checkpoint at step {checkpoint_step(checkpoint)}" if checkpoint else "no complete checkpoint"
        failed = f", failed: {metrics.error}" if metrics and metrics.status == "failed" else ""
        raise RunFolderError(
            f"out {str(out)!r} holds an unfinished run with these settings ({where}{failed}); "
            "continue it with resume (--resume), or replace it with overwrite (--overwrite)"
        )
    if checkpoint is not None:
        validate_checkpoint(checkpoint, world_size)
    _check_log(out, checkpoint)
    return RunPlan("resume", fp, checkpoint, previous=metrics)


def _check_log(out: Path, checkpoint: Path | None) -> None:
    """Parse the log up front so a damaged one is named before training (trimming happens at train begin)."""
    from balancedness.optim.callbacks import kept_log_lines

    kept_log_lines(out / LOG, 0 if checkpoint is None else checkpoint_step(checkpoint))


def begin_run(plan: RunPlan, out: str | os.PathLike[str], lock: RunFolderLock | None = None) -> None:
    """Make ``out`` ready for ``plan`` (main process only): replace, create, record the fingerprint, tidy.

    ``overwrite`` (``plan.replace``): an empty folder, locked by ``lock`` before anyone can see it, takes the
    old folder's place in one exchange (``renameat2``; two renames where the system lacks it), and the old
    folder is deleted."""
    out = Path(out)
    if plan.replace:
        _replace_folder(out, lock)
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


# --------------------------------------------------------------------------------------------- overwrite
def check_overwrite(out: str | os.PathLike[str]) -> None:
    """RunFolderError unless ``overwrite`` may delete ``out``: a folder that holds a run (``run.json``) or a
    sweep (``study.journal`` or ``.locks/``) of this project, and is not ``/``, the home folder, the working
    directory or a folder above it, a git working tree, or reached through a symbolic link."""
    out = Path(out)
    real = out.resolve()
    here = Path.cwd().resolve()
    what = _contents(real)

    def refuse(why: str) -> None:
        raise RunFolderError(
            f"overwrite refused: out {str(out)!r} {why}; overwrite would delete {what}. Nothing "
            "was changed: overwrite deletes only a run or sweep folder of this project"
        )

    if out.is_symlink():
        refuse(f"is a symbolic link to {str(real)!r} (give that folder itself to replace it)")
    if real == Path(real.anchor) or real == Path.home().resolve():
        refuse("is the file system's root" if real == Path(real.anchor) else "is your home folder")
    if real == here or real in here.parents:
        refuse("is the working directory or a folder above it")
    if (real / ".git").exists():
        refuse("is a git working tree")
    if not ((real / RUN_FILE).is_file() or (real / "study.journal").is_file() or (real / ".locks").is_dir()):
        refuse(f"holds no {RUN_FILE}, study.journal or .locks/: it is not a run or sweep folder of this project")


def _contents(folder: Path) -> str:
    try:
        names = sorted(p.name for p in folder.iterdir())
    except OSError:
        return "it"
    shown = ", ".join(repr(n) for n in names[:4]) + (", ..." if len(names) > 4 else "")
    return f"{str(folder)!r} and its {len(names)} entries ({shown})"


def _exchange(a: Path, b: Path) -> bool:
    """Swap the folders ``a`` and ``b`` atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False if unsupported."""
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _replace_folder(out: Path, lock: RunFolderLock | None) -> None:
    fresh = make_temp_dir(prefix=f".{out.name}.new-", dir=out.parent)
    new_lock = RunFolderLock.take(fresh) if lock is not None else None
    if _exchange(fresh, out):
        old = fresh  # the old run now lies where the empty folder was
    else:
        old = make_temp_dir(prefix=f".{out.name}.replaced-", dir=out.parent)
        out.rename(old / out.name)
        fresh.rename(out)
    if lock is not None and new_lock is not None:
        lock.adopt(new_lock, out)
    shutil.rmtree(old)


# --------------------------------------------------------------------------------------------- one writer
class RunFolderLock:
    """An exclusive ``flock`` on a run folder (its directory, opened read-only): released by the OS when the
    process ends, whatever the way."""

    def __init__(self, fd: int, path: Path) -> None:
        self.fd, self.path = fd, path

    @classmethod
    def take(cls, path: str | os.PathLike[str]) -> RunFolderLock:
        """Lock the folder ``path`` without waiting; RunFolderError naming the holder when another process has it."""
        import fcntl

        path = Path(path)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise RunFolderError(
                f"out {str(path)!r} is in use by {holder}: a run folder has one writer at a time; "
                "wait until it ends, or choose another out folder"
            ) from None
        return cls(fd, path)

    def adopt(self, other: RunFolderLock, path: Path) -> None:
        """Hold ``other``'s lock (now at ``path``) instead of this one."""
        os.close(self.fd)
        self.fd, self.path = other.fd, path

    def release(self) -> None:
        os.close(self.fd)


def _holder(fd: int) -> str:
    """``process 1234 (python -m balancedness finetune ...) on <host>`` from ``/proc/locks``, else a phrase."""
    import socket

    st = os.fstat(fd)
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks") as fh:
            fields = [line.split() for line in fh]
        pids = [f[4] for f in fields if len(f) > 5 and f[5] == key]
    except OSError:
        pids = []
    if not pids:
        return "another process"
    try:
        with open(f"/proc/{pids[0]}/cmdline", "rb") as fh:
            command = " ".join(fh.read().decode(errors="replace").split("\0")).strip()
    except OSError:
        command = ""
    command = f" ({command[:120]})" if command else ""
    return f"process {pids[0]}{command} on {socket.gethostname()}"


@contextlib.contextmanager
def hold_run_folder(out: str | os.PathLike[str], enabled: bool = True) -> Iterator[RunFolderLock | None]:
    """Hold the run folder ``out`` exclusively for the block (created when absent, and removed again if the
    block fails and leaves it empty). Yields None when ``enabled`` is false (non-main torchrun ranks) or
    ``out`` is not a folder (``plan_run`` refuses it)."""
    out = Path(out)
    if not enabled or (out.exists() and not out.is_dir()):
        yield None
        return
    created = not out.exists()
    while True:
        out.mkdir(parents=True, exist_ok=True)
        lock = RunFolderLock.take(out)
        if _same_folder(lock.fd, out):
            break
        lock.release()  # the folder was replaced between open and lock (another overwrite): lock the new one
    try:
        yield lock
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    finally:
        lock.release()


def _same_folder(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (os.fstat(fd).st_dev, os.fstat(fd).st_ino)
