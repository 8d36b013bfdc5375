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
import warnings
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn
from torch.optim import Optimizer

from balancedness.optim.groups import decay_groups
from balancedness.optim.pairs import LoraPair, compute_dtype, lora_pairs, norms
from balancedness.optim.schedules import check_schedule, check_total_steps, scheduled_mu, scheduler_total_steps
from balancedness.validation import choice, number

__all__ = ["VARIANTS", "BAROptimizerMixin", "bar_optimizer_class", "check_bar_args", "create_bar_optimizer"]

VARIANTS = ("nbar", "obar")


def check_bar_args(mu: float, variant: str, schedule: str, *, prefix: str = "") -> tuple[float, str, str]:
    """(μ₀, variant, schedule) validated: μ₀ finite and ≥ 0, variant in ``VARIANTS``, schedule in
    ``SCHEDULES``. Errors name the parameter as ``prefix + "mu"`` etc. (``BARTrainer``: ``bar_mu``)."""
    return (number(prefix + "mu", mu), choice(prefix + "variant", variant, VARIANTS),
            check_schedule(schedule, prefix + "schedule"))


class BAROptimizerMixin:
    """Adds Alg. 2/3 in front of the base optimizer's ``step``. Mixed into a subclass of the user's class by
    ``bar_optimizer_class``; its constructor takes the base class's arguments plus the BAR ones:

        BAR<optimizer_cls>(params, *, pairs, mu, variant="nbar", schedule="constant", total_steps=None,
                           **optimizer_kwargs)

    ``pairs`` (``lora_pairs(model)``) must all be among ``params``; see ``create_bar_optimizer`` for the rest.
    This is the class for the Trainer's own hook, which builds it from its decay/no-decay groups::

        Trainer(..., optimizer_cls_and_kwargs=(bar_optimizer_class(torch.optim.AdamW),
                                               {"pairs": lora_pairs(model), "mu": 0.5, "lr": 1e-3}))
    """

    _bar_base_step: Callable[..., Any]

    def __init__(self, params: Any, *, pairs: Sequence[LoraPair] | None = None, mu: float | None = None,
                 variant: str = "nbar", schedule: str = "constant", total_steps: int | str | None = None,
                 **optimizer_kwargs: Any) -> None:
        name = type(self).__name__
        if pairs is None or mu is None:
            raise TypeError(
                f"{name} needs pairs=lora_pairs(model) and mu=μ₀ besides the parameters (the Trainer's "
                f"optimizer_cls_and_kwargs=({name}, {{'pairs': lora_pairs(model), 'mu': 0.5, 'lr': ...}})); "
                "or use create_bar_optimizer(model, ...) or BARTrainer, which find the pairs themselves"
            )
        self.bar_mu0, self.bar_variant, self.bar_schedule = check_bar_args(mu, variant, schedule)
        self._bar_awaits_scheduler = total_steps == "scheduler" and schedule != "constant"
        self.bar_total_steps = None if total_steps == "scheduler" else check_total_steps(schedule, total_steps)
        super().__init__(params, **optimizer_kwargs)
        group_of = {id(p): i for i, g in enumerate(self.param_groups) for p in g["params"]}
        for pair in pairs:
            for factor in (pair.lora_A, pair.lora_B):
                if id(factor) not in group_of:
                    raise ValueError(f"LoRA factor of {pair.name!r} is not among this optimizer's parameters")
        self.bar_pairs = list(pairs)
        self.bar_step_count = 0  # t: BAR steps taken so far
        self._bar_warned_past_t = False
        self._bar_group_of = group_of

    @property
    def bar_mu(self) -> float:
        """μ_t for the next step."""
        if self._bar_awaits_scheduler:
            raise RuntimeError(
                f"this BAR optimizer was created with total_steps='scheduler' but has not seen its LR scheduler: "
                f"call opt.bar_sync_total_steps(lr_scheduler) before the first step (T of the {self.bar_schedule!r} "
                "μ schedule), or pass total_steps=T, or use BARTrainer"
            )
        return scheduled_mu(self.bar_mu0, self.bar_schedule, self.bar_step_count, self.bar_total_steps)

    def bar_sync_total_steps(self, lr_scheduler: Any) -> int:
        """Take T of the μ schedule from the LR scheduler this optimizer runs with (``scheduler_total_steps``), or,
        when T is already set, check that the two agree (ValueError if not: μ would reach 0 at another step than
        the learning rate). A constant μ schedule ignores T. Returns the scheduler's T."""
        total = scheduler_total_steps(lr_scheduler)
        if self.bar_schedule == "constant":
            return total
        if self.bar_total_steps is not None and self.bar_total_steps != total:
            raise ValueError(f"the BAR optimizer's μ schedule runs over total_steps={self.bar_total_steps} but the LR "
                             f"scheduler over {total} steps; they must agree")
        self.bar_total_steps, self._bar_awaits_scheduler = total, False
        return total

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
        if (self.bar_schedule != "constant" and self.bar_step_count >= self.bar_total_steps
                and not self._bar_warned_past_t):
            warnings.warn(f"BAR step {self.bar_step_count + 1} is past total_steps={self.bar_total_steps}, the T of its "
                          f"{self.bar_schedule!r} μ schedule: μ stays 0 from here. Give the optimizer the number of "
                          "training steps (BARTrainer does), or take it from the LR scheduler "
                          "(total_steps='scheduler' + bar_sync_total_steps)", stacklevel=3)
            self._bar_warned_past_t = True
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
        """The base optimizer's state and the schedule position t. A saved T that differs from this
        optimizer's (linear/cosine schedules) raises ValueError: t/T would silently change meaning."""
        state_dict = dict(state_dict)
        bar = state_dict.pop("bar", None)
        saved_total = None if bar is None else bar.get("total_steps")
        if self.bar_schedule != "constant" and saved_total not in (None, self.bar_total_steps):
            raise ValueError(
                f"the BAR state was saved with total_steps={saved_total} (T of the μ schedule) but this "
                f"optimizer has total_steps={self.bar_total_steps}; resume with the same number of training steps"
            )
        super().load_state_dict(state_dict)
        if bar is not None:
            self.bar_step_count = int(bar["step"])


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
    """The subclass ``BAR<optimizer_cls>`` of the user's optimizer class, the class ``create_bar_optimizer``
    instantiates (cached: one per base class). Its constructor is documented on ``BAROptimizerMixin``."""
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
    total_steps: int | str | None = None,
    params: Iterable[Any] | None = None,
    weight_decay: float | None = None,
    **optimizer_kwargs: Any,
) -> Optimizer:
    """Create a BAR optimizer (Li, Zhang, He, NeurIPS 2024, Algs. 2/3; arXiv 2410.14802).

    Args:
        model: a model with LoRA layers (e.g. a peft ``PeftModel``); BAR rescales each (lora_A, lora_B) pair
            found by ``lora_pairs``.
        optimizer_cls: the base optimizer class (``torch.optim.AdamW``, ``SGD``, ...).
        lr: the base learning rate η (> 0); BAR uses each group's *current* lr, so LR schedulers apply.
        mu: μ₀ ≥ 0 (finite), the BAR coefficient (the paper's α_t in Algs. 2/3, "μ₀" in its tables).
        variant: ``"nbar"`` (Alg. 2, decides on gradient norms) or ``"obar"`` (Alg. 3, on weight norms).
        schedule: ``"constant"``, ``"linear"`` or ``"cosine"`` decay of μ_t (spec §4.5.7).
        total_steps: T of the linear/cosine schedule (required for those): an int, or ``"scheduler"`` to take it
            from the LR scheduler with ``opt.bar_sync_total_steps(lr_scheduler)`` before the first step.
        params: the parameters or parameter groups to optimize, as for any torch optimizer (e.g. with
            per-group ``weight_decay``); default: every trainable parameter of ``model``. Every LoRA factor
            must be among them.
        weight_decay: without ``params``: two groups as the HF Trainer makes them (``groups.decay_groups``),
            ``weight_decay`` for weights, 0 for biases and normalization weights; with ``params``: passed to
            ``optimizer_cls`` as the default of groups that set none.
        **optimizer_kwargs: passed to ``optimizer_cls`` (``betas``, ``momentum``, ...).

    Returns:
        an instance of ``bar_optimizer_class(optimizer_cls)``, a subclass of ``optimizer_cls``; its
        ``state_dict`` carries the schedule position t.
    """
    lr = number("lr", lr, strict=True)
    cls = bar_optimizer_class(optimizer_cls)
    if params is None:
        params = ([p for p in model.parameters() if p.requires_grad] if weight_decay is None
                  else decay_groups(model, number("weight_decay", weight_decay)))
    elif weight_decay is not None:
        optimizer_kwargs["weight_decay"] = weight_decay
    return cls(params, pairs=lora_pairs(model), lr=lr, mu=mu, variant=variant, schedule=schedule,
               total_steps=total_steps, **optimizer_kwargs)
