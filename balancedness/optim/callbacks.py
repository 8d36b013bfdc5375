"""Per-layer balancedness logging for the HF Trainer (spec §1.2; Fig. 3 plots 2|B_{t,l}|)."""

from __future__ import annotations

import json
import os
from typing import Any

from transformers import TrainerCallback

from balancedness.optim.pairs import lora_balancedness, lora_grad_gap
from balancedness.validation import integer

__all__ = ["BalancednessCallback", "kept_log_lines", "trim_log"]


class BalancednessCallback(TrainerCallback):
    """Append ``{"step", "balancedness": {layer: B_l}, "grad_gap": {layer: ‖g_A‖²−‖g_B‖²}}`` to a JSON-lines
    file every ``every`` optimizer steps.

    Runs in ``on_pre_optimizer_step``: the gradients are those the optimizer is about to apply (after the
    Trainer's clipping; for ``SAMTrainer`` the descent gradients at w + e; under fp16 without clipping still
    multiplied by the loss scale S, so the gap is S² times too large) and B_l is measured *before* the update.
    ``step`` is the number of the optimizer step about to be taken (1-based, as ``state.global_step`` after
    it). Only the main process writes; each record is one full line, written in append mode and flushed.

    The file is exact across resumes: at ``on_train_begin`` (``state.global_step`` is the step training
    starts from: 0, or the checkpoint's step) records of later steps are dropped, and so is a torn last line
    left by a killed process; the file is rewritten atomically. A damaged line before the last raises a
    ValueError naming the file and line.
    """

    def __init__(self, every: int = 1, path: str | os.PathLike[str] = "balancedness.jsonl") -> None:
        self.every, self.path = integer("every", every), os.fspath(path)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            trim_log(self.path, state.global_step)

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        step = state.global_step + 1
        if step % self.every or model is None or not state.is_world_process_zero:
            return
        record = {"step": step, "balancedness": lora_balancedness(model), "grad_gap": lora_grad_gap(model)}
        line = json.dumps(record) + "\n"
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()


def kept_log_lines(path: str | os.PathLike[str], max_step: int) -> list[str]:
    """The lines of the JSON-lines log ``path`` whose records have ``step`` ≤ ``max_step`` (no file: none).

    A torn last line (no newline after it: a write cut short by a kill) is dropped; any other line that is
    not a record raises a ValueError naming the file and the line.
    """
    if not os.path.exists(path):
        return []
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().split("\n")
    except UnicodeDecodeError as exc:
        raise ValueError(f"balancedness log {os.fspath(path)!r} is not UTF-8 text ({exc})") from None
    keep = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            step = json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):
            if number == len(lines):
                break
            raise ValueError(f"balancedness log {os.fspath(path)!r} is damaged at line {number}: {line[:80]!r}") from None
        if step <= max_step:
            keep.append(line + "\n")
    return keep


def trim_log(path: str | os.PathLike[str], max_step: int) -> None:
    """Keep the records of steps ≤ ``max_step`` in the log ``path``, rewritten atomically (no file: no-op)."""
    from balancedness.io import write_text

    if os.path.exists(path):
        write_text(path, "".join(kept_log_lines(path, max_step)))
