"""The paper's Figures 1, 2 and 4, regenerated, and three figures the paper could not show.

Each figure is one module with ``build(cfg) -> (matplotlib figure, data dict)``; the data dict
holds every plotted array, the settings, and a ``caption`` with the key numbers. ``make_figure``
builds one and saves it (all formats + ``<stem>.json``) through ``style.save_figure``.

========  ==========================================================================  ===========
name      what                                                                        spec
========  ==========================================================================  ===========
fig1      2|B_t| and the gradient gap, SGD vs SAM at several α, NOP and OP toys       §5 Fig. 1
fig2      (a) SAM's 2|B_t| with the Cor. 2 threshold; (b) SGD/SAM/oBAR/nBAR           §5 Fig. 2
fig4      GD on f = 30000(xy − 0.005)²: stuck on x = −y; BAR leaves it                §5 Fig. 4
flow      the η→0 flow over discrete SAM at η = 1e-2, 1e-3, 1e-4; error ∝ η           §2.9, §7.2.18
rates     measured dB/dt vs the Thm 2 / Lemma 2 leading term ± the explicit A_t bound  §3, §7.2.16
msharp    m-sharpness: 2|B_t| for m = 1, 2, 4, 8 on the OP toy                        Lemma 3
flatness  2|B_t| of SGD, SAM, nBAR, oBAR, Flat-LoRA, Bi-LoRA, ASAM beside the theory  [FM] §5
========  ==========================================================================  ===========

``flatness`` is made on request only (``balancedness figures flatness``), not by ``all``: three of its methods
step with numpy, which takes minutes at the paper's scale (:data:`SEPARATE`).
"""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from balancedness.figures.runs import FigureConfig

FIGURES: dict[str, str] = {
    "fig1": "Implicit regularization of SAM on balancedness (paper Fig. 1)",
    "fig2": "Threshold of balancedness and implicit vs explicit regularization (paper Fig. 2)",
    "fig4": "Hard constraint |x| = |y| traps GD at the saddle; BAR escapes (paper Fig. 4)",
    "flow": "Limiting flow vs discrete SAM: the gap shrinks ∝ η (beyond the paper)",
    "rates": "Measured dB/dt vs Thm 2 / Lemma 2 with the explicit error bound (beyond the paper)",
    "msharp": "m-sharpness balances faster for larger m (Lemma 3, beyond the paper)",
}

#: Figures made only when named (not by ``all``): they take minutes at the paper's scale.
SEPARATE: dict[str, str] = {
    "flatness": "Which flatness methods balance: 2|B_t| of every method beside the theory (spec/flatness-methods.md)",
}

__all__ = ["FIGURES", "SEPARATE", "FigureConfig", "make_figure", "check_names", "render"]


def check_names(names: Sequence[str]) -> list[str]:
    """Expand ``all`` (the figures of :data:`FIGURES`) and validate figure names (those and :data:`SEPARATE`); raises
    ValueError naming the unknown one."""
    out: list[str] = []
    for n in names:
        if n == "all":
            out.extend(FIGURES)
        elif n in FIGURES or n in SEPARATE:
            out.append(n)
        else:
            raise ValueError(f"unknown figure {n!r}; choose from {', '.join([*FIGURES, *SEPARATE])} or 'all'")
    return list(dict.fromkeys(out))


def make_figure(
    name: str, cfg: FigureConfig, out_dir: str | os.PathLike, formats: Sequence[str] = ("png",)
) -> list[Path]:
    """Build figure ``name`` and save ``<name>.<fmt>`` for each format plus ``<name>.json``."""
    from balancedness.figures import style

    check_names([name])
    formats = style.check_formats(formats)
    module = importlib.import_module(f"balancedness.figures.{name}")
    fig, data = module.build(cfg)
    data.setdefault("figure", name)
    data.setdefault("title", {**FIGURES, **SEPARATE}[name])
    return style.save_figure(fig, out_dir, name, formats, data)


def render(
    names: Sequence[str], cfg: FigureConfig, out: Path, formats: Sequence[str], console: Console | None = None
) -> dict[str, list[Path]]:
    """Build and save each figure in ``names`` (already validated); prints one line per figure."""
    console = console or Console(stderr=True)
    written: dict[str, list[Path]] = {}
    for i, name in enumerate(names, 1):
        started = time.perf_counter()
        with console.status(f"[{i}/{len(names)}] {name}: {({**FIGURES, **SEPARATE})[name]}…"):
            written[name] = make_figure(name, cfg, out, formats)
        files = ", ".join(p.name for p in written[name])
        console.print(f"[green]✓[/] {name} ({time.perf_counter() - started:.1f} s): {files}")
    return written
