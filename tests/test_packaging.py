"""`pip install balancedness` (no extras) gives the simulators, checks and figures: nothing there imports torch.

Each test runs a fresh interpreter in which torch, transformers, peft, accelerate and numba cannot be
imported (``sys.modules[name] = None`` makes ``import name`` raise ModuleNotFoundError), as on a machine
without the ``[torch]``/``[finetune]``/``[fast]`` extras: the simulator then steps with numpy.
"""

from __future__ import annotations

import json
import subprocess
import sys

BLOCK = "import sys\nfor m in ('torch', 'transformers', 'peft', 'accelerate', 'numba'):\n    sys.modules[m] = None\n"


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK + code], capture_output=True, text=True, timeout=300)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return _run(f"from balancedness.cli import app\napp({list(args)!r}, prog_name='balancedness')")


def test_the_blocker_blocks():
    for name in ("torch", "numba"):
        proc = _run(f"import {name}")
        assert proc.returncode != 0
        assert "ModuleNotFoundError" in proc.stderr


def test_numpy_side_imports_without_torch():
    proc = _run(
        "import balancedness.sims, balancedness.checks, balancedness.figures, balancedness.cli\n"
        "import balancedness.sims.flows, balancedness.sims.theory\nprint('ok')"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_simulate_and_check_run_without_torch(tmp_path):
    out = tmp_path / "sam.json"
    proc = _cli(
        "simulate",
        "--problem",
        "nop",
        "--optimizer",
        "sam",
        "--steps",
        "200",
        "--record-every",
        "100",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    settings = json.loads(out.read_text())["settings"]
    assert settings["optimizer"]["name"] == "sam"
    assert settings["backend"] == "numpy"
    proc = _cli("check", "--quick", "--only", "sam-op-identity")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_finetune_without_the_extra_says_how_to_install():
    proc = _cli("finetune", "--method", "nbar")
    assert proc.returncode == 2
    text = " ".join(proc.stderr.split())  # rich wraps long lines
    assert "pip install" in text
    assert "'balancedness[finetune]'" in text
