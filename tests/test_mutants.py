"""Every broken optimizer of ``tests/mutants.py`` is caught by the implementation checks; docs/sims.md says by which.

Each mutant runs in its own ``run_checks(replace=...)`` call (its own cache: no toy run of one mutant is
reused for another), with the implementation checks that run the mutated optimizer. A mutant is caught
when at least one of them FAILs on its numbers (not by raising). The quick tests are in the default suite;
the same at full scale is marked slow (CI runs both). Both are one test per mutant, so xdist spreads them; a
quick run is made once per session and read by its test and by the idle-check test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from balancedness.checks import CHECKS, Kind, run_checks
from balancedness.sims import DIRECTIONS
from conftest import built_once
from mutants import MUTANTS, VARIANTS, catchers, documented

DOCS = Path(__file__).resolve().parents[1] / "docs" / "sims.md"


def _quick(tmp_path_factory: pytest.TempPathFactory, mutant) -> dict[str, list[str]]:
    """The quick-mode result of ``mutant`` (its own ``run_checks`` call): the implementation checks that fail it
    and those that raised. Computed once per session for all xdist workers (``conftest.built_once``): its own test
    and the idle-check test below read the same record."""

    def build(folder: Path) -> None:
        built_in = dict(DIRECTIONS)
        caught, verdicts = catchers(mutant, quick=True)
        assert DIRECTIONS == built_in, "a mutant was left installed"
        record = {"caught": caught, "errors": [v.id for v in verdicts if v.error]}
        (folder / "quick.json").write_text(json.dumps(record))

    return json.loads((built_once(tmp_path_factory, f"mutant-quick-{mutant.id}", build) / "quick.json").read_text())


def _assert_documented_mutants() -> None:
    table = documented(DOCS)
    assert set(table) == {m.id for m in MUTANTS}, "docs/sims.md's mutant table does not list every mutant"


def _assert_caught_as_documented(m, caught: list[str], failed_by_error: list[str], column: int) -> None:
    _assert_documented_mutants()
    expected = documented(DOCS)[m.id][column]
    assert caught, f"mutant {m.id} ({m.bug}) survives every implementation check"
    assert not failed_by_error, f"mutant {m.id}: checks raised instead of measuring: {failed_by_error}"
    assert caught == expected, (
        f"mutant {m.id}: docs/sims.md lists {expected}, the checks that catch it are {caught} "
        "(regenerate the table with `python tests/mutants.py`)"
    )


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.id for m in MUTANTS])
def test_every_mutant_is_caught_in_quick_mode_as_documented(tmp_path_factory, mutant):
    """One test per mutant (each its own ``run_checks`` call), so xdist spreads them."""
    run = _quick(tmp_path_factory, mutant)
    _assert_caught_as_documented(mutant, run["caught"], run["errors"], 0)


def test_every_implementation_check_catches_some_mutant(tmp_path_factory):
    """An implementation check that no mutant fails guards nothing: strengthen it or make it a math check."""
    caught = {cid for m in MUTANTS for cid in _quick(tmp_path_factory, m)["caught"]}
    idle = [c.id for c in CHECKS if c.kind is Kind.IMPLEMENTATION and c.id not in caught]
    assert not idle, f"implementation checks that no mutant fails: {idle}"


def test_mutants_keep_the_contract():
    from balancedness.sims.plugins import check_contract

    for m in MUTANTS:
        check_contract(m.replaces, m.field)


def test_runs_do_not_share_results_across_replacements():
    """The toy runs are cached per ``run_checks`` call: a mutant's run never leaks into the next call."""
    sgd_as_sam = next(m for m in MUTANTS if m.id == "sgd-as-sam")
    only = ["toy-nop-sam-balances", "toy-nop-noisier-faster"]
    first = run_checks(quick=True, only=only, replace={"sam": sgd_as_sam.field})
    after = run_checks(quick=True, only=only)
    assert not any(r.passed for r in first)
    assert all(r.passed for r in after)


@pytest.mark.slow
@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.id for m in MUTANTS])
def test_every_mutant_is_caught_at_full_scale_as_documented(mutant):
    """One test per mutant (each its own ``run_checks`` call, as in quick mode), so xdist spreads them."""
    built_in = dict(DIRECTIONS)
    caught, verdicts = catchers(mutant, quick=False)
    assert DIRECTIONS == built_in, "a mutant was left installed"
    _assert_caught_as_documented(mutant, caught, [v.id for v in verdicts if v.error], 1)


@pytest.mark.parametrize("variant,behaviour", VARIANTS, ids=[v.id for v, _ in VARIANTS])
def test_variants_correct_in_behaviour_pass_the_behaviour_checks(variant, behaviour):
    """A behaviour check must not fail a variant that behaves as the paper says through a harness artifact. SAM in
    float32 has a direction that is exactly 0 in a band around f' = 0: its OP flow stops there at t = 0.84
    (``solve_flow`` says ``stopped``), and the frozen tail up to t = 5 must not count as steps where |B| failed to
    decrease (it did: 832 of them, before the solver knew rest points). Its rough field makes the flows slow (~15 s)."""
    from balancedness.sims.plugins import check_contract

    check_contract(variant.replaces, variant.field)
    assert all(not CHECKS.get(cid).exact and variant.replaces in CHECKS.get(cid).runs for cid in behaviour)
    verdicts = run_checks(quick=True, only=list(behaviour), replace={variant.replaces: variant.field})
    assert all(v.passed for v in verdicts), [(v.id, v.measured) for v in verdicts]
