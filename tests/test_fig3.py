"""Figure 3 from balancedness logs: synthetic logs (format, panels) and two real short finetunes (the CLI)."""

from __future__ import annotations

import json

import pytest

from balancedness.figures.fig3 import load_logs, make_fig3


def _log(folder, task, method, decay):
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(
        json.dumps(
            {
                "task": task,
                "method": method,
                "model": "minilm",
                "seed": 42,
                "metric": "accuracy",
                "steps": 5,
                "config": {},
                "fingerprint_id": "0" * 16,
                "status": "complete",
            }
        )
    )
    lines = []
    for step in range(1, 6):
        bal = {
            f"base_model.model.bert.encoder.layer.{i}.attention.self.{kind}.default": 0.7 * decay**step
            for i in range(6)
            for kind in ("query", "value")
        }
        lines.append(json.dumps({"step": step, "balancedness": bal, "grad_gap": {}}))
    (folder / "balancedness.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_fig3_from_logs(tmp_path):
    logs = [_log(tmp_path / t / m, t, m, d) for t in ("rte", "sst5", "mnli") for m, d in (("lora", 1.0), ("sam", 0.9))]
    runs = load_logs(logs)
    assert sorted(runs[0]["layers"]) == list(range(6))
    assert runs[0]["layers"][0][0] == 1.4
    paths = make_fig3(tmp_path / "fig", logs=logs)
    assert {p.name for p in paths} == {"fig3.png", "fig3.json", "fig3.csv"}
    data = json.loads((tmp_path / "fig" / "fig3.json").read_text())
    assert data["panels"] == [{"task": "rte", "layer": 0}, {"task": "sst5", "layer": 3}, {"task": "mnli", "layer": 5}]
    assert {r["model"] for r in data["runs"]} == {"minilm"}
    assert len((tmp_path / "fig" / "fig3.csv").read_text().splitlines()) == 1 + 6 * 5


@pytest.mark.slow
def test_fig3_cli_from_real_runs(tmp_path):
    """Two real short MiniLM finetunes (AdamW LoRA and SAM) logged by BalancednessCallback, then the CLI (all in
    this process: ``conftest.invoke``)."""
    from conftest import invoke
    from data_fixtures import data_root_or_skip

    root = data_root_or_skip()
    for method in ("lora", "sam"):
        args = ["--model", "minilm", "--task", "rte", "--data-root", str(root), "--method", method, "--steps", "6"]
        done = invoke(
            [
                "finetune",
                *args,
                "--batch-size",
                "8",
                "--log-every",
                "1",
                "--max-eval",
                "16",
                "--out",
                str(tmp_path / method),
            ]
        )
        assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "fig"
    p = invoke(["figures", "fig3", "--log", str(tmp_path / "lora"), "--log", str(tmp_path / "sam"), "--out", str(out)])
    assert p.returncode == 0, p.stderr
    data = json.loads((out / "fig3.json").read_text())
    assert [pnl["layer"] for pnl in data["panels"]] == [0, 3, 5]
    assert (out / "fig3.png").stat().st_size > 10_000
    # LoRA init has B_l = ½‖A‖² > 0 (B = 0), and the logged steps are 1..6 for both runs
    for run in load_logs([tmp_path / "lora", tmp_path / "sam"]):
        assert run["steps"] == [1, 2, 3, 4, 5, 6]
        assert all(v[0] > 0 for v in run["layers"].values())
