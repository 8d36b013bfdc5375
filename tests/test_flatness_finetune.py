"""``finetune --method flat-lora|bi-lora`` and a tiny ``sweep`` of LoRA, Flat-LoRA and Bi-LoRA: real runs of the
application on its default model and data, as tests/test_methods.py does for ASAM."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from balancedness.cli import app
from data_fixtures import data_root_or_skip

runner = CliRunner()
TINY = ["--steps", "2", "--batch-size", "4", "--shots", "2", "--max-eval", "16", "--log-every", "1", "--seed", "13"]


def _finetune(out, *args):
    result = runner.invoke(
        app, ["finetune", "--task", "sst2", "--data-root", str(data_root_or_skip()), *TINY, *args, "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    return json.loads((out / "metrics.json").read_text())


def _adapter(run):
    from safetensors.torch import load_file

    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


@pytest.mark.slow
def test_flat_lora_and_bi_lora_run_through_finetune(tmp_path):
    """Each completes, records its hyper-parameters, trains differently from LoRA, and saves LoRA's keys only."""
    import torch

    lora = _finetune(tmp_path / "lora", "--method", "lora")
    flat = _finetune(
        tmp_path / "flat", "--method", "flat-lora", "--hparam", "sigma=0.5", "--hparam", "noise_schedule=constant"
    )
    bi = _finetune(tmp_path / "bi", "--method", "bi-lora", "--rho", "0.1", "--hparam", "rank2=2")
    assert flat["status"] == bi["status"] == lora["status"] == "complete"
    assert flat["config"]["hparams"] == {"sigma": 0.5, "noise_schedule": "constant"}
    assert bi["config"]["rho"] == 0.1
    assert bi["config"]["hparams"]["rank2"] == 2
    ref = _adapter(tmp_path / "lora")
    for name in ("flat", "bi"):
        adapter = _adapter(tmp_path / name)
        assert sorted(adapter) == sorted(ref)  # Bi-LoRA's auxiliary is not in the user's adapter
        assert not all(torch.equal(adapter[k], ref[k]) for k in ref), name  # the binding's kwargs reach the Trainer


def test_bad_hparams_of_the_new_methods_exit_2(tmp_path):
    for args, needle in (
        (["--method", "flat-lora", "--hparam", "noise_schedule=linear"], "noise_schedule"),
        (["--method", "bi-lora", "--hparam", "rank2=0"], "rank2"),
        (["--method", "bi-lora", "--hparam", "kappa=0"], "kappa"),
    ):
        result = runner.invoke(app, ["finetune", "--task", "sst2", *args, "--steps", "1", "--out", str(tmp_path / "o")])
        assert result.exit_code == 2, result.output
        assert needle in result.output, result.output
        assert "Traceback" not in result.output


@pytest.mark.slow
def test_a_tiny_sweep_of_lora_flat_lora_and_bi_lora(tmp_path):
    out = tmp_path / "sweep"
    result = runner.invoke(
        app,
        [
            "sweep",
            "--tasks",
            "sst2",
            "--methods",
            "lora,flat-lora,bi-lora",
            "--seeds",
            "13",
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
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    table = (out / "table.md").read_text()
    assert "| Flat-LoRA |" in table
    assert "| Bi-LoRA |" in table
    assert "| LoRA |" in table
    assert {p.parent.name for p in out.glob("sst2/*/seed13-*")} == {"lora", "flat-lora", "bi-lora"}
