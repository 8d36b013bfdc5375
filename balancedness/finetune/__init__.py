"""The torch backend: LoRA pairs and balancedness, SAM (and m-SAM), BAR (nBAR/oBAR), HF Trainer integration.

Math for each method lives in one module: ``pairs`` (B_l, spec §1.2), ``sam`` (Alg. 1, eqs. (4), (22), (38)),
``bar`` (Algs. 2/3), ``schedules`` (μ_t), ``amp`` (GradScaler semantics), ``trainer`` and ``callbacks``
(HF Trainer). ``trainer``/``callbacks`` import transformers and are loaded on first use.
"""

from __future__ import annotations

from typing import Any

from balancedness.finetune.bar import add_bar, create_bar_optimizer
from balancedness.finetune.pairs import LoraPair, lora_balancedness, lora_grad_gap, lora_pairs
from balancedness.finetune.sam import SAM, sam_step_accumulated, sam_step_msharpness

__all__ = [
    "LoraPair", "lora_pairs", "lora_balancedness", "lora_grad_gap",
    "create_bar_optimizer", "add_bar",
    "SAM", "sam_step_accumulated", "sam_step_msharpness",
    "SAMTrainer", "BARTrainer", "BalancednessCallback",
]

_LAZY = {"SAMTrainer": "trainer", "BARTrainer": "trainer", "BalancednessCallback": "callbacks"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"balancedness.finetune.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'balancedness.finetune' has no attribute {name!r}")
