"""SAM (spec §2.1, Alg. 1) as a torch optimizer wrapping any base optimizer, after davda54/sam.

    first_step:   w ← w + e(w),   e = ρ g/‖g‖                 (Alg. 1 line 5; eq. (4a), (22a))
                                  e = ρ w² ⊙ g/‖|w| ⊙ g‖       (ASAM, ``adaptive=True``)
    second_step:  w ← w (restored), then the base optimizer steps with g(w + e)   (line 6; (4c), (22c))

‖g‖ is the *global* norm over all parameters of the optimizer (u_t of eq. (22a), spec §2.7). A zero
gradient gives e = 0 (never NaN). The same minibatch must be used for both gradients (spec §2.1).

Helpers for several micro-batches:

* ``sam_step_accumulated``: exact gradient accumulation. The ascent gradient is the average of the k
  micro-batch gradients at w, the point is perturbed once, and the descent gradient is the average of the
  k micro-batch gradients at w + e: the same update as SAM on the concatenated batch.
* ``sam_step_msharpness``: m-sharpness (eq. (38a–c)): chunk i perturbs with its own gradient,
  w̃_i = w + ρ g_i/‖g_i‖, and the descent gradients g_i(w̃_i) are averaged.

Mixed precision: pass ``scaler=`` (a ``torch.amp.GradScaler``) to ``step``/``second_step``/the helpers and
scale every backward with it (the helpers do). See ``amp.py`` for why no explicit unscale is needed before
the perturbation, and how an overflow in either pass skips the whole step.

Loops that hand over one micro-batch at a time (the HF Trainer, ``accelerate``) are served by
``microbatch.py``; ``step(closure)`` needs every micro-batch at once and is refused under accelerate.
"""

from __future__ import annotations

import sys
from contextlib import nullcontext
from typing import Any, Callable, ContextManager, Iterable, Sequence

import torch
from torch import nn
from torch.optim import Optimizer

from balancedness.optim.amp import backward, poison_grads_
from balancedness.optim.pairs import compute_dtype, norms
from balancedness.validation import boolean, number

__all__ = ["SAM", "Perturbation", "check_sam_args", "climb_", "restore_", "stash_grads", "unstash_grads",
           "sam_step_accumulated", "sam_step_msharpness"]

Backups = list[torch.Tensor]


def check_sam_args(rho: float, adaptive: bool = False) -> tuple[float, bool]:
    """(ρ, adaptive) validated: ρ finite and ≥ 0, ``adaptive`` a bool."""
    return number("rho", rho), boolean("adaptive", adaptive)


@torch.no_grad()
def climb_(params: Iterable[nn.Parameter], rho: float, adaptive: bool = False) -> tuple[list[nn.Parameter], Backups] | None:
    """w ← w + e(w) for every parameter with a gradient (module docstring), in ≥ fp32.

    Returns (the perturbed parameters, copies of their values at w) for ``restore_``; or None, with nothing
    changed, when the global gradient norm is inf/NaN (an fp16 overflow).
    """
    params = [p for p in params if p.grad is not None]
    if not params:
        return [], []
    dtype = compute_dtype(params)
    grads = [p.grad.to(dtype) for p in params]
    if adaptive:
        grads = torch._foreach_mul(torch._foreach_abs([p.to(dtype) for p in params]), grads)  # |w| ⊙ g
    grad_norm = torch.linalg.vector_norm(norms(grads, dtype))
    if not torch.isfinite(grad_norm):  # the one host sync of a SAM step
        return None
    coef = torch.where(grad_norm > 0, rho / grad_norm, torch.zeros_like(grad_norm))
    step = torch._foreach_mul(grads, coef)  # ρ g/‖g‖, or ρ |w|⊙g/‖|w|⊙g‖ ...
    if adaptive:
        step = torch._foreach_mul(step, torch._foreach_abs([p.to(dtype) for p in params]))  # ... ⊙ |w|
    backups = [p.detach().clone() for p in params]
    for p, e in zip(params, step):
        p.add_(e)
    return params, backups


@torch.no_grad()
def restore_(params: Sequence[nn.Parameter], backups: Backups) -> None:
    """w + e → w, bit-exactly (copies back the saved values)."""
    for p, b in zip(params, backups):
        p.copy_(b)


class Perturbation:
    """w ↔ w + e(w) on a fixed parameter list: ``climb()`` (``climb_``; False, nothing changed, on an overflow)
    and ``restore()`` (``restore_``; a no-op when not climbed)."""

    def __init__(self, params: Iterable[nn.Parameter], rho: float, adaptive: bool = False) -> None:
        self.params, self.rho, self.adaptive = list(params), rho, adaptive
        self._climbed: tuple[list[nn.Parameter], Backups] | None = None

    @property
    def climbed(self) -> bool:
        """Whether the parameters are at w + e now."""
        return self._climbed is not None

    def climb(self) -> bool:
        self._climbed = climb_(self.params, self.rho, self.adaptive)
        return self._climbed is not None

    def restore(self) -> None:
        if self._climbed is not None:
            restore_(*self._climbed)
            self._climbed = None


def stash_grads(params: Sequence[nn.Parameter]) -> list[torch.Tensor | None]:
    """Detach the current ``.grad``s (e.g. accumulated descent gradients) and leave ``None`` in place."""
    saved = [p.grad for p in params]
    for p in params:
        p.grad = None
    return saved


def unstash_grads(params: Sequence[nn.Parameter], saved: Sequence[torch.Tensor | None]) -> None:
    """Put stashed gradients back (discarding whatever ``.grad`` holds now)."""
    for p, g in zip(params, saved):
        p.grad = g


class SAM(Optimizer):
    """Sharpness-Aware Minimization around ``base_optimizer_cls`` (Foret et al. 2021; spec Alg. 1).

    Args:
        params: parameters or param groups, as for any optimizer.
        base_optimizer_cls: e.g. ``torch.optim.SGD``/``AdamW``; built on the same param groups, so LR
            schedulers attached to the SAM instance drive the base optimizer.
        rho: the radius ρ ≥ 0 (ρ = 0 is the base optimizer).
        adaptive: ASAM's scale-invariant perturbation (Kwon et al. 2021).
        **base_kwargs: passed to ``base_optimizer_cls`` (``lr``, ``momentum``, ...).

    Use either ``step(closure)`` — the closure zeroes nothing, computes the loss, calls backward (through
    the scaler if any: ``scaler.scale(loss).backward()``) and returns the loss; it is called twice — or
    the explicit two halves, davda54-style::

        loss_fn(batch).backward(); sam.first_step(zero_grad=True)
        loss_fn(batch).backward(); sam.second_step(zero_grad=True)

    ``step()`` without a closure is ``second_step()`` after a ``first_step()`` (what a wrapper such as
    accelerate's calls after ``microbatch.sam_backward``); without a pending ``first_step()`` it raises.
    """

    def __init__(self, params: Any, base_optimizer_cls: type[Optimizer], *, rho: float, adaptive: bool = False,
                 **base_kwargs: Any) -> None:
        rho, adaptive = check_sam_args(rho, adaptive)
        if not (isinstance(base_optimizer_cls, type) and issubclass(base_optimizer_cls, Optimizer)):
            raise TypeError(f"base_optimizer_cls must be a torch.optim.Optimizer subclass, got {base_optimizer_cls!r}")
        super().__init__(params, dict(rho=rho, adaptive=adaptive, **base_kwargs))
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
        """Climb to w + e(w) with the current gradients. Returns False (and changes nothing) on an overflow:
        the step is then skipped by ``second_step`` and the descent pass may be left out."""
        if self._perturbation is not None and self._perturbation.climbed:
            raise RuntimeError("SAM.first_step() was called while the weights are still at w + e: call "
                               "second_step() (or restore()) before climbing again")
        self._perturbation = Perturbation(self._params(), self.rho, self.adaptive)
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
            raise RuntimeError("SAM.second_step() needs a preceding first_step(): compute the gradient at w, call "
                               "first_step() to climb to w + e, compute the gradient there, then second_step()")
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

    def step(self, closure: Callable[[], torch.Tensor] | None = None, *,
             scaler: torch.amp.GradScaler | None = None) -> torch.Tensor | None:
        """One SAM step: ascent pass, climb, descent pass, restore, base step. Returns the loss at w.

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
        if _stepped_by_accelerate():
            raise RuntimeError(
                "SAM.step(closure) was called through accelerate's AcceleratedOptimizer, which skips step() on "
                "gradient-accumulation micro-batches (their data would never reach the update) and cannot run a "
                "closure under a GradScaler: call balancedness.optim.sam_backward(accelerator, model, optimizer, "
                "batch) inside accelerator.accumulate(model), then optimizer.step() (docs/torch-backend.md)"
            )
        self.zero_grad()
        with torch.enable_grad():
            loss = closure()
        if self.first_step(zero_grad=True):
            with torch.enable_grad():
                closure()
        self.second_step(scaler=scaler)
        return loss

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state dict (SAM's own state, w during a step, is transient)."""
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups


def _stepped_by_accelerate() -> bool:
    """Whether ``SAM.step`` was called by accelerate (its ``AcceleratedOptimizer.step``), looking past torch's
    own wrappers of ``step`` (profiling hooks, LR-scheduler counters)."""
    frame = sys._getframe(2)  # 0: here, 1: SAM.step, 2: its caller
    while frame is not None and frame.f_globals.get("__name__", "").split(".")[0] == "torch":
        frame = frame.f_back
    return frame is not None and frame.f_globals.get("__name__", "").split(".")[0] == "accelerate"


LossFn = Callable[[Any], torch.Tensor]
NoSync = Callable[[], ContextManager[Any]]


def sam_step_accumulated(sam: SAM, loss_fn: LossFn, micro_batches: Sequence[Any], *,
                         scaler: torch.amp.GradScaler | None = None,
                         no_sync: NoSync | None = None) -> torch.Tensor:
    """SAM over k micro-batches, equal to SAM on their concatenation (for a mean loss and equal sizes).

    g_asc = (1/k) Σ_j ∇L_j(w);  w̃ = w + ρ g_asc/‖g_asc‖;  g = (1/k) Σ_j ∇L_j(w̃);  base step with g at w.

    ``loss_fn(mb)`` returns the loss of micro-batch ``mb`` (a tensor) and does **not** call backward: unlike
    ``SAM.step``'s closure, the helper calls backward itself (through ``scaler`` if given), twice per
    micro-batch. ``no_sync`` (e.g. a DDP model's ``no_sync``) wraps the ascent passes and all descent passes
    but the last, so each worker perturbs with its own gradient and the descent gradient is all-reduced once.
    Returns the mean loss at w.
    """
    k = _check_batches(micro_batches)
    no_sync = no_sync or nullcontext
    sam.zero_grad()
    with no_sync():
        loss = sum(_backward_of(loss_fn, mb, k, scaler) for mb in micro_batches)
    if sam.first_step(zero_grad=True):
        for j, mb in enumerate(micro_batches):
            with (no_sync() if j < k - 1 else nullcontext()):
                _backward_of(loss_fn, mb, k, scaler)
    sam.second_step(scaler=scaler)
    return loss


def sam_step_msharpness(sam: SAM, loss_fn: LossFn, chunks: Sequence[Any], *,
                        scaler: torch.amp.GradScaler | None = None,
                        no_sync: NoSync | None = None) -> torch.Tensor:
    """m-sharpness (eq. (38a–c)) with m = len(chunks): each chunk climbs with its own gradient
    w̃_i = w + ρ g_i(w)/‖g_i(w)‖, the base optimizer steps with (1/m) Σ_i g_i(w̃_i) at w.

    ``loss_fn`` as for ``sam_step_accumulated`` (returns the loss, no backward). The chunks' descent
    gradients accumulate in ``.grad`` while each ascent gradient is computed on its own (the accumulated
    gradients are stashed meanwhile). An overflow in any pass skips the step. Returns the mean loss at w.
    """
    m = _check_batches(chunks)
    no_sync = no_sync or nullcontext
    params = sam._params()
    sam.zero_grad()
    loss: Any = 0.0
    for i, chunk in enumerate(chunks):
        saved = stash_grads(params)
        with no_sync():
            loss = loss + _backward_of(loss_fn, chunk, 1, scaler) / m
        climbed = sam.first_step()
        unstash_grads(params, saved)
        if not climbed:
            break
        with (no_sync() if i < m - 1 else nullcontext()):
            _backward_of(loss_fn, chunk, m, scaler)
        sam.restore()
    sam.second_step(scaler=scaler)
    return loss


def _check_batches(batches: Sequence[Any]) -> int:
    if len(batches) == 0:
        raise ValueError("need at least one micro-batch/chunk, got an empty sequence")
    return len(batches)


def _backward_of(loss_fn: LossFn, batch: Any, k: int, scaler: torch.amp.GradScaler | None) -> torch.Tensor:
    """backward of ``loss_fn(batch) / k``; returns that (detached) value. Refuses, with the contract, a loss_fn
    that returns no tensor or has already called backward itself."""
    loss = loss_fn(batch)
    if not isinstance(loss, torch.Tensor):
        raise TypeError(f"loss_fn must return the loss as a tensor (and not call backward: the helper does), got "
                        f"{type(loss).__name__}")
    try:
        return backward(loss / k, scaler)
    except RuntimeError as exc:
        if "second time" not in str(exc):
            raise
        raise RuntimeError("loss_fn must return the loss without calling backward itself: the SAM helpers call "
                           "backward on it (SAM.step's closure is the one that calls backward)") from exc
