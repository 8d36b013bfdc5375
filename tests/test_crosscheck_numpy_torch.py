"""The torch optimizers take the numpy simulator's steps on the toys (11) and (12), to 1e-10 over 1,000 steps.

x is stored as ``toy.lora_A.default.weight`` (= xᵀ) and y as ``toy.lora_B.default.weight``, so
``create_bar_optimizer`` pairs them by name; every optimizer runs over plain ``torch.optim.SGD(lr=η)`` on the
same noise sequence as ``balancedness.sims.simulate``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from balancedness.optim import SAM, create_bar_optimizer, sam_step_accumulated, sam_step_msharpness
from balancedness.sims import nop_problem, op_problem, simulate
from finetune_fixtures import ToyLoRA

STEPS, LR, ALPHA, RHO, MU = 1000, 1e-2, 1.0, 0.1, 0.5
CASES = {  # optimizer: (batch, m, schedule)
    "sgd": (1, 1, "constant"), "sam": (2, 1, "constant"), "msam": (4, 2, "constant"),
    "nbar": (1, 1, "linear"), "obar": (1, 1, "cosine"),
}


def _loss_fn(problem, model):
    target = torch.as_tensor(problem.target, dtype=torch.float64)

    def loss(noise: torch.Tensor) -> torch.Tensor:
        if problem.kind == "nop":
            resid = model.product()[None] - (target + ALPHA * noise)
            return resid.square().sum(dim=(1, 2)).mean()
        return ((model.x * model.y).sum() - (target + ALPHA * noise)).square().mean()

    return loss


def _torch_run(problem, name, batch, m, schedule):
    model = ToyLoRA(torch.from_numpy(problem.x0[0]), torch.from_numpy(problem.y0[0]))
    noise = torch.from_numpy(problem.noise_sequence(seed=0, steps=STEPS, batch=batch))
    loss = _loss_fn(problem, model)
    if name in ("sam", "msam"):
        opt = SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=LR)
    elif name == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=LR)
    else:
        opt = create_bar_optimizer(model, torch.optim.SGD, lr=LR, mu=MU, variant=name, schedule=schedule,
                                   total_steps=STEPS)
    xs, ys = [model.x.detach().clone()], [model.y.detach().clone()]
    for t in range(STEPS):
        if name == "sam":
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
@pytest.mark.parametrize("name", list(CASES))
def test_torch_takes_the_simulator_steps(kind, name):
    batch, m, schedule = CASES[name]
    problem = nop_problem() if kind == "nop" else op_problem()
    sim = simulate(problem, name, alpha=[ALPHA], seeds=[0], lr=LR, steps=STEPS, record_every=1, batch=batch,
                   rho=RHO, m=m, mu=MU, schedule=schedule)
    x_np, y_np = sim.x[0, :, 0], sim.y[0, :, 0]
    x_t, y_t = _torch_run(problem, name, batch, m, schedule)
    assert x_np.shape == x_t.shape == (STEPS + 1, 3, 1)
    err = max(np.abs(x_np - x_t).max(), np.abs(y_np - y_t).max())
    assert err < 1e-10, err
    assert np.abs(x_t[-1] - x_t[0]).max() > 1e-3  # the trajectory did move
