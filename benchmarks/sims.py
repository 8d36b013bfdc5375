"""The simulator in both regimes of issue 23, as ratios to a plain per-trajectory numpy loop, in one run.

* many: 320 trajectories x 1e4 steps: NOP (rho 0.1) and OP (rho 0.2), SGD and SAM (one run per problem on
  the rho grid [0, rho]: rho = 0 is exactly SGD), alpha 0, 0.5, 1, 2, 20 seeds.
* few: the paper's runs, 6 trajectories x 1e5 steps: SAM at alpha 0.5, 1, 2 x 2 seeds, NOP and OP.

Every repetition times, in turn, the simulator with each backend (``numba`` when installed, ``numpy``) and
the plain loop, so the machine's load hits all alike; the tables show medians over ``--repeats``. The plain
loop and the numpy backend are timed on fewer steps and scaled (their cost is linear in the steps); the
compiled backend runs the whole workload. The first compiled run (numba's compile, or its on-disk cache) is
timed apart. Both backends' records are compared on the same run: bit-identical on these rank-1 toys.

    python benchmarks/sims.py            # 5 repetitions
    python benchmarks/sims.py --quick    # 2 repetitions, 1/10 of the steps
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import numpy as np

from balancedness.sims import compiled, nop_problem, op_problem, simulate

ALPHAS = [0.0, 0.5, 1.0, 2.0]
RHO = {"nop": 0.1, "op": 0.2}


def plain_loop(kind: str, opt: str, steps: int, alpha: float, seed: int, rho: float) -> float:
    """One trajectory, one step at a time, straight from eqs. (4)/(7); returns the final B."""
    x = np.array([0.2, -0.1, 0.3])
    y = -3 * x
    A = np.diag([0.5, 0.0, 0.0])
    D = np.array([1.0, 0.8, 0.5])[:, None]
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        if kind == "nop":
            N = D * rng.standard_normal((3, 3))
            G = 2 * (np.outer(x, y) - A - alpha * N)
            gx, gy = G @ y, G.T @ x
            if opt == "sam":
                u = rho / np.sqrt(gx @ gx + gy @ gy)
                xt, yt = x + u * gx, y + u * gy
                Gt = 2 * (np.outer(xt, yt) - A - alpha * N)
                gx, gy = Gt @ yt, Gt.T @ xt
        else:
            n = rng.standard_normal()
            f = 2 * (x @ y - 0.5 - alpha * n)
            gx, gy = f * y, f * x
            if opt == "sam":
                u = rho / np.sqrt(gx @ gx + gy @ gy)
                xt, yt = x + u * gx, y + u * gy
                ft = 2 * (xt @ yt - 0.5 - alpha * n)
                gx, gy = ft * yt, ft * xt
        x, y = x - 1e-4 * gx, y - 1e-4 * gy
    return 0.5 * (x @ x - y @ y)


@dataclass(frozen=True)
class Regime:
    """One simulate call per problem: the rho grid x alphas x seeds, for ``steps`` steps."""

    name: str
    rhos: dict[str, list[float]]
    alphas: list[float]
    seeds: int
    steps: int

    @property
    def trajectories(self) -> int:
        return sum(len(r) for r in self.rhos.values()) * len(self.alphas) * self.seeds

    def loop_configs(self) -> list[tuple[str, str, float]]:
        """(problem, optimizer, rho) of the plain loop, one per rho of each problem (rho 0: SGD)."""
        return [(k, "sam" if r else "sgd", r) for k, rs in self.rhos.items() for r in rs]

    def run(self, backend: str, steps: int) -> list:
        return [
            simulate(
                nop_problem() if k == "nop" else op_problem(),
                "sam",
                rho=rs,
                alpha=self.alphas,
                seeds=self.seeds,
                lr=1e-4,
                steps=steps,
                record_every=100,
                backend=backend,
            )
            for k, rs in self.rhos.items()
        ]


def timed(fn, *args) -> tuple[float, object]:
    """Seconds of ``fn(*args)``, and its result."""
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def loop_seconds(regime: Regime, loop_steps: int) -> float:
    """The plain loop's time for the regime's whole workload, from ``loop_steps`` steps per config (α = 1)."""
    per_traj = len(regime.alphas) * regime.seeds
    total = 0.0
    for kind, opt, rho in regime.loop_configs():
        s, _ = timed(plain_loop, kind, opt, loop_steps, 1.0, 0, rho)
        total += s / loop_steps * per_traj * regime.steps
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1/10 of the steps, 2 repetitions")
    ap.add_argument(
        "--seeds", type=int, default=20, help="seeds per (problem, rho, alpha) of the many regime (20: 320)"
    )
    ap.add_argument("--loop-steps", type=int, default=2000, help="steps per timed plain-loop trajectory")
    ap.add_argument("--numpy-steps", type=int, default=2000, help="steps of the timed numpy-backend runs")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved repetitions (default 5; 2 with --quick)")
    args = ap.parse_args()
    scale = 10 if args.quick else 1
    repeats = args.repeats or (2 if args.quick else 5)
    regimes = [
        Regime("many", {k: [0.0, r] for k, r in RHO.items()}, ALPHAS, args.seeds, 10_000 // scale),
        Regime("few", {k: [r] for k, r in RHO.items()}, [0.5, 1.0, 2.0], 2, 100_000 // scale),
    ]
    backends = (["numba"] if compiled.available() else []) + ["numpy"]

    warm = None
    if "numba" in backends:  # numba compiles (or loads its cache) on the first call
        warm, _ = timed(lambda: simulate(nop_problem(), "sgd", steps=10, backend="numba"))
    times: dict[tuple[str, str], list[float]] = {}
    identical = {}
    for rep in range(repeats):
        for reg in regimes:
            for b in backends:
                steps = reg.steps if b == "numba" else min(reg.steps, args.numpy_steps)
                s, res = timed(reg.run, b, steps)
                times.setdefault((reg.name, b), []).append(s * reg.steps / steps)
                if rep == 0 and b == "numpy" and "numba" in backends:
                    same = reg.run("numba", steps)
                    identical[reg.name] = all(
                        np.array_equal(a.x, c.x) and np.array_equal(a.grad_gap, c.grad_gap)
                        for a, c in zip(res, same, strict=True)
                    )
            times.setdefault((reg.name, "loop"), []).append(loop_seconds(reg, args.loop_steps))

    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"{repeats} interleaved repetitions, medians; plain loop timed on {args.loop_steps} steps per config, "
        f"numpy backend on {args.numpy_steps} steps, both scaled to the workload"
        + (
            f"; numba's first call (compile or cache load) {warm:.2f} s, not counted"
            if warm is not None
            else "; numba not installed: numpy backend only"
        )
    )
    print(
        f"{'regime (runs x trajectories x steps)':36s} {'backend':8s} {'seconds':>9s} "
        f"{'us/step/traj':>13s} {'x plain loop':>13s}"
    )
    for reg in regimes:
        runs = len(reg.rhos)
        label = f"{reg.name}: {runs} x {reg.trajectories // runs} traj x {reg.steps:g}"
        loop = med[(reg.name, "loop")]
        for b in backends + ["loop"]:
            s = med[(reg.name, b)]
            print(f"{label:36s} {b:8s} {s:9.2f} {1e6 * s / (reg.trajectories * reg.steps):13.3f} {loop / s:12.1f}x")
            label = ""
    if identical:
        print(
            "records of the numba and numpy backends on the same runs: "
            + ", ".join(f"{k} {'bit-identical' if v else 'DIFFERENT'}" for k, v in identical.items())
        )
    print("targets (issue 23): >= 100x in the many regime, >= 20x in the few regime")


if __name__ == "__main__":
    main()
