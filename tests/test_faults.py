"""Fault injection: interrupted, killed, damaged and re-configured runs never lose or mislabel evidence.

Every interrupted run here is resumed with ``--resume`` and must end *bit-identical* to an uninterrupted
run of the same options (LoRA weights, ``balancedness.jsonl``, ``train_loss``, the metric), or be refused
(exit 2) with a sentence naming the damaged file, touching nothing. Faults are real signals sent by the
process to itself at chosen moments (``tests/fault_runner.py``) or a SIGKILL from outside at a random one; each
faulty run is a process of its own, forked from one that imported torch once (``tests/prewarmed.py``).
"""

from __future__ import annotations

import hashlib
import json
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import copy_of, invoke
from data_fixtures import data_root_or_skip
from prewarmed import Run, run_fault

pytestmark = pytest.mark.slow

STEPS = 6


def _args(out: Path, *extra: str, method: str = "nbar", steps: int = STEPS) -> list[str]:
    return [
        "--task",
        "sst2",
        "--data-root",
        str(data_root_or_skip()),
        "--shots",
        "4",
        "--steps",
        str(steps),
        "--batch-size",
        "4",
        "--max-eval",
        "8",
        "--log-every",
        "1",
        "--method",
        method,
        "--mu",
        "5",
        "--out",
        str(out),
        *extra,
    ]


def _run(fault: str, step: int, args: list[str]) -> subprocess.CompletedProcess:
    """``tests/fault_runner.py FAULT STEP -- ARGS`` in a process of its own, forked from one that imported torch,
    transformers and peft once (``tests/prewarmed.py``)."""
    return run_fault(fault, step, args)


def _finetune(args: list[str]) -> subprocess.CompletedProcess:
    """``balancedness finetune ARGS`` with no fault, in this process (``conftest.invoke``). Faults need their own
    process (:func:`_run`)."""
    return invoke(["finetune", *args])


def _outcome(out: Path) -> dict:
    metrics = json.loads((out / "metrics.json").read_text())
    return {
        "weights": load_file(out / "adapter" / "adapter_model.safetensors"),
        "log": (out / "balancedness.jsonl").read_text(),
        "train_loss": metrics["train_loss"],
        "accuracy": metrics["accuracy"],
        "status": metrics["status"],
    }


def _assert_identical(a: dict, b: dict) -> None:
    assert a["status"] == b["status"] == "complete"
    assert a["weights"].keys() == b["weights"].keys()
    for key in a["weights"]:
        assert torch.equal(a["weights"][key], b["weights"][key]), key
    assert a["log"] == b["log"]
    assert len(a["log"].splitlines()) == STEPS
    assert a["train_loss"] == b["train_loss"]
    assert a["accuracy"] == b["accuracy"]


def _tree(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` with the SHA-256 of its bytes (to prove nothing was touched)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def reference(reference_runs) -> dict[str, dict]:
    """Uninterrupted runs (nBAR and SAM), the yardstick of every resume (``conftest.reference_runs``: made once)."""
    return {method: _outcome(reference_runs(method)) for method in ("nbar", "sam")}


def _interrupt_then_resume(tmp_path, fault, step, *extra, method="nbar") -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path / "run"
    first = _run(fault, step, _args(out, *extra, method=method))
    resumed = _finetune(_args(out, "--resume", method=method))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return first, out


@pytest.mark.parametrize("step", [1, 4])
def test_one_sigint_checkpoints_the_step_and_resume_is_exact(tmp_path, reference, step):
    out = tmp_path / "run"
    first = _run("sigint", step, _args(out))
    assert first.returncode == 130, first.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "interrupted"
    assert metrics["step_reached"] == step
    assert metrics["checkpoint"].endswith(f"checkpoint-{step}")
    assert (out / "checkpoints" / f"checkpoint-{step}" / "COMPLETE").is_file()
    resumed = _finetune(_args(out, "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_identical(_outcome(out), reference["nbar"])


def test_sam_resume_after_sigint_is_exact(tmp_path, reference):
    first, out = _interrupt_then_resume(tmp_path, "sigint", 3, method="sam")
    assert first.returncode == 130
    _assert_identical(_outcome(out), reference["sam"])


def test_double_sigint_mid_step_keeps_the_last_complete_checkpoint(tmp_path, reference):
    first, out = _interrupt_then_resume(tmp_path, "double-sigint", 5, "--save-every", "2")
    assert first.returncode == 130, first.stderr[-2000:]
    _assert_identical(_outcome(out), reference["nbar"])


def test_second_sigint_during_the_checkpoint_write(tmp_path, reference):
    out = tmp_path / "run"
    first = _run("sigint-in-save", 3, _args(out))
    assert first.returncode == 130, first.stderr[-2000:]
    partial = out / "checkpoints" / "checkpoint-3"
    assert partial.is_dir()
    assert not (partial / "COMPLETE").exists()  # half-written, never taken for good
    assert json.loads((out / "metrics.json").read_text())["checkpoint"] is None
    resumed = _finetune(_args(out, "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_identical(_outcome(out), reference["nbar"])


def test_sigkill_during_the_checkpoint_write(tmp_path, reference):
    first, out = _interrupt_then_resume(tmp_path, "sigkill-in-save", 4, "--save-every", "2")
    assert first.returncode == -signal.SIGKILL
    _assert_identical(_outcome(out), reference["nbar"])


def test_sigkill_after_the_last_step_resumes_without_training(tmp_path, reference):
    """Killed during the final evaluation, with a checkpoint of the last step: the resume trains no step."""
    first, out = _interrupt_then_resume(tmp_path, "sigkill-in-eval", 0, "--save-every", str(STEPS))
    assert first.returncode == -signal.SIGKILL
    _assert_identical(_outcome(out), reference["nbar"])


@pytest.mark.parametrize("seed", [0, 1])
def test_sigkill_at_a_random_moment(tmp_path, reference, seed):
    out = tmp_path / "run"
    proc = Run(["none", "0", "--", *_args(out, "--save-every", "1")])
    log = out / "balancedness.jsonl"
    deadline = time.monotonic() + 300
    while not (log.exists() and log.stat().st_size) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)  # wait until training runs
    time.sleep(random.Random(seed).uniform(0.0, 1.5))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = _finetune(_args(out, "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_identical(_outcome(out), reference["nbar"])


@pytest.mark.parametrize("name", ["optimizer.pt", "trainer_state.json", "losses.json"])
def test_a_damaged_checkpoint_file_is_named_and_nothing_is_touched(tmp_path, interrupted_run, name):
    out = copy_of(interrupted_run, tmp_path / "run")
    target = out / "checkpoints" / "checkpoint-2" / name
    target.write_bytes(target.read_bytes()[: max(1, target.stat().st_size // 2)])
    before = _tree(out)
    again = _finetune(_args(out, "--resume"))
    assert again.returncode == 2, again.stderr[-2000:]
    assert name in again.stderr
    assert "Traceback" not in again.stderr
    assert _tree(out) == before


def test_a_damaged_log_is_named_a_torn_last_line_is_not(tmp_path, reference):
    out = tmp_path / "run"
    assert _run("sigint", 3, _args(out)).returncode == 130
    log = out / "balancedness.jsonl"
    good = log.read_text()
    log.write_text("not json\n" + good)
    before = _tree(out)
    damaged = _finetune(_args(out, "--resume"))
    text = "".join(damaged.stderr.split())  # rich wraps long lines, even inside a path
    assert damaged.returncode == 2
    assert f"{log}'isdamagedatline1" in text
    assert _tree(out) == before
    log.write_text(good + '{"step": 4, "balanc')  # what a kill in the middle of a write leaves
    resumed = _finetune(_args(out, "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_identical(_outcome(out), reference["nbar"])


def test_resume_with_changed_options_or_fewer_steps_is_refused(tmp_path):
    out = tmp_path / "run"
    assert _run("sigint", 4, _args(out)).returncode == 130
    before = _tree(out)
    hybrid = _finetune(_args(out, "--resume", method="sam", steps=4))
    assert hybrid.returncode == 2
    text = " ".join(hybrid.stderr.split())
    assert "method: 'nbar' → 'sam'" in text
    assert "steps: 6 → 4" in text
    fewer = _finetune(_args(out, "--resume", steps=3))
    assert fewer.returncode == 2
    assert "steps: 6 → 3" in " ".join(fewer.stderr.split())
    assert _tree(out) == before


def test_a_finished_run_is_skipped_refused_or_overwritten(tmp_path):
    out = tmp_path / "run"
    assert _finetune(_args(out, "--zero-shot", steps=2)).returncode == 0
    before = _tree(out)
    same = _finetune(_args(out, "--zero-shot", steps=2))
    assert same.returncode == 0
    assert "skipped" in same.stderr
    assert _tree(out) == before
    other = _finetune(_args(out, method="sam", steps=2))
    assert other.returncode == 2
    assert "--overwrite" in " ".join(other.stderr.split())
    assert _tree(out) == before
    replaced = _finetune(_args(out, "--overwrite", method="sam", steps=2))
    assert replaced.returncode == 0, replaced.stderr[-3000:]
    assert not (out / "zero_shot.json").exists()  # nothing of the old run survives beside the new one
    assert json.loads((out / "run.json").read_text())["fingerprint"]["options"]["method"] == "sam"
    assert json.loads((out / "metrics.json").read_text())["method"] == "sam"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run.replaced")]


def test_finetune_json_prints_one_document(tmp_path):
    proc = _finetune(_args(tmp_path / "run", "--json", steps=2))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["status"] == "complete"


class _ProofOfExecution:
    """Unpickling this writes a marker file: the harmless stand-in for a hostile pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('code ran')",))


@pytest.mark.parametrize("name", ["rng_state.pth", "optimizer.pt", "scheduler.pt", "planted.bin"])
def test_a_pickle_planted_in_a_checkpoint_never_runs(tmp_path, interrupted_run, name):
    """A run folder is data: a checkpoint file that needs code to load is refused by name, never executed."""
    out = copy_of(interrupted_run, tmp_path / "run")
    marker = tmp_path / "pwned"
    torch.save({"state": _ProofOfExecution(marker)}, out / "checkpoints" / "checkpoint-2" / name)
    before = _tree(out)
    again = _finetune(_args(out, "--resume"))
    assert not marker.exists(), "the planted pickle ran"
    assert again.returncode == 2, again.stderr[-2000:]
    text = " ".join(again.stderr.split())
    assert name in "".join(again.stderr.split())
    assert "needs code to load" in text
    assert "Traceback" not in again.stderr
    assert _tree(out) == before


def test_the_trainers_own_checkpoint_files_load_safely(interrupted_run):
    """Every pickled file a real checkpoint holds passes the weights-only reader (no false refusal)."""
    from balancedness.finetune.checkpoints import safe_torch_load, validate_checkpoint

    out = interrupted_run  # only read
    ckpt = out / "checkpoints" / "checkpoint-2"
    pickled = sorted(p.name for p in ckpt.iterdir() if p.suffix in (".pt", ".pth", ".bin"))
    assert {"optimizer.pt", "rng_state.pth", "scheduler.pt"} <= set(pickled)
    validate_checkpoint(ckpt)
    assert {"python", "numpy", "cpu"} <= set(safe_torch_load(ckpt / "rng_state.pth"))
