"""SAM, m-SAM, BAR (nBAR/oBAR), Flat-LoRA and Bi-LoRA for torch/peft LoRA models, plus HF Trainer integration.

The torch optimizer library of the package; the LM finetuning application (``balancedness.finetune``) is
built on it, never the reverse. Math for each method lives in one module: ``pairs`` (B_l, spec §1.2),
``sam`` (Alg. 1, eqs. (4), (22), (38)), ``microbatch`` (SAM fed one micro-batch at a time: the Trainer's and
accelerate's accumulation loops), ``bar`` (Algs. 2/3), ``groups`` (the weight-decay split), ``schedules``
(μ_t by step, spec §4.5.7), ``amp`` (GradScaler semantics), ``flatlora`` and ``bilora`` (flatness-methods
§2, §3; their Trainers are built on first use); ``trainer`` and ``callbacks`` plug them into the
HF ``Trainer`` and are the only modules that import transformers (none imports accelerate). Everything else needs torch
alone (peft models are found by their parameter names, not by importing peft).

Every name is loaded on first use, so ``import balancedness.optim`` is free and commands that need no torch
start without it.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "LoraPair",
    "lora_pairs",
    "lora_balancedness",
    "lora_balancedness_matrices",
    "lora_grad_gap",
    "decay_groups",
    "VARIANTS",
    "SCHEDULES",
    "BARScheduler",
    "create_bar_optimizer",
    "bar_optimizer_class",
    "scheduler_total_steps",
    "SAM",
    "sam_step_accumulated",
    "sam_step_msharpness",
    "sam_backward",
    "SAMTrainer",
    "BARTrainer",
    "BalancednessCallback",
    "LOG_NAME",
    "FlatLoRA",
    "flat_lora_layers",
    "flat_lora_perturb_",
    "flat_lora_restore_",
    "FlatLoRATrainer",
    "BiLoRA",
    "bilora_clip_",
    "bilora_norm",
    "BiLoRATrainer",
]

#: The balancedness log's file name (``BalancednessCallback(path=True)`` writes ``<output_dir>/balancedness.jsonl``;
#: a finetune run folder holds it under this name). Here, not in ``callbacks``, so torch-free readers share it.
LOG_NAME = "balancedness.jsonl"

_LAZY = {
    "LoraPair": "pairs",
    "lora_pairs": "pairs",
    "lora_balancedness": "pairs",
    "lora_balancedness_matrices": "pairs",
    "lora_grad_gap": "pairs",
    "decay_groups": "groups",
    "VARIANTS": "bar",
    "SCHEDULES": "schedules",
    "create_bar_optimizer": "bar",
    "bar_optimizer_class": "bar",
    "scheduler_total_steps": "schedules",
    "BARScheduler": "schedules",
    "SAM": "sam",
    "sam_step_accumulated": "sam",
    "sam_step_msharpness": "sam",
    "sam_backward": "microbatch",
    "SAMTrainer": "trainer",
    "BARTrainer": "trainer",
    "BalancednessCallback": "callbacks",
    "FlatLoRA": "flatlora",
    "flat_lora_layers": "flatlora",
    "flat_lora_perturb_": "flatlora",
    "flat_lora_restore_": "flatlora",
    "FlatLoRATrainer": "flatlora",
    "BiLoRA": "bilora",
    "bilora_clip_": "bilora",
    "bilora_norm": "bilora",
    "BiLoRATrainer": "bilora",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
