"""SAM and BAR in hand-written ``accelerate`` loops: ``Accelerator.prepare``, ``accumulate``, mixed precision.

The proof that no micro-batch is dropped: micro-batch j holds the one-hot input e_j, so its gradient touches
row j of x alone. With SGD (no momentum, no weight decay) row j can only move if micro-batch j's passes reach
the update, and the exact values are those of SAM/BAR on the concatenated batch, computed by hand.
"""

from __future__ import annotations

import copy

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from torch.utils.data import DataLoader, TensorDataset

from balancedness.optim import SAM, create_bar_optimizer, sam_backward, sam_step_accumulated, sam_step_msharpness
from finetune_fixtures import ToyLoRA, batch_loss, minilm_lora, sst2_batch, trainable

D1, D2, R, N = 4, 3, 2, 4  # N micro-batches of one example each; accumulation over 2: two optimizer steps
RHO, LR, MU = 0.1, 0.05, 2.0


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Each test builds its own Accelerator (mixed precision is process-wide state in accelerate)."""
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


class Bilinear(ToyLoRA):
    """f(u, v) = uᵀ x yᵀ v per example; x = ``toy.lora_A.default.weight``ᵀ, y = ``toy.lora_B.default.weight``."""

    def forward(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        ux = u @ self.x
        self.compute_dtype = ux.dtype  # bf16 under accelerate's autocast (the output is cast back to fp32)
        return (ux * (v @ self.y)).sum(-1)


def _toy(dtype=torch.float64):
    gen = torch.Generator().manual_seed(0)
    return Bilinear(torch.randn(D1, R, generator=gen, dtype=dtype), torch.randn(D2, R, generator=gen, dtype=dtype))


def _data(dtype=torch.float64):
    gen = torch.Generator().manual_seed(1)
    u = torch.eye(D1, dtype=dtype)[:N]  # micro-batch j: e_j, so its gradient lives in row j of x
    v = torch.randn(N, D2, generator=gen, dtype=dtype)
    c = torch.randn(N, generator=gen, dtype=dtype)
    return TensorDataset(u, v, c, torch.arange(N))


def _loss(model, batch):
    u, v, c, _ = batch
    return (model(u, v) - c).square().mean()


def _hand_sam(model, batches):
    """x, y after SGD-SAM on each list of examples (mean loss), by plain autograd."""
    model = copy.deepcopy(model)
    params = list(model.parameters())
    for batch in batches:
        loss = lambda batch=batch: _loss(model, batch)
        g = torch.autograd.grad(loss(), params)
        norm = torch.sqrt(sum(t.square().sum() for t in g))
        w = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, t in zip(params, g, strict=True):
                p.add_(RHO * t / norm)
        g_tilde = torch.autograd.grad(loss(), params)
        with torch.no_grad():
            for p, wi, t in zip(params, w, g_tilde, strict=True):
                p.copy_(wi - LR * t)
    return model.x.detach(), model.y.detach()


def _hand_bar(model, batches):
    """x, y after nBAR-SGD (constant μ) on each list of examples: (1 ± μη) x − η g_x (Alg. 2)."""
    model = copy.deepcopy(model)
    params = list(model.parameters())  # lora_A (= xᵀ), lora_B (= y)
    for batch in batches:
        g_a, g_b = torch.autograd.grad(_loss(model, batch), params)
        s = 1.0 if g_a.norm() >= g_b.norm() else -1.0
        with torch.no_grad():
            params[0].mul_(1 + s * MU * LR).sub_(LR * g_a)
            params[1].mul_(1 - s * MU * LR).sub_(LR * g_b)
    return model.x.detach(), model.y.detach()


def _concat(dataset, idx):
    return tuple(t[idx] for t in dataset.tensors)


def _run(optimizer, *, sam, msharpness=False, accelerator=None, loss_fn=_loss, steps_seen=None):
    """The documented loop: prepare, accumulate, sam_backward (SAM) or accelerator.backward (BAR), step."""
    accelerator = accelerator or Accelerator(cpu=True, gradient_accumulation_steps=2)
    model, opt = optimizer
    model, opt, loader = accelerator.prepare(model, opt, DataLoader(_data(model.x.dtype), batch_size=1))
    for batch in loader:
        with accelerator.accumulate(model):
            if sam:
                sam_backward(accelerator, model, opt, batch, loss_fn=lambda b: loss_fn(model, b), msharpness=msharpness)
            else:
                accelerator.backward(loss_fn(model, batch))
            opt.step()
            if steps_seen is not None and accelerator.sync_gradients:
                steps_seen.append(model.x.detach().clone())
            opt.zero_grad()
    return model


def test_sam_under_accelerate_uses_every_micro_batch():
    calls = []

    def counted(model, batch):
        calls.append(int(batch[3]))
        return _loss(model, batch)

    model = _toy()
    start = model.x.detach().clone()
    after_steps = []
    sam = SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=LR)
    _run((model, sam), sam=True, loss_fn=counted, steps_seen=after_steps)
    # every micro-batch ran its ascent and its descent pass: 2 forward/backward passes each
    assert sorted(calls) == [0, 0, 1, 1, 2, 2, 3, 3]
    # step 1 (micro-batches 0, 1) moved rows 0 and 1 only; step 2 (micro-batches 2, 3) moved rows 2 and 3
    moved = lambda a, b: [not torch.equal(a[j], b[j]) for j in range(N)]
    assert moved(after_steps[0], start) == [True, True, False, False]
    assert moved(after_steps[1], after_steps[0]) == [False, False, True, True]
    data = _data()
    x, y = _hand_sam(_toy(), [_concat(data, [0, 1]), _concat(data, [2, 3])])
    torch.testing.assert_close(model.x, x, rtol=0, atol=1e-14)
    torch.testing.assert_close(model.y, y, rtol=0, atol=1e-14)
    # dropping any one micro-batch would change the result far beyond the tolerance
    for j in range(N):
        keep = [i for i in range(N) if i != j]
        x_drop, _ = _hand_sam(
            _toy(), [_concat(data, [i for i in keep if i < 2]), _concat(data, [i for i in keep if i >= 2])]
        )
        assert (x_drop - x).abs().max() > 1e-3


def test_msharpness_under_accelerate_matches_the_helper():
    model = _toy()
    _run((model, SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=LR)), sam=True, msharpness=True)
    reference = _toy()
    ref_sam = SAM(reference.parameters(), torch.optim.SGD, rho=RHO, lr=LR)
    data = _data()
    for pair in ([0, 1], [2, 3]):
        sam_step_msharpness(ref_sam, lambda b: _loss(reference, b), [_concat(data, [i]) for i in pair])
    torch.testing.assert_close(model.x, reference.x, rtol=0, atol=1e-14)
    torch.testing.assert_close(model.y, reference.y, rtol=0, atol=1e-14)
    assert not torch.allclose(model.x, _hand_sam(_toy(), [_concat(data, [0, 1]), _concat(data, [2, 3])])[0])


def test_bar_under_accelerate_uses_every_micro_batch():
    model = _toy()
    bar = create_bar_optimizer(model, torch.optim.SGD, lr=LR, mu=MU, variant="nbar")
    _run((model, bar), sam=False)
    assert bar.bar_step_count == 2
    data = _data()
    x, y = _hand_bar(_toy(), [_concat(data, [0, 1]), _concat(data, [2, 3])])
    torch.testing.assert_close(model.x, x, rtol=0, atol=1e-14)
    torch.testing.assert_close(model.y, y, rtol=0, atol=1e-14)


def test_sam_step_with_closure_through_accelerate_fails_loudly():
    """The unsupported way: accelerate skips step() on the first micro-batch; the second raises."""
    model = _toy()
    before = trainable(model)
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=2)
    model, opt, loader = accelerator.prepare(
        model, SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=LR), DataLoader(_data(), batch_size=1)
    )
    with pytest.raises(AttributeError):
        _ = opt.first_step  # accelerate's wrapper hides SAM's halves
    with pytest.raises(RuntimeError, match="sam_backward"):
        for batch in loader:
            with accelerator.accumulate(model):
                opt.step(lambda batch=batch: _loss(model, batch).backward())
    assert all(torch.equal(p, before[n]) for n, p in trainable(model).items())


def test_sam_backward_refuses_a_plain_optimizer():
    model = _toy()
    accelerator = Accelerator(cpu=True)
    model, opt = accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=LR))
    with pytest.raises(TypeError, match="needs the SAM optimizer"):
        sam_backward(accelerator, model, opt, None, loss_fn=lambda b: model.product().sum())


def test_bf16_autocast_recipe_is_close_to_fp32():
    results, dtypes = {}, []
    for precision in ("no", "bf16"):
        AcceleratorState._reset_state(True)
        model = _toy(torch.float32)
        accelerator = Accelerator(cpu=True, gradient_accumulation_steps=2, mixed_precision=precision)

        def loss_fn(m, batch):
            loss = _loss(m, batch)
            dtypes.append(m.compute_dtype)
            return loss

        _run(
            (model, SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=LR)),
            sam=True,
            accelerator=accelerator,
            loss_fn=loss_fn,
        )
        results[precision] = model.x.detach() - _toy(torch.float32).x
    assert torch.bfloat16 in dtypes
    assert torch.float32 in dtypes  # autocast was on for the bf16 run only
    rel = ((results["bf16"] - results["no"]).norm() / results["no"].norm()).item()
    assert 0 < rel < 0.05, rel


def test_fp16_gradscaler_overflow_skips_the_step():
    """accelerate enables fp16 only on accelerators; here its GradScaler is emulated on CPU. Passes of the first
    run: step 1 = ascent 1, 2 (1 overflows: no descent); step 2 = ascent 3, 4, descent 5 (overflows), 6."""
    model = _toy(torch.float32)
    before = trainable(model)
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=2)
    accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    calls, poison = [], {1, 5}

    def loss_fn(m, batch):
        calls.append(None)
        with torch.autocast("cpu", dtype=torch.float16):
            loss = (m(batch[0], batch[1]) - batch[2]).square().mean()
        return loss * float("inf") if len(calls) in poison else loss

    sam = SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=LR)
    _run((model, sam), sam=True, accelerator=accelerator, loss_fn=loss_fn)
    assert len(calls) == 6
    assert accelerator.scaler.get_scale() == 2.0**10  # both steps skipped, the scale halved twice
    assert all(torch.equal(p, before[n]) for n, p in trainable(model).items())
    poison.clear()
    _run((model, sam), sam=True, accelerator=accelerator, loss_fn=loss_fn)
    assert accelerator.scaler.get_scale() == 2.0**10
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(not torch.equal(p, before[n]) for n, p in trainable(model).items())


def test_minilm_accelerate_loop_equals_sam_step_accumulated():
    """A Hugging Face model with the default loss (``model(**batch).loss``), float64."""
    base = minilm_lora(seed=2).double()
    batch = sst2_batch(4, offset=3, max_length=16)
    halves = [{k: v[:2] for k, v in batch.items()}, {k: v[2:] for k, v in batch.items()}]
    model = copy.deepcopy(base)
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=2)
    sam = SAM([p for p in model.parameters() if p.requires_grad], torch.optim.SGD, rho=0.05, lr=0.5)
    model, sam = accelerator.prepare(model, sam)
    for micro in halves:
        with accelerator.accumulate(model):
            sam_backward(accelerator, model, sam, micro)
            sam.step()
            sam.zero_grad()
    reference = copy.deepcopy(base)
    ref_sam = SAM([p for p in reference.parameters() if p.requires_grad], torch.optim.SGD, rho=0.05, lr=0.5)
    sam_step_accumulated(ref_sam, lambda b: batch_loss(reference, b), halves)
    for (n, p), q in zip(trainable(model).items(), trainable(reference).values(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-12, msg=n)
    assert (
        max((p - q).abs().max() for p, q in zip(trainable(model).values(), trainable(base).values(), strict=True))
        > 1e-4
    )


def test_bar_save_state_load_state_resumes_bit_identically(tmp_path):
    def make():
        model = _toy()
        return model, create_bar_optimizer(model, torch.optim.Adam, lr=LR, mu=MU, schedule="cosine", total_steps=4)

    def steps(accelerator, model, opt, loader, n):
        it = iter(loader)
        for _ in range(n):
            batch = next(it)
            accelerator.backward(_loss(model, batch))
            opt.step()
            opt.zero_grad()

    def loader():
        return DataLoader(_data(), batch_size=2)  # 2 batches: 2 steps per pass

    full = Accelerator(cpu=True)
    model, opt, data = full.prepare(*make(), loader())
    steps(full, model, opt, data, 2)
    steps(full, model, opt, data, 2)
    expected = trainable(model)

    AcceleratorState._reset_state(True)
    first = Accelerator(cpu=True)
    model, opt, data = first.prepare(*make(), loader())
    steps(first, model, opt, data, 2)
    first.save_state(str(tmp_path / "state"))
    AcceleratorState._reset_state(True)
    second = Accelerator(cpu=True)
    model, opt, data = second.prepare(*make(), loader())
    second.load_state(str(tmp_path / "state"))
    assert opt.optimizer.bar_step_count == 2
    steps(second, model, opt, data, 2)
    assert opt.optimizer.bar_step_count == 4
    assert all(torch.equal(p, expected[n]) for n, p in trainable(model).items())


def test_sam_step_with_closure_through_accelerate_without_accumulation():
    """Without gradient accumulation accelerate runs step(closure) on every batch: plain SAM per batch."""
    model = _toy()
    accelerator = Accelerator(cpu=True)
    model, opt, loader = accelerator.prepare(
        model, SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=LR), DataLoader(_data(), batch_size=2)
    )
    for batch in loader:
        opt.step(lambda batch=batch: accelerator.backward(_loss(model, batch)))
        opt.zero_grad()
    data = _data()
    x, y = _hand_sam(_toy(), [_concat(data, [0, 1]), _concat(data, [2, 3])])
    torch.testing.assert_close(model.x, x, rtol=0, atol=1e-14)
    torch.testing.assert_close(model.y, y, rtol=0, atol=1e-14)


def test_a_bar_scheduler_made_on_the_prepared_optimizer_drives_the_bar_optimizer():
    from balancedness.optim import BARScheduler

    model = _toy()
    bar = create_bar_optimizer(model, torch.optim.SGD, lr=LR, mu=MU)
    accelerator = Accelerator(cpu=True)
    model, opt = accelerator.prepare(model, bar)
    schedule = BARScheduler(opt, "linear", total_steps=4)
    batch = _concat(_data(), [0, 1])
    for _ in range(2):
        accelerator.backward(_loss(model, batch))
        opt.step()
        opt.zero_grad()
    assert bar.bar_scheduler is schedule
    assert schedule.step_count == 2
    assert bar.param_groups[0]["bar_mu"] == MU * (1 - 2 / 4)
