"""Every claim of spec §7, through the same code path as `balancedness check` (full settings)."""

import numpy as np
import pytest

from balancedness.checks import CHECKS, run_checks


@pytest.fixture(scope="module")
def results():
    return {r.id: r for r in run_checks(quick=False, seed=0)}


def test_at_least_25_claims_each_traceable(results):
    assert len(results) >= 25
    for cid, ref, claim, kind, _ in CHECKS:
        assert ref and claim and kind in ("claim", "finding"), cid


@pytest.mark.parametrize("cid", [c[0] for c in CHECKS])
def test_claim_holds(results, cid):
    r = results[cid]
    assert r.status == "PASS", f"{cid}: {r.measured} (tolerance {r.tolerance})"
    assert np.isfinite(r.value)


def test_quick_mode_runs_everything():
    quick = run_checks(quick=True, seed=1)
    assert len(quick) == len(CHECKS)
    assert all(r.status == "PASS" for r in quick), [(r.id, r.measured) for r in quick if r.status != "PASS"]


def test_unknown_check_id_is_an_error():
    with pytest.raises(ValueError, match="nope"):
        run_checks(only=["nope"])
