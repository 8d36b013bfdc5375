"""Task heads: tokenization, collation, the label-word loss, and evaluation for each task kind.

``make_head`` (called by ``models.load_for_task``) picks one of four modes:

=================  ==========================================================================
``classifier``     encoder + sequence-classification head; the peft model computes the loss.
``label-words``    causal LM; logits over the label words' first tokens at the last prompt
                   position, cross-entropy over those C logits (``ChoiceScorer``).
``choices``        causal LM, per-example continuations (COPA): each choice's summed token
                   log-probability is its logit, cross-entropy over the choices (``ChoiceScorer``).
``generation``     causal LM; next-token cross-entropy on the reference text only (prompt masked).
=================  ==========================================================================

The training loop hands ``head.module`` to the HF Trainer as ``model``, ``head.dataset(task.train)`` (a
``datasets.Dataset`` of token ids) as ``train_dataset`` and ``head.collator`` as ``data_collator``;
``evaluate(head)`` scores the eval set. Padding is done by the transformers collators, on the right for
training and scoring (``ChoiceScorer`` reads the last real token) and on the left for generation:

=================  ==========================================================================
``classifier``     ``DataCollatorWithPadding``
``label-words``    ``DataCollatorWithPadding``
``choices``        ``DataCollatorForMultipleChoice`` (``choice_start``: where each continuation
                   begins, so the choice mask needs no padding of its own)
``generation``     ``DataCollatorForSeq2Seq`` (labels padded with -100); ``tokenizer.pad`` on the
                   left for greedy decoding
=================  ==========================================================================
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F
from transformers.modeling_outputs import SequenceClassifierOutput

from .data import Example, TaskData
from .data.core import eval_subset
from .prompts import Prompt, encoder_texts, prompt_for

HeadMode = Literal["classifier", "label-words", "choices", "generation"]
SHORT_TASKS = {"sst2", "sst5", "trec"}


def default_max_length(task: TaskData) -> int:
    """128 tokens for single-sentence tasks, 256 for pairs, BBC articles, BoolQ and WebNLG."""
    short = task.name in SHORT_TASKS or (task.name not in {"bbc-news", "webnlg"} and len(task.text_fields) == 1)
    return 128 if short else 256


def label_word_ids(tokenizer: Any, words: Sequence[str]) -> list[int]:
    """The first token id of each label word; a ValueError when two words share their first token."""
    ids = []
    for word in words:
        tokens = tokenizer.encode(word, add_special_tokens=False)
        if not tokens:
            raise ValueError(f"label word {word!r} encodes to no token")
        ids.append(tokens[0])
    clashes = [w for w, i in zip(words, ids, strict=True) if ids.count(i) > 1]
    if clashes:
        raise ValueError(
            f"label words {clashes} start with the same token for this tokenizer; choose words "
            f"whose first tokens differ (or use an encoder with a classification head)"
        )
    return ids


class ChoiceScorer(nn.Module):
    """Causal-LM classification by scoring candidate continuations; what the Trainer trains.

    Label words (``choice_start`` absent): logits_c = z_T[w_c], the LM's next-token logit of label word
    c's first token at the last prompt position T. Choices (``input_ids`` of shape [B, C, L] and
    ``choice_start`` of shape [B, C] or [B, C, 1], the position where choice c's tokens begin):
    logits_c = Σ_{t ≥ start_c, t real} log p(x_t | x_<t) over the tokens of choice c. Loss: cross-entropy of these C
    logits against ``labels``. Parameters are the wrapped peft model's, so lora_A/lora_B names stay
    visible (``model.base_model.model...lora_A.default.weight``).
    """

    def __init__(self, model: nn.Module, word_ids: Sequence[int] | None = None) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("word_ids", torch.tensor(list(word_ids or []), dtype=torch.long), persistent=False)
        self.keeps_logits = _takes_logits_to_keep(model)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
        choice_start: torch.Tensor | None = None,
    ) -> SequenceClassifierOutput:
        """Return ``loss`` (when ``labels`` is given) and ``logits`` of shape [B, C]."""
        if choice_start is None:
            logits = self._label_word_logits(input_ids, attention_mask)
        else:
            logits = self._choice_logits(input_ids, attention_mask, choice_start)
        loss = F.cross_entropy(_at_least_fp32(logits), labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)

    def _label_word_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """z_T[w_c] at each row's last real position T. The LM head runs only at the batch's distinct last
        positions (``logits_to_keep``; a [B, L, V] logit tensor at 49k words costs a fifth of SmolLM2's forward),
        or at every position for a model whose forward does not take ``logits_to_keep``."""
        last = attention_mask.sum(dim=1) - 1  # right padding: the last real token
        at, extra = last, {}
        if self.keeps_logits:  # the distinct last positions, and where each row's is among them
            keep, at = torch.unique(last, return_inverse=True)
            extra = {"logits_to_keep": keep}
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits  # [B, K or L, V]
        return logits[torch.arange(input_ids.shape[0], device=input_ids.device), at][:, self.word_ids]

    def _choice_logits(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, choice_start: torch.Tensor
    ) -> torch.Tensor:
        b, c, length = input_ids.shape
        flat = lambda t: t.reshape(b * c, length)  # noqa: E731
        ids, mask = flat(input_ids), flat(attention_mask)
        positions = torch.arange(length, device=ids.device)
        in_choice = (positions >= choice_start.reshape(b * c, 1)) & mask.bool()
        logits = self.model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        token_logp = torch.log_softmax(_at_least_fp32(logits), dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        return (token_logp * in_choice[:, 1:].to(token_logp.dtype)).sum(dim=1).reshape(b, c)


def _takes_logits_to_keep(model: nn.Module) -> bool:
    """Whether the causal LM under ``model`` (a peft model or the LM itself) takes ``logits_to_keep``."""
    import inspect

    get_base = getattr(model, "get_base_model", None)
    base = get_base() if callable(get_base) else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """``t`` upcast to fp32 when it is bf16/fp16; fp32 and fp64 stay as they are."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


@dataclass
class TaskHead:
    """How one model meets one task: tokenization, collation, the trainable module, prediction.

    ``module`` is what the Trainer trains: the peft model itself (``classifier``, ``generation``) or
    a :class:`ChoiceScorer` around it (``label-words``, ``choices``).
    """

    mode: HeadMode
    module: nn.Module
    model: nn.Module
    tokenizer: Any
    task: TaskData
    max_length: int
    prompt: Prompt | None = None

    # ---- tokenization -------------------------------------------------------------------------
    def _ids(self, text: str, budget: int) -> list[int]:
        """Token ids of a prompt, truncated from the left to ``budget`` (the template end survives)."""
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        bos = self.tokenizer.bos_token_id
        prefix = [bos] if bos is not None and getattr(self.tokenizer, "add_bos_token", False) else []
        return prefix + ids[max(0, len(ids) - (budget - len(prefix))) :]

    def _prompt(self) -> Prompt:
        if self.prompt is None:
            raise ValueError(f"a {self.mode!r} task head needs a prompt")
        return self.prompt

    def features(self, example: Example, *, train: bool = True) -> list[dict[str, Any]]:
        """Feature dicts for one example (generation training: one per reference)."""
        tok, n = self.tokenizer, self.max_length
        if self.mode == "classifier":
            enc = tok(*encoder_texts(self.task, example), truncation=True, max_length=n)
            return [{**{k: list(v) for k, v in enc.items()}, "labels": example.label}]
        prompt = self._prompt()
        prompt_text = prompt.render(example)
        if self.mode == "label-words":
            return [{"input_ids": self._ids(prompt_text, n), "labels": example.label}]
        if self.mode == "choices":
            rows, starts = [], []
            if prompt.choices is None:
                raise ValueError(f"task {self.task.name!r}: a 'choices' head needs a prompt with choices")
            for choice in prompt.choices(example):
                cont = tok.encode(choice, add_special_tokens=False)[: n // 2]
                ids = self._ids(prompt_text, n - len(cont)) + cont
                rows.append(ids)
                starts.append(len(ids) - len(cont))
            return [{"input_ids": rows, "choice_start": starts, "labels": example.label}]
        if not train:
            return [{"input_ids": self._ids(prompt_text, n)}]
        out = []
        for ref in example.references or []:
            target = tok.encode(" " + ref, add_special_tokens=False)[: n // 2] + [tok.eos_token_id]
            ids = self._ids(prompt_text, n - len(target)) + target
            out.append({"input_ids": ids, "labels": [-100] * (len(ids) - len(target)) + target})
        return out

    def dataset(self, examples: Sequence[Example], *, train: bool = True):
        """A ``datasets.Dataset`` of the examples' features (see :meth:`features`), for the HF Trainer."""
        from datasets import Dataset

        return Dataset.from_list([f for ex in examples for f in self.features(ex, train=train)])

    # ---- collation ----------------------------------------------------------------------------
    @property
    def collator(self) -> Any:
        """The transformers collator that pads this head's training batches (see the module docstring)."""
        from transformers import DataCollatorForMultipleChoice, DataCollatorForSeq2Seq, DataCollatorWithPadding

        if self.tokenizer.padding_side != "right":
            raise ValueError(
                f"the tokenizer pads on the {self.tokenizer.padding_side!r}; training batches need "
                "right padding (set tokenizer.padding_side = 'right')"
            )
        if self.mode == "choices":
            return DataCollatorForMultipleChoice(self.tokenizer)
        if self.mode == "generation":
            return DataCollatorForSeq2Seq(self.tokenizer, label_pad_token_id=-100)
        return DataCollatorWithPadding(self.tokenizer)

    def collate(self, features: list[dict[str, Any]], *, left: bool = False) -> dict[str, torch.Tensor]:
        """Pad a list of features into a batch with :attr:`collator` (``left``: prompts for generation)."""
        if left:
            return dict(self.tokenizer.pad(features, padding_side="left", return_tensors="pt"))
        if self.mode == "choices" and "labels" not in features[0]:  # the collator needs labels; scoring does not
            batch = dict(self.collator([{**f, "labels": 0} for f in features]))
            batch.pop("labels")
        else:
            batch = dict(self.collator(features))
        if self.mode == "choices":  # DataCollatorForMultipleChoice keeps a trailing axis of 1 on per-choice ints
            batch["choice_start"] = batch["choice_start"].reshape(len(features), -1)
        return batch

    # ---- prediction ---------------------------------------------------------------------------
    @torch.no_grad()
    def predict(
        self, examples: Sequence[Example], *, batch_size: int = 16, max_new_tokens: int = 64
    ) -> list[int] | list[str]:
        """Class ids (classification) or greedy generations (generation) for ``examples``."""
        was_training = self.module.training
        self.module.eval()
        device = next(self.module.parameters()).device
        out: list = []
        try:
            for start in range(0, len(examples), batch_size):
                chunk = examples[start : start + batch_size]
                feats = [f for ex in chunk for f in self.features(ex, train=False)]
                if self.mode == "generation":
                    out.extend(self._generate(feats, device, max_new_tokens))
                    continue
                for f in feats:
                    f.pop("labels", None)
                batch = {k: v.to(device) for k, v in self.collate(feats).items()}
                out.extend(self.module(**batch).logits.argmax(dim=-1).tolist())
        finally:
            self.module.train(was_training)
        return out

    def _generate(self, feats: list[dict[str, Any]], device: torch.device, max_new_tokens: int) -> list[str]:
        batch = {k: v.to(device) for k, v in self.collate(feats, left=True).items()}
        gen = self.model.generate(  # type: ignore[operator]  # a causal LM's (nn.Module.__getattr__ is untyped)
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
        )
        texts = self.tokenizer.batch_decode(gen[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        return [" ".join(t.strip().split("\n")[0].split()) for t in texts]


def make_head(
    model: nn.Module, tokenizer: Any, task: TaskData, *, family: str, max_length: int | None = None
) -> TaskHead:
    """The :class:`TaskHead` for ``model`` (``family`` "encoder" or "causal") on ``task``."""
    n = max_length or default_max_length(task)
    if family == "encoder":
        return TaskHead("classifier", model, model, tokenizer, task, n)
    prompt = prompt_for(task)
    if task.kind == "generation":
        return TaskHead("generation", model, model, tokenizer, task, n, prompt)
    if prompt.choices is not None:
        return TaskHead("choices", ChoiceScorer(model), model, tokenizer, task, n, prompt)
    ids = label_word_ids(tokenizer, prompt.label_words)
    return TaskHead("label-words", ChoiceScorer(model, ids), model, tokenizer, task, n, prompt)


def bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU (sacrebleu, default 13a tokenization) with a variable number of references."""
    import sacrebleu

    width = max(len(r) for r in references)
    streams = [[refs[i] if i < len(refs) else None for refs in references] for i in range(width)]
    return float(sacrebleu.corpus_bleu(list(hypotheses), streams).score)  # type: ignore[arg-type]  # None: no ref


def evaluate(
    head: TaskHead,
    examples: Sequence[Example] | None = None,
    *,
    batch_size: int = 16,
    max_examples: int | None = None,
    max_new_tokens: int = 64,
) -> dict[str, float]:
    """The task metric on ``examples`` (default: the task's eval set).

    Returns ``{"metric": name, name: value, "n": count}`` with accuracy in [0, 1] for classification
    and BLEU in [0, 100] (greedy decoding) for generation. ``max_examples`` keeps a fixed subset
    (seed 0) to keep evaluation cheap. Before training this is the zero-shot baseline.
    """
    examples = eval_subset(list(head.task.eval if examples is None else examples), max_examples)
    if not examples:
        raise ValueError("evaluate() got no examples")
    preds = head.predict(examples, batch_size=batch_size, max_new_tokens=max_new_tokens)
    if head.task.kind == "generation":
        value = bleu([str(p) for p in preds], [ex.references or [""] for ex in examples])
    else:
        value = sum(int(p == ex.label) for p, ex in zip(preds, examples, strict=True)) / len(examples)
    return {"metric": head.task.metric, head.task.metric: value, "n": len(examples)}  # type: ignore[dict-item]  # keyed by the metric


def majority_accuracy(task: TaskData) -> float:
    """Accuracy of always predicting the most frequent eval label (the majority baseline)."""
    if task.kind != "classification":
        raise ValueError(f"task {task.name!r} is a {task.kind} task; the majority baseline needs classification")
    counts = Counter(ex.label for ex in task.eval)
    return max(counts.values()) / len(task.eval)
