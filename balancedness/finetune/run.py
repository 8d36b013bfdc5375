"""One LoRA finetune (any method of ``balancedness.methods``: LoRA, SAM, m-SAM, nBAR, oBAR, ASAM, ...) on the HF
Trainer: the driver behind ``balancedness finetune``.

:func:`prepare` validates the config (:func:`check_config`, cheap), loads the task and resolves the model, each
once and before any weights load, into a :class:`PreparedRun`; ``run_finetune(prepared)`` (or
``run_finetune(config)``, which prepares it) loads the model with LoRA (``models.load_for_task``), trains with
the method's binding (``bindings.py``: ``Trainer`` / ``SAMTrainer`` / ``BARTrainer``), evaluates
(``tasks.evaluate``) and writes, into ``config.out`` (rank 0 only, atomically; the files of a run folder:
``record.RunFolder``):

* ``run.json``: the run's fingerprint (``provenance.py``), written before training; what may happen to a
  folder that already holds a run is decided by ``runfolder.plan_run`` (docs/finetune.md "Run folders");
* ``metrics.json`` (``record.RunRecord``, which ``run_finetune`` returns): task, method, seed, the task metric
  (key named by ``metric``), majority baseline, timing, steps, ``train_loss``, trainable parameters, the config,
  ``fingerprint_id``, ``status`` (``complete``, ``interrupted``, or ``failed`` with ``error``: a run whose loss
  or parameters stop being finite ends at that step, ``diverged_at``, and raises :class:`RunFailedError`; so
  does one whose outputs cannot be written, a full disk or a read-only folder);
* ``balancedness.jsonl``: per-layer B_l and the gradient gap every ``log_every`` steps (``BalancednessCallback``);
* ``adapter/``: the peft adapter (``save_pretrained``), plus ``checkpoints/`` while a run is unfinished (only
  those marked ``COMPLETE`` count, ``checkpoints.py``).

Batch semantics: ``batch_size`` is the *global* number of examples per optimizer step. Each of the W workers
(torchrun) runs ``grad_accum`` micro-batches (``grad_accum·m`` for m-SAM: one m-sharpness chunk each) of
``batch_size / (W·grad_accum[·m])`` examples. So a 2-process run sees the same data per step as a 1-process run.
A ``batch_size`` above the number of training examples is reduced to the batch a step really forms
(:func:`fit_batch`), and that is what ``run.json`` and ``metrics.json`` record.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from balancedness.finetune.bindings import binding, trainer_class
from balancedness.finetune.data import TaskData, TaskOptions
from balancedness.finetune.provenance import fingerprint, fingerprint_id
from balancedness.finetune.record import RunFolder, RunRecord, Status
from balancedness.finetune.runfolder import (
    RunFailedError,
    RunFolderError,
    RunPlan,
    begin_run,
    hold_run_folder,
    plan_run,
    read_metrics,
)
from balancedness.io import make_temp_dir, umask, write_json
from balancedness.methods import METHODS as ROWS
from balancedness.methods import MU, RHO, SCHEDULE, SHARED, Derived, M, method, names
from balancedness.validation import choice, integer, number

if TYPE_CHECKING:
    from balancedness.finetune.models import ModelSpec

__all__ = [
    "METHODS",
    "TABLE_METHODS",
    "PRECISIONS",
    "BASE_OPTIMIZERS",
    "METHOD_FIELDS",
    "NOT_COUNTED",
    "FinetuneConfig",
    "PreparedRun",
    "RunRecord",
    "RunFolderError",
    "RunFailedError",
    "check_config",
    "prepare",
    "fit_batch",
    "run_finetune",
    "read_metrics",
    "world_size",
    "micro_batch",
    "hyper_values",
    "parse_hparams",
]

#: The built-in methods' names (``balancedness.methods`` is the table; methods registered later are not here).
METHODS = names()
#: The methods of the paper's Table 1, in its column order: what ``sweep`` and the demo compare by default.
TABLE_METHODS = names(table=True)
PRECISIONS = ("fp32", "bf16", "fp16", "fp64")
#: ``--base-optimizer``: the optimizer every method steps with (SAM's descent, BAR's base step, Flat-LoRA's and
#: Bi-LoRA's update), as the HF Trainer's ``optim`` name: torch AdamW (the default), or plain SGD (no momentum),
#: under which the flatness spec's §5 predictions are exact (docs/finetune.md "Base optimizer").
BASE_OPTIMIZERS = {"adamw": "adamw_torch", "sgd": "sgd"}
#: The config fields that are some method's hyper-parameter: each counts in the fingerprint only of the methods
#: whose row declares it. A method's other hyper-parameters live in ``FinetuneConfig.hparams``.
METHOD_FIELDS = ("rho", "m", "mu", "schedule")
#: ``{method: the config fields it reads}``, from the rows (they do not count in other methods' fingerprints).
METHOD_OPTIONS = Derived(
    lambda: {n: tuple(h.name for h in row.hyper if h.name in METHOD_FIELDS) for n, row in ROWS.items()}
)
LR_SCHEDULE = "linear"  # HF Trainer's linear decay to 0, no warm-up (few-shot, ≤ a few hundred steps)
#: The metadata of a FinetuneConfig field that does not count in the run's fingerprint.
NOT_COUNTED_FIELD = {"counted": False}
#: The metadata of a FinetuneConfig field that a record (``to_json``) and so the fingerprint hold only when it is
#: set (differs from its default): the fields added after records existed, so the records and fingerprints of runs
#: that do not use them are as they were.
WHEN_SET = {"json": "when set"}


@dataclass
class FinetuneConfig:
    """Everything one finetune needs; the CLI options map 1:1 onto these fields (see docs/finetune.md).

    Every field counts in the run's fingerprint (``provenance.py``) unless its metadata says
    ``{"counted": False}``; of the methods' own hyper-parameters (:data:`METHOD_OPTIONS`) only the run's
    method's count."""

    model: str = "minilm"
    task: str | None = None  # None: bbc-news, or "custom" with train_file
    data_root: str | None = field(default=None, metadata=NOT_COUNTED_FIELD)  # where the data lives (content counts)
    train_file: str | None = field(default=None, metadata=NOT_COUNTED_FIELD)
    eval_file: str | None = field(default=None, metadata=NOT_COUNTED_FIELD)
    text_columns: tuple[str, ...] = ()
    label_column: str | None = None
    # a TOML task file (finetune/taskfile.py): the task's files, columns and prompt (where it lives: not counted)
    task_file: str | None = field(default=None, metadata={**NOT_COUNTED_FIELD, **WHEN_SET})
    method: str = "lora"
    shots: int | None = None
    seed: int = 42
    steps: int = 100
    lr: float = SHARED[0].default
    rho: float = RHO.default
    m: int = M.default
    mu: float = MU.default
    schedule: str = SCHEDULE.default
    batch_size: int = 16
    grad_accum: int = 1
    precision: str = "fp32"
    lora_r: int = 8
    lora_alpha: int = 16
    target_modules: tuple[str, ...] = ()
    weight_decay: float = SHARED[1].default
    base_optimizer: str = field(default="adamw", metadata=WHEN_SET)  # a key of BASE_OPTIMIZERS
    dropout: float | None = None  # None: the model's own (MiniLM 0.1); a value overrides every nn.Dropout
    max_length: int | None = None
    max_eval: int | None = None
    eval_batch_size: int = 64
    zero_shot: bool = False
    log_every: int = 10
    save_every: int = field(default=0, metadata=NOT_COUNTED_FIELD)  # how the command behaves, from here on
    out: str = field(default="runs/finetune", metadata=NOT_COUNTED_FIELD)
    resume: bool = field(default=False, metadata=NOT_COUNTED_FIELD)
    overwrite: bool = field(default=False, metadata=NOT_COUNTED_FIELD)
    keep_checkpoints: bool = field(default=False, metadata=NOT_COUNTED_FIELD)
    progress: bool = field(default=True, metadata=NOT_COUNTED_FIELD)
    # the method's hyper-parameters that are no field (counted through result_options; in records when set)
    hparams: dict[str, Any] = field(default_factory=dict, metadata=WHEN_SET)
    # tests: TrainerCallbacks to add (not an option: not in metrics.json either)
    extra_callbacks: list[Any] = field(default_factory=list, repr=False, metadata={"counted": False, "json": False})

    def to_json(self) -> dict[str, Any]:
        """The fields as JSON values (tuples as lists), exactly as ``metrics.json`` reads back: not the fields whose
        metadata says ``{"json": False}``, and those marked :data:`WHEN_SET` only when they differ from their default
        (``hparams``, ``task_file``, ``base_optimizer``)."""
        import json

        d = asdict(self)
        for f in dataclasses.fields(self):
            if not f.metadata.get("json", True) or (f.metadata.get("json") == "when set" and d[f.name] == _default(f)):
                d.pop(f.name)
        return json.loads(json.dumps(d))

    def result_options(self) -> dict[str, Any]:
        """The options the run's fingerprint counts: the counted fields (:data:`NOT_COUNTED`: those whose metadata
        says ``{"counted": False}``) but not other methods' fields (ρ only for SAM, ...), and ``hparams`` with
        every default filled in, when the method's row has such hyper-parameters."""
        unused = (set(METHOD_FIELDS) - set(METHOD_OPTIONS[self.method])) | set(NOT_COUNTED)
        options = {k: v for k, v in self.to_json().items() if k not in unused and k != "hparams"}
        values = hyper_values(self)
        extra = {k: values[k] for k in values if k not in METHOD_FIELDS}
        return {**options, "hparams": extra} if extra else options

    def with_options(self, **options: Any) -> FinetuneConfig:
        """A copy with ``options`` set: config fields by name, any other name into ``hparams`` (a search point)."""
        known = {f.name for f in dataclasses.fields(self)}
        extra = {k: v for k, v in options.items() if k not in known}
        own = {k: v for k, v in options.items() if k in known}
        if extra:
            own["hparams"] = {**self.hparams, **extra}
        return dataclasses.replace(self, **own)

    def task_options(self) -> TaskOptions:
        """The options of ``data.load_task`` (which task, where its data lives, the K-shot draw, the eval subset)."""
        return TaskOptions(
            self.task,
            self.data_root,
            self.seed,
            self.shots,
            self.train_file,
            self.eval_file,
            tuple(self.text_columns),
            self.label_column,
            self.max_eval,
            self.task_file,
        )


_CONFIG_FIELDS = frozenset(f.name for f in dataclasses.fields(FinetuneConfig))


def _default(f: dataclasses.Field[Any]) -> Any:
    """The default value of a dataclass field (its ``default_factory``'s value, if it has one)."""
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def hyper_values(config: FinetuneConfig) -> dict[str, Any]:
    """``{name: value}`` of every hyper-parameter of the config's method (its row): a config field, or
    ``hparams``' value, or the row's default."""
    row = method(config.method)
    return {
        h.name: getattr(config, h.name) if h.name in METHOD_FIELDS else config.hparams.get(h.name, h.default)
        for h in row.hyper
    }


def parse_hparams(method_name: str, texts: Sequence[str]) -> dict[str, Any]:
    """``["beta=0.5"]`` → ``{"beta": 0.5}``, typed by the row of ``method_name``; ValueError naming a bad item."""
    row = method(method_name)
    out: dict[str, Any] = {}
    for text in texts:
        name, sep, value = text.partition("=")
        hyper = row.hyper_named(name.strip())
        if not sep or hyper is None or hyper.name in METHOD_FIELDS:
            raise ValueError(
                f"hparam {text!r}: expected NAME=VALUE with NAME a hyper-parameter of method "
                f"{method_name} that is no option of its own ({_hparam_names(row) or 'it has none'})"
            )
        out[hyper.name] = hyper.parse(value)
    return out


def _hparam_names(row: Any) -> str:
    return ", ".join(h.name for h in row.hyper if h.name not in METHOD_FIELDS)


def _check_hyper(config: FinetuneConfig) -> None:
    """The config's method's own row: its rules on its field values, and ``hparams`` (known names, types, ranges)."""
    row = method(config.method)
    taken = [h.name for h in row.hyper if h.name in _CONFIG_FIELDS and h.name not in METHOD_FIELDS]
    if taken:
        raise ValueError(
            f"method {config.method!r} declares the hyper-parameter(s) {', '.join(taken)}, which are "
            "options of every method; give its own hyper-parameters other names"
        )
    for name in config.hparams:
        hyper = row.hyper_named(name)
        if hyper is None or name in METHOD_FIELDS:
            raise ValueError(
                f"hparams names {name!r}, which is no hyper-parameter of method {config.method} apart "
                f"from its options ({_hparam_names(row) or 'it has none'})"
            )
    for hyper in row.hyper:
        if hyper.name in METHOD_FIELDS:
            hyper.check(getattr(config, hyper.name))
        elif hyper.name in config.hparams:
            try:
                hyper.check(config.hparams[hyper.name])
            except ValueError as exc:
                raise ValueError(f"hyper-parameter {exc} (method {config.method})") from None


#: The fields that do not count in a run's fingerprint (from the fields' metadata: said once, at the field).
NOT_COUNTED = tuple(f.name for f in dataclasses.fields(FinetuneConfig) if not f.metadata.get("counted", True))


def world_size() -> int:
    """W from torchrun's environment (1 when not under torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def micro_batch(config: FinetuneConfig, world: int | None = None) -> tuple[int, int]:
    """(examples per micro-batch per worker, micro-batches per optimizer step per worker: ``grad_accum`` times
    the binding's ``micro_batches`` hyper-parameter, m-SAM's m)."""
    accum = config.grad_accum * _micro_batch_factor(config)[1]
    world = world_size() if world is None else world
    return config.batch_size // (world * accum), accum


def _micro_batch_factor(config: FinetuneConfig) -> tuple[str | None, int]:
    """(the hyper-parameter that multiplies a step's micro-batches, its value): ``("m", m)`` for m-SAM."""
    name = binding(config.method).micro_batches
    return (name, hyper_values(config)[name]) if name else (None, 1)


#: Every config field that is a hyper-parameter, with the validation of its row's ``Hyper``.
_FIELD_HYPERS = (*SHARED, RHO, M, MU, SCHEDULE)


def check_config(config: FinetuneConfig) -> None:
    """Cheap checks of every numeric and named option (no files, no models); InvalidValue naming the field.
    The hyper-parameters are checked by their rows (``balancedness.methods``), ``hparams`` by the method's."""
    choice("method", config.method, ROWS)
    binding(config.method)
    choice("precision", config.precision, PRECISIONS)
    choice("base_optimizer", config.base_optimizer, BASE_OPTIMIZERS)
    for name in ("steps", "batch_size", "grad_accum", "lora_r", "lora_alpha", "log_every", "eval_batch_size"):
        integer(name, getattr(config, name))
    integer("save_every", config.save_every, minimum=0)
    for hyper in _FIELD_HYPERS:
        hyper.check(getattr(config, hyper.name))
    _check_hyper(config)
    if config.dropout is not None:
        number("dropout", config.dropout, maximum=1.0, strict_max=True)
    if config.task_file is not None:
        given = [
            f"{name} ({value!r})"
            for name in ("task", "train_file", "eval_file", "text_columns", "label_column")
            if (value := getattr(config, name))
        ]
        if given:
            raise ValueError(
                f"task_file (--task-file) {config.task_file!r} names the task, its files and columns; "
                f"drop {', '.join(given)}"
            )
    world = world_size()
    per_device, accum = micro_batch(config, world)
    if per_device < 1 or per_device * world * accum != config.batch_size:
        factor, value = _micro_batch_factor(config)
        parts = f"{world} worker(s) × grad-accum {config.grad_accum}" + (f" × {factor} {value}" if factor else "")
        raise ValueError(
            f"batch-size {config.batch_size} is not divisible into {parts} micro-batches; "
            f"choose a batch size that is a multiple of {world * accum}"
        )
    if config.precision == "fp16":
        import torch

        if not torch.cuda.is_available():
            raise ValueError(
                "precision 'fp16' needs a GPU: on CPU the HF Trainer/accelerate silently train in fp32 "
                "(no autocast, no GradScaler); use --precision bf16 or fp32 on CPU"
            )


def fit_batch(config: FinetuneConfig, n_train: int) -> FinetuneConfig:
    """``config`` with ``batch_size`` at most ``n_train``: the largest multiple of the step's micro-batch count
    (workers × accumulation [× m]) that fits, which is the batch every step really uses. ValueError when the
    training set is smaller than that count."""
    if config.batch_size <= n_train:
        return config
    unit = world_size() * micro_batch(config)[1]
    used = n_train // unit * unit
    if used < 1:
        raise ValueError(
            f"batch-size {config.batch_size}: the training set has only {n_train} examples, fewer than "
            f"the {unit} micro-batches of one optimizer step; use more --shots or less --grad-accum"
        )
    return dataclasses.replace(config, batch_size=used)


@dataclass(frozen=True)
class PreparedRun:
    """One run, prepared (:func:`prepare`): its config (``batch_size`` fitted to the data, :func:`fit_batch`), the
    loaded task, the resolved model and the run's fingerprint. ``requested_batch_size`` is the config's batch
    size before fitting."""

    config: FinetuneConfig
    task: TaskData
    model: ModelSpec
    fingerprint: dict[str, Any]
    requested_batch_size: int

    @property
    def fingerprint_id(self) -> str:
        return fingerprint_id(self.fingerprint)

    def with_config(self, config: FinetuneConfig) -> PreparedRun:
        """This run's task and model under ``config`` (another method or hyper-parameter; the same task, data and
        model options), fitted and fingerprinted without loading anything again."""
        return _fitted(config, self.task, self.model)


def _fitted(config: FinetuneConfig, task: TaskData, model: ModelSpec) -> PreparedRun:
    """The :class:`PreparedRun` of ``config`` on the loaded ``task`` and resolved ``model`` (batch fitted,
    fingerprinted)."""
    fitted = fit_batch(config, len(task.train))
    fp = fingerprint(fitted.result_options(), task, model.path, world_size())
    return PreparedRun(fitted, task, model, fp, config.batch_size)


def prepare(config: FinetuneConfig) -> PreparedRun:
    """Validate ``config``, load the task data once, resolve the model once (no weights are loaded), fit the batch
    size to the data and fingerprint the run: the :class:`PreparedRun` that :func:`run_finetune` takes.

    Raises ValueError / FileNotFoundError naming the bad value.
    """
    from balancedness.finetune.data import load_task
    from balancedness.finetune.models import check_compatible, check_label_words, model_spec

    check_config(config)
    task = load_task(config.task_options())
    model = model_spec(config.model, config.target_modules)
    check_compatible(model.family, task, config.model)
    if model.family == "causal":
        check_label_words(model.path, task)
    return _fitted(config, task, model)


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
        output_dir=str(ckpt_dir),
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=accum,
        max_steps=config.steps,
        learning_rate=config.lr,
        lr_scheduler_type=LR_SCHEDULE,
        warmup_steps=0,
        weight_decay=config.weight_decay,
        optim=BASE_OPTIMIZERS[config.base_optimizer],
        seed=config.seed,
        data_seed=config.seed,
        bf16=config.precision == "bf16",
        fp16=config.precision == "fp16",
        use_cpu=not on_gpu,
        ddp_backend="gloo" if world_size() > 1 and not on_gpu else None,
        ddp_find_unused_parameters=False,
        save_strategy="steps" if config.save_every else "no",
        save_steps=config.save_every or 500,
        logging_strategy="no",
        report_to=[],
        disable_tqdm=not (config.progress and is_main_process()),
        dataloader_num_workers=0,
        remove_unused_columns=False,
    )


def _make_trainer(
    config: FinetuneConfig, head: Any, train_dataset: Any, args: Any, callbacks: list[Any], recorder: Any
):
    """The method's Trainer (its binding, ``bindings.py``) with its keyword arguments, recording checkpoints."""
    from balancedness.finetune.checkpoints import recording_trainer

    common = dict(
        model=head.module,
        args=args,
        train_dataset=train_dataset,
        data_collator=head.collator,
        callbacks=[*callbacks, recorder],
    )  # the recorder last: its checkpoint marker follows all else
    extra = binding(config.method).kwargs(hyper_values(config))
    trainer = recording_trainer(trainer_class(config.method), recorder)(**extra, **common)
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


def _save_adapter(model: Any, target: Path) -> None:
    """``save_pretrained`` into a temporary sibling folder, then swap it into place."""
    tmp = make_temp_dir(prefix=".adapter.tmp-", dir=target.parent)  # the usual permissions, not mkdtemp's 0700
    try:
        model.save_pretrained(str(tmp))
        for file in tmp.iterdir():  # safetensors writes 0600: the adapter is an output like the others
            os.chmod(file, 0o666 & ~umask())
        old = target.with_name(target.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _eval_sorted(head: Any, examples: Any, batch_size: int) -> dict[str, float]:
    """``tasks.evaluate`` on ``examples`` sorted by length (less padding; the metric is order-free)."""
    from balancedness.finetune.tasks import evaluate

    examples = sorted(examples, key=lambda ex: sum(len(t) for t in ex.texts))
    return evaluate(head, examples, batch_size=batch_size)


# --------------------------------------------------------------------------------------------- driver
def run_finetune(run: FinetuneConfig | PreparedRun) -> RunRecord | None:
    """Train, evaluate and write the outputs of one run (``run``: a config, prepared here, or the
    :class:`PreparedRun` of :func:`prepare`); returns its :class:`RunRecord` (see module docstring).

    What happens to ``config.out`` is decided first, before any weights load (:func:`plan_run`, docs/finetune.md
    "Run folders"): a new folder starts a run; a folder holding a complete run with the same fingerprint is
    skipped (the returned record is the folder's, with ``skipped=True``); an unfinished one of the same fingerprint
    continues from its last complete checkpoint with ``resume``; anything else raises :class:`RunFolderError`
    and touches nothing, unless ``overwrite`` replaces the folder. Ctrl-C: the first finishes the current
    step and checkpoints it, the second aborts at once (keeping the last complete checkpoint); either way
    ``metrics.json`` says ``"status": "interrupted"`` and KeyboardInterrupt is re-raised.
    The folder is locked for the whole run (:func:`hold_run_folder`: a second process gets a RunFolderError
    naming the holder). A run that diverges, or whose files cannot be written, ends with ``"status": "failed"``
    (where it can still be written) and :class:`RunFailedError`.
    Non-zero torchrun ranks train but write nothing and return None.
    """
    prepared = run if isinstance(run, PreparedRun) else prepare(run)
    config = prepared.config
    if config.batch_size != prepared.requested_batch_size and is_main_process():
        print(
            f"batch-size {prepared.requested_batch_size} is larger than the {len(prepared.task.train)} training "
            f"examples: each step uses {config.batch_size}, and that is recorded",
            file=sys.stderr,
        )
    with hold_run_folder(config.out, enabled=is_main_process()) as lock:  # only rank 0 writes
        plan = plan_run(
            prepared.fingerprint,
            out=config.out,
            resume=config.resume,
            overwrite=config.overwrite,
            world_size=world_size(),
            main=is_main_process(),
        )
        if plan.action == "skip":
            assert plan.previous is not None, "a skipped run has its complete record"
            return plan.previous.replace(skipped=True)
        return _train(prepared, plan, lock)


def _train(prepared: PreparedRun, plan: RunPlan, lock: Any) -> RunRecord | None:
    """The run of :func:`run_finetune` in its locked folder, once ``plan`` says fresh or resume."""
    config, task = prepared.config, prepared.task
    folder = RunFolder(config.out)
    out, main = folder.path, is_main_process()
    from transformers import set_seed
    from transformers.utils import logging as hf_logging

    from balancedness.finetune.checkpoints import RunRecorder
    from balancedness.finetune.models import load_for_task
    from balancedness.optim.callbacks import BalancednessCallback

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    recorder = RunRecorder.resume(plan.checkpoint)
    set_seed(config.seed)
    _model, _tok, head = load_for_task(prepared.model, task, _lora_spec(config))
    if config.dropout is not None:
        _set_dropout(head.module, config.dropout)
    if main:  # only now: a usage error found while wiring the model (target modules) leaves the folder as it was
        with _writing(out):
            begin_run(plan, out, lock)
    StepTimer, GracefulStop = _callback_classes()
    timer, stop = StepTimer(), GracefulStop()
    callbacks = [BalancednessCallback(every=config.log_every, path=folder.log), timer, stop, *config.extra_callbacks]
    trainer = _make_trainer(
        config, head, head.dataset(task.train), _training_args(config, out / "checkpoints"), callbacks, recorder
    )
    record = _base_record(prepared, head)
    if config.zero_shot and main:
        with _writing(out):
            record = record.replace(zero_shot=_zero_shot(out, head, task, config.eval_batch_size))
    train_seconds = _fit(out, trainer, plan, record, timer, stop, main)
    if recorder.diverged:
        _diverged(
            config, out, record, trainer, timer, train_seconds, recorder.diverged, main
        )  # raises on the main rank
        return None
    if stop.requested:
        if main:
            _write_partial(out, record, trainer, timer, train_seconds)
        raise KeyboardInterrupt
    if not main:
        return None
    return _complete(prepared, head, plan, record, trainer, timer, train_seconds, recorder.train_loss)


def _lora_spec(config: FinetuneConfig):
    """The run's ``models.LoraSpec``: LoRA shape and targets, the parameter dtype of ``precision``, max length."""
    import torch

    from balancedness.finetune.models import LoraSpec

    dtype = {"fp64": torch.float64, "bf16": torch.bfloat16 if torch.cuda.is_available() else torch.float32}.get(
        config.precision, torch.float32
    )
    return LoraSpec(config.lora_r, config.lora_alpha, tuple(config.target_modules), dtype, config.max_length)


def _base_record(prepared: PreparedRun, head: Any) -> RunRecord:
    """What ``metrics.json`` says of the run before it trains (task, method, sizes, fingerprint, config)."""
    from balancedness.finetune.tasks import majority_accuracy

    config, task = prepared.config, prepared.task
    parameters = list(head.module.parameters())
    return RunRecord(
        task=task.name,
        method=config.method,
        model=config.model,
        seed=config.seed,
        metric=task.metric,
        steps=config.steps,
        status="running",
        config=config.to_json(),
        fingerprint_id=prepared.fingerprint_id,
        trainable_params=sum(p.numel() for p in parameters if p.requires_grad),
        total_params=sum(p.numel() for p in parameters),
        world_size=world_size(),
        n_train=len(task.train),
        n_eval=len(task.eval),
        n_dev=len(task.dev),
        source=task.source,
        notes=task.notes,
        majority=majority_accuracy(task) if task.kind == "classification" else None,
    )


def _fit(out: Path, trainer: Any, plan: RunPlan, record: RunRecord, timer: Any, stop: Any, main: bool) -> float:
    """``trainer.train`` (from the plan's checkpoint) under the graceful Ctrl-C handler; the training seconds of
    the whole run, earlier sittings included. A second Ctrl-C writes the partial record and re-raises; a write
    that fails ends the run failed (:func:`_fail_writing`)."""
    prior_seconds = float(plan.previous.train_seconds or 0.0) if plan.checkpoint and plan.previous else 0.0
    use_handler = main and world_size() == 1 and _in_main_thread()
    old_handler = signal.signal(signal.SIGINT, _sigint_handler(stop)) if use_handler else None
    t0 = time.perf_counter()
    try:
        trainer.train(resume_from_checkpoint=None if plan.checkpoint is None else str(plan.checkpoint))
    except KeyboardInterrupt:  # a second Ctrl-C: the step in flight is lost, the last complete checkpoint stays
        if main:
            _write_partial(out, record, trainer, timer, prior_seconds + time.perf_counter() - t0)
        raise
    except Exception as exc:
        if not _write_failed(exc):
            raise
        _fail_writing(
            out,
            exc,
            lambda error: (
                _write_partial(
                    out, record, trainer, timer, prior_seconds + time.perf_counter() - t0, status="failed", error=error
                )
                if main
                else None
            ),
        )
    finally:
        if use_handler:
            signal.signal(signal.SIGINT, old_handler)
    return prior_seconds + time.perf_counter() - t0


def _complete(
    prepared: PreparedRun,
    head: Any,
    plan: RunPlan,
    record: RunRecord,
    trainer: Any,
    timer: Any,
    train_seconds: float,
    train_loss: float,
) -> RunRecord:
    """Evaluate the trained run, save its adapter and write its complete ``metrics.json`` (main process)."""
    config, task = prepared.config, prepared.task
    folder = RunFolder(config.out)
    timing = _timing(timer, train_seconds)
    if timing["seconds_per_step"] is None and plan.previous:  # resumed at the last step: no step timed now
        timing["seconds_per_step"] = plan.previous.seconds_per_step
    result = _eval_sorted(head, task.eval, config.eval_batch_size)
    # the held-out split hyper-parameter selection reads (sweep): never the test metric
    dev = _eval_sorted(head, task.dev, config.eval_batch_size)[task.metric] if task.dev else None
    record = record.replace(**timing, train_loss=train_loss, value=result[task.metric], n=result["n"], dev=dev)
    with _writing(
        folder.path,
        lambda error: _write_partial(folder.path, record, trainer, timer, train_seconds, status="failed", error=error),
    ):
        _save_adapter(head.model, folder.adapter)
        record = record.replace(status="complete")
        folder.write(record)
    if not config.keep_checkpoints:
        shutil.rmtree(folder.path / "checkpoints", ignore_errors=True)
    return record


def _zero_shot(out: Path, head: Any, task: Any, batch_size: int) -> float:
    """The metric before training, computed once per run folder and kept in ``zero_shot.json``."""
    import json

    path = out / "zero_shot.json"
    try:
        return float(json.loads(path.read_text())[task.metric])
    except (OSError, ValueError, KeyError, TypeError):
        value = _eval_sorted(head, task.eval, batch_size)[task.metric]
        write_json(path, {task.metric: value})
        return value


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _timing(timer: Any, train_seconds: float) -> dict[str, float | None]:
    times = timer.times[1:] or timer.times  # the first step pays for warm-up
    return {"train_seconds": train_seconds, "seconds_per_step": statistics.median(times) if times else None}


def _write_partial(
    out: Path,
    record: RunRecord,
    trainer: Any,
    timer: Any,
    seconds: float,
    status: Status = "interrupted",
    error: str | None = None,
    diverged_at: int | None = None,
) -> None:
    """``metrics.json`` of a run that stopped before its end: ``status``, the step reached, the checkpoint."""
    from balancedness.finetune.checkpoints import last_complete_checkpoint

    ckpt = last_complete_checkpoint(out / "checkpoints")
    RunFolder(out).write(
        record.replace(
            **_timing(timer, seconds),
            status=status,
            step_reached=trainer.state.global_step,
            checkpoint=None if ckpt is None else str(ckpt),
            error=error,
            diverged_at=diverged_at,
        )
    )


def _diverged(
    config: FinetuneConfig,
    out: Path,
    record: RunRecord,
    trainer: Any,
    timer: Any,
    seconds: float,
    diverged: dict[str, Any],
    main: bool,
) -> None:
    """End a run whose loss or parameters stopped being finite: ``status`` failed, the step, RunFailedError."""
    if not main:
        return None
    error = f"training diverged at step {diverged['step']}: {diverged['found']}"
    with _writing(out):
        _write_partial(out, record, trainer, timer, seconds, status="failed", error=error, diverged_at=diverged["step"])
    if not config.keep_checkpoints:
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
    raise RunFailedError(
        f"{error}; {str(out / 'metrics.json')!r} records the run as failed (nothing of it is "
        "reported); try a smaller learning rate"
    )


#: Words of the errors torch and safetensors raise when a write fails (they are not OSErrors).
_WRITE_ERRORS = ("PytorchStreamWriter", "inline_container", "file write failed", "I/O error")


def _write_failed(exc: BaseException) -> bool:
    """Whether ``exc`` is a failed write (full disk, read-only or vanished folder, file size limit)."""
    return isinstance(exc, OSError) or any(word in str(exc) for word in _WRITE_ERRORS)


def _fail_writing(out: Path, exc: BaseException, record_failure: Callable[[str], Any] | None = None) -> None:
    """Raise RunFailedError for a failed write into ``out``, after recording it in ``metrics.json`` when the
    folder still takes a write (``record_failure(error)``)."""
    error = f"writing into {str(out)!r} failed ({type(exc).__name__}: {exc})"
    recorded = False
    if record_failure is not None:
        try:
            recorded = bool(record_failure(error) is not False)
        except Exception:  # noqa: BLE001 - the folder takes no write at all: say so, below
            recorded = False
    where = "metrics.json records it as failed" if recorded else "no status could be written"
    raise RunFailedError(
        f"{error}; {where}: free space or make the folder writable, then continue the run with resume (--resume)"
    ) from None


@contextlib.contextmanager
def _writing(out: Path, record_failure: Callable[[str], Any] | None = None) -> Iterator[None]:
    """Turn a failed write inside the block into :func:`_fail_writing`'s RunFailedError."""
    try:
        yield
    except Exception as exc:
        if not _write_failed(exc):
            raise
        _fail_writing(out, exc, record_failure)
