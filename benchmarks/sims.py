"""Paper-scale Fig. 1 workload: the vectorized simulator vs a plain per-trajectory numpy loop.

Workload: η = 1e-4, T = 1e5 steps; NOP (ρ = 0.1) and OP (ρ = 0.2); SGD and SAM; 4 noise levels;
320 trajectories (2 problems × 2 optimizers × 4 α × 20 seeds; with 10 seeds it is 160). The plain loop is timed on a few trajectories for a few thousand
steps (its cost is linear in both) and scaled; both are measured in this one run.

    python benchmarks/sims.py            # full workload
    python benchmarks/sims.py --quick    # 1e4 steps
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from balancedness.sims import nop_problem, op_problem, simulate

ALPHAS = [0.0, 0.5, 1.0, 2.0]


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1e4 steps instead of 1e5")
    ap.add_argument("--seeds", type=int, default=20,
                    help="seeds per (problem, optimizer, alpha); 20 gives the issue's 320 trajectories")
    ap.add_argument("--loop-steps", type=int, default=3000, help="steps per timed plain-loop trajectory")
    args = ap.parse_args()
    steps = 10_000 if args.quick else 100_000
    configs = [("nop", "sgd", 0.1), ("nop", "sam", 0.1), ("op", "sgd", 0.2), ("op", "sam", 0.2)]
    n_traj = len(configs) * len(ALPHAS) * args.seeds

    # SGD is SAM with rho = 0 (the perturbation is exactly zero), so one vectorized run per
    # problem holds both optimizers: the rho grid [0, rho] x alphas x seeds.
    sim_seconds = 0.0
    finals = {}
    for kind, rho in (("nop", 0.1), ("op", 0.2)):
        p = nop_problem() if kind == "nop" else op_problem()
        t0 = time.perf_counter()
        res = simulate(p, "sam", rho=[0.0, rho], alpha=ALPHAS, seeds=args.seeds, lr=1e-4, steps=steps,
                       record_every=100)
        sim_seconds += time.perf_counter() - t0
        for opt, r in (("sgd", 0.0), ("sam", rho)):
            B = res.balancedness[res.select(rho=r), -1]
            finals[(kind, opt)] = 2 * np.abs(B).reshape(len(ALPHAS), -1).mean(1)

    # the plain loop: 2 trajectories per config (alpha 0.5 and 1), scaled to the workload
    loop_seconds, loop_steps = 0.0, 0
    for kind, opt, rho in configs:
        for alpha in (0.5, 1.0):
            t0 = time.perf_counter()
            plain_loop(kind, opt, args.loop_steps, alpha, 0, rho)
            loop_seconds += time.perf_counter() - t0
            loop_steps += args.loop_steps
    per_step = loop_seconds / loop_steps
    loop_total = per_step * n_traj * steps

    print(f"workload: {n_traj} trajectories x {steps} steps (eta = 1e-4; NOP rho 0.1, OP rho 0.2; SGD, SAM; "
          f"alpha {ALPHAS}; {args.seeds} seeds)")
    print(f"plain per-trajectory loop: {1e6 * per_step:.1f} us per step per trajectory "
          f"-> {loop_total:.1f} s for the workload (measured on {loop_steps} steps, scaled)")
    print(f"vectorized simulator:      {sim_seconds:.2f} s "
          f"({1e6 * sim_seconds / (n_traj * steps):.2f} us per step per trajectory)")
    print(f"speed ratio: {loop_total / sim_seconds:.1f}x (target >= 20x, aim 50x)")
    print("mean 2|B_T| per alpha " + str(ALPHAS) + ":")
    for key, v in finals.items():
        print(f"  {key[0]:3s} {key[1]:3s}: " + " ".join(f"{x:.3f}" for x in v))


if __name__ == "__main__":
    main()
