"""The simulator's result: named arrays plus the settings that produced them (STYLE §4)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from balancedness.io import atomic_write, write_json
from balancedness.metrics import BoolArray, FloatArray, IntArray

ARRAYS = ("t", "x", "y", "balancedness", "balancedness_layers", "grad_gap", "loss", "alpha", "seed", "rho")


@dataclass
class SimResult:
    """Trajectories of one simulator or flow run.

    Attributes (n trajectories, R records, L layers):
        t: (R,) recorded step indices (discrete) or times (flow), 0 and the end included.
        x, y: (n, R, L, d, r) the factors.
        balancedness: (n, R) signed B = Σ_l ½(‖X_l‖² − ‖Y_l‖²) (spec §1.2).
        balancedness_layers: (n, R, L) the per-layer B_l.
        grad_gap: (n, R) Σ_l ‖g_{X_l}‖² − ‖g_{Y_l}‖² of the stochastic gradient at the point.
        loss: (n, R) excess population loss k‖W − A‖² (noise floor removed).
        alpha, seed, rho: (n,) the noise level, seed and SAM radius of each trajectory.
        settings: everything that produced the run (problem, optimizer, lr, …).
    """

    t: FloatArray
    x: FloatArray
    y: FloatArray
    balancedness: FloatArray
    balancedness_layers: FloatArray
    grad_gap: FloatArray
    loss: FloatArray
    alpha: FloatArray
    seed: IntArray
    settings: dict[str, Any] = field(default_factory=dict)  # the run's settings, as JSON
    rho: FloatArray | None = None  # None: the settings' ρ for every trajectory (set by __post_init__)

    def __post_init__(self) -> None:
        if self.rho is None:
            rho = float(self.settings.get("optimizer", {}).get("rho", 0.0))
            self.rho = np.full(len(self.alpha), rho)

    @property
    def radii(self) -> FloatArray:
        """ρ per trajectory, shape (n,): ``rho``, which ``__post_init__`` always sets."""
        if self.rho is None:
            raise ValueError("SimResult.rho is unset (construct it through the dataclass)")
        return self.rho

    @property
    def n_runs(self) -> int:
        out: int = self.balancedness.shape[0]
        return out

    def select(self, alpha: float | None = None, seed: int | None = None, rho: float | None = None) -> BoolArray:
        """Boolean mask of the trajectories with this α, seed and/or ρ."""
        mask = np.ones(self.n_runs, dtype=bool)
        if rho is not None:
            mask &= np.isclose(self.radii, rho)
        if alpha is not None:
            mask &= np.isclose(self.alpha, alpha)
        if seed is not None:
            mask &= self.seed == seed
        return mask

    def subset(self, mask: BoolArray | IntArray) -> SimResult:
        """The trajectories selected by ``mask`` (boolean or indices, e.g. from :meth:`select`) as a SimResult of
        their own, with the same record times and settings."""
        rows = np.arange(self.n_runs)[mask]
        return SimResult(
            t=self.t,
            x=self.x[rows],
            y=self.y[rows],
            balancedness=self.balancedness[rows],
            balancedness_layers=self.balancedness_layers[rows],
            grad_gap=self.grad_gap[rows],
            loss=self.loss[rows],
            alpha=self.alpha[rows],
            seed=self.seed[rows],
            settings=self.settings,
            rho=self.radii[rows],
        )

    # -- (de)serialization ----------------------------------------------------------------
    def to_json_dict(self) -> dict[str, Any]:
        """``settings``, ``t`` and one object per trajectory in ``runs`` (the CLI's JSON)."""
        runs = []
        for i in range(self.n_runs):
            run = {
                "alpha": float(self.alpha[i]),
                "seed": int(self.seed[i]),
                "rho": float(self.radii[i]),
                "balancedness": self.balancedness[i].tolist(),
                "grad_gap": self.grad_gap[i].tolist(),
                "loss": self.loss[i].tolist(),
                "balancedness_layers": self.balancedness_layers[i].tolist(),
                "x": self.x[i].tolist(),
                "y": self.y[i].tolist(),
            }
            runs.append(run)
        return {"settings": self.settings, "t": self.t.tolist(), "runs": runs}

    def save(self, path: str | Path) -> Path:
        """Write JSON (``.json``) or NPZ (``.npz``), atomically."""
        path = Path(path)
        if path.suffix == ".json":
            return write_json(path, self.to_json_dict(), indent=None)
        if path.suffix == ".npz":
            arrays = {k: getattr(self, k) for k in ARRAYS}
            arrays["settings"] = np.array(json.dumps(self.settings))
            return atomic_write(path, lambda fh: np.savez_compressed(fh, **arrays), mode="wb")
        raise ValueError(f"cannot save to {str(path)!r}: expected a .json or .npz file name")

    @classmethod
    def load(cls, path: str | Path) -> SimResult:
        path = Path(path)
        if path.suffix == ".npz":
            with np.load(path) as z:
                data = {k: z[k] for k in ARRAYS}
                settings = json.loads(str(z["settings"]))
            return cls(**data, settings=settings)
        if path.suffix == ".json":
            obj = json.loads(path.read_text())
            runs = obj["runs"]

            def arr(key: str) -> FloatArray:
                out: FloatArray = np.array(
                    [[np.nan if v is None else v for v in np.ravel(r[key])] for r in runs]
                ).reshape((len(runs),) + np.shape(runs[0][key]))
                return out

            return cls(
                t=np.asarray(obj["t"], dtype=float),
                x=arr("x"),
                y=arr("y"),
                balancedness=arr("balancedness"),
                balancedness_layers=arr("balancedness_layers"),
                grad_gap=arr("grad_gap"),
                loss=arr("loss"),
                alpha=np.array([r["alpha"] for r in runs], dtype=float),
                seed=np.array([r["seed"] for r in runs], dtype=int),
                settings=obj["settings"],
                rho=np.array([r.get("rho", np.nan) for r in runs], dtype=float),
            )
        raise ValueError(f"cannot load {str(path)!r}: expected a .json or .npz file")
