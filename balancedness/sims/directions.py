"""The paper's optimizers as direction functions d(z), and the registry that names them (STYLE §3).

One function per optimizer, written once. The discrete simulator steps z⁺ = z + η·d(z) and the
limiting flow solves ż = d(z), so "discrete" and "ODE" cannot disagree about what an optimizer is.

=======  =============================================================  ===================
name     d(z), g = ∇f_t(z) the stochastic gradient of the whole batch   spec
=======  =============================================================  ===================
sgd      −g                                                              (2)
sngd     −g / ‖g‖                                                        (15)
sam      −∇f_t(z + ρ g/‖g‖)  (global ‖g‖ over all layers)                (4), (7), (22), (41)
msam     −(1/m) Σ_i ∇f_{t,i}(z + ρ g_i/‖g_i‖), g_i of chunk i            (38)
nbar     −g + s μ_t (X, −Y),  s_l = +1 if ‖g_{X_l}‖ ≥ ‖g_{Y_l}‖ else −1   Alg. 2, SGD base
obar     −g + s μ_t (X, −Y),  s_l = −1 if ‖X_l‖ ≥ ‖Y_l‖ else +1           Alg. 3, SGD base
=======  =============================================================  ===================

With step η, nBAR/oBAR give X⁺ = (1 ± μη)X − ηg with g taken at the unscaled point, which is
exactly Alg. 2/3 followed by an SGD step (spec §4.5.1). A zero gradient gives no perturbation
(ε = 0) and no normalized step, never NaN.

The contract of a direction function
------------------------------------
::

    def field(problem: Problem, X, Y, targets, hp: HyperParams) -> (d_X, d_Y, g_X, g_Y)

* ``problem``: the :class:`~balancedness.sims.problems.Problem`; ``problem.grads_at(X, Y, C)`` is the
  gradient (g_X, g_Y) of the loss k‖W − C‖² (OP: k(w − C)²) for an effective target C.
* ``X`` (n, L, d1, r), ``Y`` (n, L, d2, r): the point z of n trajectories (read only).
* ``targets``: the effective targets C_i = A + α N̄_i of the step's m minibatch chunks, shape
  (m, n, *noise_shape) (OP: (m, n)); ``None`` for the noise-free loss (C = A). :func:`batch_target`
  gives the whole batch's target (the mean over the equal chunks).
* ``hp``: :class:`HyperParams` ``(rho, m, mu, progress)``: ρ (a float, or one radius per trajectory,
  shape (n,)), the chunk count m, the BAR coefficient μ_t already scheduled, and t/T ∈ [0, 1].
* returns (d_X, d_Y, g_X, g_Y): the direction d(z) and the whole-batch stochastic gradient at z (the
  simulator records ‖g_X‖² − ‖g_Y‖² from it), arrays shaped like X, Y, X, Y.

Registering one
---------------
:data:`DIRECTIONS` maps a name to a :class:`Direction` (the function, the hyper-parameters it uses,
and optionally where it is discontinuous). A new optimizer is one function and one line::

    @register_direction("sam-half", uses={"rho"})
    def sam_half(problem, X, Y, targets, hp):
        return sam(problem, X, Y, targets, hp._replace(rho=hp.rho / 2))

after which ``simulate(problem, "sam-half", rho=0.2)``, ``solve_flow`` and ``theory.dB_dt`` run it.
``unregister_direction`` removes it; ``register_direction(name, ..., replace=True)`` puts a user's
function in place of a built-in one for good. To put one in place *for a while* (to check a variant, or
a mutant in a test), use the scoped form, which keeps the built-in's ``uses`` and ``switching`` and
restores the built-in afterwards, even on error::

    with replaced_directions({"sam": my_sam}):
        simulate(nop_problem(), "sam", rho=0.1)      # runs my_sam
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Callable, Iterable, Iterator, Mapping, NamedTuple, Optional, Protocol, Union

import numpy as np

from balancedness.metrics import global_norm, layer_sq_norms
from balancedness.sims.problems import Problem
from balancedness.validation import InvalidValue, choice

Field = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]

#: The hyper-parameters an optimizer may use (μ comes with its schedule).
HYPER_PARAMETERS = ("rho", "m", "mu")


class HyperParams(NamedTuple):
    """What a direction function is told besides the point: ρ, m, μ_t and the progress t/T."""

    rho: Union[float, np.ndarray]
    m: int
    mu: float
    progress: float


class DirectionFn(Protocol):
    def __call__(self, problem: Problem, X: np.ndarray, Y: np.ndarray, targets: Optional[np.ndarray],
                 hp: HyperParams) -> Field: ...


#: Signature of a switching function: same arguments as a direction, returns (n, k) or None.
SwitchingFn = Callable[[Problem, np.ndarray, np.ndarray, Optional[np.ndarray], HyperParams], Optional[np.ndarray]]


@dataclass(frozen=True)
class Direction:
    """A registered optimizer.

    Attributes:
        name: its name in :data:`DIRECTIONS` (and ``Optimizer.name``).
        field: the direction function (see the module docstring for the contract).
        uses: the hyper-parameters it reads, a subset of ``HYPER_PARAMETERS``; ``make_optimizer`` sets the
            others to their neutral values (ρ = 0, m = 1, μ = 0), and only an optimizer using m may have m ≠ 1.
        switching: functions whose sign changes are the field's discontinuities (counted by the flow
            solver), or None for a field continuous away from g = 0.
    """

    name: str
    field: DirectionFn
    uses: frozenset = frozenset()
    switching: Optional[SwitchingFn] = None


#: The registry: optimizer name → :class:`Direction`, in registration order.
DIRECTIONS: dict[str, Direction] = {}


def register_direction(name: str, *, uses: Iterable[str] = (), switching: Optional[SwitchingFn] = None,
                       replace: bool = False) -> Callable[[DirectionFn], DirectionFn]:
    """Decorator: register ``field`` as the optimizer ``name`` (``replace=True`` to override one)."""
    used = frozenset(choice("uses", u, HYPER_PARAMETERS) for u in uses)
    if name in DIRECTIONS and not replace:
        raise ValueError(f"optimizer {name!r} is already registered; pass replace=True to override it")

    def add(field: DirectionFn) -> DirectionFn:
        DIRECTIONS[name] = Direction(name, field, used, switching)
        return field

    return add


def unregister_direction(name: str) -> Direction:
    """Remove ``name`` from the registry and return its entry (to put it back: ``DIRECTIONS[name] = entry``)."""
    return DIRECTIONS.pop(lookup(name).name)


@contextmanager
def replaced_directions(fields: Mapping[str, DirectionFn]) -> Iterator[dict[str, Direction]]:
    """Run registered optimizers with other direction functions for the duration of a ``with`` block.

    ``fields`` maps a registered name to the function that replaces its field (the entry keeps its
    ``uses`` and ``switching``). Every name and function is checked before anything is installed; on
    leaving the block (normally or by an exception) the entries that were there are put back exactly.
    Yields the installed entries by name.
    """
    installed = {}
    for name, field in fields.items():
        entry = lookup(name)
        if not callable(field):
            raise InvalidValue(f"the replacement of {name}", "a callable direction function", field)
        installed[name] = replace(entry, field=field)
    saved = {name: DIRECTIONS[name] for name in installed}
    DIRECTIONS.update(installed)
    try:
        yield installed
    finally:
        DIRECTIONS.update(saved)


@dataclass(frozen=True)
class Observed:
    """``field`` with ``note()`` called first on every call: a watcher (e.g. which optimizers a check ran)
    that leaves the field's math alone. Make one with :func:`observed`.

    Because the math is ``field``'s, the simulator may step the built-in an observed field wraps with its
    compiled kernel (``sims.compiled``); it then calls ``note()`` once per stretch of steps, not per step.
    """

    field: DirectionFn
    note: Callable[[], None]

    def __call__(self, problem: Problem, X, Y, targets, hp: HyperParams) -> Field:
        self.note()
        return self.field(problem, X, Y, targets, hp)


def observed(field: DirectionFn, note: Callable[[], None]) -> Observed:
    """``field``, calling ``note()`` before every call (see :class:`Observed`)."""
    if not callable(field) or not callable(note):
        raise InvalidValue("observed", "a callable direction function and a callable note", (field, note))
    return Observed(field, note)


def lookup(name: str) -> Direction:
    """The registered optimizer ``name``."""
    entry = DIRECTIONS.get(name) if isinstance(name, str) else None
    if entry is None:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {', '.join(DIRECTIONS)}")
    return entry


# -- helpers of the contract ---------------------------------------------------------------
def batch_target(problem: Problem, targets: Optional[np.ndarray]) -> np.ndarray:
    """The effective target of the whole batch: the mean of the m chunk targets (A when noise-free)."""
    if targets is None:
        return problem.target
    return targets[0] if len(targets) == 1 else targets.mean(axis=0)


def _safe_scale(num, nrm: np.ndarray) -> np.ndarray:
    """num/‖g‖ where ‖g‖ > 0, else 0 (no perturbation at a zero gradient, never NaN)."""
    return (num / np.where(nrm > 0, nrm, np.inf))[:, None, None, None]


def sam_perturbation(problem: Problem, X: np.ndarray, Y: np.ndarray, C: np.ndarray, rho) -> tuple[np.ndarray, ...]:
    """(X̃, Ỹ, g_X, g_Y, ‖g‖): the SAM point z̃ = z + ρ g/‖g‖ (Alg. 1 line 5; (4a), (7a), (22a), (41a)), with
    g = ∇f(z) for the target C and ‖g‖ its global norm over all layers (z̃ = z where g = 0)."""
    gX, gY = problem.grads_at(X, Y, C)
    nrm = global_norm(gX, gY)
    s = _safe_scale(rho, nrm)
    return X + s * gX, Y + s * gY, gX, gY, nrm


def sam_gradients(problem: Problem, X: np.ndarray, Y: np.ndarray, C: np.ndarray, rho) -> Field:
    """(∇_X f(z̃), ∇_Y f(z̃), g_X, g_Y): SAM's descent gradient (Alg. 1 line 6) and the gradient at z."""
    Xt, Yt, gX, gY, _ = sam_perturbation(problem, X, Y, C, rho)
    gXt, gYt = problem.grads_at(Xt, Yt, C)
    return gXt, gYt, gX, gY


def bar_sign(variant: str, X: np.ndarray, Y: np.ndarray, gX: np.ndarray, gY: np.ndarray) -> np.ndarray:
    """s_l of BAR per point and layer, shape (n, L), in Ẋ_l = −g_{X_l} + s_l μ_t X_l, Ẏ_l = −g_{Y_l} − s_l μ_t Y_l.

    nBAR (Alg. 2) grows the factor with the larger gradient: s_l = +1 if ‖g_{X_l}‖ ≥ ‖g_{Y_l}‖ else −1.
    oBAR (Alg. 3) shrinks the larger factor: s_l = −1 if ‖X_l‖ ≥ ‖Y_l‖ else +1 (spec §4.5.3, ties as written).
    """
    if variant == "nbar":
        return np.where(layer_sq_norms(gX) >= layer_sq_norms(gY), 1.0, -1.0)
    if variant == "obar":
        return np.where(layer_sq_norms(X) >= layer_sq_norms(Y), -1.0, 1.0)
    raise InvalidValue("variant", "nbar or obar", variant)


# -- where the built-in fields are discontinuous ---------------------------------------------
def op_fprime(problem: Problem, X, Y, targets, hp: HyperParams) -> Optional[np.ndarray]:
    """f′ of each chunk on OP, shape (n, m): SAM and SNGD carry sgn f′ (eq. (7)). None on NOP."""
    if problem.kind != "op":
        return None
    w = problem.product(X, Y)
    chunks = [problem.target] if targets is None else targets
    return np.stack([problem.outer_grad_at(w, C) for C in chunks], axis=1)


def nbar_surface(problem: Problem, X, Y, targets, hp: HyperParams) -> np.ndarray:
    """‖g_{X_l}‖² − ‖g_{Y_l}‖², shape (n, L): where nBAR's sign flips."""
    gX, gY = problem.grads_at(X, Y, batch_target(problem, targets))
    return layer_sq_norms(gX) - layer_sq_norms(gY)


def obar_surface(problem: Problem, X, Y, targets, hp: HyperParams) -> np.ndarray:
    """‖X_l‖² − ‖Y_l‖², shape (n, L): where oBAR's sign flips."""
    return layer_sq_norms(X) - layer_sq_norms(Y)


# -- the built-in optimizers -------------------------------------------------------------------
@register_direction("sgd")
def sgd(problem: Problem, X, Y, targets, hp: HyperParams) -> Field:
    """(2): d = −g."""
    gX, gY = problem.grads_at(X, Y, batch_target(problem, targets))
    return -gX, -gY, gX, gY


@register_direction("sngd", switching=op_fprime)
def sngd(problem: Problem, X, Y, targets, hp: HyperParams) -> Field:
    """(15): d = −g/‖g‖ (0 at g = 0)."""
    gX, gY = problem.grads_at(X, Y, batch_target(problem, targets))
    s = _safe_scale(1.0, global_norm(gX, gY))
    return -s * gX, -s * gY, gX, gY


@register_direction("sam", uses={"rho"}, switching=op_fprime)
def sam(problem: Problem, X, Y, targets, hp: HyperParams) -> Field:
    """(4), (7), (22), (41): d = −∇f_t(z + ρ g/‖g‖), the same minibatch for both gradients (Alg. 1)."""
    gXt, gYt, gX, gY = sam_gradients(problem, X, Y, batch_target(problem, targets), hp.rho)
    return -gXt, -gYt, gX, gY


@register_direction("msam", uses={"rho", "m"}, switching=op_fprime)
def msam(problem: Problem, X, Y, targets, hp: HyperParams) -> Field:
    """(38): each chunk i perturbs with its own gradient; the descent gradients are averaged."""
    chunks = [problem.target] if targets is None else targets
    dX, dY = np.zeros_like(X), np.zeros_like(Y)
    gX, gY = np.zeros_like(X), np.zeros_like(Y)
    for C in chunks:
        gXt, gYt, gXi, gYi = sam_gradients(problem, X, Y, C, hp.rho)
        dX -= gXt
        dY -= gYt
        gX += gXi
        gY += gYi
    k = len(chunks)
    return dX / k, dY / k, gX / k, gY / k


def _bar(variant: str, problem: Problem, X, Y, targets, hp: HyperParams) -> Field:
    gX, gY = problem.grads_at(X, Y, batch_target(problem, targets))
    c = (hp.mu * bar_sign(variant, X, Y, gX, gY))[:, :, None, None]
    return c * X - gX, -c * Y - gY, gX, gY


@register_direction("nbar", uses={"mu"}, switching=nbar_surface)
def nbar(problem: Problem, X, Y, targets, hp: HyperParams) -> Field:
    """Alg. 2 with an SGD base: d = −g + s μ_t (X, −Y), s from the gradient norms (:func:`bar_sign`)."""
    return _bar("nbar", problem, X, Y, targets, hp)


@register_direction("obar", uses={"mu"}, switching=obar_surface)
def obar(problem: Problem, X, Y, targets, hp: HyperParams) -> Field:
    """Alg. 3 with an SGD base: d = −g + s μ_t (X, −Y), s from the factor norms (:func:`bar_sign`)."""
    return _bar("obar", problem, X, Y, targets, hp)
