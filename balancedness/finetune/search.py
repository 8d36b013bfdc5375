"""Per-method hyper-parameter search spaces (grids), and the paper's Table 6 as a preset.

Every value below is read from the method table (``balancedness/methods.py``): a row's ``search`` gives the
shared options' values (``lr``) per preset, each of its ``Hyper``'s ``search`` its own; what a grid may vary,
and for which methods, is what the rows declare. A :class:`SearchSpace` maps each method to a grid ``{option: values}``;
a method's configurations are the Cartesian product in the order the options and values are given (that order also
breaks ties in :func:`~balancedness.finetune.select.select_runs`). Options a method does not read cannot be searched for
it (ρ only for SAM/m-SAM/ASAM/Bi-LoRA, σ only for Flat-LoRA, μ₀ and the μ schedule only for BAR, a plugin method's own
hyper-parameters only for it); ``lr`` and ``weight_decay`` apply to all.

Presets (``balancedness sweep --space NAME``):

* ``fixed``: one configuration per method, the command's own options (no search);
* ``paper``: the paper's few-shot grid (spec §4.6, Table 6): lr ∈ {1e-4, 3e-4, 5e-4} for every method,
  ρ ∈ {0.05, 0.1, 0.2} for SAM, μ₀ ∈ {0.5, 1, 2} × schedule ∈ {linear, cosine} for BAR. The learning rates
  are the spec's reading of Table 6 (the rendered PDF is hard to read there; we take 1e-4, 3e-4, 5e-4);
* ``cpu``: **4 configurations for every method on one shared learning-rate axis**, lr ∈ {1e-3, 2e-3} × two
  values of the method's own hyper-parameter, so no method is favoured by a larger search or by learning
  rates the others never see: SAM/m-SAM ρ ∈ {0.05, 0.1}; nBAR/oBAR μ₀ ∈ {2, 8} (linear μ schedule); ASAM
  ρ ∈ {0.5, 1}; Flat-LoRA σ ∈ {0.05, 0.1}; Bi-LoRA ρ ∈ {0.05, 0.1}. LoRA has no hyper-parameter of its own,
  so its second axis is AdamW's weight decay ∈ {0, 0.01}: the only knob it has besides lr, and nearly
  neutral for balancedness at this size (decoupled decay multiplies B_l by (1 − lr·λ)^{2t}, a 0.16% shrink
  over 40 steps at lr 2e-3; weight decay does balance by itself, spec flatness-methods §1, so a larger λ
  would confound the comparison), and better than repeating a configuration (a repeat is the same run, same fingerprint,
  and would leave LoRA 2 configurations). Before this axis was shared, LoRA searched lr ∈ {5e-4, 1e-3, 2e-3, 4e-3} while
  the others spent their four on ρ/μ₀, which confounded the committed CPU result on TREC (LoRA alone reached lr 4e-3);
* ``cpu-2024``: that earlier ``cpu`` grid, kept so that the committed docs/results-cpu stays reproducible
  (LoRA lr ∈ {5e-4, 1e-3, 2e-3, 4e-3}; the others as in ``cpu``; Flat-LoRA and Bi-LoRA, newer than it, have
  no grid there and run one configuration).

ASAM (adaptive SAM, ``--method asam``; not in the paper) takes the learning rates of SAM and its own radii:
ρ ∈ {0.5, 1, 2} (``paper``) and ρ ∈ {0.5, 1} (``cpu``, 4 configurations like the others). Its perturbation
ρ·|w|²⊙g/‖|w|⊙g‖ is relative to the weights, so its radius is not comparable with SAM's: ASAM's authors
(Kwon et al., 2021) use ρ from 0.5 to 2 where SAM uses 0.05, which is the range searched here. (LoRA's B
starts at 0, so ASAM perturbs only A at the first step.)

Flat-LoRA (``--method flat-lora``, spec flatness-methods.md §2) in ``paper``: σ ∈ {0.05, 0.1}, the two values
its App. D recommends (its runs use 0.05 for T5 and Llama-2, 0.15 for CLIP; it publishes no grid), with the
official cosine ramp (``--hparam noise_schedule=constant`` for none). Bi-LoRA (``--method bi-lora``, §3) in
``paper``: its own ρ grid {0.005, 0.01, 0.05, 0.1, 0.2, 0.5} (the radius of the auxiliary adapter, ``--rho``),
with r₂ = 8 and η₂ = η₁ (``--hparam rank2=…``, ``--hparam kappa=…``).

``--grid METHOD:OPTION=V1,V2`` adds or replaces one axis (``all:lr=...`` for every method).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from balancedness.methods import METHODS as ROWS
from balancedness.methods import SEARCH_PRESETS, SHARED, Derived, Hyper

__all__ = ["SearchSpace", "PRESETS", "SEARCHABLE", "parse_grid", "make_space"]


def _hypers() -> dict[str, Hyper]:
    """Every option a grid may vary: the shared ones, then each row's own (the first row's definition)."""
    out = {h.name: h for h in SHARED}
    for row in ROWS.values():
        for hyper in row.hyper:
            out.setdefault(hyper.name, hyper)
    return out


def _searchable() -> dict[str, tuple[str, ...] | None]:
    shared = {h.name for h in SHARED}
    return {
        name: None if name in shared else tuple(n for n, row in ROWS.items() if row.hyper_named(name))
        for name in _hypers()
    }


#: Options a grid may vary, and the methods that read each one (None: every method); from the rows.
SEARCHABLE: Mapping[str, tuple[str, ...] | None] = Derived(_searchable)
_CASTS: Mapping[str, type] = Derived(lambda: {name: h.type for name, h in _hypers().items()})


@dataclass(frozen=True)
class SearchSpace:
    """``grids[method][option] = values``; methods without a grid run one configuration."""

    name: str = "fixed"
    grids: Mapping[str, Mapping[str, tuple[Any, ...]]] = field(default_factory=dict)

    def points(self, method: str) -> list[dict[str, Any]]:
        """The configurations of ``method``: ``[{option: value}]``, in grid order (``[{}]`` without a grid)."""
        grid = self.grids.get(method, {})
        names = list(grid)
        return [dict(zip(names, values, strict=True)) for values in itertools.product(*(grid[n] for n in names))]

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


def _presets() -> dict[str, SearchSpace]:
    grids = {p: {n: row.grid(p) for n, row in ROWS.items() if row.grid(p)} for p in SEARCH_PRESETS}
    return {"fixed": SearchSpace("fixed"), **{p: SearchSpace(p, g) for p, g in grids.items()}}


#: ``{name: SearchSpace}``: ``fixed`` and the rows' presets (:data:`balancedness.methods.SEARCH_PRESETS`).
PRESETS: Mapping[str, SearchSpace] = Derived(_presets)


def parse_grid(text: str) -> tuple[str, str, tuple[Any, ...]]:
    """``"sam:rho=0.05,0.1"`` → ``("sam", "rho", (0.05, 0.1))``; ``all:`` applies to every method."""
    head, sep, values = text.partition("=")
    method, colon, option = head.partition(":")
    if not (sep and colon and values.strip()):
        raise ValueError(f"grid {text!r}: expected METHOD:OPTION=V1,V2 (e.g. sam:rho=0.05,0.1 or all:lr=1e-3,2e-3)")
    option = option.strip()
    hypers = _hypers()
    if option not in hypers:
        raise ValueError(f"grid {text!r}: option {option!r} cannot be searched; searchable: {', '.join(hypers)}")
    try:
        cast = tuple(hypers[option].parse(v) for v in values.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"grid {text!r}: the values of {option} must be {hypers[option].type.__name__}s") from None
    return method.strip(), option, cast


def make_space(preset: str, grids: Iterable[str], methods: Sequence[str]) -> SearchSpace:
    """The preset ``preset`` with the ``METHOD:OPTION=...`` axes added; ValueError naming a bad axis."""
    grids = list(grids)
    if preset not in PRESETS:
        raise ValueError(f"unknown search space {preset!r}; presets: {', '.join(PRESETS)}")
    table = {m: dict(PRESETS[preset].grids.get(m, {})) for m in methods}
    searchable = _searchable()
    for text in grids:
        method, option, values = parse_grid(text)
        targets = list(methods) if method == "all" else [method]
        for target in targets:
            if target not in methods:
                raise ValueError(f"grid {text!r}: method {target!r} is not among the swept methods {list(methods)}")
            readers = searchable[option]
            if readers is not None and target not in readers:
                if method == "all":
                    continue
                raise ValueError(f"grid {text!r}: method {target!r} does not read {option} (only {', '.join(readers)})")
            table[target][option] = values
    name = preset if not grids else f"{preset} + " + " + ".join(grids)
    return SearchSpace(name, {m: g for m, g in table.items() if g})
