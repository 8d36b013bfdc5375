"""SAM fed one micro-batch at a time: the gradient-accumulation loops of the HF Trainer and of accelerate.

Both loops run a training step per micro-batch and call the optimizer's ``step()`` after the k-th one
(accelerate skips ``step()`` and ``zero_grad()`` on the others). SAM (spec Alg. 1, eq. (22)) needs, per
optimizer step, either

* exact accumulation (default): the ascent passes of micro-batches 1..k at w accumulate in ``.grad``; at the
  k-th the point climbs once, w̃ = w + ρ g/‖g‖ with g = (1/k) Σ_j ∇L_j(w); the descent passes of all k
  micro-batches run at w̃ (the inputs of 1..k−1 are kept until then); w is restored. Same update as SAM on the
  concatenated batch (``sam.sam_step_accumulated``); or
* m-sharpness (eq. (38a–c), m = k): each micro-batch climbs with its *own* ascent gradient (the descent
  gradients accumulated so far are stashed meanwhile), runs its descent pass at w̃_i and restores
  (``sam.sam_step_msharpness``).

After the k-th call ``.grad`` holds the descent gradient (1/k) Σ_j ∇L_j(w̃(_j)), the weights are at w, and the
loop's own ``optimizer.step()`` applies it. Every ascent pass is local (``no_sync``: under DDP each worker
perturbs with its own gradient); the descent gradient is all-reduced once, by the last backward. An ascent
overflow (non-finite norm) leaves the weights alone; when a GradScaler will step, the gradients are
NaN-filled so that it skips the step and lowers the scale (``amp.py``).

``sam_micro_batch`` is SAM's only ordering of passes: ``SAMTrainer.training_step`` and ``sam_backward``
(accelerate) call it once per micro-batch of their loops; ``SAM.step(closure)``, ``sam_step_accumulated`` and
``sam_step_msharpness`` (``sam.py``) are short loops over it.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from balancedness.optim.amp import poison_grads_
from balancedness.validation import boolean

__all__ = ["RunPass", "sam_micro_batch", "sam_backward", "stash_grads", "unstash_grads"]

RunPass = Callable[[Any, bool], torch.Tensor]  # (micro-batch, local) -> its loss; local: no gradient all-reduce


def stash_grads(params: Sequence[nn.Parameter]) -> list[torch.Tensor | None]:
    """Detach the current ``.grad``s (e.g. accumulated descent gradients) and leave ``None`` in place."""
    saved = [p.grad for p in params]
    for p in params:
        p.grad = None
    return saved


def unstash_grads(params: Sequence[nn.Parameter], saved: Sequence[torch.Tensor | None]) -> None:
    """Put stashed gradients back (discarding whatever ``.grad`` holds now)."""
    for p, g in zip(params, saved, strict=True):
        p.grad = g


def sam_micro_batch(
    batch: Any,
    pending: list[Any],
    *,
    run_pass: RunPass,
    params: list[nn.Parameter],
    climb: Callable[[], bool],
    restore: Callable[[], None],
    msharpness: bool,
    last: bool,
    scaled: bool,
) -> torch.Tensor:
    """The passes of one micro-batch of a SAM step (module docstring). Returns its loss at w.

    ``run_pass(batch, local)`` runs one forward/backward; ``local=True`` must keep the gradient out of the DDP
    all-reduce (the descent passes of m-sharpness run with ``local=False`` in the loop's own sync context).
    ``pending`` holds the micro-batches of an unfinished exact step between calls; ``climb()`` perturbs with
    the current ``.grad`` (False on an overflow, nothing changed) and ``restore()`` returns to w; ``last``:
    this micro-batch closes the optimizer step; ``scaled``: a GradScaler will step (poison on overflow).
    """
    if msharpness:
        saved = stash_grads(params)  # the descent gradients of the earlier chunks
        loss = run_pass(batch, True)
        climbed = climb()
        unstash_grads(params, saved)
        if climbed:
            try:
                run_pass(batch, False)
            finally:
                restore()
        elif scaled:
            poison_grads_(params)
        return loss
    loss = run_pass(batch, True)  # ascent gradients accumulate
    pending.append(batch)
    if not last:
        return loss
    batches = pending[:]
    pending.clear()
    if not climb():
        if scaled:
            poison_grads_(params)
        return loss
    for p in params:
        p.grad = None
    try:
        for j, micro in enumerate(batches):
            run_pass(micro, j < len(batches) - 1)
    finally:
        restore()
    return loss


_PENDING: weakref.WeakKeyDictionary[Any, list[Any]] = weakref.WeakKeyDictionary()


def sam_backward(
    accelerator: Any,
    model: nn.Module,
    optimizer: Any,
    batch: Any,
    *,
    loss_fn: Callable[[Any], torch.Tensor] | None = None,
    msharpness: bool = False,
) -> torch.Tensor:
    """SAM's passes for one micro-batch of an ``accelerate`` loop: call it where a plain loop calls
    ``accelerator.backward(loss)``, inside ``accelerator.accumulate(model)``, then ``optimizer.step()`` as usual.

    Args:
        accelerator: the ``accelerate.Accelerator`` (its ``backward``, so gradient-accumulation scaling and a
            GradScaler apply; its ``no_sync``; ``sync_gradients`` says which micro-batch closes the step).
        model: the prepared model (for ``no_sync``).
        optimizer: the prepared ``SAM`` (accelerate's ``AcceleratedOptimizer`` around it) or the ``SAM`` itself.
        batch: this micro-batch.
        loss_fn: ``loss_fn(batch)`` returns the loss, without calling backward (default:
            ``model(**batch).loss``, a Hugging Face model's loss); called twice per micro-batch.
        msharpness: each micro-batch is one m-sharpness chunk (m = accumulation steps) instead of exact
            accumulation.

    Every micro-batch's data reaches the update: exact accumulation keeps micro-batches 1..k−1 until the
    k-th, where ``optimizer.step()`` (which accelerate runs only then) applies the descent gradient of all k.
    Returns this micro-batch's loss at w (detached, not divided by k).
    """
    sam = _unwrap_sam(optimizer)
    msharpness = boolean("msharpness", msharpness)
    loss_fn = loss_fn if loss_fn is not None else (lambda b: model(**b).loss)

    def run_pass(micro: Any, local: bool) -> torch.Tensor:
        with accelerator.no_sync(model) if local else nullcontext():
            loss = loss_fn(micro)
            accelerator.backward(loss)
        return loss.detach()

    params = [p for group in sam.param_groups for p in group["params"]]
    return sam_micro_batch(
        batch,
        _PENDING.setdefault(sam, []),
        run_pass=run_pass,
        params=params,
        climb=sam.first_step,
        restore=sam.restore,
        msharpness=msharpness,
        last=accelerator.sync_gradients,
        scaled=accelerator.scaler is not None,
    )


def _unwrap_sam(optimizer: Any) -> Any:
    """The ``SAM`` inside accelerate's ``AcceleratedOptimizer`` (which hides SAM's halves). Recognised by its
    two halves ``first_step``/``restore`` (this module sits below ``sam.py``, which runs its steps through it)."""
    sam = optimizer
    while not _is_sam(sam) and hasattr(sam, "optimizer"):
        sam = sam.optimizer
    if not _is_sam(sam):
        raise TypeError(
            f"sam_backward needs the SAM optimizer (as returned by accelerator.prepare(SAM(...))), got "
            f"{type(optimizer).__name__}"
        )
    return sam


def _is_sam(optimizer: Any) -> bool:
    return callable(getattr(optimizer, "first_step", None)) and callable(getattr(optimizer, "restore", None))
