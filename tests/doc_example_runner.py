"""Run several examples of docs/torch-backend.md in ONE Python process (imports and the model files load once).

``python doc_example_runner.py WORKDIR NAME...`` reads ``WORKDIR/NAME.py`` (setup block + example, as the test
writes them) and runs each in a fresh namespace with ``WORKDIR/NAME/`` as the working directory and a fresh
accelerate state (an example's ``Accelerator(mixed_precision=...)`` must not meet the previous one's).
It writes ``WORKDIR/NAME.json``: ``{"ok", "error", "stdout"}``; one failing example does not stop the others.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import runpy
import sys
import traceback
from pathlib import Path


def _fresh_accelerate_state() -> None:
    try:
        from accelerate.state import AcceleratorState, GradientState, PartialState
    except ImportError:
        return
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    PartialState._reset_state()


def run_one(workdir: Path, name: str) -> dict:
    cwd = workdir / name
    cwd.mkdir(exist_ok=True)
    out = io.StringIO()
    here = os.getcwd()
    _fresh_accelerate_state()
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(out):
            runpy.run_path(str(workdir / f"{name}.py"), run_name="__main__")
        result = {"ok": True, "error": "", "stdout": out.getvalue()}
    except BaseException:  # noqa: BLE001 - reported to the test, which fails on it
        result = {"ok": False, "error": traceback.format_exc(), "stdout": out.getvalue()}
    finally:
        os.chdir(here)
    return result


if __name__ == "__main__":
    root = Path(sys.argv[1])
    for example in sys.argv[2:]:
        (root / f"{example}.json").write_text(json.dumps(run_one(root, example)), encoding="utf-8")
