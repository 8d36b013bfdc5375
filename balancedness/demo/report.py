"""Markdown for ``DIR/REPORT.md``: the check table and the figure gallery (written atomically)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from balancedness.io import write_text


def _cell(text: object) -> str:
    """One markdown table cell: pipes escaped, newlines flattened."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def checks_table(results: Iterable[dict]) -> str:
    """One row per claim: id, paper ref, claim, measured, tolerance, result (``results_as_json`` rows)."""
    rows = list(results)
    lines = ["| id | paper | claim | measured | tolerance | result |", "|---|---|---|---|---|---|"]
    for r in rows:
        mark = "PASS" if r["status"] == "PASS" else "**FAIL**"
        lines.append(
            "| " + " | ".join(_cell(r[k]) for k in ("id", "ref", "claim", "measured", "tolerance")) + f" | {mark} |"
        )
    n_fail = sum(r["status"] != "PASS" for r in rows)
    lines.append("")
    lines.append(f"{len(rows) - n_fail} of {len(rows)} checks passed" + (f", **{n_fail} failed**." if n_fail else "."))
    return "\n".join(lines)


def figure_gallery(fig_dir: Path, report_dir: Path, names: Sequence[str]) -> str:
    """A markdown image link and its caption (read from ``<name>.json``) for each figure."""
    parts = []
    for name in names:
        data = json.loads((fig_dir / f"{name}.json").read_text())
        rel = Path(os.path.relpath(fig_dir / f"{name}.png", report_dir)).as_posix()
        parts.append(
            f"### {data.get('title', name)}\n\n![{name}]({rel})\n\n{data.get('caption', '')}\n\n"
            f"Data: [`{name}.json`]({Path(rel).with_suffix('.json').as_posix()})"
        )
    return "\n\n".join(parts)


def write_report(path: str | os.PathLike, title: str, sections: Sequence[str]) -> Path:
    """Join the sections under a title and write the file atomically."""
    text = f"# {title}\n\n" + "\n\n".join(s.strip() for s in sections if s.strip()) + "\n"
    return write_text(path, text)
