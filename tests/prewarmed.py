"""Fault runs (``tests/fault_runner.py``) in processes of their own, without paying torch's imports in each.

A fault needs its own process: the signal is real, a SIGKILL ends the process, the exit status is the process's,
and what the runner patches dies with it. Importing torch, transformers and peft is most of a short run's time,
so the runs are forked from a server process that imported them once (multiprocessing's ``forkserver``, one
per pytest worker). Each run is still a process of its own, with its own pid, signal handlers (Python's
defaults) and exit status, whose interpreter has imported those modules and done nothing else; its stdout and
stderr go to files that are read back when it ends. What needs a fresh interpreter (a resource limit for the
whole process, environment read at import) keeps ``subprocess``.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

#: What the fault runs' environment sets (``tests/test_faults.py``); the fork server starts with it (its imports
#: read it).
ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
#: Imported once by the fork server.
PRELOAD = ["torch", "transformers", "peft", "balancedness.cli", "balancedness.finetune.run", "fault_runner"]


def _context() -> multiprocessing.context.BaseContext:
    """The forkserver context, its server running (started, the first time, with :data:`ENV` set)."""
    import multiprocessing.forkserver

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    saved = {name: os.environ.get(name) for name in ENV}
    os.environ.update(ENV)
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name)
            else:
                os.environ[name] = value
    return ctx


def _child(argv: list[str], stdout: str, stderr: str, env: dict[str, str], setup: Callable[[], object] | None):
    """The forked process: its output into the two files, ``setup()`` (a umask), then the fault runner."""
    os.environ.update(env)
    for fd, path in ((1, stdout), (2, stderr)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(target, fd)
        os.close(target)
    sys.stdout = open(1, "w", encoding="utf-8", closefd=False)  # noqa: SIM115  (the process's own stream)
    sys.stderr = open(2, "w", encoding="utf-8", buffering=1, closefd=False)  # noqa: SIM115
    if setup is not None:
        setup()
    import fault_runner

    fault_runner.main(argv)


class Run:
    """A started fault run: the part of :class:`subprocess.Popen` the tests use (``pid``, ``poll``, ``wait``,
    ``send_signal``), and its output once it ended (:meth:`output`)."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str] | None = None, setup=None) -> None:
        self.args = ["fault_runner.py", *argv]
        self._dir = tempfile.TemporaryDirectory(prefix="fault-run-")
        self._out, self._err = Path(self._dir.name, "stdout"), Path(self._dir.name, "stderr")
        self._proc = _context().Process(
            target=_child, args=(list(argv), str(self._out), str(self._err), {**ENV, **(env or {})}, setup)
        )
        self._proc.start()
        self.pid = self._proc.pid

    @property
    def returncode(self) -> int | None:
        return self._proc.exitcode

    def poll(self) -> int | None:
        return self._proc.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._proc.join(timeout)
        if self._proc.exitcode is None:
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        return self._proc.exitcode

    def send_signal(self, sig: int) -> None:
        if self._proc.exitcode is None:
            os.kill(self.pid, sig)

    def output(self) -> tuple[str, str]:
        """(stdout, stderr) as written so far."""
        return tuple(
            p.read_text(encoding="utf-8", errors="replace") if p.exists() else "" for p in (self._out, self._err)
        )

    def completed(self, timeout: float = 600) -> subprocess.CompletedProcess:
        """Wait (killing it after ``timeout`` seconds, as ``subprocess.run`` does) and return its result."""
        try:
            code = self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.send_signal(signal.SIGKILL)
            self.wait()
            raise
        out, err = self.output()
        self._dir.cleanup()
        return subprocess.CompletedProcess(self.args, code, out, err)


def run_fault(fault: str, step: int, args: Sequence[str], env=None, setup=None) -> subprocess.CompletedProcess:
    """``tests/fault_runner.py FAULT STEP -- ARGS`` in a forked process, to its end: a ``CompletedProcess`` with
    the exit status (negative: the signal that ended it), stdout and stderr as text."""
    return Run([fault, str(step), "--", *args], env, setup).completed()
