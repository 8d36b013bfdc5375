"""``balancedness finetune`` and ``balancedness sweep``: the LoRA finetuning application's commands.

Thin typer wrappers: options map 1:1 onto :class:`~balancedness.finetune.run.FinetuneConfig`; bad input
(ValueError/FileNotFoundError from validation, task loading or model resolution) exits 2 before any model
loads. Heavy imports (torch, transformers) happen inside the commands.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape

from balancedness import methods as table
from balancedness.commands.common import ensure_writable_folder, err_console, fail_usage, split_values
from balancedness.finetune.run import TABLE_METHODS

if TYPE_CHECKING:
    from balancedness.finetune.record import RunRecord

DEFAULT_SWEEP_TASKS = ("sst2", "sst5", "trec", "rte", "snli", "mnli")
_SWEEP_METHODS = list(TABLE_METHODS)  # sweep's default --methods (the option's default value, made once)
_DEFAULT_TASKS = ",".join(DEFAULT_SWEEP_TASKS)
_METHOD_NAMES = ", ".join(table.METHODS)
MODEL_HELP = "minilm | smollm2 | a local model folder | a hub id (must be in the local HF cache: no internet)"

# Options shared by `finetune` and `sweep` (typer reads the same OptionInfo in both signatures).
MODEL = typer.Option("minilm", help=MODEL_HELP)
DATA_ROOT = typer.Option(
    None, help="folder laid out like shared/data (default $BALANCEDNESS_DATA, else ../shared/data)"
)
SHOTS = typer.Option(None, help="K training examples per class (default: the whole split)")
STEPS = typer.Option(100, help="optimizer steps per run")
METHOD_HELP = " | ".join(f"{name} ({row.help})" for name, row in table.METHODS.items())
LR = typer.Option(table.SHARED[0].default, help=table.SHARED[0].help)
RHO = typer.Option(table.RHO.default, help=table.RHO.help)
M = typer.Option(table.M.default, help=table.M.help)
MU = typer.Option(table.MU.default, help=table.MU.help)
SCHEDULE = typer.Option(table.SCHEDULE.default, help=table.SCHEDULE.help)
PLUGIN = typer.Option(
    None,
    "--plugin",
    metavar="FILE.py",
    help="a Python file that registers a method (a row and a binding, docs/architecture.md); repeatable",
)
BATCH_SIZE = typer.Option(16, help="global examples per optimizer step (split over workers/micro-batches)")
MAX_EVAL = typer.Option(None, help="evaluate on a fixed subset of at most N examples")
LOG_EVERY = typer.Option(10, help="write per-layer balancedness every K steps")
BASE_OPTIMIZER = typer.Option(
    "adamw",
    help="the optimizer every method steps with: adamw (torch AdamW) | sgd (plain SGD, no momentum: the spec's "
    "exact predictions; docs/finetune.md)",
)
TASK_FILE_HELP = (
    "your own task: a TOML task file (files, text/label columns, metric, optional prompt and label "
    "words, optional dev file; docs/data.md)"
)


#: The options `finetune` and `sweep` both take, each named as its :class:`FinetuneConfig` field.
SHARED_FIELDS = (
    "model",
    "shots",
    "steps",
    "lr",
    "rho",
    "m",
    "mu",
    "schedule",
    "base_optimizer",
    "batch_size",
    "max_eval",
    "log_every",
)


def shared_fields(options: dict[str, Any]) -> dict[str, Any]:
    """The :class:`FinetuneConfig` fields of the options both commands take (``options``: the command's
    arguments by name), ``data_root`` as a string."""
    fields = {name: options[name] for name in SHARED_FIELDS}
    fields["data_root"] = str(options["data_root"]) if options["data_root"] else None
    return fields


def require_finetune_extra() -> None:
    """Exit 2 with the install command when torch, transformers or peft is missing."""
    try:
        import peft  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        fail_usage(
            f"this command needs the [finetune] extra ({exc.name or exc} is not installed): "
            "pip install torch==2.13.0 'balancedness[finetune]' (torch first: see the README)"
        )


def load_plugins(files: list[Path] | None) -> None:
    """Import every ``--plugin`` file (ValueError naming a missing, failing or empty one)."""
    from balancedness.finetune.bindings import load_plugin

    for file in files or []:
        load_plugin(file)


def finetune(
    model: str = MODEL,
    task: str | None = typer.Option(
        None, help="built-in task: bbc-news (default), sst2, sst5, trec, rte, snli, mnli, cb, copa, boolq, webnlg"
    ),
    data_root: Path | None = DATA_ROOT,
    train_file: Path | None = typer.Option(None, help="your own CSV/TSV/JSONL training file (header row)"),
    eval_file: Path | None = typer.Option(None, help="your own evaluation file (same columns)"),
    text_column: list[str] | None = typer.Option(None, help="text column(s) of --train-file (repeat for pairs)"),
    label_column: str | None = typer.Option(None, help="label column of --train-file"),
    task_file: Path | None = typer.Option(None, help=TASK_FILE_HELP),
    method: str = typer.Option("lora", help=METHOD_HELP + " | a --plugin's"),
    shots: int | None = SHOTS,
    seed: int = typer.Option(42, help="split folder 16-<seed> for LM-BFF tasks, sampling, init and data order"),
    steps: int = STEPS,
    lr: float = LR,
    rho: float = RHO,
    m: int = M,
    mu: float = MU,
    schedule: str = SCHEDULE,
    base_optimizer: str = BASE_OPTIMIZER,
    batch_size: int = BATCH_SIZE,
    grad_accum: int = typer.Option(1, help="micro-batches per optimizer step per worker"),
    precision: str = typer.Option("fp32", help="fp32 | bf16 | fp16 (fp16 needs a GPU) | fp64 (exactness tests)"),
    lora_r: int = typer.Option(8, help="LoRA rank r"),
    lora_alpha: int = typer.Option(16, help="LoRA α (scale α/r)"),
    target_modules: list[str] | None = typer.Option(
        None, help="modules to adapt, comma-separated or repeated (default query,value / q_proj,v_proj)"
    ),
    dropout: float | None = typer.Option(None, help="override the model's dropout probability (e.g. 0)"),
    max_eval: int | None = MAX_EVAL,
    zero_shot: bool = typer.Option(False, help="also evaluate before training (zero-shot baseline)"),
    log_every: int = LOG_EVERY,
    save_every: int = typer.Option(0, help="checkpoint every N steps (0: only on Ctrl-C)"),
    out: Path = typer.Option(Path("runs/finetune"), help="output folder"),
    resume: bool = typer.Option(False, help="continue the unfinished run in --out from its last complete checkpoint"),
    overwrite: bool = typer.Option(
        False,
        help="replace the run or sweep folder --out holds (deleted first, in one rename); any other folder is refused",
    ),
    hparam: list[str] | None = typer.Option(
        None,
        "--hparam",
        metavar="NAME=VALUE",
        help="a hyper-parameter of the method's row that has no option of its own (a plugin method's); repeatable",
    ),
    plugin: list[Path] | None = PLUGIN,
    as_json: bool = typer.Option(False, "--json", help="print metrics.json (one JSON document) on stdout"),
) -> None:
    """Finetune a model with LoRA and SAM / m-SAM / nBAR / oBAR / ASAM (or a --plugin's method) on one task;
    writes metrics.json, balancedness.jsonl and the adapter into --out."""
    options = dict(locals())  # the arguments by name, before any other local exists
    require_finetune_extra()
    from balancedness.finetune.run import FinetuneConfig, RunFailedError, parse_hparams, prepare, run_finetune

    try:
        load_plugins(plugin)
        hparams = parse_hparams(method, hparam or []) if hparam else {}
    except ValueError as exc:
        fail_usage(exc)
    config = FinetuneConfig(
        **shared_fields(options),
        task=task,
        train_file=str(train_file) if train_file else None,
        eval_file=str(eval_file) if eval_file else None,
        text_columns=split_values(text_column),
        label_column=label_column,
        task_file=str(task_file) if task_file else None,
        method=method,
        seed=seed,
        grad_accum=grad_accum,
        precision=precision,
        lora_r=lora_r,
        lora_alpha=lora_alpha,
        target_modules=split_values(target_modules),
        dropout=dropout,
        zero_shot=zero_shot,
        save_every=save_every,
        out=str(out),
        resume=resume,
        overwrite=overwrite,
        hparams=hparams,
    )
    try:
        ensure_writable_folder(out, "--out")
        prepared = prepare(config)
    except (ValueError, FileNotFoundError, OSError) as exc:
        fail_usage(exc)
    try:
        with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
            record = run_finetune(prepared)
    except KeyboardInterrupt:
        typer.echo(f"interrupted: checkpoint and partial metrics in {out}; continue with --resume", err=True)
        raise typer.Exit(130) from None
    except ValueError as exc:  # target modules matching nothing: raised after the weights load, before training
        fail_usage(exc)
    except RunFailedError as exc:  # diverged, or its files could not be written: status failed, exit 1
        err_console.print(f"[bold red]Run failed:[/] {escape(str(exc))}")
        raise typer.Exit(1) from None
    if record is not None:  # None: a non-zero torchrun rank
        _report(record, out, as_json)


def _report(record: RunRecord, out: Path, as_json: bool) -> None:
    """The run's outcome on the terminal: metrics.json with ``--json``, else one line (and a note when skipped)."""
    from balancedness.io import json_text

    if record.skipped:
        err_console.print(
            f"skipped: {out} already holds this run, complete (fingerprint {record.fingerprint_id}); "
            "--overwrite runs it again",
            highlight=False,
        )
    if as_json:
        typer.echo(json_text(record.to_json(), indent=1))  # strict JSON: NaN is null
        return
    base = f", majority {record.majority:.3f}" if record.majority is not None else ""
    step = record.seconds_per_step
    timing = f"{step:.3f} s/step" if step is not None else "no step timed"
    typer.echo(
        f"{record.task} {record.method} seed {record.seed}: {record.metric} {record.value:.4f}{base}; "
        f"{timing}; outputs in {out}"
    )


def sweep(
    tasks: list[str] | None = typer.Option(
        None, help=f"built-in tasks, repeat or comma (default {_DEFAULT_TASKS}, unless --task-file)"
    ),
    task_file: list[Path] | None = typer.Option(None, help=TASK_FILE_HELP + "; repeatable, beside --tasks"),
    methods: list[str] = typer.Option(_SWEEP_METHODS, help="methods (repeat or comma): " + _METHOD_NAMES),
    seeds: list[str] = typer.Option(["13", "21", "42", "87", "100"], help="seeds (repeat or comma)"),
    out: Path = typer.Option(
        Path("runs/sweep"),
        help="output folder: <task>/<method>/seed<k>-<id>/ per run, table.md/csv, paired.csv/png, study.journal",
    ),
    space: str = typer.Option(
        "fixed",
        help="search space preset: fixed (the options below) | paper (Table 6) | "
        "cpu (our committed CPU grid); see docs/finetune.md",
    ),
    grid: list[str] | None = typer.Option(
        None,
        help="add/replace one axis: METHOD:OPTION=V1,V2 "
        "(e.g. sam:rho=0.05,0.1 or all:lr=1e-3,2e-3; OPTION may be "
        "any hyper-parameter of the method's row), repeatable",
    ),
    workers: int = typer.Option(1, help="local worker processes sharing the study"),
    storage: str | None = typer.Option(
        None,
        help="Optuna storage shared by workers on several machines: an RDB "
        "URL or a journal file path (default <out>/study.journal)",
    ),
    model: str = MODEL,
    data_root: Path | None = DATA_ROOT,
    shots: int | None = SHOTS,
    steps: int = STEPS,
    lr: float = LR,
    rho: float = RHO,
    m: int = M,
    mu: float = MU,
    schedule: str = SCHEDULE,
    base_optimizer: str = BASE_OPTIMIZER,
    batch_size: int = BATCH_SIZE,
    max_eval: int | None = MAX_EVAL,
    log_every: int = LOG_EVERY,
    plugin: list[Path] | None = PLUGIN,
) -> None:
    """Run tasks × methods × seeds × each method's search space (resumable, shareable), select each
    method's configuration on the dev split, and write table.md / table.csv / paired.csv / paired.png."""
    options = dict(locals())  # the arguments by name, before any other local exists
    require_finetune_extra()
    from balancedness.finetune.run import FinetuneConfig
    from balancedness.finetune.search import make_space
    from balancedness.finetune.sweep import run_sweep
    from balancedness.validation import integer

    base = FinetuneConfig(**shared_fields(options), progress=False)
    try:
        seed_values = [int(s) for s in split_values(seeds)]
    except ValueError:
        fail_usage(f"--seeds must be integers, got {seeds!r}")
    try:
        load_plugins(plugin)
        ensure_writable_folder(out, "--out")
        integer("workers", workers)
        method_list = list(split_values(methods))
        search = make_space(space, grid or [], method_list)
        task_list = list(split_values(tasks)) if tasks or task_file else list(DEFAULT_SWEEP_TASKS)
        result = run_sweep(
            base,
            tasks=task_list,
            methods=method_list,
            seeds=seed_values,
            out=out,
            space=search,
            workers=workers,
            storage=storage,
            task_files=[str(f) for f in task_file or []],
        )
    except (ValueError, FileNotFoundError) as exc:
        fail_usage(exc)
    except KeyboardInterrupt:  # every worker got the Ctrl-C too and checkpointed its run
        typer.echo(
            f"interrupted: the unfinished runs in {out} keep their last checkpoint; run the same command "
            "again to resume",
            err=True,
        )
        raise typer.Exit(130) from None
    typer.echo(result.markdown)
    if result.failed:
        typer.echo(f"{len(result.failed)} run(s) failed: see {out / 'failures.json'}", err=True)
        raise typer.Exit(1)
