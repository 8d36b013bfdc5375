"""`balancedness simulate` and `balancedness check` from the command line."""

import json
import subprocess
import sys

import numpy as np
import pytest

CLI = [sys.executable, "-m", "balancedness"]


def run(*args, check=True):
    p = subprocess.run(CLI + list(args), capture_output=True, text=True)
    if check and p.returncode != 0:
        raise AssertionError(p.stdout + p.stderr)
    return p


def test_simulate_paper_nop_setting_sam_balances_sgd_does_not(tmp_path):
    out = {}
    for opt in ("sgd", "sam"):
        run(
            "simulate",
            "--problem",
            "nop",
            "--optimizer",
            opt,
            "--alpha",
            "0.5",
            "--alpha",
            "1",
            "--out",
            str(tmp_path / f"{opt}.json"),
        )
        out[opt] = json.loads((tmp_path / f"{opt}.json").read_text())
    sgd, sam = out["sgd"], out["sam"]
    assert sgd["t"][0] == 0
    assert sgd["t"][-1] == 100_000
    assert set(sgd["runs"][0]) >= {"alpha", "seed", "balancedness", "grad_gap", "loss"}
    assert {r["alpha"] for r in sam["runs"]} == {0.5, 1.0}
    for r in sgd["runs"]:
        assert r["balancedness"][0] == pytest.approx(-0.56)
        assert abs(r["balancedness"][-1] + 0.56) <= 0.01 * 0.56
    for r_sam, r_sgd in zip(sam["runs"], sgd["runs"], strict=True):
        assert abs(r_sam["balancedness"][-1]) < 0.3 * abs(r_sgd["balancedness"][-1])
    assert sam["settings"]["optimizer"]["rho"] == 0.1
    assert sam["settings"]["lr"] == 1e-4


def test_simulate_flow_writes_times(tmp_path):
    path = tmp_path / "flow.json"
    run(
        "simulate",
        "--problem",
        "op",
        "--optimizer",
        "sam",
        "--flow",
        "--t-end",
        "2",
        "--steps",
        "2000",
        "--record-every",
        "100",
        "--out",
        str(path),
    )
    d = json.loads(path.read_text())
    assert d["settings"]["kind"] == "flow"
    assert d["t"][0] == 0
    assert d["t"][-1] == 2.0
    B = np.array(d["runs"][0]["balancedness"])
    assert abs(B[-1]) < abs(B[0])


def test_simulate_layered_rank_and_bar(tmp_path):
    path = tmp_path / "l.npz"
    run(
        "simulate",
        "--problem",
        "nop-layered",
        "--layers",
        "2",
        "--rank",
        "2",
        "--optimizer",
        "nbar",
        "--mu",
        "0.5",
        "--schedule",
        "cosine",
        "--steps",
        "500",
        "--lr",
        "1e-3",
        "--seeds",
        "2",
        "--out",
        str(path),
    )
    from balancedness.sims import SimResult

    res = SimResult.load(path)
    assert res.x.shape[2:] == (2, 3, 2)
    assert res.n_runs == 2


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--rho", "-0.5"], "rho must be"),
        (["--mu", "-1"], "mu must be"),
        (["--lr", "-1"], "lr must be"),
        (["--optimizer", "msam", "--m", "3", "--batch", "4"], "must divide"),
        (["--problem", "transformer"], "transformer"),
        (["--optimizer", "adamw"], "adamw"),
        (["--x0", "0.2,inf,0.3"], "finite"),
        (["--seeds", "0"], "seeds"),
        (["--alpha", "-1"], "--alpha values must be a finite number >= 0"),
        (["--problem", "toy2d", "--alpha", "0.5"], "has no noise term"),
        (["--flow", "--t-end", "0"], "--t-end must be a finite number > 0"),
        (["--out", "result.txt"], ".json or .npz"),
    ],
)
def test_simulate_bad_input_exits_2(args, needle):
    p = run("simulate", *args, check=False)
    assert p.returncode == 2, p.stdout + p.stderr
    assert needle in p.stdout + p.stderr


def test_check_quick_json(tmp_path):
    path = tmp_path / "check.json"
    p = run("check", "--quick", "--json", str(path))
    rows = json.loads(path.read_text())
    assert len(rows) >= 25
    assert all(r["status"] == "PASS" for r in rows)
    assert {"id", "ref", "measured", "tolerance", "status"} <= set(rows[0])
    assert "passed, 0 failed" in p.stdout


def test_check_unknown_id_exits_2():
    p = run("check", "--only", "nope", check=False)
    assert p.returncode == 2
    assert "nope" in p.stderr


def _docs_example():
    """The worked example of docs/sims.md: (the file's code, the command, its output)."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "sims.md").read_text(encoding="utf-8")
    blocks = dict(re.findall(r"<!-- example: ([\w.]+) -->\n```[a-z]*\n(.*?)\n```", text, flags=re.S))
    return blocks["my_asam.py"], blocks["command"], blocks["output"]


def test_docs_worked_example_runs_as_documented(tmp_path):
    """`check --replace sam=my_asam.py:asam` on the docs' own file prints exactly the output the docs show."""
    import os
    import shlex

    code, command, output = _docs_example()
    (tmp_path / "my_asam.py").write_text(code + "\n")
    args = shlex.split(command)
    assert args[0] == "balancedness"
    p = subprocess.run(
        CLI + args[1:], capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "COLUMNS": "300"}
    )
    assert p.returncode == 1, p.stdout + p.stderr  # ASAM fails claims about SAM: exit 1
    assert p.stdout.rstrip("\n") == output, p.stdout


def test_check_replace_with_the_built_in_passes_its_claims(tmp_path):
    (tmp_path / "same.py").write_text("from balancedness.sims.directions import nbar\n")
    p = run("check", "--quick", "--brief", "--replace", f"nbar={tmp_path / 'same.py'}:nbar")
    assert "implementation checks: 4 passed, 0 failed" in p.stdout
    assert "behaviour (balances, direction, bounds): 1 of 1 satisfied" in p.stdout
    assert "exact identities of the paper's update (a variant is expected to differ): 3 of 3 satisfied" in p.stdout


@pytest.mark.parametrize(
    "spec,needle",
    [
        ("sam", "--replace must be NAME=FILE.py:FUNCTION"),
        ("adamw={f}:f", "unknown optimizer 'adamw'"),
        ("sam={d}/missing.py:f", "no such file"),
        ("sam={f}:nothere", "has no function 'nothere'"),
        ("sam={f}:wrong_shape", "returned d_X of shape"),
    ],
)
def test_check_bad_replace_exits_2_before_any_check(tmp_path, spec, needle):
    f = tmp_path / "user.py"
    f.write_text(
        "def f(problem, X, Y, targets, hp):\n    return -X, -Y, X, Y\n"
        "def wrong_shape(problem, X, Y, targets, hp):\n    return -X[:, 0], -Y, X, Y\n"
    )
    p = run("check", "--replace", spec.format(f=f, d=tmp_path), check=False)
    assert p.returncode == 2, p.stdout + p.stderr
    assert needle in " ".join((p.stdout + p.stderr).split())
    assert "checks:" not in p.stdout


def test_simulate_with_replace_records_it(tmp_path):
    (tmp_path / "half.py").write_text(
        "from balancedness.sims.directions import sam\n"
        "def half(problem, X, Y, targets, hp):\n    return sam(problem, X, Y, targets, hp._replace(rho=hp.rho / 2))\n"
    )
    mine_args = ["--replace", f"sam={tmp_path / 'half.py'}:half", "--rho", "0.2"]
    for name, extra in (("mine", mine_args), ("ref", ["--rho", "0.1"])):
        run(
            "simulate",
            "--alpha",
            "1",
            "--steps",
            "500",
            "--lr",
            "1e-3",
            "--out",
            str(tmp_path / f"{name}.json"),
            *extra,
        )
    mine, ref = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("mine", "ref"))
    assert mine["settings"]["replaced"] == {"sam": f"{tmp_path / 'half.py'}:half"}
    assert mine["runs"][0]["balancedness"] == ref["runs"][0]["balancedness"]
    p = run("simulate", "--replace", "sngd=nope.py:f", check=False)
    assert p.returncode == 2
    assert "no such file" in p.stderr


def test_simulate_runs_every_registered_direction(tmp_path):
    """`--optimizer` is checked against the direction registry when the command runs, not a closed list."""
    from typer.testing import CliRunner

    from balancedness.cli import app
    from balancedness.sims.directions import register_direction, sam, unregister_direction

    @register_direction("sam-half", uses={"rho"})
    def sam_half(problem, X, Y, targets, hp):
        return sam(problem, X, Y, targets, hp._replace(rho=hp.rho / 2))

    try:
        result = CliRunner().invoke(
            app,
            [
                "simulate",
                "--optimizer",
                "sam-half",
                "--steps",
                "10",
                "--record-every",
                "5",
                "--out",
                str(tmp_path / "half.json"),
            ],
        )
        assert result.exit_code == 0, result.output
        assert json.loads((tmp_path / "half.json").read_text())["settings"]["optimizer"]["name"] == "sam-half"
    finally:
        unregister_direction("sam-half")
    gone = CliRunner().invoke(app, ["simulate", "--optimizer", "sam-half", "--steps", "10"])
    assert gone.exit_code == 2
    assert "unknown optimizer 'sam-half'" in gone.output
