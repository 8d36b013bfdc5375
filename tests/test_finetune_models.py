"""The model layer on real models: resolution, LoRA wrapping, heads, losses, Trainer, evaluation."""

from __future__ import annotations

from pathlib import Path

import pytest

from data_fixtures import data_root_or_skip  # first: sets HF_HUB_OFFLINE before transformers loads

# isort: split
import torch

from balancedness.finetune.data import load_task
from balancedness.finetune.models import load_for_task, resolve_model
from balancedness.finetune.prompts import prompt_for
from balancedness.finetune.tasks import ChoiceScorer, bleu, evaluate, label_word_ids

LORA_MINILM_R8 = 6 * 2 * (8 * 384 + 384 * 8)  # 6 layers x {query, value} x (A + B) = 73,728


@pytest.fixture(scope="module")
def root() -> Path:
    return data_root_or_skip()


@pytest.fixture(scope="module")
def sst2(root: Path):
    return load_task("sst2", data_root=root, seed=42, shots=4, max_eval=24)


@pytest.fixture(scope="module")
def minilm_sst2(sst2):
    return load_for_task("minilm", sst2)


def _trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_resolve_model_names() -> None:
    assert (Path(resolve_model("minilm")) / "config.json").is_file()
    assert resolve_model("someone/some-model") == "someone/some-model"  # hub ids pass through
    with pytest.raises(ValueError, match=r"unknown model 'not a model!'.*minilm"):
        resolve_model("not a model!")


def test_resolve_model_rejects_folders_without_config(tmp_path: Path) -> None:
    assert resolve_model(str(Path(resolve_model("minilm")))) == resolve_model("minilm")
    with pytest.raises(ValueError, match="no config.json"):
        resolve_model(str(tmp_path))


def test_minilm_lora_has_the_right_trainable_parameters(minilm_sst2) -> None:
    model, tokenizer, head = minilm_sst2
    assert head.mode == "classifier"
    assert head.module is model
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sum(".lora_A." in n for n in names) == sum(".lora_B." in n for n in names) == 12
    assert _trainable(model) == LORA_MINILM_R8 + 384 * 2 + 2  # + the classifier head (weight, bias)


def test_minilm_batch_gives_a_loss_and_gradients(minilm_sst2, sst2) -> None:
    model, _, head = minilm_sst2
    data = head.dataset(sst2.train)
    batch = head.collate([data[i] for i in range(4)])
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    model.zero_grad()
    loss = head.module(**batch).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.zero_grad()


def test_minilm_trains_with_the_hf_trainer(minilm_sst2, sst2, tmp_path: Path) -> None:
    model, _, head = minilm_sst2
    head_weight = model.base_model.model.classifier.modules_to_save["default"].weight.detach().clone()
    _train_two_steps(head, sst2.train, tmp_path)
    assert not torch.equal(model.base_model.model.classifier.modules_to_save["default"].weight, head_weight)


def test_evaluate_runs_on_a_small_eval_subset(minilm_sst2) -> None:
    _, _, head = minilm_sst2
    result = evaluate(head, batch_size=8, max_examples=10)
    assert result["metric"] == "accuracy"
    assert result["n"] == 10
    assert 0.0 <= result["accuracy"] <= 1.0


def test_target_modules_that_match_nothing_raise(sst2) -> None:
    with pytest.raises(ValueError, match=r"\['q_proj'\] match no module.*available: .*'query'"):
        load_for_task("minilm", sst2, target_modules=["q_proj"])


def test_encoder_on_a_generation_task_raises_before_loading(root: Path) -> None:
    webnlg = load_task("webnlg", data_root=root, shots=2, max_eval=2)
    with pytest.raises(ValueError, match="generation task.*encoder.*smollm2"):
        load_for_task("minilm", webnlg)


def test_bad_lora_rank_and_offline_hub_id_raise(sst2) -> None:
    with pytest.raises(ValueError, match="lora_r must be an integer >= 1, got 0"):
        load_for_task("minilm", sst2, lora_r=0)
    with pytest.raises(OSError, match="no internet here"):
        load_for_task("nobody-xyz/no-such-model-xyz", sst2)


def test_bleu_allows_a_variable_number_of_references() -> None:
    assert bleu(["the cat sat on the mat"], [["the cat sat on the mat", "a cat was on a mat"]]) == pytest.approx(100)
    assert bleu(["a b c d", "x y z w"], [["a b c d"], ["x y z w", "q"]]) == pytest.approx(100)


# ---- SmolLM2 (the first call converts the GGUF, ~20 s; later runs reuse the cache) ------------


@pytest.fixture(scope="module")
def smollm2_path() -> str:
    return resolve_model("smollm2")


@pytest.mark.slow
def test_label_words_are_distinct_for_every_classification_task(root: Path, smollm2_path: str) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_path)
    for name in ["bbc-news", "sst2", "sst5", "trec", "rte", "snli", "mnli", "cb", "boolq"]:
        task = load_task(name, data_root=root, max_eval=1)
        words = prompt_for(task).label_words
        assert len(words) == task.num_labels
        assert len(set(label_word_ids(tokenizer, words))) == task.num_labels, name
    with pytest.raises(ValueError, match="start with the same token"):
        label_word_ids(tokenizer, [" Yes", " Yes indeed"])


@pytest.mark.slow
@pytest.mark.parametrize("name, mode", [("sst2", "label-words"), ("copa", "choices"), ("webnlg", "generation")])
def test_smollm2_heads_give_a_valid_loss_and_gradient(
    root: Path, smollm2_path: str, name: str, mode: str, tmp_path: Path
) -> None:
    task = load_task(name, data_root=root, shots=2, max_eval=2)
    model, tokenizer, head = load_for_task("smollm2", task)
    assert head.mode == mode
    assert _trainable(model) == 30 * ((8 * 576 + 576 * 8) + (8 * 576 + 192 * 8))  # q_proj + v_proj
    if mode != "generation":
        assert isinstance(head.module, ChoiceScorer)
    data = head.dataset(task.train)
    out = head.module(**head.collate([data[0], data[1]]))
    out.loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if ".lora_B." in n]
    assert torch.isfinite(out.loss)
    assert out.loss > 0
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    if mode != "generation":
        assert out.logits.shape == (2, task.num_labels)
    result = evaluate(head, batch_size=2, max_new_tokens=8)
    assert result["n"] == 2
    assert result[task.metric] >= 0.0
    _train_two_steps(head, task.train, tmp_path)


def _train_two_steps(head, examples, tmp_path: Path) -> None:
    """Two HF Trainer steps on ``head.module``; every LoRA B matrix must move."""
    from transformers import Trainer, TrainingArguments

    model = head.model
    before = {n: p.detach().clone() for n, p in model.named_parameters() if ".lora_B." in n}
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
    )
    Trainer(model=head.module, args=args, train_dataset=head.dataset(examples), data_collator=head.collator).train()
    assert all(not torch.equal(p, before[n]) for n, p in model.named_parameters() if n in before)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sst2", "copa"])
def test_padded_batches_score_like_each_example_alone(root: Path, smollm2_path: str, name: str) -> None:
    """The transformers collators pad on the right (label words read the last real token) and COPA's
    ``choice_start`` masks exactly each continuation: every logit of a padded batch equals the one computed
    from that example alone, without padding (log p summed over the continuation's tokens for choices)."""
    task = load_task(name, data_root=root, shots=4, max_eval=2)
    model, _, head = load_for_task("smollm2", task)
    model.eval()
    features = [head.features(ex)[0] for ex in task.train[:4]]
    batch = head.collator(features)
    lengths = [len(r) for f in features for r in (f["input_ids"] if name == "copa" else [f["input_ids"]])]
    assert len(set(lengths)) > 1, "the check needs rows of different lengths"
    with torch.no_grad():
        logits = head.module(**batch).logits
        for b, f in enumerate(features):
            if name == "sst2":
                alone = model(input_ids=torch.tensor([f["input_ids"]])).logits[0, -1, head.module.word_ids]
                torch.testing.assert_close(logits[b], alone, atol=1e-4, rtol=1e-4)
                continue
            for c, (ids, start) in enumerate(zip(f["input_ids"], f["choice_start"], strict=True)):
                logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, :-1].float(), dim=-1)
                alone = sum(logp[t - 1, ids[t]] for t in range(start, len(ids)))
                torch.testing.assert_close(logits[b, c], alone, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_label_words_run_the_lm_head_only_at_the_last_positions(root: Path, smollm2_path: str) -> None:
    """SmolLM2 takes ``logits_to_keep``, so the label-word head projects only the batch's distinct last positions
    onto the vocabulary; on a padded batch of rows of different lengths its logits and LoRA gradients equal, bit for
    bit, those of the full [B, L, V] projection (the path of a model without ``logits_to_keep``)."""
    task = load_task("sst2", data_root=root, shots=4, max_eval=2)
    model, _, head = load_for_task("smollm2", task)
    scorer = head.module
    assert scorer.keeps_logits
    batch = head.collator([head.features(ex)[0] for ex in task.train[:6]])
    assert len(set(batch["attention_mask"].sum(dim=1).tolist())) > 2, "the check needs rows of different lengths"

    def logits_and_grads(keep: bool):
        scorer.keeps_logits = keep
        model.zero_grad(set_to_none=True)
        out = scorer(**batch)
        out.loss.backward()
        return out.logits.detach(), [p.grad.clone() for n, p in model.named_parameters() if ".lora_" in n]

    kept, full = logits_and_grads(True), logits_and_grads(False)
    assert torch.equal(kept[0], full[0])
    assert all(torch.equal(a, b) for a, b in zip(kept[1], full[1], strict=True))
