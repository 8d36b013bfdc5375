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
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


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
