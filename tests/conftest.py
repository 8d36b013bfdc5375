"""Set-up shared by the whole suite.

``make test`` runs the suite on pytest-xdist workers, one per core. Each worker (and every process a test
starts, which inherits the environment) gets one BLAS/OpenMP thread, so two workers on two cores do not
oversubscribe them. This runs before any test module imports torch or numpy, as the thread pools are sized on
import.
"""

from __future__ import annotations

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_var, "1")


import shutil  # noqa: E402
import subprocess  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

#: The modules with the longest tests, longest first: ``make test`` starts them first, so that under
#: ``--dist worksteal`` no long test starts last and holds up the end (alphabetical order put several at the end).
#: Whole modules move (their module-scoped fixtures stay set up once per worker); the others keep their order.
SLOW_FIRST = (
    "test_mutants.py",
    "test_finetune_cli.py",
    "test_torchrun.py",
    "test_demo.py",
    "test_fig3.py",
    "test_faults.py",
    "test_label_word_checkpoints.py",
    "test_run_integrity.py",
    "test_sweep.py",
    "test_hostile_inputs.py",
    "test_postgres_sweep.py",
    "test_wheel.py",
    "test_docs_torch_backend.py",
    "test_taskfile.py",
    "test_flatness_finetune.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The modules of :data:`SLOW_FIRST` first, in that order (a stable sort: each module's tests keep theirs)."""
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FIRST)))


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """A folder ``build(folder)`` fills once per test session, shared by all xdist workers.

    The first worker to ask builds it under a file lock; the others wait and reuse it. Tests must only read it
    (copy it first to change anything: :func:`copy_of`). A build that raises leaves no folder behind, so the
    next worker to ask tries again and fails the same way."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()  # under xdist: popen-gwN/ inside this session's folder
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "built-once"
    root.mkdir(exist_ok=True)
    folder = root / name
    with FileLock(str(folder) + ".lock"):
        if not (folder / ".built").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            try:
                build(folder)
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
            (folder / ".built").touch()
    return folder


def copy_of(folder: Path, target: Path) -> Path:
    """A private copy of a :func:`built_once` folder (without its marker)."""
    shutil.copytree(folder, target, ignore=shutil.ignore_patterns(".built"))
    return target


@pytest.fixture(scope="session")
def interrupted_run(tmp_path_factory) -> Path:
    """A run (test_faults' options: nBAR, sst2, 6 steps) interrupted by SIGINT at step 2, with checkpoint-2:
    shared by every test that damages or inspects a copy of it."""
    from test_faults import _args, _run

    def build(folder: Path) -> None:
        proc = _run("sigint", 2, _args(folder / "run"))
        assert proc.returncode == 130, proc.stderr[-2000:]

    return built_once(tmp_path_factory, "interrupted-run", build) / "run"


@pytest.fixture(scope="session")
def reference_runs(tmp_path_factory) -> Callable[[str], Path]:
    """``reference_runs(method)``: the uninterrupted run of test_faults' options (``method``: nbar or sam), the
    yardstick of every resume in test_faults and test_run_integrity; each made once per session, in process."""
    from test_faults import _args, _finetune

    def run(method: str) -> Path:
        def build(folder: Path) -> None:
            proc = _finetune(_args(folder / "run", method=method))
            assert proc.returncode == 0, proc.stderr[-3000:]

        return built_once(tmp_path_factory, f"reference-{method}", build) / "run"

    return run


def invoke(args: list[str]) -> subprocess.CompletedProcess:
    """``balancedness ARGS`` in this process (the real CLI app through typer's runner: torch, transformers and
    peft are imported once per worker, not once per call), as a ``CompletedProcess`` (exit code, stdout, stderr).
    An exception that escapes the command is written into ``stderr`` as its traceback, as the console script
    would print it, so the tests' "no traceback" asserts keep their power. Faults, signals and a fresh
    interpreter need a process of their own."""
    import traceback

    from typer.testing import CliRunner

    from balancedness.cli import app

    result = CliRunner().invoke(app, args)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "Traceback (most recent call last):\n" + "".join(traceback.format_exception(result.exception))
    code = 130 if isinstance(result.exception, KeyboardInterrupt) else result.exit_code
    return subprocess.CompletedProcess(["balancedness", *args], code, result.stdout, stderr)


def need(module: str, why: str = "") -> None:
    """Import ``module`` or skip the test (the module, at module level), with the reason; under CI, which installs
    every extra, a missing module is a failure instead."""
    import importlib

    try:
        importlib.import_module(module)
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip(
            f"{module} is not installed{': ' + why if why else ''} (pip install -e '.[all]')", allow_module_level=True
        )
