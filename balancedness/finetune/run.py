"""One LoRA finetune (LoRA / SAM / m-SAM / nBAR / oBAR) on the HF Trainer: the driver behind ``balancedness finetune``.

``run_finetune(config)`` validates the config (:func:`check_config`, cheap), loads the task and checks the model
name (:func:`prepare`, before any weights load), loads the model with LoRA (``models.load_for_task``), trains with
the torch backend's ``Trainer`` / ``SAMTrainer`` / ``BARTrainer``, evaluates (``tasks.evaluate``) and writes, into
``config.out`` (rank 0 only, atomically):

* ``metrics.json``: task, method, seed, the task metric (key named by ``metric``), majority baseline, timing,
  steps, trainable parameters, the config, ``status`` (``complete`` or ``interrupted``);
* ``balancedness.jsonl``: per-layer B_l and the gradient gap every ``log_every`` steps (``BalancednessCallback``);
* ``adapter/``: the peft adapter (``save_pretrained``), plus ``checkpoints/`` while a run is unfinished.

Batch semantics: ``batch_size`` is the *global* number of examples per optimizer step. Each of the W workers
(torchrun) runs ``grad_accum`` micro-batches (``grad_accum·m`` for m-SAM: one m-sharpness chunk each) of
``batch_size / (W·grad_accum[·m])`` examples. So a 2-process run sees the same data per step as a 1-process run.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from balancedness.io import write_json

__all__ = ["METHODS", "PRECISIONS", "FinetuneConfig", "check_config", "prepare", "run_finetune", "read_metrics",
           "world_size", "micro_batch"]

METHODS = ("lora", "sam", "msam", "nbar", "obar")
PRECISIONS = ("fp32", "bf16", "fp16", "fp64")
LR_SCHEDULE = "linear"  # HF Trainer's linear decay to 0, no warm-up (few-shot, ≤ a few hundred steps)


@dataclass
class FinetuneConfig:
    """Everything one finetune needs; the CLI options map 1:1 onto these fields (see docs/finetune.md)."""

    model: str = "minilm"
    task: str | None = None  # None: bbc-news, or "custom" with train_file
    data_root: str | None = None
    train_file: str | None = None
    eval_file: str | None = None
    text_columns: tuple[str, ...] = ()
    label_column: str | None = None
    method: str = "lora"
    shots: int | None = None
    seed: int = 42
    steps: int = 100
    lr: float = 1e-3
    rho: float = 0.05
    m: int = 4
    mu: float = 0.5
    schedule: str = "linear"
    batch_size: int = 16
    grad_accum: int = 1
    precision: str = "fp32"
    lora_r: int = 8
    lora_alpha: int = 16
    target_modules: tuple[str, ...] = ()
    weight_decay: float = 0.0
    dropout: float | None = None  # None: the model's own (MiniLM 0.1); a value overrides every nn.Dropout
    max_length: int | None = None
    max_eval: int | None = None
    eval_batch_size: int = 64
    zero_shot: bool = False
    log_every: int = 10
    save_every: int = 0
    out: str = "runs/finetune"
    resume: bool = False
    keep_checkpoints: bool = False
    progress: bool = True
    extra_callbacks: list[Any] = field(default_factory=list, repr=False)  # tests: TrainerCallbacks to add

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("extra_callbacks")
        return d


def world_size() -> int:
    """W from torchrun's environment (1 when not under torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def micro_batch(config: FinetuneConfig, world: int | None = None) -> tuple[int, int]:
    """(examples per micro-batch per worker, micro-batches per optimizer step per worker)."""
    accum = config.grad_accum * (config.m if config.method == "msam" else 1)
    world = world_size() if world is None else world
    return config.batch_size // (world * accum), accum


def _positive_int(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _finite(name: str, value: Any, *, strict: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < 0 or (strict and value == 0):
        raise ValueError(f"{name} must be {'>' if strict else '>='} 0, got {value!r}")


def check_config(config: FinetuneConfig) -> None:
    """Cheap checks of every numeric and named option (no files, no models); ValueError naming the value."""
    from balancedness.schedules import SCHEDULES

    if config.method not in METHODS:
        raise ValueError(f"unknown method {config.method!r}; expected one of {', '.join(METHODS)}")
    if config.precision not in PRECISIONS:
        raise ValueError(f"unknown precision {config.precision!r}; expected one of {', '.join(PRECISIONS)}")
    if config.schedule not in SCHEDULES:
        raise ValueError(f"unknown μ schedule {config.schedule!r}; expected one of {', '.join(SCHEDULES)}")
    for name in ("steps", "batch_size", "grad_accum", "m", "lora_r", "lora_alpha", "log_every", "eval_batch_size"):
        _positive_int(name.replace("_", "-"), getattr(config, name))
    _positive_int("save-every", config.save_every, minimum=0)
    _finite("lr", config.lr, strict=True)
    _finite("rho", config.rho, strict=True)
    _finite("mu", config.mu, strict=False)
    _finite("weight-decay", config.weight_decay, strict=False)
    if config.dropout is not None and not (0.0 <= config.dropout < 1.0):
        raise ValueError(f"dropout must be in [0, 1), got {config.dropout!r}")
    world = world_size()
    per_device, accum = micro_batch(config, world)
    if per_device < 1 or per_device * world * accum != config.batch_size:
        parts = f"{world} worker(s) × grad-accum {config.grad_accum}" + (
            f" × m {config.m}" if config.method == "msam" else "")
        raise ValueError(f"batch-size {config.batch_size} is not divisible into {parts} micro-batches; "
                         f"choose a batch size that is a multiple of {world * accum}")
    if config.precision == "fp16":
        import torch

        if not torch.cuda.is_available():
            raise ValueError("precision 'fp16' needs a GPU: on CPU the HF Trainer/accelerate silently train in fp32 "
                             "(no autocast, no GradScaler); use --precision bf16 or fp32 on CPU")


def prepare(config: FinetuneConfig):
    """Validate ``config``, load the task data and resolve the model name; no weights are loaded.

    Returns ``(task, model_path)``. Raises ValueError / FileNotFoundError naming the bad value.
    """
    from balancedness.finetune.data import load_task
    from balancedness.finetune.models import check_compatible, model_family, resolve_model, _config

    check_config(config)
    task = load_task(config.task, data_root=config.data_root, seed=config.seed, shots=config.shots,
                     train_file=config.train_file, eval_file=config.eval_file,
                     text_columns=list(config.text_columns) or None, label_column=config.label_column,
                     max_eval=config.max_eval)
    path = resolve_model(config.model)
    check_compatible(model_family(_config(path)), task, config.model)
    return task, path


def read_metrics(out: str | os.PathLike[str]) -> dict[str, Any] | None:
    """``out/metrics.json`` as a dict, or None when absent or unreadable."""
    import json

    try:
        return json.loads((Path(out) / "metrics.json").read_text())
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------------------------- callbacks
def _callback_classes():
    """TrainerCallbacks (defined lazily: transformers is imported only when training)."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Wall time of every optimizer step (the median is robust to this machine's hiccups)."""

        def __init__(self) -> None:
            self.times: list[float] = []
            self._t0 = 0.0

        def on_step_begin(self, args, state, control, **kw):
            self._t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self._t0)

    class GracefulStop(TrainerCallback):
        """First Ctrl-C: finish the current step, checkpoint it, stop. (A second Ctrl-C interrupts at once.)"""

        def __init__(self) -> None:
            self.requested = False

        def on_step_end(self, args, state, control, **kw):
            if self.requested:
                control.should_save = True
                control.should_training_stop = True

    return StepTimer, GracefulStop


def _sigint_handler(stop: Any) -> Callable[[int, Any], None]:
    def handler(signum: int, frame: Any) -> None:
        if stop.requested:
            raise KeyboardInterrupt
        stop.requested = True
        print("\ninterrupt: finishing this step and saving a checkpoint (Ctrl-C again to abort now)", flush=True)
    return handler


# --------------------------------------------------------------------------------------------- trainer
def _training_args(config: FinetuneConfig, ckpt_dir: Path):
    import torch
    from transformers import TrainingArguments

    per_device, accum = micro_batch(config)
    on_gpu = torch.cuda.is_available()
    return TrainingArguments(
        output_dir=str(ckpt_dir), per_device_train_batch_size=per_device, gradient_accumulation_steps=accum,
        max_steps=config.steps, learning_rate=config.lr, lr_scheduler_type=LR_SCHEDULE, warmup_steps=0,
        weight_decay=config.weight_decay, optim="adamw_torch", seed=config.seed, data_seed=config.seed,
        bf16=config.precision == "bf16", fp16=config.precision == "fp16", use_cpu=not on_gpu,
        ddp_backend="gloo" if world_size() > 1 and not on_gpu else None, ddp_find_unused_parameters=False,
        save_strategy="steps" if config.save_every else "no", save_steps=config.save_every or 500,
        logging_strategy="no", report_to=[], disable_tqdm=not (config.progress and is_main_process()),
        dataloader_num_workers=0, remove_unused_columns=False)


def _make_trainer(config: FinetuneConfig, head: Any, train_dataset: Any, args: Any, callbacks: list[Any]):
    from balancedness.finetune.trainer import BARTrainer, SAMTrainer
    from transformers import Trainer

    common = dict(model=head.module, args=args, train_dataset=train_dataset, data_collator=head.collate,
                  callbacks=callbacks)
    if config.method in ("sam", "msam"):
        trainer = SAMTrainer(rho=config.rho, msharpness=config.method == "msam", **common)
    elif config.method in ("nbar", "obar"):
        trainer = BARTrainer(bar_mu=config.mu, bar_variant=config.method, bar_schedule=config.schedule, **common)
    else:
        trainer = Trainer(**common)
    if not config.progress:
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
    trainer.model_accepts_loss_kwargs = False  # exact 1/k averaging over micro-batches (docs/torch-backend.md)
    return trainer


def _set_dropout(module: Any, p: float) -> None:
    from torch import nn

    for sub in module.modules():
        if isinstance(sub, nn.Dropout):
            sub.p = p


def _last_checkpoint(ckpt_dir: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(ckpt_dir)) if ckpt_dir.is_dir() else None


def _trim_log(path: Path, max_step: int) -> None:
    """Keep the records of steps ≤ ``max_step`` (resuming from checkpoint ``max_step``)."""
    import json

    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= max_step]
    from balancedness.io import write_text

    write_text(path, "".join(line + "\n" for line in keep))


def _save_adapter(model: Any, target: Path) -> None:
    """``save_pretrained`` into a temporary sibling folder, then swap it into place."""
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix=".adapter.tmp-", dir=target.parent))
    try:
        model.save_pretrained(str(tmp))
        old = target.with_name(target.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _eval_sorted(head: Any, task: Any, batch_size: int) -> dict[str, Any]:
    """``tasks.evaluate`` with the eval set sorted by length (less padding; the metric is order-free)."""
    from balancedness.finetune.tasks import evaluate

    examples = sorted(task.eval, key=lambda ex: sum(len(t) for t in ex.texts))
    return evaluate(head, examples, batch_size=batch_size)


# --------------------------------------------------------------------------------------------- driver
def run_finetune(config: FinetuneConfig) -> dict[str, Any]:
    """Train, evaluate and write the outputs of one run; returns the metrics dict (see module docstring).

    ``config.resume``: when ``out/metrics.json`` says ``complete``, return it without training; otherwise
    continue from the last checkpoint in ``out/checkpoints`` (same final weights as an uninterrupted run).
    Ctrl-C: the first finishes the current step, the second interrupts it; either way a checkpoint and
    ``metrics.json`` with ``"status": "interrupted"`` are written and KeyboardInterrupt is re-raised.
    Non-zero torchrun ranks train but write nothing and return ``{}``.
    """
    task, model_path = prepare(config)
    out = Path(config.out)
    main = is_main_process()
    previous = read_metrics(out) if config.resume else None
    if previous and previous.get("status") == "complete":
        return previous
    import torch
    from transformers import set_seed
    from transformers.utils import logging as hf_logging

    from balancedness.finetune.callbacks import BalancednessCallback
    from balancedness.finetune.models import load_for_task
    from balancedness.finetune.tasks import majority_accuracy

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    ckpt_dir = out / "checkpoints"
    log_path = out / "balancedness.jsonl"
    resume_from = _last_checkpoint(ckpt_dir) if config.resume else None
    if main:
        out.mkdir(parents=True, exist_ok=True)
        if resume_from is None:
            shutil.rmtree(ckpt_dir, ignore_errors=True)
            log_path.unlink(missing_ok=True)
        else:
            _trim_log(log_path, int(Path(resume_from).name.rsplit("-", 1)[1]))

    set_seed(config.seed)
    dtype = {"fp64": torch.float64, "bf16": torch.bfloat16 if torch.cuda.is_available() else torch.float32}.get(
        config.precision, torch.float32)
    model, _tok, head = load_for_task(model_path, task, lora_r=config.lora_r, lora_alpha=config.lora_alpha,
                                      target_modules=list(config.target_modules) or None, dtype=dtype,
                                      max_length=config.max_length)
    if config.dropout is not None:
        _set_dropout(head.module, config.dropout)
    StepTimer, GracefulStop = _callback_classes()
    timer, stop = StepTimer(), GracefulStop()
    callbacks = [BalancednessCallback(every=config.log_every, path=log_path), timer, stop, *config.extra_callbacks]
    trainer = _make_trainer(config, head, head.dataset(task.train), _training_args(config, ckpt_dir), callbacks)

    trainable = sum(p.numel() for p in head.module.parameters() if p.requires_grad)
    record: dict[str, Any] = {
        "task": task.name, "method": config.method, "model": config.model, "seed": config.seed,
        "metric": task.metric, "steps": config.steps, "trainable_params": trainable,
        "total_params": sum(p.numel() for p in head.module.parameters()), "world_size": world_size(),
        "n_train": len(task.train), "n_eval": len(task.eval), "source": task.source, "notes": task.notes,
        "config": config.to_json(),
    }
    if task.kind == "classification":
        record["majority"] = majority_accuracy(task)
    if config.zero_shot and main and resume_from is None:
        record["zero_shot"] = _eval_sorted(head, task, config.eval_batch_size)[task.metric]
    elif previous and "zero_shot" in previous:
        record["zero_shot"] = previous["zero_shot"]

    prior_seconds = float(previous.get("train_seconds", 0.0)) if previous and resume_from else 0.0
    use_handler = main and world_size() == 1 and _in_main_thread()
    old_handler = signal.signal(signal.SIGINT, _sigint_handler(stop)) if use_handler else None
    t0 = time.perf_counter()
    try:
        result = trainer.train(resume_from_checkpoint=resume_from)
    except KeyboardInterrupt:
        if world_size() == 1:
            if trainer.state.global_step > 0 and _last_checkpoint(ckpt_dir) != str(
                    ckpt_dir / f"checkpoint-{trainer.state.global_step}"):
                trainer._save_checkpoint(trainer.model, trial=None)
            _write_partial(out, record, trainer, timer, prior_seconds + time.perf_counter() - t0)
        raise
    finally:
        if use_handler:
            signal.signal(signal.SIGINT, old_handler)
    train_seconds = prior_seconds + time.perf_counter() - t0
    if stop.requested:
        if main:
            _write_partial(out, record, trainer, timer, train_seconds)
        raise KeyboardInterrupt
    if not main:
        return {}
    record.update(_timing(timer, train_seconds), train_loss=float(result.training_loss))
    record.update(_eval_sorted(head, task, config.eval_batch_size))
    _save_adapter(head.model, out / "adapter")
    record["status"] = "complete"
    write_json(out / "metrics.json", record)
    if not config.keep_checkpoints:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    return record


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _timing(timer: Any, train_seconds: float) -> dict[str, float]:
    times = timer.times[1:] or timer.times  # the first step pays for warm-up
    return {"train_seconds": train_seconds, "seconds_per_step": statistics.median(times) if times else None}


def _write_partial(out: Path, record: dict[str, Any], trainer: Any, timer: Any, seconds: float) -> None:
    ckpt = _last_checkpoint(out / "checkpoints")
    write_json(out / "metrics.json", {**record, **_timing(timer, seconds), "status": "interrupted",
                                      "step_reached": trainer.state.global_step, "checkpoint": ckpt})
