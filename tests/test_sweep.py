"""`balancedness sweep`: the grid, tables, resume; and the table maths on synthetic metrics."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from balancedness.cli import app
from balancedness.finetune.report import MixedSettingsError, csv_text, markdown_tables, settings_text, summarize
from data_fixtures import data_root_or_skip


def _record(task, method, seed, acc, sps):
    return {"task": task, "method": method, "seed": seed, "metric": "accuracy", "accuracy": acc,
            "seconds_per_step": sps, "majority": 0.5, "status": "complete"}


def test_tables_mean_std_average_and_runtime_ratio():
    runs = [_record("sst2", "lora", s, a, 0.1) for s, a in ((1, 0.6), (2, 0.7))]
    runs += [_record("sst2", "sam", s, a, 0.2) for s, a in ((1, 0.8), (2, 0.8))]
    runs += [_record("rte", m, 1, 0.5, t) for m, t in (("lora", 0.1), ("sam", 0.3))]
    cells = summarize(runs)
    md = markdown_tables(cells, methods=["lora", "sam"])
    assert "| LoRA | 65.0±7.1 | 50.0±0.0 | 57.5 |" in md
    assert "| LoRA-SAM | 80.0±0.0 | 50.0±0.0 | 65.0 |" in md
    assert "| LoRA-SAM | 2.00x | 3.00x |" in md and "| majority class | 50.0 | 50.0 | 50.0 |" in md
    assert "sst2,sam,accuracy,2,80.0000,0.0000,0.20000,2.0000,50.0000" in csv_text(cells)


def test_sweep_rejects_bad_grid(tmp_path):
    result = CliRunner().invoke(app, ["sweep", "--tasks", "sst2,nope", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "nope" in result.output


@pytest.mark.slow
def test_sweep_tiny_grid_writes_tables_and_resumes(tmp_path, monkeypatch):
    def sweep_args(methods, steps):
        return ["sweep", "--tasks", "sst2,rte", "--methods", methods, "--seeds", "42", "--steps", steps,
                "--batch-size", "4", "--shots", "2", "--max-eval", "16", "--data-root", str(data_root_or_skip()),
                "--out", str(tmp_path)]

    args = sweep_args("lora,nbar", "2")
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    table = (tmp_path / "table.md").read_text()
    assert "| method | SST-2 | RTE | avg |" in table and "LoRA-nBAR" in table and "x |" in table
    assert len((tmp_path / "table.csv").read_text().splitlines()) == 5
    [run] = (tmp_path / "rte" / "nbar").glob("seed42-*")
    assert json.loads((run / "metrics.json").read_text())["status"] == "complete"
    assert "Settings of every run:" in table and "steps 2" in table

    import balancedness.finetune.models as models

    def must_not_load(*args, **kwargs):
        raise AssertionError("a complete run was trained again")

    monkeypatch.setattr(models, "load_for_task", must_not_load)
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert (tmp_path / "table.md").read_text() == table
    monkeypatch.undo()

    changed = CliRunner().invoke(app, sweep_args("lora", "3"))
    assert changed.exit_code == 0, changed.output
    assert len(list((tmp_path / "rte" / "lora").glob("seed42-*"))) == 2  # a new run beside the old one
    assert (run / "metrics.json").is_file()  # the old evidence is kept
    new_table = (tmp_path / "table.md").read_text()
    assert "steps 3" in new_table and "steps 2" not in new_table and "LoRA-nBAR" not in new_table


def test_tables_refuse_to_mix_settings():
    def run(method, seed, steps, **extra):
        return {**_record("sst2", method, seed, 0.6, 0.1), "config": {"steps": steps, "lr": 1e-3, **extra}}

    summarize([run("lora", 1, 100), run("sam", 2, 100, rho=0.05)])  # one protocol: fine
    with pytest.raises(MixedSettingsError, match=r"column sst2: steps: 100 .* vs 200"):
        summarize([run("lora", 1, 100), run("lora", 2, 200)])
    with pytest.raises(MixedSettingsError, match=r"cell sst2 × sam: rho"):
        summarize([run("sam", 1, 100, rho=0.05), run("sam", 2, 100, rho=0.1)])
    assert "rho 0.05" in settings_text([run("sam", 1, 100, rho=0.05)])
