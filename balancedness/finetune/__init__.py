"""LoRA finetuning of real language models with the optimizers of ``balancedness.optim``: the application
behind ``balancedness finetune`` and ``balancedness sweep``.

``data/`` (the few-shot tasks and the user's own files), ``models`` (model resolution and LoRA wrapping),
``prompts`` and ``tasks`` (label-word heads, evaluation), ``run`` (one finetune on the HF Trainer),
``sweep`` and ``report`` (grids of runs and their tables), ``fig3_runs`` (the runs behind Figure 3).

The application depends on the optimizer library, never the reverse. For old code, the library's public
names are still forwarded from here on first use (``from balancedness.finetune import SAM``); new code
imports them from ``balancedness.optim``.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    import balancedness.optim as optim

    if name in optim.__all__:
        return getattr(optim, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
