"""The multi-machine promise on a real RDB: two `balancedness sweep` processes on one PostgreSQL study.

The test starts its own PostgreSQL server (Debian's ``postgresql`` package; ``make test`` installs it when
missing): a cluster in a temporary folder, listening only on a unix socket there, run as the ``postgres`` user
when the tests run as root (the server refuses root). Two sweep processes share the study and the run
folder, as processes on two machines with a shared filesystem would; every cell is trained exactly once.
Skipped only where the server binary is absent, and never under CI (there it fails).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from data_fixtures import data_root_or_skip

pytestmark = pytest.mark.slow


def _server_bin() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl`` (Debian keeps them off PATH, per version)."""
    found = shutil.which("initdb")
    candidates = [Path(found).resolve().parent] if found else []  # /usr/local/bin may only link initdb
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    return next((c for c in candidates if (c / "initdb").is_file() and (c / "pg_ctl").is_file()), None)


@pytest.fixture
def postgres_url():
    """A fresh PostgreSQL server on a unix socket in a temporary folder; yields its URL, stops it afterwards."""
    bindir = _server_bin()
    if bindir is None:
        message = "no PostgreSQL server binary (initdb, pg_ctl): apt-get install postgresql"
        if os.environ.get("CI"):
            pytest.fail(message + "; CI must have it (make test installs it)")
        pytest.skip(message)
    base = Path(tempfile.mkdtemp(prefix="balancedness-pg-"))  # not pytest's tmp_path: the server user must enter
    as_server: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
        as_server = ["runuser", "-u", "postgres", "--"]

    def server(*args: str) -> None:
        p = subprocess.run([*as_server, *args], capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stdout + p.stderr

    data = base / "data"
    try:
        server(str(bindir / "initdb"), "-D", str(data), "-U", "sweeper", "--auth=trust", "--no-sync")
        server(
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(base / "server.log"),
            "-w",
            "-o",
            f"-c listen_addresses='' -k {base}",
            "start",
        )
        server(str(bindir / "createdb"), "-h", str(base), "-U", "sweeper", "study")
        yield f"postgresql+psycopg://sweeper@/study?host={base}"  # named: SQLAlchemy 2.0's default is psycopg2
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(
                [*as_server, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(base, ignore_errors=True)


def test_two_sweep_processes_on_one_postgres_study_train_each_cell_once(postgres_url, tmp_path):
    import optuna

    args = [
        sys.executable,
        "-m",
        "balancedness",
        "sweep",
        "--tasks",
        "sst2",
        "--methods",
        "lora,nbar",
        "--seeds",
        "13,21",
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--shots",
        "2",
        "--max-eval",
        "8",
        "--data-root",
        str(data_root_or_skip()),
        "--grid",
        "all:lr=1e-3,2e-3",
        "--storage",
        postgres_url,
        "--out",
        str(tmp_path),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)
    ]
    outputs = [p.communicate(timeout=900) for p in procs]
    for p, (out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out + err
    assert not (tmp_path / "study.journal").exists()  # the study lives in PostgreSQL
    [summary] = optuna.get_all_study_summaries(postgres_url)
    study = optuna.load_study(study_name=summary.study_name, storage=postgres_url)
    cells = {t.params["cell"] for t in study.trials}
    trained = [t.params["cell"] for t in study.trials if t.user_attrs.get("trained")]
    assert len(cells) == 8
    assert sorted(trained) == sorted(cells)  # every cell trained exactly once
    assert len(list(tmp_path.glob("sst2/*/seed*-*/metrics.json"))) == 8
