"""The torch optimizers take the numpy simulator's steps on the toys (11) and (12), to 1e-10 over 1,000 steps.

x is stored as ``toy.lora_A.default.weight`` (= xᵀ) and y as ``toy.lora_B.default.weight``, so
``create_bar_optimizer`` pairs them by name; every optimizer runs over plain ``torch.optim.SGD(lr=η)`` on the
same noise sequence as ``balancedness.sims.simulate``.

The flatness methods (spec/flatness-methods.md) run through the torch backend's own pieces: Flat-LoRA's
``FlatLoRA`` perturbs a zero frozen weight W0 of the toy layer with the *simulator's* draws ξ
(``problems.perturbation_sequence``; torch's W0 is out × in, the transpose of the simulator's W), Bi-LoRA's
auxiliary (the simulator's initial X₂, Y₂ = 0) ascends in a ``bilora_ascent_group`` of the same SGD and is
clipped by ``bilora_clip_``; ASAM is ``SAM(adaptive=True)`` against the simulator's ``asam`` at η_a = 0 (the
torch rule is davda54's, T = |w|). On OP the merged weight w = xᵀy is a 1 × 1 layer of rank d (A = x, B = yᵀ).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from balancedness.optim import SAM, create_bar_optimizer, sam_step_accumulated, sam_step_msharpness
from balancedness.optim.bilora import AuxAdapter, bilora_ascent_group, bilora_clip_
from balancedness.optim.flatlora import FlatLayer, FlatLoRA
from balancedness.sims import directions, nop_problem, op_problem, problems, simulate
from finetune_fixtures import ToyLoRA

STEPS, LR, ALPHA, RHO, MU = 1000, 1e-2, 1.0, 0.1, 0.5
CASES = {  # optimizer: (batch, m, schedule)
    "sgd": (1, 1, "constant"),
    "sam": (2, 1, "constant"),
    "msam": (4, 2, "constant"),
    "nbar": (1, 1, "linear"),
    "obar": (1, 1, "cosine"),
}
SIGMA, KAPPA, AUX_INIT = 0.5, 0.5, 0.01
BILORA_RHO = {"nop": 5e-4, "op": 1.5e-4}  # the auxiliary's norm passes these mid-run, so the clip acts
FLATNESS = {
    "flat-lora": dict(sigma=SIGMA, noise_schedule="cosine"),
    "asam": dict(eta_a=0.0),
    "bi-lora": dict(kappa=KAPPA, rank2=1, aux_init=AUX_INIT),
}


def _loss_fn(problem, model, extra=lambda: 0.0):
    """The toy's loss at W = x yᵀ + ``extra()`` (NOP; OP: w = xᵀy + ``extra()``) on a step's noise."""
    target = torch.as_tensor(problem.target, dtype=torch.float64)

    def loss(noise: torch.Tensor) -> torch.Tensor:
        if problem.kind == "nop":
            resid = (model.product() + extra())[None] - (target + ALPHA * noise)
            return resid.square().sum(dim=(1, 2)).mean()
        return ((model.x * model.y).sum() + extra() - (target + ALPHA * noise)).square().mean()

    return loss


def _layer_factors(problem, model):
    """(A, B) of the toy as one linear layer: NOP A = xᵀ, B = y (out = d2, in = d1); OP A = x, B = yᵀ (1 × 1)."""
    if problem.kind == "nop":
        return model.toy.lora_A["default"].weight, model.toy.lora_B["default"].weight
    return model.x, model.y.T


def _flat_lora_run(problem, model, noise):
    """Flat-LoRA over SGD, with the simulator's ξ of each step as the draws (transposed to torch's out × in)."""
    A, B = _layer_factors(problem, model)
    w0 = nn.Parameter(torch.zeros(B.shape[0], A.shape[1], dtype=torch.float64), requires_grad=False)
    flat = FlatLoRA([FlatLayer("toy", w0, ((A, B, 1.0),))], SIGMA, noise_schedule="cosine", total_steps=STEPS)
    xi = torch.from_numpy(problems.perturbation_sequence(0, STEPS, directions.flat_lora_draws(problem)))[:, 0]
    loss = _loss_fn(problem, model, lambda: w0.T if problem.kind == "nop" else w0[0, 0])
    opt = torch.optim.SGD(model.parameters(), lr=LR)

    def step(t):
        opt.zero_grad()
        with flat.perturbed(t, noise=lambda i, shape: xi[t].reshape(shape[::-1]).T):
            loss(noise[t]).backward()
        opt.step()
        assert not flat.is_perturbed
        assert not w0.any()

    return step


def _bi_lora_run(problem, model, noise):
    """Bi-LoRA over SGD: the auxiliary from the simulator's start ascends at lr κη; the global clip at ρ."""
    X2, Y2 = directions.bilora_init(problem, [0], dict(rank2=1, aux_init=AUX_INIT))
    X2, Y2 = torch.from_numpy(X2[0, 0]), torch.from_numpy(Y2[0, 0])  # (d1, r2), (d2, r2)
    if problem.kind == "nop":
        aux = AuxAdapter("toy", nn.Parameter(X2.T.clone()), nn.Parameter(Y2.clone()), 1.0)
        extra = lambda: (aux.lora_B @ aux.lora_A).T  # X₂Y₂ᵀ
    else:
        aux = AuxAdapter("toy", nn.Parameter(X2.clone()), nn.Parameter(Y2.T.clone()), 1.0)
        extra = lambda: (aux.lora_B @ aux.lora_A)[0, 0]  # x₂ᵀy₂
    loss = _loss_fn(problem, model, extra)
    opt = torch.optim.SGD(
        [{"params": list(model.parameters())}, bilora_ascent_group([aux.lora_A, aux.lora_B], KAPPA * LR)], lr=LR
    )
    clipped = []

    def step(t):
        opt.zero_grad()
        loss(noise[t]).backward()
        opt.step()
        clipped.append(bilora_clip_([aux], BILORA_RHO[problem.kind]) > BILORA_RHO[problem.kind])
        if t == STEPS - 1:
            assert any(clipped)
            assert not all(clipped)  # the clip acted, and not from the start

    return step


def _torch_run(problem, name, batch, m, schedule):
    model = ToyLoRA(torch.from_numpy(problem.x0[0]), torch.from_numpy(problem.y0[0]))
    noise = torch.from_numpy(problem.noise_sequence(seed=0, steps=STEPS, batch=batch))
    loss = _loss_fn(problem, model)
    special = {"flat-lora": _flat_lora_run, "bi-lora": _bi_lora_run}.get(name)
    if special is not None:
        step = special(problem, model, noise)
    elif name in ("sam", "msam", "asam"):
        opt = SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=LR, adaptive=name == "asam")
    elif name == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=LR)
    else:
        opt = create_bar_optimizer(
            model, torch.optim.SGD, lr=LR, mu=MU, variant=name, schedule=schedule, total_steps=STEPS
        )
    xs, ys = [model.x.detach().clone()], [model.y.detach().clone()]
    for t in range(STEPS):
        if special is not None:
            step(t)
        elif name in ("sam", "asam"):
            sam_step_accumulated(opt, loss, [noise[t]])
        elif name == "msam":
            sam_step_msharpness(opt, loss, list(noise[t].chunk(m)))
        else:
            opt.zero_grad()
            loss(noise[t]).backward()
            opt.step()
        xs.append(model.x.detach().clone())
        ys.append(model.y.detach().clone())
    return torch.stack(xs).numpy(), torch.stack(ys).numpy()


@pytest.mark.parametrize("kind", ["nop", "op"])
@pytest.mark.parametrize("name", list(CASES) + list(FLATNESS))
def test_torch_takes_the_simulator_steps(kind, name):
    batch, m, schedule = CASES.get(name, (2 if name == "asam" else 1, 1, "constant"))
    problem = nop_problem() if kind == "nop" else op_problem()
    rho = BILORA_RHO[kind] if name == "bi-lora" else RHO
    sim = simulate(
        problem,
        name,
        alpha=[ALPHA],
        seeds=[0],
        lr=LR,
        steps=STEPS,
        record_every=1,
        batch=batch,
        rho=rho,
        m=m,
        mu=MU,
        schedule=schedule,
        **FLATNESS.get(name, {}),
    )
    x_np, y_np = sim.x[0, :, 0], sim.y[0, :, 0]
    x_t, y_t = _torch_run(problem, name, batch, m, schedule)
    assert x_np.shape == x_t.shape == (STEPS + 1, 3, 1)
    err = max(np.abs(x_np - x_t).max(), np.abs(y_np - y_t).max())
    assert err < 1e-10, err
    assert np.abs(x_t[-1] - x_t[0]).max() > 1e-3  # the trajectory did move
