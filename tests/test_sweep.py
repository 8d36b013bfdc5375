"""`balancedness sweep`: the grid, tables, resume; and the table maths on synthetic metrics."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from balancedness.cli import app
from balancedness.finetune.record import RunRecord
from balancedness.finetune.report import MixedSettingsError, csv_text, markdown_tables, settings_text, summarize
from conftest import built_once
from data_fixtures import data_root_or_skip


def _record(task, method, seed, acc, sps):
    return RunRecord.from_json(
        {
            "task": task,
            "method": method,
            "model": "minilm",
            "seed": seed,
            "metric": "accuracy",
            "steps": 100,
            "config": {},
            "fingerprint_id": "0" * 16,
            "accuracy": acc,
            "seconds_per_step": sps,
            "majority": 0.5,
            "status": "complete",
        }
    )


def test_tables_mean_std_average_and_no_runtime_ratio():
    runs = [_record("sst2", "lora", s, a, 0.1) for s, a in ((1, 0.6), (2, 0.7))]
    runs += [_record("sst2", "sam", s, a, 0.2) for s, a in ((1, 0.8), (2, 0.8))]
    runs += [_record("rte", m, 1, 0.5, t) for m, t in (("lora", 0.1), ("sam", 0.3))]
    cells = summarize(runs)
    md = markdown_tables(cells, methods=["lora", "sam"])
    assert "| LoRA | 65.0±7.1 | 50.0±0.0 | 57.5 |" in md
    assert "| LoRA-SAM | 80.0±0.0 | 50.0±0.0 | 65.0 |" in md
    assert "| majority class | 50.0 | 50.0 | 50.0 |" in md
    assert "x |" not in md
    assert "benchmarks/overhead.py" in md  # separate runs' timings are never compared
    assert "sst2,sam,accuracy,2,80.0000,0.0000,50.0000" in csv_text(cells)


def test_sweep_rejects_bad_grid(tmp_path):
    result = CliRunner().invoke(app, ["sweep", "--tasks", "sst2,nope", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "nope" in result.output


@pytest.mark.slow
def test_sweep_tiny_grid_writes_tables_and_resumes(tmp_path, monkeypatch):
    def sweep_args(methods, steps):
        return [
            "sweep",
            "--tasks",
            "sst2,rte",
            "--methods",
            methods,
            "--seeds",
            "42",
            "--steps",
            steps,
            "--batch-size",
            "4",
            "--shots",
            "2",
            "--max-eval",
            "16",
            "--data-root",
            str(data_root_or_skip()),
            "--out",
            str(tmp_path),
        ]

    args = sweep_args("lora,nbar", "2")
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    table = (tmp_path / "table.md").read_text()
    assert "| method | SST-2 | RTE | avg |" in table
    assert "LoRA-nBAR" in table
    assert len((tmp_path / "table.csv").read_text().splitlines()) == 5
    assert "nbar,sst2,1," in (tmp_path / "paired.csv").read_text()
    assert (tmp_path / "paired.png").stat().st_size
    [run] = (tmp_path / "rte" / "nbar").glob("seed42-*")
    assert json.loads((run / "metrics.json").read_text())["status"] == "complete"
    assert "Settings of every run:" in table
    assert "steps 2" in table

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
    assert "steps 3" in new_table
    assert "steps 2" not in new_table
    assert "LoRA-nBAR" not in new_table


def test_tables_refuse_to_mix_settings():
    def run(method, seed, steps, **extra):
        return _record("sst2", method, seed, 0.6, 0.1).replace(config={"steps": steps, "lr": 1e-3, **extra})

    summarize([run("lora", 1, 100), run("sam", 2, 100, rho=0.05)])  # one protocol: fine
    with pytest.raises(MixedSettingsError, match=r"column sst2: steps: 100 .* vs 200"):
        summarize([run("lora", 1, 100), run("lora", 2, 200)])
    with pytest.raises(MixedSettingsError, match=r"cell sst2 × sam: rho"):
        summarize([run("sam", 1, 100, rho=0.05), run("sam", 2, 100, rho=0.1)])
    assert "rho 0.05" in settings_text([run("sam", 1, 100, rho=0.05)])


def test_search_spaces_and_bad_axes():
    from balancedness.finetune.search import PRESETS, make_space

    paper = PRESETS["paper"]
    assert len(paper.points("lora")) == 3
    assert len(paper.points("sam")) == 9
    assert len(paper.points("nbar")) == 18
    cpu = PRESETS["cpu"]
    assert {len(cpu.points(m)) for m in ("lora", "sam", "nbar", "obar")} == {4}  # the same grid size for all
    space = make_space("fixed", ["all:lr=1e-3,2e-3", "sam:rho=0.05,0.1"], ["lora", "sam"])
    assert space.points("lora") == [{"lr": 1e-3}, {"lr": 2e-3}]
    assert len(space.points("sam")) == 4
    for bad, needle in (
        ("lora:rho=0.1", "does not read rho"),
        ("sam:beta=1", "cannot be searched"),
        ("sam=0.1", "METHOD:OPTION"),
        ("nbar:mu=1", "not among"),
        ("sam:rho=x", "floats"),
    ):
        with pytest.raises(ValueError, match=needle):
            make_space("fixed", [bad], ["lora", "sam"])
    result = CliRunner().invoke(app, ["sweep", "--space", "huge", "--out", "x"])
    assert result.exit_code == 2
    assert "huge" in result.output


def test_paired_statistics():
    from balancedness.finetune.stats import bootstrap_interval, paired, sign_test

    assert sign_test(5, 0) == pytest.approx(2 / 32)
    assert sign_test(3, 3) == 1.0
    assert sign_test(0, 0) == 1.0
    assert sign_test(9, 1) == pytest.approx(2 * (1 + 10) / 1024)
    st = paired([1.0, 2.0, 0.0, -1.0, 3.0])
    assert (st.wins, st.ties, st.losses, st.n) == (3, 1, 1, 5)
    assert st.mean == pytest.approx(1.0)
    assert st.low < 1.0 < st.high
    assert (st.low, st.high) == bootstrap_interval([1.0, 2.0, 0.0, -1.0, 3.0])
    assert paired([2.0, 2.0]).low == paired([2.0, 2.0]).high == 2.0
    with pytest.raises(ValueError, match="share no seed"):
        paired([])


_LRS, _SECOND = [1e-3, 4e-3], {"sam": ("rho", [0.05, 0.2]), "nbar": ("mu", [1.0, 20.0])}


def _reduced_args(out: Path) -> list[str]:
    """The command line of the reduced sweep (``reduced_sweep``) into ``out``."""
    return [
        "sweep",
        "--tasks",
        "sst2",
        "--methods",
        "lora,sam,nbar",
        "--seeds",
        "13,21",
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--shots",
        "2",
        "--max-eval",
        "16",
        "--data-root",
        str(data_root_or_skip()),
        "--grid",
        "all:lr=1e-3,4e-3",
        "--grid",
        "sam:rho=0.05,0.2",
        "--grid",
        "nbar:mu=1,20",
        "--log-every",
        "1",
        "--out",
        str(out),
    ]


@pytest.fixture(scope="session")
def reduced_sweep(tmp_path_factory) -> Path:
    """Two values per axis, two steps, a small eval subset (lora, sam, nbar × seeds 13, 21 on SST-2): a finished
    sweep folder, built once for the tests below (conftest.built_once), which only read it."""

    def build(out: Path) -> None:
        result = CliRunner().invoke(app, _reduced_args(out))
        assert result.exit_code == 0, result.output

    return built_once(tmp_path_factory, "reduced-sweep", build)


def _grid_index(run) -> int:
    """The order of a run's configuration in the search space (lr-major): what breaks dev-accuracy ties."""
    option = _SECOND.get(run.method)
    return _LRS.index(run.config["lr"]) * 2 + (option[1].index(run.config[option[0]]) if option else 0)


def _chosen(runs, method: str) -> list:
    """Per seed (13, 21), the run of ``method`` with the best dev accuracy, ties to the first configuration."""
    return [
        max((r for r in runs if r.method == method and r.seed == seed), key=lambda r: (r.dev, -_grid_index(r)))
        for seed in (13, 21)
    ]


@pytest.mark.slow
def test_reduced_grid_runs_every_configuration_and_writes_the_tables(reduced_sweep):
    from balancedness.finetune.report import collect

    assert len(collect(reduced_sweep)) == 2 * (2 + 4 + 4)
    table = (reduced_sweep / "table.md").read_text()
    assert "Selected hyper-parameters" in table
    assert "selection on the dev split" in table
    paired_rows = (reduced_sweep / "paired.csv").read_text().splitlines()
    assert paired_rows[0].startswith("method,task,n,mean,ci_low,ci_high,wins,ties,losses,p_sign")
    assert {r.split(",")[0] for r in paired_rows[1:]} == {"sam", "nbar"}


@pytest.mark.slow
@pytest.mark.parametrize("method,label", [("lora", "LoRA"), ("sam", "LoRA-SAM"), ("nbar", "LoRA-nBAR")])
def test_reduced_grid_selects_on_dev(reduced_sweep, method, label):
    """The table's cell is the mean ± std of the dev-selected runs, and selected.csv names those runs."""
    import statistics

    from balancedness.finetune.report import collect

    chosen = _chosen(collect(reduced_sweep), method)
    values = [100 * r.value for r in chosen]
    cell = f"| {label} | {statistics.fmean(values):.1f}±{statistics.stdev(values):.1f} |"
    table = (reduced_sweep / "table.md").read_text()
    assert cell in table, (cell, table)
    selected = list(csv.DictReader((reduced_sweep / "selected.csv").open()))
    assert len(selected) == 3 * 2
    listed = {int(row["seed"]): row for row in selected if row["method"] == method}
    for seed, run in zip((13, 21), chosen, strict=True):
        assert listed[seed]["run"] == run.run  # relative to the sweep folder
        assert int(listed[seed]["candidates"]) == (2 if method == "lora" else 4)
        assert json.loads(listed[seed]["options"])["lr"] == run.config["lr"]


@pytest.mark.slow
def test_matched_pairs_compares_each_run_with_lora_at_its_seed_and_lr(reduced_sweep, tmp_path):
    """examples/matched_pairs.py: every SAM/nBAR run against the LoRA run of the same seed and learning rate."""
    import statistics
    import subprocess
    import sys

    from balancedness.finetune.report import collect

    script = Path(__file__).resolve().parents[1] / "examples" / "matched_pairs.py"
    p = subprocess.run(
        [sys.executable, str(script), str(reduced_sweep), "--csv", str(tmp_path / "matched.csv")],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr
    matched = {
        (r["method"], float(r["value"]), r["task"]): r for r in csv.DictReader((tmp_path / "matched.csv").open())
    }
    assert int(matched[("sam", 0.2, "sst2")]["n"]) == 4  # 2 seeds × 2 learning rates
    strong = matched[("nbar", 20.0, "sst2")]  # μ₀ = 20 shrinks |B_l| on every pair, whatever the accuracy does
    assert int(strong["b_lower"]) == int(strong["b_pairs"]) == 4
    assert float(strong["b_ratio"]) < 1.0
    runs = collect(reduced_sweep)
    lora = {(r.seed, r.config["lr"]): r for r in runs if r.method == "lora"}
    diffs = [
        100 * (r.value - lora[(r.seed, r.config["lr"])].value)
        for r in runs
        if r.method == "sam" and r.config["rho"] == 0.2
    ]
    assert float(matched[("sam", 0.2, "sst2")]["mean"]) == pytest.approx(statistics.fmean(diffs), abs=1e-4)


def _example(name: str):
    """A module of ``examples/`` (they are scripts, not a package)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_an_archive_of_the_complete_runs_resumes_the_sweep_on_another_machine(reduced_sweep, tmp_path):
    """examples/archive_runs.py: the complete runs' records without their adapters; the analysis reads the
    archive as it reads the sweep, and the same sweep into a copy of it trains nothing."""
    import shutil

    from balancedness.finetune.report import collect

    archived = _example("archive_runs").archive(reduced_sweep, tmp_path / "archive")
    assert len(archived) == 2 * (2 + 4 + 4)
    assert {p.name for p in (tmp_path / "archive").rglob("*") if p.is_file()} == {
        "run.json",
        "metrics.json",
        "balancedness.jsonl",
    }
    assert [r.to_json() | {"run": r.run} for r in collect(tmp_path / "archive")] == [
        r.to_json() | {"run": r.run} for r in collect(reduced_sweep)
    ]

    elsewhere = shutil.copytree(tmp_path / "archive", tmp_path / "elsewhere")
    records = {p: p.read_bytes() for p in elsewhere.rglob("metrics.json")}
    result = CliRunner().invoke(app, _reduced_args(elsewhere))
    assert result.exit_code == 0, result.output
    assert not list(elsewhere.rglob("adapter")), "a run already complete in the archive was trained again"
    assert {p: p.read_bytes() for p in elsewhere.rglob("metrics.json")} == records
    assert list(csv.DictReader((elsewhere / "selected.csv").open())) == list(
        csv.DictReader((reduced_sweep / "selected.csv").open())
    )


@pytest.mark.slow
def test_an_archive_leaves_out_runs_that_are_not_complete(reduced_sweep, tmp_path):
    """A failed or unfinished run is not archived: copied back, it would stand for a result it never reached."""
    import shutil

    runs = sorted(p.parent for p in reduced_sweep.rglob("metrics.json"))[:2]
    for run in runs:
        shutil.copytree(run, tmp_path / "sweep" / run.relative_to(reduced_sweep))
    failed = tmp_path / "sweep" / runs[1].relative_to(reduced_sweep) / "metrics.json"
    text = failed.read_text()
    assert '"status": "complete"' in text
    failed.write_text(text.replace('"status": "complete"', '"status": "failed"'))
    archived = _example("archive_runs").archive(tmp_path / "sweep", tmp_path / "archive")
    assert archived == [runs[0].relative_to(reduced_sweep)]
    for inside in (tmp_path / "sweep", tmp_path / "sweep" / "archive"):
        with pytest.raises(ValueError, match="inside the sweep folder"):
            _example("archive_runs").archive(tmp_path / "sweep", inside)


@pytest.mark.slow
def test_two_workers_share_one_study_without_duplicated_cells(tmp_path):
    import optuna

    from balancedness.finetune.study import storage_for

    args = [
        "sweep",
        "--tasks",
        "sst2",
        "--methods",
        "lora,nbar",
        "--seeds",
        "13,21",
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--shots",
        "2",
        "--max-eval",
        "8",
        "--data-root",
        str(data_root_or_skip()),
        "--grid",
        "all:lr=1e-3,2e-3",
        "--workers",
        "2",
        "--out",
        str(tmp_path),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    storage = storage_for(tmp_path, None)
    [summary] = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    trained = [t.params["cell"] for t in study.trials if t.user_attrs.get("trained")]
    cells = {t.params["cell"] for t in study.trials}
    assert len(cells) == 8
    assert sorted(trained) == sorted(cells)  # every cell trained exactly once
    assert len(list(tmp_path.glob("sst2/*/seed*-*"))) == 8


@pytest.mark.slow
def test_the_gpu_recipe_runs_at_a_tiny_scale(tmp_path):
    """The documented full-protocol command (docs/results.md), with only its scale options replaced."""
    import re
    import shlex
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "results.md").read_text()
    block = re.search(r"<!-- gpu-recipe -->\s*```bash\n(.*?)```", doc, re.S).group(1)
    args = shlex.split(block.replace("\\\n", " "))
    assert args[:2] == ["balancedness", "sweep"]
    assert "--space" in args
    assert args[args.index("--space") + 1] == "paper"
    scale = {
        "--model": "minilm",
        "--tasks": "sst2",
        "--methods": "lora,sam",
        "--seeds": "13",
        "--steps": "1",
        "--batch-size": "4",
        "--data-root": str(data_root_or_skip()),
        "--out": str(tmp_path),
    }
    for i, arg in enumerate(args):
        if arg in scale:
            args[i + 1] = scale[arg]
    result = CliRunner().invoke(app, [*args[1:], "--shots", "2", "--max-eval", "8"])
    assert result.exit_code == 0, result.output
    from balancedness.finetune.report import collect

    assert len(collect(tmp_path)) == 3 + 9  # Table 6's grid: 3 learning rates; × 3 radii for SAM
    assert "search space `paper`" in (tmp_path / "table.md").read_text()
