"""Checkpoints of a run whose Trainer trains a head module around the peft model (SmolLM2 label words: the
``ChoiceScorer``): they hold the adapter, as a peft model's do, and a resume from one is exact.

Before ``checkpoints.recording_trainer`` saved such a module through its peft model, the Trainer wrote its whole
state dict, which fails on SmolLM2's tied input and output embeddings: every ``--save-every`` and every Ctrl-C
checkpoint of a label-word run ended the run failed (the flatness sweep's runs did, on Ctrl-C)."""

from __future__ import annotations

import json

import pytest

from data_fixtures import data_root_or_skip  # first: sets HF_HUB_OFFLINE before transformers loads

# isort: split
import torch

from conftest import invoke
from prewarmed import run_fault


def _args(out) -> list[str]:
    return ["--model", "smollm2", "--task", "sst2", "--data-root", str(data_root_or_skip()), "--shots", "2",
            "--steps", "4", "--batch-size", "2", "--max-eval", "4", "--dropout", "0", "--method", "sam",
            "--out", str(out)]  # fmt: skip


@pytest.mark.slow
def test_a_label_word_run_checkpoints_its_adapter_on_ctrl_c_and_resumes_exactly(tmp_path):
    from safetensors.torch import load_file

    reference = invoke(["finetune", *_args(tmp_path / "reference")])
    assert reference.returncode == 0, reference.stdout[-2000:] + reference.stderr[-3000:]
    out = tmp_path / "run"
    first = run_fault("sigint", 2, _args(out))
    assert first.returncode == 130, first.stderr[-3000:]
    assert json.loads((out / "metrics.json").read_text())["status"] == "interrupted"
    checkpoint = out / "checkpoints" / "checkpoint-2"
    assert (checkpoint / "COMPLETE").is_file()
    assert (checkpoint / "adapter_model.safetensors").is_file()
    assert not (checkpoint / "model.safetensors").exists(), "the checkpoint holds the frozen base weights"
    resumed = invoke(["finetune", *_args(out), "--resume"])
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    final = load_file(tmp_path / "reference" / "adapter" / "adapter_model.safetensors")
    weights = load_file(out / "adapter" / "adapter_model.safetensors")
    assert weights.keys() == final.keys()
    assert all(torch.equal(weights[k], final[k]) for k in final), "the resumed run ends elsewhere"
