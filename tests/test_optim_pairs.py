"""lora_pairs / lora_balancedness / lora_grad_gap on real peft models (Linear, Conv1D, Embedding, DoRA)."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

from balancedness.optim import lora_balancedness, lora_grad_gap, lora_pairs
from finetune_fixtures import batch_loss, minilm_lora, sst2_batch


@pytest.fixture(scope="module")
def minilm():
    return minilm_lora(seed=0)


def test_minilm_pairs_by_name(minilm):
    pairs = lora_pairs(minilm)
    assert len(pairs) == 12  # 6 layers × (query, value)
    for pair in pairs:
        assert pair.name.endswith((".query.default", ".value.default"))
        assert pair.lora_A.shape == (4, 384)
        assert pair.lora_B.shape == (384, 4)
        assert pair.scaling == 2.0  # lora_alpha / r = 8 / 4
    names = {n: p for n, p in minilm.named_parameters()}
    a_name = next(n for n, p in names.items() if p is pairs[3].lora_A)
    assert names[a_name.replace(".lora_A.", ".lora_B.")] is pairs[3].lora_B


def test_balancedness_and_grad_gap_values(minilm):
    minilm.zero_grad()
    batch_loss(minilm, sst2_batch(4)).backward()
    bal, gap = lora_balancedness(minilm), lora_grad_gap(minilm)
    for pair in lora_pairs(minilm):
        a, b = pair.lora_A.detach().double(), pair.lora_B.detach().double()
        assert bal[pair.name] == pytest.approx(0.5 * (a.square().sum() - b.square().sum()).item(), rel=1e-5)
        ga, gb = pair.lora_A.grad.double(), pair.lora_B.grad.double()
        assert gap[pair.name] == pytest.approx((ga.square().sum() - gb.square().sum()).item(), rel=1e-4, abs=1e-12)
    assert any(v != 0 for v in gap.values())
    minilm.zero_grad()
    assert lora_grad_gap(minilm) == {}


def _tiny_gpt2() -> nn.Module:
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=64, n_positions=32))


def test_gpt2_conv1d_and_embedding_lora():
    model = get_peft_model(_tiny_gpt2(), LoraConfig(r=2, target_modules=["c_attn", "wte"]))
    pairs = lora_pairs(model)
    names = [p.name for p in pairs]
    assert sum(".c_attn." in n for n in names) == 2
    emb = [p for p in pairs if p.name.endswith("wte.default")]
    assert len(emb) == 1  # lora_embedding_A ↔ lora_embedding_B
    assert emb[0].lora_A.shape == (2, 64)
    assert emb[0].lora_B.shape == (16, 2)
    assert set(lora_balancedness(model)) == set(names)


def test_dora_magnitude_is_not_a_factor():
    model = get_peft_model(_tiny_gpt2(), LoraConfig(r=2, target_modules=["c_attn"], use_dora=True))
    assert any("lora_magnitude_vector" in n for n, _ in model.named_parameters())
    pairs = lora_pairs(model)
    assert len(pairs) == 2
    assert all(".lora_A." not in p.name for p in pairs)


def test_multiple_adapters():
    model = get_peft_model(_tiny_gpt2(), LoraConfig(r=2, target_modules=["c_attn"]))
    model.add_adapter("second", LoraConfig(r=3, target_modules=["c_attn"]))
    model.base_model.set_adapter(["default", "second"])
    names = [p.name for p in lora_pairs(model)]
    assert sum(n.endswith(".second") for n in names) == 2
    assert sum(n.endswith(".default") for n in names) == 2


def test_errors():
    with pytest.raises(ValueError, match="lora_A/lora_B"):
        lora_pairs(_tiny_gpt2())
    with pytest.raises(TypeError, match="nn.Module"):
        lora_pairs("not a model")
    model = get_peft_model(_tiny_gpt2(), LoraConfig(r=2, target_modules=["c_attn"]))
    for name, p in model.named_parameters():
        if ".lora_B." in name:
            p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable partner"):
        lora_pairs(model)
