"""Checkpoints a run can trust, and the exact training loss across interruptions.

The HF Trainer writes ``checkpoints/checkpoint-N/`` file by file, so a run killed (SIGKILL, a second Ctrl-C)
while it writes leaves a folder that *looks* like a checkpoint. :class:`RunRecorder` marks a checkpoint as
complete only after the Trainer has finished writing it (``on_save``): it first writes the per-step training
losses (``losses.json``), then the marker ``COMPLETE``, each atomically. :func:`last_complete_checkpoint`
only ever returns a marked checkpoint, and :func:`validate_checkpoint` reads every file of it before training
resumes, so a damaged or missing file is named up front instead of failing mid-run (or, worse, the Trainer
resuming silently with a fresh optimizer, scheduler or RNG: :data:`REQUIRED` lists what a resume needs).
Once a checkpoint is marked, the older ones are deleted (:func:`prune_checkpoints`): at any moment the
folder holds the last complete checkpoint and at most the one being written.

A run that diverges is stopped: :class:`RunRecorder` checks after every optimizer step that the step's
loss and every trainable parameter are finite, and otherwise records the step (``diverged``) and stops the
Trainer; the driver then marks the run failed (``run.py``).

A run folder is data, never code. Pickled files (``.pt``, ``.pth``, ``.bin``) are read only with
``torch.load(weights_only=True)`` (tensors, containers, and the numpy arrays of the Trainer's RNG state);
a file that needs anything more to load is refused, naming it, before the Trainer or anything else opens
it. Nothing planted in a checkpoint can run.

``train_loss`` (``metrics.json``) is the mean over optimizer steps of the step's training loss (the sum of
its micro-batch losses as the Trainer reports them), summed with ``math.fsum``. The per-step values travel in
each checkpoint, so a resumed run reports exactly the value of an uninterrupted one (the Trainer's own
``training_loss`` covers only the steps since the resume).
"""

from __future__ import annotations

import json
import math
import re
from functools import cache
from pathlib import Path
from typing import Any

from balancedness.io import write_json, write_text

__all__ = [
    "COMPLETE",
    "LOSSES",
    "NEVER_LOADED",
    "REQUIRED",
    "RunRecorder",  # noqa: F822 -- made on first use by the module's __getattr__
    "UnsafeCheckpointError",
    "checkpoint_step",
    "last_complete_checkpoint",
    "prune_checkpoints",
    "read_losses",
    "recording_trainer",
    "wrapped_peft",
    "required_files",
    "safe_torch_load",
    "validate_checkpoint",
]

COMPLETE = "COMPLETE"
LOSSES = "losses.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
#: Files the Trainer writes into a checkpoint that nothing ever loads (``training_args.bin`` is a pickle of
#: ``TrainingArguments``, kept by the Trainer for people, never read on resume): skipped, never unpickled.
NEVER_LOADED = frozenset({"training_args.bin"})
#: What a bit-identical resume needs besides the RNG state (``rng_state.pth``, or ``rng_state_<rank>.pth``
#: per torchrun worker): without any of these the Trainer would carry on silently with fresh state.
REQUIRED = ("adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json", LOSSES)


def checkpoint_step(path: str | Path) -> int:
    """N of ``.../checkpoint-N``."""
    match = _CHECKPOINT.match(Path(path).name)
    if not match:
        raise ValueError(f"{str(path)!r} is not a checkpoint-N folder")
    return int(match.group(1))


def last_complete_checkpoint(ckpt_dir: str | Path) -> Path | None:
    """The highest ``checkpoint-N`` under ``ckpt_dir`` that carries the ``COMPLETE`` marker, or None."""
    root = Path(ckpt_dir)
    if not root.is_dir():
        return None
    marked = [p for p in root.iterdir() if _CHECKPOINT.match(p.name) and (p / COMPLETE).is_file()]
    return max(marked, key=checkpoint_step, default=None)


class UnsafeCheckpointError(ValueError):
    """A pickled checkpoint file needs more than tensors and plain containers to load: it is never loaded."""


def _safe_numpy_globals() -> list[Any]:
    """The numpy objects the Trainer's ``rng_state.pth`` holds (what transformers allowlists, no more)."""
    import numpy as np

    reconstruct = np._core.multiarray._reconstruct  # type: ignore[attr-defined]  # numpy 2's private module
    return [reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def safe_torch_load(file: str | Path) -> Any:
    """``torch.load`` that cannot execute code: ``weights_only=True`` with only numpy's array globals allowed.

    Raises :class:`UnsafeCheckpointError` naming ``file`` when it needs any other global (a planted pickle).
    """
    import pickle

    import torch

    try:
        with torch.serialization.safe_globals(_safe_numpy_globals()):
            return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights_only" not in str(exc) and "Unsupported global" not in str(exc):
            raise
        found = re.search(r"Unsupported global: (GLOBAL \S+)", str(exc))
        what = found.group(1) if found else "an object that is not a tensor"
        raise UnsafeCheckpointError(
            f"checkpoint file {str(file)!r} needs code to load ({what}); a run folder is data, never code, "
            "so it was not loaded: delete the file's run, or start over with overwrite (--overwrite)"
        ) from None


def prune_checkpoints(keep: str | Path) -> None:
    """Delete every checkpoint beside the complete checkpoint ``keep`` with a lower step (rank 0, after the
    marker of ``keep`` is written: the last complete checkpoint always survives)."""
    import shutil

    keep = Path(keep)
    for folder in keep.parent.iterdir():
        if folder != keep and _CHECKPOINT.match(folder.name) and checkpoint_step(folder) < checkpoint_step(keep):
            shutil.rmtree(folder, ignore_errors=True)


def required_files(world_size: int = 1) -> tuple[str, ...]:
    """The files a checkpoint of a run with ``world_size`` workers must hold (:data:`REQUIRED` + RNG state)."""
    rng = ("rng_state.pth",) if world_size <= 1 else tuple(f"rng_state_{r}.pth" for r in range(world_size))
    return (*REQUIRED, *rng)


def read_losses(checkpoint: str | Path) -> list[float]:
    """The per-step losses of ``checkpoint`` (``losses.json``): one finite number per step up to its step;
    ValueError naming the file otherwise."""
    file = Path(checkpoint) / LOSSES
    losses = json.loads(file.read_text(encoding="utf-8"))
    bad = [
        v
        for v in (losses if isinstance(losses, list) else [losses])
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
    ]
    if not isinstance(losses, list) or bad:
        raise ValueError(
            f"checkpoint file {str(file)!r} is damaged: expected a list of finite step losses, found "
            f"{bad[0] if bad else losses!r}; start over with overwrite (--overwrite)"
        )
    if len(losses) != checkpoint_step(checkpoint):
        raise ValueError(
            f"checkpoint file {str(file)!r} holds {len(losses)} step losses for checkpoint step "
            f"{checkpoint_step(checkpoint)}: the checkpoint is damaged; start over with overwrite "
            "(--overwrite)"
        )
    return [float(v) for v in losses]


def validate_checkpoint(path: str | Path, world_size: int = 1) -> None:
    """Read every file the Trainer will load from checkpoint ``path``; ValueError naming a damaged one, or
    the first of :func:`required_files` that is missing.

    Pickled files are read with :func:`safe_torch_load`: one that would run code raises
    :class:`UnsafeCheckpointError` and nothing of it is executed. Files in :data:`NEVER_LOADED` are not read.
    """
    from safetensors import safe_open

    path = Path(path)
    missing = [name for name in required_files(world_size) if not (path / name).is_file()]
    if missing:
        raise ValueError(
            f"checkpoint {str(path)!r} lacks {missing[0]}"
            + (f" (and {', '.join(missing[1:])})" if missing[1:] else "")
            + ": a resume from it would not continue the run exactly; "
            "start over with overwrite (--overwrite)"
        )
    for file in sorted(path.iterdir()):
        if file.name in NEVER_LOADED:
            continue
        try:
            if file.suffix == ".json":
                json.loads(file.read_text(encoding="utf-8"))
            elif file.suffix in (".pt", ".pth", ".bin"):
                safe_torch_load(file)
            elif file.suffix == ".safetensors":
                with safe_open(str(file), framework="pt") as fh:
                    for key in fh.keys():
                        fh.get_tensor(key)
        except UnsafeCheckpointError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure to read means the file is damaged
            raise ValueError(
                f"checkpoint file {str(file)!r} is damaged ({type(exc).__name__}: {exc}); "
                "the run cannot resume from it: start over with overwrite (--overwrite)"
            ) from None
    read_losses(path)


@cache
def _recorder_class():
    from transformers import TrainerCallback

    class RunRecorder(TrainerCallback):
        """Per-step training losses, divergence, and the ``COMPLETE`` marker of every checkpoint the Trainer
        finishes.

        ``add(loss)`` is called with each micro-batch's loss (by :func:`recording_trainer`); ``on_step_end``
        closes the optimizer step and stops training when the step's loss or a trainable parameter is not
        finite (``diverged``: the step and what was found). Register it *last*, so the marker follows every
        other ``on_save``; after the marker, older checkpoints are deleted.
        """

        def __init__(self, losses: list[float] | None = None) -> None:
            self.losses: list[float] = list(losses or [])
            self._micro: list[float] = []
            self.diverged: dict[str, Any] | None = None

        @classmethod
        def resume(cls, checkpoint: str | Path | None) -> RunRecorder:
            return cls() if checkpoint is None else cls(read_losses(checkpoint))

        def add(self, loss: Any) -> None:
            self._micro.append(float(loss))

        def on_step_end(self, args, state, control, model=None, **kw):
            self.losses.append(math.fsum(self._micro))
            self._micro = []
            found = _non_finite(self.losses[-1], model)
            if found and self.diverged is None:
                self.diverged = {"step": state.global_step, "found": found}
                control.should_training_stop = True

        def on_save(self, args, state, control, **kw):
            if not state.is_world_process_zero:
                return
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            write_json(folder / LOSSES, self.losses[: state.global_step], indent=None)
            write_text(folder / COMPLETE, f"step {state.global_step}\n")
            prune_checkpoints(folder)

        @property
        def train_loss(self) -> float:
            return math.fsum(self.losses) / len(self.losses) if self.losses else float("nan")

    return RunRecorder


def _non_finite(loss: float, model: Any) -> str | None:
    """What is not finite after an optimizer step: the step's loss, or a trainable parameter (by name)."""
    import torch

    if not math.isfinite(loss):
        return f"the training loss is {loss}"
    for name, param in model.named_parameters() if model is not None else ():
        if param.requires_grad and not bool(torch.isfinite(param).all()):
            return f"parameter {name} is not finite"
    return None


def __getattr__(name: str) -> Any:
    if name == "RunRecorder":  # defined lazily: transformers is imported only when training
        return _recorder_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def wrapped_peft(module: Any) -> Any:
    """The peft model inside a ``tasks.ChoiceScorer`` (the label-word and choice heads), or None for any other
    module (a peft model the Trainer saves and loads itself)."""
    from balancedness.finetune.tasks import ChoiceScorer

    return module.model if isinstance(module, ChoiceScorer) else None


def recording_trainer(base: type, recorder: Any) -> type:
    """A subclass of the Trainer class ``base`` that hands each micro-batch's loss to ``recorder.add``, and whose
    checkpoints of a head module wrapping the peft model hold that model's adapter, as a peft model's do.

    (The Trainer saves a module that is neither a ``PreTrainedModel`` nor a peft model as its whole state dict:
    every frozen base weight, and an error on a model whose input and output embeddings are tied, as SmolLM2's
    are; nor can it resume from an adapter into such a module.)"""
    import os

    class Recording(base):
        def training_step(self, *args: Any, **kwargs: Any):
            loss = super().training_step(*args, **kwargs)
            recorder.add(loss.detach())
            return loss

        def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
            inner = wrapped_peft(self.model)
            if inner is None:
                return super()._save(output_dir, state_dict)
            output_dir = output_dir if output_dir is not None else self.args.output_dir
            if self.args.should_save:
                os.makedirs(output_dir, exist_ok=True)
                inner.save_pretrained(output_dir)  # adapter_model.safetensors, adapter_config.json
            return None

        def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
            inner = wrapped_peft(self.model if model is None else model)
            if inner is None:
                return super()._load_from_checkpoint(resume_from_checkpoint, model)
            inner.load_adapter(resume_from_checkpoint, inner.active_adapter, is_trainable=True)
            return None

    Recording.__name__ = Recording.__qualname__ = base.__name__
    return Recording
