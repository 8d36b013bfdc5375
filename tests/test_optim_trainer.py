"""SAMTrainer / BARTrainer / BalancednessCallback on real MiniLM runs of the HF Trainer."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import Trainer, TrainerCallback

from balancedness.optim import (
    SAM,
    BalancednessCallback,
    BARTrainer,
    SAMTrainer,
    bar_optimizer_class,
    create_bar_optimizer,
    lora_balancedness,
    lora_pairs,
    sam_step_accumulated,
    sam_step_msharpness,
)
from finetune_fixtures import Sequential, batch_loss, minilm_lora, sst2_dataset, trainable, training_args


class SeqSAMTrainer(Sequential, SAMTrainer):
    pass


@pytest.fixture(scope="module")
def base_model():
    return minilm_lora(seed=5)


def _manual(model, batches, *, msharpness, lr=1e-3, rho=0.05):
    sam = SAM([p for p in model.parameters() if p.requires_grad], torch.optim.AdamW, rho=rho, lr=lr, weight_decay=0.0)
    step = sam_step_msharpness if msharpness else sam_step_accumulated
    step(sam, lambda b: batch_loss(model, b), batches)
    return trainable(model)


def _collate(rows):
    return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}


@pytest.mark.parametrize("msharpness", [False, True])
def test_samtrainer_matches_sam_with_accumulation(tmp_path, base_model, msharpness):
    data = sst2_dataset(4)
    model = copy.deepcopy(base_model)
    args = training_args(tmp_path, per_device_train_batch_size=2, gradient_accumulation_steps=2)
    SeqSAMTrainer(model=model, args=args, train_dataset=data, rho=0.05, msharpness=msharpness).train()
    expected = _manual(copy.deepcopy(base_model), [_collate(data[:2]), _collate(data[2:])], msharpness=msharpness)
    for name, value in trainable(model).items():
        torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-6, msg=name)
    # exact accumulation ≈ one batch of 4 (fp32 rounding, amplified by Adam's g/√v on tiny gradients; the
    # float64 check is in test_optim_sam); m-sharpness (m = 2) is a different update
    whole = _manual(copy.deepcopy(base_model), [_collate(data)], msharpness=False)
    gap = max((expected[n] - whole[n]).abs().max().item() for n in whole)
    assert (gap < 1e-5) if not msharpness else (gap > 5e-5), gap


def test_bartrainer_equals_explicit_bar_optimizer(tmp_path, base_model):
    data = sst2_dataset(4)
    one, two = copy.deepcopy(base_model), copy.deepcopy(base_model)
    trainer = BARTrainer(
        model=one,
        args=training_args(tmp_path, max_steps=2),
        train_dataset=data,
        bar_mu=4.0,
        bar_variant="nbar",
        bar_schedule="linear",
    )
    trainer.train()
    opt = trainer.optimizer.optimizer
    assert type(opt).__name__ == "BARAdamW"
    assert opt.bar_total_steps == 2
    assert opt.bar_step_count == 2
    bar = create_bar_optimizer(
        two, torch.optim.AdamW, lr=1e-3, mu=4.0, schedule="linear", total_steps=2, weight_decay=0.0
    )
    Trainer(model=two, args=training_args(tmp_path, max_steps=2), train_dataset=data, optimizers=(bar, None)).train()
    for (n, p), q in zip(trainable(one).items(), trainable(two).values(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-7, msg=n)
    assert (
        max((p - q).abs().max() for p, q in zip(trainable(one).values(), trainable(base_model).values(), strict=True))
        > 1e-4
    )


def test_balancedness_callback_writes_jsonl(tmp_path, base_model):
    model = copy.deepcopy(base_model)
    path = tmp_path / "bal.jsonl"
    initial = lora_balancedness(model)
    SAMTrainer(
        model=model,
        args=training_args(tmp_path, max_steps=3),
        train_dataset=sst2_dataset(12),
        rho=0.05,
        callbacks=[BalancednessCallback(every=1, path=path)],
    ).train()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert records[0]["balancedness"] == pytest.approx(initial, rel=1e-6)
    assert set(records[0]["grad_gap"]) == set(initial)
    assert any(v != 0 for v in records[0]["grad_gap"].values())
    assert records[2]["balancedness"] != records[0]["balancedness"]


def test_bartrainer_builds_the_trainers_own_optimizer(tmp_path, base_model):
    """BAR over args.optim with the Trainer's decay/no-decay groups, lr from args and T from the step count."""
    args = training_args(tmp_path, weight_decay=0.1, learning_rate=3e-4, adam_beta2=0.99)
    trainer = BARTrainer(model=base_model, args=args, bar_mu=2.0, bar_variant="obar", bar_schedule="cosine")
    trainer.create_optimizer_and_scheduler(num_training_steps=7)
    opt = trainer.optimizer
    assert type(opt).__name__ == "BARAdamW"
    assert opt.bar_total_steps == 7
    assert opt.bar_variant == "obar"
    decay = set(trainer.get_decay_parameter_names(base_model))
    names = {id(p): n for n, p in base_model.named_parameters()}
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    assert all(names[id(p)] in decay for p in opt.param_groups[0]["params"])
    assert not any(names[id(p)] in decay for p in opt.param_groups[1]["params"])
    assert any(".bias" in names[id(p)] for p in opt.param_groups[1]["params"])
    assert all(g["lr"] == 3e-4 and g["betas"] == (0.9, 0.99) for g in opt.param_groups)
    with pytest.raises(ValueError, match="total_steps=7 but the Trainer schedules 8"):
        trainer.create_scheduler(num_training_steps=8)


def test_trainer_errors(tmp_path, base_model):
    with pytest.raises(ValueError, match="-1"):
        SAMTrainer(model=base_model, args=training_args(tmp_path), rho=-1.0)
    with pytest.raises(ValueError, match="msharpness must be True or False"):
        SAMTrainer(model=base_model, args=training_args(tmp_path), msharpness=1)
    with pytest.raises(ValueError, match="bar_variant must be one of nbar, obar, got 'qbar'"):
        BARTrainer(model=base_model, args=training_args(tmp_path), bar_mu=1.0, bar_variant="qbar")
    with pytest.raises(ValueError, match="bar_mu must be a finite number >= 0, got -2"):
        BARTrainer(model=base_model, args=training_args(tmp_path), bar_mu=-2.0)
    with pytest.raises(ValueError, match="bar_mu must be a finite number >= 0, got inf"):
        BARTrainer(model=base_model, args=training_args(tmp_path), bar_mu=float("inf"))
    with pytest.raises(ValueError, match="bar_schedule must be one of constant, linear, cosine"):
        BARTrainer(model=base_model, args=training_args(tmp_path), bar_mu=1.0, bar_schedule="step")
    with pytest.raises(TypeError, match="not a BAR optimizer"):
        plain = torch.optim.SGD(base_model.parameters(), lr=0.1)
        BARTrainer(model=base_model, args=training_args(tmp_path), bar_mu=1.0, optimizers=(plain, None))
    with pytest.raises(RuntimeError, match="number of training steps"):
        BARTrainer(model=base_model, args=training_args(tmp_path), bar_mu=1.0, bar_schedule="linear").create_optimizer()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sam", "bar"])
def test_checkpoint_resume_is_bit_identical(tmp_path, kind):
    data = sst2_dataset(16)

    class StopAt2(TrainerCallback):  # interrupt a 4-step run (same schedule T) right after checkpoint-2
        def on_step_end(self, args, state, control, **kwargs):
            control.should_training_stop = state.global_step >= 2

    def trainer(out, max_steps=4, callbacks=()):
        model = minilm_lora(seed=6, dropout=0.1)  # dropout on: the RNG state must be restored too
        args = training_args(
            out,
            max_steps=max_steps,
            save_strategy="steps",
            save_steps=2,
            per_device_train_batch_size=2,
            gradient_accumulation_steps=2,
        )
        if kind == "sam":
            return SAMTrainer(model=model, args=args, train_dataset=data, rho=0.05, callbacks=list(callbacks))
        return BARTrainer(
            model=model, args=args, train_dataset=data, bar_mu=5.0, bar_schedule="cosine", callbacks=list(callbacks)
        )

    full = trainer(tmp_path / "full")
    full.train()
    trainer(tmp_path / "cut", callbacks=[StopAt2()]).train()
    resumed = trainer(tmp_path / "cut")
    resumed.train(resume_from_checkpoint=str(tmp_path / "cut" / "checkpoint-2"))
    if kind == "bar":
        assert resumed.optimizer.optimizer.bar_step_count == 4
    for (n, p), q in zip(trainable(full.model).items(), trainable(resumed.model).values(), strict=True):
        assert torch.equal(p, q), n


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trainer_runs(tmp_path, base_model, precision):
    model = copy.deepcopy(base_model)
    trainer = SAMTrainer(
        model=model,
        args=training_args(tmp_path, max_steps=2, **{precision: True}),
        train_dataset=sst2_dataset(8),
        rho=0.05,
    )
    trainer.train()
    if precision == "fp16":  # documented: on CPU, accelerate silently drops fp16 (no autocast, no GradScaler)
        assert trainer.accelerator.scaler is None
        assert not trainer.accelerator.native_amp
    moved = [
        not torch.equal(p, q) for p, q in zip(trainable(model).values(), trainable(base_model).values(), strict=True)
    ]
    assert any(moved)
    assert all(torch.isfinite(p).all() for p in trainable(model).values())


def test_stock_trainer_takes_a_bar_class_through_its_own_hook(tmp_path, base_model):
    """optimizer_cls_and_kwargs=(bar_optimizer_class(AdamW), {...}): the Trainer builds BAR from its own decay
    groups, and trains to the parameters BARTrainer reaches from the same TrainingArguments."""
    data = sst2_dataset(8)
    args = dict(max_steps=2, weight_decay=0.1)
    one, two = copy.deepcopy(base_model), copy.deepcopy(base_model)
    hook = (
        bar_optimizer_class(torch.optim.AdamW),
        {"pairs": lora_pairs(one), "mu": 4.0, "lr": 1e-3, "schedule": "linear", "total_steps": 2},
    )
    stock = Trainer(
        model=one, args=training_args(tmp_path / "stock", **args), train_dataset=data, optimizer_cls_and_kwargs=hook
    )
    stock.train()
    assert [g["weight_decay"] for g in stock.optimizer.param_groups] == [0.1, 0.0]
    assert stock.optimizer.optimizer.bar_step_count == 2
    BARTrainer(
        model=two, args=training_args(tmp_path / "bar", **args), train_dataset=data, bar_mu=4.0, bar_schedule="linear"
    ).train()
    for (n, p), q in zip(trainable(one).items(), trainable(two).values(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-7, msg=n)
    with pytest.raises(TypeError, match=r"needs pairs=lora_pairs\(model\) and mu"):
        Trainer(
            model=one,
            args=training_args(tmp_path / "bad"),
            train_dataset=data,
            optimizer_cls_and_kwargs=(bar_optimizer_class(torch.optim.AdamW), {"mu": 1.0}),
        ).train()


def test_bartrainer_takes_t_from_epochs(tmp_path, base_model):
    args = training_args(tmp_path, max_steps=-1, num_train_epochs=2)
    trainer = BARTrainer(
        model=copy.deepcopy(base_model), args=args, train_dataset=sst2_dataset(8), bar_mu=1.0, bar_schedule="cosine"
    )
    trainer.train()
    bar = trainer.optimizer.optimizer
    assert bar.bar_total_steps == trainer.state.max_steps == 4
    assert bar.bar_step_count == 4


def test_sam_with_the_stock_trainer_names_samtrainer(tmp_path, base_model):
    model = copy.deepcopy(base_model)
    sam = SAM([p for p in model.parameters() if p.requires_grad], torch.optim.AdamW, rho=0.05, lr=1e-3)
    before = trainable(model)
    with pytest.raises(ValueError, match="use balancedness.optim.SAMTrainer"):
        args = training_args(tmp_path)
        Trainer(model=model, args=args, train_dataset=sst2_dataset(4), optimizers=(sam, None)).train()
    assert all(torch.equal(p, before[n]) for n, p in trainable(model).items())
    with pytest.raises(TypeError, match="not a SAM optimizer"):
        SAMTrainer(model=model, args=training_args(tmp_path), optimizers=(sam, None))
