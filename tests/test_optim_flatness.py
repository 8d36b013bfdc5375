"""FlatLoRATrainer / BiLoRATrainer on real MiniLM LoRA runs of the HF Trainer (spec flatness-methods.md §2, §3)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from balancedness.optim import BiLoRA, FlatLoRA, bilora_norm, flat_lora_layers
from balancedness.optim.bilora import AUX_FILE, BiLoRATrainer
from balancedness.optim.flatlora import FlatLoRATrainer
from finetune_fixtures import Sequential, minilm_lora, sst2_batch, sst2_dataset, trainable, training_args


def _args(tmp_path, **kw):
    """``training_args`` with four steps at lr 5e-3 (Flat-LoRA's and Bi-LoRA's effects need a few)."""
    return training_args(tmp_path, **{"max_steps": 4, "learning_rate": 5e-3, **kw})


class SeqFlat(Sequential, FlatLoRATrainer):
    pass


class SeqBi(Sequential, BiLoRATrainer):
    pass


def _base_weights(model):
    return {layer.name: layer.weight.detach().clone() for layer in flat_lora_layers(model)}


def _flat_run(tmp_path, *, dtype=torch.float32, seed=0, flat_seed=None, sigma=0.05, **args):
    model = minilm_lora(seed=3, dtype=dtype)
    before = _base_weights(model)
    trainer = SeqFlat(
        model=model,
        args=_args(tmp_path, **args),
        train_dataset=sst2_dataset(16),
        flat_sigma=sigma,
        flat_noise_schedule="constant",
        flat_seed=flat_seed,
    )
    trainer.train()
    return model, before


def test_flat_lora_leaves_w0_bit_exact_in_bf16(tmp_path):
    """bf16 weights, bf16 autocast, accumulation 2, σ = 0.2: W0 after training is W0 before, bit for bit (the
    official add-then-subtract drifts in bf16, spec §2.1 item 5); the noise did act (LoRA moved unlike σ = 0)."""
    model, before = _flat_run(
        tmp_path,
        dtype=torch.bfloat16,
        sigma=0.2,
        bf16=True,
        gradient_accumulation_steps=2,
        per_device_train_batch_size=2,
        max_steps=6,
    )
    after = _base_weights(model)
    assert all(w.dtype == torch.bfloat16 for w in after.values())
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(p.grad is not None for layer in flat_lora_layers(model) for p in [layer.weight])
    plain, _ = _flat_run(
        tmp_path,
        dtype=torch.bfloat16,
        sigma=0.0,
        bf16=True,
        gradient_accumulation_steps=2,
        per_device_train_batch_size=2,
        max_steps=6,
    )
    noisy, clean = trainable(model), trainable(plain)
    assert max((noisy[k].float() - clean[k].float()).abs().max() for k in noisy if "lora_" in k) > 0


def test_flat_lora_draws_are_seeded(tmp_path):
    """The same seed gives the same run bit for bit; another ``flat_seed`` other draws."""
    runs = [trainable(_flat_run(tmp_path, flat_seed=s)[0]) for s in (None, None, 7)]
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert any(not torch.equal(runs[0][k], runs[2][k]) for k in runs[0] if "lora_" in k)


def test_flat_lora_draws_depend_on_seed_and_step_only():
    """E of (seed, step) is the same whenever it is drawn, another for another step or seed; the global RNG is
    left alone."""
    model = minilm_lora(seed=1)

    def noise(seed, step):
        flat = FlatLoRA(model, 0.1, noise_schedule="constant", seed=seed)
        w0 = flat.layers[0].weight.detach().clone()
        with flat.perturbed(step):
            return flat.layers[0].weight.detach() - w0

    state = torch.get_rng_state()
    e = noise(0, 5)
    assert torch.equal(e, noise(0, 5))
    assert not torch.equal(e, noise(0, 6))
    assert not torch.equal(e, noise(1, 5))
    assert torch.equal(torch.get_rng_state(), state)


def test_flat_lora_one_draw_per_optimizer_step(tmp_path):
    """Accumulation over 2 micro-batches of 2 shares one draw: the same update as one batch of 4 (SGD)."""
    runs = [
        trainable(
            _flat_run(tmp_path, optim="sgd", per_device_train_batch_size=b, gradient_accumulation_steps=k, max_steps=3)[
                0
            ]
        )
        for b, k in ((4, 1), (2, 2))
    ]
    assert max((runs[0][k] - runs[1][k]).abs().max() for k in runs[0]) < 1e-6


def test_flat_lora_perturbation_follows_the_filter_norms():
    """E = σ‖W′_{i,:}‖/√in ξ per row: the perturbed weight minus W0, over the drawn ξ (``noise=``)."""
    model = minilm_lora(seed=1)
    flat = FlatLoRA(model, 0.1, noise_schedule="constant")
    layer = flat.layers[0]
    w0 = layer.weight.detach().clone()
    xi = {i: torch.randn(fl.weight.shape) for i, fl in enumerate(flat.layers)}
    with flat.perturbed(0, noise=lambda i, shape: xi[i]):
        A, B, s = layer.factors[0]
        merged = w0 + s * B.detach() @ A.detach()
        expected = 0.1 * merged.norm(dim=1, keepdim=True) / w0.shape[1] ** 0.5 * xi[0]
        assert torch.allclose(layer.weight - w0, expected, atol=1e-6)
    assert torch.equal(layer.weight, w0)


# ----------------------------------------------------------------------------------------------- Bi-LoRA
def _adapter_keys(folder):
    return sorted(load_file(str(folder / "adapter_model.safetensors")))


class _Norms(TrainerCallback):
    """c after every optimizer step."""

    def __init__(self, trainer, out):
        self.trainer, self.out = trainer, out

    def on_step_end(self, *args, **kwargs):
        self.out.append(float(bilora_norm(self.trainer.bilora.adapters)))


def test_bilora_aux_never_reaches_the_users_adapter(tmp_path):
    """Trained with the auxiliary (which moved and stayed within ρ), the model saves exactly its own LoRA keys,
    checkpoints keep the auxiliary in a file of its own, and after training no hook is left on the model."""
    model = minilm_lora(seed=3)
    reference = tmp_path / "reference"
    model.save_pretrained(reference)
    trainer = SeqBi(
        model=model,
        args=_args(tmp_path / "run", save_strategy="steps", save_steps=2),
        train_dataset=sst2_dataset(16),
        bilora_rank=2,
        bilora_rho=0.05,
    )
    norms = []
    trainer.add_callback(_Norms(trainer, norms))
    trainer.train()
    assert len(norms) == 4
    assert max(norms) <= 0.05 * (1 + 1e-6)
    assert norms[-1] > 0
    assert any(a.lora_B.abs().max() > 0 for a in trainer.bilora.adapters)  # the auxiliary ascended
    saved = tmp_path / "saved"
    model.save_pretrained(saved)
    assert _adapter_keys(saved) == _adapter_keys(reference)
    assert not any(m._forward_hooks for m in model.modules())
    checkpoint = tmp_path / "run" / "checkpoint-2"
    assert _adapter_keys(checkpoint) == _adapter_keys(reference)
    assert (checkpoint / AUX_FILE).is_file()
    aux = torch.load(checkpoint / AUX_FILE, weights_only=True)
    assert len(aux) == 2 * len(flat_lora_layers(model))


def test_bilora_resume_continues_the_auxiliary(tmp_path):
    """4 steps straight = 2 steps, a checkpoint, and 2 resumed steps (the auxiliary comes back from its file)."""

    def run(folder, resume=None, steps=4):
        model = minilm_lora(seed=3)
        trainer = SeqBi(
            model=model,
            args=_args(folder, max_steps=steps, save_strategy="steps", save_steps=2),
            train_dataset=sst2_dataset(16),
            bilora_rank=2,
            bilora_rho=0.05,
        )
        trainer.train(resume_from_checkpoint=resume)
        return trainable(model)

    straight = run(tmp_path / "a")
    run(tmp_path / "b", steps=4)
    resumed = run(tmp_path / "b", resume=str(tmp_path / "b" / "checkpoint-2"))
    assert max((straight[k] - resumed[k]).abs().max() for k in straight) < 1e-6
    state = json.loads((tmp_path / "b" / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4


def test_bilora_forward_adds_the_auxiliary():
    """h = W0x + sB₁A₁x + s₂B₂A₂x: with B₂ ≠ 0 the output moves; after ``remove()`` it is the model's again."""
    model = minilm_lora(seed=2).eval()
    batch = sst2_batch(2, max_length=16)
    with torch.no_grad():
        clean = model(**batch).logits
        bilora = BiLoRA(model, rank=2)
        assert torch.equal(model(**batch).logits, clean)  # B₂ = 0 at init
        for a in bilora.adapters:
            a.lora_B.normal_(0.0, 0.1)
        assert not torch.allclose(model(**batch).logits, clean)
        bilora.remove()
        assert torch.equal(model(**batch).logits, clean)


@pytest.mark.parametrize("bad", [dict(bilora_rank=0), dict(bilora_rho=-1.0), dict(bilora_kappa=0.0)])
def test_bilora_refuses_bad_settings(tmp_path, bad):
    with pytest.raises(ValueError):
        SeqBi(model=minilm_lora(), args=_args(tmp_path), train_dataset=sst2_dataset(4), **bad)


def test_bilora_under_a_grad_scaler_takes_the_unscaled_step():
    """fp16-style loss scaling (``torch.amp.GradScaler``): the auxiliary's group is unscaled with the others, so
    one scaled step equals the unscaled one; an overflowed step moves neither the adapters nor the auxiliary."""
    batch = sst2_batch(4, max_length=16)
    results = []
    for scaled in (False, True, "overflow"):
        model = minilm_lora(seed=4)
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-2)  # SGD: scale shows
        bilora = BiLoRA(model, rank=2, rho=1e-3)
        with torch.no_grad():
            for a in bilora.adapters:
                a.lora_B.normal_(0.0, 0.01)
        bilora.attach(opt, 1e-2)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10) if scaled else None
        loss = model(**batch).loss * (float("inf") if scaled == "overflow" else 1.0)
        (scaler.scale(loss) if scaler else loss).backward()
        before = [p.detach().clone() for p in bilora.parameters()]
        if scaler:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        results.append((trainable(model), [p.detach().clone() for p in bilora.parameters()], before))
    (plain, aux, _), (scaled_, aux_s, _), (over, aux_o, before_o) = results
    assert max((plain[k] - scaled_[k]).abs().max() for k in plain) < 1e-6
    assert max((a - b).abs().max() for a, b in zip(aux, aux_s, strict=True)) < 1e-6
    assert all(torch.equal(a, b) for a, b in zip(aux_o, before_o, strict=True))  # skipped: no ascent, no clip


def test_flat_lora_and_bi_lora_need_torch_alone():
    """``FlatLoRA`` on given layers and ``bilora_clip_`` run with transformers unimportable; the Trainers do not."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import sys
        sys.modules["transformers"] = None
        import torch
        from torch import nn
        import balancedness.optim as optim
        from balancedness.optim.bilora import AuxAdapter
        w0 = nn.Parameter(torch.randn(3, 4), requires_grad=False)
        A, B = torch.randn(2, 4), torch.randn(3, 2)
        flat = optim.FlatLoRA([optim.flatlora.FlatLayer("l", w0, ((A, B, 1.0),))], 0.1, noise_schedule="constant")
        before = w0.detach().clone()
        with flat.perturbed(0):
            assert not torch.equal(w0, before)
        assert torch.equal(w0, before)
        aux = AuxAdapter("l", nn.Parameter(torch.ones(1, 4)), nn.Parameter(torch.ones(3, 1)), 1.0)
        assert optim.bilora_clip_([aux], 0.5) > 0.5 and abs(float(optim.bilora_norm([aux])) - 0.5) < 1e-6
        for name in ("FlatLoRATrainer", "BiLoRATrainer"):
            try:
                getattr(optim, name)
            except ImportError:
                continue
            raise AssertionError(name + " should need transformers")
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok", done.stderr
