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

The flatness methods beside them (``spec/flatness-methods.md``, [FM]):

=========  ==========================================================  =========
flat-lora  −(G̃Y, G̃ᵀX), G̃ = ∇f_t(W + E), E a random W-space draw         [FM] §2.3
bi-lora    −(GY, GᵀX), G = ∇f_t(W + X₂Y₂ᵀ); the auxiliary ascends       [FM] §3.3
asam       −∇f_t(z + ρ T²g/‖Tg‖), T = |z| + η_a elementwise              [FM] §4.3
=========  ==========================================================  =========

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

Two extensions, both optional (the six paper optimizers use neither):

* **Random perturbations** (``register_direction(..., draws=shape_fn)``): the caller draws standard normal
  ξ of shape ``(n, *shape_fn(problem))`` for every step, like the minibatch, and passes it as ``hp.xi``.
  The simulator seeds it per trajectory seed and step (:func:`perturbation_draws`: the same seed gives the
  same draws, bit for bit; another seed or step other draws). ``hp.xi = None`` asks for the *expected*
  direction E_ξ d(z) (what the flow solver and ``theory.dB_dt`` integrate); on the quadratic toys it is the
  direction at ξ = 0, because the gradient is affine in a W-space perturbation.
* **Auxiliary state** (``register_direction(..., carry=Carry(...))``): state that persists across steps (Bi-LoRA's
  auxiliary adapter). The field reads it from ``hp.aux`` (a tuple of arrays, or None: the state at its
  start) and returns a fifth element, the direction of that state; the runners advance it beside the point
  (discrete: ``aux + η·d_aux``, then ``Carry.project``; flow: ``Carry.flow`` adds the projection's term).

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

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import NamedTuple, Protocol

import numpy as np

from balancedness.metrics import FloatArray, IntArray, global_norm, layer_sq_norms
from balancedness.sims.problems import Problem
from balancedness.validation import InvalidValue, choice

Field = tuple[FloatArray, FloatArray, FloatArray, FloatArray]
#: The seeds of a run's trajectories, one per trajectory.
Seeds = Sequence[int] | IntArray
#: The auxiliary state of a direction that keeps one (``Carry``): a tuple of arrays with n rows.
Aux = tuple[FloatArray, ...]
#: What a direction with a ``Carry`` returns: the contract's four arrays and the auxiliary's direction (or None).
FieldWithAux = tuple[FloatArray, FloatArray, FloatArray, FloatArray, Aux | None]

#: The hyper-parameters an optimizer may use (μ comes with its schedule, σ with its ramp).
HYPER_PARAMETERS = ("rho", "m", "mu", "sigma", "eta_a", "kappa", "rank2", "aux_init")


class HyperParams(NamedTuple):
    """What a direction function is told besides the point: ρ, m, μ_t and the progress t/T; for the flatness
    methods also σ_t (Flat-LoRA's noise scale, already ramped), η_a (ASAM), κ = η₂/η₁ (Bi-LoRA), the step's
    perturbation draws ξ (None: the expectation over them) and the auxiliary state (None: at its start)."""

    rho: float | FloatArray
    m: int
    mu: float
    progress: float
    sigma: float = 0.0
    eta_a: float = 0.0
    kappa: float = 1.0
    xi: FloatArray | None = None
    aux: Aux | None = None


class DirectionFn(Protocol):
    def __call__(
        self, problem: Problem, X: FloatArray, Y: FloatArray, targets: FloatArray | None, hp: HyperParams
    ) -> Field | FieldWithAux: ...


#: Signature of a switching function: same arguments as a direction, returns (n, k) or None.
SwitchingFn = Callable[[Problem, FloatArray, FloatArray, FloatArray | None, HyperParams], FloatArray | None]
#: The shape of one trajectory's perturbation draws ξ of one step, for a problem.
DrawsFn = Callable[[Problem], tuple[int, ...]]


@dataclass(frozen=True)
class Carry:
    """State a direction keeps across steps (see the module docstring), as four functions:

    Attributes:
        init: ``init(problem, seeds, settings) -> aux``: the state of n trajectories at the start (a tuple of
            arrays with n rows), from the trajectories' seeds (n,) and the optimizer's settings (a dict).
        project: ``project(problem, aux, rho) -> aux``: applied after every discrete step ``aux + η·d_aux``.
        flow: ``flow(problem, aux, d_aux, rho) -> d_aux``: the flow's rate of the state (the projection's term
            added).
        summary: ``summary(problem, aux) -> {name: (n,) array}``: what the runners record of the state.
    """

    init: Callable[[Problem, Seeds, Mapping[str, float | str]], Aux]
    project: Callable[[Problem, Aux, float | FloatArray], Aux]
    flow: Callable[[Problem, Aux, Aux, float | FloatArray], Aux]
    summary: Callable[[Problem, Aux], dict[str, FloatArray]]


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
        draws: the shape of its per-step perturbation draws ξ (``hp.xi``), or None for a deterministic field.
        carry: its auxiliary state (:class:`Carry`), or None; then the field returns five values.
    """

    name: str
    field: DirectionFn
    uses: frozenset[str] = frozenset()
    switching: SwitchingFn | None = None
    draws: DrawsFn | None = None
    carry: Carry | None = None


#: The registry: optimizer name → :class:`Direction`, in registration order.
DIRECTIONS: dict[str, Direction] = {}


def register_direction(
    name: str,
    *,
    uses: Iterable[str] = (),
    switching: SwitchingFn | None = None,
    replace: bool = False,
    draws: DrawsFn | None = None,
    carry: Carry | None = None,
) -> Callable[[DirectionFn], DirectionFn]:
    """Decorator: register ``field`` as the optimizer ``name`` (``replace=True`` to override one); ``draws`` and
    ``carry``: see the module docstring."""
    used = frozenset(choice("uses", u, HYPER_PARAMETERS) for u in uses)
    if name in DIRECTIONS and not replace:
        raise ValueError(f"optimizer {name!r} is already registered; pass replace=True to override it")

    def add(field: DirectionFn) -> DirectionFn:
        DIRECTIONS[name] = Direction(name, field, used, switching, draws, carry)
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

    def __call__(
        self, problem: Problem, X: FloatArray, Y: FloatArray, targets: FloatArray | None, hp: HyperParams
    ) -> Field | FieldWithAux:
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
def batch_target(problem: Problem, targets: FloatArray | None) -> FloatArray:
    """The effective target of the whole batch: the mean of the m chunk targets (A when noise-free)."""
    if targets is None:
        return problem.target
    out: FloatArray = targets[0] if len(targets) == 1 else targets.mean(axis=0)
    return out


def _safe_scale(num: float | FloatArray, nrm: FloatArray) -> FloatArray:
    """num/‖g‖ where ‖g‖ > 0, else 0 (no perturbation at a zero gradient, never NaN)."""
    out: FloatArray = (num / np.where(nrm > 0, nrm, np.inf))[:, None, None, None]
    return out


def sam_perturbation(
    problem: Problem, X: FloatArray, Y: FloatArray, C: FloatArray, rho: float | FloatArray
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray, FloatArray]:
    """(X̃, Ỹ, g_X, g_Y, ‖g‖): the SAM point z̃ = z + ρ g/‖g‖ (Alg. 1 line 5; (4a), (7a), (22a), (41a)), with
    g = ∇f(z) for the target C and ‖g‖ its global norm over all layers (z̃ = z where g = 0)."""
    gX, gY = problem.grads_at(X, Y, C)
    nrm = global_norm(gX, gY)
    s = _safe_scale(rho, nrm)
    return X + s * gX, Y + s * gY, gX, gY, nrm


def sam_gradients(problem: Problem, X: FloatArray, Y: FloatArray, C: FloatArray, rho: float | FloatArray) -> Field:
    """(∇_X f(z̃), ∇_Y f(z̃), g_X, g_Y): SAM's descent gradient (Alg. 1 line 6) and the gradient at z."""
    Xt, Yt, gX, gY, _ = sam_perturbation(problem, X, Y, C, rho)
    gXt, gYt = problem.grads_at(Xt, Yt, C)
    return gXt, gYt, gX, gY


def bar_sign(variant: str, X: FloatArray, Y: FloatArray, gX: FloatArray, gY: FloatArray) -> FloatArray:
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
def op_fprime(
    problem: Problem, X: FloatArray, Y: FloatArray, targets: FloatArray | None, hp: HyperParams
) -> FloatArray | None:
    """f′ of each chunk on OP, shape (n, m): SAM and SNGD carry sgn f′ (eq. (7)). None on NOP."""
    if problem.kind != "op":
        return None
    w = problem.product(X, Y)
    chunks = [problem.target] if targets is None else targets
    return np.stack([problem.outer_grad_at(w, C) for C in chunks], axis=1)


def nbar_surface(
    problem: Problem, X: FloatArray, Y: FloatArray, targets: FloatArray | None, hp: HyperParams
) -> FloatArray:
    """‖g_{X_l}‖² − ‖g_{Y_l}‖², shape (n, L): where nBAR's sign flips."""
    gX, gY = problem.grads_at(X, Y, batch_target(problem, targets))
    return layer_sq_norms(gX) - layer_sq_norms(gY)


def obar_surface(
    problem: Problem, X: FloatArray, Y: FloatArray, targets: FloatArray | None, hp: HyperParams
) -> FloatArray:
    """‖X_l‖² − ‖Y_l‖², shape (n, L): where oBAR's sign flips."""
    return layer_sq_norms(X) - layer_sq_norms(Y)


# -- the built-in optimizers -------------------------------------------------------------------
@register_direction("sgd")
def sgd(problem: Problem, X: FloatArray, Y: FloatArray, targets: FloatArray | None, hp: HyperParams) -> Field:
    """(2): d = −g."""
    gX, gY = problem.grads_at(X, Y, batch_target(problem, targets))
    return -gX, -gY, gX, gY


@register_direction("sngd", switching=op_fprime)
def sngd(problem: Problem, X: FloatArray, Y: FloatArray, targets: FloatArray | None, hp: HyperParams) -> Field:
    """(15): d = −g/‖g‖ (0 at g = 0)."""
    gX, gY = problem.grads_at(X, Y, batch_target(problem, targets))
    s = _safe_scale(1.0, global_norm(gX, gY))
    return -s * gX, -s * gY, gX, gY


@register_direction("sam", uses={"rho"}, switching=op_fprime)
def sam(problem: Problem, X: FloatArray, Y: FloatArray, targets: FloatArray | None, hp: HyperParams) -> Field:
    """(4), (7), (22), (41): d = −∇f_t(z + ρ g/‖g‖), the same minibatch for both gradients (Alg. 1)."""
    gXt, gYt, gX, gY = sam_gradients(problem, X, Y, batch_target(problem, targets), hp.rho)
    return -gXt, -gYt, gX, gY


@register_direction("msam", uses={"rho", "m"}, switching=op_fprime)
def msam(problem: Problem, X: FloatArray, Y: FloatArray, targets: FloatArray | None, hp: HyperParams) -> Field:
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


def _bar(
    variant: str, problem: Problem, X: FloatArray, Y: FloatArray, targets: FloatArray | None, hp: HyperParams
) -> Field:
    gX, gY = problem.grads_at(X, Y, batch_target(problem, targets))
    c = (hp.mu * bar_sign(variant, X, Y, gX, gY))[:, :, None, None]
    return c * X - gX, -c * Y - gY, gX, gY


@register_direction("nbar", uses={"mu"}, switching=nbar_surface)
def nbar(problem: Problem, X: FloatArray, Y: FloatArray, targets: FloatArray | None, hp: HyperParams) -> Field:
    """Alg. 2 with an SGD base: d = −g + s μ_t (X, −Y), s from the gradient norms (:func:`bar_sign`)."""
    return _bar("nbar", problem, X, Y, targets, hp)


@register_direction("obar", uses={"mu"}, switching=obar_surface)
def obar(problem: Problem, X: FloatArray, Y: FloatArray, targets: FloatArray | None, hp: HyperParams) -> Field:
    """Alg. 3 with an SGD base: d = −g + s μ_t (X, −Y), s from the factor norms (:func:`bar_sign`)."""
    return _bar("obar", problem, X, Y, targets, hp)


# -- the flatness methods ([FM] = spec/flatness-methods.md) -----------------------------------------
def layer_products(problem: Problem, X: FloatArray, Y: FloatArray) -> FloatArray:
    """Each layer's merged weight: W_l = X_l Y_lᵀ, shape (n, L, d1, d2) (NOP), or w_l = ⟨X_l, Y_l⟩, (n, L) (OP)."""
    if problem.kind == "nop":
        out: FloatArray = np.matmul(X, np.swapaxes(Y, -1, -2))
        return out
    out = np.einsum("nlir,nlir->nl", X, Y)
    return out


def flat_lora_draws(problem: Problem) -> tuple[int, ...]:
    """The shape of one step's Flat-LoRA draws ξ per trajectory: one per entry of each layer's merged weight."""
    return (problem.layers, problem.d1, problem.d2) if problem.kind == "nop" else (problem.layers,)


def flat_lora_perturbation(problem: Problem, X: FloatArray, Y: FloatArray, sigma: float, xi: FloatArray) -> FloatArray:
    """Σ_l E_l, the Flat-LoRA draw added to the product ([FM] §2.1 eq. (7), §2.3), shaped like ``problem.product``.

    A filter (one output unit) of ΔW_l = Y_l X_lᵀ is a column j of X_l Y_lᵀ and its fan-in is d1, so
    NOP: E_l[i, j] = σ_t·‖W_l[:, j]‖/√d1·ξ_l[i, j] (rank 1: σ_t|y_j|‖x‖/√d1·ξ_ij); OP (fan-in 1): e_l = σ_t|w_l|ξ_l.
    """
    W = layer_products(problem, X, Y)
    if problem.kind == "nop":
        std = sigma * np.linalg.norm(W, axis=-2, keepdims=True) / np.sqrt(problem.d1)
        out: FloatArray = (std * xi).sum(axis=1)
        return out
    out = (sigma * np.abs(W) * xi).sum(axis=1)
    return out


def flat_lora_ramp(schedule: str, progress: float) -> float:
    """f_t of Flat-LoRA's noise strength σ_t = f_t σ: ``cosine`` (the official code's ramp ½(1 − cos πt/T), from 0
    up to 1; [FM] §2.1 item 1) or ``constant`` (f_t = 1)."""
    return (
        1.0
        if choice("noise_schedule", schedule, NOISE_SCHEDULES) == "constant"
        else 0.5 * (1 - np.cos(np.pi * progress))
    )


#: Flat-LoRA's noise schedules (:func:`flat_lora_ramp`).
NOISE_SCHEDULES = ("cosine", "constant")


@register_direction("flat-lora", uses={"sigma"}, draws=flat_lora_draws)
def flat_lora(problem: Problem, X: FloatArray, Y: FloatArray, targets: FloatArray | None, hp: HyperParams) -> Field:
    """[FM] §2.3: d = −(G̃Y, G̃ᵀX), G̃ = ∇f_t(W + E): the chain rule at the *unperturbed* factors, with the gradient
    of the loss taken at the weight perturbed by the step's draw E (:func:`flat_lora_perturbation`, σ_t = hp.sigma).

    ``hp.xi = None`` is the expected direction E_E d = −(GY, GᵀX): on the quadratic toys ∇f is affine in W and
    E[E] = 0, so the Flat-LoRA flow *is* the SGD flow ([FM] §2.3).
    """
    C = batch_target(problem, targets)
    W = problem.product(X, Y)
    gX, gY = problem.factor_grads(X, Y, problem.outer_grad_at(W, C))
    if hp.xi is None or not hp.sigma:
        return -gX, -gY, gX, gY
    gXt, gYt = problem.factor_grads(
        X, Y, problem.outer_grad_at(W + flat_lora_perturbation(problem, X, Y, hp.sigma, hp.xi), C)
    )
    return -gXt, -gYt, gX, gY


#: Salt of the Bi-LoRA auxiliary's initial draw (kept apart from the minibatch and the Flat-LoRA streams).
AUX_SALT = 0xB1
#: Where Bi-LoRA's flow clip is active: ‖P‖ ≥ ρ(1 − BILORA_CLIP_BAND) (a band, so the solver does not chatter).
BILORA_CLIP_BAND = 1e-9


def bilora_init(problem: Problem, seeds: Seeds, settings: Mapping[str, float | str]) -> Aux:
    """Bi-LoRA's auxiliary at the start ([FM] §3.3, [ASSUMED]): X₂ ∼ N(0, aux_init²) of shape (L, d1, r₂) drawn
    from the trajectory's seed, Y₂ = 0 (so the perturbation X₂Y₂ᵀ starts at 0, as B₂ = 0 does in peft)."""
    rank2, aux_init = int(settings["rank2"]), float(settings["aux_init"])
    X2 = np.stack(
        [
            aux_init * np.random.default_rng([AUX_SALT, int(s)]).standard_normal((problem.layers, problem.d1, rank2))
            for s in seeds
        ]
    )
    return X2, np.zeros((len(seeds), problem.layers, problem.d2, rank2))


def bilora_norm(problem: Problem, aux: Aux) -> FloatArray:
    """c = √(Σ_l ‖X₂_l Y₂_lᵀ‖²_F) (OP: √(Σ_l ⟨X₂_l, Y₂_l⟩²)), the global norm of eq. (10), shape (n,)."""
    P = layer_products(problem, *aux)
    out: FloatArray = np.sqrt((P**2).reshape(P.shape[0], -1).sum(axis=1))
    return out


def bilora_project(problem: Problem, aux: Aux, rho: float | FloatArray) -> Aux:
    """Eq. (10), after every step: if c > ρ, multiply X₂ and Y₂ by √(ρ/c) (then c = ρ)."""
    c = bilora_norm(problem, aux)
    k = np.where(c > rho, np.sqrt(rho / np.where(c > 0, c, 1.0)), 1.0)[:, None, None, None]
    return aux[0] * k, aux[1] * k


def bilora_flow(problem: Problem, aux: Aux, d_aux: Aux, rho: float | FloatArray) -> Aux:
    """The clip in the flow ([FM] §3.3): while c = ρ, (Ẋ₂, Ẏ₂) −= λ(X₂, Y₂) with λ = max(0, ⟨P, Ṗ⟩)/(2c²), which
    keeps d‖P‖²/dt = 0 (P = X₂Y₂ᵀ per layer, Ṗ its rate under the ascent d_aux)."""
    X2, Y2 = aux
    P = layer_products(problem, X2, Y2)
    dP = layer_products(problem, d_aux[0], Y2) + layer_products(problem, X2, d_aux[1])
    inner = (P * dP).reshape(P.shape[0], -1).sum(axis=1)
    c2 = (P**2).reshape(P.shape[0], -1).sum(axis=1)
    active = np.sqrt(c2) >= np.asarray(rho) * (1 - BILORA_CLIP_BAND)
    lam = np.where(active, np.maximum(inner, 0.0) / (2 * np.where(c2 > 0, c2, 1.0)), 0.0)[:, None, None, None]
    return d_aux[0] - lam * X2, d_aux[1] - lam * Y2


def bilora_summary(problem: Problem, aux: Aux) -> dict[str, FloatArray]:
    """What the runners record of the auxiliary: its norm c, its own balancedness B₂ = ½(‖X₂‖² − ‖Y₂‖²) and the
    factors themselves, flattened (``x2`` (n, L·d1·r₂), ``y2`` (n, L·d2·r₂))."""
    n = aux[0].shape[0]
    return {
        "norm": bilora_norm(problem, aux),
        "balancedness": 0.5 * (layer_sq_norms(aux[0]).sum(axis=1) - layer_sq_norms(aux[1]).sum(axis=1)),
        "x2": aux[0].reshape(n, -1),
        "y2": aux[1].reshape(n, -1),
    }


def bi_lora(
    problem: Problem, X: FloatArray, Y: FloatArray, targets: FloatArray | None, hp: HyperParams
) -> FieldWithAux:
    """[FM] §3.1 eq. (9), §3.3: one gradient G = ∇f_t(W + X₂Y₂ᵀ) at the full weight; the primary descends,
    d = −(GY, GᵀX), and the auxiliary ascends, d_aux = +κ(GY₂, GᵀX₂) (κ = η₂/η₁). Returns five values: the
    contract's four and d_aux. ``hp.aux = None``: no auxiliary (X₂Y₂ᵀ = 0; d_aux None)."""
    C = batch_target(problem, targets)
    W = problem.product(X, Y)
    gX, gY = problem.factor_grads(X, Y, problem.outer_grad_at(W, C))
    if hp.aux is None:
        return -gX, -gY, gX, gY, None
    X2, Y2 = hp.aux
    G = problem.outer_grad_at(W + problem.product(X2, Y2), C)
    dX, dY = problem.factor_grads(X, Y, G)
    aX, aY = problem.factor_grads(X2, Y2, G)
    return -dX, -dY, gX, gY, (hp.kappa * aX, hp.kappa * aY)


BILORA_CARRY = Carry(init=bilora_init, project=bilora_project, flow=bilora_flow, summary=bilora_summary)
register_direction("bi-lora", uses={"rho", "kappa", "rank2", "aux_init"}, carry=BILORA_CARRY)(bi_lora)


@register_direction("asam", uses={"rho", "eta_a"}, switching=op_fprime)
def asam(problem: Problem, X: FloatArray, Y: FloatArray, targets: FloatArray | None, hp: HyperParams) -> Field:
    """[FM] §4.1 [AS-C], §4.3: d = −∇f_t(z̃), z̃ = z + ρ T²⊙g/‖T⊙g‖ with T = |z| + η_a elementwise on both factors
    and ‖T⊙g‖ global over all layers; the same minibatch for both gradients (z̃ = z where T⊙g = 0)."""
    C = batch_target(problem, targets)
    gX, gY = problem.grads_at(X, Y, C)
    TX, TY = np.abs(X) + hp.eta_a, np.abs(Y) + hp.eta_a
    s = _safe_scale(hp.rho, global_norm(TX * gX, TY * gY))
    gXt, gYt = problem.grads_at(X + s * TX**2 * gX, Y + s * TY**2 * gY, C)
    return -gXt, -gYt, gX, gY
