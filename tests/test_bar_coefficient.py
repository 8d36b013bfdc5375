"""BARTrainer's coefficient μ₀ is explicit: leaving ``bar_mu`` out is a TypeError that says why and what to try."""

from __future__ import annotations

import pytest
from transformers import TrainingArguments

from balancedness.optim import BARTrainer
from finetune_fixtures import minilm_lora


def test_bar_trainer_without_bar_mu_says_why_and_suggests_a_value(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], max_steps=1)
    with pytest.raises(TypeError) as info:
        BARTrainer(model=minilm_lora(), args=args)
    message = str(info.value)
    assert "bar_mu" in message, message
    assert "no default" in message, message
    assert "bar_mu=0.5" in message, message


def test_bar_trainer_with_bar_mu_is_built(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], max_steps=1)
    assert BARTrainer(model=minilm_lora(), args=args, bar_mu=0.5).bar_mu == 0.5
