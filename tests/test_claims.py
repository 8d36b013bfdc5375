"""Every claim of spec §7, through the same code path as `balancedness check` (full settings)."""

import numpy as np
import pytest

from balancedness.checks import CHECKS, Kind, check, run_checks
from balancedness.sims import DIRECTIONS


@pytest.fixture(scope="module")
def results():
    return {r.id: r for r in run_checks(quick=False, seed=0)}


def test_at_least_25_claims_each_traceable(results):
    assert len(results) >= 25
    for cid, ref, claim, role, _ in CHECKS:
        assert ref, cid
        assert claim, cid
        assert role in ("claim", "finding"), cid


@pytest.mark.parametrize("cid", [c[0] for c in CHECKS])
def test_claim_holds(results, cid):
    r = results[cid]
    assert r.status == "PASS", f"{cid}: {r.measured} (tolerance {r.tolerance})"
    assert np.isfinite(r.value)
    assert r.error is None


def test_each_check_runs_exactly_the_optimizers_it_declares(results):
    """Implementation checks run optimizers, math checks none: what each check called is recorded while it runs."""
    for c in CHECKS:
        r = results[c.id]
        assert set(r.exercised) == set(c.runs), f"{c.id} declares {c.runs} but called {r.exercised}"
        assert bool(c.runs) == (c.kind is Kind.IMPLEMENTATION) or c.kind is Kind.FINDING, c.id
    kinds = {k: sum(c.kind is k for c in CHECKS) for k in Kind}
    assert kinds[Kind.IMPLEMENTATION] >= 30, kinds
    assert kinds[Kind.MATH] >= 5, kinds
    assert kinds[Kind.FINDING] >= 5, kinds


def test_quick_mode_runs_everything():
    quick = run_checks(quick=True, seed=1)
    assert len(quick) == len(CHECKS)
    assert all(r.status == "PASS" for r in quick), [(r.id, r.measured) for r in quick if r.status != "PASS"]


def test_unknown_check_id_is_an_error():
    with pytest.raises(ValueError, match="nope"):
        run_checks(only=["nope"])


def test_registration_rules():
    with pytest.raises(ValueError, match="must name the optimizers"):
        check("x-impl", "ref", "claim", Kind.IMPLEMENTATION)
    with pytest.raises(ValueError, match="math check 'x-math' runs"):
        check("x-math", "ref", "claim", Kind.MATH, runs=("sam",))
    assert "x-impl" not in CHECKS
    assert "x-math" not in CHECKS


def test_a_check_that_raises_fails_with_the_error(monkeypatch):
    def broken(problem, X, Y, targets, hp):
        raise RuntimeError("boom in my field")

    (r,) = run_checks(quick=True, only=["sam-op-identity"], replace={"sam": broken})
    assert not r.passed
    assert "RuntimeError: boom in my field" in r.error
    assert r.measured.startswith("error:")
    assert DIRECTIONS["sam"].field.__name__ == "sam"  # the built-in is back


def test_replace_runs_only_the_implementation_checks_of_that_optimizer():
    from balancedness.sims.directions import sam

    rs = run_checks(quick=True, replace={"nbar": DIRECTIONS["nbar"].field})
    assert {r.id for r in rs} == {c.id for c in CHECKS if c.kind is Kind.IMPLEMENTATION and "nbar" in c.runs}
    assert all(r.passed for r in rs)
    with pytest.raises(ValueError, match="unknown optimizer 'adamw'"):
        run_checks(replace={"adamw": sam})
    with pytest.raises(ValueError, match="callable"):
        run_checks(replace={"sam": 3})
