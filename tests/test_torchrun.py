"""`torchrun --nproc_per_node 2 -m balancedness finetune` on CPU (gloo), against the 1-process run.

With the same global batch (8 = 2 workers × 4), dropout off and the same seed, both runs see the same
examples at every step (accelerate gives worker r every other per-device batch of the same seeded
permutation) and DDP averages the two local gradients into the full-batch gradient. So nBAR, whose update
is a function of that averaged gradient, must end at the same LoRA weights up to floating-point summation
order: the only difference between the runs is the order in which per-example gradient terms are added.

Why float64 (``--precision fp64``) and why 1e-9. Summation order perturbs the averaged gradient by
δg ≲ n·u·Σ|g_i| with u the unit round-off. Adam's first steps divide by √v + ε ≈ |g| + ε, so an element
whose gradient is near 0 turns δg into an update change of up to lr·δg/ε: with u = 6e-8 (fp32) that is
2e-3 · ~1e-9 / 1e-8 ≈ 2e-4, far above any fixed tolerance (we measured 1.6e-5), so fp32 admits no
principled bound. In fp64, u = 1.1e-16, the same bound is lr·δg/ε ≲ 2e-3 · 1e-17 / 1e-8 = 2e-12 per step,
and 3 steps stay ≪ 1e-9: a difference above 1e-9 means the two runs computed different things.

SAM instead climbs with each worker's *own* gradient (ascent under ``no_sync``): the descent gradient is
½Σ_r ∇L_r(w + ρ g_r/‖g_r‖), not ∇L(w + ρ g/‖g‖), so 2-process SAM must differ from 1-process SAM by
many orders of magnitude more (we require > 1e-6, i.e. 1000× the nBAR bound). That gap is the proof of
per-worker perturbation.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from data_fixtures import data_root_or_skip

ARGS = [
    "--task",
    "sst2",
    "--shots",
    "4",
    "--steps",
    "3",
    "--batch-size",
    "8",
    "--dropout",
    "0",
    "--max-eval",
    "8",
    "--log-every",
    "1",
    "--lr",
    "2e-3",
    "--precision",
    "fp64",
]


def _run(tmp_path, method, nproc):
    out = tmp_path / f"{method}-{nproc}"
    cmd = [
        sys.executable,
        "-m",
        "balancedness",
        "finetune",
        *ARGS,
        "--method",
        method,
        "--data-root",
        str(data_root_or_skip()),
        "--out",
        str(out),
    ]
    if nproc > 1:
        cmd[1:3] = [
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(nproc),
            "--master_port",
            str(_free_port()),
            "-m",
            "balancedness",
        ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    from safetensors.torch import load_file

    return out, load_file(out / "adapter" / "adapter_model.safetensors")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _gap(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.slow
def test_two_process_nbar_matches_one_process_and_sam_perturbs_per_worker(tmp_path):
    out2, nbar2 = _run(tmp_path, "nbar", 2)
    _, nbar1 = _run(tmp_path, "nbar", 1)
    _, sam2 = _run(tmp_path, "sam", 2)
    _, sam1 = _run(tmp_path, "sam", 1)
    import json

    assert json.loads((out2 / "metrics.json").read_text())["world_size"] == 2
    nbar_gap, sam_gap = _gap(nbar2, nbar1), _gap(sam2, sam1)
    assert {t.dtype for t in nbar2.values()} == {torch.float64}
    assert nbar_gap < 1e-9, nbar_gap
    assert sam_gap > 1e-6, (sam_gap, nbar_gap)
