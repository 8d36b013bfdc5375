"""Bi-LoRA (Liu et al., ICLR 2026; spec flatness-methods.md §3) for peft LoRA models, and its HF Trainer.

Every adapted ``nn.Linear`` gets an auxiliary adapter (A₂ r₂ × in, B₂ out × r₂, scale s₂) beside the user's:

    h = W0 x + s·B₁A₁ drop(x) + s₂·B₂A₂ drop(x)

One backward per step gives the gradients of both at the full weight W = W0 + sB₁A₁ + s₂B₂A₂ (eq. (9)); the
primary descends with the user's optimizer, the auxiliary *ascends* (its own param group of that optimizer:
``maximize=True``, lr κ·lr, weight decay 0, [ASSUMED] §3.2), and after every optimizer step the auxiliary is
clipped globally (eq. (10)): c = √(Σ_ℓ ‖s₂B₂A₂‖²_F); if c > ρ, every A₂ and B₂ is multiplied by √(ρ/c).
It persists across steps and is discarded after training: inference uses W0 + sB₁A₁.

The auxiliary is **not part of the model**: its parameters live in :class:`BiLoRA`, and reach the forward
through a forward hook on each LoRA layer. So ``model.save_pretrained`` (and the Trainer's checkpoints of the
model) hold exactly the user's LoRA keys, and :meth:`BiLoRA.remove` (called by ``BiLoRATrainer`` when
training ends) leaves the model as it was. ``BiLoRATrainer`` keeps the auxiliary's state in a checkpoint
folder of its own file (``bilora_aux.pt``), so that a resumed run goes on with it.

[UNKNOWN] in the paper, chosen here (spec §3.1): A₂ is initialized as peft initializes A (kaiming-uniform,
a = √5; or N(0, ``aux_init``²)), B₂ = 0, from a private generator seeded by ``seed``; s₂ = α/r₂ with the
layer's α (s₂ enters c); the auxiliary branch uses the layer's LoRA dropout module (its own mask).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import torch
from torch import nn
from torch.nn import functional as F

from balancedness.optim.flatlora import flat_lora_layers
from balancedness.validation import integer, number

__all__ = ["AuxAdapter", "BiLoRA", "bilora_norm", "bilora_clip_", "bilora_ascent_group", "BiLoRATrainer", "AUX_FILE"]  # noqa: F822 -- made on first use by the module's __getattr__

#: The file of the auxiliary's state in a Trainer checkpoint folder.
AUX_FILE = "bilora_aux.pt"


class AuxAdapter(NamedTuple):
    """One layer's auxiliary adapter: ``lora_A`` (r₂ × in), ``lora_B`` (out × r₂) and its scale s₂."""

    name: str
    lora_A: nn.Parameter
    lora_B: nn.Parameter
    scaling: float


@torch.no_grad()
def bilora_norm(adapters: Sequence[AuxAdapter]) -> torch.Tensor:
    """c = √(Σ_ℓ ‖s₂B₂A₂‖²_F) (eq. (10)), from r₂ × r₂ products: ‖BA‖²_F = tr((BᵀB)(AAᵀ)); fp32 or wider."""
    total = None
    for a in adapters:
        dtype = torch.promote_types(torch.float32, a.lora_A.dtype)
        A, B = a.lora_A.to(dtype), a.lora_B.to(dtype)
        term = a.scaling**2 * ((B.T @ B) * (A @ A.T)).sum()
        total = term if total is None else total + term
    return torch.sqrt(total) if total is not None else torch.zeros(())


@torch.no_grad()
def bilora_clip_(adapters: Sequence[AuxAdapter], rho: float) -> float:
    """Eq. (10): if c > ρ, multiply every A₂ and B₂ by √(ρ/c) (then c = ρ). Returns c before the clip."""
    c = float(bilora_norm(adapters))
    if c > rho:
        k = math.sqrt(rho / c)
        for a in adapters:
            a.lora_A.mul_(k)
            a.lora_B.mul_(k)
    return c


def bilora_ascent_group(params: Sequence[nn.Parameter], lr: float) -> dict[str, Any]:
    """The auxiliary's param group for the user's optimizer: ``params``, ``lr`` (κ·η), no weight decay, and
    ``maximize=True`` (gradient *ascent*, eq. (9); torch's SGD/Adam/AdamW read it per group)."""
    return {"params": list(params), "lr": number("lr", lr, strict=True), "weight_decay": 0.0, "maximize": True}


class BiLoRA:
    """The auxiliary adapters of a peft LoRA model (module docstring): ``rank`` r₂ (the paper's 8), ``rho`` the
    clip radius ρ (0.05), ``aux_init`` (None: kaiming-uniform; a float: N(0, aux_init²)), ``seed`` of the init.

    ``attach(optimizer, lr)`` adds the ascent param group and the clip after every ``optimizer.step()``;
    ``remove()`` takes the hooks out and drops the auxiliary (as after training). In an accelerate or hand
    loop: ``bilora = BiLoRA(model); bilora.attach(optimizer, lr)`` before ``accelerator.prepare``; nothing else.
    """

    def __init__(
        self, model: nn.Module, rank: int = 8, rho: float = 0.05, *, aux_init: float | None = None, seed: int = 0
    ) -> None:
        self.rank, self.rho = integer("rank2", rank), number("rho", rho)
        self.aux_init = None if aux_init is None else number("aux_init", aux_init)
        generator = torch.Generator().manual_seed(integer("seed", seed, minimum=0))
        modules = dict(model.named_modules())
        self.adapters: list[AuxAdapter] = []
        self._handles: list[Any] = []
        for layer in flat_lora_layers(model):
            module = modules[layer.name]
            adapter = self._new_adapter(layer.name, layer.factors[0], generator)
            self.adapters.append(adapter)
            self._handles.append(module.register_forward_hook(self._hook(module, adapter)))

    def _new_adapter(
        self, name: str, primary: tuple[torch.Tensor, torch.Tensor, float], generator: torch.Generator
    ) -> AuxAdapter:
        lora_A, lora_B, scaling = primary
        A = torch.empty(self.rank, lora_A.shape[1], dtype=lora_A.dtype)
        if self.aux_init is None:
            nn.init.kaiming_uniform_(A, a=math.sqrt(5), generator=generator)
        else:
            A.normal_(0.0, self.aux_init, generator=generator)
        B = torch.zeros(lora_B.shape[0], self.rank, dtype=lora_B.dtype)
        alpha = scaling * lora_A.shape[0]  # peft: s = α/r
        return AuxAdapter(name, nn.Parameter(A.to(lora_A.device)), nn.Parameter(B.to(lora_B.device)), alpha / self.rank)

    @staticmethod
    def _hook(module: nn.Module, adapter: AuxAdapter) -> Any:
        adapters = getattr(module, "active_adapters", ())
        dropouts = cast(nn.ModuleDict, module.lora_dropout) if hasattr(module, "lora_dropout") else None  # peft's
        dropout = dropouts[adapters[0]] if adapters and dropouts is not None else nn.Identity()

        def hook(_module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
            x = dropout(args[0].to(adapter.lora_A.dtype))
            aux = F.linear(F.linear(x, adapter.lora_A), adapter.lora_B) * adapter.scaling
            return output + aux.to(output.dtype)

        return hook

    def parameters(self) -> list[nn.Parameter]:
        """A₂, B₂ of every layer, in layer order."""
        return [p for a in self.adapters for p in (a.lora_A, a.lora_B)]

    def param_group(self, lr: float) -> dict[str, Any]:
        """:func:`bilora_ascent_group` of these parameters."""
        return bilora_ascent_group(self.parameters(), lr)

    def attach(self, optimizer: torch.optim.Optimizer, lr: float) -> None:
        """Add :meth:`param_group` to ``optimizer`` and clip (:meth:`clip_`) after each of its steps."""
        optimizer.add_param_group(self.param_group(lr))

        def clip_after_step(*_: Any) -> None:
            self.clip_()

        self._handles.append(optimizer.register_step_post_hook(clip_after_step))

    def clip_(self) -> float:
        """:func:`bilora_clip_` at radius ρ."""
        return bilora_clip_(self.adapters, self.rho)

    def remove(self) -> None:
        """Take the auxiliary out of the forward pass and its clip off the optimizer (the model is as before)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def zero_grad(self) -> None:
        """Drop the auxiliary's gradients (it is not in the model, so ``model.zero_grad()`` leaves them)."""
        for p in self.parameters():
            p.grad = None

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"{a.name}.{k}": getattr(a, k).detach().cpu() for a in self.adapters for k in ("lora_A", "lora_B")}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        expected = set(self.state_dict())
        if set(state) != expected:
            raise ValueError(
                f"the Bi-LoRA auxiliary state has keys {sorted(set(state) ^ expected)[:4]} that do "
                "not match this model's LoRA layers (another model or rank?)"
            )
        for a in self.adapters:
            a.lora_A.copy_(state[f"{a.name}.lora_A"])
            a.lora_B.copy_(state[f"{a.name}.lora_B"])


def __getattr__(name: str) -> Any:
    """``BiLoRATrainer`` is built on first use, so that this module needs torch alone (not transformers)."""
    from balancedness.optim.lazy import trainer_on_first_use

    return trainer_on_first_use(__name__, name, "BiLoRATrainer", _BiLoRAMixin)


if TYPE_CHECKING:  # the mixin is only ever combined with LoRATrainer (built on first use, below)
    from balancedness.optim.trainer import LoRATrainer as _TrainerBase
else:
    _TrainerBase = object


class _BiLoRAMixin(_TrainerBase):
    """``Trainer`` with Bi-LoRA: the auxiliary (:class:`BiLoRA`) is made with the Trainer, joins the Trainer's own
    optimizer as an ascent group at lr κ·``args.learning_rate`` (the Trainer's LR schedule drives both), is clipped
    after every optimizer step, its gradients dropped at the first micro-batch of every step (the Trainer's
    ``model.zero_grad()`` cannot reach them), saved beside each checkpoint (``bilora_aux.pt``, loaded on resume)
    and removed when ``train()`` ends (evaluation and the saved adapter: W0 + sB₁A₁).

    Extra args: ``bilora_rank`` (r₂), ``bilora_rho`` (ρ), ``bilora_kappa`` (κ = η₂/η₁), ``bilora_aux_init``,
    ``bilora_seed`` (None: ``args.seed``).
    """

    def __init__(
        self,
        *args: Any,
        bilora_rank: int = 8,
        bilora_rho: float = 0.05,
        bilora_kappa: float = 1.0,
        bilora_aux_init: float | None = None,
        bilora_seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        self.bilora_kappa = number("bilora_kappa", bilora_kappa, strict=True)
        super().__init__(*args, **kwargs)
        seed = self.args.seed if bilora_seed is None else bilora_seed
        self.bilora = BiLoRA(self._trained_model(), bilora_rank, bilora_rho, aux_init=bilora_aux_init, seed=seed)
        self._bilora_attached: Any = None
        self._bilora_step: int | None = None

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        optimizer = super().create_optimizer(model)
        if self._bilora_attached is not optimizer:
            self.bilora.attach(optimizer, self.bilora_kappa * self.args.learning_rate)
            self._bilora_attached = optimizer
        return optimizer

    def train(self, *args: Any, **kwargs: Any) -> Any:
        if not self.bilora._handles:
            raise RuntimeError(
                "BiLoRATrainer.train() ran before: its auxiliary adapter was discarded at the end of "
                "that run; make a new BiLoRATrainer to train again"
            )
        try:
            return super().train(*args, **kwargs)
        finally:
            self.bilora.remove()

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        if self._bilora_step != self.state.global_step:  # the Trainer zeroes the model's grads only
            self.bilora.zero_grad()
            self._bilora_step = self.state.global_step
        return super().training_step(model, inputs, num_items_in_batch)

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            folder = os.path.join(
                self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            )
            tmp = os.path.join(folder, AUX_FILE + ".tmp")
            torch.save(self.bilora.state_dict(), tmp)
            os.replace(tmp, os.path.join(folder, AUX_FILE))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        path = os.path.join(resume_from_checkpoint, AUX_FILE)
        if os.path.isfile(path):
            self.bilora.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
