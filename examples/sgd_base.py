"""The flatness spec's §5 item 5 on a real model: per LoRA layer, with a plain-SGD base and weight decay 0, does
A·Aᵀ − Bᵀ·B of Flat-LoRA and Bi-LoRA match LoRA-SGD's up to O(η), while SAM's moves away at O(ρ)?

For each LoRA pair l (peft: ``lora_A`` weight A_l, r × d_in; ``lora_B`` weight B_l, d_out × r) the r × r matrix

    M_l = A_l A_lᵀ − B_lᵀ B_l          (tr M_l = 2·B_l of ``lora_balancedness``; spec flatness-methods.md, Notation)

A step whose two factor gradients come from one matrix G at the *unperturbed* factors, ∇_A = s·BᵀG and
∇_B = s·G·Aᵀ (LoRA; Flat-LoRA, G taken at W0 + E + sBA; Bi-LoRA's primary, G at W0 + sB₁A₁ + s₂B₂A₂), changes M_l
under SGD by exactly (spec §1 Lemma (b), rank r)

    ΔM_l = η²s²·(BᵀG·GᵀB − A·GᵀG·Aᵀ)

so over T steps at a fixed ηT, M_l(T) − M_l(0) = O(η) for all three, and so is their difference. SAM takes the
chain rule at perturbed factors: M_l moves at O(ρ) per unit of ηT (spec [PM] (16a)), which does not vanish as
η → 0; BAR rescales the pair by 1 ± μη each step, O(μ) per unit of ηT (a control that should not shrink either).

Measured, per layer, for every method m against LoRA-SGD at the same seed (same initialization, same batches):

    D_l     = ‖M_l^m(T) − M_l^LoRA(T)‖_F / ‖M_l(0)‖_F
    drift_l = ‖M_l^m(T) − M_l(0)‖_F / ‖M_l(0)‖_F
    shrink_l = ‖M_l^m(T)‖_F / ‖M_l^LoRA(T)‖_F

at a learning rate η with T steps and at η/k with kT steps (the same ηT; the application's linear decay of the
rate to 0 keeps Σ_t η_t equal too), summarised over the layers (median, max). Prediction: for Flat-LoRA and
Bi-LoRA, D(η)/D(η/k) ≈ k (O(η)); for SAM (and BAR), ≈ 1.

Every run is the application's own (``run_finetune`` with ``base_optimizer="sgd"``: the method bindings, the
Trainer, gradient clipping at 1 as in every finetune), MiniLM + LoRA on SST-2 (16-shot split 16-<seed>),
dropout 0 (the only randomness left is each method's own, seeded: Flat-LoRA's draws by (seed, step), Bi-LoRA's
auxiliary initialization by the seed), weight decay 0. M_l is read at the start and at the end of training by a
Trainer callback.

Usage: ``python examples/sgd_base.py [--lr 0.5] [--steps 20] [--k 4] [--out-dir docs/results-cpu]``; writes
``sgd_base.json`` (setup, per-layer values, summary), ``sgd_base.csv`` (the summary) and ``sgd_base.png``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from balancedness.figures.style import apply_style, new_figure, save_figure
from balancedness.finetune.run import FinetuneConfig, PreparedRun, prepare, run_finetune
from balancedness.io import write_text
from balancedness.methods import method
from balancedness.optim.pairs import lora_balancedness_matrices

DEFAULT_METHODS = ("lora", "flat-lora", "bi-lora", "sam", "nbar")
#: What the spec predicts of D(η)/D(η/k): "k" (M matches LoRA-SGD up to O(η)) or "1" (an O(ρ) or O(μ) effect).
PREDICTED = {"flat-lora": "k", "bi-lora": "k", "sam": "1", "msam": "1", "asam": "1", "nbar": "1", "obar": "1"}
CSV_FIELDS = (
    "method",
    "lr",
    "steps",
    "D_median",
    "D_max",
    "drift_median",
    "drift_max",
    "shrink_median",
    "D_ratio_median",
    "predicted_ratio",
)

Matrices = dict[str, torch.Tensor]


class MatrixRecorder(TrainerCallback):
    """M_l of every LoRA pair when training begins and when it ends (``lora_balancedness_matrices``)."""

    def __init__(self) -> None:
        self.start: Matrices = {}
        self.end: Matrices = {}

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
        self.start = lora_balancedness_matrices(model)

    def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
        self.end = lora_balancedness_matrices(model)


@dataclass(frozen=True)
class Run:
    """One finished run: its method, rate, steps, M_l at the start and at the end, and its final training loss."""

    method: str
    lr: float
    steps: int
    start: Matrices
    end: Matrices
    train_loss: float
    seconds: float


def train(prepared: PreparedRun, method_name: str, lr: float, steps: int, out: Path) -> Run:
    """One run of the application (``run_finetune``) with a plain-SGD base, recording M_l at its start and end."""
    recorder = MatrixRecorder()
    config = prepared.config.with_options(
        method=method_name, lr=lr, steps=steps, out=str(out), log_every=steps, extra_callbacks=[recorder]
    )
    t0 = time.perf_counter()
    record = run_finetune(prepared.with_config(config))
    if record is None or record.train_loss is None or not recorder.end:
        raise RuntimeError(f"the {method_name} run at lr {lr:g} recorded no training loss or no M_l")
    return Run(method_name, lr, steps, recorder.start, recorder.end, record.train_loss, time.perf_counter() - t0)


def _fro(t: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(t.double()))


def layer_values(run: Run, lora: Run) -> dict[str, dict[str, float]]:
    """{layer: D, drift, shrink} of ``run`` against the LoRA-SGD run ``lora`` of the same rate (same seed)."""
    out = {}
    for name, m0 in lora.start.items():
        if not torch.equal(run.start[name], m0):
            raise RuntimeError(f"{run.method} started from another M_l than LoRA in {name}: not the same seed?")
        scale = _fro(m0)
        out[name] = {
            "D": _fro(run.end[name] - lora.end[name]) / scale,
            "drift": _fro(run.end[name] - m0) / scale,
            "shrink": _fro(run.end[name]) / _fro(lora.end[name]),
        }
    return out


def summary_row(name: str, lr: float, steps: int, layers: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Median and max over the layers of D and the drift, median of the shrink factor."""

    def col(key: str) -> list[float]:
        return [v[key] for v in layers.values()]

    return {
        "method": name,
        "lr": lr,
        "steps": steps,
        "D_median": statistics.median(col("D")),
        "D_max": max(col("D")),
        "drift_median": statistics.median(col("drift")),
        "drift_max": max(col("drift")),
        "shrink_median": statistics.median(col("shrink")),
    }


def layer_ratios(big: dict[str, dict[str, float]], small: dict[str, dict[str, float]]) -> dict[str, float]:
    """{layer: D(η) / D(η/k)} (inf where D(η/k) is exactly 0)."""
    return {n: big[n]["D"] / small[n]["D"] if small[n]["D"] else float("inf") for n in big}


def plot(rows: list[dict[str, Any]], layers: dict[str, dict[str, Any]], k: int, out_dir: Path, data: dict) -> None:
    """Left: per layer, D at η/k against D at η (log-log; the lines D(η/k) = D(η)/k and = D(η)). Right: the
    median drift from the initial M_l at both rates, per method."""
    apply_style()
    fig, axes = new_figure(1, 2, width=10.0, height=4.0)
    left, right = axes.ravel()
    lrs = sorted({r["lr"] for r in rows}, reverse=True)
    everything = []
    for name, per_lr in layers.items():
        x = [v["D"] for v in per_lr[str(lrs[0])].values()]
        y = [v["D"] for v in per_lr[str(lrs[1])].values()]
        everything += x + y
        predicted = "O(η)" if PREDICTED[name] == "k" else "O(1)"
        left.scatter(x, y, s=14, color=method(name).colour, label=f"{_short(name)} (predicted {predicted})")
    lo, hi = min(v for v in everything if v > 0) / 3, max(everything) * 3
    grid = torch.logspace(torch.log10(torch.tensor(lo)), torch.log10(torch.tensor(hi)), 20).tolist()
    left.plot(grid, grid, color="#999999", lw=1, ls="--", label="D(η/k) = D(η): no shrink")
    left.plot(grid, [g / k for g in grid], color="#000000", lw=1, ls=":", label=f"D(η/k) = D(η)/{k}: O(η)")
    left.set(
        xscale="log",
        yscale="log",
        xlabel=f"D_l at η = {lrs[0]:g} (T = {min(r['steps'] for r in rows)})",
        ylabel=f"D_l at η/{k} = {lrs[1]:g} ({k}T steps)",
        title="‖M_l − M_l^LoRA‖ / ‖M_l(0)‖ per layer, SGD base",
    )
    left.legend(loc="upper left")
    names = list(layers) + ["lora"]
    width = 0.38
    for j, lr in enumerate(lrs):
        values = [next(r["drift_median"] for r in rows if r["method"] == n and r["lr"] == lr) for n in names]
        xs = [i + (j - 0.5) * width for i in range(len(names))]
        right.bar(xs, values, width, color=[method(n).colour for n in names], alpha=1.0 if j == 0 else 0.5)
    right.set_xticks(range(len(names)), [_short(n) for n in names], rotation=20)
    right.set(
        yscale="log", ylabel="median ‖M_l(T) − M_l(0)‖ / ‖M_l(0)‖", title=f"drift from init: η (dark), η/{k} (light)"
    )
    save_figure(fig, out_dir, "sgd_base", ["png"], data)


def _short(name: str) -> str:
    """The method's legend label, with LoRA's as run here (its row's says AdamW)."""
    return "LoRA-SGD" if name == "lora" else method(name).short


def csv_text(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in r.items()})
    return buf.getvalue()


def markdown(rows: list[dict[str, Any]], k: int) -> str:
    """The table of the report: per method, D median/max at both rates, their ratio, the drift, the shrink."""
    lrs = sorted({r["lr"] for r in rows}, reverse=True)
    lines = [
        f"| method | D med / max, η = {lrs[0]:g} | D med / max, η/{k} | ratio D(η)/D(η/{k}) (median over layers) | "
        f"predicted | drift med, η / η/{k} | ‖M‖/‖M^LoRA‖ − 1 med, η / η/{k} |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in dict.fromkeys(r["method"] for r in rows):
        big, small = (next(r for r in rows if r["method"] == name and r["lr"] == lr) for lr in lrs)
        d = "–" if name == "lora" else f"{big['D_median']:.3g} / {big['D_max']:.3g}"
        d2 = "–" if name == "lora" else f"{small['D_median']:.3g} / {small['D_max']:.3g}"
        ratio = "–" if name == "lora" else f"{big['D_ratio_median']:.2f}"
        predicted = {"k": f"≈ {k}", "1": "≈ 1"}.get(PREDICTED.get(name, ""), "–")
        lines.append(
            f"| {method(name).label}-SGD | {d} | {d2} | {ratio} | {predicted} | "
            f"{big['drift_median']:.3g} / {small['drift_median']:.3g} | "
            f"{big['shrink_median'] - 1:+.2g} / {small['shrink_median'] - 1:+.2g} |"
        )
    return "\n".join(lines) + "\n"


def write_outputs(rows: list[dict[str, Any]], per_layer: dict[str, Any], k: int, out_dir: Path, data: dict) -> None:
    """``sgd_base.png`` and ``.json`` (``save_figure``), ``sgd_base.csv``, and the Markdown table on stdout."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plot(rows, per_layer, k, out_dir, data)
    write_text(out_dir / "sgd_base.csv", csv_text(rows))
    print(markdown(rows, k))


def replot(out_dir: Path) -> None:
    """The outputs again from a saved ``sgd_base.json`` (a new figure style needs no new runs)."""
    path = out_dir / "sgd_base.json"
    if not path.is_file():
        sys.exit(f"--replot: {str(path)!r} does not exist; run without --replot first")
    data = json.loads(path.read_text())
    write_outputs(data["summary"], data["per_layer"], data["setup"]["k"], out_dir, data)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lr", type=float, default=1.0, help="η of the short runs (η/k for the long ones)")
    parser.add_argument("--steps", type=int, default=20, help="T at η (kT at η/k)")
    parser.add_argument("--k", type=int, default=4, help="the rate ratio k")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS), help="comma-separated; lora is added")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--precision", default="fp64", help="fp64: D at η/k is ~1e-7, the float32 rounding floor of M_l's entries"
    )
    parser.add_argument("--rho", type=float, default=0.05, help="SAM's radius (and Bi-LoRA's)")
    parser.add_argument(
        "--mu",
        type=float,
        default=0.01,
        help="BAR's μ₀ (constant schedule): each step rescales a pair by 1 ± μη, so at SGD's η ≈ 1 the AdamW "
        "default 0.5 would be a factor 1.5 a step; 0.01 moves M_l by O(μ·Ση_t) ≈ 0.1",
    )
    parser.add_argument("--data-root", default=None, help="the shared data folder (default: the application's)")
    parser.add_argument("--out-dir", type=Path, default=Path("docs/results-cpu"))
    parser.add_argument(
        "--replot", action="store_true", help="redraw the PNG and CSV from <out-dir>/sgd_base.json (no training)"
    )
    args = parser.parse_args(argv)
    if args.replot:
        return replot(args.out_dir)
    methods = ["lora", *[m for m in args.methods.split(",") if m and m != "lora"]]
    unknown = [m for m in methods if m not in PREDICTED and m != "lora"]
    if unknown or args.k < 2 or args.steps < 1 or args.lr <= 0:
        parser.error(
            f"expected known methods ({', '.join(PREDICTED)}), --k >= 2, --steps >= 1, --lr > 0; got methods "
            f"{unknown or methods}, k {args.k}, steps {args.steps}, lr {args.lr}"
        )
    base = FinetuneConfig(
        task="sst2",
        data_root=args.data_root,
        seed=args.seed,
        batch_size=args.batch_size,
        base_optimizer="sgd",
        weight_decay=0.0,
        dropout=0.0,
        precision=args.precision,
        rho=args.rho,
        mu=args.mu,
        schedule="constant",
        max_eval=32,
        progress=False,
    )
    try:
        prepared = prepare(base)
    except (ValueError, FileNotFoundError) as exc:
        parser.error(str(exc))
    rates = [(args.lr, args.steps), (args.lr / args.k, args.k * args.steps)]
    runs: dict[tuple[str, float], Run] = {}
    with tempfile.TemporaryDirectory(prefix="sgd-base-") as work:
        for i, (lr, steps) in enumerate(rates):
            for name in methods:
                run = train(prepared, name, lr, steps, Path(work) / f"{name}-{i}")
                runs[name, lr] = run
                print(
                    f"[{len(runs)}/{len(rates) * len(methods)}] {name:9s} lr {lr:<8g} {steps:4d} steps: "
                    f"loss {run.train_loss:.4f}, {run.seconds:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
    rows, per_layer = [], {}
    for name in methods:
        per_lr = {str(lr): layer_values(runs[name, lr], runs["lora", lr]) for lr, _ in rates}
        ratios = layer_ratios(per_lr[str(rates[0][0])], per_lr[str(rates[1][0])])
        for lr, steps in rates:
            row = summary_row(name, lr, steps, per_lr[str(lr)])
            finite = [r for r in ratios.values() if r != float("inf")]
            row["D_ratio_median"] = statistics.median(finite) if name != "lora" and finite else None
            row["predicted_ratio"] = {"k": args.k, "1": 1}.get(PREDICTED.get(name, ""))
            rows.append(row)
        if name != "lora":
            per_layer[name] = per_lr
    data = {
        "what": "spec flatness-methods.md §5 item 5: per-layer M_l = A Aᵀ − Bᵀ B, SGD base, weight decay 0",
        "setup": {
            "model": base.model,
            "task": "sst2 (LM-BFF 16-shot split 16-<seed>)",
            "seed": args.seed,
            "batch_size": args.batch_size,
            "k": args.k,
            "rates": [{"lr": lr, "steps": steps} for lr, steps in rates],
            "rho": args.rho,
            "mu": args.mu,
            "bar_schedule": "constant",
            "dropout": 0.0,
            "precision": args.precision,
            "weight_decay": 0.0,
            "lr_schedule": "linear decay to 0",
            "max_grad_norm": 1.0,
            "lora_r": base.lora_r,
            "lora_alpha": base.lora_alpha,
            "train_loss": {f"{m}@{lr:g}": runs[m, lr].train_loss for m, lr in runs},
            "seconds": {f"{m}@{lr:g}": round(runs[m, lr].seconds, 1) for m, lr in runs},
        },
        "summary": rows,
        "per_layer": per_layer,
        "layer_ratio": {n: layer_ratios(v[str(rates[0][0])], v[str(rates[1][0])]) for n, v in per_layer.items()},
    }
    write_outputs(rows, per_layer, args.k, args.out_dir, data)


if __name__ == "__main__":
    main()
