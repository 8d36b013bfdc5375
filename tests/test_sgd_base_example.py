"""``examples/sgd_base.py`` (the flatness spec's §5 item 5 on MiniLM): bad options exit 2 before any run, and a tiny
run writes its JSON, CSV and PNG with a row per method and rate, and ``--replot`` redraws them from the JSON."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys

import pytest

from data_fixtures import data_root_or_skip
from finetune_fixtures import REPO


def _example():
    spec = importlib.util.spec_from_file_location("sgd_base_example", REPO / "examples" / "sgd_base.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "args, needle",
    [(["--methods", "nope"], "['nope']"), (["--k", "1"], "k 1"), (["--lr", "0"], "lr 0.0")],
)
def test_bad_options_exit_2_naming_them(tmp_path, capsys, args, needle):
    with pytest.raises(SystemExit) as exit_info:
        _example().main([*args, "--out-dir", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_tiny_run_writes_json_csv_and_png(tmp_path):
    out, example = tmp_path / "out", _example()
    example.main(
        ["--steps", "2", "--k", "2", "--methods", "flat-lora", "--precision", "fp32", "--out-dir", str(out)]
        + ["--data-root", str(data_root_or_skip())]
    )
    data = json.loads((out / "sgd_base.json").read_text())
    assert [(r["method"], r["lr"], r["steps"]) for r in data["summary"]] == [
        ("lora", 1.0, 2),
        ("lora", 0.5, 4),
        ("flat-lora", 1.0, 2),
        ("flat-lora", 0.5, 4),
    ]
    assert len(data["per_layer"]["flat-lora"]["1.0"]) == 12  # MiniLM: 6 layers × (query, value)
    assert all(r["D_median"] == 0 for r in data["summary"] if r["method"] == "lora")
    assert data["summary"][2]["D_median"] > 0  # the noise moved M_l away from LoRA-SGD's
    rows = list(csv.DictReader((out / "sgd_base.csv").open()))
    assert [r["method"] for r in rows] == ["lora", "lora", "flat-lora", "flat-lora"]
    assert (out / "sgd_base.png").stat().st_size > 10_000
    before = (out / "sgd_base.csv").read_text()
    (out / "sgd_base.csv").unlink()
    example.main(["--replot", "--out-dir", str(out)])  # the outputs again from the JSON, no training
    assert (out / "sgd_base.csv").read_text() == before
