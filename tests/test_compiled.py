"""The compiled stepper (``sims.compiled``, numba) against the registered numpy direction functions.

The numpy fields are the one definition of each optimizer; the kernel must give the same records on every
built-in: bit for bit on rank-1 problems (the paper's toys, layered or not, Fig. 4's), within 1e-12 on
rank r > 1 (numpy's matmul goes through BLAS there, whose summation order the kernel cannot follow).
Any field that is not the built-in function object runs through numpy.
"""

import numpy as np
import pytest

from balancedness.sims import (
    OPTIMIZERS,
    make_problem,
    nop_problem,
    observed,
    op_problem,
    replaced_directions,
    simulate,
    toy2d_problem,
)
from balancedness.sims.directions import sam, sgd
from conftest import need

need("numba", "the compiled stepper")
from balancedness.sims import compiled  # noqa: E402

FIELDS = ("x", "y", "balancedness", "balancedness_layers", "grad_gap", "loss")
HYPER = {
    "sgd": {},
    "sngd": {},
    "sam": {"rho": [0.0, 0.1, 0.3]},
    "msam": {"rho": 0.1, "m": 2, "batch": 4},
    "nbar": {"mu": 1.0, "schedule": "linear"},
    "obar": {"mu": 2.0, "schedule": "cosine"},
}
RANK1 = {
    "nop": nop_problem,
    "op": op_problem,
    "nop-layered": lambda: make_problem("nop-layered"),
    "op-layered": lambda: make_problem("op-layered"),
    "toy2d": toy2d_problem,
}


def both(problem, name, **kw):
    kw = {"lr": 1e-3, "steps": 2100, "record_every": 7, **HYPER[name], **kw}  # crosses two noise blocks
    if problem.noisy:
        kw.setdefault("alpha", [0.0, 0.5, 2.0])
        kw.setdefault("seeds", [3, 4])
    a = simulate(problem, name, backend="numpy", **kw)
    b = simulate(problem, name, backend="numba", **kw)
    assert (a.settings["backend"], b.settings["backend"]) == ("numpy", "numba")
    return a, b


def test_the_kernel_covers_every_built_in():
    assert sorted(compiled.OPCODES.values()) == list(range(len(OPTIMIZERS)))
    assert {f.__name__ for f in compiled.OPCODES} == set(OPTIMIZERS)


@pytest.mark.parametrize("kind", sorted(RANK1))
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_compiled_equals_numpy_bit_for_bit_on_rank_one(kind, name):
    a, b = both(RANK1[kind](), name)
    for key in FIELDS:
        np.testing.assert_array_equal(getattr(b, key), getattr(a, key), err_msg=f"{key} of {name} on {kind}")


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_compiled_equals_numpy_within_1e_12_on_rank_r(name):
    p = nop_problem(3, 2, d1=5, d2=4, y0=np.full((2, 4, 3), 0.3))
    a, b = both(p, name, steps=1100, alpha=[0.0, 0.5])  # (the ulps grow where the dynamics amplify them)
    for key in FIELDS:
        np.testing.assert_allclose(getattr(b, key), getattr(a, key), rtol=0, atol=1e-12, err_msg=key)


def test_divergence_and_zero_gradients_agree():
    a, b = both(nop_problem(), "sam", lr=5.0, steps=60, record_every=1, alpha=[0.0], seeds=2)
    assert a.settings["diverged"] == b.settings["diverged"] == 6
    np.testing.assert_array_equal(b.balancedness, a.balancedness)  # the same NaN/inf pattern
    p = nop_problem(x0=np.zeros(3), y0=np.zeros(3))
    for name in OPTIMIZERS:
        a, b = both(p, name, steps=5, record_every=1)
        np.testing.assert_array_equal(b.x, a.x)


def test_the_kernel_runs_the_field_that_is_registered():
    def mine(*args):  # the same math as sgd, in another function: numpy runs it
        return sgd(*args)

    with replaced_directions({"sam": mine}):
        res = simulate(nop_problem(), "sam", rho=0.1, alpha=1.0, steps=300, lr=1e-3)
        assert res.settings["backend"] == "numpy"
        with pytest.raises(ValueError, match="backend 'numba' cannot run: the field of 'sam' is not a built-in"):
            simulate(nop_problem(), "sam", rho=0.1, steps=10, backend="numba")
    with replaced_directions({"sam": sgd}):  # a built-in in another's place: the kernel of that built-in
        swapped = simulate(nop_problem(), "sam", rho=0.1, alpha=1.0, steps=300, lr=1e-3)
    plain = simulate(nop_problem(), "sgd", alpha=1.0, steps=300, lr=1e-3, backend="numpy")
    assert swapped.settings["backend"] == "numba"
    np.testing.assert_array_equal(swapped.balancedness, plain.balancedness)
    np.testing.assert_array_equal(res.balancedness, plain.balancedness)
    assert simulate(nop_problem(), "sam", rho=0.1, steps=10).settings["backend"] == "numba"


def test_backend_is_validated_and_can_be_switched_off(monkeypatch):
    with pytest.raises(ValueError, match="backend must be one of .*got 'gpu'"):
        simulate(nop_problem(), "sgd", steps=10, backend="gpu")
    monkeypatch.setenv(compiled.ENV, "numpy")
    assert simulate(nop_problem(), "sgd", steps=10).settings["backend"] == "numpy"
    with pytest.raises(ValueError, match="numba is not installed .* or \\$BALANCEDNESS_BACKEND=numpy"):
        simulate(nop_problem(), "sgd", steps=10, backend="numba")


def test_an_observed_built_in_runs_compiled_and_is_still_noted():
    seen = []
    note = lambda: seen.append("sam")  # noqa: E731
    kw = dict(rho=0.1, alpha=[0.5, 1.0], seeds=2, steps=1500, lr=1e-3, record_every=100)
    with replaced_directions({"sam": observed(observed(sam, note), note)}):
        watched = simulate(nop_problem(), "sam", **kw)
    assert watched.settings["backend"] == "numba"
    assert len(seen) >= 2
    plain = simulate(nop_problem(), "sam", backend="numpy", **kw)
    np.testing.assert_array_equal(watched.x, plain.x)
    seen.clear()
    with replaced_directions({"sam": observed(lambda *a: sam(*a), note)}):  # observes a non-built-in: numpy
        res = simulate(nop_problem(), "sam", **{**kw, "steps": 10})
    assert res.settings["backend"] == "numpy"
    assert len(seen) == 11  # noted on every call, as numpy calls it


def test_warm_compiles_the_kernel_a_run_uses():
    compiled.warm()
    assert len(compiled.kernel().signatures) == 1
    simulate(nop_problem(), "sam", rho=0.1, alpha=[0.5], seeds=[1, 2], steps=20)
    simulate(toy2d_problem(), "nbar", mu=1.0, schedule="linear", steps=20)
    assert len(compiled.kernel().signatures) == 1  # the run needed no second compilation
