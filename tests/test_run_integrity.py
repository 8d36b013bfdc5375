"""Runs that cannot be mixed or mislabelled (issue 22, part A): what ``--overwrite`` may delete, one writer
per run folder, a diverged run is failed (never complete, never selected), checkpoints a resume can trust,
and the smaller promises (usage errors before ``run.json``, the batch actually used, output permissions,
strict JSON, failed writes, clean ``figures fig3 --log`` errors).

The runs are real (MiniLM, SST-2 4-shot, a few steps) through ``tests/fault_runner.py``, as in
``tests/test_faults.py`` (forked from a process that imported torch once: ``tests/prewarmed.py``, except the run
under a file size limit, which gets a fresh process); faults are real signals and real resource limits.
"""

from __future__ import annotations

import functools
import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import invoke
from prewarmed import Run, run_fault
from test_faults import _args, _assert_identical, _finetune, _outcome, _run, _tree

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
RUNNER = Path(__file__).with_name("fault_runner.py")


def _flat(text: str) -> str:
    """stderr without rich's line wrapping (it wraps inside paths too)."""
    return " ".join(text.split())


def _strict(text: str):
    """``json.loads`` that refuses NaN / Infinity (what strict JSON readers do)."""

    def refuse(name):
        raise ValueError(f"bare {name} in JSON")

    return json.loads(text, parse_constant=refuse)


# ------------------------------------------------------------------------------------------ item 2: overwrite
def _run_folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "run.json").write_text('{"fingerprint": {}, "id": "0"}\n')
    return path


def test_overwrite_deletes_only_run_or_sweep_folders(tmp_path, monkeypatch):
    """Refused: no run.json, /, $HOME, the working directory and above, a git tree, a symlink."""
    from balancedness.finetune.runfolder import RunFolderError, check_overwrite

    check_overwrite(_run_folder(tmp_path / "run"))  # a run folder: allowed
    sweep = tmp_path / "sweep"
    (sweep / ".locks").mkdir(parents=True)
    check_overwrite(sweep)  # a sweep folder: allowed
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_text("x")
    home = _run_folder(tmp_path / "home")
    monkeypatch.setenv("HOME", str(home))
    repo = _run_folder(tmp_path / "repo")
    (repo / ".git").mkdir()
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "run")
    monkeypatch.chdir(_run_folder(tmp_path / "work" / "here"))
    cases = {
        foreign: "not a run or sweep folder",
        Path("/"): "root",
        home: "home folder",
        Path("."): "working directory",
        tmp_path / "work": "working directory",
        repo: "git working tree",
        link: "symbolic link",
    }
    for path, why in cases.items():
        with pytest.raises(RunFolderError) as err:
            check_overwrite(path)
        assert why in str(err.value), (path, str(err.value))
        assert "would delete" in str(err.value), (path, str(err.value))
    assert (foreign / "holiday.jpg").exists()
    assert (tmp_path / "run" / "run.json").exists()


@pytest.mark.slow
def test_overwrite_of_a_folder_that_is_not_a_run_is_refused_by_the_cli(tmp_path, monkeypatch):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("years of work")
    before = _tree(foreign)
    proc = _finetune(_args(foreign, "--overwrite", steps=2))
    assert proc.returncode == 2, proc.stderr[-2000:]
    text = _flat(proc.stderr)
    assert "not a run or sweep folder" in text
    assert "thesis.tex" in text
    assert "Traceback" not in proc.stderr
    assert _tree(foreign) == before
    refused = _finetune(_args(foreign, steps=2))  # the first refusal no longer suggests --overwrite
    assert refused.returncode == 2
    assert "--overwrite" not in _flat(refused.stderr)
    here = _run_folder(tmp_path / "cwd")
    monkeypatch.chdir(here)
    dot = _finetune(_args(Path("."), "--overwrite", steps=2))
    assert dot.returncode == 2
    assert "working directory" in _flat(dot.stderr)
    assert "Traceback" not in dot.stderr
    assert (here / "run.json").exists()
    assert not [p for p in tmp_path.iterdir() if "replaced" in p.name]


# ------------------------------------------------------------------------------------------ item 3: one writer
@pytest.mark.slow
def test_one_writer_per_run_folder_and_no_stale_lock_after_a_kill(tmp_path):
    out = tmp_path / "run"
    marker = tmp_path / "paused"
    first = Run(["pause", "2", "--", *_args(out, "--save-every", "1")], env={"FAULT_MARKER": str(marker)})
    try:
        deadline = time.monotonic() + 300
        while not marker.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), first.output()[1][-2000:] if first.poll() is not None else "no pause"
        before = _tree(out)
        for extra, method in (((), "sam"), (("--resume",), "nbar")):  # another method; an identical resume
            second = _finetune(_args(out, *extra, method=method))
            assert second.returncode == 2, second.stderr[-2000:]
            text = _flat(second.stderr)
            assert f"in use by process {first.pid}" in text, text
            assert "one writer" in text, text
            assert "Traceback" not in second.stderr
        assert _tree(out) == before
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    resumed = _finetune(_args(out, "--resume"))  # the lock died with its process
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((out / "metrics.json").read_text())["status"] == "complete"


# ------------------------------------------------------------------------------------------ item 4: diverged
@pytest.mark.slow
def test_a_diverged_run_is_failed_not_complete(tmp_path):
    from balancedness.finetune.report import collect
    from balancedness.finetune.runfolder import read_complete

    out = tmp_path / "run"
    proc = _finetune(_args(out, "--lr", "1e30", "--json", steps=4))
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "diverged at step" in _flat(proc.stderr)
    assert "Traceback" not in proc.stderr
    assert proc.stdout.strip() == ""
    metrics = _strict((out / "metrics.json").read_text())
    assert metrics["status"] == "failed"
    assert metrics["diverged_at"] == metrics["step_reached"] <= 4
    assert "accuracy" not in metrics
    assert "nan" in metrics["error"] or "not finite" in metrics["error"]
    for line in (out / "balancedness.jsonl").read_text().splitlines():  # strict JSON: null, never NaN
        _strict(line)
    assert read_complete(out) is None
    assert collect(tmp_path) == []
    before = _tree(out)
    again = _finetune(_args(out, "--lr", "1e30", "--resume", steps=4))  # known outcome: refused, not retrained
    assert again.returncode == 1
    assert "diverges again" in _flat(again.stderr)
    assert _tree(out) == before


def test_the_completeness_rule_refuses_nan_and_failed_records(tmp_path):
    from balancedness.finetune.report import collect
    from balancedness.finetune.runfolder import is_complete

    good = {"status": "complete", "metric": "accuracy", "accuracy": 0.5, "train_loss": 0.7}
    assert is_complete(good)
    for bad in (
        {**good, "train_loss": None},
        {**good, "train_loss": float("nan")},
        {**good, "accuracy": None},
        {**good, "status": "failed"},
        {**good, "status": "interrupted"},
        None,
    ):
        assert not is_complete(bad), bad
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "metrics.json").write_text(json.dumps({**good, "train_loss": None}))
    assert collect(tmp_path) == []  # a run an older version recorded complete with a NaN loss


@pytest.mark.slow
def test_a_sweep_never_selects_or_tabulates_a_diverged_run(tmp_path):
    from data_fixtures import data_root_or_skip

    out = tmp_path / "sweep"
    proc = invoke(
        [
            "sweep",
            "--tasks",
            "sst2",
            "--methods",
            "lora",
            "--seeds",
            "42",
            "--shots",
            "4",
            "--steps",
            "2",
            "--batch-size",
            "4",
            "--max-eval",
            "8",
            "--grid",
            "all:lr=1e30,1e-3",
            "--space",
            "fixed",
            "--data-root",
            str(data_root_or_skip()),
            "--out",
            str(out),
        ]
    )
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    failures = json.loads((out / "failures.json").read_text())
    assert len({f["out"] for f in failures}) == 1
    assert "diverged" in failures[0]["error"]
    rows = (out / "selected.csv").read_text().splitlines()
    assert len(rows) == 2
    assert failures[0]["out"] not in rows[1]
    selected = Path(rows[1].split(",")[rows[0].split(",").index("run")])
    selected = selected if selected.is_absolute() else out / selected
    assert json.loads((selected / "metrics.json").read_text())["config"]["lr"] == 1e-3


# ------------------------------------------------------------------------------------------ item 7 and losses
@pytest.fixture
def interrupted(interrupted_run) -> Path:
    """A run interrupted at step 2 (checkpoint-2, conftest.interrupted_run): each test below damages a copy."""
    return interrupted_run


def _copy(interrupted: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(interrupted, out)
    return out


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json", "adapter_model.safetensors"]
)
def test_a_checkpoint_missing_a_file_is_refused_by_name(interrupted, tmp_path, name):
    out = _copy(interrupted, tmp_path)
    (out / "checkpoints" / "checkpoint-2" / name).unlink()
    before = _tree(out)
    proc = _finetune(_args(out, "--resume"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"lacks {name}" in _flat(proc.stderr)
    assert "Traceback" not in proc.stderr
    assert _tree(out) == before


@pytest.mark.slow
@pytest.mark.parametrize("losses", ['["0.7", "0.6"]', "[0.7, null]", "[0.7, NaN]", '{"a": 1}', "[0.7]"])
def test_losses_that_are_not_finite_numbers_are_refused(interrupted, tmp_path, losses):
    out = _copy(interrupted, tmp_path)
    (out / "checkpoints" / "checkpoint-2" / "losses.json").write_text(losses)
    before = _tree(out)
    proc = _finetune(_args(out, "--resume"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "losses.json" in "".join(proc.stderr.split())
    assert "Traceback" not in proc.stderr
    assert _tree(out) == before


# ------------------------------------------------------------------------------------------ checkpoint rotation
@pytest.fixture
def reference(reference_runs) -> dict:
    """The uninterrupted nBAR run of test_faults' options (``conftest.reference_runs``: made once per session)."""
    return _outcome(reference_runs("nbar"))


@pytest.mark.slow
def test_only_the_last_complete_checkpoint_is_kept_and_survives_a_kill(tmp_path, reference):
    out = tmp_path / "run"
    assert _run("sigint", 5, _args(out, "--save-every", "1")).returncode == 130
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-5"]
    shutil.rmtree(out)
    killed = _run("sigkill-before-marker", 4, _args(out, "--save-every", "2"))
    assert killed.returncode == -signal.SIGKILL
    kept = {p.name: (p / "COMPLETE").is_file() for p in (out / "checkpoints").iterdir()}
    assert kept == {"checkpoint-2": True, "checkpoint-4": False}, kept
    resumed = _finetune(_args(out, "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_identical(_outcome(out), reference)


# ------------------------------------------------------------------------------------------ item 9
@pytest.mark.slow
def test_a_usage_error_found_while_wiring_the_model_leaves_no_run_behind(tmp_path):
    out = tmp_path / "run"
    typo = _finetune(_args(out, "--target-modules", "querry", steps=2))
    assert typo.returncode == 2
    assert "querry" in typo.stderr
    assert "Traceback" not in typo.stderr
    assert not out.exists()
    fixed = _finetune(_args(out, "--target-modules", "query", steps=2))
    assert fixed.returncode == 0, fixed.stderr[-2000:]


@pytest.mark.slow
def test_the_batch_actually_used_is_recorded_and_outputs_have_the_usual_permissions(tmp_path):
    out = tmp_path / "run"
    proc = run_fault("none", 0, _args(out, "--batch-size", "16", steps=2), setup=functools.partial(os.umask, 0o022))
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_train"] == 8
    assert metrics["config"]["batch_size"] == 8
    assert json.loads((out / "run.json").read_text())["fingerprint"]["options"]["batch_size"] == 8
    assert "uses 8" in _flat(proc.stderr)
    same = _finetune(_args(out, "--batch-size", "8", steps=2))  # the very same run: skipped
    assert same.returncode == 0
    assert "skipped" in same.stderr
    assert (out / "adapter").stat().st_mode & 0o777 == 0o755
    assert {p.stat().st_mode & 0o777 for p in (out / "adapter").iterdir()} == {0o644}


@pytest.mark.slow
def test_a_write_that_fails_mid_run_ends_failed_with_a_sentence_and_resumes(tmp_path, reference):
    """A file size limit (what a full disk does to the next write): the log's append fails mid-run."""
    out = tmp_path / "run"

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (6000, 6000))

    proc = subprocess.run(
        [sys.executable, str(RUNNER), "none", "0", "--", *_args(out)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=600,
        preexec_fn=limit,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    text = _flat(proc.stderr)
    assert "File too large" in text
    assert "--resume" in text
    assert "Traceback" not in proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "failed"
    assert "File too large" in metrics["error"]
    resumed = _finetune(_args(out, "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_identical(_outcome(out), reference)


def test_json_text_is_strict():
    from balancedness.io import json_text

    assert json_text({"a": math.nan, "b": [math.inf, 1.0]}) == '{"a": null, "b": [null, 1.0]}'


def test_fig3_log_that_is_not_a_log_exits_2(tmp_path):
    text_file = tmp_path / "notes.txt"
    text_file.write_text("hello\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / "balancedness.jsonl").write_text('{"step": 1, "balancedness": {"layer.0.query": 0.1}}\n')
    (run / "metrics.json").write_text("{not json")
    for log, name in ((text_file, "notes.txt"), (run, "metrics.json")):
        proc = invoke(["figures", "fig3", "--log", str(log), "--out", str(tmp_path / "fig")])
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert name in "".join(proc.stderr.split())
        assert "Traceback" not in proc.stderr
