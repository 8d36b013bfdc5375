"""The runs behind Figure 3 (spec §5): short LoRA (AdamW) and SAM finetunes whose logs the figure plots.

The paper plots RTE, SST-5 and MNLI; ``fig3_runs`` trains MiniLM on each with both methods (16 shots,
logging B_l every step) under ``out_dir/fig3_runs/<task>/<method>`` and returns the log paths for
``balancedness.figures.fig3.make_fig3``. Runs resume, so a second call is instant.
"""

from __future__ import annotations

from pathlib import Path

from balancedness.finetune.record import RunFolder
from balancedness.finetune.run import FinetuneConfig, run_finetune

__all__ = ["FIG3_TASKS", "fig3_runs"]

FIG3_TASKS = ("rte", "sst5", "mnli")


def fig3_runs(
    out_dir: str | Path, *, quick: bool = False, data_root: str | None = None, steps: int | None = None, seed: int = 42
) -> list[Path]:
    """Train LoRA and SAM on each of ``FIG3_TASKS`` (``steps`` default 100, 20 with ``quick``); the log paths."""
    steps = steps or (20 if quick else 100)
    logs = []
    for task in FIG3_TASKS:
        for method in ("lora", "sam"):
            run = RunFolder(Path(out_dir) / "fig3_runs" / task / method)
            run_finetune(
                FinetuneConfig(
                    task=task,
                    method=method,
                    data_root=data_root,
                    shots=16,
                    seed=seed,
                    steps=steps,
                    log_every=1,
                    max_eval=32,
                    out=str(run.path),
                    resume=True,
                    progress=False,
                )
            )
            logs.append(run.log)
    return logs
