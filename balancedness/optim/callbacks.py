"""Per-layer balancedness in the HF Trainer's logs and in a JSON-lines file (spec §1.2; Fig. 3 plots 2|B_{t,l}|)."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from transformers import TrainerCallback

from balancedness.io import json_text
from balancedness.optim import LOG_NAME
from balancedness.optim.pairs import lora_balancedness, lora_grad_gap
from balancedness.validation import integer

__all__ = ["BalancednessCallback", "balancedness_logs", "kept_log_lines", "trim_log"]

logger = logging.getLogger(__name__)


class BalancednessCallback(TrainerCallback):
    """Measure B_l = ½(‖A_l‖² − ‖B_l‖²) and the gradient gap ‖g_{A_l}‖² − ‖g_{B_l}‖² of every LoRA pair every
    ``every`` optimizer steps, and log them through the Trainer.

    Args:
        every: measure every k-th optimizer step (k ≥ 1); default ``None``: the Trainer's ``logging_steps``.
        path: also append ``{"step", "balancedness": {layer: B_l}, "grad_gap": {layer: gap}}`` to a JSON-lines
            file: ``True`` for ``<output_dir>/balancedness.jsonl``, or a path; ``False`` (default) for none.
            Strict JSON: a value that is not finite (a diverging run) is written as ``null``.
        trainer: the Trainer whose ``log`` carries the values. ``SAMTrainer`` and ``BARTrainer`` link their
            callbacks themselves; with the stock ``Trainer`` pass it (``trainer.add_callback(
            BalancednessCallback(trainer=trainer))``).

    Measured in ``on_pre_optimizer_step``: the gradients are those the optimizer is about to apply (after the
    Trainer's clipping; for ``SAMTrainer`` the descent gradients at w + e; under fp16 without clipping still
    multiplied by the loss scale S, so the gap is S² times too large) and B_l is the value *before* the update.
    ``step`` is the number of the optimizer step about to be taken (1-based, as ``state.global_step`` after it).

    Logs: at the end of that step, ``trainer.log(balancedness_logs(record))`` — keys ``balancedness/<layer>``,
    ``grad_gap/<layer>`` and the summaries ``balancedness/mean_abs``, ``balancedness/max_abs``,
    ``grad_gap/mean_abs``, ``grad_gap/max_abs`` — so the values land in ``state.log_history``,
    ``trainer_state.json`` and every ``report_to`` integration (TensorBoard: ``train/balancedness/...``), at
    ``step``. Nothing is logged when ``args.logging_strategy`` is ``"no"``. Without a linked trainer the entry
    goes into ``state.log_history`` (hence ``trainer_state.json``) only, with a warning if ``report_to`` is set.
    Logging changes nothing in training: it reads the weights and gradients under ``no_grad``.

    The file and the logs are exact across resumes: ``log_history`` comes back from the checkpoint, and at
    ``on_train_begin`` (``state.global_step`` = the step training starts from) records of later steps are
    dropped from the file, as is a torn last line left by a killed process (rewritten atomically; a damaged
    line before the last raises a ValueError naming the file and line). Only the main process measures, writes
    and logs; each record is one full line, written in append mode and flushed.
    """

    def __init__(
        self, every: int | None = None, path: str | os.PathLike[str] | bool = False, *, trainer: Any = None
    ) -> None:
        self.every = None if every is None else integer("every", every)
        if not isinstance(path, (bool, str, os.PathLike)):
            raise TypeError(f"path must be True (<output_dir>/{LOG_NAME}), False (no file) or a path, got {path!r}")
        self.path = path
        self.trainer = trainer
        self._every = 1
        self._file: str | None = None
        self._record: dict[str, Any] | None = None
        self._warned = False

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._every = self.every if self.every is not None else max(1, int(state.logging_steps or 1))
        self._record = None
        self._file = (
            None
            if self.path is False
            else (os.path.join(args.output_dir, LOG_NAME) if self.path is True else os.fspath(self.path))
        )
        if self._file is not None and state.is_world_process_zero:
            trim_log(self._file, state.global_step)

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        step = state.global_step + 1
        if step % self._every or model is None or not state.is_world_process_zero:
            return
        self._record = {"step": step, "balancedness": lora_balancedness(model), "grad_gap": lora_grad_gap(model)}
        if self._file is not None:
            os.makedirs(os.path.dirname(os.path.abspath(self._file)), exist_ok=True)
            with open(self._file, "a", encoding="utf-8") as fh:
                fh.write(json_text(self._record) + "\n")  # strict JSON: a NaN is null
                fh.flush()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        record, self._record = self._record, None
        if record is None or record["step"] != state.global_step or _logging_off(args):
            return
        logs = balancedness_logs(record)
        if self.trainer is not None:
            should_log = control.should_log  # Trainer.log clears it, and the Trainer's own logs of this step follow
            self.trainer.log(logs)
            control.should_log = should_log
            return
        if args.report_to and not self._warned:
            logger.warning(
                "BalancednessCallback is not linked to its Trainer, so its values reach "
                "state.log_history and trainer_state.json but not report_to=%s: pass "
                "BalancednessCallback(trainer=trainer), or train with SAMTrainer/BARTrainer",
                args.report_to,
            )
            self._warned = True
        state.log_history.append({**logs, "epoch": state.epoch, "step": state.global_step})


def _logging_off(args: Any) -> bool:
    return str(getattr(args.logging_strategy, "value", args.logging_strategy)) == "no"


def balancedness_logs(record: dict[str, Any]) -> dict[str, float]:
    """A record ``{"step", "balancedness": {layer: B_l}, "grad_gap": {layer: gap}}`` as flat Trainer logs:
    ``balancedness/<layer>``, ``grad_gap/<layer>``, and per quantity ``mean_abs`` = (1/L) Σ_l |·| and
    ``max_abs`` = max_l |·| (layer names hold a dot, the summaries none, so they cannot collide)."""
    logs: dict[str, float] = {}
    for quantity in ("balancedness", "grad_gap"):
        values = record.get(quantity) or {}
        logs.update({f"{quantity}/{layer}": float(v) for layer, v in values.items()})
        if values:
            magnitudes = [abs(float(v)) for v in values.values()]
            logs[f"{quantity}/mean_abs"] = sum(magnitudes) / len(magnitudes)
            logs[f"{quantity}/max_abs"] = max(magnitudes)
    return logs


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
            raise ValueError(
                f"balancedness log {os.fspath(path)!r} is damaged at line {number}: {line[:80]!r}"
            ) from None
        if step <= max_step:
            keep.append(line + "\n")
    return keep


def trim_log(path: str | os.PathLike[str], max_step: int) -> None:
    """Keep the records of steps ≤ ``max_step`` in the log ``path``, rewritten atomically (no file: no-op)."""
    from balancedness.io import write_text

    if os.path.exists(path):
        write_text(path, "".join(kept_log_lines(path, max_step)))
