"""``balancedness.optim`` needs torch alone: SAM and BAR work with transformers (and so peft) unimportable."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

TESTS = Path(__file__).resolve().parent

SCRIPT = textwrap.dedent("""
    import sys
    sys.modules["transformers"] = None  # any `import transformers` now raises ImportError
    sys.path.insert(0, {tests!r})

    import torch
    import balancedness.optim as optim
    from finetune_fixtures import ToyLoRA  # parameters named toy.lora_A.default.weight / toy.lora_B...

    x0 = torch.tensor([[0.2], [-0.1], [0.3]], dtype=torch.float64)
    target = torch.diag(torch.tensor([0.5, 0.0, 0.0], dtype=torch.float64))

    def loss(model):
        return (model.product() - target).square().sum()

    model = ToyLoRA(x0, -3 * x0)
    assert [p.name for p in optim.lora_pairs(model)] == ["toy.default"]
    before = optim.lora_balancedness(model)["toy.default"]

    sam = optim.SAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.1)
    sam.step(lambda: loss(model).backward())

    bar = optim.create_bar_optimizer(model, torch.optim.SGD, lr=0.1, mu=1.0, variant="nbar")
    bar.zero_grad()
    loss(model).backward()
    bar.step()
    assert bar.bar_step_count == 1
    assert optim.lora_balancedness(model)["toy.default"] != before

    assert sys.modules["transformers"] is None and "peft" not in sys.modules
    try:
        optim.SAMTrainer
    except ImportError:
        pass
    else:
        raise AssertionError("SAMTrainer should need transformers")
    print("ok")
""")


def test_optim_needs_neither_transformers_nor_peft():
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(tests=str(TESTS))],
        capture_output=True,
        text=True,
        cwd=TESTS.parent,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok", done.stderr
