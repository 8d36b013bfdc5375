"""The simulator against plain reference loops, its invariances, the flows, and bad input."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from balancedness.metrics import balancedness
from balancedness.schedules import mu_at
from balancedness.sims import (
    DIRECTIONS,
    Optimizer,
    SimResult,
    make_optimizer,
    make_problem,
    nop_problem,
    op_problem,
    register_direction,
    replaced_directions,
    simulate,
    solve_flow,
    unregister_direction,
)
from balancedness.sims.directions import sam
from balancedness.sims.problems import NOISE_BLOCK
from conftest import need


def reference_loop(kind, opt, steps, lr, alpha, seed, rho=0.1, mu=1.0, batch=1, m=1):
    """A plain per-step loop over one trajectory, written from the paper's equations only."""
    x = np.array([0.2, -0.1, 0.3])
    y = -3 * x
    A = np.diag([0.5, 0, 0])
    D = np.array([1.0, 0.8, 0.5])
    rng = np.random.default_rng(seed)
    shape = (NOISE_BLOCK, batch, 3, 3) if kind == "nop" else (NOISE_BLOCK, batch)
    Bs = []

    def grad(x, y, noise):
        if kind == "nop":
            G = 2 * (np.outer(x, y) - A - alpha * noise)
            return G @ y, G.T @ x
        f = 2 * (x @ y - 0.5 - alpha * noise)
        return f * y, f * x

    for t in range(steps):
        if t % NOISE_BLOCK == 0:
            block = rng.standard_normal(shape)
            if kind == "nop":
                block = block * D[:, None]
        noise_b = block[t % NOISE_BLOCK]
        chunks = noise_b.reshape((m, batch // m) + noise_b.shape[1:]).mean(axis=1)
        Bs.append(0.5 * (x @ x - y @ y))
        full = chunks.mean(axis=0)
        gx, gy = grad(x, y, full)
        if opt == "sgd":
            dx, dy = -gx, -gy
        elif opt == "sam" or opt == "msam":
            dx, dy = np.zeros(3), np.zeros(3)
            for c in chunks:
                gx, gy = grad(x, y, c)
                n = np.sqrt(gx @ gx + gy @ gy)
                e = rho / n if n > 0 else 0.0
                tx, ty = grad(x + e * gx, y + e * gy, c)
                dx, dy = dx - tx / m, dy - ty / m
        elif opt == "nbar":
            s = 1.0 if np.linalg.norm(gx) >= np.linalg.norm(gy) else -1.0
            x, y = (1 + s * mu * lr) * x, (1 - s * mu * lr) * y  # Alg. 2 lines 4-10, then SGD
            dx, dy = -gx, -gy
        elif opt == "obar":
            s = 1.0 if np.linalg.norm(x) >= np.linalg.norm(y) else -1.0
            x, y = (1 - s * mu * lr) * x, (1 + s * mu * lr) * y  # Alg. 3
            dx, dy = -gx, -gy
        x, y = x + lr * dx, y + lr * dy
    Bs.append(0.5 * (x @ x - y @ y))
    return np.array(Bs), x, y


@pytest.mark.parametrize("kind", ["nop", "op"])
@pytest.mark.parametrize(
    "opt,kw",
    [
        ("sgd", {}),
        ("sam", {"rho": 0.1}),
        ("msam", {"rho": 0.1, "m": 2, "batch": 4}),
        ("nbar", {"mu": 1.0}),
        ("obar", {"mu": 2.0}),
    ],
)
@pytest.mark.parametrize("backend", ["numpy", "auto"])  # auto: the compiled stepper where numba is installed
def test_vectorized_simulator_equals_reference_loop(kind, opt, kw, backend):
    steps, lr = 1500, 1e-3  # crosses a noise block boundary
    p = nop_problem() if kind == "nop" else op_problem()
    kw = dict(kw)
    batch = kw.pop("batch", 1)
    res = simulate(
        p, opt, alpha=[0.5, 1.0], seeds=[3, 4], lr=lr, steps=steps, record_every=1, batch=batch, backend=backend, **kw
    )
    for i, (a, s) in enumerate([(0.5, 3), (0.5, 4), (1.0, 3), (1.0, 4)]):
        B, x, y = reference_loop(kind, opt, steps, lr, a, s, batch=batch, **kw)
        assert res.alpha[i] == a
        assert res.seed[i] == s
        np.testing.assert_allclose(res.balancedness[i], B, rtol=0, atol=1e-12)
        np.testing.assert_allclose(res.x[i, -1, 0, :, 0], x, atol=1e-12)


def test_noise_depends_only_on_the_seed():
    p = nop_problem()
    a = simulate(p, "sam", rho=0.1, alpha=1.0, seeds=[5], lr=1e-3, steps=300, record_every=10)
    b = simulate(p, "sam", rho=0.1, alpha=[0.5, 1.0], seeds=[2, 5, 9], lr=1e-3, steps=300, record_every=10)
    np.testing.assert_array_equal(a.balancedness[0], b.balancedness[b.select(alpha=1.0, seed=5)][0])
    seq = p.noise_sequence(5, 2 * NOISE_BLOCK + 7, batch=2)
    assert seq.shape == (2 * NOISE_BLOCK + 7, 2, 3, 3)
    np.testing.assert_array_equal(seq[:10], p.noise_sequence(5, 10, batch=2))


def test_record_times_include_zero_and_end():
    res = simulate(op_problem(), "sgd", steps=1001, record_every=100, lr=1e-3)
    assert res.t[0] == 0
    assert res.t[-1] == 1001
    assert len(res.t) == 12


def test_zero_gradient_gives_no_perturbation_and_no_nan():
    p = nop_problem(x0=np.zeros(3), y0=np.zeros(3))
    for name in ("sam", "msam", "sngd", "nbar", "obar"):
        res = simulate(p, name, rho=0.1, mu=1.0, steps=5, record_every=1, lr=1e-2)
        assert np.all(np.isfinite(res.x)), name
        assert np.all(res.x == 0), name
    # SAM at an exact minimizer of the noise-free OP toy: g = 0, so the step is zero
    q = op_problem(x0=[1.0, 0, 0], y0=[0.5, 0, 0])
    res = simulate(q, "sam", rho=0.2, steps=3, record_every=1, lr=0.1)
    np.testing.assert_array_equal(res.x[0, -1], res.x[0, 0])


def test_msam_with_one_chunk_is_sam():
    p = op_problem()
    a = simulate(p, "sam", rho=0.2, alpha=1.0, seeds=2, steps=500, lr=1e-3, batch=4, record_every=50)
    b = simulate(p, "msam", rho=0.2, m=1, alpha=1.0, seeds=2, steps=500, lr=1e-3, batch=4, record_every=50)
    np.testing.assert_allclose(a.balancedness, b.balancedness, atol=1e-14)


def test_layered_problem_with_one_layer_is_the_toy():
    a = simulate(nop_problem(), "sam", rho=0.1, alpha=1.0, steps=300, lr=1e-3, record_every=30)
    b = simulate(make_problem("nop-layered", layers=1), "sam", rho=0.1, alpha=1.0, steps=300, lr=1e-3, record_every=30)
    np.testing.assert_allclose(a.balancedness, b.balancedness, atol=1e-14)


def test_layered_sam_uses_the_global_gradient_norm():
    p = make_problem("nop-layered", layers=3)
    opt = Optimizer("sam", rho=0.1)
    X, Y = p.x0[None].copy(), p.y0[None].copy()
    gX, gY, _ = p.grads(X, Y, np.zeros(1), None)
    u = 1 / np.sqrt((gX**2).sum() + (gY**2).sum())
    gXt, gYt, _ = p.grads(X + 0.1 * u * gX, Y + 0.1 * u * gY, np.zeros(1), None)
    dX, dY, _, _ = opt.direction(p, X, Y, np.zeros(1), None)
    np.testing.assert_allclose(dX, -gXt, atol=1e-14)


def test_bar_schedules():
    assert mu_at(2.0, "constant", 0.7) == 2.0
    assert mu_at(2.0, "linear", 0.25) == pytest.approx(1.5)
    assert mu_at(2.0, "cosine", 0.5) == pytest.approx(1.0)
    assert mu_at(2.0, "cosine", 1.0) == pytest.approx(0.0)
    lin = simulate(nop_problem(), "nbar", mu=1.0, schedule="linear", alpha=1.0, steps=2000, lr=1e-3)
    const = simulate(nop_problem(), "nbar", mu=1.0, schedule="constant", alpha=1.0, steps=2000, lr=1e-3)
    # the decaying coefficient moves B less than the constant one
    assert abs(lin.balancedness[0, -1] - lin.balancedness[0, 0]) < abs(
        const.balancedness[0, -1] - const.balancedness[0, 0]
    )


@settings(max_examples=60, deadline=None)
@given(c=st.floats(0.2, 5.0), seed=st.integers(0, 10_000))
def test_loss_is_scale_invariant(c, seed):
    rng = np.random.default_rng(seed)
    for p in (nop_problem(), op_problem()):
        X, Y = rng.standard_normal((2, 1) + p.x0.shape)
        np.testing.assert_allclose(p.excess_loss(c * X, Y / c), p.excess_loss(X, Y), rtol=1e-10)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), lr=st.floats(1e-4, 0.1), alpha=st.floats(0, 3))
def test_sgd_step_changes_b_by_exactly_eta_squared_gap(seed, lr, alpha):
    rng = np.random.default_rng(seed)
    p = nop_problem()
    X, Y = rng.standard_normal((2, 1) + p.x0.shape)
    noise = rng.standard_normal((1, 1, 3, 3))
    dX, dY, gX, gY = Optimizer("sgd").direction(p, X, Y, np.array([alpha]), noise)
    dB = balancedness(X + lr * dX, Y + lr * dY) - balancedness(X, Y)
    np.testing.assert_allclose(dB, 0.5 * lr**2 * ((gX**2).sum() - (gY**2).sum()), rtol=1e-8, atol=1e-14)


@pytest.mark.parametrize("kind", ["nop", "op"])
def test_discrete_converges_to_flow_linearly_in_eta(kind):
    p, rho = (nop_problem(), 0.1) if kind == "nop" else (op_problem(), 0.2)
    flow = solve_flow(p, "sam", rho=rho, t_end=1.0, n_records=2).balancedness[0, -1]
    errs = []
    for lr in (1e-2, 1e-3, 1e-4):
        d = simulate(p, "sam", rho=rho, lr=lr, steps=round(1 / lr), record_every=round(1 / lr))
        errs.append(abs(d.balancedness[0, -1] - flow))
    assert 7 < errs[0] / errs[1] < 13, errs
    assert 7 < errs[1] / errs[2] < 13, errs


def test_flow_reports_sliding_on_the_discontinuous_sam_op_field():
    res = solve_flow(op_problem(), "sam", rho=0.2, t_end=10.0, n_records=51)
    assert res.settings["status"] == "sliding"
    run = res.settings["runs"][0]
    assert 0 < run["sliding_from"] < 10
    # the fallback continues to the end, near the discrete run at eta = 1e-4 (both O(eta) from the limit)
    d = simulate(op_problem(), "sam", rho=0.2, lr=1e-4, steps=100_000, record_every=100_000)
    assert abs(res.balancedness[0, -1] - d.balancedness[0, -1]) < 0.01
    assert np.all(np.isfinite(res.balancedness))


def test_flow_stops_where_the_field_vanishes_identically():
    """SGD on OP with a dead zone (d = 0 exactly where |f'| < 0.05) reaches it in finite time: the flow is at rest
    there. The solver says ``stopped`` and when; the records after it are that point (not a long "ok" run frozen by
    chance, which is how a float32 field used to fail thm3-direction)."""
    from balancedness.sims.directions import sgd

    def dead_zone(problem, X, Y, targets, hp):
        dX, dY, gX, gY = sgd(problem, X, Y, targets, hp)
        alive = (np.abs(problem.outer_grad_at(problem.product(X, Y), problem.target)) >= 0.05)[:, None, None, None]
        return dX * alive, dY * alive, gX, gY

    with replaced_directions({"sgd": dead_zone}):
        res = solve_flow(op_problem(), "sgd", t_end=10.0, n_records=101)
    run = res.settings["runs"][0]
    assert res.settings["status"] == "stopped"
    assert run["status"] == "stopped"
    assert run["sliding_from"] is None
    assert 0 < run["stopped_at"] < 10
    after = res.t > run["stopped_at"]
    assert after.sum() > 50
    assert np.all(res.x[0, after] == res.x[0, after][0])
    assert not np.allclose(res.x[0, 0], res.x[0, after][0])
    f = op_problem().outer_grad_at(op_problem().product(res.x[0, after][:1], res.y[0, after][:1]), 0.5)
    assert abs(f[0]) < 0.05
    ok = solve_flow(op_problem(), "sgd", t_end=10.0, n_records=11).settings
    assert ok["status"] == "ok"
    assert ok["runs"][0]["stopped_at"] is None


def test_flow_with_frozen_noise_and_bar():
    res = solve_flow(nop_problem(), "nbar", mu=1.0, alpha=[0.0, 1.0], seeds=[0], t_end=2.0, n_records=21)
    assert res.balancedness.shape == (2, 21)
    assert np.all(np.isfinite(res.balancedness))
    assert res.balancedness[1, 0] == pytest.approx(-0.56)


@pytest.mark.parametrize("suffix", [".json", ".npz"])
def test_result_round_trip(tmp_path, suffix):
    res = simulate(nop_problem(2, 2), "sam", rho=0.1, alpha=[0, 1.0], seeds=2, steps=200, lr=1e-3, record_every=20)
    path = res.save(tmp_path / f"r{suffix}")
    back = SimResult.load(path)
    for key in ("t", "x", "y", "balancedness", "balancedness_layers", "grad_gap", "loss", "alpha", "seed"):
        np.testing.assert_allclose(getattr(back, key), getattr(res, key), atol=1e-15)
    assert back.settings["optimizer"]["name"] == "sam"
    assert not list(tmp_path.glob(".*tmp"))  # no temp file left behind


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: make_optimizer("sam", rho=-0.1), "rho must be .*-0.1"),
        (lambda: make_optimizer("nbar", mu=-1.0), "mu must be .*-1.0"),
        (lambda: make_optimizer("adam"), "unknown optimizer 'adam'"),
        (lambda: make_problem("lstm"), "unknown problem 'lstm'"),
        (lambda: simulate(nop_problem(), "sgd", lr=-1e-3), "lr must be .*-0.001"),
        (lambda: simulate(nop_problem(), "msam", m=3, batch=4), "m=3 must divide the batch size 4"),
        (lambda: nop_problem(x0=[0.2, np.nan, 0.3]), "x0 must be finite"),
        (lambda: nop_problem(x0=[1.0, 2.0]), "x0 has 2 entries"),
        (lambda: simulate(nop_problem(), "sgd", alpha=-1.0), "alpha values must be .*-1.0"),
        (lambda: simulate(make_problem("toy2d"), "sgd", alpha=1.0), "no noise term"),
        (lambda: make_problem("op", rank=2), "rank applies to NOP"),
        (lambda: solve_flow(nop_problem(), "sgd", t_end=-1.0), "t_end must be"),
    ],
)
def test_bad_input_is_a_clear_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_interrupt_returns_partial_result(monkeypatch):
    calls = {"n": 0}
    original = Optimizer.field

    def interrupting(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 250:
            raise KeyboardInterrupt
        return original(self, *a, **k)

    monkeypatch.setattr(Optimizer, "field", interrupting)
    res = simulate(nop_problem(), "sgd", steps=1000, record_every=100, lr=1e-3, backend="numpy")
    assert res.settings["interrupted"]
    assert len(res.t) == 3
    assert res.t[-1] == 200


def test_interrupt_returns_partial_result_of_the_compiled_stepper(monkeypatch):
    need("numba", "the compiled stepper")
    from balancedness.sims import compiled

    calls = {"n": 0}
    original = compiled.Stepper.run

    def interrupting(self, *a, **k):  # the kernel runs a noise block (1024 steps) per call
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, *a, **k)

    monkeypatch.setattr(compiled.Stepper, "run", interrupting)
    res = simulate(nop_problem(), "sgd", steps=3000, record_every=100, lr=1e-3, backend="numba")
    assert res.settings["interrupted"]
    assert len(res.t) == 11
    assert res.t[-1] == 1000  # the first block's records


def test_divergence_is_counted():
    ok = simulate(nop_problem(), "sgd", steps=100, lr=1e-3, record_every=10)
    assert ok.settings["diverged"] == 0
    bad = simulate(nop_problem(), "sgd", alpha=[0.0], seeds=2, steps=200, lr=5.0, record_every=10)
    assert bad.settings["diverged"] == 2
    assert not np.all(np.isfinite(bad.balancedness))


def test_a_registered_direction_runs_in_the_simulator():
    @register_direction("sam-half", uses={"rho"})
    def sam_half(problem, X, Y, targets, hp):
        return sam(problem, X, Y, targets, hp._replace(rho=hp.rho / 2))

    try:
        half = simulate(nop_problem(), "sam-half", rho=0.2, alpha=1.0, seeds=2, steps=300, lr=1e-3, record_every=30)
    finally:
        unregister_direction("sam-half")
    full = simulate(nop_problem(), "sam", rho=0.1, alpha=1.0, seeds=2, steps=300, lr=1e-3, record_every=30)
    np.testing.assert_array_equal(half.balancedness, full.balancedness)
    assert half.settings["optimizer"]["name"] == "sam-half"
    assert "sam-half" not in DIRECTIONS
    with pytest.raises(ValueError, match="unknown optimizer 'sam-half'"):
        make_optimizer("sam-half")


def test_replaced_directions_is_scoped_and_restores_on_error():
    from balancedness.sims.directions import sgd

    built_in = DIRECTIONS["sam"]
    with replaced_directions({"sam": sgd}) as installed:
        assert DIRECTIONS["sam"].field is sgd
        assert installed["sam"].uses == built_in.uses
        assert DIRECTIONS["sam"].switching is built_in.switching
        res = simulate(nop_problem(), "sam", rho=0.1, alpha=1.0, steps=300, lr=1e-3, record_every=300)
    assert DIRECTIONS["sam"] is built_in
    plain = simulate(nop_problem(), "sgd", alpha=1.0, steps=300, lr=1e-3, record_every=300)
    np.testing.assert_array_equal(res.balancedness, plain.balancedness)  # "sam" really ran the replacement
    with pytest.raises(RuntimeError, match="inside"):
        with replaced_directions({"sam": sgd}):
            raise RuntimeError("inside")
    assert DIRECTIONS["sam"] is built_in
    for bad, match in (({"adamw": sgd}, "unknown optimizer 'adamw'"), ({"sam": sgd, "nbar": 1}, "callable")):
        with pytest.raises(ValueError, match=match):
            with replaced_directions(bad):
                pass
        assert DIRECTIONS["sam"] is built_in
        assert DIRECTIONS["nbar"].field.__name__ == "nbar"


def _write(tmp_path, body: str):
    path = tmp_path / "user_field.py"
    path.write_text("import numpy as np\nfrom balancedness.sims.directions import sam\n" + body)
    return path


@pytest.mark.parametrize(
    "body,spec,match",
    [
        ("def f(p, X, Y, t, hp):\n    return -X, -Y\n", "sam={}:f", "returned tuple of length 2"),
        (
            "def f(p, X, Y, t, hp):\n    return -X[:, 0], -Y, X, Y\n",
            "sam={}:f",
            r"d_X of shape \(2, 3, 1\); expected \(2, 1, 3, 1\)",
        ),
        ("def f(p, X, Y, t, hp):\n    X *= 2\n    return -X, -Y, X, Y\n", "sam={}:f", "changed X or Y in place"),
        ("def f(p, X, Y, t, hp):\n    return X * np.nan, Y, X, Y\n", "sam={}:f", "non-finite values in d_X"),
        ("def f(p, X, Y, t, hp):\n    raise KeyError('chunk')\n", "sam={}:f", "raised KeyError"),
        ("def f(p, X, Y, t, hp):\n    return sam(p, X, Y, t, hp)\n", "sam={}:g", "has no function 'g' .*defines: f"),
        ("f = 3\n", "sam={}:f", "is not a function"),
        ("raise ImportError('no torch here')\n", "sam={}:f", "importing .* failed: ImportError: no torch here"),
        ("def f(p, X, Y, t, hp):\n    return sam(p, X, Y, t, hp)\n", "adamw={}:f", "unknown optimizer 'adamw'"),
        ("def f(p, X, Y, t, hp):\n    return sam(p, X, Y, t, hp)\n", "sam={}", "NAME=FILE.py:FUNCTION"),
        ("def f(p, X, Y, t, hp):\n    return sam(p, X, Y, t, hp)\n", "sam=missing.py:f", "no such file 'missing.py'"),
    ],
)
def test_a_user_field_is_checked_against_the_contract(tmp_path, body, spec, match):
    from balancedness.sims.plugins import load_replacement

    with pytest.raises(ValueError, match=match):
        load_replacement(spec.format(_write(tmp_path, body)))


def test_a_user_field_that_keeps_the_contract_loads(tmp_path):
    from balancedness.sims.plugins import load_replacement

    path = _write(tmp_path, "def f(p, X, Y, t, hp):\n    return sam(p, X, Y, t, hp)\n")
    name, field, label = load_replacement(f"sam={path}:f")
    assert name == "sam"
    assert label.endswith("user_field.py:f")
    with replaced_directions({name: field}):
        mine = simulate(nop_problem(), "sam", rho=0.1, alpha=1.0, steps=200, lr=1e-3, record_every=200)
    ref = simulate(nop_problem(), "sam", rho=0.1, alpha=1.0, steps=200, lr=1e-3, record_every=200)
    np.testing.assert_array_equal(mine.balancedness, ref.balancedness)
