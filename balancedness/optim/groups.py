"""Parameter groups with the standard weight-decay split: no decay for biases and normalization weights.

The rule is the Hugging Face Trainer's ``get_decay_parameter_names`` (peft's ``create_loraplus_optimizer``
uses the same idea): a parameter is decayed unless it sits inside an ``nn.LayerNorm`` or its lower-cased name
matches ``bias``, ``layernorm``, ``rmsnorm``, ``norm`` as a whole name component, or ``_norm`` at the end of
one. Written here with torch alone (``balancedness.optim`` needs no transformers);
``tests/test_optim_groups.py`` checks it against the Trainer's own method on BERT and Llama models.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from torch import nn

__all__ = ["decay_parameter_names", "decay_groups"]

_NO_DECAY = re.compile(r"bias|layernorm|rmsnorm|(?:^|\.)norm(?:$|\.)|_norm(?:$|\.)")


def decay_parameter_names(model: nn.Module) -> set[str]:
    """Names (as in ``model.named_parameters()``) of the parameters weight decay applies to."""
    in_norm_layer = {
        f"{module_name}.{name}" if module_name else name
        for module_name, module in model.named_modules()
        if module_name and isinstance(module, nn.LayerNorm)
        for name, _ in module.named_parameters()
    }
    return {
        name for name, _ in model.named_parameters() if name not in in_norm_layer and not _NO_DECAY.search(name.lower())
    }


def decay_groups(model: nn.Module, weight_decay: float, decay: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Two parameter groups of the trainable parameters of ``model``: ``weight_decay`` for the names in ``decay``
    (default ``decay_parameter_names(model)``), 0 for the rest (the Trainer's ``create_optimizer`` groups)."""
    decay = decay_parameter_names(model) if decay is None else set(decay)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [
        {"params": [p for n, p in named if n in decay], "weight_decay": weight_decay},
        {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0},
    ]
