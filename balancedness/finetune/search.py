"""Per-method hyper-parameter search spaces (grids), and the paper's Table 6 as a preset.

A :class:`SearchSpace` maps each method to a grid ``{option: values}``; a method's configurations are the
Cartesian product in the order the options and values are given (that order also breaks ties in
:func:`~balancedness.finetune.select.select_runs`). Options a method does not read cannot be searched for it
(ρ only for SAM/m-SAM, μ₀ and the μ schedule only for BAR); ``lr`` and ``weight_decay`` apply to all.

Presets (``balancedness sweep --space NAME``):

* ``fixed``: one configuration per method, the command's own options (no search);
* ``paper``: the paper's few-shot grid (spec §4.6, Table 6): lr ∈ {1e-4, 3e-4, 5e-4} for every method,
  ρ ∈ {0.05, 0.1, 0.2} for SAM, μ₀ ∈ {0.5, 1, 2} × schedule ∈ {linear, cosine} for BAR. The learning rates
  are the spec's reading of Table 6 (the rendered PDF is hard to read there; we take 1e-4, 3e-4, 5e-4);
* ``cpu``: the grid of our committed CPU result (docs/results.md): every method gets the **same number of
  configurations (4)**, so none is favoured by a larger search: LoRA lr ∈ {5e-4, 1e-3, 2e-3, 4e-3}; SAM
  lr ∈ {1e-3, 2e-3} × ρ ∈ {0.05, 0.1}; nBAR/oBAR lr ∈ {1e-3, 2e-3} × μ₀ ∈ {2, 8} (linear μ schedule).

``--grid METHOD:OPTION=V1,V2`` adds or replaces one axis (``all:lr=...`` for every method).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

__all__ = ["SearchSpace", "PRESETS", "SEARCHABLE", "parse_grid", "make_space"]

#: Options a grid may vary, and the methods that read each one (None: every method).
SEARCHABLE: dict[str, tuple[str, ...] | None] = {
    "lr": None, "weight_decay": None, "rho": ("sam", "msam"), "m": ("msam",), "mu": ("nbar", "obar"),
    "schedule": ("nbar", "obar"),
}
_CASTS = {"lr": float, "weight_decay": float, "rho": float, "m": int, "mu": float, "schedule": str}


@dataclass(frozen=True)
class SearchSpace:
    """``grids[method][option] = values``; methods without a grid run one configuration."""

    name: str = "fixed"
    grids: Mapping[str, Mapping[str, tuple[Any, ...]]] = field(default_factory=dict)

    def points(self, method: str) -> list[dict[str, Any]]:
        """The configurations of ``method``: ``[{option: value}]``, in grid order (``[{}]`` without a grid)."""
        grid = self.grids.get(method, {})
        names = list(grid)
        return [dict(zip(names, values)) for values in itertools.product(*(grid[n] for n in names))]

    def searched(self, method: str | None = None) -> set[str]:
        """Every option ``method``'s grid varies (with more than one value); without ``method``, any grid's."""
        grids = self.grids.values() if method is None else [self.grids.get(method, {})]
        return {o for grid in grids for o, values in grid.items() if len(values) > 1}

    def describe(self, methods: Sequence[str]) -> str:
        parts = []
        for method in methods:
            grid = self.grids.get(method, {})
            axes = " × ".join(f"{o} ∈ {{{', '.join(map(str, v))}}}" for o, v in grid.items()) or "no search"
            parts.append(f"{method}: {axes} ({len(self.points(method))})")
        return f"search space `{self.name}`: " + "; ".join(parts)


def _grid(**axes: Sequence[Any]) -> dict[str, tuple[Any, ...]]:
    return {k: tuple(v) for k, v in axes.items()}


_PAPER_LR = (1e-4, 3e-4, 5e-4)
PRESETS: dict[str, SearchSpace] = {
    "fixed": SearchSpace("fixed"),
    "paper": SearchSpace("paper", {
        "lora": _grid(lr=_PAPER_LR),
        "sam": _grid(lr=_PAPER_LR, rho=(0.05, 0.1, 0.2)),
        "msam": _grid(lr=_PAPER_LR, rho=(0.05, 0.1, 0.2)),
        "nbar": _grid(lr=_PAPER_LR, mu=(0.5, 1.0, 2.0), schedule=("linear", "cosine")),
        "obar": _grid(lr=_PAPER_LR, mu=(0.5, 1.0, 2.0), schedule=("linear", "cosine")),
    }),
    "cpu": SearchSpace("cpu", {
        "lora": _grid(lr=(5e-4, 1e-3, 2e-3, 4e-3)),
        "sam": _grid(lr=(1e-3, 2e-3), rho=(0.05, 0.1)),
        "msam": _grid(lr=(1e-3, 2e-3), rho=(0.05, 0.1)),
        "nbar": _grid(lr=(1e-3, 2e-3), mu=(2.0, 8.0)),
        "obar": _grid(lr=(1e-3, 2e-3), mu=(2.0, 8.0)),
    }),
}


def parse_grid(text: str) -> tuple[str, str, tuple[Any, ...]]:
    """``"sam:rho=0.05,0.1"`` → ``("sam", "rho", (0.05, 0.1))``; ``all:`` applies to every method."""
    head, sep, values = text.partition("=")
    method, colon, option = head.partition(":")
    if not (sep and colon and values.strip()):
        raise ValueError(f"grid {text!r}: expected METHOD:OPTION=V1,V2 (e.g. sam:rho=0.05,0.1 or all:lr=1e-3,2e-3)")
    option = option.strip()
    if option not in SEARCHABLE:
        raise ValueError(f"grid {text!r}: option {option!r} cannot be searched; searchable: {', '.join(SEARCHABLE)}")
    try:
        cast = tuple(_CASTS[option](v.strip()) for v in values.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"grid {text!r}: the values of {option} must be {_CASTS[option].__name__}s") from None
    return method.strip(), option, cast


def make_space(preset: str, grids: Iterable[str], methods: Sequence[str]) -> SearchSpace:
    """The preset ``preset`` with the ``METHOD:OPTION=...`` axes added; ValueError naming a bad axis."""
    grids = list(grids)
    if preset not in PRESETS:
        raise ValueError(f"unknown search space {preset!r}; presets: {', '.join(PRESETS)}")
    table = {m: dict(PRESETS[preset].grids.get(m, {})) for m in methods}
    for text in grids:
        method, option, values = parse_grid(text)
        targets = list(methods) if method == "all" else [method]
        for target in targets:
            if target not in methods:
                raise ValueError(f"grid {text!r}: method {target!r} is not among the swept methods {list(methods)}")
            readers = SEARCHABLE[option]
            if readers is not None and target not in readers:
                if method == "all":
                    continue
                raise ValueError(f"grid {text!r}: method {target!r} does not read {option} (only {', '.join(readers)})")
            table[target][option] = values
    name = preset if not grids else f"{preset} + " + " + ".join(grids)
    return SearchSpace(name, {m: g for m, g in table.items() if g})
