"""Copy the complete runs of a sweep folder, without their adapters, into a folder small enough to commit.

A run's record is three files: ``metrics.json`` (its :class:`RunRecord`, with its fingerprint id: what a resumed
sweep reads to skip it), ``run.json`` (the fingerprint in full: options, data and model digests, package
versions) and ``balancedness.jsonl`` (per-layer B_l over its steps). The adapter (~2 MB for SmolLM2) and any
checkpoint are left behind, and so are runs that are not complete (``RunFolder.complete_record``: never a
failed, diverged or unfinished run). The archive keeps the sweep's layout (``<task>/<method>/seed<k>-<id>/``), so

* ``examples/matched_pairs.py`` and ``balancedness.finetune.report.collect`` read it as they read the sweep;
* copied back as the sweep folder on another machine, ``balancedness sweep`` with the same options skips every
  archived run (a complete record of the same fingerprint) and runs only the rest: the way a sweep resumes
  across machines that do not keep their files (docs/results.md, "the sweep").

Files are written atomically (``balancedness.io``); a run already in the archive is rewritten from the sweep.

Usage: ``python examples/archive_runs.py runs/flatness results/flatness``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from balancedness.finetune.record import RunFolder
from balancedness.io import atomic_write

#: The files of a run the archive keeps (``balancedness.jsonl`` only where the run logged a step).
KEPT = ("run.json", "metrics.json", "balancedness.jsonl")


def archive(sweep: str | Path, dest: str | Path) -> list[Path]:
    """Copy :data:`KEPT` of every complete run under ``sweep`` into ``dest`` (same relative folders); returns
    the archived run folders, relative to ``dest``, in sorted order."""
    sweep, dest = Path(sweep), Path(dest)
    if not sweep.is_dir():
        raise ValueError(f"sweep folder {str(sweep)!r} does not exist")
    if dest.resolve().is_relative_to(sweep.resolve()):
        raise ValueError(
            f"the archive {str(dest)!r} is inside the sweep folder {str(sweep)!r} (the sweep would read it as runs of "
            "its own); give a folder outside it"
        )
    runs = []
    for metrics in sorted(sweep.rglob("metrics.json")):
        run = RunFolder(metrics.parent)
        if run.complete_record() is None or not (run.path / "run.json").is_file():
            continue
        rel = run.path.relative_to(sweep)
        for name in KEPT:
            source = run.path / name
            if source.is_file():
                data = source.read_bytes()
                atomic_write(dest / rel / name, lambda fh, data=data: fh.write(data), mode="wb")
        runs.append(rel)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", type=Path)
    parser.add_argument("dest", type=Path)
    args = parser.parse_args()
    try:
        runs = archive(args.sweep, args.dest)
    except ValueError as exc:
        parser.error(str(exc))
    print(f"{len(runs)} complete runs archived from {args.sweep} into {args.dest}")


if __name__ == "__main__":
    main()
