"""Checkpoints a run can trust, and the exact training loss across interruptions.

The HF Trainer writes ``checkpoints/checkpoint-N/`` file by file, so a run killed (SIGKILL, a second Ctrl-C)
while it writes leaves a folder that *looks* like a checkpoint. :class:`RunRecorder` marks a checkpoint as
complete only after the Trainer has finished writing it (``on_save``): it first writes the per-step training
losses (``losses.json``), then the marker ``COMPLETE``, each atomically. :func:`last_complete_checkpoint`
only ever returns a marked checkpoint, and :func:`validate_checkpoint` reads every file of it before training
resumes, so a damaged file is named up front instead of failing mid-run.

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
from functools import lru_cache
from pathlib import Path
from typing import Any

from balancedness.io import write_json, write_text

__all__ = ["COMPLETE", "LOSSES", "NEVER_LOADED", "RunRecorder", "UnsafeCheckpointError", "checkpoint_step",
           "last_complete_checkpoint", "recording_trainer", "safe_torch_load", "validate_checkpoint"]

COMPLETE = "COMPLETE"
LOSSES = "losses.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
#: Files the Trainer writes into a checkpoint that nothing ever loads (``training_args.bin`` is a pickle of
#: ``TrainingArguments``, kept by the Trainer for people, never read on resume): skipped, never unpickled.
NEVER_LOADED = frozenset({"training_args.bin"})


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

    return [np._core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


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
            "so it was not loaded: delete the file's run, or start over with overwrite (--overwrite)") from None


def validate_checkpoint(path: str | Path) -> None:
    """Read every file the Trainer will load from checkpoint ``path``; ValueError naming a damaged one.

    Pickled files are read with :func:`safe_torch_load`: one that would run code raises
    :class:`UnsafeCheckpointError` and nothing of it is executed. Files in :data:`NEVER_LOADED` are not read.
    """
    from safetensors import safe_open

    path = Path(path)
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
            raise ValueError(f"checkpoint file {str(file)!r} is damaged ({type(exc).__name__}: {exc}); "
                             "the run cannot resume from it: start over with overwrite (--overwrite)") from None
    if not (path / LOSSES).is_file():
        raise ValueError(f"checkpoint {str(path)!r} lacks {LOSSES}: it was not written by this version")


@lru_cache(maxsize=None)
def _recorder_class():
    from transformers import TrainerCallback

    class RunRecorder(TrainerCallback):
        """Per-step training losses, and the ``COMPLETE`` marker of every checkpoint the Trainer finishes.

        ``add(loss)`` is called with each micro-batch's loss (by :func:`recording_trainer`); ``on_step_end``
        closes the optimizer step. Register it *last*, so the marker follows every other ``on_save``.
        """

        def __init__(self, losses: list[float] | None = None) -> None:
            self.losses: list[float] = list(losses or [])
            self._micro: list[float] = []

        @classmethod
        def resume(cls, checkpoint: str | Path | None) -> "RunRecorder":
            if checkpoint is None:
                return cls()
            losses = json.loads((Path(checkpoint) / LOSSES).read_text())
            if len(losses) != checkpoint_step(checkpoint):
                raise ValueError(f"{str(Path(checkpoint) / LOSSES)!r} holds {len(losses)} step losses for "
                                 f"checkpoint step {checkpoint_step(checkpoint)}: the checkpoint is damaged")
            return cls(losses)

        def add(self, loss: Any) -> None:
            self._micro.append(float(loss))

        def on_step_end(self, args, state, control, **kw):
            self.losses.append(math.fsum(self._micro))
            self._micro = []

        def on_save(self, args, state, control, **kw):
            if not state.is_world_process_zero:
                return
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            write_json(folder / LOSSES, self.losses[: state.global_step], indent=None)
            write_text(folder / COMPLETE, f"step {state.global_step}\n")

        @property
        def train_loss(self) -> float:
            return math.fsum(self.losses) / len(self.losses) if self.losses else float("nan")

    return RunRecorder


def __getattr__(name: str) -> Any:
    if name == "RunRecorder":  # defined lazily: transformers is imported only when training
        return _recorder_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def recording_trainer(base: type, recorder: Any) -> type:
    """A subclass of the Trainer class ``base`` that hands each micro-batch's loss to ``recorder.add``."""

    class Recording(base):  # type: ignore[misc, valid-type]
        def training_step(self, *args: Any, **kwargs: Any):
            loss = super().training_step(*args, **kwargs)
            recorder.add(loss.detach())
            return loss

    Recording.__name__ = Recording.__qualname__ = base.__name__
    return Recording
