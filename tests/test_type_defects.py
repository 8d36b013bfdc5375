"""The defects the lint and type pass (issue 24) found, each pinned by a test that fails on the old code.

Each was a declared type that promised more than the code did (or less than the callers passed); the note of
each test names the old behaviour.
"""

from __future__ import annotations

import numpy as np
import pytest

from balancedness.sims import make_problem, simulate
from balancedness.sims.grid import seed_list, values
from balancedness.validation import InvalidValue


def test_grid_values_takes_any_iterable_it_declares():
    """``values(name, v: float | Iterable[float])``: a generator, a set, a range are iterables of numbers too
    (the old code passed anything but a list or tuple through ``np.atleast_1d``, which wraps a generator or a set
    as one object and then rejected it as "not a finite number")."""
    assert values("alpha", (a for a in (0.5, 1.0))) == [0.5, 1.0]
    assert values("alpha", {0.25}) == [0.25]
    assert values("alpha", range(2)) == [0.0, 1.0]
    assert values("alpha", np.array(0.5)) == [0.5] and values("alpha", np.array([1.0, 2.0])) == [1.0, 2.0]
    assert values("alpha", 2) == [2.0]
    with pytest.raises(InvalidValue, match="alpha values must be a finite number"):
        values("alpha", "0.5")  # a string is one (bad) value, not an iterable of characters


def test_simulate_takes_a_generator_of_noise_levels():
    """The same through the public signature ``simulate(alpha: float | Iterable[float])``."""
    res = simulate(make_problem("op"), "sgd", alpha=(a for a in (0.0, 0.5)), steps=4, record_every=2, lr=0.01)
    assert res.alpha.tolist() == [0.0, 0.5]


def test_seed_list_refuses_a_bool_with_its_sentence():
    """``seed_list(True)``: a clear InvalidValue naming ``seeds`` (the old code raised TypeError: 'bool' object is
    not iterable)."""
    with pytest.raises(InvalidValue, match="seeds must be a positive count or a non-empty list of seeds, got True"):
        seed_list(True)


def test_toy2d_takes_x0_or_y0_alone():
    """``make_problem("toy2d", x0=..., y0=...)`` typed both optional: x0 alone keeps y0's default (the old code
    called ``np.ravel(None)`` and crashed with TypeError), y0 alone is used (the old code silently dropped it)."""
    p = make_problem("toy2d", x0=[0.3])
    assert p.x0.ravel().tolist() == [0.3] and p.y0.ravel().tolist() == [-0.1]
    q = make_problem("toy2d", y0=[0.2])
    assert q.x0.ravel().tolist() == [0.1] and q.y0.ravel().tolist() == [0.2]
