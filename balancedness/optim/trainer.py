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

Under DDP there is always additionally one chunk per worker (each worker's ascent is local). The ordering of
the passes is ``microbatch.sam_micro_batch``, which ``sam_backward`` shares for accelerate loops.

``BARTrainer`` builds its optimizer with ``create_bar_optimizer`` (spec Algs. 2/3) from the Trainer's own
optimizer class and keyword arguments (``args.optim``, lr, betas, ...) and its usual decay/no-decay parameter
groups, and the μ schedule's ``BARScheduler`` next to the LR scheduler, with the same T (the Trainer's number
of training steps).

Both link every ``BalancednessCallback`` to themselves when training starts, so that its values go through
``Trainer.log`` into ``log_history``, ``trainer_state.json`` and the ``report_to`` integrations.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
from torch import nn
from transformers import Trainer

from balancedness.optim.bar import BAROptimizerMixin, check_bar_args, create_bar_optimizer
from balancedness.optim.callbacks import BalancednessCallback
from balancedness.optim.groups import decay_groups
from balancedness.optim.microbatch import sam_micro_batch
from balancedness.optim.sam import SAM, Perturbation, check_sam_args
from balancedness.optim.schedules import BARScheduler
from balancedness.validation import boolean

__all__ = ["LoRATrainer", "SAMTrainer", "BARTrainer"]


class LoRATrainer(Trainer):
    """The common base of the LoRA Trainers (SAM, BAR, Flat-LoRA, Bi-LoRA): every ``BalancednessCallback`` of the
    Trainer is linked to it when training starts, so that its values go through ``Trainer.log`` (``log_history``,
    ``trainer_state.json``, ``report_to``)."""

    def train(self, *args: Any, **kwargs: Any) -> Any:
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, BalancednessCallback):
                callback.trainer = self
        return super().train(*args, **kwargs)

    def _trained_model(self) -> nn.Module:
        """``self.model``; a RuntimeError where there is none yet."""
        if self.model is None:
            raise RuntimeError(f"{type(self).__name__} has no model (give the Trainer model= or model_init=)")
        return self.model


class SAMTrainer(LoRATrainer):
    """``Trainer`` with SAM (``rho``, ``adaptive`` = ASAM) and optional m-sharpness over micro-batches.

    The logged training loss is the loss at w (the ascent pass), normalized as the Trainer does. The optimizer
    is the Trainer's own (``args.optim``, ``optimizers=``, ``optimizer_cls_and_kwargs``): SAM is in the
    training step, so a ``SAM`` optimizer is refused.
    """

    def __init__(
        self, *args: Any, rho: float = 0.05, adaptive: bool = False, msharpness: bool = False, **kwargs: Any
    ) -> None:
        rho, adaptive = check_sam_args(rho, adaptive)
        msharpness = boolean("msharpness", msharpness)
        optimizer = (kwargs.get("optimizers") or (None, None))[0]
        cls = (kwargs.get("optimizer_cls_and_kwargs") or (None, None))[0]
        if isinstance(_unwrap(optimizer), SAM) or (isinstance(cls, type) and issubclass(cls, SAM)):
            raise TypeError(
                "SAMTrainer runs SAM's two passes itself, around the Trainer's optimizer: give it the "
                "base optimizer (e.g. AdamW, or nothing for args.optim), not a SAM optimizer"
            )
        super().__init__(*args, **kwargs)
        self.sam_rho, self.sam_adaptive, self.sam_msharpness = rho, adaptive, msharpness
        self._sam_pending: list[tuple[dict[str, Any], Any]] = []

    def train(self, *args: Any, **kwargs: Any) -> Any:
        self._sam_pending.clear()  # micro-batches left by an interrupted accumulation
        return super().train(*args, **kwargs)

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        params = [p for p in model.parameters() if p.requires_grad]
        perturbation = Perturbation(params, self.sam_rho, self.sam_adaptive)

        def run_pass(item: tuple[dict[str, Any], Any], local: bool) -> torch.Tensor:
            """One forward/backward by the Trainer's own ``training_step``; ``local`` skips the DDP all-reduce."""
            with self.accelerator.no_sync(model) if local else nullcontext():
                return super(SAMTrainer, self).training_step(model, *item)

        return sam_micro_batch(
            (inputs, num_items_in_batch),
            self._sam_pending,
            run_pass=run_pass,
            params=params,
            climb=perturbation.climb,
            restore=perturbation.restore,
            msharpness=self.sam_msharpness,
            last=self.accelerator.sync_gradients,
            scaled=self.accelerator.scaler is not None,
        )


def _unwrap(optimizer: Any) -> Any:
    """The user-level optimizer inside accelerate's ``AcceleratedOptimizer``."""
    while hasattr(optimizer, "optimizer") and not isinstance(optimizer, BAROptimizerMixin):
        optimizer = optimizer.optimizer
    return optimizer


NO_DEFAULT_BAR_MU = (
    "BARTrainer needs bar_mu=μ₀, the BAR coefficient (spec Algs. 2/3), and has no default: each step rescales "
    "a LoRA pair by 1 ± μ·lr, so a good μ₀ depends on the learning rate and the model, as peft's LoRA+ asks "
    "for loraplus_lr_ratio. Try bar_mu=0.5 (the finetune command's default --mu; the paper's grid is 0.5, 1, 2)"
)


class BARTrainer(LoRATrainer):
    """``Trainer`` whose optimizer is BAR (spec Algs. 2/3) over the Trainer's own optimizer class.

    Extra args: ``bar_mu`` (μ₀ ≥ 0, required: ``NO_DEFAULT_BAR_MU`` says why), ``bar_variant`` (``"nbar"``/``"obar"``),
    ``bar_schedule`` (``"constant"``/``"linear"``/``"cosine"``, T = the Trainer's total number of optimizer steps).

    ``create_optimizer`` calls ``create_bar_optimizer`` with the class and kwargs of
    ``get_optimizer_cls_and_kwargs(args)`` (or the ``optimizer_cls_and_kwargs`` given to the Trainer), the
    learning rate of ``args``, and the Trainer's two groups: ``args.weight_decay`` for
    ``get_decay_parameter_names(model)``, 0 for the rest; its μ schedule awaits T. ``create_scheduler`` creates,
    next to the LR scheduler and with the same T, the μ schedule's ``BARScheduler``; for an optimizer that has
    a T already it checks that the two agree. t and T travel in the optimizer's state, so a checkpoint resumes
    them. An optimizer passed in through ``optimizers=(...)`` must already be a BAR optimizer.
    """

    def __init__(
        self,
        *args: Any,
        bar_mu: float | None = None,
        bar_variant: str = "nbar",
        bar_schedule: str = "constant",
        **kwargs: Any,
    ) -> None:
        if bar_mu is None:
            raise TypeError(NO_DEFAULT_BAR_MU)
        self.bar_mu, self.bar_variant, self.bar_schedule = check_bar_args(
            bar_mu, bar_variant, bar_schedule, prefix="bar_"
        )
        super().__init__(*args, **kwargs)
        if self.optimizer is not None and not isinstance(_unwrap(self.optimizer), BAROptimizerMixin):
            raise TypeError(
                f"BARTrainer got optimizers=({type(self.optimizer).__name__}, ...), which is not a BAR optimizer: "
                "leave it out (BARTrainer builds one) or pass create_bar_optimizer(...)"
            )

    def create_optimizer_and_scheduler(self, num_training_steps: int) -> None:
        if self.optimizer is None:  # T comes with the scheduler, next
            self.optimizer = self._bar_optimizer(self._trained_model())
        super().create_optimizer_and_scheduler(num_training_steps)

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            if self.bar_schedule != "constant" and not self.state.max_steps:
                raise RuntimeError(
                    f"BARTrainer needs T, the number of training steps, for bar_schedule={self.bar_schedule!r}, and "
                    "learns it in train() or create_optimizer_and_scheduler(num_training_steps); a bare "
                    "create_optimizer() call does not know it"
                )
            self.optimizer = self._bar_optimizer(self._trained_model() if model is None else model)
        return super().create_optimizer(model)

    def _bar_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        if self.optimizer_cls_and_kwargs is not None:
            optimizer_cls, optimizer_kwargs = self.optimizer_cls_and_kwargs
        else:
            # a peft model is an nn.Module; transformers annotates the argument as PreTrainedModel
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)  # type: ignore[arg-type]
        optimizer_kwargs = dict(optimizer_kwargs)
        special = sorted({"params", "model", "optimizer_dict"} & optimizer_kwargs.keys())
        if special:
            raise ValueError(
                f"BARTrainer cannot use optim={self.args.optim!r}: it builds its own parameter list "
                f"({', '.join(special)}); choose a plain torch optimizer such as 'adamw_torch'"
            )
        groups = decay_groups(model, self.args.weight_decay, self.get_decay_parameter_names(model))
        return create_bar_optimizer(
            model,
            optimizer_cls,
            params=groups,
            lr=optimizer_kwargs.pop("lr", self.args.learning_rate),
            mu=self.bar_mu,
            variant=self.bar_variant,
            schedule=self.bar_schedule,
            total_steps="scheduler",
            **optimizer_kwargs,
        )

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None) -> Any:
        bar = _unwrap(optimizer if optimizer is not None else self.optimizer)
        if isinstance(bar, BAROptimizerMixin):
            mu_schedule = bar.bar_scheduler
            if mu_schedule.awaits_total_steps:
                BARScheduler(bar, mu_schedule.schedule, total_steps=num_training_steps)
            elif mu_schedule.schedule != "constant" and mu_schedule.total_steps != num_training_steps:
                raise ValueError(
                    f"the BAR optimizer's μ schedule runs over total_steps={mu_schedule.total_steps} but the "
                    f"Trainer schedules {num_training_steps} training steps; they must agree"
                )
        return super().create_scheduler(num_training_steps, optimizer)
