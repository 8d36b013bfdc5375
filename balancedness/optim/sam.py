"""SAM (spec §2.1, Alg. 1) as a torch optimizer wrapping any base optimizer, after davda54/sam.

    first_step:   w ← w + e(w),   e_g = ρ_g g/‖g‖                (Alg. 1 line 5; eq. (4a), (22a))
                                  e_g = ρ_g w² ⊙ g/‖|w| ⊙ g‖      (ASAM, ``adaptive=True``)
    second_step:  w ← w (restored), then the base optimizer steps with g(w + e)   (line 6; (4c), (22c))

‖g‖ is the *global* norm over all parameters of the optimizer (u_t of eq. (22a), spec §2.7); each param group
climbs with its own radius ρ_g (and ``adaptive`` flag), as in davda54/sam (``group["rho"]`` over the global
norm). A zero gradient gives e = 0 (never NaN). The same minibatch must be used for both gradients (spec §2.1).

The order of the passes is written once, in ``microbatch.sam_micro_batch`` (the streaming order of the HF
Trainer and accelerate loops); here it is looped over:

* ``SAM.step(closure)``: one micro-batch, the closure runs its own backward.
* ``sam_step_accumulated``: exact gradient accumulation. The ascent gradient is the average of the k
  micro-batch gradients at w, the point is perturbed once, and the descent gradient is the average of the
  k micro-batch gradients at w + e: the same update as SAM on the concatenated batch.
* ``sam_step_msharpness``: m-sharpness (eq. (38a–c)): chunk i perturbs with its own gradient,
  w̃_i = w + ρ g_i/‖g_i‖, and the descent gradients g_i(w̃_i) are averaged.

Mixed precision: pass ``scaler=`` (a ``torch.amp.GradScaler``) to ``step``/``second_step``/the helpers and
scale every backward with it (the helpers do). See ``amp.py`` for why no explicit unscale is needed before
the perturbation, and how an overflow in either pass skips the whole step.

accelerate: ``step(closure)`` works under ``accelerator.prepare`` without gradient accumulation; with
accumulation (accelerate runs ``step()`` only on every k-th micro-batch, so the others' data would never reach
the update) it is refused, and ``microbatch.sam_backward`` is the way in.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from balancedness.optim.amp import backward, poison_grads_
from balancedness.optim.microbatch import sam_micro_batch, stash_grads, unstash_grads
from balancedness.optim.pairs import compute_dtype, grad_of, norms
from balancedness.validation import boolean, number

__all__ = [
    "SAM",
    "Perturbation",
    "RadiusGroup",
    "check_sam_args",
    "climb_",
    "climb_groups_",
    "restore_",
    "stash_grads",
    "unstash_grads",
    "sam_step_accumulated",
    "sam_step_msharpness",
]

Backups = list[torch.Tensor]
RadiusGroup = tuple[Sequence[nn.Parameter], float, bool]  # (parameters, ρ, adaptive): one param group's radius


def check_sam_args(rho: float, adaptive: bool = False) -> tuple[float, bool]:
    """(ρ, adaptive) validated: ρ finite and ≥ 0, ``adaptive`` a bool."""
    return number("rho", rho), boolean("adaptive", adaptive)


def climb_(
    params: Iterable[nn.Parameter], rho: float, adaptive: bool = False
) -> tuple[list[nn.Parameter], Backups] | None:
    """w ← w + e(w) for every parameter with a gradient, one radius for all (``climb_groups_``)."""
    return climb_groups_([(list(params), rho, adaptive)])


@torch.no_grad()
def climb_groups_(groups: Sequence[RadiusGroup]) -> tuple[list[nn.Parameter], Backups] | None:
    """w ← w + e(w) for every parameter with a gradient (module docstring), in ≥ fp32: each group with its
    own ρ_g (and ASAM flag), all over the one global norm ‖g‖ (of |w| ⊙ g in the adaptive groups).

    Returns (the perturbed parameters, copies of their values at w) for ``restore_``; or None, with nothing
    changed, when the global gradient norm is inf/NaN (an fp16 overflow).
    """
    groups = [([p for p in params if p.grad is not None], rho, adaptive) for params, rho, adaptive in groups]
    groups = [group for group in groups if group[0]]
    params = [p for group_params, _, _ in groups for p in group_params]
    if not params:
        return [], []
    dtype = compute_dtype(params)
    grads = [_ascent_gradients(group_params, adaptive, dtype) for group_params, _, adaptive in groups]
    grad_norm = torch.linalg.vector_norm(norms([g for group_grads in grads for g in group_grads], dtype))
    if not torch.isfinite(grad_norm):  # the one host sync of a SAM step
        return None
    backups = [p.detach().clone() for p in params]
    for (group_params, rho, adaptive), group_grads in zip(groups, grads, strict=True):
        coef = torch.where(grad_norm > 0, rho / grad_norm, torch.zeros_like(grad_norm))
        step = torch._foreach_mul(group_grads, coef)  # ρ g/‖g‖, or ρ |w|⊙g/‖|w|⊙g‖ ...
        if adaptive:
            step = torch._foreach_mul(step, torch._foreach_abs([p.to(dtype) for p in group_params]))  # ... ⊙ |w|
        for p, e in zip(group_params, step, strict=True):
            p.add_(e)
    return params, backups


def _ascent_gradients(params: Sequence[nn.Parameter], adaptive: bool, dtype: torch.dtype) -> list[torch.Tensor]:
    """g in ``dtype``, or |w| ⊙ g for ASAM: the vectors whose global norm normalizes the perturbation."""
    grads = [grad_of(p).to(dtype) for p in params]
    if adaptive:
        grads = list(torch._foreach_mul(torch._foreach_abs([p.to(dtype) for p in params]), grads))
    return grads


@torch.no_grad()
def restore_(params: Sequence[nn.Parameter], backups: Backups) -> None:
    """w + e → w, bit-exactly (copies back the saved values)."""
    for p, b in zip(params, backups, strict=True):
        p.copy_(b)


class Perturbation:
    """w ↔ w + e(w) on fixed parameter groups: ``climb()`` (``climb_groups_``; False, nothing changed, on an
    overflow) and ``restore()`` (``restore_``; a no-op when not climbed). ``Perturbation(params, rho, adaptive)``
    is one group; ``Perturbation.of_param_groups(optimizer.param_groups)`` takes each group's ``rho``/``adaptive``."""

    def __init__(self, params: Iterable[nn.Parameter], rho: float, adaptive: bool = False) -> None:
        self.groups: list[RadiusGroup] = [(list(params), rho, adaptive)]
        self._climbed: tuple[list[nn.Parameter], Backups] | None = None

    @classmethod
    def of_param_groups(cls, param_groups: Sequence[dict[str, Any]]) -> Perturbation:
        perturbation = cls((), 0.0)
        perturbation.groups = [(list(g["params"]), g["rho"], g["adaptive"]) for g in param_groups]
        return perturbation

    @property
    def climbed(self) -> bool:
        """Whether the parameters are at w + e now."""
        return self._climbed is not None

    def climb(self) -> bool:
        self._climbed = climb_groups_(self.groups)
        return self._climbed is not None

    def restore(self) -> None:
        if self._climbed is not None:
            restore_(*self._climbed)
            self._climbed = None


class SAM(Optimizer):
    """Sharpness-Aware Minimization around ``base_optimizer_cls`` (Foret et al. 2021; spec Alg. 1).

    Args:
        params: parameters or param groups, as for any optimizer; a group may set its own ``rho`` and
            ``adaptive`` (davda54/sam semantics: the group's radius over the global gradient norm).
        base_optimizer_cls: e.g. ``torch.optim.SGD``/``AdamW``; built on the same param groups, so LR
            schedulers attached to the SAM instance drive the base optimizer.
        rho: the radius ρ ≥ 0 of groups that set none (ρ = 0 is the base optimizer).
        adaptive: ASAM's scale-invariant perturbation (Kwon et al. 2021), for groups that set none.
        **base_kwargs: passed to ``base_optimizer_cls`` (``lr``, ``momentum``, ...).

    Use either ``step(closure)`` — the closure zeroes nothing, computes the loss, calls backward (through
    the scaler if any: ``scaler.scale(loss).backward()``) and returns the loss; it is called twice — or
    the explicit two halves, davda54-style::

        loss_fn(batch).backward(); sam.first_step(zero_grad=True)
        loss_fn(batch).backward(); sam.second_step(zero_grad=True)

    ``step()`` without a closure is ``second_step()`` after a ``first_step()`` (what a wrapper such as
    accelerate's calls after ``microbatch.sam_backward``); without a pending ``first_step()`` it raises.
    """

    def __init__(
        self,
        params: Any,
        base_optimizer_cls: type[Optimizer],
        *,
        rho: float,
        adaptive: bool = False,
        **base_kwargs: Any,
    ) -> None:
        rho, adaptive = check_sam_args(rho, adaptive)
        if not (isinstance(base_optimizer_cls, type) and issubclass(base_optimizer_cls, Optimizer)):
            raise TypeError(f"base_optimizer_cls must be a torch.optim.Optimizer subclass, got {base_optimizer_cls!r}")
        super().__init__(params, dict(rho=rho, adaptive=adaptive, **base_kwargs))
        for group in self.param_groups:
            group["rho"], group["adaptive"] = check_sam_args(group["rho"], group["adaptive"])
        self.base_optimizer = base_optimizer_cls(self.param_groups, **base_kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)
        self.rho, self.adaptive = rho, adaptive
        self._perturbation: Perturbation | None = None  # at w + e: what restore() needs
        self._in_step = False  # first_step() ran, second_step() not yet
        self._overflow = False

    def _params(self) -> list[nn.Parameter]:
        return [p for group in self.param_groups for p in group["params"]]

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> bool:
        """Climb to w + e(w) with the current gradients, each group with its ρ. Returns False (and changes
        nothing) on an overflow: the step is then skipped by ``second_step`` and the descent pass may be left out."""
        if self._perturbation is not None and self._perturbation.climbed:
            raise RuntimeError(
                "SAM.first_step() was called while the weights are still at w + e: call "
                "second_step() (or restore()) before climbing again"
            )
        self._perturbation = Perturbation.of_param_groups(self.param_groups)
        self._overflow = not self._perturbation.climb()
        self._in_step = True
        if zero_grad:
            self.zero_grad()
        return not self._overflow

    @torch.no_grad()
    def restore(self) -> None:
        """Return to w (no base step); used between m-sharpness chunks."""
        if self._perturbation is not None:
            self._perturbation.restore()

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False, *, scaler: torch.amp.GradScaler | None = None) -> None:
        """Return to w and step the base optimizer with the current (descent) gradients.

        With ``scaler``, the base step goes through ``scaler.step`` (which unscales and skips on inf/NaN);
        call ``scaler.update()`` afterwards as usual. If ``first_step`` overflowed, the step is skipped: with a
        scaler the gradients are NaN-filled so that the scaler registers the overflow. Raises RuntimeError
        without a preceding ``first_step`` (the descent gradient would be taken at w, silently plain descent).
        """
        if not self._in_step:
            raise RuntimeError(
                "SAM.second_step() needs a preceding first_step(): compute the gradient at w, call "
                "first_step() to climb to w + e, compute the gradient there, then second_step()"
            )
        self._in_step = False
        self.restore()
        if self._overflow:
            if scaler is not None:
                poison_grads_(self._params())
                scaler.step(self.base_optimizer)
        elif scaler is not None:
            scaler.step(self.base_optimizer)
        else:
            self.base_optimizer.step()
        self._overflow = False
        if zero_grad:
            self.zero_grad()

    def step(  # type: ignore[override]  # needs the loss closure (a tensor) and takes the GradScaler
        self, closure: Callable[[], torch.Tensor] | None = None, *, scaler: torch.amp.GradScaler | None = None
    ) -> torch.Tensor | None:
        """One SAM step, the passes of ``microbatch.sam_micro_batch`` for one micro-batch: ascent pass,
        climb, descent pass, restore; then the base step. Returns the loss at w.

        Without a closure: ``second_step(scaler=scaler)`` of a step begun with ``first_step()`` (returns None).
        """
        if closure is None:
            if self._in_step:
                return self.second_step(scaler=scaler)
            raise ValueError(
                "SAM.step() needs a closure that computes the loss on the *same* batch and calls backward "
                "(scaler.scale(loss).backward() under fp16), or a preceding first_step(). With the Hugging Face "
                "Trainer use balancedness.optim.SAMTrainer (Trainer(optimizers=(SAM(...), None)) cannot run SAM's "
                "second pass); in an accelerate loop use balancedness.optim.sam_backward"
            )
        if _accelerate_accumulates():
            raise RuntimeError(
                "SAM.step(closure) was called in an accelerate loop that accumulates gradients: accelerate's "
                "AcceleratedOptimizer skips step() on the other micro-batches (their data would never reach the "
                "update): call balancedness.optim.sam_backward(accelerator, model, optimizer, batch) inside "
                "accelerator.accumulate(model), then optimizer.step() (docs/torch-backend.md)"
            )

        def run_pass(_batch: Any, _local: bool) -> torch.Tensor:
            with torch.enable_grad():
                return closure()

        self.zero_grad()
        loss = sam_micro_batch(
            None,
            [],
            run_pass=run_pass,
            params=self._params(),
            climb=self.first_step,
            restore=self.restore,
            msharpness=False,
            last=True,
            scaled=scaler is not None,
        )
        self.second_step(scaler=scaler)
        return loss

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state dict (SAM's own state, w during a step, is transient)."""
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups


def _accelerate_accumulates() -> bool:
    """Whether an accelerate loop accumulates gradients right now, by accelerate's own record of it: its shared
    ``GradientState`` (read from ``sys.modules``: nothing here imports accelerate) holds k > 1 accumulation steps
    and a prepared DataLoader is being iterated. There accelerate calls ``step()`` on every k-th micro-batch only."""
    state = sys.modules.get("accelerate.state")
    if state is None or not state.GradientState._shared_state:
        return False
    gradient_state = state.GradientState()
    return bool(gradient_state.num_steps > 1 and gradient_state.in_dataloader)


LossFn = Callable[[Any], torch.Tensor]
NoSync = Callable[[], AbstractContextManager[Any]]


def sam_step_accumulated(
    sam: SAM,
    loss_fn: LossFn,
    micro_batches: Sequence[Any],
    *,
    scaler: torch.amp.GradScaler | None = None,
    no_sync: NoSync | None = None,
) -> torch.Tensor:
    """SAM over k micro-batches, equal to SAM on their concatenation (for a mean loss and equal sizes).

    g_asc = (1/k) Σ_j ∇L_j(w);  w̃ = w + ρ g_asc/‖g_asc‖;  g = (1/k) Σ_j ∇L_j(w̃);  base step with g at w.

    ``loss_fn(mb)`` returns the loss of micro-batch ``mb`` (a tensor) and does **not** call backward: unlike
    ``SAM.step``'s closure, the helper calls backward itself (through ``scaler`` if given), twice per
    micro-batch. ``no_sync`` (e.g. a DDP model's ``no_sync``) wraps the ascent passes and all descent passes
    but the last, so each worker perturbs with its own gradient and the descent gradient is all-reduced once.
    Returns the mean loss at w.
    """
    return _loop(sam, loss_fn, micro_batches, msharpness=False, scaler=scaler, no_sync=no_sync)


def sam_step_msharpness(
    sam: SAM,
    loss_fn: LossFn,
    chunks: Sequence[Any],
    *,
    scaler: torch.amp.GradScaler | None = None,
    no_sync: NoSync | None = None,
) -> torch.Tensor:
    """m-sharpness (eq. (38a–c)) with m = len(chunks): each chunk climbs with its own gradient
    w̃_i = w + ρ g_i(w)/‖g_i(w)‖, the base optimizer steps with (1/m) Σ_i g_i(w̃_i) at w.

    ``loss_fn`` as for ``sam_step_accumulated`` (returns the loss, no backward). The chunks' descent
    gradients accumulate in ``.grad`` while each ascent gradient is computed on its own (the accumulated
    gradients are stashed meanwhile; both passes of a chunk back-propagate L_i/m, as in the Trainer's loop,
    and e is invariant to that scale). An overflow in any pass skips the step. Returns the mean loss at w.
    """
    return _loop(sam, loss_fn, chunks, msharpness=True, scaler=scaler, no_sync=no_sync)


def _loop(
    sam: SAM,
    loss_fn: LossFn,
    batches: Sequence[Any],
    *,
    msharpness: bool,
    scaler: torch.amp.GradScaler | None,
    no_sync: NoSync | None,
) -> torch.Tensor:
    """One SAM step over ``batches``: ``sam_micro_batch`` for each, as the Trainer's loop feeds them (its sync
    context: ``no_sync`` on every micro-batch but the last), then the base step. Stops at an overflow."""
    k = _check_batches(batches)
    no_sync = no_sync or nullcontext
    pending: list[Any] = []
    sam.zero_grad()
    loss: Any = 0
    for j, batch in enumerate(batches):
        last = j == k - 1

        def run_pass(micro: Any, local: bool, last: bool = last) -> torch.Tensor:  # this micro-batch's `last`
            with no_sync() if local or not last else nullcontext():
                return _backward_of(loss_fn, micro, k, scaler)

        loss = loss + sam_micro_batch(
            batch,
            pending,
            run_pass=run_pass,
            params=sam._params(),
            climb=sam.first_step,
            restore=sam.restore,
            msharpness=msharpness,
            last=last,
            scaled=scaler is not None,
        )
        if sam._overflow:
            break
    sam.second_step(scaler=scaler)
    out: torch.Tensor = loss
    return out


def _check_batches(batches: Sequence[Any]) -> int:
    if len(batches) == 0:
        raise ValueError("need at least one micro-batch/chunk, got an empty sequence")
    return len(batches)


def _backward_of(loss_fn: LossFn, batch: Any, k: int, scaler: torch.amp.GradScaler | None) -> torch.Tensor:
    """backward of ``loss_fn(batch) / k``; returns that (detached) value. Refuses, with the contract, a loss_fn
    that returns no tensor or has already called backward itself."""
    loss = loss_fn(batch)
    if not isinstance(loss, torch.Tensor):
        raise TypeError(
            f"loss_fn must return the loss as a tensor (and not call backward: the helper does), got "
            f"{type(loss).__name__}"
        )
    try:
        return backward(loss / k, scaler)
    except RuntimeError as exc:
        if "second time" not in str(exc):
            raise
        raise RuntimeError(
            "loss_fn must return the loss without calling backward itself: the SAM helpers call "
            "backward on it (SAM.step's closure is the one that calls backward)"
        ) from exc
