"""BAR: Balancedness-Aware Regularization (spec §4, Algorithms 2 and 3), as a peft-style optimizer factory.

Each step, for every LoRA pair (A_l, B_l) independently (spec §4.5.6), with the gradients at the current,
unscaled point (spec §4.5.1) and η_t the current lr of the parameter's group (spec §4.5.2):

    nBAR (Alg. 2): if ‖g_A‖ ≥ ‖g_B‖:  A ← (1 + μ_t η_t) A,  B ← (1 − μ_t η_t) B;  else the reverse.
    oBAR (Alg. 3): if ‖A‖ ≥ ‖B‖:      A ← (1 − μ_t η_t) A,  B ← (1 + μ_t η_t) B;  else the reverse.

then the base optimizer steps with the same (line-3) gradients. With an SGD base this is exactly
x_{t+1} = (1 ± μ_t η_t) x_t − η_t g(x_t) (spec §4.5.1). μ_t follows ``schedules.py``.

The rescaling is decoupled, like AdamW's weight decay ``p.mul_(1 − lr·wd)``: it does **not** touch the base
optimizer's state (Adam's moments m, v are estimates of gradient statistics, which Algs. 2/3 leave to
"Optimizer update (via Adam or SGD)"). Norms and factors are computed in fp32 (fp64 for fp64 parameters)
and cast back. The decision uses no host synchronisation; when any LoRA gradient norm is inf/NaN (an fp16
overflow that GradScaler is about to skip) the nBAR rescaling of that step is skipped as well.
"""

from __future__ import annotations

import functools
import numbers
from typing import Any, Callable

import torch
from torch import nn
from torch.optim import Optimizer

from balancedness.finetune.pairs import LoraPair, compute_dtype, lora_pairs, norms
from balancedness.finetune.schedules import check_schedule, scheduled_mu

__all__ = ["VARIANTS", "BAROptimizerMixin", "bar_optimizer_class", "create_bar_optimizer", "add_bar", "attach_bar"]

VARIANTS = ("nbar", "obar")


def check_bar_args(mu: float, variant: str, schedule: str, total_steps: int | None) -> None:
    if isinstance(mu, bool) or not isinstance(mu, numbers.Real):
        raise TypeError(f"mu must be a real number, got {type(mu).__name__} {mu!r}")
    if not mu >= 0:
        raise ValueError(f"mu (the BAR coefficient μ₀) must be >= 0, got {mu!r}")
    if variant not in VARIANTS:
        raise ValueError(f"unknown BAR variant {variant!r}; expected one of {VARIANTS}")
    check_schedule(schedule, total_steps)


class BAROptimizerMixin:
    """Adds Alg. 2/3 in front of the base optimizer's ``step``. Mixed into a subclass of the user's class."""

    _bar_base_step: Callable[..., Any]

    def _bar_init(self, pairs: list[LoraPair], *, mu: float, variant: str, schedule: str,
                  total_steps: int | None) -> None:
        group_of = {id(p): i for i, g in enumerate(self.param_groups) for p in g["params"]}
        for pair in pairs:
            for factor in (pair.lora_A, pair.lora_B):
                if id(factor) not in group_of:
                    raise ValueError(f"LoRA factor of {pair.name!r} is not among this optimizer's parameters")
        self.bar_pairs = pairs
        self.bar_mu0 = float(mu)
        self.bar_variant = variant
        self.bar_schedule = schedule
        self.bar_total_steps = total_steps
        self.bar_step_count = 0  # t: BAR steps taken so far
        self._bar_group_of = group_of

    @property
    def bar_mu(self) -> float:
        """μ_t for the next step."""
        return scheduled_mu(self.bar_mu0, self.bar_schedule, self.bar_step_count, self.bar_total_steps)

    def step(self, closure: Callable[[], Any] | None = None, **kwargs: Any) -> Any:
        """Evaluate ``closure`` (if given) for the gradients, rescale the LoRA pairs, then the base step."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.bar_rescale_()
        out = self._bar_base_step(**kwargs)
        return loss if closure is not None else out

    @torch.no_grad()
    def bar_rescale_(self) -> None:
        """Lines 3–10 of Alg. 2/3 for every pair with gradients; advances t."""
        mu_t = self.bar_mu
        self.bar_step_count += 1
        pairs = [p for p in self.bar_pairs if p.lora_A.grad is not None and p.lora_B.grad is not None]
        if mu_t == 0.0 or not pairs:
            return
        a = [p.lora_A for p in pairs]
        b = [p.lora_B for p in pairs]
        dtype = compute_dtype(a + b)
        if self.bar_variant == "nbar":
            n_a, n_b = norms([p.grad for p in a], dtype), norms([p.grad for p in b], dtype)
            sign = torch.where(n_a >= n_b, 1.0, -1.0).to(dtype)  # +1: grow A, shrink B
            finite = torch.isfinite(n_a).all() & torch.isfinite(n_b).all()
            sign = sign * finite  # overflowed step: factors become exactly 1
        else:
            n_a, n_b = norms(a, dtype), norms(b, dtype)
            sign = torch.where(n_a >= n_b, -1.0, 1.0).to(dtype)  # −1: shrink A, grow B
        lr_a = self._bar_lrs(a, dtype, sign.device)
        lr_b = self._bar_lrs(b, dtype, sign.device)
        _scale_(a, 1.0 + mu_t * lr_a * sign)
        _scale_(b, 1.0 - mu_t * lr_b * sign)

    def _bar_lrs(self, params: list[nn.Parameter], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        lrs = [float(self.param_groups[self._bar_group_of[id(p)]]["lr"]) for p in params]
        return torch.tensor(lrs, dtype=dtype, device=device)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["bar"] = {"step": self.bar_step_count, "mu": self.bar_mu0, "variant": self.bar_variant,
                        "schedule": self.bar_schedule, "total_steps": self.bar_total_steps}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        bar = state_dict.pop("bar", None)
        super().load_state_dict(state_dict)
        if bar is not None:
            self.bar_step_count = int(bar["step"])
            if self.bar_total_steps is None:
                self.bar_total_steps = bar["total_steps"]


def _scale_(params: list[nn.Parameter], factors: torch.Tensor) -> None:
    """p_i ← factors_i · p_i, the product taken in ``factors.dtype`` and cast back to p_i's dtype."""
    same = [i for i, p in enumerate(params) if p.dtype == factors.dtype]
    if same:
        torch._foreach_mul_([params[i] for i in same], list(factors[same].unbind()))
    for i, p in enumerate(params):
        if p.dtype != factors.dtype:
            p.copy_(p.to(factors.dtype) * factors[i])


@functools.cache
def bar_optimizer_class(optimizer_cls: type[Optimizer]) -> type[Optimizer]:
    """The subclass ``BAR<optimizer_cls>`` of the user's optimizer class (cached: one per base class)."""
    if not (isinstance(optimizer_cls, type) and issubclass(optimizer_cls, Optimizer)):
        raise TypeError(f"optimizer_cls must be a torch.optim.Optimizer subclass, got {optimizer_cls!r}")
    if issubclass(optimizer_cls, BAROptimizerMixin):
        return optimizer_cls
    base_step = optimizer_cls.step
    if getattr(base_step, "hooked", False):  # skip torch's profiling wrapper: our own step carries it
        base_step = base_step.__wrapped__
    return type(f"BAR{optimizer_cls.__name__}", (BAROptimizerMixin, optimizer_cls),
                {"_bar_base_step": base_step, "__module__": __name__})


def create_bar_optimizer(
    model: nn.Module,
    optimizer_cls: type[Optimizer],
    *,
    lr: float,
    mu: float,
    variant: str = "nbar",
    schedule: str = "constant",
    total_steps: int | None = None,
    **optimizer_kwargs: Any,
) -> Optimizer:
    """Create a BAR optimizer (Li, Zhang, He, NeurIPS 2024, Algs. 2/3; arXiv 2410.14802).

    Args:
        model: a model with LoRA layers (e.g. a peft ``PeftModel``); all its trainable parameters are optimized,
            and BAR rescales each (lora_A, lora_B) pair found by ``lora_pairs``.
        optimizer_cls: the base optimizer class (``torch.optim.AdamW``, ``SGD``, ...).
        lr: the base learning rate η (> 0); BAR uses each group's *current* lr, so LR schedulers apply.
        mu: μ₀ ≥ 0, the BAR coefficient (the paper's α_t in Algs. 2/3, "μ₀" in its tables).
        variant: ``"nbar"`` (Alg. 2, decides on gradient norms) or ``"obar"`` (Alg. 3, on weight norms).
        schedule: ``"constant"``, ``"linear"`` or ``"cosine"`` decay of μ_t (spec §4.5.7).
        total_steps: T of the linear/cosine schedule (required for those).
        **optimizer_kwargs: passed to ``optimizer_cls`` (``weight_decay``, ``betas``, ...).

    Returns:
        an instance of ``BAR<optimizer_cls>``, a subclass of ``optimizer_cls``; its ``state_dict`` carries
        the schedule position t.
    """
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not lr > 0:
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    check_bar_args(mu, variant, schedule, total_steps)
    cls = bar_optimizer_class(optimizer_cls)
    pairs = lora_pairs(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = cls(params, lr=lr, **optimizer_kwargs)
    optimizer._bar_init(pairs, mu=mu, variant=variant, schedule=schedule, total_steps=total_steps)
    return optimizer


def add_bar(optimizer: Optimizer, model: nn.Module, *, mu: float, variant: str = "nbar",
            schedule: str = "constant", total_steps: int | None = None) -> Optimizer:
    """Turn an existing optimizer over ``model``'s parameters into its BAR subclass, in place.

    For optimizers built elsewhere (e.g. by the HF Trainer, see ``BARTrainer``). State and param groups are
    kept; only the class changes to ``bar_optimizer_class(type(optimizer))``.
    """
    check_bar_args(mu, variant, schedule, total_steps)
    return attach_bar(optimizer, model, mu=mu, variant=variant, schedule=schedule, total_steps=total_steps)


def attach_bar(optimizer: Optimizer, model: nn.Module, *, mu: float, variant: str, schedule: str,
               total_steps: int | None) -> Optimizer:
    """``add_bar`` without the check that T is known: for callers that set ``bar_total_steps`` later
    (``BARTrainer`` learns T only when the Trainer builds its scheduler)."""
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"add_bar expects a torch.optim.Optimizer, got {type(optimizer).__name__}")
    pairs = lora_pairs(model)
    optimizer.__class__ = bar_optimizer_class(type(optimizer))
    optimizer._patch_step_function()
    optimizer._bar_init(pairs, mu=mu, variant=variant, schedule=schedule, total_steps=total_steps)
    return optimizer
