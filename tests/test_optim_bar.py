"""BAR (Algs. 2/3) against hand-computed steps, on the toy and on MiniLM."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from transformers import get_linear_schedule_with_warmup

from balancedness.optim import BARScheduler, bar_optimizer_class, create_bar_optimizer, lora_pairs
from balancedness.optim.schedules import scheduled_mu
from balancedness.schedules import mu_at
from finetune_fixtures import ToyLoRA, batch_loss, minilm_lora, sst2_batch, trainable

X0 = torch.tensor([[0.2], [-0.1], [0.3]], dtype=torch.float64)
C = torch.diag(torch.tensor([0.5, 0.0, 0.0], dtype=torch.float64))


def _toy(x0=X0, y0=-3 * X0, head=False):
    return ToyLoRA(x0.clone(), y0.clone(), head=head)


def _grads(model):
    model.zero_grad()
    (model.product() - C).square().sum().backward()
    return model.toy.lora_A["default"].weight.grad.T.clone(), model.toy.lora_B["default"].weight.grad.clone()


@pytest.mark.parametrize("variant", ["nbar", "obar"])
@pytest.mark.parametrize("y_scale", [-3.0, -0.2])  # both branches of each decision
def test_sgd_base_reproduces_algorithm(variant, y_scale):
    lr, mu = 0.01, 0.5
    model = _toy(y0=y_scale * X0)
    opt = create_bar_optimizer(model, torch.optim.SGD, lr=lr, mu=mu, variant=variant)
    for _ in range(3):
        x, y = model.x.detach().clone(), model.y.detach().clone()
        gx, gy = _grads(model)
        if variant == "nbar":
            s = 1.0 if gx.norm() >= gy.norm() else -1.0
        else:
            s = -1.0 if x.norm() >= y.norm() else 1.0
        opt.step()
        torch.testing.assert_close(model.x, (1 + s * mu * lr) * x - lr * gx, rtol=0, atol=1e-15)
        torch.testing.assert_close(model.y, (1 - s * mu * lr) * y - lr * gy, rtol=0, atol=1e-15)


def test_ties_follow_the_ge():
    x0 = torch.tensor([[1.0], [0.0], [0.0]], dtype=torch.float64)
    model = _toy(x0=x0, y0=x0.clone())  # ‖x‖ = ‖y‖, and g_x = G y, g_y = Gᵀx equal in norm (G symmetric)
    opt = create_bar_optimizer(model, torch.optim.SGD, lr=0.1, mu=1.0, variant="obar")
    gx, gy = _grads(model)
    opt.step()  # oBAR tie: shrink x
    torch.testing.assert_close(model.x, 0.9 * x0 - 0.1 * gx)
    model = _toy(x0=x0, y0=x0.clone())
    opt = create_bar_optimizer(model, torch.optim.SGD, lr=0.1, mu=1.0, variant="nbar")
    gx, gy = _grads(model)
    assert gx.norm() == gy.norm()
    opt.step()  # nBAR tie: grow x
    torch.testing.assert_close(model.x, 1.1 * x0 - 0.1 * gx)


def test_schedules():
    assert scheduled_mu(2.0, "constant", 7, None) == 2.0
    assert scheduled_mu(2.0, "linear", 25, 100) == pytest.approx(1.5)
    assert scheduled_mu(2.0, "cosine", 50, 100) == pytest.approx(1.0)
    assert scheduled_mu(2.0, "cosine", 0, 100) == 2.0
    assert scheduled_mu(2.0, "linear", 200, 100) == 0.0
    model = _toy()
    opt = create_bar_optimizer(model, torch.optim.SGD, lr=0.01, mu=1.0, schedule="cosine", total_steps=4)
    seen = []
    for _ in range(4):
        seen.append(opt.bar_mu)
        _grads(model)
        opt.step()
    assert seen == pytest.approx([0.5 * (1 + math.cos(math.pi * t / 4)) for t in range(4)])


def test_lr_scheduler_drives_eta_and_head_is_plain_sgd():
    model = _toy(head=True)
    opt = create_bar_optimizer(model, torch.optim.SGD, lr=0.1, mu=1.0, variant="obar")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5**t)
    _grads(model)
    opt.step()
    sched.step()
    x, head = model.x.detach().clone(), model.head.detach().clone()
    gx, _ = _grads(model)
    hg = model.head.grad.clone()
    s = -1.0 if model.x.norm() >= model.y.norm() else 1.0
    opt.step()
    torch.testing.assert_close(model.x, (1 + s * 0.05) * x - 0.05 * gx)  # η_t = 0.05 after one decay
    torch.testing.assert_close(model.head, head - 0.05 * hg, rtol=0, atol=0)


def test_pairs_without_grads_are_skipped():
    model = _toy()
    opt = create_bar_optimizer(model, torch.optim.SGD, lr=0.1, mu=1.0, variant="obar")
    before = trainable(model)
    opt.step()  # no backward: no grads anywhere
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n])


def test_errors():
    model = _toy()
    kw = dict(lr=0.1, mu=1.0)
    with pytest.raises(ValueError, match="-1"):
        create_bar_optimizer(model, torch.optim.SGD, lr=0.1, mu=-1.0)
    with pytest.raises(ValueError, match="lr"):
        create_bar_optimizer(model, torch.optim.SGD, lr=0.0, mu=1.0)
    with pytest.raises(ValueError, match="'xbar'"):
        create_bar_optimizer(model, torch.optim.SGD, variant="xbar", **kw)
    with pytest.raises(ValueError, match="'step'"):
        create_bar_optimizer(model, torch.optim.SGD, schedule="step", **kw)
    with pytest.raises(ValueError, match="total_steps"):
        create_bar_optimizer(model, torch.optim.SGD, schedule="linear", **kw)
    with pytest.raises(TypeError, match="Optimizer subclass"):
        create_bar_optimizer(model, "adamw", **kw)
    with pytest.raises(ValueError, match="mu must be a finite number"):
        create_bar_optimizer(model, torch.optim.SGD, lr=0.1, mu="big")
    with pytest.raises(ValueError, match="lora_A/lora_B"):
        create_bar_optimizer(torch.nn.Linear(3, 3), torch.optim.SGD, **kw)


def test_state_dict_round_trip_keeps_schedule_position():
    def run(split):
        model = _toy()
        make = lambda m: create_bar_optimizer(m, torch.optim.Adam, lr=0.01, mu=2.0, schedule="linear", total_steps=6)
        opt = make(model)
        for t in range(6):
            if t == split:
                state = copy.deepcopy(opt.state_dict())
                assert state["bar"]["step"] == split
                opt = make(model)
                opt.load_state_dict(state)
            _grads(model)
            opt.step()
        return model.x.detach(), opt.bar_step_count

    (x_full, n_full), (x_resumed, n_resumed) = run(None), run(3)
    assert n_full == n_resumed == 6
    assert torch.equal(x_full, x_resumed)


def test_adam_moments_untouched_and_minilm_step_matches_manual():
    """BAR-AdamW step == (rescale by hand, then plain AdamW step); Adam's m, v equal plain AdamW's."""
    batch = sst2_batch(4)
    model = minilm_lora(seed=1)
    reference = copy.deepcopy(model)
    opt = create_bar_optimizer(model, torch.optim.AdamW, lr=1e-3, mu=5.0, weight_decay=0.01)
    ref_opt = torch.optim.AdamW([p for p in reference.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.01)
    for _ in range(2):
        for m in (model, reference):
            m.zero_grad()
            batch_loss(m, batch).backward()
        with torch.no_grad():
            for pair in lora_pairs(reference):
                s = 1.0 if pair.lora_A.grad.norm() >= pair.lora_B.grad.norm() else -1.0
                pair.lora_A.mul_(1 + s * 5.0 * 1e-3)
                pair.lora_B.mul_(1 - s * 5.0 * 1e-3)
        opt.step()
        ref_opt.step()
    for (n, p), q in zip(trainable(model).items(), trainable(reference).values(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=n)
    for p, q in zip(
        [p for p in model.parameters() if p.requires_grad],
        [p for p in reference.parameters() if p.requires_grad],
        strict=True,
    ):
        torch.testing.assert_close(opt.state[p]["exp_avg_sq"], ref_opt.state[q]["exp_avg_sq"], rtol=1e-5, atol=1e-12)
    assert type(opt).__name__ == "BARAdamW"
    assert isinstance(opt, torch.optim.AdamW)


def test_bf16_params_use_fp32_math():
    x0, y0 = torch.randn(8, 2, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64)
    model = ToyLoRA(x0.to(torch.bfloat16), y0.to(torch.bfloat16))
    opt = create_bar_optimizer(model, torch.optim.SGD, lr=0.01, mu=3.0, variant="obar")
    a = model.toy.lora_A["default"].weight
    a_before = a.detach().float().clone()
    s = -1.0 if a_before.norm() >= model.y.detach().float().norm() else 1.0
    a.grad = torch.zeros_like(a)
    model.toy.lora_B["default"].weight.grad = torch.zeros_like(model.toy.lora_B["default"].weight)
    opt.step()
    assert a.dtype == torch.bfloat16
    assert torch.equal(a.detach(), (a_before * (1 + s * 0.03)).to(torch.bfloat16))


def test_gradscaler_overflow_skips_rescaling_bit_identically():
    model = _toy()
    opt = create_bar_optimizer(model, torch.optim.SGD, lr=0.1, mu=1.0, variant="nbar")
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    before = trainable(model)
    model.zero_grad()
    scaler.scale((model.product() - C).square().sum() * float("inf")).backward()
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() == 512.0
    assert opt.bar_step_count == 0
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n])
    # The rescaling alone also refuses non-finite gradient norms (fused optimizers step with scaled grads).
    opt.bar_rescale_()
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n])


def test_param_groups_and_the_class_the_factory_instantiates():
    """Per-group settings (here: weight decay on the head only) reach the base optimizer; the optimizer is
    an instance of bar_optimizer_class(SGD)."""
    model = _toy(head=True)
    lora = [p for n, p in model.named_parameters() if "lora_" in n]
    groups = [{"params": lora, "weight_decay": 0.0}, {"params": [model.head], "weight_decay": 0.5}]
    opt = create_bar_optimizer(model, torch.optim.SGD, params=groups, lr=0.1, mu=1.0, variant="obar")
    assert type(opt) is bar_optimizer_class(torch.optim.SGD)
    assert isinstance(opt, torch.optim.SGD)
    x, y, head = model.x.detach().clone(), model.y.detach().clone(), model.head.detach().clone()
    gx, _ = _grads(model)
    hg = model.head.grad.clone()
    opt.step()
    s = -1.0 if x.norm() >= y.norm() else 1.0
    torch.testing.assert_close(model.x, (1 + s * 0.1) * x - 0.1 * gx)
    torch.testing.assert_close(model.head, head - 0.1 * (hg + 0.5 * head))
    with pytest.raises(ValueError, match="not among this optimizer's parameters"):
        create_bar_optimizer(model, torch.optim.SGD, params=[model.head], lr=0.1, mu=1.0)


@pytest.mark.parametrize("mu", [math.inf, math.nan])
def test_non_finite_mu_is_refused(mu):
    """μ = inf used to turn every LoRA weight into NaN within two steps."""
    with pytest.raises(ValueError, match="mu must be a finite number >= 0"):
        create_bar_optimizer(_toy(), torch.optim.SGD, lr=0.1, mu=mu)


def test_resuming_with_another_total_steps_is_an_error():
    model = _toy()
    opt = create_bar_optimizer(model, torch.optim.SGD, lr=0.1, mu=1.0, schedule="linear", total_steps=10)
    _grads(model)
    opt.step()
    other = create_bar_optimizer(model, torch.optim.SGD, lr=0.1, mu=1.0, schedule="linear", total_steps=20)
    with pytest.raises(ValueError, match="total_steps=10"):
        other.load_state_dict(opt.state_dict())
    assert other.bar_step_count == 0


def test_stepping_past_total_steps_warns_once():
    """A T shorter than the run (e.g. repeated by hand for the stock Trainer) no longer goes unnoticed."""
    model = _toy()
    opt = create_bar_optimizer(model, torch.optim.SGD, lr=0.01, mu=1.0, schedule="linear", total_steps=2)
    for _ in range(2):
        _grads(model)
        opt.step()
    with pytest.warns(UserWarning, match="BAR step 3 is past total_steps=2"):
        _grads(model)
        opt.step()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _grads(model)
        opt.step()


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
def test_mu_t_in_the_param_groups_is_the_shared_schedule(schedule):
    """group["bar_mu"] before step t is balancedness.schedules.mu_at(μ₀, schedule, t/T), past T too."""
    model = _toy()
    opt = create_bar_optimizer(model, torch.optim.SGD, lr=0.01, mu=2.0, schedule=schedule, total_steps=5)
    seen = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the step past T warns (tested above)
        for _ in range(7):
            seen.append(opt.param_groups[0]["bar_mu"])
            _grads(model)
            opt.step()
    assert seen == [mu_at(2.0, schedule, min(t / 5, 1.0)) for t in range(7)]
    assert opt.bar_scheduler.state_dict() == {"step": 7, "mu": 2.0, "schedule": schedule, "total_steps": 5}


def test_a_bar_scheduler_made_next_to_the_lr_scheduler_takes_the_same_steps():
    """A hand-written loop: BARScheduler(opt, "linear", total_steps=lr_scheduler) on a constant-μ optimizer
    steps exactly as create_bar_optimizer(schedule="linear", total_steps=T), and nothing in the loop calls it."""

    def run(**schedule):
        model = _toy(head=True)
        opt = create_bar_optimizer(model, torch.optim.SGD, lr=0.05, mu=3.0, **schedule)
        lr_schedule = get_linear_schedule_with_warmup(opt, num_warmup_steps=1, num_training_steps=6)
        mu_schedule = opt.bar_scheduler if schedule else BARScheduler(opt, "linear", total_steps=lr_schedule)
        for _ in range(6):
            _grads(model)
            opt.step()
            lr_schedule.step()
        return trainable(model), mu_schedule

    (mine, mu_schedule), (reference, _) = run(), run(schedule="linear", total_steps=6)
    assert mu_schedule.optimizer.bar_scheduler is mu_schedule
    assert mu_schedule.total_steps == 6
    assert mu_schedule.step_count == 6
    assert all(torch.equal(mine[n], reference[n]) for n in reference)


def test_each_group_rescales_with_its_own_mu():
    """μ_t is per group, like η_t: A in a group with μ₀ = 2, B in one with μ₀ = 0.5 (oBAR, SGD)."""
    model = _toy()
    a, b = model.toy.lora_A["default"].weight, model.toy.lora_B["default"].weight
    opt = create_bar_optimizer(
        model,
        torch.optim.SGD,
        lr=0.1,
        mu=1.0,
        variant="obar",
        params=[{"params": [a], "bar_mu": 2.0}, {"params": [b], "bar_mu": 0.5}],
    )
    x, y = model.x.detach().clone(), model.y.detach().clone()
    gx, gy = _grads(model)
    s = -1.0 if x.norm() >= y.norm() else 1.0
    opt.step()
    torch.testing.assert_close(model.x, (1 + s * 2.0 * 0.1) * x - 0.1 * gx, rtol=0, atol=1e-15)
    torch.testing.assert_close(model.y, (1 - s * 0.5 * 0.1) * y - 0.1 * gy, rtol=0, atol=1e-15)


def test_a_state_saved_before_mu_lived_in_the_groups_resumes():
    """Checkpoints of the previous layout hold t under "bar" and no "bar_mu" in their param groups."""

    def make(model):
        return create_bar_optimizer(model, torch.optim.SGD, lr=0.05, mu=2.0, schedule="cosine", total_steps=5)

    model, reference = _toy(), _toy()
    opt, ref_opt = make(model), make(reference)
    for m, o in ((model, opt), (reference, ref_opt)):
        for _ in range(2):
            _grads(m)
            o.step()
    old = copy.deepcopy(opt.state_dict())
    for group in old["param_groups"]:
        del group["bar_mu"], group["initial_bar_mu"]
    opt = make(model)
    opt.load_state_dict(old)
    assert opt.bar_step_count == 2
    assert opt.bar_mu == ref_opt.bar_mu
    for m, o in ((model, opt), (reference, ref_opt)):
        _grads(m)
        o.step()
    assert torch.equal(model.x, reference.x)
    assert torch.equal(model.y, reference.y)


def test_a_bar_scheduler_needs_a_bar_optimizer():
    with pytest.raises(TypeError, match="BARScheduler needs a BAR optimizer .* got SGD"):
        BARScheduler(torch.optim.SGD(_toy().parameters(), lr=0.1), "linear", total_steps=4)
