"""SAM, ASAM, m-sharpness, accumulation and AMP against hand-computed updates."""

from __future__ import annotations

import copy

import pytest
import torch

from balancedness.optim import SAM, sam_step_accumulated, sam_step_msharpness
from finetune_fixtures import (
    DDP_X0,
    ToyLoRA,
    batch_loss,
    ddp_sam_worker,
    ddp_targets,
    minilm_lora,
    sst2_batch,
    trainable,
)


def _params(model):
    return [p for p in model.parameters() if p.requires_grad]


def _grad(model, loss_fn):
    params = _params(model)
    return torch.autograd.grad(loss_fn(model), params)


def _hand_sam(model, loss_fn, rho, lr):
    """w − η ∇L(w + ρ g/‖g‖), computed with plain autograd on a copy."""
    ref = copy.deepcopy(model)
    params = _params(ref)
    w = [p.detach().clone() for p in params]
    g = _grad(ref, loss_fn)
    norm = torch.sqrt(sum(t.square().sum() for t in g))
    with torch.no_grad():
        for p, t in zip(params, g, strict=True):
            p.add_(rho / norm * t)
    g_tilde = _grad(ref, loss_fn)
    return [wi - lr * gi for wi, gi in zip(w, g_tilde, strict=True)]


@pytest.fixture(scope="module")
def minilm64():
    return minilm_lora(seed=2).double()


def test_sam_step_equals_hand_computed_update_on_minilm(minilm64):
    model = copy.deepcopy(minilm64)
    batch = sst2_batch(4)
    loss_fn = lambda m: batch_loss(m, batch)
    expected = _hand_sam(model, loss_fn, rho=0.05, lr=0.1)
    sam = SAM(_params(model), torch.optim.SGD, rho=0.05, lr=0.1)
    sam.step(lambda: batch_loss(model, batch).backward() or 0.0)
    for p, e in zip(_params(model), expected, strict=True):
        torch.testing.assert_close(p, e, rtol=0, atol=1e-12)
    assert max((p - e).abs().max() for p, e in zip(_params(minilm64), expected, strict=True)) > 1e-4  # it did move


def test_first_second_step_api_and_zero_gradient():
    model = ToyLoRA(torch.zeros(3, 1, dtype=torch.float64), torch.zeros(3, 1, dtype=torch.float64))
    sam = SAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.1)
    (model.product() - 1.0).square().sum().backward()  # g = 0 at x = y = 0
    assert sam.first_step(zero_grad=True)
    assert torch.count_nonzero(model.x) == 0
    assert torch.count_nonzero(model.y) == 0
    (model.product() - 1.0).square().sum().backward()
    sam.second_step(zero_grad=True)
    assert torch.isfinite(model.x).all()
    assert torch.count_nonzero(model.x) == 0


def test_asam_perturbation_formula():
    torch.manual_seed(0)
    model = ToyLoRA(torch.randn(4, 2, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64))
    w = [p.detach().clone() for p in model.parameters()]
    sam = SAM(model.parameters(), torch.optim.SGD, rho=0.3, adaptive=True, lr=0.1)
    model.product().sin().sum().backward()
    g = [p.grad.clone() for p in model.parameters()]
    norm = torch.sqrt(sum((wi.abs() * gi).square().sum() for wi, gi in zip(w, g, strict=True)))
    sam.first_step()
    for p, wi, gi in zip(model.parameters(), w, g, strict=True):
        torch.testing.assert_close(p.detach(), wi + 0.3 * wi.square() * gi / norm, rtol=0, atol=1e-14)
    sam.restore()
    for p, wi in zip(model.parameters(), w, strict=True):
        assert torch.equal(p, wi)


def test_msharpness_matches_eq38():
    """OP toy, 2 chunks: w⁺ = w − η/m Σ_i ∇L_i(w + ρ g_i/‖g_i‖)."""
    torch.manual_seed(1)
    x0, y0 = torch.randn(3, 1, dtype=torch.float64), torch.randn(3, 1, dtype=torch.float64)
    targets = [torch.tensor(0.9, dtype=torch.float64), torch.tensor(-0.4, dtype=torch.float64)]
    loss = lambda m, c: (m.x.T @ m.y).squeeze().sub(c).square()
    model = ToyLoRA(x0, y0)
    expected = [torch.zeros_like(p) for p in model.parameters()]
    for c in targets:
        for e, h in zip(expected, _hand_sam(model, lambda m, c=c: loss(m, c), rho=0.2, lr=0.05), strict=True):
            e += h / 2
    sam = SAM(model.parameters(), torch.optim.SGD, rho=0.2, lr=0.05)
    sam_step_msharpness(sam, lambda c: loss(model, c), targets)
    for p, e in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(p.detach(), e, rtol=0, atol=1e-14)


def test_accumulation_equals_concatenated_batch(minilm64):
    batch = sst2_batch(4, offset=3, max_length=16)
    halves = [{k: v[:2] for k, v in batch.items()}, {k: v[2:] for k, v in batch.items()}]
    one, two = copy.deepcopy(minilm64), copy.deepcopy(minilm64)
    sam1 = SAM(_params(one), torch.optim.SGD, rho=0.05, lr=0.5, momentum=0.9)
    sam2 = SAM(_params(two), torch.optim.SGD, rho=0.05, lr=0.5, momentum=0.9)
    for _ in range(2):
        sam_step_accumulated(sam1, lambda b: batch_loss(one, b), [batch])
        sam_step_accumulated(sam2, lambda b: batch_loss(two, b), halves)
    diff = max((p - q).abs().max().item() for p, q in zip(_params(one), _params(two), strict=True))
    moved = max((p - q).abs().max().item() for p, q in zip(_params(one), _params(minilm64), strict=True))
    assert diff < 1e-10
    assert moved > 1e-3


def test_state_dict_round_trip_and_lr_scheduler():
    def run(split):
        torch.manual_seed(0)
        model = ToyLoRA(torch.randn(3, 1, dtype=torch.float64), torch.randn(3, 1, dtype=torch.float64))
        make = lambda: SAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.1, momentum=0.9)
        sam = make()
        sched = torch.optim.lr_scheduler.StepLR(sam, step_size=1, gamma=0.5)
        for t in range(4):
            if t == split:
                state = copy.deepcopy((sam.state_dict(), sched.state_dict()))
                sam = make()
                sched = torch.optim.lr_scheduler.StepLR(sam, step_size=1, gamma=0.5)
                sam.load_state_dict(state[0])
                sched.load_state_dict(state[1])
            sam.step(lambda: (model.product() - 0.5).square().sum().backward())
            sched.step()
        assert sam.base_optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**4)
        return model.x.detach()

    assert torch.equal(run(None), run(2))


def test_errors():
    model = ToyLoRA(torch.ones(3, 1), torch.ones(3, 1))
    with pytest.raises(ValueError, match="-0.1"):
        SAM(model.parameters(), torch.optim.SGD, rho=-0.1, lr=0.1)
    with pytest.raises(TypeError, match="Optimizer subclass"):
        SAM(model.parameters(), "sgd", rho=0.1, lr=0.1)
    sam = SAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.1)
    with pytest.raises(ValueError, match="closure"):
        sam.step()
    with pytest.raises(ValueError, match="micro-batch"):
        sam_step_msharpness(sam, lambda c: c, [])
    with pytest.raises(ValueError, match="rho must be a finite number"):
        SAM(model.parameters(), torch.optim.SGD, rho=float("inf"), lr=0.1)
    with pytest.raises(ValueError, match="adaptive must be True or False"):
        SAM(model.parameters(), torch.optim.SGD, rho=0.1, adaptive="yes", lr=0.1)


def test_second_step_needs_first_step():
    """A lone second_step() would take a plain descent step silently; it raises, and changes nothing."""
    model = ToyLoRA(torch.ones(3, 1), torch.ones(3, 1))
    sam = SAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.1)
    (model.product() - 0.5).square().sum().backward()
    before = trainable(model)
    with pytest.raises(RuntimeError, match="needs a preceding first_step"):
        sam.second_step()
    assert all(torch.equal(p, before[n]) for n, p in trainable(model).items())
    sam.first_step()
    with pytest.raises(RuntimeError, match="still at w \\+ e"):
        sam.first_step()
    sam.second_step()
    with pytest.raises(RuntimeError, match="needs a preceding first_step"):
        sam.second_step()
    assert any(not torch.equal(p, before[n]) for n, p in trainable(model).items())


def _fp16_run(model, batch, sam, scaler, poison_call=None):
    calls = {"n": 0}

    def loss_fn(b):
        calls["n"] += 1
        with torch.autocast("cpu", dtype=torch.float16):
            loss = batch_loss(model, b)
        return loss * float("inf") if calls["n"] == poison_call else loss

    sam_step_accumulated(sam, loss_fn, [batch], scaler=scaler)
    scaler.update()


@pytest.mark.slow
def test_fp16_gradscaler_overflow_skips_whole_step():
    model = minilm_lora(seed=3)
    batch = sst2_batch(2, max_length=16)
    sam = SAM(_params(model), torch.optim.AdamW, rho=0.05, lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    before = trainable(model)
    for poison_call, scale in ((1, 2.0**11), (2, 2.0**10)):  # overflow in the ascent / the descent pass
        _fp16_run(model, batch, sam, scaler, poison_call)
        assert scaler.get_scale() == scale
        for n, p in model.named_parameters():
            if p.requires_grad:
                assert torch.equal(p, before[n]), n
        assert not sam.base_optimizer.state  # AdamW never stepped
    _fp16_run(model, batch, sam, scaler)  # a clean step moves the weights, finitely
    assert scaler.get_scale() == 2.0**10
    assert all(torch.isfinite(p).all() for p in _params(model))
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if p.requires_grad)


@pytest.mark.slow
def test_fp16_and_bf16_steps_close_to_fp32():
    batch = sst2_batch(4, max_length=16)
    base = minilm_lora(seed=4)
    results = {}
    for mode in ("fp32", "bf16", "fp16"):
        model = copy.deepcopy(base)
        sam = SAM(_params(model), torch.optim.SGD, rho=0.05, lr=1.0)
        scaler = torch.amp.GradScaler("cpu") if mode == "fp16" else None
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mode)

        def loss_fn(b, model=model, dtype=dtype):
            with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                return batch_loss(model, b)

        sam_step_accumulated(sam, loss_fn, [batch], scaler=scaler)
        results[mode] = torch.cat([(p - q).flatten() for p, q in zip(_params(model), _params(base), strict=True)])
    ref = results["fp32"]
    for mode in ("bf16", "fp16"):
        rel = ((results[mode] - ref).norm() / ref.norm()).item()
        assert rel < {"bf16": 0.1, "fp16": 0.02}[mode], (mode, rel)


@pytest.mark.slow
def test_ddp_each_worker_perturbs_with_its_own_gradient(tmp_path):
    """2 gloo workers: w⁺ = w − η · ½ Σ_r ∇L_r(w + ρ g_r/‖g_r‖), g_r the worker's *local* gradient."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rho, lr, world = 0.2, 0.05, 2
    mp.spawn(ddp_sam_worker, args=(world, port, str(tmp_path), rho, lr), nprocs=world, join=True)
    out = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    x0 = torch.tensor(DDP_X0, dtype=torch.float64)
    expected_x, expected_y = torch.zeros_like(x0), torch.zeros_like(x0)
    for r, target in enumerate(ddp_targets(world)):
        model = ToyLoRA(x0, -3 * x0)
        local_loss = lambda m, target=target: (m.product() - target).square().sum()
        x_new, y_new = _hand_sam(model, local_loss, rho=rho, lr=lr)  # parameters: lora_A (= xᵀ), lora_B (= y)
        expected_x += x_new.T / world
        expected_y += y_new / world
        g = torch.autograd.grad(local_loss(model), list(model.parameters()))
        norm = torch.sqrt(sum(t.square().sum() for t in g))
        torch.testing.assert_close(out[r]["x_tilde"], x0 + rho * g[0].T / norm, rtol=0, atol=1e-14)
    for r in range(world):
        torch.testing.assert_close(out[r]["x"], expected_x, rtol=0, atol=1e-14)
        torch.testing.assert_close(out[r]["y"], expected_y, rtol=0, atol=1e-14)
    assert not torch.allclose(out[0]["x_tilde"], out[1]["x_tilde"])


def test_helpers_state_their_loss_fn_contract():
    """loss_fn returns the loss and leaves backward to the helper; a closure-style loss_fn is told so."""
    model = ToyLoRA(torch.ones(3, 1, dtype=torch.float64), torch.ones(3, 1, dtype=torch.float64))
    sam = SAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.1)
    before = trainable(model)

    def closure_style(_):
        loss = (model.product() - 0.5).square().sum()
        loss.backward()
        return loss

    for step in (sam_step_accumulated, sam_step_msharpness):
        with pytest.raises(RuntimeError, match="without calling backward itself"):
            step(sam, closure_style, [None])
        with pytest.raises(TypeError, match="must return the loss as a tensor"):
            step(sam, lambda _: None, [None])
    assert all(torch.equal(p, before[n]) for n, p in trainable(model).items())


def test_step_without_closure_finishes_a_first_step():
    """What accelerate's wrapper calls: step() == second_step() after first_step()."""

    def run(finish):
        model = ToyLoRA(
            torch.tensor([[0.2], [-0.1], [0.3]], dtype=torch.float64), torch.ones(3, 1, dtype=torch.float64)
        )
        sam = SAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.1)
        (model.product() - 0.5).square().sum().backward()
        sam.first_step(zero_grad=True)
        (model.product() - 0.5).square().sum().backward()
        finish(sam)
        return trainable(model)

    via_step, via_second = run(lambda s: s.step()), run(lambda s: s.second_step())
    assert all(torch.equal(via_step[n], via_second[n]) for n in via_step)


def _two_group_toy():
    torch.manual_seed(7)
    model = ToyLoRA(torch.randn(3, 2, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64))
    a, b = model.toy.lora_A["default"].weight, model.toy.lora_B["default"].weight
    return model, a, b


def test_each_param_group_climbs_with_its_own_rho_over_the_global_norm():
    """davda54/sam semantics (spec §2.7): e_g = ρ_g g_g/‖g‖, ‖g‖ the norm over *all* groups."""
    model, a, b = _two_group_toy()
    sam = SAM([{"params": [a], "rho": 0.1}, {"params": [b], "rho": 0.4}], torch.optim.SGD, rho=0.05, lr=0.1)
    model.product().sin().sum().backward()
    w_a, w_b, g_a, g_b = a.detach().clone(), b.detach().clone(), a.grad.clone(), b.grad.clone()
    norm = torch.sqrt(g_a.square().sum() + g_b.square().sum())
    assert sam.first_step()
    torch.testing.assert_close(a.detach(), w_a + 0.1 * g_a / norm, rtol=0, atol=1e-15)
    torch.testing.assert_close(b.detach(), w_b + 0.4 * g_b / norm, rtol=0, atol=1e-15)
    sam.restore()
    assert torch.equal(a, w_a)
    assert torch.equal(b, w_b)


def test_a_step_with_two_radii_is_sgd_at_the_per_group_perturbed_point():
    """step(closure) over two groups (ρ 0.3 and 0): w⁺ = w − η ∇L(w + e), e = (0.3 g_A/‖g‖, 0)."""
    model, a, b = _two_group_toy()
    loss_fn = lambda: (model.product() - 0.5).square().sum()
    w = [a.detach().clone(), b.detach().clone()]
    g = torch.autograd.grad(loss_fn(), [a, b])
    norm = torch.sqrt(sum(t.square().sum() for t in g))
    reference = copy.deepcopy(model)
    ref_a, ref_b = reference.toy.lora_A["default"].weight, reference.toy.lora_B["default"].weight
    with torch.no_grad():
        ref_a.add_(0.3 * g[0] / norm)
    g_tilde = torch.autograd.grad((reference.product() - 0.5).square().sum(), [ref_a, ref_b])
    sam = SAM([{"params": [a], "rho": 0.3}, {"params": [b], "rho": 0.0}], torch.optim.SGD, rho=0.05, lr=0.1)
    sam.step(lambda: loss_fn().backward())
    torch.testing.assert_close(a.detach(), w[0] - 0.1 * g_tilde[0], rtol=0, atol=1e-14)
    torch.testing.assert_close(b.detach(), w[1] - 0.1 * g_tilde[1], rtol=0, atol=1e-14)


def test_a_group_radius_is_validated():
    model, a, b = _two_group_toy()
    with pytest.raises(ValueError, match="rho must be a finite number >= 0, got -1"):
        SAM([{"params": [a], "rho": -1.0}, {"params": [b]}], torch.optim.SGD, rho=0.05, lr=0.1)
