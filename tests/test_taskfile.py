"""TOML task files (`--task-file`): parsing, loading, the prompt, the fingerprint, each bad file, the sweep."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from balancedness.cli import app
from balancedness.finetune.data import load_task
from balancedness.finetune.prompts import PROMPTS, prompt_for
from balancedness.finetune.provenance import fingerprint, fingerprint_id
from balancedness.finetune.run import FinetuneConfig
from data_fixtures import data_root_or_skip

runner = CliRunner()

POSITIVE = ("wonderful", "delightful", "brilliant", "moving", "charming", "superb", "beautiful", "hilarious")
NEGATIVE = ("dreadful", "boring", "awful", "tedious", "clumsy", "dull", "painful", "lifeless")
SUBJECTS = ("The film is", "This movie is", "The acting is", "The story is")
WORDS = {"negative": " terrible", "positive": " great"}


def _reviews(adjectives: tuple[str, ...], label: str) -> list[tuple[str, str]]:
    """32 short reviews of one sentiment, each clearly so."""
    ending = "I loved every minute" if label == "positive" else "I hated every minute"
    return [(f"{subject} {adjective}, {ending}.", label) for adjective in adjectives for subject in SUBJECTS]


def _toml(value: object) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value)


def write_movie_task(folder: Path, raw: str = "", swap_dev: bool = False, **keys: object) -> Path:
    """A two-class movie-review task in ``folder``: train/dev/test TSV (16/16/32 rows, half positive) and
    ``mr.toml``; ``keys`` replace or (``None``) drop keys of the file, ``raw`` is appended as it is;
    ``swap_dev`` swaps the dev file's labels (so that the dev split and the test split disagree on what is best)."""
    folder.mkdir(parents=True, exist_ok=True)
    pos, neg = _reviews(POSITIVE, "positive"), _reviews(NEGATIVE, "negative")
    for name, start, stop in (("train", 0, 8), ("dev", 8, 16), ("test", 16, 32)):
        rows = [r for pair in zip(pos[start:stop], neg[start:stop], strict=True) for r in pair]
        if swap_dev and name == "dev":
            rows = [(text, "negative" if label == "positive" else "positive") for text, label in rows]
        with open(folder / f"{name}.tsv", "w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh, delimiter="\t", lineterminator="\n")
            writer.writerow(["sentence", "label"])
            writer.writerows(rows)
    content = {
        "name": "mr",
        "train": "train.tsv",
        "dev": "dev.tsv",
        "test": "test.tsv",
        "text": ["sentence"],
        "label": "label",
        "metric": "accuracy",
        "prompt": "{sentence} It was",
        "label_words": WORDS,
    }
    content.update(keys)
    text = "".join(f"{k} = {_toml(v)}\n" for k, v in content.items() if v is not None) + raw
    (folder / "mr.toml").write_text(text, encoding="utf-8")
    return folder / "mr.toml"


# --------------------------------------------------------------------------------------------- loading
def test_a_task_file_loads_its_splits_labels_and_prompt(tmp_path):
    task = load_task(task_file=write_movie_task(tmp_path))
    assert (task.name, task.kind, task.metric) == ("mr", "classification", "accuracy")
    assert (len(task.train), len(task.eval), len(task.dev)) == (16, 32, 16)
    assert task.label_names == ["negative", "positive"]  # the order of label_words
    assert task.train[0].texts == ("The film is wonderful, I loved every minute.",)
    assert task.train[0].label == 1
    prompt = prompt_for(task)
    assert prompt.template == "{0} It was"
    assert prompt.label_words == (" terrible", " great")
    assert prompt.render(task.train[1]) == "The film is dreadful, I hated every minute. It was"


def test_label_ids_follow_the_order_of_label_words(tmp_path):
    task = load_task(task_file=write_movie_task(tmp_path, label_words={"positive": " great", "negative": " bad"}))
    assert task.label_names == ["positive", "negative"]
    assert task.train[0].label == 0
    assert prompt_for(task).label_words == (" great", " bad")


def test_without_prompt_a_causal_lm_gets_the_generic_prompt(tmp_path):
    task = load_task(task_file=write_movie_task(tmp_path, prompt=None, label_words=None))
    prompt = prompt_for(task)
    assert prompt.template == "{0}\nLabel:"
    assert prompt.label_words == (" negative", " positive")
    assert task.label_names == ["negative", "positive"]  # sorted, as for --train-file


def test_shots_draw_from_train_and_max_eval_from_test(tmp_path):
    task = load_task(task_file=write_movie_task(tmp_path), shots=2, seed=13, max_eval=10)
    assert sorted(ex.label for ex in task.train) == [0, 0, 1, 1]
    assert (len(task.eval), len(task.dev)) == (10, 16)


def test_sst2_as_a_task_file_reads_the_builtin_examples(tmp_path):
    """The shared SST-2 split written as a task file: the same examples, prompt and label words as `sst2`."""
    folder = data_root_or_skip() / "lm-bff" / "k-shot" / "SST-2" / "16-13"
    file = tmp_path / "sst2.toml"
    file.write_text(
        f'name = "sst2-file"\ntrain = "{folder}/train.tsv"\ndev = "{folder}/dev.tsv"\n'
        f'test = "{folder}/test.tsv"\ntext = ["sentence"]\nlabel = "label"\nmetric = "accuracy"\n'
        'prompt = "{sentence} It was"\nlabel_words = { "0" = " terrible", "1" = " great" }\n'
    )
    mine, builtin = (
        load_task(task_file=file, max_eval=300),
        load_task("sst2", data_root=data_root_or_skip(), seed=13, max_eval=300),
    )
    for split in ("train", "eval", "dev"):
        assert getattr(mine, split) == getattr(builtin, split), split
    assert prompt_for(mine) == PROMPTS["sst2"]


# --------------------------------------------------------------------------------------------- fingerprint
def _fid(task, task_file: Path | None = None) -> str:
    """The fingerprint id of a LoRA run of ``task`` (its config naming ``task_file``), the model named only."""
    options = FinetuneConfig(task_file=None if task_file is None else str(task_file)).result_options()
    return fingerprint_id(fingerprint(options, task, "no/model", 1))


def test_the_fingerprint_counts_the_prompt_and_label_words(tmp_path):
    base = _fid(load_task(task_file=write_movie_task(tmp_path / "a")))
    assert _fid(load_task(task_file=write_movie_task(tmp_path / "b", prompt="Review: {sentence} It was"))) != base
    assert (
        _fid(
            load_task(
                task_file=write_movie_task(tmp_path / "c", label_words={"negative": " bad", "positive": " great"})
            )
        )
        != base
    )
    assert _fid(load_task(task_file=write_movie_task(tmp_path / "d", name="mr2"))) != base


def test_the_fingerprint_counts_the_data_not_where_it_lives(tmp_path):
    first = write_movie_task(tmp_path / "a")
    base = _fid(load_task(task_file=first), first)
    moved = shutil.copytree(first.parent, tmp_path / "elsewhere") / "mr.toml"
    assert _fid(load_task(task_file=moved), moved) == base
    with open(moved.parent / "dev.tsv", "a", encoding="utf-8") as fh:
        fh.write("A plain bad film.\tnegative\n")
    assert _fid(load_task(task_file=moved), moved) != base


def test_builtin_fingerprints_hold_no_prompt(tmp_path):
    """Old run folders stay recognised: a task without its own prompt adds nothing to the fingerprint."""
    task = load_task(task_file=write_movie_task(tmp_path, prompt=None, label_words=None))
    assert set(fingerprint({}, task, "no/model", 1)["data"]) == {
        "task",
        "train_sha256",
        "eval_sha256",
        "dev_sha256",
        "label_names",
    }


# --------------------------------------------------------------------------------------------- bad files
#: Keeps a command that should have been refused small, should it run after all.
SMALL = {
    "finetune": ["--steps", "1", "--batch-size", "2"],
    "sweep": ["--methods", "lora", "--seeds", "13", "--steps", "1", "--batch-size", "2"],
}


class _Message(str):
    """An error message; ``needle in message`` ignores white space (rich wraps long paths anywhere, and the paths
    of pytest-xdist workers are long)."""

    def __contains__(self, needle: object) -> bool:
        return "".join(str(needle).split()) in "".join(self.split())


def _refused(file: Path, tmp_path: Path, *extra: str, command: str = "finetune") -> str:
    """Run ``command --task-file file``; it must exit 2 before any work; returns the message (one line)."""
    out = tmp_path / "out"
    result = runner.invoke(app, [command, "--task-file", str(file), *SMALL[command], *extra, "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert not out.exists() or not any(out.iterdir())
    return _Message(" ".join(result.output.split()))


def test_an_unknown_key_is_refused(tmp_path):
    message = _refused(write_movie_task(tmp_path, raw='labels = "label"\n'), tmp_path)
    assert "unknown key(s) ['labels']" in message


def test_a_missing_data_file_is_refused(tmp_path):
    message = _refused(write_movie_task(tmp_path, dev="nodev.tsv"), tmp_path)
    assert "key 'dev'" in message
    assert "nodev.tsv' does not exist" in message


def test_a_missing_task_file_is_refused(tmp_path):
    message = _refused(tmp_path / "none.toml", tmp_path)
    assert "task file" in message
    assert "none.toml' does not exist" in message


def test_a_label_value_without_a_word_is_refused(tmp_path):
    message = _refused(write_movie_task(tmp_path, label_words={"negative": " terrible", "pos": " great"}), tmp_path)
    assert "train.tsv' line 2: label value 'positive'" in message
    assert "has no word in label_words" in message


def test_a_bad_metric_is_refused(tmp_path):
    message = _refused(write_movie_task(tmp_path, metric="f1"), tmp_path)
    assert "key 'metric': 'f1' is not a metric of a task file" in message


def test_a_placeholder_naming_no_column_is_refused(tmp_path):
    message = _refused(write_movie_task(tmp_path, prompt="{review} It was"), tmp_path)
    assert "placeholder {review} names no text column" in message
    assert "{sentence}" in message


@pytest.mark.parametrize(
    "key, value, needle",
    [
        ("text", "sentence", "key 'text': expected a list of one or two column names"),
        ("label", 3, "key 'label': expected a non-empty string, got an integer"),
        ("label_words", [" terrible", " great"], "key 'label_words': expected a table"),
    ],
)
def test_a_value_of_the_wrong_type_is_refused(tmp_path, key, value, needle):
    assert needle in _refused(write_movie_task(tmp_path, **{key: value}), tmp_path)


@pytest.mark.slow
def test_label_words_without_distinct_first_tokens_are_refused(tmp_path, monkeypatch):
    """' greatish' begins with SmolLM2's token ' great', the other label's word: refused at prepare time (before
    the weights load), by the check the label-word head applies."""
    import balancedness.finetune.models as models

    def must_not_load(*args, **kwargs):
        raise AssertionError("the weights were loaded before the label words were checked")

    monkeypatch.setattr(models, "load_for_task", must_not_load)
    file = write_movie_task(tmp_path, label_words={"negative": " greatish", "positive": " great"})
    message = _refused(file, tmp_path, "--model", "smollm2")
    assert "start with the same token" in message
    assert "task 'mr'" in message


def test_sweep_refuses_a_bad_task_file_before_any_run(tmp_path):
    message = _refused(write_movie_task(tmp_path, raw="steps = 3\n"), tmp_path, command="sweep")
    assert "unknown key(s) ['steps']" in message


def test_a_prompt_without_label_words_is_refused(tmp_path):
    message = _refused(write_movie_task(tmp_path, label_words=None), tmp_path)
    assert "key 'prompt' needs the key 'label_words' too" in message


def test_a_builtin_task_name_is_refused(tmp_path):
    assert "'sst2' is a built-in task" in _refused(write_movie_task(tmp_path, name="sst2"), tmp_path)


def test_sweep_refuses_two_task_files_of_one_name(tmp_path):
    other = write_movie_task(tmp_path / "other")
    message = _refused(write_movie_task(tmp_path / "mr"), tmp_path, "--task-file", str(other), command="sweep")
    assert "is named 'mr', like task file" in message


def test_a_task_file_excludes_task_and_columns(tmp_path):
    message = _refused(write_movie_task(tmp_path), tmp_path, "--task", "sst2")
    assert "drop task ('sst2')" in message


# --------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_finetune_runs_a_task_file(tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(
        app,
        [
            "finetune",
            "--task-file",
            str(write_movie_task(tmp_path / "mr")),
            "--steps",
            "2",
            "--batch-size",
            "4",
            "--out",
            str(out),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["task"], metrics["n"], metrics["n_dev"]) == ("mr", 32, 16)
    assert "dev_accuracy" in metrics


@pytest.mark.slow
def test_sweep_runs_a_task_file_with_label_words_and_selects_on_dev(tmp_path):
    """The movie-review task through `sweep --task-file` with SmolLM2's label words: two learning rates, one
    seed, dev selection. The dev file's labels are swapped, so the dev split prefers the configuration the
    test split ranks lower: selected.csv must name the run with the best dev metric, not the best test metric
    nor the first listed."""
    out = tmp_path / "sweep"
    result = runner.invoke(
        app,
        [
            "sweep",
            "--task-file",
            str(write_movie_task(tmp_path / "mr", swap_dev=True)),
            "--model",
            "smollm2",
            "--methods",
            "lora",
            "--seeds",
            "13",
            "--steps",
            "3",
            "--batch-size",
            "4",
            "--grid",
            "lora:lr=1e-4,5e-2",
            "--log-every",
            "1",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    from balancedness.finetune.report import collect

    runs = collect(out)
    assert len(runs) == 2
    assert {(r.task, r.n, r.n_dev) for r in runs} == {("mr", 32, 16)}
    lrs = [1e-4, 5e-2]
    first = lambda metric: max(runs, key=lambda r: (getattr(r, metric), -lrs.index(r.config["lr"])))  # noqa: E731
    by_dev, by_test = first("dev"), first("value")
    assert by_dev.run != by_test.run  # the swapped dev labels make the two choices differ
    [row] = list(csv.DictReader((out / "selected.csv").open()))
    assert (row["task"], row["run"], row["candidates"]) == ("mr", by_dev.run, "2")
    assert float(row["dev"]) == pytest.approx(by_dev.dev, abs=1e-4)
    table = (out / "table.md").read_text()
    assert "| method | mr |" in table
    assert f"| LoRA | {100 * by_dev.value:.1f}±0.0 |" in table
    run_file = json.loads((out / by_dev.run / "run.json").read_text())
    assert run_file["fingerprint"]["data"]["label_words"] == [" terrible", " great"]
