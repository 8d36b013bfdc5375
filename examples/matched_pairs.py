"""Secondary analysis of a sweep folder: each method against LoRA at the **same seed and learning rate**.

Dev selection (``table.md``) compares each method's best configuration; when the methods' grids differ in
learning rate (the ``cpu-2024`` space gives LoRA lr up to 4e-3, the others up to 2e-3) that comparison mixes
the optimizer's effect with the learning rate's. Here every run of a method other than LoRA is paired with the
LoRA run of the same task, seed and shared options (learning rate, weight decay: the same LoRA
initialization, the same batches), for each value of the method's own searched option (ρ for SAM, ASAM and
Bi-LoRA, μ₀ for BAR, σ for Flat-LoRA: the option of the method's row in ``balancedness.methods`` whose value
varies over its runs), and two things are compared:

* test accuracy, method − LoRA in points: mean [bootstrap 95% interval] wins/ties/losses, sign-test p;
* the final balancedness, 2|B_l| = |‖A_l‖² − ‖B_l‖²| (spec §1.2) averaged over the LoRA pairs, from the
  last record of ``balancedness.jsonl``: the ratio method / LoRA and how many pairs ended lower (pairs
  whose runs logged no step are left out of this column).

Usage: ``python examples/matched_pairs.py runs/cpu [--csv matched.csv]``.
"""

from __future__ import annotations

import argparse
import csv
import functools
import io
import json
import statistics
from pathlib import Path

from balancedness.finetune.record import RunFolder, RunRecord
from balancedness.finetune.report import collect
from balancedness.finetune.stats import Paired, paired
from balancedness.io import write_text
from balancedness.methods import METHODS, SHARED


def option_value(run: RunRecord, name: str):
    """The run's value of option ``name``: a config field, else one of the method's own ``hparams``
    (Flat-LoRA's σ), else the row's default."""
    if name in run.config:
        return run.config[name]
    hyper = METHODS[run.method].hyper_named(name)
    return run.config.get("hparams", {}).get(name, hyper.default if hyper else None)


def searched_option(runs: list[RunRecord], method: str) -> str | None:
    """The option of ``method``'s row whose value varies over its runs (the first such, in row order)."""
    mine = [r for r in runs if r.method == method]
    for hyper in METHODS[method].hyper:
        if len({repr(option_value(r, hyper.name)) for r in mine}) > 1:
            return hyper.name
    return METHODS[method].hyper[0].name if METHODS[method].hyper else None


def final_two_abs_b(root: str | Path, run: RunRecord) -> float | None:
    """Mean over LoRA pairs of 2|B_l| at the last logged step; None when the run logged no step
    (``--steps`` below ``--log-every``). ``run.run`` is its folder relative to the sweep folder ``root``."""
    return _final_two_abs_b(str(Path(root) / run.run))


@functools.cache  # a LoRA run is the partner of every method and option value
def _final_two_abs_b(out: str) -> float | None:
    path = RunFolder(out).log
    lines = [line for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    if not lines:
        return None
    last = json.loads(lines[-1])["balancedness"]
    return statistics.fmean(2.0 * abs(b) for b in last.values())


def matched_rows(root: str | Path) -> list[dict]:
    runs = collect(root)
    key = lambda r: (r.task, r.seed, *(option_value(r, h.name) for h in SHARED))  # noqa: E731
    lora = {key(r): r for r in runs if r.method == "lora"}
    tasks = list(dict.fromkeys(r.task for r in runs))
    methods = [m for m in METHODS if m != "lora" and any(r.method == m for r in runs)]
    rows = []
    for method in methods:
        option = searched_option(runs, method)
        if option is None:
            continue
        for value in sorted({option_value(r, option) for r in runs if r.method == method}):
            for task in [*tasks, "all"]:
                pairs = [
                    (r, lora[key(r)])
                    for r in runs
                    if r.method == method
                    and option_value(r, option) == value
                    and task in ("all", r.task)
                    and key(r) in lora
                ]
                if not pairs:
                    continue
                st = paired([100.0 * (a.value - b.value) for a, b in pairs])
                b = [
                    (x, y)
                    for x, y in ((final_two_abs_b(root, a), final_two_abs_b(root, base)) for a, base in pairs)
                    if x is not None and y is not None
                ]
                rows.append(
                    {
                        "method": method,
                        "option": option,
                        "value": value,
                        "task": task,
                        "stats": st,
                        "b_ratio": statistics.fmean(x / y for x, y in b) if b else None,
                        "b_lower": sum(x < y for x, y in b),
                        "b_pairs": len(b),
                    }
                )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--csv", type=Path, default=None)
    args = parser.parse_args()
    if not args.root.is_dir():
        parser.error(f"sweep folder {str(args.root)!r} does not exist")
    rows = matched_rows(args.root)
    if not rows:
        parser.error(
            f"{str(args.root)!r} has no run of another method beside a LoRA run of the same task, seed, lr and "
            "weight decay"
        )
    print("| method | option | task | pairs | accuracy − LoRA (points) | 2\\|B\\| ratio to LoRA | lower |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        st = r["stats"]
        ratio = "–" if r["b_ratio"] is None else f"{r['b_ratio']:.3f}"
        print(
            f"| {r['method']} | {r['option']} = {r['value']:g} | {r['task']} | {st.n} | {st.text()} | "
            f"{ratio} | {r['b_lower']}/{r['b_pairs']} |"
        )
    if args.csv:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["method", "option", "value", "task", *Paired.COLUMNS, "b_ratio", "b_lower", "b_pairs"])
        for r in rows:
            ratio = "" if r["b_ratio"] is None else f"{r['b_ratio']:.4f}"
            writer.writerow(
                [
                    r["method"],
                    r["option"],
                    r["value"],
                    r["task"],
                    *r["stats"].cells(),
                    ratio,
                    r["b_lower"],
                    r["b_pairs"],
                ]
            )
        write_text(args.csv, buf.getvalue())


if __name__ == "__main__":
    main()
