"""SAM and BAR inside the Hugging Face ``Trainer``, keeping its optimizer, scheduler, AMP, gradient
accumulation, DDP and checkpointing machinery.

``SAMTrainer`` overrides ``training_step``: ascent backward (under ``no_sync``, so under DDP every worker
perturbs with its *own* gradient), climb to w + e (spec Alg. 1 line 5 / eq. (22a), global norm), descent
backward at w + e, restore w. The Trainer's own ``optimizer.step()`` then applies the descent gradient at w
(line 6). Two semantics for gradient accumulation over k micro-batches:

* ``msharpness=False`` (default), exact accumulation: the ascent gradients of the k micro-batches
  accumulate, the point is perturbed once with their average, and the k descent passes run in the last
  micro-batch's ``training_step`` (the inputs of the earlier ones are kept until then). Same update as SAM
  on the concatenated batch; 2k forward/backward passes per optimizer step.
* ``msharpness=True``: every micro-batch is one m-sharpness chunk (eq. (38a–c)), m = accumulation steps.

Under DDP there is always additionally one chunk per worker (each worker's ascent is local).

``BARTrainer`` lets the Trainer build its optimizer as usual (AdamW with its weight-decay groups, ...) and
turns it into the BAR subclass (spec Algs. 2/3); T for linear/cosine μ-schedules is the Trainer's number of
training steps.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
from torch import nn
from transformers import Trainer

from balancedness.finetune.amp import poison_grads_
from balancedness.finetune.bar import BAROptimizerMixin, attach_bar, check_bar_args
from balancedness.finetune.sam import check_rho, climb_, restore_, stash_grads, unstash_grads
from balancedness.finetune.schedules import check_schedule

__all__ = ["SAMTrainer", "BARTrainer"]


class SAMTrainer(Trainer):
    """``Trainer`` with SAM (``rho``, ``adaptive`` = ASAM) and optional m-sharpness over micro-batches.

    The logged training loss is the loss at w (the ascent pass), normalized as the Trainer does.
    """

    def __init__(self, *args: Any, rho: float = 0.05, adaptive: bool = False, msharpness: bool = False,
                 **kwargs: Any) -> None:
        check_rho(rho, adaptive)
        if not isinstance(msharpness, bool):
            raise TypeError(f"msharpness must be a bool, got {msharpness!r}")
        super().__init__(*args, **kwargs)
        self.sam_rho, self.sam_adaptive, self.sam_msharpness = float(rho), adaptive, msharpness
        self._sam_pending: list[tuple[dict[str, Any], Any]] = []

    def training_step(self, model: nn.Module, inputs: dict[str, Any],
                      num_items_in_batch: torch.Tensor | int | None = None) -> torch.Tensor:
        params = [p for p in model.parameters() if p.requires_grad]
        if self.sam_msharpness:
            return self._chunk_step(model, inputs, num_items_in_batch, params)
        return self._accumulated_step(model, inputs, num_items_in_batch, params)

    def _pass(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any, local: bool) -> torch.Tensor:
        """One forward/backward by the Trainer's own ``training_step``; ``local`` skips the DDP all-reduce."""
        with self.accelerator.no_sync(model) if local else nullcontext():
            return super().training_step(model, inputs, num_items_in_batch)

    def _overflowed(self, params: list[nn.Parameter]) -> None:
        """Ascent overflow: with a GradScaler make it skip the whole step; otherwise descend at w."""
        if self.accelerator.scaler is not None:
            poison_grads_(params)

    def _chunk_step(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any,
                    params: list[nn.Parameter]) -> torch.Tensor:
        saved = stash_grads(params)  # descent gradients of earlier chunks
        loss = self._pass(model, inputs, num_items_in_batch, local=True)
        climbed = climb_(params, self.sam_rho, self.sam_adaptive)
        unstash_grads(params, saved)
        if climbed is None:
            self._overflowed(params)
            return loss
        try:
            super().training_step(model, inputs, num_items_in_batch)  # in the Trainer's own sync context
        finally:
            restore_(*climbed)
        return loss

    def _accumulated_step(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any,
                          params: list[nn.Parameter]) -> torch.Tensor:
        loss = self._pass(model, inputs, num_items_in_batch, local=True)  # ascent gradients accumulate
        self._sam_pending.append((inputs, num_items_in_batch))
        if not self.accelerator.sync_gradients:  # not yet the last micro-batch of this optimizer step
            return loss
        pending, self._sam_pending = self._sam_pending, []
        climbed = climb_(params, self.sam_rho, self.sam_adaptive)
        if climbed is None:
            self._overflowed(params)
            return loss
        for p in params:
            p.grad = None
        try:
            for j, (micro_inputs, n_items) in enumerate(pending):
                self._pass(model, micro_inputs, n_items, local=j < len(pending) - 1)
        finally:
            restore_(*climbed)
        return loss


def _unwrap(optimizer: Any) -> Any:
    """The user-level optimizer inside accelerate's ``AcceleratedOptimizer``."""
    while hasattr(optimizer, "optimizer") and not isinstance(optimizer, BAROptimizerMixin):
        optimizer = optimizer.optimizer
    return optimizer


class BARTrainer(Trainer):
    """``Trainer`` whose self-built optimizer gets BAR (spec Algs. 2/3) in front of its step.

    Extra args: ``bar_mu`` (μ₀ ≥ 0), ``bar_variant`` (``"nbar"``/``"obar"``), ``bar_schedule``
    (``"constant"``/``"linear"``/``"cosine"``, T = the Trainer's total number of optimizer steps).
    """

    def __init__(self, *args: Any, bar_mu: float, bar_variant: str = "nbar", bar_schedule: str = "constant",
                 **kwargs: Any) -> None:
        check_bar_args(bar_mu, bar_variant, "constant", None)
        check_schedule(bar_schedule, 1)
        super().__init__(*args, **kwargs)
        self.bar_mu, self.bar_variant, self.bar_schedule = float(bar_mu), bar_variant, bar_schedule

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        optimizer = super().create_optimizer(model)
        if not isinstance(_unwrap(optimizer), BAROptimizerMixin):
            attach_bar(_unwrap(optimizer), self.model, mu=self.bar_mu, variant=self.bar_variant,
                       schedule=self.bar_schedule, total_steps=None)
        return optimizer

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None) -> Any:
        bar = _unwrap(optimizer if optimizer is not None else self.optimizer)
        if isinstance(bar, BAROptimizerMixin) and bar.bar_total_steps is None:
            bar.bar_total_steps = int(num_training_steps)
        return super().create_scheduler(num_training_steps, optimizer)
