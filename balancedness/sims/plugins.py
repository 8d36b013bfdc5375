"""Bring your own optimizer: a direction function from a user's file, checked against the contract first.

``balancedness check --replace sam=path/to/my_sam.py:field`` and ``simulate`` from Python run a
user-written direction function in place of a built-in one. This module turns the text
``NAME=FILE.py:FUNCTION`` into that function, and calls it once on small instances of every toy
(NOP rank 1 and rank 2 with two layers, OP with one and two layers; noisy and noise-free; for an optimizer
that uses ρ, one radius and one radius per trajectory) to check
the contract of ``balancedness.sims.directions`` before any real work starts: four arrays shaped like
(X, Y, X, Y), finite, and X, Y left unchanged. Every error names the bad value.

Installing it is the registry's job (``directions.replaced_directions``, scoped)::

    name, field = load_replacement("sam=my_sam.py:asam")
    with replaced_directions({name: field}):
        ...
"""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path
from typing import NamedTuple

import numpy as np

from balancedness.sims.directions import DirectionFn, HyperParams, lookup
from balancedness.sims.problems import Problem, nop_problem, op_problem
from balancedness.validation import InvalidValue


class ContractError(ValueError):
    """A direction function that does not keep the contract (the message says where and how)."""


class Replacement(NamedTuple):
    """``NAME=FILE:FUNCTION`` parsed: the registered optimizer to replace, the file, the function's name."""

    name: str
    path: Path
    attr: str

    @property
    def label(self) -> str:
        return f"{self.path}:{self.attr}"


def parse_replacement(text: str) -> Replacement:
    """``"sam=path/to/file.py:field"`` → Replacement (the name must be registered, the file must exist)."""
    name, eq, target = str(text).partition("=")
    path, colon, attr = target.rpartition(":")
    if not eq or not colon or not name.strip() or not path or not attr.strip():
        raise InvalidValue("replace", "NAME=FILE.py:FUNCTION (e.g. sam=my_sam.py:field)", text)
    name = lookup(name.strip()).name
    file = Path(path).expanduser()
    if file.suffix != ".py":
        raise InvalidValue("replace", "a Python file ending in .py before ':FUNCTION'", str(file))
    if not file.is_file():
        raise ValueError(f"replace: no such file {str(file)!r} (in {text!r})")
    return Replacement(name, file, attr.strip())


_loaded = itertools.count()


def load_field(path: Path, attr: str) -> DirectionFn:
    """Import ``path`` as a fresh module and return its callable ``attr``."""
    spec = importlib.util.spec_from_file_location(f"balancedness_user_field_{next(_loaded)}", path)
    if spec is None or spec.loader is None:  # load_replacement let only .py files through
        raise ValueError(f"replace: {str(path)!r} cannot be imported as a Python file")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # the user's file: say what went wrong there, do not crash
        raise ValueError(f"replace: importing {str(path)!r} failed: {type(e).__name__}: {e}") from e
    field = getattr(module, attr, None)
    if field is None:
        found = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
        raise ValueError(f"replace: {str(path)!r} has no function {attr!r} (it defines: {', '.join(found) or 'none'})")
    if not callable(field):
        raise ValueError(f"replace: {str(path)!r}:{attr} is not a function (it is {type(field).__name__} {field!r})")
    out: DirectionFn = field
    return out


def _instances() -> list[tuple[str, Problem]]:
    return [
        ("NOP toy (11)", nop_problem()),
        ("NOP, 2 layers of rank 2", nop_problem(2, 2)),
        ("OP toy (12)", op_problem()),
        ("OP, 2 layers", op_problem(2)),
    ]


def check_contract(name: str, field: DirectionFn, n: int = 2) -> None:
    """Call ``field`` in place of optimizer ``name`` on small instances of every toy; ContractError if it
    raises, returns the wrong thing, returns non-finite values, or writes into X or Y. For an optimizer with
    perturbation draws the calls pass ``hp.xi`` (and once None, the expected direction); for one with auxiliary
    state they pass ``hp.aux`` and the field must return five values, the fifth shaped like the state."""
    entry = lookup(name)
    uses = entry.uses
    m = 2 if "m" in uses else 1
    rng = np.random.default_rng(0)
    radii = [0.1] + ([np.linspace(0.1, 0.05, n)] if "rho" in uses else [])  # a float, or one radius per trajectory
    for what, p in _instances():
        X = np.broadcast_to(p.x0, (n,) + p.x0.shape) + 0.05 * rng.standard_normal((n,) + p.x0.shape)
        Y = np.broadcast_to(p.y0, (n,) + p.y0.shape) + 0.05 * rng.standard_normal((n,) + p.y0.shape)
        noisy = p.target + rng.standard_normal((m, n) + p.noise_shape)
        xis = [None] if entry.draws is None else [rng.standard_normal((n,) + entry.draws(p)), None]
        aux = None if entry.carry is None else entry.carry.init(p, np.arange(n), _CONTRACT_SETTINGS)
        aux = None if aux is None else (aux[0], aux[1] + 0.05 * rng.standard_normal(aux[1].shape))
        for targets, rho, xi in itertools.product((noisy, None), radii, xis):
            hp = HyperParams(rho, m, 0.5, 0.25, 0.1, 0.01, 1.0, xi, aux)
            where = (
                f"{name} replacement on the {what} ({'noisy minibatch' if targets is not None else 'noise-free'}"
                f"{f', one radius per trajectory (rho of shape ({n},))' if np.ndim(rho) else ''}"
                f"{', expected over the perturbation (xi None)' if entry.draws is not None and xi is None else ''})"
            )
            X0, Y0 = X.copy(), Y.copy()
            try:
                out: object = field(p, X, Y, targets, hp)  # the user's: checked below
            except Exception as e:
                raise ContractError(f"{where} raised {type(e).__name__}: {e}") from e
            want = 4 if entry.carry is None else 5
            if not isinstance(out, (tuple, list)) or len(out) != want:
                raise ContractError(
                    f"{where} returned {type(out).__name__}"
                    f"{f' of length {len(out)}' if isinstance(out, (tuple, list)) else ''}; "
                    "expected the tuple (d_X, d_Y, g_X, g_Y" + (", d_aux)" if want == 5 else ")")
                )
            if want == 5 and aux is not None:
                d_aux = out[4]
                if not isinstance(d_aux, (tuple, list)) or [np.shape(d) for d in d_aux] != [a.shape for a in aux]:
                    raise ContractError(
                        f"{where} returned d_aux {type(d_aux).__name__}; expected arrays shaped like "
                        f"the auxiliary state {[a.shape for a in aux]}"
                    )
                if not all(np.all(np.isfinite(d)) for d in d_aux):
                    raise ContractError(f"{where} returned non-finite values in d_aux")
            for label, arr, like in zip(
                ("d_X", "d_Y", "g_X", "g_Y"), out[:4], (X, Y, X, Y), strict=True
            ):  # d_aux: above
                shape = np.shape(arr)
                if shape != like.shape:
                    raise ContractError(f"{where} returned {label} of shape {shape}; expected {like.shape}")
                if not np.all(np.isfinite(arr)):
                    raise ContractError(f"{where} returned non-finite values in {label}")
            if not (np.array_equal(X, X0) and np.array_equal(Y, Y0)):
                raise ContractError(f"{where} changed X or Y in place; the point is read only")


#: The auxiliary settings the contract check starts a state with (Bi-LoRA's defaults).
_CONTRACT_SETTINGS = {"rank2": 1, "aux_init": 0.01}


def load_replacement(text: str) -> tuple[str, DirectionFn, str]:
    """``NAME=FILE.py:FUNCTION`` → (name, the checked function, a label ``FILE.py:FUNCTION``)."""
    r = parse_replacement(text)
    field = load_field(r.path, r.attr)
    check_contract(r.name, field)
    return r.name, field, r.label
