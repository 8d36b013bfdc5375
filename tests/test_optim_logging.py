"""BalancednessCallback through the Trainer's own logging: log_history, trainer_state.json, a TensorBoard event
file read back, the JSON-lines file in output_dir, and exactness across a resume."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import Trainer, TrainerCallback

from balancedness.optim import BalancednessCallback, BARTrainer, SAMTrainer, lora_pairs
from balancedness.optim.callbacks import balancedness_logs
from finetune_fixtures import minilm_lora, trainable
from finetune_fixtures import sst2_dataset as _dataset
from finetune_fixtures import training_args as _args


@pytest.fixture(scope="module")
def base_model():
    return minilm_lora(seed=7)


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _logged(history):
    """{step: entry} of the log_history entries that carry balancedness."""
    entries = [e for e in history if any(k.startswith("balancedness/") for k in e)]
    steps = [e["step"] for e in entries]
    assert len(steps) == len(set(steps)), steps  # no step logged twice
    return {e["step"]: e for e in entries}


def test_balancedness_logs_flattens_a_record():
    record = {"step": 3, "balancedness": {"a.q.default": 0.5, "a.v.default": -2.0}, "grad_gap": {}}
    assert balancedness_logs(record) == {
        "balancedness/a.q.default": 0.5,
        "balancedness/a.v.default": -2.0,
        "balancedness/mean_abs": 1.25,
        "balancedness/max_abs": 2.0,
    }


def test_samtrainer_tensorboard_event_file_holds_per_layer_balancedness(tmp_path, base_model):
    out = tmp_path / "run"
    model = copy.deepcopy(base_model)
    trainer = SAMTrainer(
        model=model,
        args=_args(out, max_steps=3, report_to="tensorboard", logging_strategy="steps", logging_steps=1),
        train_dataset=_dataset(12),
        rho=0.05,
        callbacks=[BalancednessCallback(path=True)],
    )
    trainer.train()
    trainer.save_state()
    layers = [pair.name for pair in lora_pairs(model)]
    records = _records(out / "balancedness.jsonl")  # path=True: inside output_dir
    assert [r["step"] for r in records] == [1, 2, 3]  # every=None: the Trainer's logging_steps

    events = list(out.glob("runs/*/events.out.tfevents.*"))
    assert len(events) == 1, events
    tb = EventAccumulator(str(events[0]), size_guidance={"scalars": 0})
    tb.Reload()
    tags = set(tb.Tags()["scalars"])
    for quantity in ("balancedness", "grad_gap"):
        for layer in layers:
            scalars = tb.Scalars(f"train/{quantity}/{layer}")
            assert [s.step for s in scalars] == [1, 2, 3]
            assert [s.value for s in scalars] == pytest.approx([r[quantity][layer] for r in records], rel=1e-6)
        for summary in ("mean_abs", "max_abs"):
            assert f"train/{quantity}/{summary}" in tags
    max_abs = [s.value for s in tb.Scalars("train/balancedness/max_abs")]
    assert max_abs == pytest.approx([max(abs(v) for v in r["balancedness"].values()) for r in records], rel=1e-6)
    assert "train/loss" in tags  # the Trainer's own logs sit beside them

    for history in (trainer.state.log_history, json.loads((out / "trainer_state.json").read_text())["log_history"]):
        logged = _logged(history)
        assert sorted(logged) == [1, 2, 3]
        assert all(
            logged[r["step"]][f"balancedness/{layer}"] == r["balancedness"][layer] for r in records for layer in layers
        )

    # logging reads, never changes, the training computation
    plain = copy.deepcopy(base_model)
    SAMTrainer(model=plain, args=_args(tmp_path / "plain", max_steps=3), train_dataset=_dataset(12), rho=0.05).train()
    assert all(torch.equal(p, q) for p, q in zip(trainable(model).values(), trainable(plain).values(), strict=True))


def test_stock_trainer_links_by_argument_and_falls_back_to_log_history(tmp_path, base_model):
    args = dict(max_steps=4, logging_strategy="steps", logging_steps=1)
    linked = Trainer(model=copy.deepcopy(base_model), args=_args(tmp_path / "a", **args), train_dataset=_dataset(16))
    linked.add_callback(BalancednessCallback(every=2, trainer=linked))
    linked.train()
    assert sorted(_logged(linked.state.log_history)) == [2, 4]
    unlinked = Trainer(
        model=copy.deepcopy(base_model),
        args=_args(tmp_path / "b", **args),
        train_dataset=_dataset(16),
        callbacks=[BalancednessCallback(every=2)],
    )
    unlinked.train()
    assert _logged(unlinked.state.log_history).keys() == _logged(linked.state.log_history).keys()
    # logging_strategy="no" (the finetune application's setting): the file only
    path = tmp_path / "c" / "log.jsonl"
    quiet = BARTrainer(
        model=copy.deepcopy(base_model),
        args=_args(tmp_path / "c", max_steps=4),
        train_dataset=_dataset(16),
        bar_mu=1.0,
        callbacks=[BalancednessCallback(every=2, path=path)],
    )
    quiet.train()
    assert not _logged(quiet.state.log_history)
    assert [r["step"] for r in _records(path)] == [2, 4]


def test_callback_argument_errors():
    with pytest.raises(ValueError, match="every must be an integer >= 1, got 0"):
        BalancednessCallback(every=0)
    with pytest.raises(TypeError, match="path must be True"):
        BalancednessCallback(path=1)


@pytest.mark.slow
def test_resumed_run_logs_every_step_once(tmp_path):
    """Interrupted after checkpoint-2 of 4 and resumed: the file is byte-identical to the uninterrupted run's and
    log_history (hence trainer_state.json) holds steps 1..4 once each."""
    data = _dataset(16)

    class StopAt3(TrainerCallback):  # dies after step 3 (logged), one step past its last checkpoint
        def on_step_end(self, args, state, control, **kwargs):
            control.should_training_stop = state.global_step >= 3

    def trainer(out, callbacks=()):
        args = _args(out, max_steps=4, save_strategy="steps", save_steps=2, logging_strategy="steps", logging_steps=1)
        return BARTrainer(
            model=minilm_lora(seed=6),
            args=args,
            train_dataset=data,
            bar_mu=5.0,
            bar_schedule="cosine",
            callbacks=[BalancednessCallback(path=True), *callbacks],
        )

    full = trainer(tmp_path / "full")
    full.train()
    trainer(tmp_path / "cut", callbacks=[StopAt3()]).train()
    assert [r["step"] for r in _records(tmp_path / "cut" / "balancedness.jsonl")] == [1, 2, 3]
    resumed = trainer(tmp_path / "cut")
    resumed.train(resume_from_checkpoint=str(tmp_path / "cut" / "checkpoint-2"))
    assert (tmp_path / "cut" / "balancedness.jsonl").read_bytes() == (
        tmp_path / "full" / "balancedness.jsonl"
    ).read_bytes()
    assert sorted(_logged(resumed.state.log_history)) == [1, 2, 3, 4]
    assert _logged(resumed.state.log_history) == _logged(full.state.log_history)
