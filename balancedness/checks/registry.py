"""The check registry, the verdict a check yields, and the runner behind ``balancedness check``.

A check is a named function ``fn(ctx: Context) -> Measurement`` registered with :func:`check`
under an id, the paper reference, the claim in words, its :class:`Kind` and the optimizers it runs
(``runs``). The runner calls it and judges the measurement into a :class:`Verdict`: the measured value
against its bound by a :class:`Comparison`, plus the text a person reads (what was measured, the
tolerance). A check that raises is a FAIL whose text is the error.

Each check draws its random instances from its own stream, seeded by (seed, id), so a check sees the
same points whether it runs alone (``--only``) or with all the others, in any order.

**Kinds and what they run.** An *implementation* check runs registered optimizers (``runs`` names
them); a broken optimizer can fail it. A *math* check runs none: it verifies a closed form or an
inequality of the paper on its own. The runner records which optimizers a check really called (every
registered field is wrapped while it runs) into ``Verdict.exercised``, so the declared ``runs`` can be
tested against what happened.

**Your own optimizer.** ``run_checks(replace={"sam": my_field})`` installs ``my_field`` in place of the
built-in SAM for the whole run (``sims.directions.replaced_directions``: restored afterwards, even on
error) and, unless ``only`` is given, runs the implementation checks that run a replaced optimizer: the
claims of the paper the replacement satisfies or not. Each call has its own ``Context.cache``, so runs
shared between checks never mix two versions of an optimizer.
"""

from __future__ import annotations

import time
import traceback
import zlib
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, TypeVar

import numpy as np

from balancedness.sims.directions import DIRECTIONS, DirectionFn, observed, replaced_directions
from balancedness.validation import InvalidValue, choice, integer

Bound = float | tuple[float, float]
T = TypeVar("T")


class Kind(str, Enum):
    """What a PASS is evidence of."""

    #: it runs the simulators, the flows or an optimizer's direction: a broken optimizer could fail it
    IMPLEMENTATION = "implementation"
    #: it verifies a closed form or an inequality on its own, never touching an optimizer implementation
    MATH = "math"
    #: the paper is loose or wrong here (spec §8.7): PASS means our counter-evidence reproduces
    FINDING = "finding"


class Comparison(str, Enum):
    """How a measured value is judged against its bound."""

    AT_MOST = "<="  # value ≤ bound
    ABOVE = ">"  # value > bound
    WITHIN = "in"  # bound[0] ≤ value ≤ bound[1]
    ALL_HOLD = "all"  # value == bound: 1.0 when every part of the claim holds

    def holds(self, value: float, bound: Bound) -> bool:
        """Whether ``value`` satisfies the comparison (never for a non-finite value)."""
        if not np.isfinite(value):
            return False
        if self is Comparison.WITHIN:
            lo, hi = self._pair(bound)
            return lo <= value <= hi
        if self is Comparison.AT_MOST:
            return value <= self._one(bound)
        if self is Comparison.ABOVE:
            return value > self._one(bound)
        return value == self._one(bound)

    def _pair(self, bound: Bound) -> tuple[float, float]:
        if not isinstance(bound, tuple):
            raise ValueError(f"comparison {self.value!r} takes a (low, high) bound, got {bound!r}")
        return bound

    def _one(self, bound: Bound) -> float:
        if isinstance(bound, tuple):
            raise ValueError(f"comparison {self.value!r} takes one number as its bound, got {bound!r}")
        return bound

    def describe(self, bound: Bound) -> str:
        """The tolerance as the report shows it."""
        if self is Comparison.WITHIN:
            lo, hi = self._pair(bound)
            return f"in [{lo:g}, {hi:g}]"
        if self is Comparison.ALL_HOLD:
            return "all hold"
        return f"{self.value} {self._one(bound):g}"


@dataclass(frozen=True)
class Measurement:
    """What a check function returns: the value, the bound it is judged against, and the text shown."""

    value: float
    bound: Bound
    comparison: Comparison
    text: str


def at_most(value: float, bound: float, text: str) -> Measurement:
    """Passes when ``value ≤ bound`` (an error, a count of violations)."""
    return Measurement(float(value), bound, Comparison.AT_MOST, text)


def above(value: float, bound: float, text: str) -> Measurement:
    """Passes when ``value > bound`` (a finding's counter-evidence)."""
    return Measurement(float(value), bound, Comparison.ABOVE, text)


def within(value: float, bound: tuple[float, float], text: str) -> Measurement:
    """Passes when ``bound[0] ≤ value ≤ bound[1]`` (a ratio that must sit near its prediction)."""
    return Measurement(float(value), bound, Comparison.WITHIN, text)


def all_hold(ok: bool, text: str) -> Measurement:
    """Passes when every part of a compound claim holds (``ok``)."""
    return Measurement(float(ok), 1.0, Comparison.ALL_HOLD, text)


@dataclass(frozen=True)
class Verdict:
    """The judged result of one check: what ``run_checks`` returns and ``--json`` writes, one per row.

    Attributes:
        id, ref, claim, kind: the check's registration (``ref``: where the paper or spec states it).
        value, bound, comparison: the measured value and what it was judged against.
        passed: ``comparison.holds(value, bound)``.
        measured, tolerance: the human-readable text of the measurement and of the tolerance.
        seconds: how long the check ran.
        runs: the optimizers the check is registered to run (empty for math checks).
        exact: whether it pins the paper's update itself (see :class:`Check`).
        exercised: the optimizers it really called while it ran.
        error: ``"Type: message (file:line)"`` when the check raised (then it failed), else None.
    """

    id: str
    ref: str
    claim: str
    kind: Kind
    value: float
    bound: Bound
    comparison: Comparison
    passed: bool
    measured: str
    tolerance: str
    seconds: float = 0.0
    runs: tuple[str, ...] = ()
    exact: bool = False
    exercised: tuple[str, ...] = ()
    error: str | None = None

    @property
    def status(self) -> str:
        return "PASS" if self.passed else "FAIL"

    def as_json(self) -> dict[str, Any]:
        """A JSON object of plain values (``status`` included)."""
        bound = list(self.bound) if isinstance(self.bound, tuple) else self.bound
        return {
            "id": self.id,
            "ref": self.ref,
            "claim": self.claim,
            "measured": self.measured,
            "tolerance": self.tolerance,
            "status": self.status,
            "kind": self.kind.value,
            "value": self.value,
            "bound": bound,
            "comparison": self.comparison.value,
            "passed": self.passed,
            "seconds": self.seconds,
            "runs": list(self.runs),
            "exact": self.exact,
            "exercised": list(self.exercised),
            "error": self.error,
        }


@dataclass
class Context:
    """What a check function receives.

    Attributes:
        quick: fewer random points and shorter toy runs (``--quick``).
        n: how many random points an identity is tested on (50 quick, 200 full).
        rng: this check's own random stream.
        cache: results shared between checks of one run (the toy runs); use :meth:`cached`.
        calls: the sets that note the optimizers called (the check's own first; the runner fills it).
    """

    quick: bool
    n: int
    rng: np.random.Generator
    cache: dict[Hashable, tuple[Any, set[str]]] = field(default_factory=dict)
    calls: list[set[str]] = field(default_factory=lambda: [set()])

    def cached(self, key: Hashable, compute: Callable[[], T]) -> T:
        """``cache[key]``, computed once per run by ``compute()``. The optimizers the computation called
        count as called by every check that uses the result."""
        if key not in self.cache:
            names: set[str] = set()
            self.calls.append(names)
            try:
                self.cache[key] = (compute(), names)
            finally:
                self.calls.pop()  # ``names`` (by position: sets that are equal are not the same set)
        value, names = self.cache[key]
        for called in self.calls:  # the check, and any computation of a cached result that uses this one
            called.update(names)
        out: T = value  # what compute() returned for this key
        return out


CheckFn = Callable[[Context], Measurement]


@dataclass(frozen=True)
class Check:
    """A registered check. It also reads as the row ``(id, ref, claim, role, fn)``, with role "claim" or
    "finding", the form ``CHECKS`` held before it was a registry.

    ``runs``: the registered optimizers the check runs (non-empty for implementation checks, empty for
    math checks; a finding may run some). ``exact``: an implementation check that pins the paper's update
    itself (an identity, an error order, a reference value), which a *variant* of the optimizer is expected
    to fail; the others test behaviour a variant may share (it balances, in the predicted direction, within
    the bounds)."""

    id: str
    ref: str
    claim: str
    kind: Kind
    fn: CheckFn
    runs: tuple[str, ...] = ()
    exact: bool = False

    @property
    def role(self) -> str:
        """ "finding" where PASS means our counter-evidence reproduces, else "claim"."""
        return "finding" if self.kind is Kind.FINDING else "claim"

    def _row(self) -> tuple[str, str, str, str, CheckFn]:
        return (self.id, self.ref, self.claim, self.role, self.fn)

    def __iter__(self) -> Iterator[str | CheckFn]:
        return iter(self._row())

    def __getitem__(self, i: int) -> str | CheckFn:
        return self._row()[i]

    def run(self, ctx: Context) -> Verdict:
        """Call the check with every registered field wrapped to record which optimizers it calls."""
        started = time.perf_counter()
        called = ctx.calls[0]
        error = None
        with replaced_directions({name: _recording(name, e.field, ctx.calls) for name, e in DIRECTIONS.items()}):
            try:
                with np.errstate(all="ignore"):  # a broken optimizer overflows; non-finite values fail below
                    m = self.fn(ctx)
            except Exception as e:  # a check that cannot complete has failed; say why and where
                frames = traceback.extract_tb(e.__traceback__)
                ours = [f for f in frames if "site-packages" not in f.filename] or frames  # not numpy's insides
                error = f"{type(e).__name__}: {e} ({ours[-1].filename.rsplit('/', 1)[-1]}:{ours[-1].lineno})"
                m = Measurement(float("nan"), 1.0, Comparison.ALL_HOLD, f"error: {error}")
        return Verdict(
            self.id,
            self.ref,
            self.claim,
            self.kind,
            m.value,
            m.bound,
            m.comparison,
            m.comparison.holds(m.value, m.bound),
            m.text,
            m.comparison.describe(m.bound),
            time.perf_counter() - started,
            self.runs,
            self.exact,
            tuple(sorted(called)),
            error,
        )


def _recording(name: str, fn: DirectionFn, calls: list[set[str]]) -> DirectionFn:
    """``fn`` under :func:`~balancedness.sims.directions.observed`, noting ``name`` in every set of ``calls``
    whenever it runs (a watcher that leaves the math alone, so a built-in still steps compiled)."""

    def note() -> None:
        for called in calls:
            called.add(name)

    return observed(fn, note)


class Registry:
    """The checks by id, in registration order (iterating yields :class:`Check` objects)."""

    def __init__(self) -> None:
        self._checks: dict[str, Check] = {}

    def add(self, c: Check) -> None:
        if c.id in self._checks:
            raise ValueError(f"check id {c.id!r} is registered twice")
        self._checks[c.id] = c

    def ids(self) -> list[str]:
        return list(self._checks)

    def get(self, cid: str) -> Check:
        return self._checks[choice("only", cid, self._checks)]

    def __contains__(self, cid: object) -> bool:
        return cid in self._checks

    def __iter__(self) -> Iterator[Check]:
        return iter(self._checks.values())

    def __len__(self) -> int:
        return len(self._checks)


#: Every check of ``balancedness check``, in report order.
CHECKS = Registry()


def check(
    id: str, ref: str, claim: str, kind: Kind, runs: Iterable[str] = (), exact: bool = False
) -> Callable[[CheckFn], CheckFn]:
    """Decorator: register the function as the check ``id`` (one line above its definition).

    ``runs`` names the registered optimizers it runs: required for an implementation check, forbidden
    for a math check (which must not touch an optimizer). ``exact``: see :class:`Check`."""
    kind, runs = Kind(kind), tuple(runs)
    if kind is Kind.IMPLEMENTATION and not runs:
        raise ValueError(f"implementation check {id!r} must name the optimizers it runs (runs=...)")
    if kind is Kind.MATH and runs:
        raise ValueError(f"math check {id!r} runs optimizers {runs}; make it an implementation check")
    if exact and kind is not Kind.IMPLEMENTATION:
        raise ValueError(f"only an implementation check can be exact, not the {kind.value} check {id!r}")

    def add(fn: CheckFn) -> CheckFn:
        CHECKS.add(Check(id, ref, claim, kind, fn, runs, exact))
        return fn

    return add


def select(only: Sequence[str] | None = None, runs: Iterable[str] | None = None) -> list[Check]:
    """The checks to run: those named in ``only`` (an unknown id raises ``InvalidValue``); else, with
    ``runs``, the implementation checks that run one of those optimizers; else all."""
    if only:
        wanted = {CHECKS.get(cid).id for cid in only}
        return [c for c in CHECKS if c.id in wanted]
    if runs is not None:
        names = set(runs)
        return [c for c in CHECKS if c.kind is Kind.IMPLEMENTATION and names & set(c.runs)]
    return list(CHECKS)


def run_checks(
    quick: bool = False,
    seed: int = 0,
    only: Sequence[str] | None = None,
    progress: Callable[[Verdict], None] | None = None,
    replace: Mapping[str, DirectionFn] | None = None,
) -> list[Verdict]:
    """Run every registered check (or those in ``only``) and return their verdicts in report order.

    ``replace`` maps optimizer names to direction functions that stand in for them during this run
    (see the module docstring); then, without ``only``, only the implementation checks that run one of
    them are run. Bad arguments raise before any check runs.
    """
    seed = integer("seed", seed, minimum=0)
    replace = dict(replace or {})
    for name, fn in replace.items():
        if not callable(fn):
            raise InvalidValue(f"the replacement of {name}", "a callable direction function", fn)
    chosen = select(only, replace.keys() if replace else None)
    cache: dict[Hashable, tuple[Any, set[str]]] = {}
    out = []
    with replaced_directions(replace):
        for c in chosen:
            rng = np.random.default_rng([seed, zlib.crc32(c.id.encode())])
            out.append(c.run(Context(quick, 50 if quick else 200, rng, cache)))
            if progress is not None:
                progress(out[-1])
    return out


def results_as_json(results: Sequence[Verdict]) -> list[dict[str, Any]]:
    """The verdicts as a JSON list, one object per check."""
    return [r.as_json() for r in results]
