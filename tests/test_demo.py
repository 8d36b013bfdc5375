"""The demo driver: sections, the extension point, and the report's markdown (quick)."""

from __future__ import annotations

import json

import pytest

from balancedness import demo
from balancedness.checks import results_as_json, run_checks
from balancedness.demo.report import checks_table, figure_gallery
from data_fixtures import data_root_or_skip


def test_checks_table_has_one_row_per_claim():
    rows = results_as_json(run_checks(quick=True, only=["sam-op-identity", "lemma1-lambda-max"]))
    table = checks_table(rows)
    assert table.splitlines()[0] == "| id | paper | claim | measured | tolerance | result |"
    assert sum(line.startswith("| sam-op-identity |") for line in table.splitlines()) == 1
    assert "2 of 2 checks passed" in table


def test_checks_table_marks_failures():
    row = {"id": "x", "ref": "Thm 9", "claim": "a|b", "measured": "1", "tolerance": "<= 0", "status": "FAIL"}
    table = checks_table([row])
    assert "**FAIL**" in table
    assert "a\\|b" in table
    assert "1 failed" in table


def test_gallery_links_images_relative_to_report(tmp_path):
    figs = tmp_path / "figures"
    figs.mkdir()
    (figs / "fig1.json").write_text(json.dumps({"title": "T", "caption": "C 0.22"}))
    md = figure_gallery(figs, tmp_path, ["fig1"])
    assert "![fig1](figures/fig1.png)" in md
    assert "C 0.22" in md


def test_run_writes_report_with_registered_sections(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "SECTIONS", [])

    def failing(ctx):
        ctx.failures.append("thing")
        (ctx.out / "x.txt").write_text("x")
        return "## Extra\n\nhello"

    demo.register_section(failing)
    demo.register_section(lambda ctx: "## First", before=failing)
    ctx = demo.run(tmp_path / "out", quick=True)
    text = (tmp_path / "out" / "REPORT.md").read_text()
    assert text.index("## First") < text.index("## Extra")
    assert "Failed: thing." in text
    assert ctx.failures == ["thing"]


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path):
    """`python -m balancedness.demo --quick` (its ``main``, in this process): checks, figures and the LoRA
    comparison, into REPORT.md."""
    data_root_or_skip()  # the finetune section runs the LM-BFF SST-2 protocol when the data is there

    out = tmp_path / "demo"
    assert demo.main(["--out", str(out), "--quick"]) == 0, (out / "REPORT.md").read_text()[:3000]
    report = (out / "REPORT.md").read_text()
    checks = json.loads((out / "checks.json").read_text())
    assert len(checks) >= 25
    assert all(r["status"] == "PASS" for r in checks)
    assert "| id | paper | claim | measured | tolerance | result |" in report
    for name in ("fig1", "fig2", "fig4", "flow", "rates", "msharp"):
        assert f"figures/{name}.png" in report
        assert (out / "figures" / f"{name}.png").is_file()
    assert "LoRA vs SAM vs oBAR vs nBAR" in report
    for method in ("lora", "sam", "obar", "nbar"):
        runs = list((out / "finetune" / "sst2" / method).glob("seed13-*"))
        assert len(runs) == 2  # two learning rates, the dev split picks one
        for run in runs:
            metrics = json.loads((run / "metrics.json").read_text())
            assert metrics["status"] == "complete"
            assert 0 <= metrics["accuracy"] <= 1
            assert "dev_accuracy" in metrics
    assert "selected on the dev split" in report
    assert "finetune/paired.png" in report
    assert (out / "finetune" / "paired.png").is_file()
    assert " x |" not in report
    assert (out / "finetune" / "fig3.png").is_file()
    assert "fig3.png" in report
