"""Every numerically checkable claim of the paper (spec §7.1–§7.3), run on random instances and on the
paper's toy settings. ``balancedness check`` prints one row per check.

``registry`` holds the registry (:data:`CHECKS`), the :class:`Verdict` a check yields and the runner;
the checks themselves are grouped by topic, and registered in this (report) order:

* ``flows``: what the solved limiting flows conserve, and discrete runs converging to them;
* ``identities``: exact identities of the optimizers' fields and single steps at random points;
* ``closed_forms``: Corollary 2's threshold and Lemma 1's λ_max, checked on their own;
* ``bounds``: A_t = O(ρ²), the explicit A_t bounds, the sandwich inequalities, Thm 3, Lemma 3;
* ``toys``: the paper's toy settings, simulated;
* ``findings``: where the paper is loose or wrong (PASS means the counter-evidence reproduces);
* ``flatness``: Flat-LoRA, Bi-LoRA and ASAM beside SAM and BAR (spec/flatness-methods.md §5): the W-space
  lemma, the methods' fields and toy runs, and where a method does not do what its paper's intuition suggests.

Each check has a :class:`Kind`: ``implementation`` (it runs an optimizer, so a broken one could fail
it), ``math`` (a closed form or inequality on its own) or ``finding``.
"""

# The topic modules in registration (report) order, which is not alphabetical: isort must leave this line alone.
from balancedness.checks import flows, identities, closed_forms, bounds, toys, findings, flatness  # isort: skip  # noqa: F401
from balancedness.checks.registry import (
    CHECKS,
    Check,
    Comparison,
    Context,
    Kind,
    Measurement,
    Verdict,
    check,
    results_as_json,
    run_checks,
    select,
)

__all__ = [
    "CHECKS",
    "Check",
    "Comparison",
    "Context",
    "Kind",
    "Measurement",
    "Verdict",
    "check",
    "results_as_json",
    "run_checks",
    "select",
]
