"""Figure 3 from balancedness logs (synthetic logs in the BalancednessCallback format; no training)."""

from __future__ import annotations

import json

from balancedness.figures.fig3 import load_logs, make_fig3


def _log(folder, task, method, decay):
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"task": task, "method": method, "seed": 42}))
    lines = []
    for step in range(1, 6):
        bal = {f"base_model.model.bert.encoder.layer.{i}.attention.self.{kind}.default": 0.7 * decay ** step
               for i in range(6) for kind in ("query", "value")}
        lines.append(json.dumps({"step": step, "balancedness": bal, "grad_gap": {}}))
    (folder / "balancedness.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_fig3_from_logs(tmp_path):
    logs = [_log(tmp_path / t / m, t, m, d) for t in ("rte", "sst5", "mnli") for m, d in (("lora", 1.0), ("sam", 0.9))]
    runs = load_logs(logs)
    assert sorted(runs[0]["layers"]) == list(range(6)) and runs[0]["layers"][0][0] == 1.4
    paths = make_fig3(tmp_path / "fig", logs=logs)
    assert {p.name for p in paths} == {"fig3.png", "fig3.json", "fig3.csv"}
    data = json.loads((tmp_path / "fig" / "fig3.json").read_text())
    assert data["panels"] == [{"task": "rte", "layer": 0}, {"task": "sst5", "layer": 3}, {"task": "mnli", "layer": 5}]
    assert len((tmp_path / "fig" / "fig3.csv").read_text().splitlines()) == 1 + 6 * 5
