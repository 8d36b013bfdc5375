"""``--base-optimizer adamw|sgd`` (``FinetuneConfig.base_optimizer``): parsed, validated (exit 2 before any work),
absent from the records and fingerprints of default runs, recorded and counted when set, and what every method
really steps with (torch.optim.SGD, no momentum) in 2-step runs of the application."""

from __future__ import annotations

import json
import re

import pytest
import torch
from typer.testing import CliRunner

from balancedness.cli import app
from balancedness.finetune.record import RunRecord
from balancedness.finetune.report import MixedSettingsError, check_settings
from balancedness.finetune.run import FinetuneConfig, check_config
from data_fixtures import data_root_or_skip

runner = CliRunner()
TINY = ["--steps", "2", "--batch-size", "4", "--shots", "2", "--max-eval", "8", "--log-every", "1", "--seed", "13"]


def _flat(text: str) -> str:
    return re.sub(r"[\s│]", "", text)  # rich wraps errors inside boxes


# ------------------------------------------------------------------------------------ config and fingerprint
def test_the_default_leaves_records_and_fingerprints_as_they_were():
    """Runs made before the option existed (AdamW) keep their record and fingerprint: the default is not in
    either, and saying it explicitly is the same run."""
    for name in ("lora", "sam", "nbar", "flat-lora"):
        default, explicit = FinetuneConfig(method=name), FinetuneConfig(method=name, base_optimizer="adamw")
        assert "base_optimizer" not in default.to_json()
        assert "base_optimizer" not in default.result_options()
        assert explicit.to_json() == default.to_json()
        assert explicit.result_options() == default.result_options()


def test_sgd_is_recorded_and_counted():
    config = FinetuneConfig(method="sam", base_optimizer="sgd")
    assert config.to_json()["base_optimizer"] == "sgd"
    assert config.result_options()["base_optimizer"] == "sgd"
    assert config.result_options() != FinetuneConfig(method="sam").result_options()


def test_a_report_refuses_to_mix_adamw_and_sgd_runs():
    def record(seed: int, config: dict) -> RunRecord:
        return RunRecord.from_json(
            {
                "task": "sst2",
                "method": "lora",
                "model": "minilm",
                "seed": seed,
                "metric": "accuracy",
                "steps": 2,
                "config": config,
                "fingerprint_id": "0" * 16,
                "accuracy": 0.5,
                "status": "complete",
            }
        )

    adamw, sgd = FinetuneConfig().to_json(), FinetuneConfig(base_optimizer="sgd").to_json()
    check_settings([record(1, adamw), record(2, adamw)])
    with pytest.raises(MixedSettingsError, match=r"column sst2: base_optimizer: None .* vs 'sgd'"):
        check_settings([record(1, adamw), record(2, sgd)])


@pytest.mark.parametrize("value", ["adam", "SGD", "", None])
def test_check_config_names_a_bad_base_optimizer(value):
    with pytest.raises(ValueError, match=r"base_optimizer must be one of adamw, sgd, got " + re.escape(repr(value))):
        check_config(FinetuneConfig(base_optimizer=value))


@pytest.mark.parametrize("command", ["finetune", "sweep"])
def test_a_bad_base_optimizer_exits_2_before_any_work(tmp_path, command):
    out = tmp_path / "o"
    result = runner.invoke(app, [command, "--base-optimizer", "adam", "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert _flat("--base-optimizer must be one of adamw, sgd, got 'adam'") in _flat(result.output)
    assert "Traceback" not in result.output
    assert not out.exists()


# ------------------------------------------------------------------------------------ real 2-step runs
def _optimizer_recorder():
    """A TrainerCallback keeping the (unwrapped) optimizer the Trainer trains with."""
    from transformers import TrainerCallback

    class OptimizerRecorder(TrainerCallback):
        optimizer = None

        def on_step_end(self, args, state, control, optimizer=None, **kw):
            while hasattr(optimizer, "optimizer"):  # accelerate's AcceleratedOptimizer
                optimizer = optimizer.optimizer
            self.optimizer = optimizer

    return OptimizerRecorder()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sam", "nbar", "flat-lora", "bi-lora"])
def test_every_trainer_steps_with_plain_sgd(tmp_path, name):
    """SAMTrainer, BARTrainer (which builds its own optimizer from ``args.optim``), FlatLoRATrainer and
    BiLoRATrainer (its ascent group included) all step with torch.optim.SGD, momentum 0, lr the config's."""
    from balancedness.finetune.run import run_finetune

    recorder = _optimizer_recorder()
    config = FinetuneConfig(
        task="sst2",
        data_root=str(data_root_or_skip()),
        method=name,
        base_optimizer="sgd",
        steps=2,
        batch_size=4,
        shots=2,
        max_eval=8,
        seed=13,
        lr=0.05,
        out=str(tmp_path / "run"),
        progress=False,
        extra_callbacks=[recorder],
    )
    record = run_finetune(config)
    optimizer = recorder.optimizer
    assert isinstance(optimizer, torch.optim.SGD), type(optimizer).__mro__
    assert not isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW)
    assert {g["momentum"] for g in optimizer.param_groups} == {0}
    assert {g["initial_lr"] for g in optimizer.param_groups} == {0.05}  # Bi-LoRA's ascent group too (κ = 1)
    if name == "nbar":
        assert type(optimizer).__name__ == "BARSGD" and optimizer.bar_step_count == 2
    if name == "bi-lora":
        assert [g["maximize"] for g in optimizer.param_groups][-1] is True
    assert record.config["base_optimizer"] == "sgd"


@pytest.mark.slow
def test_the_command_line_option_reaches_the_run(tmp_path):
    out = tmp_path / "run"
    args = ["finetune", "--task", "sst2", "--data-root", str(data_root_or_skip()), *TINY, "--out", str(out)]
    result = runner.invoke(app, [*args, "--base-optimizer", "sgd", "--lr", "0.05", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "metrics.json").read_text())["config"]["base_optimizer"] == "sgd"
    assert json.loads((out / "run.json").read_text())["fingerprint"]["options"]["base_optimizer"] == "sgd"
