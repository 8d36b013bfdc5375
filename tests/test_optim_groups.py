"""create_bar_optimizer's weight-decay split (the Trainer's rule, written with torch alone) and T taken from the
LR scheduler the optimizer runs with."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    Trainer,
    TrainingArguments,
    get_constant_schedule,
    get_cosine_schedule_with_warmup,
    get_linear_schedule_with_warmup,
)

from balancedness.optim import create_bar_optimizer, decay_groups, scheduler_total_steps
from balancedness.optim.groups import decay_parameter_names
from finetune_fixtures import ToyLoRA, minilm_lora


def _trainer_rule(model):
    trainer = Trainer.__new__(Trainer)  # get_decay_parameter_names needs no Trainer state
    return set(trainer.get_decay_parameter_names(model))


@pytest.fixture(scope="module")
def minilm():
    return minilm_lora(seed=0)


def _llama():
    from peft import LoraConfig, get_peft_model

    config = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    return get_peft_model(LlamaForCausalLM(config), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))


def test_decay_rule_is_the_trainers(minilm):
    for model in (minilm, _llama()):  # BERT: LayerNorm modules and biases; Llama: RMSNorm by name
        names = {n for n, _ in model.named_parameters()}
        assert decay_parameter_names(model) == _trainer_rule(model)
        assert names - decay_parameter_names(model)  # something is excluded ...
        assert any(".lora_A." in n for n in decay_parameter_names(model))  # ... but not the LoRA factors


def test_create_bar_optimizer_with_weight_decay_makes_the_trainers_groups(minilm, tmp_path):
    opt = create_bar_optimizer(minilm, torch.optim.AdamW, lr=1e-3, mu=1.0, weight_decay=0.1)
    args = TrainingArguments(output_dir=str(tmp_path), weight_decay=0.1, report_to=[], use_cpu=True)
    trainer = Trainer(model=minilm, args=args)
    trainer.create_optimizer()
    ids = lambda groups: [({id(p) for p in g["params"]}, g["weight_decay"]) for g in groups]
    assert ids(opt.param_groups) == ids(trainer.optimizer.param_groups)
    no_decay = {n for n, p in minilm.named_parameters() if id(p) in ids(opt.param_groups)[1][0]}
    assert no_decay
    assert all("bias" in n for n in no_decay)  # the classifier's bias
    with pytest.raises(ValueError, match="weight_decay must be a finite number >= 0, got -1"):
        create_bar_optimizer(minilm, torch.optim.AdamW, lr=1e-3, mu=1.0, weight_decay=-1)
    groups = decay_groups(minilm, 0.3)
    assert [g["weight_decay"] for g in groups] == [0.3, 0.0]


def _opt():
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)


def test_scheduler_total_steps():
    assert scheduler_total_steps(get_linear_schedule_with_warmup(_opt(), 3, 40)) == 40
    assert scheduler_total_steps(get_cosine_schedule_with_warmup(_opt(), 0, 25)) == 25
    assert scheduler_total_steps(torch.optim.lr_scheduler.CosineAnnealingLR(_opt(), T_max=12)) == 12
    assert scheduler_total_steps(torch.optim.lr_scheduler.OneCycleLR(_opt(), max_lr=1.0, total_steps=9)) == 9
    assert scheduler_total_steps(torch.optim.lr_scheduler.LinearLR(_opt(), total_iters=7)) == 7
    with pytest.raises(TypeError, match="cannot read the number of training steps off LambdaLR"):
        scheduler_total_steps(get_constant_schedule(_opt()))


def test_bar_takes_t_from_its_lr_scheduler():
    x0 = torch.tensor([[0.2], [-0.1], [0.3]], dtype=torch.float64)
    model = ToyLoRA(x0, -3 * x0)
    opt = create_bar_optimizer(model, torch.optim.SGD, lr=0.1, mu=1.0, schedule="linear", total_steps="scheduler")
    model.product().sum().backward()
    with pytest.raises(RuntimeError, match="bar_sync_total_steps"):
        opt.step()
    assert opt.bar_step_count == 0
    sched = get_linear_schedule_with_warmup(opt, num_warmup_steps=0, num_training_steps=8)
    assert opt.bar_sync_total_steps(sched) == 8
    assert opt.bar_total_steps == 8
    opt.step()
    assert opt.bar_step_count == 1
    assert opt.bar_mu == pytest.approx(1.0 * (1 - 1 / 8))
    with pytest.raises(ValueError, match="total_steps=8 but the LR scheduler over 5 steps"):
        opt.bar_sync_total_steps(get_linear_schedule_with_warmup(opt, 0, 5))
