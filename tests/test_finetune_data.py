"""The data layer on the real shared data: counts, labels, k-shot sampling, user files, validation."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from data_fixtures import data_root_or_skip  # first: sets HF_HUB_OFFLINE before transformers loads

# isort: split

from balancedness.finetune.data import known_tasks, load_task
from balancedness.finetune.tasks import majority_accuracy

# (task, seed) -> (train, eval, classes); SNLI 16-42 has 18/14/16 by gold_label (see docs/data.md).
EXPECTED = {
    "sst2": (32, 872, 2),
    "sst5": (80, 2210, 5),
    "trec": (96, 500, 6),
    "rte": (32, 277, 2),
    "snli": (48, 1000, 3),
    "mnli": (48, 1000, 3),
    "cb": (32, 56, 3),
    "copa": (32, 100, 2),
    "boolq": (32, 3270, 2),
    "bbc-news": (1699, 426, 5),
    "webnlg": (6940, 1862, 0),
}


@pytest.fixture(scope="module")
def root() -> Path:
    return data_root_or_skip()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_task_loads_with_the_right_counts(root: Path, name: str) -> None:
    task = load_task(name, data_root=root, seed=42)
    n_train, n_eval, n_classes = EXPECTED[name]
    assert (len(task.train), len(task.eval), task.num_labels) == (n_train, n_eval, n_classes)
    for ex in task.train + task.eval:
        assert len(ex.texts) == len(task.text_fields)
        assert all(isinstance(t, str) and t for t in ex.texts)
        if task.kind == "classification":
            assert ex.label is not None
            assert 0 <= ex.label < task.num_labels
        else:
            assert ex.label is None
            assert ex.references
            assert all(ex.references)


def test_registry_is_complete() -> None:
    assert set(known_tasks()) == set(EXPECTED)


@pytest.mark.parametrize("name", ["sst2", "sst5", "trec", "rte", "snli"])
def test_lmbff_seed_picks_the_split_folder(root: Path, name: str) -> None:
    by_seed = {s: load_task(name, data_root=root, seed=s) for s in (13, 42)}
    assert by_seed[13].source.endswith("16-13")
    assert by_seed[42].source.endswith("16-42")
    assert by_seed[13].train[0].texts != by_seed[42].train[0].texts
    assert by_seed[13].eval == by_seed[42].eval  # one test set for every seed


def test_missing_or_nonstandard_seed_falls_back_with_a_note(root: Path) -> None:
    mnli = load_task("mnli", data_root=root, seed=42)  # the data ships MNLI 16-13 and 16-100 only
    assert mnli.source.endswith("16-13")
    assert "16-13" in mnli.notes[0]
    sst2 = load_task("sst2", data_root=root, seed=7)
    assert sst2.source.endswith("16-42")
    assert "seed 7" in sst2.notes[0]


@pytest.mark.parametrize("name", ["snli", "mnli"])
def test_nli_eval_is_disjoint_from_every_kshot_split(root: Path, name: str) -> None:
    task = load_task(name, data_root=root)
    key = lambda texts: tuple(re.sub(r"\W+", "", t.lower()) for t in texts)  # noqa: E731
    dev = json.loads((root / "lm-bff" / "glue_pretrain" / name.upper() / "dev.json").read_text())
    dropped = int(re.search(r"dropped (\d+)", " ".join(task.notes)).group(1))
    assert len(task.eval) == len(dev) - dropped
    kshot = {key(ex.texts) for s in (13, 100) for ex in load_task(name, data_root=root, seed=s).train}
    assert not kshot & {key(ex.texts) for ex in task.eval}


def test_shots_are_stratified_deterministic_and_seeded(root: Path) -> None:
    a = load_task("trec", data_root=root, seed=13, shots=4)
    b = load_task("trec", data_root=root, seed=13, shots=4)
    assert a.train == b.train
    assert len(a.train) == 24
    assert Counter(ex.label for ex in a.train) == {k: 4 for k in range(6)}
    full = load_task("trec", data_root=root, seed=13)
    assert all(ex in full.train for ex in a.train)
    bbc = [load_task("bbc-news", shots=3, seed=s).train for s in (1, 2)]
    assert bbc[0] != bbc[1]
    assert Counter(ex.label for ex in bbc[0]) == {k: 3 for k in range(5)}
    assert len(load_task("webnlg", data_root=root, shots=5).train) == 5  # K in total for generation


def test_bbc_split_is_fixed_and_disjoint() -> None:
    a, b = load_task("bbc-news", seed=1), load_task("bbc-news", seed=2)
    assert a.eval == b.eval
    assert a.label_names == ["business", "entertainment", "politics", "sports", "tech"]
    assert not {ex.texts for ex in a.train} & {ex.texts for ex in a.eval}


def test_max_eval_keeps_a_fixed_subset(root: Path) -> None:
    a = load_task("sst2", data_root=root, max_eval=50, seed=13)
    b = load_task("sst2", data_root=root, max_eval=50, seed=42)
    assert len(a.eval) == 50
    assert a.eval == b.eval


def test_majority_baselines(root: Path) -> None:
    assert majority_accuracy(load_task("sst2", data_root=root)) == pytest.approx(444 / 872)
    assert majority_accuracy(load_task("boolq", data_root=root)) == pytest.approx(2033 / 3270)
    with pytest.raises(ValueError, match="webnlg"):
        majority_accuracy(load_task("webnlg", data_root=root, max_eval=5))


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture()
def toy_files(tmp_path: Path) -> tuple[Path, Path]:
    """A made-up pair task ("is the answer polite?") as TSV train and JSONL eval."""
    train = _write(
        tmp_path / "train.tsv",
        "question\treply\tverdict\n"
        + "".join(f"q{i}\tr{i}\t{v}\n" for i, v in enumerate(["rude", "polite", "neutral"] * 3)),
    )
    rows = [
        {"question": "how?", "reply": "please", "verdict": "polite"},
        {"question": "what?", "reply": "go away", "verdict": "rude"},
    ]
    evalf = _write(tmp_path / "eval.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    return train, evalf


def test_user_files_load_with_sorted_labels(toy_files: tuple[Path, Path]) -> None:
    train, evalf = toy_files
    task = load_task(train_file=train, eval_file=evalf, text_columns=["question", "reply"], label_column="verdict")
    assert task.name == "custom"
    assert task.label_names == ["neutral", "polite", "rude"]
    assert task.text_fields == ("question", "reply")
    assert len(task.train) == 9
    assert [ex.label for ex in task.eval] == [1, 2]
    assert task.eval[0].texts == ("how?", "please")
    assert Counter(
        ex.label
        for ex in load_task(
            train_file=train, eval_file=evalf, text_columns=["question"], label_column="verdict", shots=2, seed=3
        ).train
    ) == {0: 2, 1: 2, 2: 2}


def test_user_csv_with_integer_labels_sorts_numerically(tmp_path: Path) -> None:
    rows = "text,y\n" + "".join(f"t{i},{y}\n" for i, y in enumerate([10, 2, 1, 2]))
    f = _write(tmp_path / "a.csv", rows)
    task = load_task(train_file=f, eval_file=f, text_columns=["text"], label_column="y")
    assert task.label_names == ["1", "2", "10"]
    assert [ex.label for ex in task.train] == [2, 1, 0, 1]


def test_unseen_eval_label_is_named(tmp_path: Path, toy_files: tuple[Path, Path]) -> None:
    train, _ = toy_files
    bad = _write(tmp_path / "bad.tsv", "question\treply\tverdict\nq\tr\tsarcastic\n")
    with pytest.raises(ValueError, match="sarcastic.*never occur"):
        load_task(train_file=train, eval_file=bad, text_columns=["question"], label_column="verdict")


@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        (dict(name="sst-7"), ValueError, r"unknown task 'sst-7'; known tasks: bbc-news, sst2"),
        (dict(name="sst2", shots=0), ValueError, r"shots must be an integer >= 1, got 0"),
        (dict(name="sst2", shots=17), ValueError, r"shots=17.*class 'negative'.*only 16"),
        (dict(name="cb", shots=4), ValueError, r"class 'neutral'.*only 3.*shots=4|shots=4.*'neutral'.*only 3"),
        (dict(name="snli", shots=17), ValueError, r"class 'entailment'.*only 16"),
        (dict(name="sst2", max_eval=0), ValueError, r"max_eval.*got 0"),
    ],
)
def test_bad_task_arguments_are_named(root: Path, kwargs: dict, error: type, pattern: str) -> None:
    with pytest.raises(error, match=pattern):
        load_task(data_root=root, **kwargs)


def test_missing_data_root_and_files_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FileNotFoundError, match=r"nowhere.*--data-root.*BALANCEDNESS_DATA"):
        load_task("sst2", data_root=tmp_path / "nowhere")
    (tmp_path / "lm-bff" / "k-shot" / "RTE" / "16-42").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"RTE.*train\.tsv"):
        load_task("rte", data_root=tmp_path)
    monkeypatch.setenv("BALANCEDNESS_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"fewglue.CB.train\.jsonl"):
        load_task("cb")
    with pytest.raises(FileNotFoundError, match=r"missing\.tsv"):
        load_task(
            train_file=tmp_path / "missing.tsv",
            eval_file=tmp_path / "missing.tsv",
            text_columns=["a"],
            label_column="b",
        )


def test_user_file_errors_are_named(tmp_path: Path, toy_files: tuple[Path, Path]) -> None:
    train, evalf = toy_files
    with pytest.raises(
        ValueError, match=r"no column\(s\) \['text'\]; columns found: \['question', 'reply', 'verdict'\]"
    ):
        load_task(train_file=train, eval_file=evalf, text_columns=["text"], label_column="verdict")
    empty = _write(tmp_path / "empty.tsv", "question\treply\tverdict\n")
    with pytest.raises(ValueError, match=r"empty\.tsv.*no data rows"):
        load_task(train_file=empty, eval_file=evalf, text_columns=["question"], label_column="verdict")
    with pytest.raises(ValueError, match="eval_file"):
        load_task(train_file=train, text_columns=["question"], label_column="verdict")
    with pytest.raises(ValueError, match="label_column"):
        load_task(train_file=train, eval_file=evalf, text_columns=["question"])
    with pytest.raises(ValueError, match="either the built-in task 'sst2'"):
        load_task("sst2", train_file=train, eval_file=evalf, text_columns=["question"], label_column="verdict")


def test_snli_rows_with_extra_annotator_labels_keep_their_gold_label():
    """SNLI 16-42 has rows with label1..label5 before gold_label (15 fields under an 11-field header); the
    gold label is the last field (LM-BFF reads line[-1]). Read by header position, two neutral pairs became
    entailment and the split looked like 18/16/14."""
    from collections import Counter

    task = load_task("snli", data_root=data_root_or_skip(), seed=42)
    assert Counter(ex.label for ex in task.train) == {0: 16, 1: 16, 2: 16}


def test_malformed_user_files_are_named_with_their_line(tmp_path):
    def write(name, text, encoding="utf-8"):
        path = tmp_path / name
        path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
        return path

    good = write("eval.csv", "text,label\nfine,a\nbad,b\n")
    cases = [
        (
            write("ragged.csv", "text,label\nok,a\ntoo,many,fields\n"),
            r"ragged.csv' line 3 has 3 comma-separated fields, expected 2",
        ),
        (write("short.tsv", "text\tlabel\nok\ta\nshort\n"), r"short.tsv' line 3 has 1 tab-separated fields"),
        (write("quote.csv", 'text,label\nok,a\n"bad"quote,b\n'), r"quote.csv' line 3: .*must be quoted"),
        (write("nolabel.csv", "text,label\nok,a\nempty,\n"), r"nolabel.csv' line 3: the label cell"),
        (write("oneclass.csv", "text,label\nx,a\ny,a\n"), r"oneclass.csv'.*single class \['a'\]"),
        (write("latin1.csv", "text,label\ncaf\u00e9,a\nok,b\n", "latin-1"), r"latin1.csv' is not UTF-8"),
    ]
    for path, message in cases:
        with pytest.raises(ValueError, match=message):
            load_task(train_file=path, eval_file=good, text_columns=["text"], label_column="label")
    bom = write("bom.csv", "\ufefftext,label\nx,a\ny,b\n")
    assert len(load_task(train_file=bom, eval_file=good, text_columns=["text"], label_column="label").train) == 2


def test_malformed_json_lines_are_named_with_their_line(tmp_path):
    """JSON lines: each failure a sentence naming the file and line, before datasets reads the file (it
    would coerce a mixed-type field or fill a missing one with null without saying where)."""
    good = tmp_path / "eval.jsonl"
    good.write_text('{"text": "fine", "label": "a"}\n{"text": "bad", "label": "b"}\n')
    cases = {
        "mixed.jsonl": (
            '{"text": "x", "label": "a"}\n{"text": "y", "label": 1}\n',
            r"mixed.jsonl' line 2: field 'label' holds a number, but on line 1 it holds a string",
        ),
        "notjson.jsonl": (
            '{"text": "x", "label": "a"}\n{"text": "y", label: b}\n',
            r"notjson.jsonl' line 2 is not JSON",
        ),
        "array.jsonl": ('{"text": "x", "label": "a"}\n["y", "b"]\n', r"array.jsonl' line 2: expected a JSON object"),
        "hole.jsonl": (
            '{"text": "x", "label": "a"}\n\n{"label": "b"}\n',
            r"hole.jsonl' line 3: field 'text' is missing",
        ),
        "null.jsonl": (
            '{"text": "x", "label": "a"}\n{"text": "y", "label": null}\n',
            r"null.jsonl' line 2: field 'label' is missing or null",
        ),
    }
    for name, (text, message) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(ValueError, match=message):
            load_task(train_file=path, eval_file=good, text_columns=["text"], label_column="label")
    typed = tmp_path / "typed.jsonl"
    typed.write_text('{"text": "x", "label": 1}\n{"text": "y", "label": 0}\n{"text": "z", "label": 10}\n')
    task = load_task(train_file=typed, eval_file=typed, text_columns=["text"], label_column="label")
    assert task.label_names == ["0", "1", "10"]
    assert [ex.label for ex in task.train] == [1, 0, 2]


def test_an_edited_file_is_never_read_from_a_stale_cache(tmp_path):
    """datasets caches a local file by path and modification time; ours adds the file's SHA-256, so a file
    rewritten in place (here with its old mtime restored) is read afresh."""
    import os

    train, evalf = tmp_path / "train.csv", tmp_path / "eval.csv"
    evalf.write_text("text,label\nu,a\nv,b\n")
    train.write_text("text,label\nfirst,a\nsecond,b\n")
    stamp = os.stat(train).st_mtime_ns
    assert [
        ex.texts
        for ex in load_task(train_file=train, eval_file=evalf, text_columns=["text"], label_column="label").train
    ] == [("first",), ("second",)]
    train.write_text("text,label\nthird,b\nfourth,a\n")
    os.utime(train, ns=(stamp, stamp))
    task = load_task(train_file=train, eval_file=evalf, text_columns=["text"], label_column="label")
    assert [(ex.texts, ex.label) for ex in task.train] == [(("third",), 1), (("fourth",), 0)]


def test_rows_reach_the_examples_through_datasets(tmp_path):
    """The reader hands back a ``datasets.Dataset`` (pandas parsing, arrow storage, the HF cache) whose
    rows are the examples: quoted commas, doubled quotes and line breaks inside quotes survive."""
    from datasets import Dataset

    from balancedness.finetune.data.readers import read_table

    path = tmp_path / "quoted.csv"
    path.write_text('text,label\n"a, b",x\n"say ""hi""",y\n"two\nlines",x\n')
    table = read_table(path)
    assert isinstance(table.dataset, Dataset)
    assert table.lines == [2, 3, 4]
    assert table.column("text") == ["a, b", 'say "hi"', "two\nlines"]
