"""Task files: your own classification task in TOML, through ``finetune`` and the ``sweep`` protocol (docs/data.md).

A task file names the data files (paths relative to the task file; CSV, TSV or JSON lines with a header
row), the text and label columns, the metric, and for causal LMs a prompt with one word per label value::

    name = "mr"                      # used in tables and run folders
    train = "train.tsv"
    dev = "dev.tsv"                  # optional: enables dev selection in the sweep
    test = "test.tsv"
    text = ["sentence"]              # one or two text columns
    label = "label"
    metric = "accuracy"              # optional (the default; the only metric of a classification task)
    prompt = "{sentence} It was"     # optional, for causal LMs: {column} placeholders
    label_words = { "0" = " terrible", "1" = " great" }   # one word per label value, with the prompt

:func:`parse` reads and validates the file into a frozen :class:`TaskFile` (no data read); :func:`load` reads
its files with the data layer's readers (``data/readers.py``: a strict structural pass, then ``datasets``)
into the :class:`~balancedness.finetune.data.TaskData` every task becomes; ``data.load_task(task_file=...)``
calls it. The prompt reaches the causal-LM head as a built-in task's does (``prompts.prompt_for``: the
logits of the label words' first tokens after the prompt); without ``prompt`` and ``label_words`` a causal
LM gets the generic ``"<texts>\\nLabel:"`` → ``" <label>"``, as with ``--train-file``; encoders ignore both.
``models.check_label_words`` checks, once the model's tokenizer is known and before any weights load, that
the label words start with distinct tokens (``tasks.label_word_ids``, the check the head applies).

Every error is a ValueError (FileNotFoundError for a missing file) whose sentence names the task file, the
key and the value: the commands turn it into exit 2 before any work.
"""

from __future__ import annotations

import functools
import os
import re
import string
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from balancedness.validation import integer

from .data.core import Example, TaskData, check_shots, eval_subset, sample_shots, sorted_labels
from .data.readers import Table, cell, label_cells, read_table, require_columns

if sys.version_info >= (3, 11):
    import tomllib
else:  # the same parser, before it joined the standard library ([finetune] requires it on Python 3.10)
    import tomli as tomllib

__all__ = ["KEYS", "METRICS", "TaskFile", "parse", "load"]

#: The keys of a task file, in the order docs/data.md lists them.
KEYS = ("name", "train", "dev", "test", "text", "label", "metric", "prompt", "label_words")
REQUIRED = ("name", "train", "test", "text", "label")
#: The metrics a task file may name (a task file is a classification task).
METRICS = ("accuracy",)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class TaskFile:
    """A parsed, validated task file. Paths are resolved against the task file's folder and exist.

    ``template`` is ``prompt`` with each ``{column}`` replaced by the column's position in ``text``
    (``"{0} It was"``), the form :class:`~balancedness.finetune.prompts.Prompt` renders; ``label_words``
    keeps the file's (label value, word) pairs in file order, which is the label-id order.
    """

    path: Path
    name: str
    train: Path
    test: Path
    text: tuple[str, ...]
    label: str
    metric: str = "accuracy"
    dev: Path | None = None
    prompt: str | None = None
    template: str | None = None
    label_words: tuple[tuple[str, str], ...] = ()

    @property
    def files(self) -> dict[str, Path]:
        """The data files by key (``train``, ``test`` and, when given, ``dev``)."""
        return {"train": self.train, "test": self.test, **({"dev": self.dev} if self.dev else {})}

    def where(self, key: str) -> str:
        """``task file 'mr.toml', key 'prompt'``: the start of every message about one key."""
        return _at(self.path, key)


def _at(file: Path, key: str) -> str:
    return f"task file {str(file)!r}, key {key!r}"


# --------------------------------------------------------------------------------------------- parse
def parse(path: str | os.PathLike[str], *, taken: Sequence[str] = ()) -> TaskFile:
    """Read and validate the task file ``path``; ``taken``: names it may not use (the built-in tasks).

    Raises FileNotFoundError for a missing task or data file, ValueError for invalid TOML, an unknown or
    missing key, a value of the wrong type, an unsafe or taken name, a metric other than :data:`METRICS`,
    a label column among the text columns, a ``{placeholder}`` naming no text column, or a prompt without
    label words (or words without a prompt).
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(
            f"task file {str(file)!r} does not exist" if not file.exists() else f"task file {str(file)!r} is not a file"
        )
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"task file {str(file)!r} is not valid TOML: {exc}") from None
    _check_keys(file, raw)
    at = functools.partial(_at, file)
    name = _string(raw, "name", at)
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"{at('name')}: {name!r} is not a usable name (it names run folders): use letters, digits, "
            "'.', '_' and '-', starting with a letter or digit"
        )
    if name.lower() in taken:
        raise ValueError(f"{at('name')}: {name!r} is a built-in task; give your task another name")
    text = _columns(raw, at)
    label = _string(raw, "label", at)
    if label in text:
        raise ValueError(f"{at('label')}: {label!r} is also a text column; the label column must be another one")
    metric = _string(raw, "metric", at) if "metric" in raw else "accuracy"
    if metric not in METRICS:
        raise ValueError(f"{at('metric')}: {metric!r} is not a metric of a task file; expected one of {list(METRICS)}")
    prompt, words = _prompt(raw, text, at)
    files = {key: _data_file(file, raw, key, at) for key in ("train", "test", "dev") if key in raw}
    return TaskFile(
        file.resolve(),
        name,
        files["train"],
        files["test"],
        text,
        label,
        metric,
        files.get("dev"),
        prompt,
        None if prompt is None else _positional(prompt, text),
        words,
    )


def _check_keys(file: Path, raw: dict[str, Any]) -> None:
    unknown = [k for k in raw if k not in KEYS]
    if unknown:
        raise ValueError(
            f"task file {str(file)!r}: unknown key(s) {unknown}; a task file has the keys "
            f"{', '.join(KEYS)} (docs/data.md)"
        )
    missing = [k for k in REQUIRED if k not in raw]
    if missing:
        raise ValueError(f"task file {str(file)!r}: missing key(s) {missing}; required are {', '.join(REQUIRED)}")


def _type_name(value: Any) -> str:
    return {
        str: "a string",
        list: "a list",
        dict: "a table",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
    }.get(type(value), type(value).__name__)


def _string(raw: dict[str, Any], key: str, at: Any) -> str:
    value = raw[key]
    if not isinstance(value, str) or not value.strip():
        shown = "an empty string" if isinstance(value, str) else f"{_type_name(value)} ({value!r})"
        raise ValueError(f"{at(key)}: expected a non-empty string, got {shown}")
    return value


def _columns(raw: dict[str, Any], at: Any) -> tuple[str, ...]:
    value = raw["text"]
    if (
        not isinstance(value, list)
        or not 1 <= len(value) <= 2
        or not all(isinstance(c, str) and c.strip() for c in value)
    ):
        raise ValueError(
            f'{at("text")}: expected a list of one or two column names (text = ["sentence"] or '
            f'["sentence1", "sentence2"]), got {_type_name(value)} ({value!r})'
        )
    if len(set(value)) != len(value):
        raise ValueError(f"{at('text')}: column {value[0]!r} is listed twice")
    return tuple(value)


def _prompt(raw: dict[str, Any], text: tuple[str, ...], at: Any) -> tuple[str | None, tuple[tuple[str, str], ...]]:
    """(prompt, label words) of the file; both or neither."""
    if ("prompt" in raw) != ("label_words" in raw):
        given, absent = ("prompt", "label_words") if "prompt" in raw else ("label_words", "prompt")
        raise ValueError(
            f"{at(given)} needs the key {absent!r} too: a causal LM scores one word per label value "
            "after the prompt (leave both out for the generic prompt)"
        )
    if "prompt" not in raw:
        return None, ()
    prompt = _string(raw, "prompt", at)
    _positional(prompt, text, at("prompt"))
    words = raw["label_words"]
    if not isinstance(words, dict) or len(words) < 2:
        raise ValueError(
            f"{at('label_words')}: expected a table of at least two label values and their words "
            f'(label_words = {{ "0" = " terrible", "1" = " great" }}), got {_type_name(words)} '
            f"({words!r})"
        )
    bad = {k: v for k, v in words.items() if not isinstance(v, str) or not v.strip()}
    if bad:
        raise ValueError(f"{at('label_words')}: the word of every label value must be a non-empty string; got {bad}")
    return prompt, tuple(words.items())


def _positional(prompt: str, text: tuple[str, ...], where: str = "prompt") -> str:
    """``prompt`` with ``{column}`` → ``{i}`` (its position in ``text``); ValueError for any other placeholder."""
    try:
        parts = list(string.Formatter().parse(prompt))
    except ValueError as exc:
        raise ValueError(
            f"{where}: {prompt!r} is not a valid template ({exc}); write a literal brace as '{{{{' or '}}}}}}}}'"
        ) from None
    out, used = [], 0
    for literal, field, spec, conversion in parts:
        out.append(literal.replace("{", "{{").replace("}", "}}"))
        if field is None:
            continue
        if field not in text:
            raise ValueError(
                f"{where}: the placeholder {{{field}}} names no text column; the text columns are "
                f"{', '.join('{' + c + '}' for c in text)}"
            )
        used += 1
        out.append(
            "{" + str(text.index(field)) + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
        )
    if not used:
        raise ValueError(
            f"{where}: {prompt!r} holds no {{column}} placeholder, so the model would never see the "
            f"text; use {', '.join('{' + c + '}' for c in text)}"
        )
    return "".join(out)


def _data_file(file: Path, raw: dict[str, Any], key: str, at: Any) -> Path:
    path = (file.parent / Path(_string(raw, key, at)).expanduser()).resolve()
    if not path.is_file():
        state = "is a folder" if path.is_dir() else "does not exist"
        raise FileNotFoundError(
            f"{at(key)}: the {key} file {str(path)!r} {state} (paths are relative to the task file's folder)"
        )
    return path


# --------------------------------------------------------------------------------------------- load
def load(
    task_file: str | os.PathLike[str] | TaskFile,
    *,
    seed: int = 42,
    shots: int | None = None,
    max_eval: int | None = None,
    taken: Sequence[str] = (),
) -> TaskData:
    """The task file's data as a :class:`TaskData` (train, test as ``eval``, dev), shots and max_eval applied.

    Labels: with ``label_words``, label id i is the i-th label value of the table, and a row whose label has
    no word is a ValueError naming its file and line; without, ids follow the sorted training labels (numeric
    order when all are integers), as with ``--train-file``, and a test or dev label never seen in training is
    a ValueError. ``shots`` (K per class, seeded) draws from the training file; ``max_eval`` keeps a fixed
    subset of the test file (seed 0); the dev file is used whole.
    """
    spec = task_file if isinstance(task_file, TaskFile) else parse(task_file, taken=taken)
    check_shots(shots)
    if max_eval is not None:
        integer("max_eval", max_eval)
    tables = {key: _read(spec, key, path) for key, path in spec.files.items()}
    labels = {key: label_cells(table, spec.label) for key, table in tables.items()}
    values = [v for v, _ in spec.label_words] or sorted_labels(set(labels["train"]))
    _check_labels(spec, tables, labels, values)
    split = {key: _examples(tables[key], spec.text, labels[key], values) for key in tables}
    train, test, notes = split["train"], split["test"], [f"task file {str(spec.path)!r}"]
    if shots is not None:
        train = sample_shots(train, shots, seed, values, "classification")
    if max_eval is not None and max_eval < len(test):
        notes.append(f"evaluating on a fixed subset of {max_eval} of {len(test)} examples")
        test = eval_subset(test, max_eval)
    return TaskData(
        spec.name,
        "classification",
        train,
        test,
        list(values),
        spec.text,
        "accuracy",
        source=" | ".join(str(p) for p in spec.files.values()),
        seed=seed,
        shots=shots,
        notes=notes,
        dev=split.get("dev", []),
        prompt=spec.template,
        label_words=tuple(w for _, w in spec.label_words),
    )


def _read(spec: TaskFile, key: str, path: Path) -> Table:
    table = read_table(path)
    require_columns(table, (*spec.text, spec.label))
    if not len(table):
        raise ValueError(f"{spec.where(key)}: {str(path)!r} holds no rows")
    return table


def _check_labels(spec: TaskFile, tables: dict[str, Table], labels: dict[str, list[str]], values: list[str]) -> None:
    """Every row's label has a word (with ``label_words``) or occurs in training (without); two classes at least."""
    known = set(values)
    for key, cells in labels.items():
        bad = next((i for i, v in enumerate(cells) if v not in known), None)
        if bad is None:
            continue
        if spec.label_words:
            raise ValueError(
                f"{tables[key].where(bad)}: label value {cells[bad]!r} (column {spec.label!r}) has no "
                f"word in label_words of task file {str(spec.path)!r}, which gives words for "
                f"{', '.join(map(repr, values))}"
            )
        raise ValueError(
            f"{tables[key].where(bad)}: label {cells[bad]!r} (column {spec.label!r}) never occurs in "
            f"the training file; training labels are {values}"
        )
    trained = set(labels["train"])
    if len(trained) < 2:
        raise ValueError(
            f"{str(spec.train)!r}: column {spec.label!r} holds a single class {sorted(trained)}; a "
            "classifier needs at least two"
        )
    unused = [v for v in values if v not in trained]
    if unused:
        raise ValueError(
            f"{spec.where('label_words')}: label value(s) {unused} occur in no row of the training "
            f"file {str(spec.train)!r} (column {spec.label!r}); check the values or drop their words"
        )


def _examples(table: Table, text: tuple[str, ...], labels: list[str], values: list[str]) -> list[Example]:
    index = {v: i for i, v in enumerate(values)}
    texts = zip(*(map(cell, table.column(c)) for c in text), strict=True)
    return [Example(tuple(t), index[y]) for t, y in zip(texts, labels, strict=True)]
