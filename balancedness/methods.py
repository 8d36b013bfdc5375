"""The table of finetune methods: one row per method, from which everything else about a method derives.

A :class:`Method` row holds what the package says about a method: its name (``--method``), its labels in
tables and figures, its colour, its hyper-parameters (:class:`Hyper`: type, default, validation, and the
values each search preset tries), the numpy direction (``sims/directions.py``) it corresponds to, whether
it is a column of the paper's Table 1, and a line of help. The CLI's choices and help, the search spaces
(``finetune/search.py``), which options count in a run's fingerprint (``finetune/run.py``), the report's
labels and colours and the figures' styles are all read from :data:`METHODS`. How a method *trains* (its
Trainer class and keyword arguments) is the application's half: one binding per method in
``finetune/bindings.py``. A new method is one row here and one binding there (docs/architecture.md).

This module is at the bottom layer: no torch, no transformers, no numpy.

Rows are registered in the column order of the paper's Table 1 (LoRA, SAM, oBAR, nBAR), then the others.
LoRA's numpy counterpart is ``sgd``: the simulators have no Adam, and ``sgd`` is the un-perturbed step the
other methods modify. The search values of ASAM's ρ are larger than SAM's: ASAM's perturbation is
ρ·|w|²⊙g/‖|w|⊙g‖, a step relative to the weights, and its papers use ρ of 0.5 to 2 (``finetune/search.py``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from balancedness.schedules import SCHEDULES
from balancedness.validation import InvalidValue, choice, integer, number

__all__ = [
    "Hyper",
    "Method",
    "Derived",
    "METHODS",
    "SHARED",
    "SEARCH_PRESETS",
    "RHO",
    "M",
    "MU",
    "SCHEDULE",
    "SIGMA",
    "NOISE_SCHEDULE",
    "KAPPA",
    "RANK2",
    "register_method",
    "unregister_method",
    "method",
    "names",
]

#: The search presets a row gives values for (``fixed``, the command's own options, needs none). ``cpu-2024``
#: is the ``cpu`` grid before the shared learning-rate axis (LoRA lr ∈ {5e-4, 1e-3, 2e-3, 4e-3}), which the
#: committed docs/results-cpu was produced with.
SEARCH_PRESETS = ("paper", "cpu", "cpu-2024")
_TYPES = (float, int, str)


@dataclass(frozen=True)
class Hyper:
    """One hyper-parameter: ``type`` (float, int or str), ``default``, ``help``; validation: numbers are
    ≥ ``minimum`` (> with ``strict``; None: unbounded), ints ≥ ``minimum``, strings one of ``choices`` (when
    given); ``search``: ``{preset: values}`` tried by the search presets (:data:`SEARCH_PRESETS`)."""

    name: str
    type: type
    default: Any
    help: str
    minimum: float | None = 0.0
    strict: bool = False
    choices: tuple[str, ...] = ()
    search: Mapping[str, tuple[Any, ...]] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if self.type not in _TYPES:
            raise ValueError(f"hyper-parameter {self.name!r}: type must be float, int or str, got {self.type!r}")
        unknown = sorted(set(self.search) - set(SEARCH_PRESETS))
        if unknown:
            raise ValueError(
                f"hyper-parameter {self.name!r}: unknown search preset(s) {unknown}; "
                f"expected some of {', '.join(SEARCH_PRESETS)}"
            )
        object.__setattr__(self, "search", MappingProxyType({k: tuple(v) for k, v in self.search.items()}))
        self.check(self.default)

    def check(self, value: Any) -> Any:
        """``value`` validated (InvalidValue naming :attr:`name`, the bound or choices, and the value)."""
        if self.type is int:
            return integer(self.name, value, minimum=int(self.minimum or 0))
        if self.type is float:
            return number(self.name, value, minimum=self.minimum, strict=self.strict)
        if not isinstance(value, str):
            raise InvalidValue(self.name, "a string", value)
        return choice(self.name, value, self.choices) if self.choices else value

    def parse(self, text: str) -> Any:
        """``text`` (from the command line) as :attr:`type`; ValueError saying what was expected."""
        try:
            return self.type(text.strip())
        except ValueError:
            raise ValueError(
                f"{self.name} must be {'an' if self.type is int else 'a'} {self.type.__name__}, got {text!r}"
            ) from None


@dataclass(frozen=True)
class Method:
    """One method's row: ``name`` (``--method``), ``label`` (tables: "LoRA-SAM"), ``short`` (figure legends:
    "SAM"), ``colour``, its own hyper-parameters ``hyper``, the numpy ``direction`` it corresponds to (None:
    none), ``in_table`` (a column of the paper's Table 1, swept by default), ``help`` (a few words), and
    ``search``: ``{preset: {shared option: values}}`` for the options every method reads (:data:`SHARED`)."""

    name: str
    label: str
    short: str
    colour: str
    hyper: tuple[Hyper, ...] = ()
    direction: str | None = None
    in_table: bool = False
    help: str = ""
    search: Mapping[str, Mapping[str, tuple[Any, ...]]] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not self.name or self.name != self.name.strip() or any(c in self.name for c in ",:=/ "):
            raise ValueError(f"method name {self.name!r}: expected a word without spaces, commas, ':', '=' or '/'")
        names = [h.name for h in self.hyper]
        clashes = sorted({n for n in names if names.count(n) > 1} | (set(names) & {h.name for h in SHARED}))
        if clashes:
            raise ValueError(
                f"method {self.name!r}: hyper-parameter(s) {clashes} declared twice or shared by "
                f"every method ({', '.join(h.name for h in SHARED)})"
            )
        for preset, grid in self.search.items():
            unknown = sorted(set(grid) - {h.name for h in SHARED})
            if preset not in SEARCH_PRESETS or unknown:
                raise ValueError(
                    f"method {self.name!r}: search {preset!r} {dict(grid)} must name a preset of "
                    f"{', '.join(SEARCH_PRESETS)} and shared options only, not {unknown}"
                )
        frozen = {p: MappingProxyType({k: tuple(v) for k, v in g.items()}) for p, g in self.search.items()}
        object.__setattr__(self, "search", MappingProxyType(frozen))

    def hyper_named(self, name: str) -> Hyper | None:
        """The row's hyper-parameter ``name`` (None when the method does not read it)."""
        return next((h for h in self.hyper if h.name == name), None)

    def grid(self, preset: str) -> dict[str, tuple[Any, ...]]:
        """The method's grid in search preset ``preset``: the shared options first, then its own, in row order."""
        own = {h.name: h.search[preset] for h in self.hyper if preset in h.search}
        return {**self.search.get(preset, {}), **own}


#: The options every method reads (their grids are per method: ``Method.search``).
SHARED = (
    Hyper("lr", float, 1e-3, "AdamW learning rate (linear decay to 0)", strict=True),
    Hyper("weight_decay", float, 0.0, "AdamW weight decay"),
)

#: The registry, in registration order: ``{name: Method}``.
METHODS: dict[str, Method] = {}


def register_method(row: Method, *, replace: bool = False) -> Method:
    """Add ``row`` to :data:`METHODS` (ValueError when its name is taken, unless ``replace``); returns it."""
    if not isinstance(row, Method):
        raise TypeError(f"register_method takes a Method row, got {type(row).__name__}")
    if row.name in METHODS and not replace:
        raise ValueError(f"method {row.name!r} is already registered; pass replace=True to replace it")
    METHODS[row.name] = row
    return row


def unregister_method(name: str) -> Method:
    """Remove ``name`` from the registry and return its row."""
    return METHODS.pop(method(name).name)


def method(name: str) -> Method:
    """The row of ``name``; InvalidValue (a ValueError) naming it and the known methods."""
    choice("method", name, METHODS)
    return METHODS[name]


def names(*, table: bool = False) -> tuple[str, ...]:
    """The registered methods' names in registration order (``table``: only the paper's Table 1 columns)."""
    return tuple(n for n, row in METHODS.items() if row.in_table or not table)


class Derived(Mapping[str, Any]):
    """A read-only mapping recomputed from the registry at every access (so it sees methods registered later)."""

    def __init__(self, build: Callable[[], Mapping[str, Any]]) -> None:
        self._build = build

    def __getitem__(self, key: str) -> Any:
        return self._build()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._build())

    def __len__(self) -> int:
        return len(self._build())

    def __repr__(self) -> str:
        return repr(dict(self._build()))


# ------------------------------------------------------------------------------------------------ the rows
#: A row's search values: {preset: {shared option: values}}.
Search = dict[str, dict[str, tuple[float, ...]]]
_PAPER_LR = (1e-4, 3e-4, 5e-4)  # spec §4.6 / Table 6, every method
_CPU_LR = (1e-3, 2e-3)  # the shared CPU axis: 2 learning rates × 2 values of the method's own axis
RHO = Hyper(
    "rho",
    float,
    0.05,
    "SAM radius ρ",
    strict=True,
    search={"paper": (0.05, 0.1, 0.2), "cpu": (0.05, 0.1), "cpu-2024": (0.05, 0.1)},
)
M = Hyper("m", int, 4, "m-SAM: chunks per batch, each perturbed with its own gradient", minimum=1)
MU = Hyper(
    "mu", float, 0.5, "BAR coefficient μ₀", search={"paper": (0.5, 1.0, 2.0), "cpu": (2.0, 8.0), "cpu-2024": (2.0, 8.0)}
)
SCHEDULE = Hyper(
    "schedule",
    str,
    "linear",
    "μ schedule for BAR: " + " | ".join(SCHEDULES),
    choices=SCHEDULES,
    search={"paper": ("linear", "cosine")},
)
_ASAM_RHO = dataclasses.replace(RHO, search={"paper": (0.5, 1.0, 2.0), "cpu": (0.5, 1.0), "cpu-2024": (0.5, 1.0)})
# Flat-LoRA (spec flatness-methods.md §2.1): σ = 0.05 (T5, Llama) or 0.10 (its App. D), the official cosine ramp.
SIGMA = Hyper(
    "sigma",
    float,
    0.05,
    "Flat-LoRA noise scale σ (filter-wise, ramped by noise_schedule)",
    search={"paper": (0.05, 0.1), "cpu": (0.05, 0.1)},
)
NOISE_SCHEDULE = Hyper(
    "noise_schedule", str, "cosine", "Flat-LoRA noise ramp: cosine | constant", choices=("cosine", "constant")
)
# Bi-LoRA (§3.1): ρ the global clip radius of the auxiliary (its Table-A grid), r₂ = 8, κ = η₂/η₁ = 1.
_BILORA_RHO = dataclasses.replace(
    RHO,
    help="Bi-LoRA radius ρ of the auxiliary adapter (global clip)",
    search={"paper": (0.005, 0.01, 0.05, 0.1, 0.2, 0.5), "cpu": (0.05, 0.1)},
)
KAPPA = Hyper("kappa", float, 1.0, "Bi-LoRA ascent step η₂/η₁ of the auxiliary adapter", strict=True)
RANK2 = Hyper("rank2", int, 8, "Bi-LoRA rank r₂ of the auxiliary adapter", minimum=1)
_SEARCH_LR: Search = {"paper": {"lr": _PAPER_LR}, "cpu": {"lr": _CPU_LR}, "cpu-2024": {"lr": _CPU_LR}}
_NEW_SEARCH_LR: Search = {"paper": {"lr": _PAPER_LR}, "cpu": {"lr": _CPU_LR}}  # methods newer than cpu-2024
# LoRA's second CPU axis: AdamW weight decay {0, 0.01} (search.py's docstring says why).
_LORA_SEARCH: Search = {
    "paper": {"lr": _PAPER_LR},
    "cpu": {"lr": _CPU_LR, "weight_decay": (0.0, 0.01)},
    "cpu-2024": {"lr": (5e-4, 1e-3, 2e-3, 4e-3)},
}
_BAR = (MU, SCHEDULE)

for _row in (
    Method("lora", "LoRA", "LoRA (AdamW)", "#555555", (), "sgd", True, "AdamW", _LORA_SEARCH),
    Method("sam", "LoRA-SAM", "SAM", "#1f5fa8", (RHO,), "sam", True, "SAM", _SEARCH_LR),
    Method("obar", "LoRA-oBAR", "oBAR", "#b04bb0", _BAR, "obar", True, "overparametrized BAR", _SEARCH_LR),
    Method("nbar", "LoRA-nBAR", "nBAR", "#2ca02c", _BAR, "nbar", True, "non-overparametrized BAR", _SEARCH_LR),
    Method("msam", "LoRA-mSAM", "m-SAM", "#17becf", (RHO, M), "msam", False, "m-sharpness", _SEARCH_LR),
    Method("asam", "LoRA-ASAM", "ASAM", "#d95f02", (_ASAM_RHO,), "asam", False, "adaptive SAM", _SEARCH_LR),
    Method(
        "flat-lora",
        "Flat-LoRA",
        "Flat-LoRA",
        "#8c564b",
        (SIGMA, NOISE_SCHEDULE),
        "flat-lora",
        False,
        "random weight-space noise (Li et al., 2025)",
        _NEW_SEARCH_LR,
    ),
    Method(
        "bi-lora",
        "Bi-LoRA",
        "Bi-LoRA",
        "#e377c2",
        (_BILORA_RHO, KAPPA, RANK2),
        "bi-lora",
        False,
        "auxiliary adapter by gradient ascent (Liu et al., 2026)",
        _NEW_SEARCH_LR,
    ),
):
    register_method(_row)
