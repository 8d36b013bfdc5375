"""The flatness methods in the numpy simulator (issue 21): flat-lora, bi-lora and asam as registered directions.

Reproducible random perturbations, the flows they define, the dispatch to numpy, the contract check of a user's
replacement, the CLI, and the separate figure. The theory checks of these methods are in `balancedness check`
(``checks/flatness.py``; tests/test_claims.py runs them, tests/test_mutants.py breaks them).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from balancedness.sims import DIRECTIONS, make_optimizer, nop_problem, op_problem, simulate, solve_flow
from balancedness.sims.discrete import _stepper
from balancedness.sims.optimizers import FLATNESS_OPTIMIZERS, OPTIMIZERS
from balancedness.sims.problems import NOISE_BLOCK, perturbation_block, perturbation_sequence
from conftest import need

CLI = [sys.executable, "-m", "balancedness"]
KW = {
    "flat-lora": {"sigma": 0.5, "noise_schedule": "constant"},
    "bi-lora": {"rho": 0.05, "aux_init": 0.1},
    "asam": {"rho": 0.1},
}


def test_perturbation_draws_depend_only_on_seed_and_step():
    shape = (1, 3, 3)
    a = perturbation_sequence(4, NOISE_BLOCK + 5, shape)
    assert np.array_equal(a[NOISE_BLOCK + 2], perturbation_block([7, 4], 1, shape)[1, 2])  # any company, any block
    assert not np.array_equal(a[0], a[1])  # another step
    assert not np.array_equal(a[0], perturbation_sequence(5, 1, shape)[0])  # another seed


@pytest.mark.parametrize("kind", ["nop", "op"])
def test_flat_lora_runs_are_reproducible_and_seeded_per_trajectory(kind):
    p = nop_problem() if kind == "nop" else op_problem()
    kw = dict(lr=1e-3, steps=NOISE_BLOCK + 300, record_every=100, **KW["flat-lora"])  # crosses a noise block
    one = simulate(p, "flat-lora", alpha=[0.0, 1.0], seeds=[0, 1], **kw)
    again = simulate(p, "flat-lora", alpha=[0.0, 1.0], seeds=[0, 1], **kw)
    alone = simulate(p, "flat-lora", alpha=1.0, seeds=[1], **kw)
    assert np.array_equal(one.x, again.x)
    assert np.array_equal(one.y, again.y)
    assert np.array_equal(one.x[3], alone.x[0])  # seed 1, α = 1: the same draws whoever shares the run
    assert not np.array_equal(one.x[0], one.x[1])  # seeds 0 and 1 at α = 0: only the perturbations differ
    sgd = simulate(
        p, "sgd", alpha=[0.0, 1.0], seeds=[0, 1], backend="numpy", **{k: kw[k] for k in ("lr", "steps", "record_every")}
    )
    assert not np.array_equal(one.x, sgd.x)  # the perturbation acts
    assert np.max(np.abs(one.balancedness - sgd.balancedness)) < 0.01  # and leaves B where SGD has it


def test_flat_lora_flow_is_the_sgd_flow_and_bi_lora_flow_carries_its_clip():
    p = nop_problem()
    sgd, flat = (solve_flow(p, name, t_end=5.0, alpha=[0.0, 1.0], n_records=11) for name in ("sgd", "flat-lora"))
    assert np.array_equal(sgd.x, flat.x)
    assert np.array_equal(sgd.y, flat.y)
    bl = solve_flow(p, "bi-lora", t_end=5.0, alpha=1.0, n_records=11, rho=0.05)
    norm = np.array(bl.settings["auxiliary"]["norm"][0])
    assert norm[-1] == pytest.approx(0.05, rel=1e-6)
    assert np.all(norm <= 0.05 * (1 + 1e-6))  # reached, then held
    assert np.max(np.abs(bl.balancedness - bl.balancedness[:, :1])) < 1e-8  # the primary's B is conserved


def test_bi_lora_records_its_auxiliary_and_clips_it():
    r = simulate(
        nop_problem(), "bi-lora", alpha=0.0, seeds=[0, 1], lr=2e-2, steps=300, record_every=10, rho=0.02, aux_init=0.1
    )
    aux = r.settings["auxiliary"]
    assert set(aux) == {"norm", "balancedness", "x2", "y2"}
    assert np.shape(aux["norm"]) == (2, 31)
    assert np.max(aux["norm"]) <= 0.02 * (1 + 1e-12)
    assert np.max(aux["norm"]) == pytest.approx(0.02)
    assert r.settings["optimizer"] == {
        "name": "bi-lora",
        "rho": 0.02,
        "m": 1,
        "mu": 0.0,
        "schedule": "constant",
        "kappa": 1.0,
        "rank2": 1,
        "aux_init": 0.1,
    }
    assert not np.array_equal(aux["x2"][0][0], aux["x2"][1][0])  # each seed its own initial auxiliary


@pytest.mark.parametrize("name", FLATNESS_OPTIMIZERS)
def test_the_flatness_methods_step_with_numpy(name):
    """The compiled stepper knows the paper's six only (tests/test_compiled.py covers each); these go to numpy."""
    assert name in DIRECTIONS
    assert name not in OPTIMIZERS
    opt = make_optimizer(name, **KW[name])
    assert _stepper("auto", opt, nop_problem(), 1e-3, 10, None, 2, np.array([0, 1])).backend == "numpy"
    need("numba", "the compiled stepper")
    with pytest.raises(ValueError, match="not a built-in direction function it compiles"):
        _stepper("numba", opt, nop_problem(), 1e-3, 10, None, 2, np.array([0, 1]))


def test_settings_name_only_the_hyper_parameters_used():
    assert set(make_optimizer("sam", rho=0.1).settings()) == {"name", "rho", "m", "mu", "schedule"}
    assert make_optimizer("flat-lora").settings()["sigma"] == 0.05
    assert make_optimizer("asam", rho=0.1).settings()["eta_a"] == 0.01
    with pytest.raises(ValueError, match="unknown hyper-parameter 'sigmaa'"):
        make_optimizer("flat-lora", sigmaa=0.1)
    with pytest.raises(ValueError, match="noise_schedule"):
        make_optimizer("flat-lora", noise_schedule="linear")


def run(*args):
    return subprocess.run(CLI + list(args), capture_output=True, text=True)


def test_simulate_cli_runs_each_flatness_method(tmp_path):
    for name, extra in (
        ("flat-lora", ["--sigma", "0.3", "--noise-schedule", "constant"]),
        ("bi-lora", ["--rank2", "2", "--kappa", "0.5"]),
        ("asam", ["--eta-a", "0"]),
    ):
        path = tmp_path / f"{name}.json"
        p = run(
            "simulate",
            "--problem",
            "op",
            "--optimizer",
            name,
            "--steps",
            "300",
            "--lr",
            "1e-3",
            "--record-every",
            "100",
            "--alpha",
            "1",
            "--out",
            str(path),
            *extra,
        )
        assert p.returncode == 0, p.stdout + p.stderr
        opt = json.loads(path.read_text())["settings"]["optimizer"]
        assert opt["name"] == name
    assert opt == {"name": "asam", "rho": 0.2, "m": 1, "mu": 0.0, "schedule": "constant", "eta_a": 0.0}


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--optimizer", "flat-lora", "--sigma", "-1"], "--sigma must be a finite number >= 0, got -1.0"),
        (["--optimizer", "bi-lora", "--kappa", "0"], "--kappa must be a finite number > 0"),
        (["--optimizer", "bi-lora", "--rank2", "0"], "--rank2 must be an integer >= 1"),
    ],
)
def test_simulate_cli_bad_flatness_values_exit_2(args, needle):
    p = run("simulate", "--steps", "10", *args)
    assert p.returncode == 2, p.stdout + p.stderr
    assert needle in " ".join((p.stdout + p.stderr).split()), p.stdout + p.stderr
    assert "Traceback" not in p.stderr


def test_a_bi_lora_replacement_must_return_the_auxiliary_direction(tmp_path):
    f = tmp_path / "four.py"
    f.write_text(
        "from balancedness.sims.directions import sgd\n"
        "def field(problem, X, Y, targets, hp):\n    return sgd(problem, X, Y, targets, hp)\n"
    )
    p = run("check", "--quick", "--replace", f"bi-lora={f}:field")
    assert p.returncode == 2
    assert "expected the tuple (d_X, d_Y, g_X, g_Y, d_aux)" in " ".join(p.stderr.split())


def test_check_replace_with_a_flatness_built_in_passes_its_claims(tmp_path):
    f = tmp_path / "mine.py"
    f.write_text("from balancedness.sims.directions import flat_lora as field\n")
    p = run("check", "--quick", "--brief", "--replace", f"flat-lora={f}:field")
    assert p.returncode == 0, p.stdout
    assert "behaviour (balances, direction, bounds): 2 of 2 satisfied" in p.stdout


def test_the_flatness_figure_is_separate_from_all_and_shows_the_predictions(tmp_path):
    from balancedness.figures import FIGURES, SEPARATE, FigureConfig, check_names, flatness

    assert "flatness" in SEPARATE
    assert "flatness" not in check_names(["all"])
    assert "flatness" not in FIGURES
    fig, data = flatness.build(FigureConfig(steps=2000, lr=1e-3, record_every=100, seeds=1))
    for kind in ("nop", "op"):
        rows = {c["method"]: c for c in data[kind]}
        assert set(rows) == set(flatness.METHODS)
        for m in flatness.W_SPACE:  # the flow conserves B: its 2|B_t| is the constant 2|B_0|
            assert np.allclose(rows[m]["flow_two_abs_B"], rows[m]["two_abs_B0"], rtol=1e-8)
        end = {m: rows[m]["two_abs_B"]["1"]["mean"][-1] / rows[m]["two_abs_B0"] for m in rows}
        assert end["sam"] < end["sgd"] - 0.1
        assert abs(end["flat-lora"] - end["sgd"]) < 0.01
    assert "flat-lora" in data["caption"]
