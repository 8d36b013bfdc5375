"""LoRA factor pairs and their balancedness (spec §1.2, §4.1).

A LoRA layer adds ΔW = s·B A with ``lora_A`` ∈ ℝ^{r×d_in} and ``lora_B`` ∈ ℝ^{d_out×r} (s = α_lora/r).
In the paper's notation X_l ↔ ``lora_A``ᵀ and Y_l ↔ ``lora_B`` (spec §4.1), so the per-layer
balancedness is

    B_l = ½(‖A_l‖²_F − ‖B_l‖²_F)                                     (spec §1.2)

and the gradient gap that drives SAM's balancing (Thm 2, eq. (5)/(26)) is ‖g_{A_l}‖²_F − ‖g_{B_l}‖²_F.

Pairs are found **by name** (as peft's LoRA+ and Riemannian optimizers do): a parameter whose name contains
``.lora_A.`` is paired with the one whose name has ``.lora_B.`` in its place; embedding LoRA
(``lora_embedding_A`` ↔ ``lora_embedding_B``) likewise. This covers peft's Linear, GPT-2 ``Conv1D``,
Conv and Embedding LoRA layers and every adapter name. DoRA's ``lora_magnitude_vector`` is not a factor
and is left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

__all__ = [
    "LoraPair",
    "lora_pairs",
    "lora_balancedness",
    "lora_balancedness_matrices",
    "lora_grad_gap",
    "norms",
    "squared_norms",
    "grad_of",
]

_MARKERS = ((".lora_A.", ".lora_B."), (".lora_embedding_A.", ".lora_embedding_B."))


class LoraPair(NamedTuple):
    """One LoRA factor pair: ``name`` is ``<module path>.<adapter>``; ``scaling`` is peft's α_lora/r
    (1.0 when the module carries no peft ``scaling``)."""

    name: str
    lora_A: nn.Parameter
    lora_B: nn.Parameter
    scaling: float


def _split(param_name: str) -> tuple[str, str, str] | None:
    """``'<prefix>.lora_A.<adapter>[.weight]'`` → (prefix, adapter, B's parameter name), else None."""
    for marker_a, marker_b in _MARKERS:
        if marker_a in param_name:
            prefix, rest = param_name.split(marker_a, 1)
            return prefix, rest.split(".", 1)[0], param_name.replace(marker_a, marker_b, 1)
    return None


def _scaling(model: nn.Module, prefix: str, adapter: str) -> float:
    try:
        scaling = getattr(model.get_submodule(prefix), "scaling", None)
    except AttributeError:
        return 1.0
    if isinstance(scaling, dict) and adapter in scaling:
        return float(scaling[adapter])
    return 1.0


def lora_pairs(model: nn.Module) -> list[LoraPair]:
    """Every trainable (lora_A, lora_B) pair of ``model``, in module order.

    Raises ValueError if there is none, or if a trainable ``lora_A`` has no trainable ``lora_B`` partner.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"lora_pairs expects a torch.nn.Module (e.g. a peft PeftModel), got {type(model).__name__}")
    params = dict(model.named_parameters())
    pairs: list[LoraPair] = []
    for name, param in params.items():
        split = _split(name)
        if split is None or not param.requires_grad:
            continue
        prefix, adapter, name_b = split
        partner = params.get(name_b)
        if partner is None or not partner.requires_grad:
            raise ValueError(
                f"found trainable LoRA factor {name!r} but no trainable partner {name_b!r}; "
                "BAR and the balancedness metrics need both factors of every pair trainable"
            )
        pairs.append(LoraPair(f"{prefix}.{adapter}", param, partner, _scaling(model, prefix, adapter)))
    if not pairs:
        raise ValueError(
            f"did not find any trainable lora_A/lora_B parameter pairs in {type(model).__name__}: expected "
            "parameters named '<module>.lora_A.<adapter>...' and '<module>.lora_B.<adapter>...' (as peft's "
            "get_peft_model creates) with requires_grad=True"
        )
    return pairs


def grad_of(p: torch.Tensor) -> torch.Tensor:
    """``p.grad`` of a parameter the caller has checked has one (a RuntimeError names the shape otherwise)."""
    if p.grad is None:
        raise RuntimeError(f"a parameter of shape {tuple(p.shape)} has no gradient")
    return p.grad


def compute_dtype(tensors: Sequence[torch.Tensor]) -> torch.dtype:
    """The dtype the math runs in: fp32, or fp64 when any tensor is fp64 (bf16/fp16 are upcast)."""
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def norms(tensors: Sequence[torch.Tensor], dtype: torch.dtype | None = None) -> torch.Tensor:
    """‖t_i‖_F for each tensor, as one 1-D tensor computed in ``dtype`` (default: ``compute_dtype``).

    One fused ``torch._foreach_norm``, no host synchronisation.
    """
    tensors = list(tensors)
    return torch.stack(torch._foreach_norm(tensors, 2, dtype=dtype or compute_dtype(tensors)))


def squared_norms(tensors: Sequence[torch.Tensor], dtype: torch.dtype | None = None) -> torch.Tensor:
    """‖t_i‖²_F for each tensor (see ``norms``)."""
    return norms(tensors, dtype).square()


def lora_balancedness(model: nn.Module) -> dict[str, float]:
    """{layer: B_l = ½(‖A_l‖²_F − ‖B_l‖²_F)} for every LoRA pair (spec §1.2), computed in ≥ fp32."""
    pairs = lora_pairs(model)
    with torch.no_grad():
        sq_a = squared_norms([p.lora_A for p in pairs])
        sq_b = squared_norms([p.lora_B for p in pairs])
        values = (0.5 * (sq_a - sq_b)).tolist()
    return {pair.name: value for pair, value in zip(pairs, values, strict=True)}


def lora_balancedness_matrices(model: nn.Module) -> dict[str, torch.Tensor]:
    """{layer: M_l = A_l A_lᵀ − B_lᵀ B_l} (r × r, detached, on the CPU, in ≥ fp32) for every LoRA pair: the rank-r
    form of B_l (tr M_l = 2 B_l; spec flatness-methods.md, Notation), which a step whose two factor gradients come
    from one matrix changes only at O(η²) (its §1 Lemma)."""
    out = {}
    with torch.no_grad():
        for pair in lora_pairs(model):
            dtype = compute_dtype([pair.lora_A])
            A = pair.lora_A.detach().to(dtype).reshape(pair.lora_A.shape[0], -1)
            B = pair.lora_B.detach().to(dtype).reshape(pair.lora_B.shape[0], -1)
            out[pair.name] = (A @ A.T - B.T @ B).cpu()
    return out


def lora_grad_gap(model: nn.Module) -> dict[str, float]:
    """{layer: ‖g_{A_l}‖²_F − ‖g_{B_l}‖²_F} (the numerator of Thm 2 eq. (5) / Thm 5 eq. (26)).

    Pairs without gradients (``.grad is None``) are left out of the result.
    """
    pairs = [p for p in lora_pairs(model) if p.lora_A.grad is not None and p.lora_B.grad is not None]
    if not pairs:
        return {}
    with torch.no_grad():
        sq_a = squared_norms([grad_of(p.lora_A) for p in pairs])
        sq_b = squared_norms([grad_of(p.lora_B) for p in pairs])
        values = (sq_a - sq_b).tolist()
    return {pair.name: value for pair, value in zip(pairs, values, strict=True)}
