"""BAR: Balancedness-Aware Regularization (spec §4, Algorithms 2 and 3), as a peft-style optimizer factory.

Each step, for every LoRA pair (A_l, B_l) independently (spec §4.5.6), with the gradients at the current,
unscaled point (spec §4.5.1) and η_t the current lr of the parameter's group (spec §4.5.2):

    nBAR (Alg. 2): if ‖g_A‖ ≥ ‖g_B‖:  A ← (1 + μ_t η_t) A,  B ← (1 − μ_t η_t) B;  else the reverse.
    oBAR (Alg. 3): if ‖A‖ ≥ ‖B‖:      A ← (1 − μ_t η_t) A,  B ← (1 + μ_t η_t) B;  else the reverse.

then the base optimizer steps with the same (line-3) gradients. With an SGD base this is exactly
x_{t+1} = (1 ± μ_t η_t) x_t − η_t g(x_t) (spec §4.5.1). μ_t, like η_t, is the group's (``group["bar_mu"]``),
written by the optimizer's ``schedules.BARScheduler``; the mixin holds the pairs, the rescaling and the base step.

The rescaling is decoupled, like AdamW's weight decay ``p.mul_(1 − lr·wd)``: it does **not** touch the base
optimizer's state (Adam's moments m, v are estimates of gradient statistics, which Algs. 2/3 leave to
"Optimizer update (via Adam or SGD)"). Norms and factors are computed in fp32 (fp64 for fp64 parameters)
and cast back. The decision uses no host synchronisation; when any LoRA gradient norm is inf/NaN (an fp16
overflow that GradScaler is about to skip) the nBAR rescaling of that step is skipped as well.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.optim import Optimizer

from balancedness.optim.groups import decay_groups
from balancedness.optim.pairs import LoraPair, compute_dtype, grad_of, lora_pairs, norms
from balancedness.optim.schedules import BARScheduler, check_schedule
from balancedness.validation import choice, number

__all__ = ["VARIANTS", "BAROptimizerMixin", "bar_optimizer_class", "check_bar_args", "create_bar_optimizer"]

VARIANTS = ("nbar", "obar")


def check_bar_args(mu: float, variant: str, schedule: str, *, prefix: str = "") -> tuple[float, str, str]:
    """(μ₀, variant, schedule) validated: μ₀ finite and ≥ 0, variant in ``VARIANTS``, schedule in
    ``SCHEDULES``. Errors name the parameter as ``prefix + "mu"`` etc. (``BARTrainer``: ``bar_mu``)."""
    return (
        number(prefix + "mu", mu),
        choice(prefix + "variant", variant, VARIANTS),
        check_schedule(schedule, prefix + "schedule"),
    )


if TYPE_CHECKING:  # the mixin is always combined with a torch optimizer (bar_optimizer_class)
    _OptimizerBase = Optimizer
else:
    _OptimizerBase = object


class BAROptimizerMixin(_OptimizerBase):
    """Adds Alg. 2/3 in front of the base optimizer's ``step``. Mixed into a subclass of the user's class by
    ``bar_optimizer_class``; its constructor takes the base class's arguments plus the BAR ones:

        BAR<optimizer_cls>(params, *, pairs, mu, variant="nbar", schedule="constant", total_steps=None,
                           **optimizer_kwargs)

    ``pairs`` (``lora_pairs(model)``) must all be among ``params``; ``mu`` is μ₀ of every param group that sets
    no ``"bar_mu"`` of its own. μ_t lives in the groups (``group["bar_mu"]``, like ``group["lr"]``), driven by
    the optimizer's ``BARScheduler`` (``opt.bar_scheduler``), made from ``schedule``/``total_steps``; see
    ``create_bar_optimizer`` for the rest. This is the class for the Trainer's own hook, which builds it from
    its decay/no-decay groups::

        Trainer(..., optimizer_cls_and_kwargs=(bar_optimizer_class(torch.optim.AdamW),
                                               {"pairs": lora_pairs(model), "mu": 0.5, "lr": 1e-3}))
    """

    _bar_base_step: Callable[..., Any]
    bar_scheduler: BARScheduler  # set by BARScheduler itself

    def __init__(
        self,
        params: Any,
        *,
        pairs: Sequence[LoraPair] | None = None,
        mu: float | None = None,
        variant: str = "nbar",
        schedule: str = "constant",
        total_steps: Any = None,
        **optimizer_kwargs: Any,
    ) -> None:
        name = type(self).__name__
        if pairs is None or mu is None:
            raise TypeError(
                f"{name} needs pairs=lora_pairs(model) and mu=μ₀ besides the parameters (the Trainer's "
                f"optimizer_cls_and_kwargs=({name}, {{'pairs': lora_pairs(model), 'mu': 0.5, 'lr': ...}})); "
                "or use create_bar_optimizer(model, ...) or BARTrainer, which find the pairs themselves"
            )
        mu, self.bar_variant, schedule = check_bar_args(mu, variant, schedule)
        super().__init__(params, **optimizer_kwargs)
        self.defaults["bar_mu"] = mu
        for group in self.param_groups:
            group["bar_mu"] = number("mu", group.get("bar_mu", mu))
        self._bar_group_of = {id(p): i for i, g in enumerate(self.param_groups) for p in g["params"]}
        for pair in pairs:
            for factor in (pair.lora_A, pair.lora_B):
                if id(factor) not in self._bar_group_of:
                    raise ValueError(f"LoRA factor of {pair.name!r} is not among this optimizer's parameters")
        self.bar_pairs = list(pairs)
        BARScheduler(self, schedule, total_steps)

    # The schedule's state, read off its BARScheduler (names of the optimizer's public API).
    bar_mu0 = property(lambda self: self.bar_scheduler.state_dict()["mu"], doc="μ₀ (of the first group).")
    bar_schedule = property(lambda self: self.bar_scheduler.schedule, doc="The μ schedule's name.")
    bar_total_steps = property(lambda self: self.bar_scheduler.total_steps, doc="T of the μ schedule.")
    bar_step_count = property(lambda self: self.bar_scheduler.step_count, doc="t: BAR steps taken so far.")

    @property
    def bar_mu(self) -> float:
        """μ_t for the next step (of the first group)."""
        return self._known([self.param_groups[0]["bar_mu"]])[0]

    def bar_sync_total_steps(self, lr_scheduler: Any) -> int:
        """T of the μ schedule from the LR scheduler (``BARScheduler.sync_total_steps``)."""
        return self.bar_scheduler.sync_total_steps(lr_scheduler)

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
        """Lines 3–10 of Alg. 2/3 for every pair with gradients, with μ_t and η_t of each factor's group."""
        pairs = [p for p in self.bar_pairs if p.lora_A.grad is not None and p.lora_B.grad is not None]
        a = [p.lora_A for p in pairs]
        b = [p.lora_B for p in pairs]
        mu_a, mu_b = self._bar_group_values(a, "bar_mu"), self._bar_group_values(b, "bar_mu")
        if not any(mu_a + mu_b):
            return
        dtype = compute_dtype(a + b)
        if self.bar_variant == "nbar":
            n_a, n_b = norms([grad_of(p) for p in a], dtype), norms([grad_of(p) for p in b], dtype)
            sign = torch.where(n_a >= n_b, 1.0, -1.0).to(dtype)  # +1: grow A, shrink B
            finite = torch.isfinite(n_a).all() & torch.isfinite(n_b).all()
            sign = sign * finite  # overflowed step: factors become exactly 1
        else:
            n_a, n_b = norms(a, dtype), norms(b, dtype)
            sign = torch.where(n_a >= n_b, -1.0, 1.0).to(dtype)  # −1: shrink A, grow B
        rate_a = _tensor(mu_a, dtype, sign.device) * _tensor(self._bar_group_values(a, "lr"), dtype, sign.device)
        rate_b = _tensor(mu_b, dtype, sign.device) * _tensor(self._bar_group_values(b, "lr"), dtype, sign.device)
        _scale_(a, 1.0 + rate_a * sign)
        _scale_(b, 1.0 - rate_b * sign)

    def _bar_group_values(self, params: list[nn.Parameter], key: str) -> list[float]:
        """``group[key]`` of each parameter's group (μ_t or η_t); RuntimeError while μ_t awaits T."""
        return self._known([self.param_groups[self._bar_group_of[id(p)]][key] for p in params])

    def _known(self, values: list[Any]) -> list[float]:
        if None in values:
            raise RuntimeError(
                f"this BAR optimizer's {self.bar_schedule!r} μ schedule has no T yet (total_steps='scheduler'): call "
                "opt.bar_sync_total_steps(lr_scheduler) before the first step, or create "
                "BARScheduler(opt, schedule, total_steps=T), or use BARTrainer"
            )
        return [float(v) for v in values]

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["bar"] = {**self.bar_scheduler.state_dict(), "variant": self.bar_variant}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """The base optimizer's state and the schedule position t (``BARScheduler.load_state_dict``: a saved T
        that differs raises ValueError before anything is loaded)."""
        state_dict = dict(state_dict)
        bar = state_dict.pop("bar", None)
        if bar is not None:
            self.bar_scheduler.load_state_dict(bar)
        super().load_state_dict(state_dict)
        self.bar_scheduler.apply()  # μ_t into the loaded groups (a state saved before μ_t lived in them has none)


def _tensor(values: list[float], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype, device=device)


def _scale_(params: list[nn.Parameter], factors: torch.Tensor) -> None:
    """p_i ← factors_i · p_i, the product taken in ``factors.dtype`` and cast back to p_i's dtype."""
    same = [i for i, p in enumerate(params) if p.dtype == factors.dtype]
    if same:
        torch._foreach_mul_([params[i] for i in same], list(factors[same].unbind()))
    for i, p in enumerate(params):
        if p.dtype != factors.dtype:
            p.copy_(p.to(factors.dtype) * factors[i])


@functools.cache
def bar_optimizer_class(optimizer_cls: type[Optimizer]) -> type[BAROptimizerMixin]:
    """The subclass ``BAR<optimizer_cls>`` of the user's optimizer class, the class ``create_bar_optimizer``
    instantiates (cached: one per base class). Its constructor is documented on ``BAROptimizerMixin``."""
    if not (isinstance(optimizer_cls, type) and issubclass(optimizer_cls, Optimizer)):
        raise TypeError(f"optimizer_cls must be a torch.optim.Optimizer subclass, got {optimizer_cls!r}")
    if issubclass(optimizer_cls, BAROptimizerMixin):
        return optimizer_cls
    base_step = optimizer_cls.step
    if getattr(base_step, "hooked", False):  # skip torch's profiling wrapper: our own step carries it
        base_step = base_step.__wrapped__  # type: ignore[attr-defined]  # torch's profiling wrapper (functools.wraps)
    return type(
        f"BAR{optimizer_cls.__name__}",
        (BAROptimizerMixin, optimizer_cls),
        {"_bar_base_step": base_step, "__module__": __name__},
    )


def create_bar_optimizer(
    model: nn.Module,
    optimizer_cls: type[Optimizer],
    *,
    lr: float,
    mu: float,
    variant: str = "nbar",
    schedule: str = "constant",
    total_steps: Any = None,
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
        total_steps: T of the linear/cosine schedule (required for those): an int, the LR scheduler, or
            ``"scheduler"`` to take it from the LR scheduler with ``opt.bar_sync_total_steps(lr_scheduler)`` before
            the first step. Or leave ``schedule`` constant and make ``BARScheduler(opt, schedule, total_steps=T)``
            next to the LR scheduler yourself (``BARTrainer`` does).
        params: the parameters or parameter groups to optimize, as for any torch optimizer (e.g. with
            per-group ``weight_decay``); default: every trainable parameter of ``model``. Every LoRA factor
            must be among them.
        weight_decay: without ``params``: two groups as the HF Trainer makes them (``groups.decay_groups``),
            ``weight_decay`` for weights, 0 for biases and normalization weights; with ``params``: passed to
            ``optimizer_cls`` as the default of groups that set none.
        **optimizer_kwargs: passed to ``optimizer_cls`` (``betas``, ``momentum``, ...).

    Returns:
        an instance of ``bar_optimizer_class(optimizer_cls)``, a subclass of ``optimizer_cls``; its
        ``state_dict`` carries the schedule position t (``opt.bar_scheduler.state_dict()``).
    """
    lr = number("lr", lr, strict=True)
    cls = bar_optimizer_class(optimizer_cls)  # type: ignore[arg-type]  # functools.cache wants Hashable: a class is
    if params is None:
        params = (
            [p for p in model.parameters() if p.requires_grad]
            if weight_decay is None
            else decay_groups(model, number("weight_decay", weight_decay))
        )
    elif weight_decay is not None:
        optimizer_kwargs["weight_decay"] = weight_decay
    return cls(
        params,
        pairs=lora_pairs(model),
        lr=lr,
        mu=mu,
        variant=variant,
        schedule=schedule,
        total_steps=total_steps,
        **optimizer_kwargs,
    )
