"""One look for every figure: rcParams, colours, the mean-and-band helper, and atomic saving.

Every figure module draws with these helpers and saves through :func:`save_figure`, which writes
each requested image format and the data behind the figure (``<stem>.json``) atomically: to a
temporary name in the same folder, then ``os.replace`` (a reader never sees a half-written file).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from balancedness.io import atomic_write, write_json  # noqa: E402

if TYPE_CHECKING:
    from matplotlib.typing import RcKeyType
from balancedness.methods import METHODS, Derived, method  # noqa: E402

#: Image formats ``save_figure`` accepts.
FORMATS = ("png", "pdf", "svg")

#: Values of 2|B| or |gap| below this are drawn at the floor of the log axis (they reach exact 0).
LOG_FLOOR = 1e-5


def _optimizer_colors() -> dict[str, str]:
    colors: dict[str, str] = {}
    for row in METHODS.values():  # the first row of a direction gives its colour (a later variant does not)
        if row.direction:
            colors.setdefault(row.direction, row.colour)
    return {**colors, "gd": method("lora").colour, "flow": "#000000"}


#: One colour per optimizer, the same in every figure: each method's colour (``balancedness.methods``) under
#: its numpy direction's name (LoRA's is ``sgd``), plus full-batch ``gd`` (as sgd) and the ``flow``.
OPTIMIZER_COLORS = Derived(_optimizer_colors)

_ALPHA_COLORS = ("#1f77b4", "#ff7f0e", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2")

RC: dict[RcKeyType, Any] = {  # matplotlib's stubs check the names
    "figure.dpi": 110,
    "savefig.dpi": 150,
    "font.size": 9.5,
    "axes.titlesize": 10,
    "axes.labelsize": 9.5,
    "legend.fontsize": 8,
    "legend.framealpha": 0.85,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "lines.linewidth": 1.6,
    "figure.constrained_layout.use": True,
}


def apply_style() -> None:
    """Set the shared rcParams (idempotent)."""
    plt.rcParams.update(RC)


def alpha_color(alpha: float, alphas: Sequence[float]) -> str:
    """The colour of noise level ``alpha`` within the grid ``alphas`` (stable order)."""
    return _ALPHA_COLORS[list(alphas).index(alpha) % len(_ALPHA_COLORS)]


def series_color(i: int) -> str:
    """The i-th colour of the categorical palette (for m, η, … sweeps)."""
    return _ALPHA_COLORS[i % len(_ALPHA_COLORS)]


def new_figure(nrows: int, ncols: int, width: float = 9.0, height: float = 3.4, **kw) -> tuple[Any, np.ndarray]:
    """A styled figure with a 2-D array of axes."""
    apply_style()
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, height * nrows), squeeze=False, **kw)
    return fig, axes


def panel_label(ax, text: str) -> None:
    """Bold '(a)'-style label at the top-left corner, outside the axes."""
    ax.set_title(text, loc="left", fontweight="bold")


def moving_average(v: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average along the last axis (window shrinks at the ends; same length)."""
    v = np.asarray(v, dtype=float)
    if window <= 1:
        return v.copy()
    k = np.ones(window)
    num = np.apply_along_axis(lambda r: np.convolve(r, k, mode="same"), -1, v)
    den = np.convolve(np.ones(v.shape[-1]), k, mode="same")
    return num / den


def summarize(values: np.ndarray) -> dict[str, np.ndarray]:
    """Mean and min–max band over seeds (axis 0) of a (n_seeds, R) array."""
    values = np.atleast_2d(np.asarray(values, dtype=float))
    return {"mean": values.mean(0), "lo": values.min(0), "hi": values.max(0)}


def plot_band(
    ax,
    t: np.ndarray,
    summary: dict[str, np.ndarray],
    *,
    color: str,
    label: str,
    floor: float | None = None,
    ls: str = "-",
    lw: float | None = None,
    band: bool = True,
) -> None:
    """Draw the seed mean as a line and the min–max band shaded; clip at ``floor`` on log axes."""
    clip = (lambda v: np.maximum(v, floor)) if floor else (lambda v: v)
    ax.plot(t, clip(summary["mean"]), color=color, ls=ls, lw=lw, label=label)
    if band and np.any(summary["hi"] > summary["lo"]):
        ax.fill_between(t, clip(summary["lo"]), clip(summary["hi"]), color=color, alpha=0.2, lw=0)


def iteration_axis(ax, log: bool = False) -> None:
    """x axis = iteration t (linear, scientific notation) or log."""
    ax.set_xlabel("iteration t")
    if log:
        ax.set_xscale("log")
    else:
        ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 3))


def check_formats(formats: Iterable[str]) -> list[str]:
    """Validate image formats early; raises ValueError naming the bad one."""
    out = [f.strip().lower().lstrip(".") for f in formats if f.strip()]
    if not out:
        raise ValueError(f"no image format given; choose from {', '.join(FORMATS)}")
    bad = [f for f in out if f not in FORMATS]
    if bad:
        raise ValueError(f"unknown image format(s) {bad}; choose from {', '.join(FORMATS)}")
    return list(dict.fromkeys(out))


def _atomic_savefig(fig, path: Path, fmt: str) -> None:
    atomic_write(path, lambda fh: fig.savefig(fh, format=fmt), mode="wb")


def to_jsonable(obj: Any) -> Any:
    """numpy arrays/scalars → lists/floats, recursively (for the data file)."""
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    return obj


def save_figure(fig, out_dir: str | os.PathLike, stem: str, formats: Sequence[str], data: dict) -> list[Path]:
    """Write ``stem.<fmt>`` for each format and ``stem.json`` (the plotted data), all atomically.

    Returns the written paths, data file last. The figure is closed afterwards.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    try:
        for fmt in check_formats(formats):
            path = out_dir / f"{stem}.{fmt}"
            _atomic_savefig(fig, path, fmt)
            paths.append(path)
    finally:
        plt.close(fig)
    paths.append(write_json(out_dir / f"{stem}.json", to_jsonable(data), indent=None))
    return paths
