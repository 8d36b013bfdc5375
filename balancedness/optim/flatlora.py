"""Flat-LoRA (Li et al., ICML 2025; spec flatness-methods.md §2) for peft LoRA models, and its HF Trainer.

One random weight-space perturbation per optimizer step t, shared by all its micro-batches (official code,
spec §2.1 items 1–2): for every adapted ``nn.Linear`` with merged weight W′ = W0 + Σ_a s_a·B_a·A_a (out × in)

    E_ij = f_t·σ·‖W′_{i,:}‖/√in · ξ_ij,   ξ_ij ∼ N(0, 1),   f_t = ½(1 − cos(π t/T)) (``cosine``) or 1 (``constant``)

the gradients of A and B are taken at W0 + E + Σ s·B·A (the chain rule at the *unperturbed* factors), then the
base optimizer steps as usual. A row of W′ is one output unit (a filter), ``in`` its fan-in.

Unlike the official code, which adds E to a bf16 W0 in place and subtracts a redrawn E afterwards (W0 then
drifts: 1.45% after 2,000 steps, spec §2.1 item 5), W0 is never written: ``flat_lora_perturb_`` points the
base layer's weight at a *new* tensor W0 + E (rounded once to W0's dtype) and ``flat_lora_restore_`` points it
back at the untouched original, so W0 after training is W0 before it, bit for bit, in every dtype.

Draws come from a private ``torch.Generator`` seeded by (seed, t) (:func:`step_seed`), layer by layer in module
order: the same seed gives the same run, a resumed run the same draws, and the global RNG is left alone.
``noise=`` replaces the draws by given standard normal ones (the numpy cross-check feeds the simulator's ξ).

Cost: one forward and one backward per step, as LoRA; per step one N(0, 1) draw and one copy of each adapted W0
(transient, freed at restore); the filter norms come from r-sized products (W′ is never formed). Under DDP every worker
draws the same E (same seed and step).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import nn

from balancedness.optim.pairs import compute_dtype
from balancedness.validation import choice, integer, number

__all__ = [
    "NOISE_SCHEDULES",
    "FlatLayer",
    "FlatLoRA",
    "flat_lora_layers",
    "flat_lora_perturb_",
    "flat_lora_restore_",
    "noise_factor",
    "step_seed",
    "FlatLoRATrainer",  # noqa: F822 -- made on first use by the module's __getattr__
]

#: f_t of the noise strength σ_t = f_t σ: the official cosine ramp from 0 to 1, or a constant 1.
NOISE_SCHEDULES = ("cosine", "constant")
#: ``noise(layer index, shape) -> standard normal tensor``: draws to use instead of the generator's.
Noise = Callable[[int, torch.Size], torch.Tensor]


class FlatLayer(NamedTuple):
    """One adapted linear layer: ``weight`` is its frozen W0 (out × in, the tensor that is perturbed);
    ``factors`` the ``(lora_A, lora_B, scaling)`` of its active adapters (W′ = W0 + Σ s·B·A)."""

    name: str
    weight: torch.Tensor
    factors: tuple[tuple[torch.Tensor, torch.Tensor, float], ...]


def flat_lora_layers(model: nn.Module) -> list[FlatLayer]:
    """Every peft LoRA layer of ``model`` whose base layer is an ``nn.Linear``, in module order, with its active
    adapters. ValueError when there is none (Flat-LoRA perturbs the frozen weight of adapted linear layers)."""
    layers = []
    for name, module in model.named_modules():
        if not (hasattr(module, "get_base_layer") and isinstance(getattr(module, "lora_A", None), nn.ModuleDict)):
            continue
        base = module.get_base_layer()
        active = [a for a in getattr(module, "active_adapters", ()) if a in module.lora_A]
        if isinstance(base, nn.Linear) and active:
            layers.append(
                FlatLayer(
                    name,
                    base.weight,
                    tuple((module.lora_A[a].weight, module.lora_B[a].weight, float(module.scaling[a])) for a in active),
                )
            )
    if not layers:
        raise ValueError(
            "Flat-LoRA found no peft LoRA layer over an nn.Linear in the model: wrap it with "
            "peft.get_peft_model(model, LoraConfig(...)) first"
        )
    return layers


def noise_factor(schedule: str, step: int, total_steps: int | None) -> float:
    """f_t: ``cosine`` ½(1 − cos(π t/T)) (spec §2.1 item 1; needs T), ``constant`` 1."""
    if choice("noise_schedule", schedule, NOISE_SCHEDULES) == "constant":
        return 1.0
    if not total_steps:
        raise ValueError("Flat-LoRA's cosine noise schedule needs total_steps (T), the number of optimizer steps")
    return 0.5 * (1.0 - math.cos(math.pi * min(step, total_steps) / total_steps))


def step_seed(seed: int, step: int) -> int:
    """The seed of step ``step``'s draws: a hash of (seed, step), so steps' streams do not overlap."""
    digest = hashlib.blake2b(f"flat-lora:{int(seed)}:{int(step)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@torch.no_grad()
def flat_lora_perturb_(
    layers: Sequence[FlatLayer], sigma_t: float, *, generator: torch.Generator | None = None, noise: Noise | None = None
) -> list[torch.Tensor]:
    """Point every layer's weight at W0 + E (module docstring; σ_t = f_t σ, already ramped) and return the
    original W0 tensors, for :func:`flat_lora_restore_`. W0 itself is not written. Standard normal draws from
    ``generator`` (on W0's device), or ``noise(i, shape)`` for layer i."""
    originals = []
    for i, layer in enumerate(layers):
        w0 = layer.weight.data
        dtype = compute_dtype([w0])
        w = w0.to(dtype)
        std = (sigma_t / math.sqrt(w0.shape[1])) * _row_norms(w, layer.factors, dtype)
        xi = (
            noise(i, w0.shape)
            if noise is not None
            else torch.randn(w0.shape, generator=generator, device=w0.device, dtype=dtype)
        )
        originals.append(w0)
        layer.weight.data = torch.addcmul(w, std, xi.to(device=w0.device, dtype=dtype)).to(w0.dtype)
    return originals


def _row_norms(
    w: torch.Tensor, factors: Sequence[tuple[torch.Tensor, torch.Tensor, float]], dtype: torch.dtype
) -> torch.Tensor:
    """‖W′_{i,:}‖ (out × 1) of W′ = W + Σ s·B·A without forming W′ (one read of W, r-sized products):
    ‖W_i‖² + 2⟨(W Aᵀ)_i, B̃_i⟩ + B̃_i (A Aᵀ) B̃_iᵀ, with B̃ = [s·B …] and A = [A …] over the adapters."""
    A = torch.cat([a.detach().to(dtype) for a, _, _ in factors], dim=0)
    B = torch.cat([s * b.detach().to(dtype) for _, b, s in factors], dim=1)
    sq = torch.linalg.vector_norm(w, dim=1).square()
    sq = sq + 2 * ((w @ A.T) * B).sum(dim=1) + ((B @ (A @ A.T)) * B).sum(dim=1)
    out: torch.Tensor = sq.clamp_min(0).sqrt().unsqueeze(1)
    return out


@torch.no_grad()
def flat_lora_restore_(layers: Sequence[FlatLayer], originals: Sequence[torch.Tensor]) -> None:
    """Point every layer's weight back at its original W0 (bit-exact: the original was never written)."""
    for layer, w0 in zip(layers, originals, strict=True):
        layer.weight.data = w0


class FlatLoRA:
    """Flat-LoRA's noise on a model (or on given :class:`FlatLayer`s): ``perturb(step)`` before the first
    micro-batch of optimizer step ``step`` (0-based), ``restore()`` after the last backward and before
    ``optimizer.step()``; or ``with flat.perturbed(step):`` around the step's micro-batches.

    Args: ``sigma`` σ ≥ 0 (the paper's 0.05); ``noise_schedule`` ``cosine``/``constant``; ``total_steps`` T
    (for ``cosine``); ``seed`` of the draws (:func:`step_seed`).
    """

    def __init__(
        self,
        model: nn.Module | Sequence[FlatLayer],
        sigma: float = 0.05,
        *,
        noise_schedule: str = "cosine",
        total_steps: int | None = None,
        seed: int = 0,
    ) -> None:
        self.sigma = number("sigma", sigma)
        self.noise_schedule = choice("noise_schedule", noise_schedule, NOISE_SCHEDULES)
        self.total_steps = None if total_steps is None else integer("total_steps", total_steps, minimum=1)
        self.seed = integer("seed", seed, minimum=0)
        self.layers = flat_lora_layers(model) if isinstance(model, nn.Module) else list(model)
        self._originals: list[torch.Tensor] | None = None

    @property
    def is_perturbed(self) -> bool:
        """Whether the layers' weights are at W0 + E now."""
        return self._originals is not None

    def sigma_at(self, step: int) -> float:
        """σ_t = f_t σ of optimizer step ``step``."""
        return self.sigma * noise_factor(self.noise_schedule, step, self.total_steps) if self.sigma else 0.0

    def perturb(self, step: int, noise: Noise | None = None) -> bool:
        """W0 → W0 + E for optimizer step ``step`` (nothing when σ_t = 0); True when perturbed."""
        if self._originals is not None:
            raise RuntimeError(
                "FlatLoRA.perturb() was called while the weights are still perturbed: call "
                "restore() after the step's last backward"
            )
        sigma_t = self.sigma_at(step)
        if sigma_t == 0.0:
            return False
        generator = None
        if noise is None:
            generator = torch.Generator(device=self.layers[0].weight.device)
            generator.manual_seed(step_seed(self.seed, step))
        self._originals = flat_lora_perturb_(self.layers, sigma_t, generator=generator, noise=noise)
        return True

    def restore(self) -> None:
        """W0 + E → W0 (a no-op when not perturbed)."""
        if self._originals is not None:
            flat_lora_restore_(self.layers, self._originals)
            self._originals = None

    @contextmanager
    def perturbed(self, step: int, noise: Noise | None = None) -> Iterator[None]:
        """``perturb(step)`` on entry, ``restore()`` on exit (also on an error)."""
        self.perturb(step, noise)
        try:
            yield
        finally:
            self.restore()


def __getattr__(name: str) -> Any:
    """``FlatLoRATrainer`` is built on first use, so that this module needs torch alone (not transformers)."""
    from balancedness.optim.lazy import trainer_on_first_use

    return trainer_on_first_use(__name__, name, "FlatLoRATrainer", _FlatLoRAMixin)


if TYPE_CHECKING:  # the mixin is only ever combined with LoRATrainer (built on first use, below)
    from balancedness.optim.trainer import LoRATrainer as _TrainerBase
else:
    _TrainerBase = object


class _FlatLoRAMixin(_TrainerBase):
    """``Trainer`` with Flat-LoRA: E is drawn in the first micro-batch's ``training_step`` of every optimizer step
    (t = ``state.global_step``, T = ``state.max_steps``), kept for all micro-batches of the accumulation, and
    removed after the last one's backward, before the Trainer's ``optimizer.step()``. The Trainer's own optimizer,
    scheduler, AMP (bf16, fp16 GradScaler) and accumulation are used unchanged.

    Extra args: ``flat_sigma`` (σ), ``flat_noise_schedule`` (``cosine``/``constant``), ``flat_seed`` (None:
    ``args.seed``). The logged training loss is the loss at the perturbed weight.
    """

    def __init__(
        self,
        *args: Any,
        flat_sigma: float = 0.05,
        flat_noise_schedule: str = "cosine",
        flat_seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        number("flat_sigma", flat_sigma)
        choice("flat_noise_schedule", flat_noise_schedule, NOISE_SCHEDULES)
        super().__init__(*args, **kwargs)
        seed = self.args.seed if flat_seed is None else integer("flat_seed", flat_seed, minimum=0)
        self.flat_lora = FlatLoRA(self._trained_model(), flat_sigma, noise_schedule=flat_noise_schedule, seed=seed)

    def train(self, *args: Any, **kwargs: Any) -> Any:
        self.flat_lora.restore()
        try:
            return super().train(*args, **kwargs)
        finally:
            self.flat_lora.restore()  # an interrupted accumulation leaves no noise behind

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        flat = self.flat_lora
        if not flat.is_perturbed:
            flat.total_steps = self.state.max_steps or None
            flat.perturb(self.state.global_step)
        try:
            loss = super().training_step(model, inputs, num_items_in_batch)
        except BaseException:
            flat.restore()
            raise
        if self.accelerator.sync_gradients:
            flat.restore()
        return loss
