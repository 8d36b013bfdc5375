"""The torch backend: LoRA pairs and balancedness, SAM (and m-SAM), BAR (nBAR/oBAR), HF Trainer integration.

Math for each method lives in one module: ``pairs`` (B_l, spec §1.2), ``sam`` (Alg. 1, eqs. (4), (22), (38)),
``bar`` (Algs. 2/3), ``schedules`` (μ_t), ``amp`` (GradScaler semantics), ``trainer`` and ``callbacks``
(HF Trainer). Every name is loaded on first use, so ``balancedness`` commands that need no torch (check,
simulate, figures) start without importing it.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "LoraPair", "lora_pairs", "lora_balancedness", "lora_grad_gap",
    "create_bar_optimizer", "add_bar",
    "SAM", "sam_step_accumulated", "sam_step_msharpness",
    "SAMTrainer", "BARTrainer", "BalancednessCallback",
]

_LAZY = {
    "LoraPair": "pairs", "lora_pairs": "pairs", "lora_balancedness": "pairs", "lora_grad_gap": "pairs",
    "create_bar_optimizer": "bar", "add_bar": "bar",
    "SAM": "sam", "sam_step_accumulated": "sam", "sam_step_msharpness": "sam",
    "SAMTrainer": "trainer", "BARTrainer": "trainer", "BalancednessCallback": "callbacks",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"balancedness.finetune.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'balancedness.finetune' has no attribute {name!r}")
