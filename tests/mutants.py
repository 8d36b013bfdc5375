"""Broken optimizers (mutants) that the implementation checks of ``balancedness check`` must catch.

Each mutant is a direction function that keeps the contract of ``balancedness.sims.directions`` and
stands in for one built-in optimizer (``run_checks(replace={name: field})``). They are the bugs one
would plausibly write: a lost normalization, a wrong radius, a flipped sign, the wrong minibatch, a norm
taken per layer, the wrong quantity in a rule, a step applied twice; and the bugs that passed every check
before issue 19: one radius for every trajectory, the wrong gradient returned for the record, a μ_t
scheduled twice, a per-layer norm in m-SAM or SNGD; and one or two per flatness method (issue 21): Flat-LoRA
perturbing the factors, Bi-LoRA's auxiliary descending or perturbing the factors, ASAM without its |w| scaling.

``VARIANTS`` are not bugs: optimizers that are correct in behaviour but not bit for bit the paper's update
(a direction computed in float32). The behaviour checks must pass them (``tests/test_mutants.py``).

``python tests/mutants.py`` prints, for every mutant, the checks that catch it in ``--quick`` mode and at
full scale: the table in docs/sims.md (``tests/test_mutants.py`` holds the two to each other).
"""

from __future__ import annotations

import dataclasses
import sys
from typing import NamedTuple

import numpy as np

from balancedness.metrics import global_norm, layer_sq_norms, sq_norms
from balancedness.sims.directions import DirectionFn, batch_target, bi_lora, flat_lora, nbar, obar, sam, sgd, sngd


class Mutant(NamedTuple):
    id: str
    replaces: str
    field: DirectionFn
    bug: str


def _scale(v: np.ndarray) -> np.ndarray:
    return v[:, None, None, None]


# -- SAM ------------------------------------------------------------------------------------------
def sgd_as_sam(problem, X, Y, targets, hp):
    return sgd(problem, X, Y, targets, hp)


def _radius(hp) -> np.ndarray:
    """ρ shaped to scale (n, L, d, r) arrays: a float, or one radius per trajectory (the contract)."""
    return np.reshape(hp.rho, (-1, 1, 1, 1))


def _sam_with(problem, X, Y, targets, hp, perturb):
    """SAM whose ascent point is ``perturb(gX, gY, rho)`` away from z (the descent uses the batch target); ``rho``
    is shaped by :func:`_radius`."""
    C = batch_target(problem, targets)
    gX, gY = problem.grads_at(X, Y, C)
    eX, eY = perturb(gX, gY, _radius(hp))
    gXt, gYt = problem.grads_at(X + eX, Y + eY, C)
    return -gXt, -gYt, gX, gY


def sam_unnormalized(problem, X, Y, targets, hp):
    return _sam_with(problem, X, Y, targets, hp, lambda gX, gY, rho: (rho * gX, rho * gY))


def sam_two_rho(problem, X, Y, targets, hp):
    return sam(problem, X, Y, targets, hp._replace(rho=2 * hp.rho))


def sam_half_rho(problem, X, Y, targets, hp):
    return sam(problem, X, Y, targets, hp._replace(rho=hp.rho / 2))


def sam_descent(problem, X, Y, targets, hp):
    return sam(problem, X, Y, targets, hp._replace(rho=-hp.rho))


def sam_noise_free_ascent(problem, X, Y, targets, hp):
    """The ascent gradient from the noise-free loss, the descent from the minibatch (breaks Alg. 1's same batch)."""
    C = batch_target(problem, targets)
    g0X, g0Y = problem.grads_at(X, Y, problem.target)
    s = _scale(hp.rho / global_norm(g0X, g0Y))
    gXt, gYt = problem.grads_at(X + s * g0X, Y + s * g0Y, C)
    gX, gY = problem.grads_at(X, Y, C)
    return -gXt, -gYt, gX, gY


def sam_per_layer_norm(problem, X, Y, targets, hp):
    """u_l = 1/‖g_l‖ per layer instead of the global u of (22)/(41)."""

    def perturb(gX, gY, rho):
        n = np.sqrt(layer_sq_norms(gX) + layer_sq_norms(gY))[:, :, None, None]
        return rho * gX / n, rho * gY / n

    return _sam_with(problem, X, Y, targets, hp, perturb)


def sam_x_only(problem, X, Y, targets, hp):
    """Perturbs x only (y's ascent forgotten)."""

    def perturb(gX, gY, rho):
        return rho * gX / _scale(global_norm(gX, gY)), np.zeros_like(gY)

    return _sam_with(problem, X, Y, targets, hp, perturb)


def sam_first_rho(problem, X, Y, targets, hp):
    """Takes the first radius for every trajectory when ρ comes as one radius per trajectory."""
    return sam(problem, X, Y, targets, hp._replace(rho=float(np.ravel(hp.rho)[0])))


def sam_returns_perturbed_grad(problem, X, Y, targets, hp):
    """Steps correctly but returns the gradient at z + ρ g/‖g‖ as g (what the simulator records), not the one at z."""
    dX, dY, _, _ = sam(problem, X, Y, targets, hp)
    return dX, dY, -dX, -dY


def msam_per_layer_norm(problem, X, Y, targets, hp):
    """m-SAM whose chunk perturbations are normalized per layer (u_{i,l} = 1/‖g_{i,l}‖), not by the global ‖g_i‖."""
    chunks = [problem.target] if targets is None else targets
    dX, dY = np.zeros_like(X), np.zeros_like(Y)
    gX, gY = np.zeros_like(X), np.zeros_like(Y)
    for C in chunks:
        gXi, gYi = problem.grads_at(X, Y, C)
        s = _radius(hp) / np.sqrt(layer_sq_norms(gXi) + layer_sq_norms(gYi))[:, :, None, None]
        gXt, gYt = problem.grads_at(X + s * gXi, Y + s * gYi, C)
        dX, dY = dX - gXt / len(chunks), dY - gYt / len(chunks)
        gX, gY = gX + gXi / len(chunks), gY + gYi / len(chunks)
    return dX, dY, gX, gY


def msam_shared_perturbation(problem, X, Y, targets, hp):
    """m-SAM that perturbs every chunk with the whole batch's gradient (one shared ε): SAM, not (38)."""
    chunks = [problem.target] if targets is None else targets
    C = batch_target(problem, targets)
    gX, gY = problem.grads_at(X, Y, C)
    s = _scale(hp.rho / global_norm(gX, gY))
    dX, dY = np.zeros_like(X), np.zeros_like(Y)
    for Ci in chunks:
        gXt, gYt = problem.grads_at(X + s * gX, Y + s * gY, Ci)
        dX, dY = dX - gXt / len(chunks), dY - gYt / len(chunks)
    return dX, dY, gX, gY


# -- BAR ------------------------------------------------------------------------------------------
def _bar_with(problem, X, Y, targets, hp, sign):
    gX, gY = problem.grads_at(X, Y, batch_target(problem, targets))
    c = (hp.mu * sign(X, Y, gX, gY))[:, :, None, None]
    return c * X - gX, -c * Y - gY, gX, gY


def nbar_flipped(problem, X, Y, targets, hp):
    return _bar_with(
        problem, X, Y, targets, hp, lambda X, Y, gX, gY: np.where(layer_sq_norms(gX) >= layer_sq_norms(gY), -1.0, 1.0)
    )


def nbar_weight_norms(problem, X, Y, targets, hp):
    """Decides on ‖X_l‖ ≥ ‖Y_l‖ where Alg. 2 says ‖g_{X_l}‖ ≥ ‖g_{Y_l}‖."""
    return _bar_with(
        problem, X, Y, targets, hp, lambda X, Y, gX, gY: np.where(layer_sq_norms(X) >= layer_sq_norms(Y), 1.0, -1.0)
    )


def nbar_mu_twice(problem, X, Y, targets, hp):
    """Applies the (1 ± μη) rescaling twice (once in the optimizer hook, once in the step)."""
    return nbar(problem, X, Y, targets, hp._replace(mu=2 * hp.mu))


def obar_flipped(problem, X, Y, targets, hp):
    return _bar_with(
        problem, X, Y, targets, hp, lambda X, Y, gX, gY: np.where(layer_sq_norms(X) >= layer_sq_norms(Y), 1.0, -1.0)
    )


def obar_mu_twice(problem, X, Y, targets, hp):
    return obar(problem, X, Y, targets, hp._replace(mu=2 * hp.mu))


def nbar_mu_decayed_twice(problem, X, Y, targets, hp):
    """Decays μ_t, which comes already scheduled, once more by (1 − t/T) (a hook that schedules it itself)."""
    return nbar(problem, X, Y, targets, hp._replace(mu=hp.mu * (1 - hp.progress)))


def obar_mu_decayed_twice(problem, X, Y, targets, hp):
    """Decays the scheduled μ_t once more by ½(1 + cos(π t/T))."""
    return obar(problem, X, Y, targets, hp._replace(mu=hp.mu * 0.5 * (1 + np.cos(np.pi * hp.progress))))


# -- SGD, SNGD --------------------------------------------------------------------------------------
def sgd_noise_free(problem, X, Y, targets, hp):
    """Forgets the minibatch: the gradient of the noise-free loss."""
    return sgd(problem, X, Y, None, hp)


def sgd_sign_error(problem, X, Y, targets, hp):
    """ẏ = +g_y: a sign error in one factor of the flow."""
    dX, dY, gX, gY = sgd(problem, X, Y, targets, hp)
    return dX, -dY, gX, gY


def sngd_blockwise(problem, X, Y, targets, hp):
    """Normalizes g_x and g_y each by its own norm instead of the joint ‖g‖ of (15)."""
    gX, gY = problem.grads_at(X, Y, batch_target(problem, targets))
    nx, ny = np.sqrt(sq_norms(gX)), np.sqrt(sq_norms(gY))
    return -gX / _scale(nx), -gY / _scale(ny), gX, gY


def sngd_per_layer_norm(problem, X, Y, targets, hp):
    """Normalizes each layer's gradient by that layer's norm ‖g_l‖ instead of the global ‖g‖ of (15)."""
    gX, gY = problem.grads_at(X, Y, batch_target(problem, targets))
    n = np.sqrt(layer_sq_norms(gX) + layer_sq_norms(gY))[:, :, None, None]
    return -gX / n, -gY / n, gX, gY


def sngd_returns_normalized_grad(problem, X, Y, targets, hp):
    """Steps correctly but returns the normalized gradient g/‖g‖ as g (the recorded gradient gap shrinks)."""
    dX, dY, _, _ = sngd(problem, X, Y, targets, hp)
    return dX, dY, -dX, -dY


# -- the flatness methods ---------------------------------------------------------------------------
def flat_lora_factor_noise(problem, X, Y, targets, hp):
    """Flat-LoRA that perturbs the factors instead of W (Bi-LoRA's RWP_LoRA): X + σ_t‖X_l‖/√d1·ξ, Y likewise (from the
    step's draws), and the chain rule at the noisy factors."""
    if hp.xi is None or not hp.sigma:
        return flat_lora(problem, X, Y, targets, hp)
    if problem.kind == "nop":
        xi_x, xi_y = hp.xi[..., : X.shape[-1]], np.swapaxes(hp.xi, -1, -2)[..., : Y.shape[-1]]
    else:
        xi_x, xi_y = hp.xi[:, :, None, None], -hp.xi[:, :, None, None]
    sx = hp.sigma * np.sqrt(layer_sq_norms(X) / problem.d1)[:, :, None, None]
    sy = hp.sigma * np.sqrt(layer_sq_norms(Y) / problem.d1)[:, :, None, None]
    C = batch_target(problem, targets)
    gX, gY = problem.grads_at(X, Y, C)
    gXt, gYt = problem.grads_at(X + sx * xi_x, Y + sy * xi_y, C)
    return -gXt, -gYt, gX, gY


def bi_lora_descending_aux(problem, X, Y, targets, hp):
    """Bi-LoRA whose auxiliary descends (the ascent's sign flipped): a second LoRA, not an adversary."""
    dX, dY, gX, gY, d_aux = bi_lora(problem, X, Y, targets, hp)
    return dX, dY, gX, gY, None if d_aux is None else (-d_aux[0], -d_aux[1])


def bi_lora_factor_aux(problem, X, Y, targets, hp):
    """Bi-LoRA whose auxiliary perturbs the factors, (X + X₂, Y + Y₂), with the chain rule there (not W + X₂Y₂ᵀ)."""
    if hp.aux is None:
        return bi_lora(problem, X, Y, targets, hp)
    X2, Y2 = hp.aux
    C = batch_target(problem, targets)
    gX, gY = problem.grads_at(X, Y, C)
    G = problem.outer_grad_at(problem.product(X + X2, Y + Y2), C)
    dX, dY = problem.factor_grads(X + X2, Y + Y2, G)
    aX, aY = problem.factor_grads(X2, Y2, G)
    return -dX, -dY, gX, gY, (hp.kappa * aX, hp.kappa * aY)


def asam_unscaled(problem, X, Y, targets, hp):
    """ASAM without the |w| scaling: T = 1, which is SAM."""
    return sam(problem, X, Y, targets, hp)


MUTANTS: list[Mutant] = [
    Mutant("sgd-as-sam", "sam", sgd_as_sam, "SAM replaced by plain SGD"),
    Mutant("sam-unnormalized", "sam", sam_unnormalized, "ascent rho g instead of rho g/‖g‖"),
    Mutant("sam-2rho", "sam", sam_two_rho, "radius 2 rho"),
    Mutant("sam-half-rho", "sam", sam_half_rho, "radius rho/2"),
    Mutant("sam-descent", "sam", sam_descent, "steps to z − rho g/‖g‖ (descends instead of ascending)"),
    Mutant("sam-noise-free-ascent", "sam", sam_noise_free_ascent, "ascent on the noise-free loss, not the minibatch"),
    Mutant("sam-per-layer-norm", "sam", sam_per_layer_norm, "u normalized per layer, not globally (22)/(41)"),
    Mutant("sam-x-only", "sam", sam_x_only, "perturbs x only"),
    Mutant("msam-shared-perturbation", "msam", msam_shared_perturbation, "one shared perturbation for all m chunks"),
    Mutant("nbar-flipped", "nbar", nbar_flipped, "nBAR's sign flipped"),
    Mutant("nbar-weight-norms", "nbar", nbar_weight_norms, "nBAR decides on ‖X‖ ≥ ‖Y‖ instead of the gradient norms"),
    Mutant("nbar-mu-twice", "nbar", nbar_mu_twice, "nBAR applies mu*eta twice"),
    Mutant("obar-flipped", "obar", obar_flipped, "oBAR's sign flipped (grows the larger factor)"),
    Mutant("obar-mu-twice", "obar", obar_mu_twice, "oBAR applies mu*eta twice"),
    Mutant("sgd-noise-free", "sgd", sgd_noise_free, "SGD ignores the minibatch (noise-free gradient)"),
    Mutant("sgd-sign-error", "sgd", sgd_sign_error, "flow with a sign error: dy/dt = +g_y"),
    Mutant("sngd-blockwise", "sngd", sngd_blockwise, "SNGD normalizes g_x and g_y separately"),
    # the blind spots of issue 19
    Mutant("sam-first-rho", "sam", sam_first_rho, "the first radius for every trajectory (rho of shape (n,))"),
    Mutant(
        "sam-returns-perturbed-grad",
        "sam",
        sam_returns_perturbed_grad,
        "returns the gradient at the perturbed point as g (the trajectory is unchanged)",
    ),
    Mutant("sngd-returns-normalized-grad", "sngd", sngd_returns_normalized_grad, "returns g/‖g‖ as g"),
    Mutant("nbar-mu-decayed-twice", "nbar", nbar_mu_decayed_twice, "decays the scheduled mu_t again by (1 − t/T)"),
    Mutant(
        "obar-mu-decayed-twice", "obar", obar_mu_decayed_twice, "decays the scheduled mu_t again by (1 + cos(pi t/T))/2"
    ),
    Mutant("msam-per-layer-norm", "msam", msam_per_layer_norm, "u_i normalized per layer, not globally"),
    Mutant("sngd-per-layer-norm", "sngd", sngd_per_layer_norm, "normalized per layer, not by the global ‖g‖"),
    # the flatness methods (issue 21)
    Mutant("flat-lora-factor-noise", "flat-lora", flat_lora_factor_noise, "perturbs the factors instead of W"),
    Mutant("bi-lora-descending-aux", "bi-lora", bi_lora_descending_aux, "the auxiliary descends (ascent sign flipped)"),
    Mutant("bi-lora-factor-aux", "bi-lora", bi_lora_factor_aux, "the auxiliary perturbs the factors, not W"),
    Mutant("asam-unscaled", "asam", asam_unscaled, "T = 1 instead of abs(w) + eta_a (no scaling by the weights): SAM"),
]


def sam_float32(problem, X, Y, targets, hp):
    """SAM computed in float32 (the point, the minibatch and the target rounded): correct in behaviour, but its
    direction is exactly 0 in a band around f′ = 0, where the OP flow then stops."""

    def f32(a):
        return None if a is None else np.asarray(a, dtype=np.float32)

    q = dataclasses.replace(problem, target=f32(problem.target))
    return tuple(np.asarray(a, dtype=np.float64) for a in sam(q, f32(X), f32(Y), f32(targets), hp))


#: Correct-in-behaviour variants (not bugs): the behaviour checks named must pass them.
VARIANTS: list[tuple[Mutant, tuple[str, ...]]] = [
    (Mutant("sam-float32", "sam", sam_float32, "SAM computed in float32"), ("thm3-direction",)),
]

#: Built-ins that are not mutated above would be a hole: every optimizer of the paper has mutants.
assert {m.replaces for m in MUTANTS} == {"sgd", "sngd", "sam", "msam", "nbar", "obar", "flat-lora", "bi-lora", "asam"}


def catchers(mutant: Mutant, quick: bool) -> tuple[list[str], list]:
    """(ids of the implementation checks that fail with ``mutant`` installed, all verdicts of the run)."""
    from balancedness.checks import Kind, run_checks

    verdicts = run_checks(quick=quick, replace={mutant.replaces: mutant.field})
    return [v.id for v in verdicts if v.kind is Kind.IMPLEMENTATION and not v.passed], verdicts


def table_row(mutant: Mutant, quick_ids: list[str], full_ids: list[str]) -> str:
    """The row of docs/sims.md's mutant table (full scale: "same" when it equals quick)."""

    def ids(v):
        return ", ".join(f"`{i}`" for i in v) or "**none**"

    full = "same" if full_ids == quick_ids else ids(full_ids)
    return f"| `{mutant.id}` | {mutant.replaces} | {mutant.bug} | {ids(quick_ids)} | {full} |"


def documented(path) -> dict[str, tuple[list[str], list[str]]]:
    """The mutant table of docs/sims.md: mutant id → (quick catchers, full-scale catchers)."""
    import re

    out = {}
    for line in open(path, encoding="utf-8"):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0].startswith("`") and cells[1] in {m.replaces for m in MUTANTS}:
            quick = re.findall(r"`([^`]+)`", cells[3])
            out[cells[0].strip("`")] = (quick, quick if cells[4] == "same" else re.findall(r"`([^`]+)`", cells[4]))
    return out


def main(argv: list[str]) -> None:
    import time

    print("| mutant | replaces | bug | caught in `--quick` | caught at full scale |")
    print("|---|---|---|---|---|")
    started = time.perf_counter()
    for m in MUTANTS:
        q, qv = catchers(m, True)
        f, fv = catchers(m, False)
        errors = sorted({v.id for v in qv + fv if v.error})
        print(table_row(m, q, f) + (f" errors: {', '.join(errors)}" if errors else ""), flush=True)
    print(f"({time.perf_counter() - started:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
