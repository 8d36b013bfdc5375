"""Every example of docs/torch-backend.md runs: its setup block, then the example, as one script with an empty
working directory of its own; all six run in one Python process (``doc_example_runner.py``: a fresh namespace and
accelerate state each), so torch, transformers and the model files load once. A fenced ``python`` block is an
example when the line before it is ``<!-- example: NAME -->`` (the setup block: ``<!-- example-setup -->``)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import built_once

DOC = Path(__file__).resolve().parents[1] / "docs" / "torch-backend.md"
BLOCK = re.compile(r"^<!-- (example-setup|example: ([\w-]+)) -->\n```python\n(.*?)^```$", re.M | re.S)
RUNNER = Path(__file__).resolve().parent / "doc_example_runner.py"
ENTRY_POINTS = [
    "stock-trainer-bar",
    "samtrainer",
    "bartrainer",
    "hand-written-loop",
    "accelerate-sam",
    "accelerate-bar",
]


def _blocks() -> tuple[str, dict[str, str]]:
    setup, examples = None, {}
    for match in BLOCK.finditer(DOC.read_text(encoding="utf-8")):
        if match.group(1) == "example-setup":
            setup = match.group(3)
        else:
            assert match.group(2) not in examples, f"two examples named {match.group(2)!r}"
            examples[match.group(2)] = match.group(3)
    assert setup is not None, "docs/torch-backend.md has no <!-- example-setup --> block"
    return setup, examples


def test_every_entry_point_has_an_example():
    assert list(_blocks()[1]) == ENTRY_POINTS


@pytest.fixture(scope="session")
def example_results(tmp_path_factory) -> Path:
    """Every example run once, all in one Python process (``doc_example_runner.py``): the folder of their results
    (built once for all xdist workers: ``conftest.built_once``)."""

    def build(root: Path) -> None:
        setup, examples = _blocks()
        for name in ENTRY_POINTS:
            (root / f"{name}.py").write_text(setup + "\n" + examples[name], encoding="utf-8")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        subprocess.run(
            [sys.executable, str(RUNNER), str(root), *ENTRY_POINTS],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=1200,
        )

    return built_once(tmp_path_factory, "doc-examples", build)


@pytest.mark.slow
@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_doc_example_runs(example_results, name):
    result_file = example_results / f"{name}.json"
    assert result_file.is_file(), f"example {name!r} left no result: the runner process died before it"
    result = json.loads(result_file.read_text(encoding="utf-8"))
    assert result["ok"], result["error"][-4000:]
    if name == "samtrainer":  # the per-layer balancedness reached TensorBoard and the file in output_dir
        out = example_results / name / "out"
        assert list((out / "runs").glob("*/events.out.tfevents.*"))
        assert len((out / "balancedness.jsonl").read_text().splitlines()) == 4
        assert "balancedness/mean_abs" in result["stdout"]
