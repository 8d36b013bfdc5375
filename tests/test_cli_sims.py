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
        run("simulate", "--problem", "nop", "--optimizer", opt, "--alpha", "0.5", "--alpha", "1",
            "--out", str(tmp_path / f"{opt}.json"))
        out[opt] = json.loads((tmp_path / f"{opt}.json").read_text())
    sgd, sam = out["sgd"], out["sam"]
    assert sgd["t"][0] == 0 and sgd["t"][-1] == 100_000
    assert set(sgd["runs"][0]) >= {"alpha", "seed", "balancedness", "grad_gap", "loss"}
    assert {r["alpha"] for r in sam["runs"]} == {0.5, 1.0}
    for r in sgd["runs"]:
        assert r["balancedness"][0] == pytest.approx(-0.56)
        assert abs(r["balancedness"][-1] + 0.56) <= 0.01 * 0.56
    for r_sam, r_sgd in zip(sam["runs"], sgd["runs"]):
        assert abs(r_sam["balancedness"][-1]) < 0.3 * abs(r_sgd["balancedness"][-1])
    assert sam["settings"]["optimizer"]["rho"] == 0.1 and sam["settings"]["lr"] == 1e-4


def test_simulate_flow_writes_times(tmp_path):
    path = tmp_path / "flow.json"
    run("simulate", "--problem", "op", "--optimizer", "sam", "--flow", "--t-end", "2", "--steps", "2000",
        "--record-every", "100", "--out", str(path))
    d = json.loads(path.read_text())
    assert d["settings"]["kind"] == "flow" and d["t"][0] == 0 and d["t"][-1] == 2.0
    B = np.array(d["runs"][0]["balancedness"])
    assert abs(B[-1]) < abs(B[0])


def test_simulate_layered_rank_and_bar(tmp_path):
    path = tmp_path / "l.npz"
    run("simulate", "--problem", "nop-layered", "--layers", "2", "--rank", "2", "--optimizer", "nbar",
        "--mu", "0.5", "--schedule", "cosine", "--steps", "500", "--lr", "1e-3", "--seeds", "2", "--out", str(path))
    from balancedness.sims import SimResult

    res = SimResult.load(path)
    assert res.x.shape[2:] == (2, 3, 2) and res.n_runs == 2


@pytest.mark.parametrize("args,needle", [
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
])
def test_simulate_bad_input_exits_2(args, needle):
    p = run("simulate", *args, check=False)
    assert p.returncode == 2, p.stdout + p.stderr
    assert needle in p.stdout + p.stderr


def test_check_quick_json(tmp_path):
    path = tmp_path / "check.json"
    p = run("check", "--quick", "--json", str(path))
    rows = json.loads(path.read_text())
    assert len(rows) >= 25 and all(r["status"] == "PASS" for r in rows)
    assert {"id", "ref", "measured", "tolerance", "status"} <= set(rows[0])
    assert "passed, 0 failed" in p.stdout


def test_check_unknown_id_exits_2():
    p = run("check", "--only", "nope", check=False)
    assert p.returncode == 2 and "nope" in p.stderr
