"""Per-layer balancedness logging for the HF Trainer (spec §1.2; Fig. 3 plots 2|B_{t,l}|)."""

from __future__ import annotations

import json
import os
from typing import Any

from transformers import TrainerCallback

from balancedness.finetune.pairs import lora_balancedness, lora_grad_gap

__all__ = ["BalancednessCallback"]


class BalancednessCallback(TrainerCallback):
    """Append ``{"step", "balancedness": {layer: B_l}, "grad_gap": {layer: ‖g_A‖²−‖g_B‖²}}`` to a JSON-lines
    file every ``every`` optimizer steps.

    Runs in ``on_pre_optimizer_step``: the gradients are those the optimizer is about to apply (after the
    Trainer's clipping; for ``SAMTrainer`` the descent gradients at w + e; under fp16 without clipping still
    multiplied by the loss scale S, so the gap is S² times too large) and B_l is measured *before* the update.
    ``step`` is the number of the optimizer step about to be taken (1-based, as ``state.global_step`` after
    it). Only the main process writes; each record is one full line, written in append mode and flushed.
    """

    def __init__(self, every: int = 1, path: str | os.PathLike[str] = "balancedness.jsonl") -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive int, got {every!r}")
        self.every, self.path = every, os.fspath(path)

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        step = state.global_step + 1
        if step % self.every or model is None or not state.is_world_process_zero:
            return
        record = {"step": step, "balancedness": lora_balancedness(model), "grad_gap": lora_grad_gap(model)}
        line = json.dumps(record) + "\n"
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
