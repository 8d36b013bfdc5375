"""Outputs that cannot be written are refused with exit 2 and a sentence, before any work starts."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from balancedness.cli import app
from data_fixtures import data_root_or_skip

runner = CliRunner()


# The functions that do each command's work; a refusal must come before any of them is called.
WORK = [
    ("balancedness.sims", "simulate"),
    ("balancedness.sims", "solve_flow"),
    ("balancedness.checks", "run_checks"),
    ("balancedness.commands.figures", "render"),
    ("balancedness.finetune.run", "run_finetune"),
    ("balancedness.finetune.sweep", "run_finetune"),  # a sweep's cells (it checks every task's data first)
    ("balancedness.finetune.study", "run_cells"),
    ("balancedness.finetune.study", "start_workers"),
]


@pytest.fixture(autouse=True)
def no_work(monkeypatch):
    """Each work function raises if called: a refusal that came after the work started fails the test."""
    import importlib

    def started(*args, **kwargs):
        raise AssertionError("the command started its work before refusing the output path")

    for module, name in WORK:
        monkeypatch.setattr(importlib.import_module(module), name, started)


@pytest.fixture
def blocker(tmp_path):
    """A plain file standing where a folder would have to be."""
    path = tmp_path / "blocker"
    path.write_text("not a folder")
    return path


def _refused(args, needle):
    result = runner.invoke(app, args)
    text = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert "".join(needle.split()) in "".join(text.split())  # rich wraps long (xdist) paths anywhere
    assert "Traceback" not in text


def test_simulate_out_under_a_file(blocker):
    _refused(
        ["simulate", "--steps", "100000", "--seeds", "50", "--out", str(blocker / "sam.json")], "the folder of --out"
    )
    _refused(["simulate", "--out", str(blocker / "deeper" / "sam.json")], "cannot be created")


def test_simulate_out_is_a_folder(tmp_path):
    (tmp_path / "x.json").mkdir()
    _refused(["simulate", "--out", str(tmp_path / "x.json")], "is a folder; expected a file name")


def test_check_json_under_a_file(blocker):
    _refused(["check", "--json", str(blocker / "checks.json")], "the folder of --json")


def test_figures_out_is_a_file(blocker):
    _refused(["figures", "fig1", "--quick", "--out", str(blocker)], "is a file; expected a folder")


def test_finetune_out_is_a_file(blocker):
    _refused(["finetune", "--method", "nbar", "--out", str(blocker)], "is a file; expected a folder")


def test_sweep_out_under_a_file_and_missing_data_root(blocker, tmp_path):
    _refused(["sweep", "--tasks", "sst2", "--out", str(blocker / "s")], "cannot be created")
    _refused(
        ["sweep", "--tasks", "sst2", "--data-root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "s")], "nowhere"
    )
    assert not (tmp_path / "s").exists()
    data_root_or_skip()
